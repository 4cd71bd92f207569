using ThinFast.Testing;

namespace ThinFast.IO.Tests;

/// <summary>Real block devices (a loop device with 4096-byte sectors): size from BLKGETSIZE64,
/// alignment from BLKSSZGET, deallocation through BLKDISCARD, zeroing through BLKZEROOUT, and the rules that differ from files.</summary>
public sealed class BlockDeviceTests
{
    private const int Sector = 4096;

    [Theory]
    [InlineData(BlockDeviceBackend.Portable)]
    [InlineData(BlockDeviceBackend.IoUring)]
    public async Task LoopDeviceGeometryIoDeallocateAndZero(BlockDeviceBackend backend)
    {
        using var loop = new LoopDevice(16 << 20, Sector);
        using var device = BlockDevices.Open(loop.Path, new BlockDeviceOptions { Backend = backend });
        Assert.Equal(16 << 20, device.Length);
        Assert.Equal(Sector, device.LogicalBlockSize);

        // 512-aligned is not enough on a 4096-byte-sector device.
        using var buffer = new NativeBuffer(8 * Sector);
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.ReadAsync(512, buffer.Memory.Slice(0, Sector)).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);

        for (int i = 0; i < buffer.Length; i++)
            buffer.GetSpan()[i] = (byte)(i * 7 + 1);
        var expected = buffer.GetSpan().ToArray();
        await device.WriteAsync(Sector, buffer.Memory, WriteFlags.ForceUnitAccess);
        await device.FlushAsync();
        buffer.GetSpan().Clear();
        await device.ReadAsync(Sector, buffer.Memory);
        Assert.Equal(expected, buffer.GetSpan().ToArray());

        await device.ZeroAsync(2 * Sector, 4 * Sector);
        await device.ReadAsync(Sector, buffer.Memory);
        var span = buffer.GetSpan();
        Assert.True(span[..Sector].SequenceEqual(expected.AsSpan(0, Sector)), "data before the zeroed range changed");
        Assert.True(span[Sector..(5 * Sector)].IndexOfAnyExcept((byte)0) < 0, "zeroed range of the loop device is not zero (BLKZEROOUT)");
        Assert.True(span[(5 * Sector)..].SequenceEqual(expected.AsSpan(5 * Sector)), "data after the zeroed range changed");

        // BLKDISCARD promises nothing about the discarded sector; its neighbours must not change.
        await device.DeallocateAsync(7 * Sector, Sector);
        await device.ReadAsync(6 * Sector, buffer.Memory.Slice(0, Sector));
        Assert.True(buffer.GetSpan()[..Sector].SequenceEqual(expected.AsSpan(5 * Sector, Sector)), "sector before the deallocated one changed");
        await device.ReadAsync(8 * Sector, buffer.Memory.Slice(0, Sector));
        Assert.True(buffer.GetSpan()[..Sector].SequenceEqual(expected.AsSpan(7 * Sector, Sector)), "sector after the deallocated one changed");

        var grow = Assert.Throws<BlockDeviceException>(() => device.Grow(32 << 20));
        Assert.Equal(BlockError.NotSupported, grow.Error);
    }
}
