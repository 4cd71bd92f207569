using System.Runtime.CompilerServices;
using ThinFast.IO;

namespace ThinFast.Engine;

// ---- Durability: which writes a successful flush covers, and what a failed one loses ----
//
// A flush (data-device fdatasync, or a commit that starts with one) covers every write that
// completed before it started. Each flush takes the next generation number when it starts; each
// volume records the current number when one of its writes completes. A write recorded below a
// successful flush's generation is durable. When a flush or a commit fails, or a metadata failure
// aborts the transaction, every volume with a write not known durable has lost writes for good:
// its FLUSH and FUA fail with EIO from then on (fsyncgate: a later flush that succeeds says
// nothing about the writes the failed one dropped). The pool goes read-only and records
// needs_check, so a reopen comes up read-only too until the operator has checked it.
public sealed partial class ThinPool
{
    private long _flushGeneration;
    private long _durableThrough;
    private volatile Dictionary<string, ThinVolume> _volumesByName = new(StringComparer.Ordinal);
    private volatile string? _needsCheckUnrecorded;
    // Devices whose mappings changed in the open transaction, kept under the metadata write lock:
    // an abort loses exactly their changes, including those of writes still in flight that will
    // complete (and record their generation) only after it.
    private readonly HashSet<uint> _changedInTransaction = new();

    /// <summary>The generation a write completing now records.</summary>
    internal long FlushGeneration => Volatile.Read(ref _flushGeneration);

    /// <summary>Starts a flush: its generation, and the durability known before it.</summary>
    private long BeginFlush(out long durableBefore)
    {
        durableBefore = Volatile.Read(ref _durableThrough);
        return Interlocked.Increment(ref _flushGeneration);
    }

    private void FlushSucceeded(long generation)
    {
        long seen = Volatile.Read(ref _durableThrough);
        while (seen < generation)
        {
            long prior = Interlocked.CompareExchange(ref _durableThrough, generation, seen);
            if (prior == seen)
                return;
            seen = prior;
        }
    }

    /// <summary>A data flush or commit failed, or the transaction was aborted: the writes of
    /// every volume changed since <paramref name="durableBefore"/> may be lost.</summary>
    private void DurabilityLost(long durableBefore, string why)
    {
        int lost = 0;
        foreach (var volume in _volumesByName.Values)
        {
            if (volume.MarkLostIfChangedSince(durableBefore, why))
                lost++;
        }
        SetMode(PoolMode.ReadOnly, why);
        if (lost > 0)
            Log($"{lost} volume(s) may have lost acknowledged writes ({why}): their FLUSH and FUA fail from now on");
    }

    /// <summary>The open transaction is being dropped: every volume with a mapping in it has lost
    /// writes, whether or not they have completed yet. Called with the metadata lock held
    /// exclusively.</summary>
    private void MarkTransactionLostLocked(string why)
    {
        int lost = 0;
        foreach (var volume in _volumesByName.Values)
        {
            if (_changedInTransaction.Contains(volume.DeviceId) && volume.MarkLostIfChangedSince(long.MinValue, why))
                lost++;
        }
        _changedInTransaction.Clear();
        if (lost > 0)
            Log($"{lost} volume(s) lost mappings with the aborted transaction ({why}): their FLUSH and FUA fail from now on");
    }

    /// <summary>Records needs_check in the committed metadata, best effort: the state written is
    /// the last committed one (the caller aborted the open transaction) plus the flag.</summary>
    private void RecordNeedsCheckLocked(string why)
    {
        try
        {
            _metadata.SetNeedsCheck(true);
            _metadata.Commit();
            _needsCheckUnrecorded = null;
            Log($"needs_check set in the metadata: {why}");
        }
        catch (Exception e)
        {
            bool first = _needsCheckUnrecorded is null;
            _needsCheckUnrecorded = why;
            try
            {
                _metadata.Abort();
            }
            catch (Exception abort)
            {
                SetMode(PoolMode.Fail, $"metadata abort failed: {abort.Message}");
            }
            if (first)
                Log($"could not record needs_check in the metadata (retried at every commit until it is): {e.Message}");
        }
    }

    /// <summary>A failure whose needs_check could not be written yet (the metadata device was
    /// failing too): the next commit, FLUSH or periodic, tries again, so a reopen after the
    /// device recovers still comes up read-only. Called with the metadata lock held exclusively.</summary>
    private void RetryNeedsCheckLocked()
    {
        if (_needsCheckUnrecorded is { } why)
            RecordNeedsCheckLocked(why);
    }

    /// <summary>A flush of the data device alone (every mapping is committed): the same failure
    /// rules as a commit.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushDataAsync()
    {
        long generation = BeginFlush(out long durableBefore);
        try
        {
            await Data.FlushAsync();
        }
        catch (Exception e)
        {
            DataFlushFailed(durableBefore, e);
            throw new BlockDeviceException(BlockError.IoError, $"data device flush failed: {e.Message}", inner: e);
        }
        FlushSucceeded(generation);
    }

    /// <summary>The data device lost writes: whatever the open transaction maps may point at
    /// data that never reached the media, so it is dropped, and needs_check is recorded.</summary>
    private void DataFlushFailed(long durableBefore, Exception cause)
    {
        string why = $"data device flush failed: {cause.Message}";
        DurabilityLost(durableBefore, why);
        _metadataLock.EnterWriteLock();
        try
        {
            AbortLocked(why);
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
    }

    /// <summary>Publishes a copy of the volume table for readers that must not take the admin
    /// lock: lookups by name and the walks over every volume. Called under the admin lock after every
    /// change to <see cref="_volumes"/>.</summary>
    private void PublishVolumes() =>
        _volumesByName = new Dictionary<string, ThinVolume>(_volumes, StringComparer.Ordinal);
}
