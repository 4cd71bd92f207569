using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>fsync(2), fdatasync(2), ftruncate(2) and fallocate(2).</summary>
public static partial class Libc
{
    public const int FALLOC_FL_KEEP_SIZE = 0x01;
    public const int FALLOC_FL_PUNCH_HOLE = 0x02;
    public const int FALLOC_FL_ZERO_RANGE = 0x10;

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int fsync_(int fd);

    [LibraryImport("libc", EntryPoint = "fdatasync", SetLastError = true)]
    private static partial int fdatasync_(int fd);

    [LibraryImport("libc", EntryPoint = "ftruncate", SetLastError = true)]
    private static partial int ftruncate_(int fd, long length);

    [LibraryImport("libc", EntryPoint = "fallocate", SetLastError = true)]
    private static partial int fallocate_(int fd, int mode, long offset, long length);

    /// <summary>Returns 0 or -errno.</summary>
    public static int Fsync(int fd) => Errno.FromLibc(fsync_(fd));

    /// <summary>Returns 0 or -errno.</summary>
    public static int Fdatasync(int fd) => Errno.FromLibc(fdatasync_(fd));

    /// <summary>Returns 0 or -errno.</summary>
    public static int Ftruncate(int fd, long length) => Errno.FromLibc(ftruncate_(fd, length));

    /// <summary>Returns 0 or -errno (EOPNOTSUPP when the file system cannot punch holes).</summary>
    public static int Fallocate(int fd, int mode, long offset, long length) => Errno.FromLibc(fallocate_(fd, mode, offset, length));
}
