using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>mmap(2), munmap(2) and madvise(2).</summary>
public static unsafe partial class Libc
{
    public const int PROT_READ = 0x1;
    public const int PROT_WRITE = 0x2;
    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_POPULATE = 0x8000;

    /// <summary>Back the range with transparent huge pages where the kernel allows (THP "madvise"
    /// or "always" mode).</summary>
    public const int MADV_HUGEPAGE = 14;

    [LibraryImport("libc", EntryPoint = "mmap", SetLastError = true)]
    private static partial nint mmap_(void* addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport("libc", EntryPoint = "munmap", SetLastError = true)]
    private static partial int munmap_(void* addr, nuint length);

    [LibraryImport("libc", EntryPoint = "madvise", SetLastError = true)]
    private static partial int madvise_(void* addr, nuint length, int advice);

    /// <summary>Returns the mapping's address, or -errno (as a negative nint; MAP_FAILED is never returned).</summary>
    public static nint Mmap(void* addr, nuint length, int prot, int flags, int fd, long offset)
    {
        nint p = mmap_(addr, length, prot, flags, fd, offset);
        return p == -1 ? -Marshal.GetLastPInvokeError() : p;
    }

    /// <summary>Returns 0 or -errno.</summary>
    public static int Munmap(void* addr, nuint length) => Errno.FromLibc(munmap_(addr, length));

    /// <summary>Returns 0 or -errno.</summary>
    public static int Madvise(void* addr, nuint length, int advice) => Errno.FromLibc(madvise_(addr, length, advice));
}
