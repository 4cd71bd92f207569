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
public sealed partial class ThinPool
{
    // Blocks unmapped in the open transaction; guarded by the metadata lock.
    private List<ulong> _passdownPending = new();
    private volatile bool _passdownUnsupported;

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
