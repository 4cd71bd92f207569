using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>Discard passdown (dm-thin §4.7): the data device hears of a freed block only after
/// the commit that unmaps it, and nobody else gets the block until that discard is done.</summary>
public class DiscardPassdownTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    [Fact]
    public async Task AFreedBlockIsNotReusedWhileItsDiscardIsInFlight()
    {
        GatedDevice? gated = null;
        using var h = new PoolHarness(4L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.Zero }, size =>
            size == PoolHarness.MetadataSize
                ? new MemoryBlockDevice(size, name: "metadata")
                : gated = new GatedDevice(new MemoryBlockDevice(size, name: "data")));
        var a = h.Pool.CreateVolume("a", 4L * B);
        var b = h.Pool.CreateVolume("b", 4L * B);
        for (int i = 0; i < 4; i++)
            await a.WriteAsync((long)i * B, PoolHarness.Pattern(B, i));
        await a.FlushAsync();

        // The TRIM of a's block 0; the commit that unmaps it; its discard now stuck on the device.
        var trim = Task.Run(async () => await a.DiscardAsync(0, B), TestContext.Current.CancellationToken);
        var flush = Task.Run(async () =>
        {
            await trim;
            await a.FlushAsync();
        }, TestContext.Current.CancellationToken);
        Assert.True(gated!.DeallocateArrived.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "the discard never reached the data device");
        h.Pool.CommitNow();

        // Block 0 is the pool's only free block, but its discard is still in flight: b must not
        // get it (a late discard would destroy b's data). b queues for space meanwhile.
        var bData = PoolHarness.Pattern(B, 100);
        var write = Task.Run(async () => await b.WriteAsync(0, bData), TestContext.Current.CancellationToken);
        Assert.True(SpinWait.SpinUntil(() => b.Gate.Parked == 1 || write.IsCompleted, TimeSpan.FromSeconds(10)), "b's write neither completed nor waited for space");
        Assert.False(write.IsCompleted, "b provisioned the block whose discard was still in flight");

        gated.Open();
        await Task.WhenAll(trim, flush, write).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        await b.FlushAsync();
        var back = new byte[B];
        await b.ReadAsync(0, back);
        Assert.Equal(bData, back);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task ACrashAfterAnUnflushedTrimLeavesTheOldDataOrTheOriginNeverZeros()
    {
        using var h = new PoolHarness(16L * B, new PoolOptions { CommitInterval = TimeSpan.FromHours(1) });
        var originBytes = PoolHarness.Pattern(4 * B, 7);
        var v = h.Pool.CreateVolume("a", 4L * B, h.AddOrigin("base", originBytes));
        var written = PoolHarness.Pattern(2 * B, 8);
        await v.WriteAsync(0, written);
        await v.FlushAsync();

        // Acknowledged, never flushed, then the power goes.
        await v.DiscardAsync(0, 2L * B);
        h.CrashAndReopen(((MemoryBlockDevice)h.MetadataDevice).ToArray(), ((MemoryBlockDevice)h.DataDevice).ToArray());

        var back = new byte[2 * B];
        await h.Pool.GetVolume("a").ReadAsync(0, back);
        for (int block = 0; block < 2; block++)
        {
            var got = back.AsSpan(block * B, B);
            Assert.True(got.SequenceEqual(written.AsSpan(block * B, B)) || got.SequenceEqual(originBytes.AsSpan(block * B, B)),
                $"block {block} after the crash reads neither its old data nor the origin (first bytes {Convert.ToHexString(got[..8])})");
        }
        h.AssertOriginsUnchanged();
        h.AssertMetadataClean();
    }
    [Fact]
    public async Task ASlowDiscardDelaysNeitherAFlushNorACommitNorTheShutdown()
    {
        GatedDevice? gated = null;
        var h = new PoolHarness(16L * B, new PoolOptions { AdminDrainTimeout = TimeSpan.FromMilliseconds(500) }, size =>
            size == PoolHarness.MetadataSize
                ? new MemoryBlockDevice(size, name: "metadata")
                : gated = new GatedDevice(new MemoryBlockDevice(size, name: "data")));
        try
        {
            var a = h.Pool.CreateVolume("a", 8L * B);
            for (int i = 0; i < 4; i++)
                await a.WriteAsync((long)i * B, PoolHarness.Pattern(B, i));
            await a.FlushAsync();

            // A TRIM whose discard then sticks on the device (a large range on a slow disk).
            await a.DiscardAsync(0, 2L * B);
            await a.FlushAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            Assert.True(gated!.DeallocateArrived.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "the discard never reached the data device");

            // Meanwhile the guest goes on writing and flushing, and the operator creates a volume.
            await a.WriteAsync(4L * B, PoolHarness.Pattern(B, 9));
            await a.FlushAsync().AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
            await Task.Run(() => h.Pool.CreateVolume("b", B), TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
            Assert.Equal(1, gated.DeallocatesArrived);

            // Shutdown waits for the discard only as long as it waits for requests, then closes.
            var close = Task.Run(() => h.Pool.Dispose(), TestContext.Current.CancellationToken);
            await close.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
            h.WaitForEvent("discards on the data device still in flight");
        }
        finally
        {
            gated?.Open();
            h.Dispose();
        }
    }
}
