using System.Threading.Tasks.Sources;

namespace ThinFast.Nbd;

/// <summary>
/// A reusable, allocation-free wake-up: one waiter awaits <see cref="WaitAsync"/>, one other party
/// calls <see cref="Set"/>. The continuation always runs on the thread pool, so whoever sets the
/// signal (the request reader, a finishing request) is never hijacked into running the waiter's code.
/// </summary>
internal sealed class AsyncSignal : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = true };

    public ValueTask WaitAsync() => new(this, _core.Version);

    public void Set() => _core.SetResult(true);

    void IValueTaskSource.GetResult(short token)
    {
        _core.GetResult(token);
        _core.Reset();
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
