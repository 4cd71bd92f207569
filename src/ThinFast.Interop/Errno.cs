using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>
/// Linux errno values (identical on x86-64 and arm64) and the convention every method of this
/// assembly follows: a result &gt;= 0 is success, a negative result is <c>-errno</c> — the same
/// convention the kernel uses in io_uring completions, so callers handle both one way.
/// </summary>
public static class Errno
{
    public const int EPERM = 1;
    public const int ENOENT = 2;
    public const int EINTR = 4;
    public const int EIO = 5;
    public const int EBADF = 9;
    public const int EAGAIN = 11;
    public const int ENOMEM = 12;
    public const int EACCES = 13;
    public const int EFAULT = 14;
    public const int EBUSY = 16;
    public const int EEXIST = 17;
    public const int ENODEV = 19;
    public const int EISDIR = 21;
    public const int EINVAL = 22;
    public const int ENOTTY = 25;
    public const int EFBIG = 27;
    public const int ENOSPC = 28;
    public const int EROFS = 30;
    public const int ENOSYS = 38;
    public const int ETIME = 62;
    public const int EOPNOTSUPP = 95;
    public const int ECANCELED = 125;

    /// <summary>Turns a libc "-1 and errno" result into this assembly's "-errno" result.</summary>
    internal static int FromLibc(int result) => result < 0 ? -Marshal.GetLastPInvokeError() : result;

    internal static long FromLibc(long result) => result < 0 ? -Marshal.GetLastPInvokeError() : result;

    /// <summary>A short description for messages, e.g. "EINVAL (Invalid argument)".</summary>
    public static string Describe(int errno)
    {
        errno = Math.Abs(errno);
        string name = errno switch
        {
            EPERM => "EPERM", ENOENT => "ENOENT", EINTR => "EINTR", EIO => "EIO", EBADF => "EBADF",
            EAGAIN => "EAGAIN", ENOMEM => "ENOMEM", EACCES => "EACCES", EFAULT => "EFAULT",
            EBUSY => "EBUSY", EEXIST => "EEXIST", ENODEV => "ENODEV", EISDIR => "EISDIR",
            EINVAL => "EINVAL", ENOTTY => "ENOTTY", EFBIG => "EFBIG", ENOSPC => "ENOSPC", EROFS => "EROFS",
            ENOSYS => "ENOSYS", ETIME => "ETIME", EOPNOTSUPP => "EOPNOTSUPP", ECANCELED => "ECANCELED",
            _ => "errno " + errno,
        };
        return $"{name} ({Marshal.GetPInvokeErrorMessage(errno)})";
    }
}
