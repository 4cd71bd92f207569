using ThinFast.IO;

namespace ThinFast.Engine;

// ---- Discard passdown: telling the data device about blocks nobody maps any more ----
//
// A block unmapped by TRIM (or by write-zeroes that may deallocate) is discarded on the data
// device only after the commit that unmaps it is durable: a crash before that commit brings the
// old mapping back, and its data must still be there (not zeros, not the origin's). Until its
// discard has completed the block is held: free in the metadata written out, but never handed
// to another writer, whose data a late discard would destroy. A crash simply ends the hold
// (every newly provisioned block is fully written or zeroed before it is mapped).
//
// The discards run on a thread of their own: a discard of a large range can take seconds, and
// neither a FLUSH (which waits for the commit thread) nor an administrative commit may wait for
// it. Blocks wait for their discard held, so a slow discard delays only their reuse.
public sealed partial class ThinPool
{
    // Blocks unmapped in the open transaction; guarded by the metadata lock.
    private List<ulong> _passdownPending = new();
    private volatile bool _passdownUnsupported;
    // Committed batches waiting for (or in) their discards, oldest first; the head stays queued
    // until its blocks are released, so an empty queue means nothing is in flight.
    private readonly Queue<List<ulong>> _passdownQueue = new();
    private Thread? _passdownThread;
    private bool _passdownClosing;

    private bool PassdownEnabled => Options.DiscardPassdown && !_passdownUnsupported;

    /// <summary>A block the open transaction freed: hold it for its discard. Called with the
    /// metadata lock held exclusively.</summary>
    private void QueuePassdownLocked(ulong dataBlock)
    {
        if (!PassdownEnabled)
            return;
        _metadata.HoldDataBlock(dataBlock);
        _passdownPending.Add(dataBlock);
    }

    /// <summary>The transaction just committed: its freed blocks now go down. Called with the
    /// metadata lock held exclusively.</summary>
    private List<ulong>? TakePassdownLocked()
    {
        if (_passdownPending.Count == 0)
            return null;
        var committed = _passdownPending;
        _passdownPending = new List<ulong>();
        return committed;
    }

    /// <summary>Hands the blocks a durable commit freed to the passdown thread.</summary>
    private void QueuePassdown(List<ulong>? freed)
    {
        if (freed is null)
            return;
        lock (_passdownQueue)
        {
            if (_passdownThread is null)
            {
                _passdownThread = new Thread(PassdownLoop) { IsBackground = true, Name = "thinfast-passdown" };
                _passdownThread.Start();
            }
            _passdownQueue.Enqueue(freed);
            Monitor.PulseAll(_passdownQueue);
        }
    }

    private void PassdownLoop()
    {
        while (true)
        {
            List<ulong> batch;
            lock (_passdownQueue)
            {
                while (_passdownQueue.Count == 0 && !_passdownClosing)
                    Monitor.Wait(_passdownQueue);
                if (_passdownQueue.Count == 0)
                    return;
                batch = _passdownQueue.Peek();
            }
            try
            {
                PassDownAndRelease(batch);
            }
            catch (Exception) when (Volatile.Read(ref _passdownClosing))
            {
                return;   // the pool closed under a discard that outlived the shutdown's patience
            }
            SignalSpace();
            lock (_passdownQueue)
            {
                _passdownQueue.Dequeue();
                Monitor.PulseAll(_passdownQueue);
            }
        }
    }

    /// <summary>Whether committed discards are queued or running: their blocks come free soon.</summary>
    private bool PassdownsInFlight
    {
        get { lock (_passdownQueue) return _passdownQueue.Count > 0; }
    }

    /// <summary>Waits until every committed discard has completed and its blocks are
    /// allocatable again; false on timeout.</summary>
    internal bool WaitForPassdowns(TimeSpan timeout)
    {
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_passdownQueue)
        {
            while (_passdownQueue.Count > 0)
            {
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                    return false;
                Monitor.Wait(_passdownQueue, TimeSpan.FromMilliseconds(left));
            }
            return true;
        }
    }

    /// <summary>Lets the queued discards finish within the shutdown's patience, then stops. A
    /// discard still stuck after that is abandoned: it is advice, and the blocks are free in the
    /// committed metadata already.</summary>
    private void StopPassdownThread()
    {
        bool drained = WaitForPassdowns(Options.AdminDrainTimeout);
        Thread? thread;
        lock (_passdownQueue)
        {
            _passdownClosing = true;
            Monitor.PulseAll(_passdownQueue);
            thread = _passdownThread;
        }
        if (!drained)
            Log($"closing: discards on the data device still in flight after {Options.AdminDrainTimeout.TotalSeconds:0} s; closing without them");
        else
            thread?.Join();
    }

    /// <summary>Discards committed-free blocks on the data device (coalescing runs), then makes
    /// them allocatable. A device without discard turns passdown off, with one log line; any
    /// other failure is logged and the blocks are released anyway: a discard is only advice.</summary>
    private void PassDownAndRelease(List<ulong>? freed)
    {
        if (freed is null)
            return;
        freed.Sort();
        for (int i = 0; i < freed.Count;)
        {
            int j = i + 1;
            while (j < freed.Count && freed[j] == freed[j - 1] + 1)
                j++;
            if (!_passdownUnsupported)
            {
                try
                {
                    // The flush handle completes on the calling thread (see PoolDevices.DataFlush).
                    DataFlush.DeallocateAsync((long)freed[i] * BlockSize, (long)(j - i) * BlockSize).AsTask().GetAwaiter().GetResult();
                }
                catch (BlockDeviceException e) when (e.Error == BlockError.NotSupported)
                {
                    _passdownUnsupported = true;
                    Log($"data device {Data.Name} does not support discard: discard passdown is off ({e.Message})");
                }
                catch (Exception e)
                {
                    Log($"discard of data blocks {freed[i]}..{freed[j - 1]} failed (the blocks are freed anyway): {e.Message}");
                }
            }
            i = j;
        }
        _metadataLock.EnterWriteLock();
        try
        {
            foreach (ulong block in freed)
                _metadata.ReleaseHeldDataBlock(block);
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
    }
}
