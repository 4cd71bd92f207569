using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>statx(2), including STATX_DIOALIGN (Linux 6.1+) which tells the O_DIRECT alignment.</summary>
public static unsafe partial class Libc
{
    public const int AT_EMPTY_PATH = 0x1000;
    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const uint STATX_TYPE = 0x1;
    public const uint STATX_MODE = 0x2;
    public const uint STATX_INO = 0x100;
    public const uint STATX_SIZE = 0x200;
    public const uint STATX_BASIC_STATS = 0x7ff;
    public const uint STATX_DIOALIGN = 0x2000;

    public const int S_IFMT = 0xF000;
    public const int S_IFREG = 0x8000;
    public const int S_IFBLK = 0x6000;
    public const int S_IFDIR = 0x4000;
    public const int S_IFSOCK = 0xC000;

    [LibraryImport("libc", EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int statx_(int dirfd, string path, int flags, uint mask, Statx* buffer);

    /// <summary>statx of a path, following symlinks. Returns 0 or -errno.</summary>
    public static int PathStatx(string path, uint mask, out Statx result)
    {
        Statx buffer = default;
        int r = Errno.FromLibc(statx_(AT_FDCWD, path, 0, mask, &buffer));
        result = buffer;
        return r;
    }

    /// <summary>statx of a path itself, not what a symlink points at. Returns 0 or -errno.</summary>
    public static int LStatx(string path, uint mask, out Statx result)
    {
        Statx buffer = default;
        int r = Errno.FromLibc(statx_(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, mask, &buffer));
        result = buffer;
        return r;
    }

    /// <summary>statx of an open fd (AT_EMPTY_PATH). Returns 0 or -errno.</summary>
    public static int FStatx(int fd, uint mask, out Statx result)
    {
        Statx buffer = default;
        int r = Errno.FromLibc(statx_(fd, "", AT_EMPTY_PATH, mask, &buffer));
        result = buffer;
        return r;
    }
}
