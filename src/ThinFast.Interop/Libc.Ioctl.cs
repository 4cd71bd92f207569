using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>The block-device ioctls of linux/fs.h.</summary>
public static unsafe partial class Libc
{
    /// <summary>_IOR(0x12, 114, size_t): device size in bytes (u64).</summary>
    public const ulong BLKGETSIZE64 = 0x80081272;

    /// <summary>_IO(0x12, 104): logical sector size (int).</summary>
    public const ulong BLKSSZGET = 0x1268;

    /// <summary>_IO(0x12, 119): discard the range given as u64[2] { start, length }.</summary>
    public const ulong BLKDISCARD = 0x1277;

    /// <summary>_IO(0x12, 127): zero the range given as u64[2] { start, length } (the kernel uses
    /// the device's WRITE ZEROES or writes zero pages).</summary>
    public const ulong BLKZEROOUT = 0x127f;

    // ioctl is variadic: see the note on open.
    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int ioctl_(int fd, ulong request, void* arg);

    /// <summary>Returns 0 or -errno; <paramref name="size"/> is the block device's size in bytes.</summary>
    public static int IoctlBlkGetSize64(int fd, out ulong size)
    {
        ulong value = 0;
        int r = Errno.FromLibc(ioctl_(fd, BLKGETSIZE64, &value));
        size = value;
        return r;
    }

    /// <summary>Returns 0 or -errno; <paramref name="sectorSize"/> is the logical sector size.</summary>
    public static int IoctlBlkSszGet(int fd, out int sectorSize)
    {
        int value = 0;
        int r = Errno.FromLibc(ioctl_(fd, BLKSSZGET, &value));
        sectorSize = value;
        return r;
    }

    /// <summary>Returns 0 or -errno. Blocks until the device has discarded the range.</summary>
    public static int IoctlBlkDiscard(int fd, ulong offset, ulong length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = offset;
        range[1] = length;
        return Errno.FromLibc(ioctl_(fd, BLKDISCARD, range));
    }

    /// <summary>Returns 0 or -errno. Blocks until the range reads as zeros.</summary>
    public static int IoctlBlkZeroOut(int fd, ulong offset, ulong length)
    {
        ulong* range = stackalloc ulong[2];
        range[0] = offset;
        range[1] = length;
        return Errno.FromLibc(ioctl_(fd, BLKZEROOUT, range));
    }
}
