using ThinFast.IO;

namespace ThinFast.Engine;

/// <summary>
/// Counts a volume's requests in flight so a snapshot or delete can pause new ones and wait for
/// the rest to finish (dm-thin asks userspace to suspend the origin before create_snap; we do it
/// ourselves). Entering an open gate is one lock and an increment.
/// Requests queued for data space, or waiting for a block lock, are <em>parked</em>: they have
/// looked nothing up and written nothing for the block they wait on, and may wait for minutes
/// (a lock holder may itself be queued for space), so a snapshot does not wait for them (it holds
/// what was completed before it, and a parked write completes after it), and a delete fails them.
/// A parked request that may go on while the gate is closed waits for it to open again
/// (<see cref="ResumeAsync"/>), so it never looks up a mapping the snapshot is changing.
/// </summary>
internal sealed class IoGate
{
    private readonly object _lock = new();
    private int _inFlight;
    private int _parked;
    private bool _closed;
    private string? _retiredReason;
    private PooledSignal? _waitingToEnter;
    private PooledSignal? _waitingToResume;

    /// <summary>Requests parked now (tests wait for this instead of sleeping).</summary>
    public int Parked
    {
        get { lock (_lock) return _parked; }
    }

    /// <summary>Whether a snapshot or delete holds the gate closed now.</summary>
    public bool IsClosed
    {
        get { lock (_lock) return _closed; }
    }

    /// <summary>Why the gate is closed for good, or null.</summary>
    public string? RetiredReason => Volatile.Read(ref _retiredReason);

    public ValueTask EnterAsync()
    {
        lock (_lock)
        {
            if (_retiredReason is not null)
                return ValueTask.FromException(new BlockDeviceException(BlockError.Unavailable, _retiredReason));
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
            if (--_inFlight - _parked == 0 && _closed)
                Monitor.PulseAll(_lock);
        }
    }

    /// <summary>The calling request starts waiting for data space or a block lock.</summary>
    public void Park()
    {
        lock (_lock)
        {
            if (_inFlight - ++_parked == 0 && _closed)
                Monitor.PulseAll(_lock);
        }
    }

    /// <summary>The parked request may go on: at once when the gate is open, else when it opens
    /// (it stays parked meanwhile). Fails when the gate is retired, now or while waiting.</summary>
    public ValueTask ResumeAsync()
    {
        lock (_lock)
        {
            if (_retiredReason is not null)
            {
                _parked--;
                return ValueTask.FromException(new BlockDeviceException(BlockError.Unavailable, _retiredReason));
            }
            if (!_closed)
            {
                _parked--;
                return ValueTask.CompletedTask;
            }
            var waiter = PooledSignal.Rent();
            waiter.Next = _waitingToResume;
            _waitingToResume = waiter;
            return waiter.Task;
        }
    }

    /// <summary>Stops new requests and blocks until those in flight, other than parked ones,
    /// have finished. Refuses with "busy" when they take longer than <paramref name="timeout"/>
    /// (a device that stopped answering), leaving the gate open.</summary>
    public void CloseAndDrain(TimeSpan timeout, string what)
    {
        lock (_lock)
        {
            _closed = true;
            bool drained;
            try
            {
                drained = WaitLocked(countParked: false, timeout);
            }
            catch
            {
                OpenLocked();   // refused on the reactor thread: the volume must keep serving
                throw;
            }
            if (!drained)
            {
                int active = _inFlight - _parked;
                OpenLocked();
                throw new PoolException($"cannot {what}: busy, {active} requests in flight did not finish within {timeout.TotalSeconds:0.#} s");
            }
        }
    }

    /// <summary>Closes the gate for good (the volume was deleted or the pool closed): requests
    /// waiting to enter, and any later ones, fail with <paramref name="reason"/>. Does not wait;
    /// see <see cref="WaitUntilEmpty"/>.</summary>
    public void Retire(string reason)
    {
        PooledSignal? waiters, resumers;
        lock (_lock)
        {
            _retiredReason = reason;
            _closed = true;
            waiters = _waitingToEnter;
            _waitingToEnter = null;
            resumers = _waitingToResume;
            _waitingToResume = null;
            for (var w = resumers; w is not null; w = w.Next)
                _parked--;
        }
        var error = new BlockDeviceException(BlockError.Unavailable, reason);
        FailAll(waiters, error);
        FailAll(resumers, error);
    }

    /// <summary>Waits for every request inside, parked ones included (fail those first).
    /// Returns false after <paramref name="timeout"/>.</summary>
    public bool WaitUntilEmpty(TimeSpan timeout)
    {
        lock (_lock)
            return WaitLocked(countParked: true, timeout);
    }

    // Called with _lock held. Requests in flight may need the io_uring reactor to finish, so
    // waiting for them on that thread could never end: refuse instead of hanging. (With nothing
    // in flight, closing on the reactor thread is fine.)
    private bool WaitLocked(bool countParked, TimeSpan timeout)
    {
        int Active() => countParked ? _inFlight : _inFlight - _parked;
        if (Active() > 0 && ThinFast.IO.Uring.IoUringReactor.IsReactorThread)
            throw new InvalidOperationException(
                $"{Active()} requests are in flight and this is the io_uring reactor thread that must complete them: pause or close the volume from another thread");
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (Active() > 0)
        {
            long left = deadline - Environment.TickCount64;
            if (left <= 0 || !Monitor.Wait(_lock, (int)Math.Min(left, int.MaxValue)) && Active() > 0 && Environment.TickCount64 >= deadline)
                return false;
        }
        return true;
    }

    /// <summary>Lets paused requests in again.</summary>
    public void Open()
    {
        lock (_lock)
            OpenLocked();
    }

    private void OpenLocked()
    {
        _closed = false;
        var waiters = _waitingToEnter;
        _waitingToEnter = null;
        for (var w = waiters; w is not null; w = w.Next)
            _inFlight++;
        var resumers = _waitingToResume;
        _waitingToResume = null;
        for (var w = resumers; w is not null; w = w.Next)
            _parked--;
        // Completing runs continuations on the thread pool (PooledSignal), never inside this lock.
        CompleteAll(waiters);
        CompleteAll(resumers);
    }

    private static void CompleteAll(PooledSignal? waiters)
    {
        while (waiters is not null)
        {
            var next = waiters.Next;
            waiters.Next = null;
            waiters.Complete();
            waiters = next;
        }
    }

    private static void FailAll(PooledSignal? waiters, Exception error)
    {
        while (waiters is not null)
        {
            var next = waiters.Next;
            waiters.Next = null;
            waiters.Fail(error);
            waiters = next;
        }
    }
}
