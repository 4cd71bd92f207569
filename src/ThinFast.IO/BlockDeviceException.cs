namespace ThinFast.IO;

/// <summary>Why a block operation failed, in terms front ends can map to protocol errors
/// (NBD_EIO, NBD_ENOSPC, ...; ublk negative errno).</summary>
public enum BlockError
{
    IoError,
    InvalidArgument,
    OutOfRange,
    ReadOnly,
    NoSpace,
    NotSupported,
    /// <summary>The device was cut (power-cut test device) or closed.</summary>
    Unavailable,
}

/// <summary>A failed block operation. Thrown only on error paths, never for control flow.</summary>
public sealed class BlockDeviceException : IOException
{
    public BlockDeviceException(BlockError error, string message, int errno = 0, Exception? inner = null)
        : base(message, inner)
    {
        Error = error;
        Errno = errno;
    }

    public BlockError Error { get; }

    /// <summary>The kernel's errno when one caused the failure, else 0.</summary>
    public int Errno { get; }
}
