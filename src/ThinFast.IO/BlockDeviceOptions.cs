using ThinFast.IO.Uring;

namespace ThinFast.IO;

public enum BlockDeviceBackend
{
    /// <summary>io_uring when a ring can be set up, else portable (and the reason is logged).
    /// The environment variable THINFAST_IO_BACKEND=portable|io_uring overrides Auto.</summary>
    Auto,
    IoUring,
    Portable,
}

public sealed class BlockDeviceOptions
{
    /// <summary>Open O_RDONLY; writes, discards and Grow fail with <see cref="BlockError.ReadOnly"/>.
    /// Origins are always opened this way.</summary>
    public bool ReadOnly { get; init; }

    public BlockDeviceBackend Backend { get; init; } = BlockDeviceBackend.Auto;

    /// <summary>The reactor io_uring devices run on; null means <see cref="IoUringReactor.Shared"/>.</summary>
    public IoUringReactor? Reactor { get; init; }

    /// <summary>Where backend choices and fallbacks are reported; null means standard error.</summary>
    public Action<string>? Log { get; init; }
}
