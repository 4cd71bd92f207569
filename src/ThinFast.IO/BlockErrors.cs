using ThinFast.Interop;

namespace ThinFast.IO;

/// <summary>Turns a kernel errno into the <see cref="BlockDeviceException"/> front ends understand.</summary>
internal static class BlockErrors
{
    public static BlockError Classify(int errno) => Math.Abs(errno) switch
    {
        Errno.EINVAL or Errno.EFAULT => BlockError.InvalidArgument,
        Errno.ENOSPC or Errno.EFBIG => BlockError.NoSpace,
        Errno.EROFS or Errno.EBADF or Errno.EPERM or Errno.EACCES => BlockError.ReadOnly,
        Errno.EOPNOTSUPP or Errno.ENOTTY or Errno.ENOSYS => BlockError.NotSupported,
        _ => BlockError.IoError,
    };

    public static BlockDeviceException FromErrno(int errno, string deviceName, string what) =>
        new(Classify(errno), $"{deviceName}: {what} failed: {Errno.Describe(errno)}", Math.Abs(errno));
}
