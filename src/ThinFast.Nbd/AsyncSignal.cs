using System.Threading.Tasks.Sources;

namespace ThinFast.Nbd;

/// <summary>
/// A reusable, allocation-free wake-up: one waiter awaits <see cref="WaitAsync"/>, one other party
/// calls <see cref="Set"/>. Either the waiter's continuation runs on the thread pool, so whoever
/// sets the signal (the request reader, a finishing request) is never hijacked into running the
/// waiter's code, or (<c>inline</c>) it runs right inside <see cref="Set"/>: what a connection served
/// on the io_uring reactor wants, since there every hop to another thread is the main cost.
/// </summary>
internal sealed class AsyncSignal(bool inline) : IValueTaskSource
{
    private ManualResetValueTaskSourceCore<bool> _core = new() { RunContinuationsAsynchronously = !inline };

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
