using ThinFast.Testing;

namespace ThinFast.IO.Tests;

/// <summary>Read-only devices opened through the page cache (how pools read origins by default).</summary>
public sealed class PageCacheTests
{
    [Theory]
    [InlineData(BlockDeviceBackend.Portable)]
    [InlineData(BlockDeviceBackend.IoUring)]
    public async Task PageCachedDeviceReadsTheFileWithoutODirect(BlockDeviceBackend backend)
    {
        using var dir = new TempDir();
        string path = dir.File("base.img");
        var content = new byte[1 << 20];
        new Random(7).NextBytes(content);
        await File.WriteAllBytesAsync(path, content, TestContext.Current.CancellationToken);

        using (var direct = BlockDevices.Open(path, new BlockDeviceOptions { ReadOnly = true, Backend = backend }))
            Assert.Equal([true], OpenFiles.ODirectFlagsOf(path));

        using var cached = BlockDevices.Open(path, new BlockDeviceOptions { ReadOnly = true, PageCache = true, Backend = backend });
        Assert.Equal([false], OpenFiles.ODirectFlagsOf(path));
        using var pool = new AlignedBufferPool(64 * 1024, 1);
        var buffer = pool.Buffers[0];
        var random = new Random(11);
        for (int i = 0; i < 64; i++)
        {
            int length = 4096 * random.Next(1, 17);
            long offset = 4096L * random.Next(0, (content.Length - length) / 4096 + 1);
            await cached.ReadAsync(offset, buffer.Memory[..length]);
            Assert.True(buffer.GetSpan()[..length].SequenceEqual(content.AsSpan((int)offset, length)), $"read at {offset}+{length} differs");
        }
        // Same rules as a direct device: misaligned requests and writes are refused.
        var misaligned = await Assert.ThrowsAsync<BlockDeviceException>(async () => await cached.ReadAsync(100, buffer.Memory[..4096]));
        Assert.Equal(BlockError.InvalidArgument, misaligned.Error);
        var write = await Assert.ThrowsAsync<BlockDeviceException>(async () => await cached.WriteAsync(0, buffer.Memory[..4096]));
        Assert.Equal(BlockError.ReadOnly, write.Error);
    }

    [Fact]
    public void PageCacheIsRefusedForWritableDevices()
    {
        using var dir = new TempDir();
        string path = dir.File("data.img");
        File.WriteAllBytes(path, new byte[65536]);
        var e = Assert.Throws<BlockDeviceException>(() => BlockDevices.Open(path, new BlockDeviceOptions { PageCache = true }));
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        Assert.Contains("read-only", e.Message);
    }
}
