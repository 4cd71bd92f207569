using System.Globalization;

namespace ThinFast.IO.Tests;

public sealed unsafe class AlignedBufferPoolTests
{
    [Theory]
    [InlineData(4096, 3, 4096)]
    [InlineData(5000, 4, 4096)]
    [InlineData(1 << 20, 8, 4096)]
    [InlineData(64 * 1024, 2, 64 * 1024)]
    public void BuffersAreAlignedZeroedAndDisjoint(int size, int count, int alignment)
    {
        using var pool = new AlignedBufferPool(size, count, alignment);
        var buffers = pool.Buffers;
        Assert.Equal(count, buffers.Count);
        for (int i = 0; i < count; i++)
        {
            Assert.Equal(0, (long)buffers[i].Pointer % alignment);
            Assert.Equal(size, buffers[i].Memory.Length);
            Assert.True(buffers[i].GetSpan().IndexOfAnyExcept((byte)0) < 0, $"buffer {i} is not zeroed");
            buffers[i].GetSpan().Fill((byte)(i + 1));
        }
        // Each buffer still holds its own fill: none overlaps another.
        for (int i = 0; i < count; i++)
            Assert.True(buffers[i].GetSpan().IndexOfAnyExcept((byte)(i + 1)) < 0, $"buffer {i} was overwritten by a neighbour");
    }

    [Fact]
    public void RentAndReturnHandOutEachBufferOnce()
    {
        using var pool = new AlignedBufferPool(4096, 2);
        var a = pool.Rent();
        var b = pool.Rent();
        Assert.NotSame(a, b);
        Assert.False(pool.TryRent(out _));
        pool.Return(a);
        Assert.Throws<InvalidOperationException>(() => pool.Return(a));
        Assert.Same(a, pool.Rent());
        pool.Return(a);
        pool.Return(b);
        Assert.Equal(2, pool.FreeCount);
    }

    /// <summary>Large pools sit on 2 MiB boundaries and, where the kernel's THP mode allows
    /// madvise, on huge pages: what keeps a 1 MiB O_DIRECT transfer one device request.</summary>
    [Fact]
    public void LargePoolsUseHugePages()
    {
        Assert.True(OperatingSystem.IsLinux(), "this test reads /proc/self/smaps");
        using var pool = new AlignedBufferPool(1 << 20, 4);
        long start = (long)pool.Buffers[0].Pointer;
        Assert.Equal(0, start % (2 << 20));
        foreach (var buffer in pool.Buffers)
            buffer.GetSpan().Fill(1);

        string mode = File.ReadAllText("/sys/kernel/mm/transparent_hugepage/enabled");
        if (mode.Contains("[never]", StringComparison.Ordinal))
            return; // THP is switched off on this machine: the alignment is all there is to check.
        long hugeKb = AnonHugePagesKb(start);
        Assert.True(hugeKb >= 2048, $"the pool's mapping has {hugeKb} kB of huge pages (THP mode: {mode.Trim()})");
    }

    private static long AnonHugePagesKb(long address)
    {
        bool inside = false;
        foreach (string line in File.ReadLines("/proc/self/smaps"))
        {
            int dash = line.IndexOf('-');
            if (dash > 0 && line.IndexOf(' ') > dash && long.TryParse(line[..dash], NumberStyles.HexNumber, CultureInfo.InvariantCulture, out long from))
            {
                int space = line.IndexOf(' ');
                long to = long.Parse(line[(dash + 1)..space], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                inside = address >= from && address < to;
                continue;
            }
            if (inside && line.StartsWith("AnonHugePages:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
        }
        throw new InvalidOperationException($"no mapping in /proc/self/smaps holds 0x{address:x}");
    }
}
