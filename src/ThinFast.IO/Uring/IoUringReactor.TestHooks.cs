namespace ThinFast.IO.Uring;

public sealed partial class IoUringReactor
{
    /// <summary>Test hook: when set, <see cref="TryGetShared"/> reports io_uring as unavailable with
    /// this reason, so the Auto fallback can be tested on a machine where io_uring works. Turning
    /// io_uring off for real (sysctl kernel.io_uring_disabled, seccomp) would affect the whole
    /// machine or need a separate process.</summary>
    internal static string? SimulatedUnavailability { get; set; }
}
