using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>fsyncgate: once a data flush or a metadata commit has failed, no later FLUSH or FUA
/// write of a volume that had writes in flight may succeed, however healthy the device is again,
/// and a reopen comes up read-only with needs_check (dm-thin §7).</summary>
public class DurabilityTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    /// <summary>A pool whose metadata or data device can be made to fail, and the in-memory
    /// devices underneath for the reopen.</summary>
    private sealed class FaultyPool : IDisposable
    {
        public readonly MemoryBlockDevice MetadataMemory = new(PoolHarness.MetadataSize, name: "metadata");
        public readonly MemoryBlockDevice DataMemory = new(64L * B, name: "data");
        public readonly FaultInjectingDevice Metadata;
        public readonly FaultInjectingDevice Data;
        /// <summary>Between the fault injector and the memory: holds one chosen data write.</summary>
        public readonly RangeHoldDevice DataHold;
        public readonly PoolHarness Harness;

        public FaultyPool(PoolOptions? options = null)
        {
            Metadata = new FaultInjectingDevice(MetadataMemory) { Enabled = false, ErrorRate = 1 };
            DataHold = new RangeHoldDevice(DataMemory);
            Data = new FaultInjectingDevice(DataHold) { Enabled = false, ErrorRate = 1 };
            Harness = new PoolHarness(64L * B, options, size => size == PoolHarness.MetadataSize ? Metadata : Data);
        }

        public ThinPool Pool => Harness.Pool;

        /// <summary>Stops the pool as a crash would (no clean close) and opens copies of the
        /// devices as they are now.</summary>
        public void ReopenAfterCrash() => Harness.CrashAndReopen(MetadataMemory.ToArray(), DataMemory.ToArray());

        public void Dispose() => Harness.Dispose();
    }

    private static async Task AssertEioAsync(Func<ValueTask> operation, string what)
    {
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => operation().AsTask());
        Assert.True(e.Error == BlockError.IoError, $"{what}: {e.Error} ({e.Message})");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AfterADataFlushFailsEveryLaterFlushAndFuaWriteFailsAndTheReopenIsReadOnly(bool provisioning)
    {
        using var p = new FaultyPool();
        var changed = p.Pool.CreateVolume("changed", 16L * B);
        var untouched = p.Pool.CreateVolume("untouched", 16L * B);
        var kept = PoolHarness.Pattern(B, 1);
        await changed.WriteAsync(0, kept);
        await untouched.WriteAsync(0, kept);
        await changed.FlushAsync();

        // In place the pool stays clean (the flush is a bare fdatasync); provisioning makes it
        // dirty (the flush is a commit that starts with the fdatasync).
        await changed.WriteAsync(provisioning ? 4L * B : 0, PoolHarness.Pattern(4096, 2));
        Assert.Equal(provisioning, p.Pool.GetStatus().HasUncommittedChanges);
        p.Data.ErrorTargets = FaultTargets.Flush;
        p.Data.Enabled = true;
        await AssertEioAsync(changed.FlushAsync, "the failing flush");
        p.Data.Enabled = false;

        // The device is healthy again; the lost writes are still lost.
        await AssertEioAsync(changed.FlushAsync, "the second flush");
        await AssertEioAsync(changed.FlushAsync, "the third flush");
        await AssertEioAsync(() => changed.WriteAsync(B - 512, new byte[512], WriteFlags.ForceUnitAccess), "a FUA write");
        await AssertEioAsync(() => changed.WriteAsync(B - 512, ReadOnlyMemory<byte>.Empty, WriteFlags.ForceUnitAccess), "an empty FUA write");
        await AssertEioAsync(changed.FlushAsync, "the flush after the FUA write");
        Assert.NotNull(changed.LostWritesReason);
        // A volume with nothing in flight lost nothing: its flush still succeeds.
        await untouched.FlushAsync();
        Assert.Null(untouched.LostWritesReason);

        var status = p.Pool.GetStatus();
        Assert.Equal(PoolMode.ReadOnly, status.Mode);
        Assert.True(status.NeedsCheck, status.ToString());
        Assert.Contains(" ro ", status.ToString());
        p.Harness.WaitForEvent("lost acknowledged writes");

        p.ReopenAfterCrash();
        Assert.Equal(PoolMode.ReadOnly, p.Pool.Mode);
        Assert.True(p.Pool.GetStatus().NeedsCheck);
        p.Harness.WaitForEvent("has needs_check set");
        var back = new byte[B];
        await p.Pool.GetVolume("changed").ReadAsync(0, back);
        // Block 0 was committed before the failure; only its first 4 KiB and last 512 bytes
        // were rewritten since.
        Assert.Equal(kept.AsSpan(4096, B - 4096 - 512).ToArray(), back.AsSpan(4096, B - 4096 - 512).ToArray());
        await AssertEioAsync(() => p.Pool.GetVolume("changed").WriteAsync(12L * B, new byte[512]), "provisioning after the reopen");
        Assert.Throws<PoolException>(() => p.Pool.CreateVolume("new", B));
    }

    [Fact]
    public async Task AfterAMetadataCommitFailsEveryLaterFlushFailsAndTheReopenIsReadOnly()
    {
        using var p = new FaultyPool();
        var v = p.Pool.CreateVolume("a", 16L * B);
        var kept = PoolHarness.Pattern(B, 3);
        await v.WriteAsync(0, kept);
        await v.FlushAsync();

        await v.WriteAsync(2L * B, PoolHarness.Pattern(B, 4));
        p.Metadata.ErrorTargets = FaultTargets.Write;
        p.Metadata.Enabled = true;
        await AssertEioAsync(v.FlushAsync, "the failing commit");
        p.Metadata.Enabled = false;

        // The abort rolled the provisioning back: block 2 is unmapped again, so the acknowledged
        // write is gone and no flush may say otherwise.
        await AssertEioAsync(v.FlushAsync, "the second flush");
        await AssertEioAsync(v.FlushAsync, "the third flush");
        await AssertEioAsync(() => v.WriteAsync(B - 512, new byte[512], WriteFlags.ForceUnitAccess), "a FUA write in place");
        Assert.Equal(PoolMode.ReadOnly, p.Pool.Mode);
        // needs_check could not be written while the device failed; it is once the device works.
        p.Harness.WaitForEvent("needs_check set in the metadata");

        p.ReopenAfterCrash();
        Assert.Equal(PoolMode.ReadOnly, p.Pool.Mode);
        Assert.True(p.Pool.GetStatus().NeedsCheck, "needs_check reached the committed metadata");
        var back = new byte[B];
        await p.Pool.GetVolume("a").ReadAsync(0, back);
        Assert.Equal(kept.AsSpan(0, B - 512).ToArray(), back.AsSpan(0, B - 512).ToArray());
        string image = Path.Combine(p.Harness.Directory, "after-abort.img");
        File.WriteAllBytes(image, p.MetadataMemory.ToArray());
        ExternalTool.AssertMetadataClean(image);
    }

    [Fact]
    public async Task AFailedPeriodicCommitFailsTheNextFlushOfEveryVolumeItCovered()
    {
        using var p = new FaultyPool();
        var v = p.Pool.CreateVolume("a", 16L * B);
        await v.WriteAsync(0, PoolHarness.Pattern(B, 5));
        p.Metadata.ErrorTargets = FaultTargets.Write;
        p.Metadata.Enabled = true;
        Assert.ThrowsAny<Exception>(() => p.Pool.CommitNow());
        p.Metadata.Enabled = false;
        // No FLUSH was failed yet: the first one the guest sends must report the loss.
        await AssertEioAsync(v.FlushAsync, "the first flush after a failed background commit");
        await AssertEioAsync(v.FlushAsync, "the second flush");
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task AWriteStillInFlightWhenItsTransactionIsAbortedFailsItsFlush(bool fua)
    {
        using var p = new FaultyPool(new PoolOptions { CommitInterval = TimeSpan.FromHours(1) });
        var w = p.Pool.CreateVolume("w", 16L * B);
        var other = p.Pool.CreateVolume("other", 16L * B);
        await w.WriteAsync(B, PoolHarness.Pattern(B, 1));          // w's block 1 is data block 0
        await w.FlushAsync();
        await other.WriteAsync(0, PoolHarness.Pattern(B, 2));      // the pool is dirty

        // w writes blocks 0 and 1: block 0 is provisioned and its mapping inserted, block 1 is
        // overwritten in place, and that write is held on the device.
        p.DataHold.Arm(0, B);
        var data = PoolHarness.Pattern(2 * B, 3);
        var write = Task.Run(async () => await w.WriteAsync(0, data, fua ? WriteFlags.ForceUnitAccess : WriteFlags.None), TestContext.Current.CancellationToken);
        Assert.True(p.DataHold.Held.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "w's in-place write never reached the device");

        // Another volume's FLUSH fails on the metadata: the transaction holding w's new mapping is
        // dropped while w's write has not completed yet.
        p.Metadata.ErrorTargets = FaultTargets.Write;
        p.Metadata.Enabled = true;
        await AssertEioAsync(() => other.FlushAsync(), "the failing commit");
        p.Metadata.Enabled = false;
        p.DataHold.Release();
        if (fua)
            await AssertEioAsync(() => new ValueTask(write.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken)), "the FUA write whose mapping was aborted");
        else
            await write.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        await AssertEioAsync(() => w.FlushAsync(), "w's FLUSH after its mapping was aborted");
        await AssertEioAsync(() => w.FlushAsync(), "w's second FLUSH");
        Assert.NotNull(w.LostWritesReason);
    }

    [Fact]
    public async Task AReadOnlyPoolChangesNoMappingSoNothingAFlushAcknowledgesIsLost()
    {
        using var p = new FaultyPool();
        var a = p.Pool.CreateVolume("a", 16L * B);
        var u = p.Pool.CreateVolume("u", 16L * B);
        var kept = PoolHarness.Pattern(B, 1);
        await u.WriteAsync(0, kept);
        await u.FlushAsync();
        await a.WriteAsync(4L * B, PoolHarness.Pattern(B, 2));
        p.Data.ErrorTargets = FaultTargets.Flush;
        p.Data.Enabled = true;
        await AssertEioAsync(() => a.FlushAsync(), "the failing data flush");
        p.Data.Enabled = false;
        Assert.Equal(PoolMode.ReadOnly, p.Pool.Mode);
        Assert.Null(u.LostWritesReason);

        // u had nothing in flight, so its FLUSH still works; but a write-zeroes that would unmap
        // (a mapping change read-only mode cannot commit) is refused, not kept in memory. A TRIM
        // is advisory and, as in dm-thin's read-only mode, completes without unmapping anything.
        await AssertEioAsync(() => u.WriteZeroesAsync(0, B, ZeroFlags.MayDeallocate), "write-zeroes that unmaps on a read-only pool");
        await u.DiscardAsync(0, B);
        await u.FlushAsync();
        var back = new byte[B];
        await u.ReadAsync(0, back);
        Assert.Equal(kept, back);
        p.ReopenAfterCrash();
        await p.Pool.GetVolume("u").ReadAsync(0, back);
        Assert.Equal(kept, back);
    }

    [Fact]
    public async Task AMappingChangeRefusedOnAReadOnlyPoolAbortsNothingAndMarksNoOtherVolumeLost()
    {
        using var p = new FaultyPool(new PoolOptions { CommitInterval = TimeSpan.FromHours(1) });
        var a = p.Pool.CreateVolume("a", 16L * B);
        var u = p.Pool.CreateVolume("u", 16L * B);
        await u.WriteAsync(0, PoolHarness.Pattern(B, 1));
        await u.FlushAsync();
        await a.WriteAsync(4L * B, PoolHarness.Pattern(B, 2));
        p.Data.ErrorTargets = FaultTargets.Flush;
        p.Data.Enabled = true;
        await AssertEioAsync(() => a.FlushAsync(), "the failing data flush");
        p.Data.Enabled = false;
        Assert.Equal(PoolMode.ReadOnly, p.Pool.Mode);
        Assert.Null(u.LostWritesReason);

        // Read-only mode allows in-place writes to mapped unshared blocks and data-only FLUSHes.
        var again = PoolHarness.Pattern(4096, 3);
        await u.WriteAsync(0, again);
        int needsCheckCommits;
        lock (p.Harness.Events)
            needsCheckCommits = p.Harness.Events.Count(e => e.Contains("needs_check set in the metadata"));

        // Another volume's write-zeroes that would unmap is refused (correct) ...
        await AssertEioAsync(() => a.WriteZeroesAsync(8L * B, B, ZeroFlags.MayDeallocate), "write-zeroes that unmaps on a read-only pool");

        int needsCheckCommitsAfter;
        lock (p.Harness.Events)
            needsCheckCommitsAfter = p.Harness.Events.Count(e => e.Contains("needs_check set in the metadata"));
        string log;
        lock (p.Harness.Events)
            log = string.Join(" | ", p.Harness.Events);
        // ... but it must not abort anything, rewrite the metadata, or take u down with it.
        Assert.True(u.LostWritesReason is null, $"u was marked lost: {u.LostWritesReason}; log: {log}");
        Assert.True(needsCheckCommits == needsCheckCommitsAfter, $"the refused unmap committed needs_check again ({needsCheckCommits} -> {needsCheckCommitsAfter}); log: {log}");
        await u.FlushAsync();
    }

    [Fact]
    public async Task ADeleteThatFailsWhileTheVolumeLostWritesLeavesItsFlushFailing()
    {
        using var p = new FaultyPool(new PoolOptions { CommitInterval = TimeSpan.FromHours(1), AdminDrainTimeout = TimeSpan.FromSeconds(20) });
        var v = p.Pool.CreateVolume("v", 16L * B);
        var other = p.Pool.CreateVolume("other", 16L * B);
        await v.WriteAsync(B, PoolHarness.Pattern(B, 1));          // v's block 1 is data block 0
        await v.FlushAsync();
        var lost = PoolHarness.Pattern(B, 2);
        await v.WriteAsync(3L * B, lost);                          // provisions; acknowledged, not yet durable
        await other.WriteAsync(0, PoolHarness.Pattern(B, 3));

        // An in-place write of v's is held on the device, so the delete waits for it.
        p.DataHold.Arm(0, B);
        var held = Task.Run(async () => await v.WriteAsync(B, new byte[4096]), TestContext.Current.CancellationToken);
        Assert.True(p.DataHold.Held.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        var delete = Task.Run(() => p.Pool.DeleteVolume("v"), TestContext.Current.CancellationToken);
        Assert.True(SpinWait.SpinUntil(() => v.Gate.IsClosed, TimeSpan.FromSeconds(10)), "the delete never started draining v");

        // Meanwhile a data flush fails: v's unflushed provisioning write is lost (its mapping goes
        // with the aborted transaction) and v is marked so.
        p.Data.ErrorTargets = FaultTargets.Flush;
        p.Data.Enabled = true;
        await AssertEioAsync(() => other.FlushAsync(), "the failing flush");
        p.Data.Enabled = false;
        Assert.NotNull(v.LostWritesReason);

        p.DataHold.Release();
        await held.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        // The delete refuses (the pool went read-only while it drained) or, had the pool failed
        // a moment later, its metadata change was refused and the volume put back.
        var refused = await Assert.ThrowsAnyAsync<Exception>(() => delete.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));
        Assert.True(refused is PoolException or BlockDeviceException, $"the delete did not refuse: {refused}");

        // v is still there, and every FLUSH of it keeps failing: its write at block 3 was lost.
        var back = p.Pool.GetVolume("v");
        Assert.NotNull(back.LostWritesReason);
        await AssertEioAsync(() => back.FlushAsync(), "the FLUSH of a volume a refused delete left in place");
        await AssertEioAsync(() => back.FlushAsync(), "its second FLUSH");
    }
}
