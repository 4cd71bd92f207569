using ThinFast.Interop;

namespace ThinFast.IO;

/// <summary>What an open O_DIRECT fd allows: its kind, size and alignment rules.</summary>
internal readonly record struct DeviceGeometry(bool IsBlockDevice, long Length, int LogicalBlockSize, int BufferAlignment)
{
    /// <summary>Used when the kernel does not report DIO alignment (pre-6.1, or a file system that
    /// does not fill STATX_DIOALIGN): 4 KiB is the file-system block size almost everywhere and
    /// satisfies every device whose logical block is 512 or 4096.</summary>
    public const int FallbackAlignment = 4096;

    /// <summary>Reads size and alignment from the kernel. Block devices: BLKGETSIZE64 for the size,
    /// BLKSSZGET for offsets and lengths. Files: STATX_DIOALIGN, since a file system may demand more
    /// than the disk below it. The length of a file is rounded down to whole blocks: a partial
    /// last block cannot be reached with O_DIRECT.</summary>
    public static DeviceGeometry Probe(int fd, string path)
    {
        int r = Libc.FStatx(fd, Libc.STATX_BASIC_STATS | Libc.STATX_DIOALIGN, out var st);
        if (r < 0)
            throw BlockErrors.FromErrno(r, path, "statx");
        int kind = st.Mode & Libc.S_IFMT;
        bool hasDio = (st.Mask & Libc.STATX_DIOALIGN) != 0 && st.DioOffsetAlign != 0;
        if (kind == Libc.S_IFBLK)
        {
            r = Libc.IoctlBlkGetSize64(fd, out ulong size);
            if (r < 0)
                throw BlockErrors.FromErrno(r, path, "ioctl(BLKGETSIZE64)");
            r = Libc.IoctlBlkSszGet(fd, out int sector);
            if (r < 0)
                throw BlockErrors.FromErrno(r, path, "ioctl(BLKSSZGET)");
            int memAlign = hasDio ? (int)st.DioMemAlign : sector;
            return new DeviceGeometry(true, (long)size, sector, Math.Max(memAlign, 1));
        }
        if (kind != Libc.S_IFREG)
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{path}: not a regular file or block device");
        int offsetAlign = hasDio ? (int)st.DioOffsetAlign : FallbackAlignment;
        int bufferAlign = hasDio ? (int)st.DioMemAlign : FallbackAlignment;
        long length = (long)st.FileSize & ~(long)(offsetAlign - 1);
        return new DeviceGeometry(false, length, offsetAlign, bufferAlign);
    }
}
