using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>
/// io_uring_setup / io_uring_enter / io_uring_register. glibc has no wrappers, so they go through
/// libc's variadic <c>syscall()</c> with a fixed arity (integer and pointer arguments travel in the
/// same registers either way on x86-64 and arm64). The numbers come from the common syscall table
/// and are the same on every architecture. Results are &gt;= 0 or -errno.
/// </summary>
public static unsafe partial class Syscall
{
    public const long SYS_io_uring_setup = 425;
    public const long SYS_io_uring_enter = 426;
    public const long SYS_io_uring_register = 427;

    [LibraryImport("libc", EntryPoint = "syscall", SetLastError = true)]
    private static partial long syscall6(long number, long a1, long a2, long a3, long a4, long a5, long a6);

    /// <summary>Creates a ring. Returns its fd or -errno (ENOSYS when the kernel lacks io_uring,
    /// EPERM when it is disabled by sysctl or a seccomp filter).</summary>
    public static int IoUringSetup(uint entries, IoUringParams* parameters) =>
        (int)Errno.FromLibc(syscall6(SYS_io_uring_setup, entries, (long)parameters, 0, 0, 0, 0));

    /// <summary>Submits <paramref name="toSubmit"/> SQEs and, with IORING_ENTER_GETEVENTS, waits for
    /// <paramref name="minComplete"/> completions. Returns the number of SQEs consumed or -errno
    /// (EINTR when a signal interrupted the wait, EAGAIN/EBUSY when the kernel is short of resources
    /// or the CQ overflow backlog is full).</summary>
    public static int IoUringEnter(int ringFd, uint toSubmit, uint minComplete, uint flags) =>
        (int)Errno.FromLibc(syscall6(SYS_io_uring_enter, ringFd, toSubmit, minComplete, flags, 0, 0));

    /// <summary>Returns 0 (or a count for some opcodes) or -errno.</summary>
    public static int IoUringRegister(int ringFd, uint opcode, void* arg, uint count) =>
        (int)Errno.FromLibc(syscall6(SYS_io_uring_register, ringFd, opcode, (long)arg, count, 0, 0));
}
