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
        if (_mode == PoolMode.Fail)
            return ValueTask.FromException(new BlockDeviceException(BlockError.IoError, "pool is in fail mode"));
        // Every mapping is committed, so only the data writes need to reach the media.
        if (!_dirty && _needsCheckUnrecorded is null)
            return FlushDataAsync();
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
            List<ulong>? freed = null;
            if (waiters is not null || _dirty || _needsCheckUnrecorded is not null)
            {
                try
                {
                    freed = CommitAndTakeFreed(mustCommit: false);
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
            // FLUSH callers wait on the commit only; the discards go down on their own thread.
            QueuePassdown(freed);
            SignalSpace();
            ExpireSpaceWaiters();
        }
    }

    /// <summary>dm-thin's commit order: data device flushed first, so every block the new
    /// metadata references has durable contents; then the metadata commit (its own blocks, flush,
    /// superblock, flush); then the discards of blocks the commit unmapped.</summary>
    private void CommitCore()
    {
        var freed = CommitAndTakeFreed(mustCommit: true);
        QueuePassdown(freed);
        // A commit is where blocks freed in the transaction become allocatable again.
        SignalSpace();
    }

    /// <summary>Commits; returns the blocks the commit made free that wait for their discard.
    /// <paramref name="mustCommit"/>: an administrative change must reach the metadata, so a pool
    /// that went read-only meanwhile is an error, not a data-only flush.</summary>
    private List<ulong>? CommitAndTakeFreed(bool mustCommit)
    {
        lock (_commitLock)
            return CommitLocked(mustCommit);
    }

    private List<ulong>? CommitLocked(bool mustCommit)
    {
        if (_mode == PoolMode.Fail)
            throw new BlockDeviceException(BlockError.IoError, "pool is in fail mode");
        // The first flush, without the metadata lock, carries the bulk of the dirty data while
        // lookups go on. Mappings inserted after it started may have data it did not cover; a
        // second flush under the lock covers them, and is skipped when there were none.
        long generation = BeginFlush(out long durableBefore);
        long changesBefore = Interlocked.Read(ref _mappingChanges);
        try
        {
            DataFlush.Flush();
        }
        catch (Exception e)
        {
            DataFlushFailed(durableBefore, e);
            throw;
        }
        // Raised before the lock is taken, so reactor continuations that see it go elsewhere
        // instead of queueing behind the metadata write.
        _commitRunning = true;
        _metadataLock.EnterWriteLock();
        try
        {
            if (_mode == PoolMode.ReadOnly && mustCommit)
                throw new PoolException("the pool went read-only before the change was committed (see pool status and the log)");
            // Read-only: nothing is committed any more, but in-place writes still needed the flush.
            if (_mode == PoolMode.ReadOnly || !_dirty)
            {
                RetryNeedsCheckLocked();
                FlushSucceeded(generation);
                return null;
            }
            if (_mappingChanges != changesBefore)
            {
                try
                {
                    DataFlush.Flush();
                }
                catch (Exception e)
                {
                    string why = $"data device flush failed: {e.Message}";
                    DurabilityLost(durableBefore, why);
                    AbortLocked(why);
                    throw;
                }
            }
            try
            {
                _metadata.Commit();
            }
            catch (Exception e)
            {
                AbortAndDegrade(e, durableBefore);
                throw;
            }
            _dirty = false;
            _changedInTransaction.Clear();
            FlushSucceeded(generation);
            return TakePassdownLocked();
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
