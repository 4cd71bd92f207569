namespace ThinFast.Engine;

/// <summary>
/// Counts a volume's requests in flight so a snapshot or delete can pause new ones and wait for
/// the rest to finish (dm-thin asks userspace to suspend the origin before create_snap; we do it
/// ourselves). Entering an open gate is one lock and an increment.
/// </summary>
internal sealed class IoGate
{
    private readonly object _lock = new();
    private int _inFlight;
    private bool _closed;
    private string? _retiredReason;
    private PooledSignal? _waitingToEnter;

    public ValueTask EnterAsync()
    {
        lock (_lock)
        {
            if (_retiredReason is not null)
                return ValueTask.FromException(new ThinFast.IO.BlockDeviceException(ThinFast.IO.BlockError.Unavailable, _retiredReason));
            if (!_closed)
            {
                _inFlight++;
                return ValueTask.CompletedTask;
            }
            var waiter = PooledSignal.Rent();
            waiter.Next = _waitingToEnter;
            _waitingToEnter = waiter;
            return waiter.Task;
        }
    }

    public void Exit()
    {
        lock (_lock)
        {
            if (--_inFlight == 0 && _closed)
                Monitor.PulseAll(_lock);
        }
    }

    /// <summary>Stops new requests and blocks until those in flight have finished.</summary>
    public void CloseAndDrain()
    {
        lock (_lock)
        {
            _closed = true;
            WaitForDrain();
        }
    }

    /// <summary>Closes the gate for good (the volume was deleted or the pool closed): requests
    /// waiting to enter, and any later ones, fail with <paramref name="reason"/>.</summary>
    public void Retire(string reason)
    {
        PooledSignal? waiters;
        lock (_lock)
        {
            _retiredReason = reason;
            _closed = true;
            WaitForDrain();
            waiters = _waitingToEnter;
            _waitingToEnter = null;
        }
        var error = new ThinFast.IO.BlockDeviceException(ThinFast.IO.BlockError.Unavailable, reason);
        while (waiters is not null)
        {
            var next = waiters.Next;
            waiters.Next = null;
            waiters.Fail(error);
            waiters = next;
        }
    }

    // Called with _lock held. Requests in flight may need the io_uring reactor to finish, so
    // waiting for them on that thread could never end: refuse instead of hanging. (With nothing
    // in flight, closing on the reactor thread is fine.)
    private void WaitForDrain()
    {
        if (_inFlight > 0 && ThinFast.IO.Uring.IoUringReactor.IsReactorThread)
            throw new InvalidOperationException(
                $"{_inFlight} requests are in flight and this is the io_uring reactor thread that must complete them: pause or close the volume from another thread");
        while (_inFlight > 0)
            Monitor.Wait(_lock);
    }

    /// <summary>Lets paused requests in again.</summary>
    public void Open()
    {
        PooledSignal? waiters;
        lock (_lock)
        {
            _closed = false;
            waiters = _waitingToEnter;
            _waitingToEnter = null;
            for (var w = waiters; w is not null; w = w.Next)
                _inFlight++;
        }
        while (waiters is not null)
        {
            var next = waiters.Next;
            waiters.Next = null;
            waiters.Complete();
            waiters = next;
        }
    }
}
