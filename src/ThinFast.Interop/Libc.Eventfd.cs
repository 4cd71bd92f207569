using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>eventfd(2) and the 8-byte write that signals it.</summary>
public static unsafe partial class Libc
{
    public const int EFD_CLOEXEC = 0x80000;

    [LibraryImport("libc", EntryPoint = "eventfd", SetLastError = true)]
    private static partial int eventfd_(uint initval, int flags);

    [LibraryImport("libc", EntryPoint = "write", SetLastError = true)]
    private static partial nint write_(int fd, void* buffer, nuint count);

    /// <summary>Returns the eventfd or -errno.</summary>
    public static int Eventfd(uint initialValue, int flags) => Errno.FromLibc(eventfd_(initialValue, flags));

    /// <summary>Adds <paramref name="value"/> to the eventfd counter. Returns 0 or -errno.</summary>
    public static int EventfdWrite(int fd, ulong value)
    {
        nint r = write_(fd, &value, sizeof(ulong));
        return r < 0 ? -Marshal.GetLastPInvokeError() : 0;
    }
}
