using ThinFast.Interop;

namespace ThinFast.IO;

/// <summary>The Grow rule both backends share: files grow with ftruncate, block devices cannot.</summary>
internal static class FileGrowth
{
    public static void Grow(IBlockDevice device, int fd, bool isBlockDevice, ref long length, long newLength)
    {
        if (device.IsReadOnly)
            throw new BlockDeviceException(BlockError.ReadOnly, $"{device.Name}: device is read-only");
        if (isBlockDevice)
            throw new BlockDeviceException(BlockError.NotSupported, $"{device.Name}: a block device cannot be grown");
        long current = Volatile.Read(ref length);
        if (newLength < current)
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{device.Name}: cannot shrink from {current} to {newLength}");
        if ((newLength & (device.LogicalBlockSize - 1)) != 0)
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{device.Name}: new length {newLength} must be a multiple of {device.LogicalBlockSize}");
        int r = Libc.Ftruncate(fd, newLength);
        if (r < 0)
            throw BlockErrors.FromErrno(r, device.Name, $"ftruncate to {newLength}");
        Volatile.Write(ref length, newLength);
    }
}
