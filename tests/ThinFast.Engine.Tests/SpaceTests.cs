using ThinFast.IO;

namespace ThinFast.Engine.Tests;

/// <summary>Out of data space (dm-thin §6): queue or fail, recover when the pool grows, and keep
/// everything that does not need a new block working.</summary>
public class SpaceTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    private static async Task FillAsync(ThinVolume v, int blocks)
    {
        for (int i = 0; i < blocks; i++)
            await v.WriteAsync((long)i * B, PoolHarness.Pattern(B, i));
    }

    [Fact]
    public async Task WritesQueueWhenFullAndSucceedAfterTheDataDeviceGrows()
    {
        using var h = new PoolHarness(8L * B, new PoolOptions { LowWaterBlocks = 2 });
        var v = h.Pool.CreateVolume("a", 32L * B);
        await FillAsync(v, 8);
        Assert.Contains(h.Events, e => e.Contains("low water"));

        var queued = v.WriteAsync(8L * B, PoolHarness.Pattern(4096, 100)).AsTask();
        await Task.Delay(300, TestContext.Current.CancellationToken);
        Assert.False(queued.IsCompleted, "a write needing space completed while the pool was full");
        Assert.Equal(PoolMode.OutOfDataSpace, h.Pool.Mode);

        // Reads and writes to provisioned blocks keep working meanwhile.
        await v.WriteAsync(0, new byte[] { 42 });
        var one = new byte[1];
        await v.ReadAsync(0, one);
        Assert.Equal(42, one[0]);

        h.Pool.GrowData(16L * B);
        await queued.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(PoolMode.Write, h.Pool.Mode);
        var back = new byte[4096];
        await v.ReadAsync(8L * B, back);
        Assert.Equal(PoolHarness.Pattern(4096, 100), back);
        Assert.Equal(16UL, h.Pool.GetStatus().TotalDataBlocks);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task ErrorIfNoSpaceFailsAtOnceWithNoSpaceAndNothingElseBreaks()
    {
        using var h = new PoolHarness(4L * B, new PoolOptions { ErrorIfNoSpace = true });
        var v = h.Pool.CreateVolume("a", 16L * B);
        await FillAsync(v, 4);
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => v.WriteAsync(5L * B, new byte[512]).AsTask());
        Assert.Equal(BlockError.NoSpace, e.Error);
        for (int i = 0; i < 4; i++)
        {
            var block = new byte[B];
            await v.ReadAsync((long)i * B, block);
            Assert.Equal(PoolHarness.Pattern(B, i), block);
        }
        // Freeing space (a discard, committed) lets writes allocate again.
        await v.DiscardAsync(0, B);
        await v.FlushAsync();
        await v.WriteAsync(5L * B, new byte[512]);
        Assert.Equal(PoolMode.Write, h.Pool.Mode);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task QueuedWritesFailWithNoSpaceAfterTheTimeout()
    {
        using var h = new PoolHarness(2L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.FromMilliseconds(500) });
        var v = h.Pool.CreateVolume("a", 8L * B);
        await FillAsync(v, 2);
        var started = DateTime.UtcNow;
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => v.WriteAsync(3L * B, new byte[512]).AsTask().WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.Equal(BlockError.NoSpace, e.Error);
        Assert.InRange(DateTime.UtcNow - started, TimeSpan.FromMilliseconds(400), TimeSpan.FromSeconds(5));
        Assert.True(h.Pool.GetStatus().ErrorIfNoSpace, "after the timeout the pool behaves as error_if_no_space");
        // Later writes fail at once until space returns.
        await Assert.ThrowsAsync<BlockDeviceException>(() => v.WriteAsync(4L * B, new byte[512]).AsTask().WaitAsync(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken));
        h.Pool.GrowData(4L * B);
        await v.WriteAsync(4L * B, new byte[512]);
    }

    [Fact]
    public async Task PeriodicCommitMakesWritesDurableWithoutAFlush()
    {
        using var h = new PoolHarness(16L * B, new PoolOptions { CommitInterval = TimeSpan.FromMilliseconds(100) });
        var v = h.Pool.CreateVolume("a", 4L * B);
        await v.WriteAsync(0, new byte[] { 1, 2, 3 });
        Assert.True(h.Pool.GetStatus().HasUncommittedChanges);
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (h.Pool.GetStatus().HasUncommittedChanges && DateTime.UtcNow < deadline)
            await Task.Delay(20, TestContext.Current.CancellationToken);
        Assert.False(h.Pool.GetStatus().HasUncommittedChanges, "the periodic commit did not run");
    }
}
