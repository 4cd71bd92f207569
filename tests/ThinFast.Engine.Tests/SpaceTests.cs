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
    public async Task AfterAGrowABlockInTheNewSpaceIsDiscardedOnTheFileToo()
    {
        // Files open the data twice (the flush handle beside the I/O one); both must learn the new
        // length, or the discard of a block in the grown space is refused as out of range.
        var dir = Directory.CreateTempSubdirectory("thinfast-grow-").FullName;
        try
        {
            var log = new List<string>();
            var options = new PoolOptions { Log = line => { lock (log) log.Add(line); } };
            using var pool = ThinPool.CreateFiles(PoolFiles.InFolder(dir), 8 << 20, 4L * B, options, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable });
            var v = pool.CreateVolume("a", 16L * B);
            await FillAsync(v, 4);
            pool.GrowData(8L * B);
            await v.WriteAsync(4L * B, PoolHarness.Pattern(B, 4));
            await v.FlushAsync();
            await v.DiscardAsync(4L * B, B);
            pool.CommitNow();
            Assert.True(pool.WaitForPassdowns(TimeSpan.FromSeconds(10)), "the discard never finished");
            lock (log)
                Assert.DoesNotContain(log, line => line.Contains("discard of data blocks"));
            var back = new byte[B];
            await v.ReadAsync(4L * B, back);
            Assert.Equal(new byte[B], back);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task WritesQueueWhenFullAndSucceedAfterTheDataDeviceGrows()
    {
        using var h = new PoolHarness(8L * B, new PoolOptions { LowWaterBlocks = 2 });
        var v = h.Pool.CreateVolume("a", 32L * B);
        await FillAsync(v, 8);
        h.WaitForEvent("low water");

        var queued = v.WriteAsync(8L * B, PoolHarness.Pattern(4096, 100)).AsTask();
        await WaitForModeAsync(h.Pool, PoolMode.OutOfDataSpace);
        Assert.False(queued.IsCompleted, "a write needing space completed while the pool was full");

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

    [Fact]
    public async Task ASnapshotOfAVolumeWithAWriteQueuedForSpaceDoesNotWaitAndAGrowReleasesTheQueue()
    {
        // Timeout zero: the write would queue for ever, and a snapshot draining it deadlocked.
        using var h = new PoolHarness(4L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.Zero, AdminDrainTimeout = TimeSpan.FromSeconds(5) });
        var v = h.Pool.CreateVolume("a", 16L * B);
        await FillAsync(v, 4);
        var queued = v.WriteAsync(6L * B, PoolHarness.Pattern(B, 60)).AsTask();
        await WaitForModeAsync(h.Pool, PoolMode.OutOfDataSpace);
        Assert.False(queued.IsCompleted);

        var snapshot = Task.Run(() => h.Pool.CreateSnapshot("a", "a-snap"), TestContext.Current.CancellationToken);
        await snapshot.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);
        var grow = Task.Run(() => h.Pool.GrowData(16L * B), TestContext.Current.CancellationToken);
        await grow.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);
        await queued.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);

        // The snapshot was taken before the queued write: it has the old contents there.
        var back = new byte[B];
        await h.Pool.GetVolume("a-snap").ReadAsync(6L * B, back);
        Assert.All(back, x => Assert.Equal(0, x));
        await v.ReadAsync(6L * B, back);
        Assert.Equal(PoolHarness.Pattern(B, 60), back);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task ASnapshotDoesNotWaitForAWriteStuckBehindAWriteQueuedForSpace()
    {
        // The second write waits for the block lock the queued one holds: it has looked nothing
        // up yet, so the snapshot need not wait for it either (before, it waited the whole drain
        // timeout and then refused as busy, with a grow that would free the queue stuck behind it).
        using var h = new PoolHarness(4L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.Zero, AdminDrainTimeout = TimeSpan.FromSeconds(60) });
        var v = h.Pool.CreateVolume("a", 16L * B);
        await FillAsync(v, 4);
        var queued = v.WriteAsync(6L * B, PoolHarness.Pattern(B, 60)).AsTask();
        await WaitForModeAsync(h.Pool, PoolMode.OutOfDataSpace);
        long waitsBefore = h.Pool.BlockLockWaits;
        var behind = v.WriteAsync(6L * B, PoolHarness.Pattern(4096, 61)).AsTask();
        Assert.True(SpinWait.SpinUntil(() => h.Pool.BlockLockWaits > waitsBefore, TimeSpan.FromSeconds(10)), "the second write never waited for the block lock");

        await Task.Run(() => h.Pool.CreateSnapshot("a", "a-snap"), TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        await Task.Run(() => h.Pool.GrowData(16L * B), TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        await Task.WhenAll(queued, behind).WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);

        var back = new byte[B];
        await h.Pool.GetVolume("a-snap").ReadAsync(6L * B, back);
        Assert.All(back, x => Assert.Equal(0, x));
        var expected = PoolHarness.Pattern(B, 60);
        PoolHarness.Pattern(4096, 61).CopyTo(expected, 0);
        await v.ReadAsync(6L * B, back);
        Assert.Equal(expected, back);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task DeletingAVolumeFailsItsWritesQueuedForSpaceAtOnce()
    {
        using var h = new PoolHarness(4L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.Zero });
        var v = h.Pool.CreateVolume("a", 16L * B);
        await FillAsync(v, 4);
        var queued = v.WriteAsync(6L * B, new byte[B]).AsTask();
        await WaitForModeAsync(h.Pool, PoolMode.OutOfDataSpace);
        await Task.Run(() => h.Pool.DeleteVolume("a"), TestContext.Current.CancellationToken).WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);
        await Assert.ThrowsAnyAsync<BlockDeviceException>(() => queued.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken));
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task ShutdownFailsWritesQueuedForSpaceBeforeItDrains()
    {
        using var h = new PoolHarness(4L * B, new PoolOptions { NoSpaceTimeout = TimeSpan.Zero });
        var v = h.Pool.CreateVolume("a", 16L * B);
        await FillAsync(v, 4);
        var queued = v.WriteAsync(6L * B, new byte[B]).AsTask();
        await WaitForModeAsync(h.Pool, PoolMode.OutOfDataSpace);
        var stop = Task.Run(() => h.Pool.Dispose(), TestContext.Current.CancellationToken);
        await stop.WaitAsync(TimeSpan.FromSeconds(15), TestContext.Current.CancellationToken);
        await Assert.ThrowsAnyAsync<BlockDeviceException>(() => queued.WaitAsync(TimeSpan.FromSeconds(1), TestContext.Current.CancellationToken));
    }

    /// <summary>Waits for the pool to report a mode (the event a queued write causes).</summary>
    private static async Task WaitForModeAsync(ThinPool pool, PoolMode mode)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (pool.Mode != mode)
        {
            Assert.True(DateTime.UtcNow < deadline, $"the pool never went {mode} (it is {pool.Mode})");
            await Task.Delay(5, TestContext.Current.CancellationToken);
        }
    }
}
