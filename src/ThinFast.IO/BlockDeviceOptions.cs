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

    /// <summary>Open without O_DIRECT, so reads can be served from (and fill) the kernel's page
    /// cache. Only for read-only devices shared by many readers, like a base image: writes would
    /// then sit in the page cache and FUA would mean a flush. Requests are still checked for the
    /// same alignment as direct ones.</summary>
    public bool PageCache { get; init; }

    /// <summary>The reactor io_uring devices run on; null means <see cref="IoUringReactor.Shared"/>.</summary>
    public IoUringReactor? Reactor { get; init; }

    /// <summary>Where backend choices and fallbacks are reported; null means standard error.</summary>
    public Action<string>? Log { get; init; }
}
