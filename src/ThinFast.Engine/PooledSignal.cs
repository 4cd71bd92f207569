using System.Threading.Tasks.Sources;

namespace ThinFast.Engine;

/// <summary>
/// A reusable one-shot completion: the waiter awaits <see cref="Task"/>, someone else calls
/// <see cref="Complete"/> or <see cref="Fail"/>, and after the awaiter has taken the result the
/// object goes back to a pool. Lets lock queues, commit waiters and no-space queues park requests
/// without allocating a Task per wait.
/// </summary>
internal sealed class PooledSignal : IValueTaskSource
{
    private static readonly SignalPool s_pool = new();

    private ManualResetValueTaskSourceCore<bool> _core = new()
    {
        // Waking a waiter must not run its continuation inside the waker's critical section (and
        // deep chains of inline continuations would grow the stack); the thread pool runs
        // async-state-machine continuations without allocating.
        RunContinuationsAsynchronously = true,
    };

    /// <summary>Intrusive link for the queue the signal waits in.</summary>
    public PooledSignal? Next;

    /// <summary>What the waiter asked for (e.g. an exclusive lock); owned by the queue.</summary>
    public int Tag;

    /// <summary>Who the waiter belongs to (a volume's gate in the no-space queue); owned by the queue.</summary>
    public object? Owner;

    public static PooledSignal Rent() => s_pool.Rent();

    public ValueTask Task => new(this, _core.Version);

    public void Complete() => _core.SetResult(true);

    public void Fail(Exception error) => _core.SetException(error);

    void IValueTaskSource.GetResult(short token)
    {
        try
        {
            _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            Next = null;
            Tag = 0;
            s_pool.Return(this);
        }
    }

    ValueTaskSourceStatus IValueTaskSource.GetStatus(short token) => _core.GetStatus(token);

    void IValueTaskSource.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);

    // A bounded stack: beyond its capacity returned signals are dropped for the GC, so a burst
    // does not pin memory for ever.
    private sealed class SignalPool
    {
        private readonly PooledSignal[] _items = new PooledSignal[4096];
        private int _count;

        public PooledSignal Rent()
        {
            lock (_items)
            {
                if (_count > 0)
                {
                    var s = _items[--_count];
                    _items[_count] = null!;
                    return s;
                }
            }
            return new PooledSignal();
        }

        public void Return(PooledSignal signal)
        {
            lock (_items)
            {
                if (_count < _items.Length)
                    _items[_count++] = signal;
            }
        }
    }
}
