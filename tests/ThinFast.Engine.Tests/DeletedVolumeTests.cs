using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>A deleted volume answers nothing: handles still open on it (an NBD connection) get
/// an error for every call, and never see the data of a volume created after it.</summary>
public class DeletedVolumeTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    [Fact]
    public async Task AHandleOnADeletedVolumeFailsEveryCallAndNeverSeesItsSuccessor()
    {
        using var h = new PoolHarness(32L * B);
        var deleted = h.Pool.CreateVolume("a", 8L * B);
        await deleted.WriteAsync(0, PoolHarness.Pattern(B, 1));
        await deleted.FlushAsync();
        uint oldId = h.Pool.VolumeRecords.Single(r => r.Name == "a").DeviceId;
        h.Pool.DeleteVolume("a");

        // The successor, same name and size, with data where the deleted one had none.
        var successor = h.Pool.CreateVolume("a", 8L * B);
        await successor.WriteAsync(3L * B, PoolHarness.Pattern(B, 2));
        Assert.NotEqual(oldId, h.Pool.VolumeRecords.Single(r => r.Name == "a").DeviceId);
        var other = h.Pool.CreateVolume("b", 8L * B);
        Assert.NotEqual(oldId, h.Pool.VolumeRecords.Single(r => r.Name == "b").DeviceId);

        var buffer = new byte[2 * B];
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.ReadAsync(0, buffer.AsMemory(0, 512)).AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.ReadAsync(2L * B, buffer).AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.WriteAsync(0, new byte[512]).AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.FlushAsync().AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.DiscardAsync(0, B).AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.WriteZeroesAsync(0, B, ZeroFlags.None).AsTask());
        await Assert.ThrowsAsync<BlockDeviceException>(() => deleted.PrefetchAsync(0, B).AsTask());
        var extents = new VolumeExtent[8];
        Assert.Throws<BlockDeviceException>(() => deleted.GetExtents(0, 8L * B, extents));

        // The successor is untouched by all that.
        await successor.ReadAsync(3L * B, buffer.AsMemory(0, B));
        Assert.Equal(PoolHarness.Pattern(B, 2), buffer.AsSpan(0, B).ToArray());
        h.AssertMetadataClean();
    }

    [Fact]
    public void DeviceIdsAreNotReusedAfterADeleteEvenAcrossAReopen()
    {
        using var h = new PoolHarness(32L * B);
        h.Pool.CreateVolume("a", B);
        h.Pool.CreateVolume("b", B);
        var used = h.Pool.VolumeRecords.Select(r => r.DeviceId).ToHashSet();
        h.Pool.DeleteVolume("b");
        h.Reopen();
        h.Pool.CreateVolume("c", B);
        Assert.DoesNotContain(h.Pool.VolumeRecords.Single(r => r.Name == "c").DeviceId, used);
    }

    [Fact]
    public async Task ADeleteWithAWriteStuckOnTheDeviceRefusesAsBusyAndFreesNothing()
    {
        RangeHoldDevice? hold = null;
        using var h = new PoolHarness(2L * B, new PoolOptions { AdminDrainTimeout = TimeSpan.FromMilliseconds(300) }, size =>
            size == PoolHarness.MetadataSize ? new MemoryBlockDevice(size, name: "metadata") : hold = new RangeHoldDevice(new MemoryBlockDevice(size, name: "data")));
        var w = h.Pool.CreateVolume("w", 4L * B);
        var o = h.Pool.CreateVolume("o", 4L * B);
        await w.WriteAsync(0, PoolHarness.Pattern(B, 1));      // data block 0
        await o.WriteAsync(0, PoolHarness.Pattern(B, 2));      // data block 1: the pool is full
        await h.Pool.FlushAsync();

        // A write of w's (in place, into data block 0) is stuck on the device.
        hold!.Arm(0, B);
        var stale = new byte[512];
        Array.Fill(stale, (byte)0xEE);
        var late = Task.Run(async () => await w.WriteAsync(0, stale), TestContext.Current.CancellationToken);
        Assert.True(hold.Held.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken));

        // Deleting w now would free data block 0 to the next volume while the write still lands there.
        ulong used = h.Pool.GetStatus().UsedDataBlocks;
        var e = Assert.Throws<PoolException>(() => h.Pool.DeleteVolume("w"));
        Assert.Contains("busy", e.Message);
        Assert.Contains(h.Pool.VolumeRecords, r => r.Name == "w");
        // The refusal changed nothing: w's gate is open again and its blocks are all there.
        var other = new byte[4096];
        await w.ReadAsync(2L * B, other).AsTask().WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        Assert.Equal(used, h.Pool.GetStatus().UsedDataBlocks);
        hold.Release();
        await late.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);

        // Once it has finished, the delete goes through and the block's next owner keeps its data.
        h.Pool.DeleteVolume("w");
        var n = h.Pool.CreateVolume("n", 4L * B);
        var fresh = PoolHarness.Pattern(B, 3);
        await n.WriteAsync(0, fresh);
        var back = new byte[B];
        await n.ReadAsync(0, back);
        Assert.Equal(fresh, back);
        h.AssertMetadataClean();
    }
    [Fact]
    public async Task ADeviceACrashLeftWithoutItsVolumeIsReclaimedAtOpenWithALogLine()
    {
        using var h = new PoolHarness(16L * B);
        var a = h.Pool.CreateVolume("a", 4L * B);
        var b = h.Pool.CreateVolume("b", 4L * B);
        await a.WriteAsync(0, PoolHarness.Pattern(B, 1));
        await b.WriteAsync(0, PoolHarness.Pattern(B, 2));
        await b.WriteAsync(B, PoolHarness.Pattern(B, 3));
        await h.Pool.FlushAsync();
        uint orphan = h.Pool.VolumeRecords.Single(r => r.Name == "b").DeviceId;
        ulong usedBefore = h.Pool.GetStatus().UsedDataBlocks;
        h.Pool.Dispose();

        // What a crash between the metadata commit and the manifest write leaves: the device is
        // in the metadata, the manifest names no volume for it and lists it as pending.
        var manifest = PoolManifest.Load(h.ManifestPath);
        (manifest with { Volumes = manifest.Volumes.Where(v => v.Name != "b").ToList(), PendingDeviceIds = [orphan] }).Save(h.ManifestPath);
        h.ReopenFrom(new MemoryBlockDevice(((MemoryBlockDevice)h.MetadataDevice).ToArray(), name: "metadata"), new MemoryBlockDevice(((MemoryBlockDevice)h.DataDevice).ToArray(), name: "data"));

        h.WaitForEvent($"reclaimed thin device {orphan}");
        Assert.Equal(usedBefore - 2, h.Pool.GetStatus().UsedDataBlocks);
        Assert.Empty(PoolManifest.Load(h.ManifestPath).PendingDeviceIds);
        var back = new byte[B];
        await h.Pool.GetVolume("a").ReadAsync(0, back);
        Assert.Equal(PoolHarness.Pattern(B, 1), back);
        h.Pool.CreateVolume("c", B);
        Assert.True(h.Pool.VolumeRecords.Single(r => r.Name == "c").DeviceId > orphan, "the reclaimed device's id was handed out again");
        h.AssertMetadataClean();
    }
}
