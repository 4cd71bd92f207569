using ThinFast.IO;

namespace ThinFast.Engine;

// ---- Commits: group commit on a dedicated thread, and the periodic commit ----
public sealed partial class ThinPool
{
    private readonly Thread _commitThread;
    private readonly AutoResetEvent _commitWake = new(false);
    private readonly object _commitLock = new();
    private readonly object _waitersLock = new();
    private PooledSignal? _commitWaiters;
    private bool _stopping;
    private volatile bool _commitRunning;

    /// <summary>True while a commit holds (or is about to take) the metadata lock, for
    /// milliseconds: callers on the io_uring reactor thread move elsewhere before taking it.</summary>
    internal bool CommitRunning => _commitRunning;

    /// <summary>Makes every write completed before the call durable: flushes the data device
    /// and, when anything changed, commits the metadata. Calls that arrive while a commit runs
    /// share the next one.</summary>
    public ValueTask FlushAsync()
    {
        if (!_dirty)
        {
            // Every mapping is committed, so only the data writes need to reach the media.
            return _mode == PoolMode.Fail
                ? ValueTask.FromException(new BlockDeviceException(BlockError.IoError, "pool is in fail mode"))
                : Data.FlushAsync();
        }
        var waiter = PooledSignal.Rent();
        lock (_waitersLock)
        {
            waiter.Next = _commitWaiters;
            _commitWaiters = waiter;
        }
        _commitWake.Set();
        return waiter.Task;
    }

    /// <summary>Commits now on the calling thread (administrative operations, shutdown).</summary>
    public void CommitNow()
    {
        CommitCore();
    }

    private void CommitLoop()
    {
        while (true)
        {
            _commitWake.WaitOne(NextWakeUp());
            PooledSignal? waiters;
            lock (_waitersLock)
            {
                waiters = _commitWaiters;
                _commitWaiters = null;
            }
            if (_stopping && waiters is null)
                return;
            Exception? failure = null;
            if (waiters is not null || _dirty)
            {
                try
                {
                    CommitCore();
                }
                catch (Exception e)
                {
                    failure = e;
                }
            }
            while (waiters is not null)
            {
                var next = waiters.Next;
                waiters.Next = null;
                if (failure is null)
                    waiters.Complete();
                else
                    waiters.Fail(new BlockDeviceException(BlockError.IoError, $"commit failed: {failure.Message}", inner: failure));
                waiters = next;
            }
            ExpireSpaceWaiters();
        }
    }

    /// <summary>dm-thin's commit order: data device flushed first, so every block the new
    /// metadata references has durable contents; then the metadata commit (its own blocks, flush,
    /// superblock, flush).</summary>
    private void CommitCore()
    {
        lock (_commitLock)
            CommitLocked();
        // A commit is where blocks freed in the transaction become allocatable again.
        SignalSpace();
    }

    private void CommitLocked()
    {
        if (_mode == PoolMode.Fail)
            throw new BlockDeviceException(BlockError.IoError, "pool is in fail mode");
        // The first flush, without the metadata lock, carries the bulk of the dirty data while
        // lookups go on. Mappings inserted after it started may have data it did not cover; a
        // second flush under the lock covers them, and is skipped when there were none.
        long changesBefore = Interlocked.Read(ref _mappingChanges);
        try
        {
            DataFlush.Flush();
        }
        catch (Exception e)
        {
            SetMode(PoolMode.ReadOnly, $"data device flush failed: {e.Message}");
            throw;
        }
        // Raised before the lock is taken, so reactor continuations that see it go elsewhere
        // instead of queueing behind the metadata write.
        _commitRunning = true;
        _metadataLock.EnterWriteLock();
        try
        {
            if (!_dirty && _mode != PoolMode.ReadOnly)
                return;
            if (_mappingChanges != changesBefore)
                DataFlush.Flush();
            if (_mode == PoolMode.ReadOnly)
                return;
            _metadata.Commit();
            _dirty = false;
        }
        catch (Exception e)
        {
            AbortAndDegrade(e);
            throw;
        }
        finally
        {
            _metadataLock.ExitWriteLock();
            _commitRunning = false;
        }
    }

    /// <summary>The periodic commit, or sooner when queued writes reach their no-space timeout.</summary>
    private TimeSpan NextWakeUp()
    {
        var wait = Options.CommitInterval;
        lock (_spaceLock)
        {
            if (_spaceWaiters is not null && Options.NoSpaceTimeout > TimeSpan.Zero)
            {
                var untilDeadline = TimeSpan.FromMilliseconds(Math.Max(1, _spaceWaitDeadline - Environment.TickCount64));
                if (untilDeadline < wait)
                    wait = untilDeadline;
            }
        }
        return wait;
    }

    private void StopCommitThread()
    {
        _stopping = true;
        _commitWake.Set();
        _commitThread.Join();
    }
}
