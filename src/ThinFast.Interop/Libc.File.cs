using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>open(2) and close(2). Results are fds or <c>-errno</c>.</summary>
public static partial class Libc
{
    public const int O_RDONLY = 0;
    public const int O_RDWR = 2;
    public const int O_CREAT = 0x40;
    public const int O_EXCL = 0x80;
    public const int O_TRUNC = 0x200;
    public const int O_CLOEXEC = 0x80000;

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

    /// <summary>Returns the new fd or -errno.</summary>
    public static int Open(string path, int flags, uint mode = 0) => Errno.FromLibc(open_(path, flags, mode));

    /// <summary>Returns 0 or -errno. The fd is gone either way (Linux never leaves it open after EINTR).</summary>
    public static int Close(int fd) => Errno.FromLibc(close_(fd));
}
