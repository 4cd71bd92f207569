namespace ThinFast.Nbd;

/// <summary>
/// The payload bytes one connection may hold at once (<see cref="NbdServerOptions.ConnectionBufferBytes"/>).
/// A request that would go over it waits, in arrival order, until the same connection's earlier
/// requests give theirs back, so the only client a hoarding or stalled client can slow down is
/// itself. Taking and giving back are a lock and an add; only a request that has to wait allocates.
/// </summary>
internal sealed class PayloadBudget(long capacity)
{
    private readonly Lock _lock = new();
    private readonly Queue<(long Bytes, TaskCompletionSource Granted)> _waiters = new();
    private long _available = capacity;

    /// <summary>Takes <paramref name="bytes"/> now if they are free and nobody is queued ahead.</summary>
    public bool TryTake(long bytes)
    {
        lock (_lock)
        {
            if (_waiters.Count > 0 || _available < bytes)
                return false;
            _available -= bytes;
            return true;
        }
    }

    /// <summary>Completes once <paramref name="bytes"/> have been taken (the slow path after
    /// <see cref="TryTake"/> failed).</summary>
    public Task TakeAsync(long bytes)
    {
        lock (_lock)
        {
            if (_waiters.Count == 0 && _available >= bytes)
            {
                _available -= bytes;
                return Task.CompletedTask;
            }
            // Continuations run on the thread pool: whoever gives bytes back (a slot finishing on
            // the reactor thread, say) must not run the waiter's request inside this lock.
            var granted = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Enqueue((bytes, granted));
            return granted.Task;
        }
    }

    public void Give(long bytes)
    {
        lock (_lock)
        {
            _available += bytes;
            while (_waiters.TryPeek(out var next) && next.Bytes <= _available)
            {
                _waiters.Dequeue();
                _available -= next.Bytes;
                next.Granted.SetResult();
            }
        }
    }
}
