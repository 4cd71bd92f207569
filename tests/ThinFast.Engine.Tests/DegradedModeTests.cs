using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>Metadata failures move the pool to read-only (dm-thin §7): provisioning fails with
/// EIO, already provisioned data stays readable and writable in place, and status says so.</summary>
public class DegradedModeTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    [Fact]
    public async Task AMetadataWriteErrorAbortsTheTransactionAndMakesThePoolReadOnly()
    {
        FaultInjectingDevice? faulty = null;
        using var h = new PoolHarness(64L * B, makeDevice: size =>
            size == PoolHarness.MetadataSize
                ? faulty = new FaultInjectingDevice(new MemoryBlockDevice(size, name: "metadata")) { Enabled = false }
                : new MemoryBlockDevice(size, name: "data"));
        var v = h.Pool.CreateVolume("a", 8L * B);
        var kept = PoolHarness.Pattern(B, 1);
        await v.WriteAsync(0, kept);
        await v.FlushAsync();

        await v.WriteAsync(B, PoolHarness.Pattern(100, 2));
        faulty!.ErrorTargets = FaultTargets.Write;
        faulty.ErrorRate = 1;
        faulty.Enabled = true;
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => v.FlushAsync().AsTask());
        Assert.Equal(BlockError.IoError, e.Error);

        var status = h.Pool.GetStatus();
        Assert.Equal(PoolMode.ReadOnly, status.Mode);
        Assert.Contains(" ro ", status.ToString());
        h.WaitForEvent("ReadOnly");

        // Committed data reads back; the aborted provisioning is gone (block 1 reads zeros again).
        var back = new byte[B];
        await v.ReadAsync(0, back);
        Assert.Equal(kept, back);
        await v.ReadAsync(B, back);
        Assert.All(back, b => Assert.Equal(0, b));
        // In-place writes still work; provisioning does not.
        await v.WriteAsync(0, new byte[] { 9 });
        var provisioning = await Assert.ThrowsAsync<BlockDeviceException>(() => v.WriteAsync(3L * B, new byte[512]).AsTask());
        Assert.Equal(BlockError.IoError, provisioning.Error);
        Assert.Contains("read-only", Assert.Throws<PoolException>(() => h.Pool.CreateVolume("b", B)).Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task MetadataExhaustionMakesThePoolReadOnlyWithoutLosingCommittedData()
    {
        // 128 KiB of metadata: 32 blocks, exhausted by a few thousand scattered mappings.
        using var h = new PoolHarness(4096L * B, makeDevice: size =>
            new MemoryBlockDevice(size == PoolHarness.MetadataSize ? 128 * 1024 : size, name: size == PoolHarness.MetadataSize ? "metadata" : "data"));
        var v = h.Pool.CreateVolume("a", 4096L * B);
        var first = PoolHarness.Pattern(512, 3);
        await v.WriteAsync(0, first);
        await v.FlushAsync();
        BlockDeviceException? failure = null;
        for (int i = 1; i < 4096 && failure is null; i++)
        {
            try
            {
                await v.WriteAsync((long)i * B * 7 % (4096L * B), new byte[512]);
                if (i % 64 == 0)
                    await v.FlushAsync();
            }
            catch (BlockDeviceException e)
            {
                failure = e;
            }
        }
        Assert.NotNull(failure);
        Assert.Equal(PoolMode.ReadOnly, h.Pool.Mode);
        var back = new byte[512];
        await v.ReadAsync(0, back);
        Assert.Equal(first, back);
    }
}
