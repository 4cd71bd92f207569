using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>open(2), close(2) and fcntl(2) for file status flags. Results are fds, values or <c>-errno</c>.</summary>
public static partial class Libc
{
    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;
    public const int O_EXCL = 0x80;
    public const int O_TRUNC = 0x200;
    public const int O_CLOEXEC = 0x80000;
    public const int O_NONBLOCK = 0x800;
    public const int F_GETFL = 3;
    public const int F_SETFL = 4;

    /// <summary>O_DIRECT is architecture-specific: 040000 on x86-64, 0200000 on arm64/arm
    /// (asm-generic vs arch fcntl.h). .NET's FileOptions cannot express it, hence libc open.</summary>
    public static int O_DIRECT { get; } = RuntimeInformation.ProcessArchitecture switch
    {
        Architecture.Arm64 or Architecture.Arm => 0x10000,
        _ => 0x4000,
    };

    // open is variadic; a fixed third argument travels in the same register as a variadic one on
    // the SysV x86-64 and AAPCS64 ABIs, the only ones ThinFast targets.
    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int open_(string path, int flags, uint mode);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int close_(int fd);

    // fcntl is variadic too; F_GETFL ignores the third argument and F_SETFL takes an int.
    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    private static partial int fcntl_(int fd, int cmd, int arg);

    /// <summary>Clears O_NONBLOCK on <paramref name="fd"/>. Returns 0 or -errno.</summary>
    public static int ClearNonBlocking(int fd)
    {
        int flags = Errno.FromLibc(fcntl_(fd, F_GETFL, 0));
        if (flags < 0 || (flags & O_NONBLOCK) == 0)
            return flags < 0 ? flags : 0;
        return Errno.FromLibc(fcntl_(fd, F_SETFL, flags & ~O_NONBLOCK));
    }

    /// <summary>Returns the new fd or -errno.</summary>
    public static int Open(string path, int flags, uint mode = 0) => Errno.FromLibc(open_(path, flags, mode));

    /// <summary>Returns 0 or -errno. The fd is gone either way (Linux never leaves it open after EINTR).</summary>
    public static int Close(int fd) => Errno.FromLibc(close_(fd));
}
