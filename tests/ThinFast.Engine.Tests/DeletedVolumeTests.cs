using ThinFast.IO;

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
}
