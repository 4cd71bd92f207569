using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>The I/O rules of dm-thin with external origins (shared/spec/dm-thin-semantics.md §4),
/// one rule per test.</summary>
public class EngineSemanticsTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    private static byte[] Read(ThinVolume v, long offset, int length)
    {
        var buffer = new byte[length];
        Wait(v.ReadAsync(offset, buffer));
        return buffer;
    }

    private static void Write(ThinVolume v, long offset, byte[] data, WriteFlags flags = WriteFlags.None) =>
        Wait(v.WriteAsync(offset, data, flags));

    private static void Wait(ValueTask task) => task.AsTask().GetAwaiter().GetResult();

    private static ulong UsedData(ThinPool pool) => pool.GetStatus().UsedDataBlocks;

    [Fact]
    public void UnmappedWithoutOriginReadsZerosAndAllocatesNothing()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 16 * B);
        Assert.All(Read(v, 3 * B - 100, 2 * B), b => Assert.Equal(0, b));
        Assert.Equal(0UL, UsedData(h.Pool));
        Assert.Equal(0UL, v.MappedBlocks);
    }

    [Fact]
    public void UnmappedReadsOriginThenZerosPastItsEnd()
    {
        using var h = new PoolHarness(64 * B);
        // An origin that ends mid-block and is shorter than the volume.
        var origin = PoolHarness.Pattern(2 * B + 4096 + 512, 1);
        var v = h.Pool.CreateVolume("a", 8 * B, h.AddOrigin("base", origin));
        Assert.Equal(origin, Read(v, 0, origin.Length));
        var straddle = Read(v, origin.Length - 1000, 3000);
        Assert.Equal(origin.AsSpan(origin.Length - 1000).ToArray(), straddle[..1000]);
        Assert.All(straddle[1000..], b => Assert.Equal(0, b));
        Assert.All(Read(v, 5 * B, B), b => Assert.Equal(0, b));
        Assert.Equal(0UL, UsedData(h.Pool));
    }

    [Fact]
    public void PartialWriteOverOriginCopiesTheRestOfTheBlock()
    {
        using var h = new PoolHarness(64 * B);
        var origin = PoolHarness.Pattern(4 * B, 2);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", origin));
        var data = PoolHarness.Pattern(4096, 3);
        Write(v, B + 8192, data);
        var expected = origin.AsSpan(B, B).ToArray();
        data.CopyTo(expected, 8192);
        Assert.Equal(expected, Read(v, B, B));
        Assert.Equal(1UL, UsedData(h.Pool));
        Assert.Equal(1UL, v.MappedBlocks);
        h.AssertOriginsUnchanged();
    }

    [Fact]
    public void WholeBlockWriteDoesNotReadTheOrigin()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", PoolHarness.Pattern(4 * B, 4)));
        var origin = h.OpenedOrigins[^1];
        long readsBefore = origin.ReadCount;
        var data = PoolHarness.Pattern(2 * B, 5);
        Write(v, B, data);
        Assert.Equal(readsBefore, origin.ReadCount);
        Assert.Equal(data, Read(v, B, 2 * B));
        Assert.Equal(2UL, UsedData(h.Pool));
    }

    [Fact]
    public void PartialWriteWithoutOriginZeroesTheRest()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B);
        Write(v, 100, [1, 2, 3]);
        var block = Read(v, 0, B);
        Assert.Equal(new byte[] { 1, 2, 3 }, block[100..103]);
        Assert.Equal(B - 3, block.Count(b => b == 0));
    }

    [Fact]
    public void DataBlocksReusedAfterDeleteNeverLeakOldContents()
    {
        using var h = new PoolHarness(4 * B);
        var a = h.Pool.CreateVolume("a", 4 * B);
        Write(a, 0, Enumerable.Repeat((byte)0xEE, 4 * B).ToArray());
        h.Pool.DeleteVolume("a");
        h.Pool.CommitNow();
        var b = h.Pool.CreateVolume("b", 4 * B);
        Write(b, 10, [7]);
        var block = Read(b, 0, B);
        Assert.Equal(7, block[10]);
        Assert.DoesNotContain((byte)0xEE, block);
    }

    [Fact]
    public void WriteToSnapshottedBlockBreaksSharingOnlyForTheWriter()
    {
        using var h = new PoolHarness(64 * B);
        var a = h.Pool.CreateVolume("a", 4 * B);
        var old = PoolHarness.Pattern(B, 6);
        Write(a, 0, old);
        var s = h.Pool.CreateSnapshot("a", "a-snap");
        Assert.Equal(1UL, UsedData(h.Pool));
        Write(a, 512, [9, 9, 9]);
        Assert.Equal(2UL, UsedData(h.Pool));
        Assert.Equal(old, Read(s, 0, B));
        var expected = (byte[])old.Clone();
        expected[512] = expected[513] = expected[514] = 9;
        Assert.Equal(expected, Read(a, 0, B));
        // The snapshot breaks sharing too (conservatively: dm-thin's time stamps, quirk Q4).
        Write(s, 0, [1]);
        Assert.Equal(1, Read(s, 0, 1)[0]);
        Assert.Equal(expected, Read(a, 0, B));
    }

    [Fact]
    public void SnapshotKeepsTheOriginAndEvolvesIndependently()
    {
        using var h = new PoolHarness(64 * B);
        var origin = PoolHarness.Pattern(4 * B, 7);
        var a = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", origin));
        Write(a, 0, [1, 1]);
        var s = h.Pool.CreateSnapshot("a", "s");
        Assert.Equal(h.Pool.VolumeRecords.Single(r => r.Name == "a").OriginPath, s.OriginPath);
        Assert.Equal(origin.AsSpan(B, B).ToArray(), Read(s, B, B));
        Write(s, B, [2]);
        Assert.Equal(origin[B], Read(a, B, 1)[0]);
        Assert.Equal(2, Read(s, B, 1)[0]);
        Assert.Equal(new byte[] { 1, 1 }, Read(s, 0, 2));
        h.AssertOriginsUnchanged();
    }

    [Fact]
    public void DiscardUnmapsWholeBlocksOnlyAndTheOriginShowsAgain()
    {
        using var h = new PoolHarness(64 * B);
        var origin = PoolHarness.Pattern(4 * B, 8);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", origin));
        var data = PoolHarness.Pattern(3 * B, 9);
        Write(v, 0, data);
        // Covers block 1 whole and parts of blocks 0 and 2.
        Wait(v.DiscardAsync(B - 512, B + 1024));
        Assert.Equal(2UL, v.MappedBlocks);
        Assert.Equal(data[..B], Read(v, 0, B));
        Assert.Equal(origin.AsSpan(B, B).ToArray(), Read(v, B, B));
        Assert.Equal(data[(2 * B)..], Read(v, 2 * B, B));
        // Smaller than a block: nothing happens.
        Wait(v.DiscardAsync(10, 100));
        Assert.Equal(2UL, v.MappedBlocks);
    }

    [Fact]
    public void WriteZeroesReadsZerosAlsoOverTheOrigin()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", PoolHarness.Pattern(4 * B, 10)));
        Wait(v.WriteZeroesAsync(1000, 2 * B, ZeroFlags.MayDeallocate));
        Assert.All(Read(v, 1000, 2 * B), b => Assert.Equal(0, b));
        var plain = h.Pool.CreateVolume("b", 4 * B);
        Write(plain, 0, PoolHarness.Pattern(4 * B, 11));
        Wait(plain.WriteZeroesAsync(0, 4 * B, ZeroFlags.MayDeallocate));
        Assert.All(Read(plain, 0, 4 * B), b => Assert.Equal(0, b));
        Assert.Equal(0UL, plain.MappedBlocks);
    }

    [Fact]
    public void DeleteFreesOnlyUnsharedBlocks()
    {
        using var h = new PoolHarness(64 * B);
        var a = h.Pool.CreateVolume("a", 8 * B);
        Write(a, 0, PoolHarness.Pattern(4 * B, 12));
        h.Pool.CreateSnapshot("a", "s");
        Write(a, 0, PoolHarness.Pattern(B, 13));
        Assert.Equal(5UL, UsedData(h.Pool));
        h.Pool.DeleteVolume("a");
        h.Pool.CommitNow();
        Assert.Equal(4UL, UsedData(h.Pool));
        h.Pool.DeleteVolume("s");
        h.Pool.CommitNow();
        Assert.Equal(0UL, UsedData(h.Pool));
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task ConcurrentWritesToOneUnmappedBlockAllocateOnce()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", PoolHarness.Pattern(4 * B, 14)));
        var writes = Enumerable.Range(0, 16).Select(i => v.WriteAsync(B + i * 4096, Enumerable.Repeat((byte)(i + 1), 4096).ToArray()).AsTask()).ToArray();
        await Task.WhenAll(writes);
        Assert.Equal(1UL, UsedData(h.Pool));
        var block = Read(v, B, B);
        for (int i = 0; i < 16; i++)
            Assert.All(block.AsSpan(i * 4096, 4096).ToArray(), b => Assert.Equal((byte)(i + 1), b));
    }

    [Fact]
    public void UnalignedRequestsAnywhere()
    {
        using var h = new PoolHarness(64 * B);
        var origin = PoolHarness.Pattern(3 * B, 15);
        var v = h.Pool.CreateVolume("a", 3 * B, h.AddOrigin("base", origin));
        var model = (byte[])origin.Clone();
        var random = new Random(16);
        for (int i = 0; i < 200; i++)
        {
            int offset = random.Next(3 * B - 1);
            int length = random.Next(1, Math.Min(3 * B - offset, 3 * B / 2));
            var data = PoolHarness.Pattern(length, i);
            Write(v, offset, data);
            data.CopyTo(model, offset);
            int ro = random.Next(3 * B - 1), rl = random.Next(1, 3 * B - ro);
            Assert.Equal(model.AsSpan(ro, rl).ToArray(), Read(v, ro, rl));
        }
    }

    [Fact]
    public void AlignedNativeBuffersTakeTheDirectPath()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B);
        using var buffer = new NativeBuffer(2 * B);
        PoolHarness.Pattern(2 * B, 17).CopyTo(buffer.GetSpan());
        Wait(v.WriteAsync(B, buffer.Memory));
        using var back = new NativeBuffer(2 * B);
        Wait(v.ReadAsync(B, back.Memory));
        Assert.True(buffer.GetSpan().SequenceEqual(back.GetSpan()));
    }

    [Fact]
    public void OutOfRangeRequestsFailAndChangeNothing()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B);
        var e = Assert.Throws<BlockDeviceException>(() => Write(v, 4 * B - 10, new byte[20]));
        Assert.Equal(BlockError.OutOfRange, e.Error);
        Assert.Equal(BlockError.OutOfRange, Assert.Throws<BlockDeviceException>(() => Read(v, -1, 1)).Error);
        Assert.Equal(0UL, v.MappedBlocks);
    }

    [Fact]
    public void ExtentsDescribeMappedOriginAndHoles()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 8 * B, h.AddOrigin("base", PoolHarness.Pattern(3 * B, 18)));
        Write(v, 5 * B, new byte[10]);
        var extents = new VolumeExtent[16];
        int n = v.GetExtents(0, 8 * B, extents);
        Assert.Equal(
            new[]
            {
                new VolumeExtent(0, 3 * B, ExtentFlags.Data),
                new VolumeExtent(3 * B, 2 * B, ExtentFlags.Hole | ExtentFlags.Zero),
                new VolumeExtent(5 * B, B, ExtentFlags.Data),
                new VolumeExtent(6 * B, 2 * B, ExtentFlags.Hole | ExtentFlags.Zero),
            },
            extents[..n]);
    }

    [Fact]
    public void ReopenKeepsVolumesAndFlushedData()
    {
        using var h = new PoolHarness(64 * B);
        var v = h.Pool.CreateVolume("a", 4 * B, h.AddOrigin("base", PoolHarness.Pattern(4 * B, 19)));
        var data = PoolHarness.Pattern(5000, 20);
        Write(v, 3000, data);
        Wait(v.FlushAsync());
        h.Reopen();
        var reopened = h.Pool.GetVolume("a");
        Assert.Equal(data, Read(reopened, 3000, 5000));
        Assert.Equal(4L * B, reopened.Size);
        h.AssertMetadataClean();
    }

    [Fact]
    public void AChangedOrMissingOriginMakesOnlyThatVolumeUnavailable()
    {
        using var h = new PoolHarness(64 * B);
        string changed = h.AddOrigin("changed", PoolHarness.Pattern(4 * B, 21));
        string missing = h.AddOrigin("missing", PoolHarness.Pattern(4 * B, 22));
        h.Pool.CreateVolume("a", 4 * B, changed);
        h.Pool.CreateVolume("b", 4 * B, missing);
        var c = h.Pool.CreateVolume("c", 4 * B);
        Write(c, 0, [5]);
        h.ReplaceOrigin(changed, PoolHarness.Pattern(5 * B, 21));
        h.ReplaceOrigin(missing, null);
        h.Reopen();
        Assert.Contains("changed size", h.Pool.GetVolume("a").UnavailableReason);
        Assert.Contains("does not exist", h.Pool.GetVolume("b").UnavailableReason);
        Assert.Equal(BlockError.Unavailable, Assert.Throws<BlockDeviceException>(() => Read(h.Pool.GetVolume("a"), 0, 1)).Error);
        Assert.Equal(5, Read(h.Pool.GetVolume("c"), 0, 1)[0]);
    }

    [Fact]
    public void BadAdministrativeInputIsRefusedWithAClearMessage()
    {
        using var h = new PoolHarness(64 * B);
        h.Pool.CreateVolume("a", 4 * B);
        Assert.Contains("already exists", Assert.Throws<PoolException>(() => h.Pool.CreateVolume("a", 4 * B)).Message);
        Assert.Contains("multiple of 512", Assert.Throws<PoolException>(() => h.Pool.CreateVolume("b", 1000)).Message);
        Assert.Contains("volume name", Assert.Throws<PoolException>(() => h.Pool.CreateVolume("../x", 4 * B)).Message);
        Assert.Contains("no volume named", Assert.Throws<PoolException>(() => h.Pool.CreateSnapshot("nope", "s")).Message);
        Assert.Contains("does not exist", Assert.Throws<PoolException>(() => h.Pool.CreateVolume("c", 4 * B, "/origins/none")).Message);
        Assert.Single(h.Pool.VolumeRecords);
        Assert.Contains("block size", Assert.Throws<PoolException>(() => new PoolHarness(64 * B, new PoolOptions { BlockSize = 96 * 1024 })).Message);
    }

    [Fact]
    public async Task ABlockSizeThatIsNotAMultipleOfTheChunkNeverWritesIntoTheNextBlock()
    {
        int bs = (1 << 20) + 64 * 1024;
        using var h = new PoolHarness(8L * bs + (1 << 20), new PoolOptions { BlockSize = bs });
        var first = h.Pool.CreateVolume("first", 4L * bs);
        var a = h.Pool.CreateVolume("a", 4L * bs);
        await first.WriteAsync(0, new byte[4096]);          // data block 0
        var full = PoolHarness.Pattern(bs, 1);
        await a.WriteAsync(0, full);                         // data block 1, right after it
        var filler = h.Pool.CreateVolume("filler", 8L * bs);
        for (int k = 0; k < 6; k++)
            await filler.WriteAsync((long)k * bs, new byte[bs]);   // data blocks 2..7
        h.Pool.DeleteVolume("first");
        var b = h.Pool.CreateVolume("b", 4L * bs);
        // Data block 0 is the only free one. A partial first write builds it chunk by chunk, and
        // its last chunk is short.
        await b.WriteAsync(0, PoolHarness.Pattern(4096, 9));
        Assert.Equal(8UL, h.Pool.GetStatus().UsedDataBlocks);
        var back = new byte[bs];
        await a.ReadAsync(0, back);
        int firstBad = Enumerable.Range(0, bs).FirstOrDefault(i => back[i] != full[i], -1);
        Assert.True(firstBad < 0, $"a's block was overwritten by b's provisioning from byte {firstBad}");
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task FastZeroOfPartOfAnUnmappedBlockOnAFullPoolAnswersAtOnce()
    {
        using var h = new PoolHarness(2L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.FromSeconds(30) });
        var v = h.Pool.CreateVolume("v", 8L * B);
        await v.WriteAsync(0, PoolHarness.Pattern(2 * B, 1));   // the pool is full
        await h.Pool.FlushAsync();
        // Holes allowed: the range already reads zeros, nothing to do and nothing to wait for.
        await v.WriteZeroesAsync(4L * B + 4096, 4096, ZeroFlags.MayDeallocate | ZeroFlags.FastOnly).AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        await v.WriteZeroesAsync(4L * B + 8192, 4096, ZeroFlags.MayDeallocate).AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
        // NO_HOLE with FAST_ZERO: the range must end up allocated, which would mean waiting for
        // space, so the answer is "not supported fast", at once, not ENOSPC after the timeout.
        var refused = await Assert.ThrowsAsync<BlockDeviceException>(() => v.WriteZeroesAsync(4L * B, 4096, ZeroFlags.FastOnly).AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        Assert.Equal(BlockError.NotSupported, refused.Error);
        Assert.Equal(2UL, h.Pool.GetStatus().UsedDataBlocks);
        var back = new byte[B];
        await v.ReadAsync(4L * B, back);
        Assert.Equal(new byte[B], back);
    }

    /// <summary>Fails any transfer whose buffer is a managed array: the GC may move one between
    /// the alignment check and the moment the device pins it.</summary>
    private sealed class ArrayRefusingDevice(IBlockDevice inner) : IBlockDevice
    {
        public int ArraysRefused;
        public string Name => inner.Name;
        public long Length => inner.Length;
        public int LogicalBlockSize => inner.LogicalBlockSize;
        public int BufferAlignment => inner.BufferAlignment;
        public bool IsReadOnly => inner.IsReadOnly;
        public ValueTask ReadAsync(long offset, Memory<byte> destination) =>
            Refuse(destination) ?? inner.ReadAsync(offset, destination);
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None) =>
            Refuse(source) ?? inner.WriteAsync(offset, source, flags);
        public ValueTask FlushAsync() => inner.FlushAsync();
        public ValueTask DeallocateAsync(long offset, long length) => inner.DeallocateAsync(offset, length);
        public ValueTask ZeroAsync(long offset, long length) => inner.ZeroAsync(offset, length);
        public void Grow(long newLength) => inner.Grow(newLength);
        public void Dispose() => inner.Dispose();

        private ValueTask? Refuse(ReadOnlyMemory<byte> buffer)
        {
            if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray(buffer, out _))
                return null;
            Interlocked.Increment(ref ArraysRefused);
            return ValueTask.FromException(new BlockDeviceException(BlockError.InvalidArgument, "a managed array reached the device"));
        }
    }

    [Fact]
    public async Task AManagedBufferNeverGoesToTheDataDeviceAsItIsEvenWhenAligned()
    {
        ArrayRefusingDevice? data = null;
        using var h = new PoolHarness(8L * B, null, size => size == PoolHarness.MetadataSize
            ? new MemoryBlockDevice(size, name: "metadata")
            : data = new ArrayRefusingDevice(new MemoryBlockDevice(size, name: "data")));
        var v = h.Pool.CreateVolume("a", 4L * B);
        // An array on the pinned heap, sliced at a 4 KiB boundary: aligned now and never moving,
        // but the engine cannot tell it from one that moves, so it must bounce it.
        var array = GC.AllocateArray<byte>(3 * B, pinned: true);
        int skew;
        unsafe
        {
            fixed (byte* p = array)
                skew = (int)((4096 - ((nint)p & 4095)) & 4095);
        }
        var aligned = array.AsMemory(skew, B);
        PoolHarness.Pattern(B, 8).CopyTo(aligned);
        await v.WriteAsync(0, aligned);                      // provisions a whole block
        await v.WriteAsync(B, aligned[..4096]);              // provisions part of a block
        await v.WriteAsync(0, aligned[..8192]);              // overwrites a mapped block in place
        var back = array.AsMemory(skew + B, B);
        await v.ReadAsync(0, back);
        Assert.Equal(PoolHarness.Pattern(B, 8), back.ToArray());
        Assert.Equal(0, data!.ArraysRefused);
    }
    [Fact]
    public async Task UnalignedWritesBeyondTheBounceBuffersWaitForOneInsteadOfAllocating()
    {
        GatedDevice? data = null;
        using var h = new PoolHarness(32L * B, new PoolOptions { BounceBuffers = 4 }, size => size == PoolHarness.MetadataSize
            ? new MemoryBlockDevice(size, name: "metadata")
            : data = new GatedDevice(new MemoryBlockDevice(size, name: "data"), GatedOperations.Write));
        data!.Open();
        var v = h.Pool.CreateVolume("a", 16L * B);
        for (int i = 0; i < 16; i++)
            await v.WriteAsync((long)i * B, PoolHarness.Pattern(B, i));

        // Sixteen writes that each need a bounce buffer (unaligned, into mapped blocks), while
        // the device holds every write: four get a buffer and reach the device, twelve wait.
        data.Close();
        var writes = Enumerable.Range(0, 16).Select(i => v.WriteAsync((long)i * B + 100, PoolHarness.Pattern(1000, 100 + i)).AsTask()).ToArray();
        Assert.True(SpinWait.SpinUntil(() => h.Pool.BounceBuffers.Waiting == 12, TimeSpan.FromSeconds(10)),
            $"{h.Pool.BounceBuffers.Waiting} requests wait for a bounce buffer, {data.WritesArrived} writes reached the device");
        Assert.Equal(4, data.WritesArrived);
        Assert.Equal(0, h.Pool.BounceBuffers.Temporaries);
        data.Open();
        await Task.WhenAll(writes).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        for (int i = 0; i < 16; i++)
        {
            var expected = PoolHarness.Pattern(B, i);
            PoolHarness.Pattern(1000, 100 + i).CopyTo(expected, 100);
            Assert.Equal(expected, Read(v, (long)i * B, B));
        }
        Assert.Equal(12, h.Pool.BounceBuffers.Waits);
    }

    [Fact]
    public async Task NoHoleFastZeroOfPartOfAnUnmappedBlockAllocatesIt()
    {
        using var h = new PoolHarness(16L * B);
        var v = h.Pool.CreateVolume("v", 8L * B);
        ulong before = v.MappedBlocks;
        await v.WriteZeroesAsync(4096, 4096, ZeroFlags.FastOnly);      // NO_HOLE | FAST_ZERO, part of block 0
        await v.WriteZeroesAsync(2L * B, B, ZeroFlags.FastOnly);        // NO_HOLE | FAST_ZERO, all of block 2
        ulong after = v.MappedBlocks;
        Assert.True(after == before + 2, $"mapped blocks {before} -> {after}: the whole block was allocated, the partial one was left a hole despite NO_HOLE");
    }
}
