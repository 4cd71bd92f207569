using System.Runtime.CompilerServices;
using ThinFast.IO;

namespace ThinFast.Engine;

// ---- Data space: allocation, the low-water event, out-of-space queueing, growing ----
public sealed partial class ThinPool
{
    private readonly object _spaceLock = new();
    private PooledSignal? _spaceWaiters;
    private long _spaceWaitDeadline;

    /// <summary>Reserves one data block for a write that fills it and then maps it
    /// (<see cref="InsertMapping"/>) or gives it back (<see cref="ReleaseDataBlock"/>). Out of
    /// space it commits once (blocks freed in the open transaction become usable only then), then
    /// either fails with <see cref="BlockError.NoSpace"/> or parks the request in
    /// <paramref name="gate"/> and queues it until the pool grows or space is freed, for at most
    /// <see cref="PoolOptions.NoSpaceTimeout"/>. <paramref name="mayWait"/> false (FAST_ZERO)
    /// refuses with <see cref="BlockError.NotSupported"/> instead of waiting.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    internal async ValueTask<ulong> AllocateDataBlockAsync(IoGate gate, bool mayWait = true)
    {
        bool committed = false;
        while (true)
        {
            switch (_mode)
            {
                case PoolMode.ReadOnly:
                case PoolMode.Fail:
                    throw new BlockDeviceException(BlockError.IoError, $"cannot allocate: pool is in {_mode} mode");
            }
            if (gate.RetiredReason is { } retired)
                throw new BlockDeviceException(BlockError.Unavailable, retired);
            if (TryAllocate(out ulong block))
                return block;
            if (!mayWait)
                throw new BlockDeviceException(BlockError.NotSupported, "no data block is free now, and the request may not wait for one");
            if (!committed && _dirty)
            {
                committed = true;
                await FlushAsync();
                continue;
            }
            // Blocks whose discard is in flight are free as soon as it completes: wait for them
            // rather than report a full pool that a TRIM and a FLUSH have just emptied.
            if (!PassdownsInFlight)
            {
                // A passdown releases its blocks before it leaves the queue: one that finished
                // since the attempt above has left them allocatable.
                if (TryAllocate(out block))
                    return block;
                SetMode(PoolMode.OutOfDataSpace, "no free data blocks");
                if (Options.ErrorIfNoSpace || _noSpaceTimedOut)
                    throw NoSpace();
            }
            if (_closing)
                throw Closing();
            gate.Park();
            try
            {
                await WaitForSpaceAsync(gate);
            }
            finally
            {
                await gate.ResumeAsync();
            }
        }
    }

    private bool TryAllocate(out ulong block)
    {
        ulong free;
        _metadataLock.EnterWriteLock();
        try
        {
            // A reservation changes nothing on disk (the block is written out free until its
            // mapping is inserted), so it does not dirty the transaction.
            if (!_metadata.TryAllocateDataBlock(out block))
                return false;
            free = _metadata.FreeDataBlocks;
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
        if ((long)free <= Options.LowWaterBlocks && !_lowWaterFired)
        {
            _lowWaterFired = true;
            Log($"low water: {free} free data blocks (threshold {Options.LowWaterBlocks})");
        }
        return true;
    }

    private ValueTask WaitForSpaceAsync(IoGate owner)
    {
        var waiter = PooledSignal.Rent();
        waiter.Owner = owner;
        lock (_spaceLock)
        {
            // BeginClose sets the flag and empties the queue under this lock: a waiter queued
            // after it would wait for space nobody will free.
            if (_closing)
            {
                waiter.Owner = null;
                waiter.Fail(Closing());
                return waiter.Task;
            }
            if (_spaceWaiters is null && Options.NoSpaceTimeout > TimeSpan.Zero)
                _spaceWaitDeadline = Environment.TickCount64 + (long)Options.NoSpaceTimeout.TotalMilliseconds;
            waiter.Next = _spaceWaiters;
            _spaceWaiters = waiter;
        }
        // Space freed after the caller's failed attempt and before it queued would wake nobody:
        // look again now that the waiter is visible to whoever frees space next.
        if (ReadMetadata(m => m.AllocatableDataBlocks) > 0)
            SignalSpace();
        // The commit thread times the queue out; wake it so it knows the deadline.
        _commitWake.Set();
        return waiter.Task;
    }

    /// <summary>Wakes queued allocations after anything that may have freed space (commit,
    /// delete, grow); they retry, and queue again if there is still none.</summary>
    private void SignalSpace()
    {
        ulong free = ReadMetadata(m => m.AllocatableDataBlocks);
        if (free == 0)
            return;
        if ((long)free > Options.LowWaterBlocks)
            _lowWaterFired = false;
        PooledSignal? waiters;
        lock (_spaceLock)
        {
            waiters = _spaceWaiters;
            _spaceWaiters = null;
            _noSpaceTimedOut = false;
            if (_mode == PoolMode.OutOfDataSpace)
                _mode = PoolMode.Write;
        }
        if (waiters is not null)
            Log($"data space available ({free} free blocks): resuming queued writes");
        while (waiters is not null)
        {
            var next = waiters.Next;
            waiters.Next = null;
            waiters.Owner = null;
            waiters.Complete();
            waiters = next;
        }
    }

    /// <summary>After the no-space timeout, fails the queue with ENOSPC and makes later
    /// allocations fail at once until space returns (dm-thin's no_space_timeout).</summary>
    private void ExpireSpaceWaiters()
    {
        lock (_spaceLock)
        {
            if (_spaceWaiters is null || Options.NoSpaceTimeout <= TimeSpan.Zero || Environment.TickCount64 < _spaceWaitDeadline)
                return;
            _noSpaceTimedOut = true;
        }
        Log($"no data space for {Options.NoSpaceTimeout.TotalSeconds:0} s: failing queued writes with ENOSPC");
        FailSpaceWaiters(NoSpace());
    }

    /// <summary>Fails queued allocations: those of one volume (<paramref name="owner"/>, a
    /// volume being deleted) or, with null, all of them.</summary>
    private void FailSpaceWaiters(Exception error, IoGate? owner = null)
    {
        PooledSignal? failed = null;
        lock (_spaceLock)
        {
            PooledSignal? kept = null;
            for (var w = _spaceWaiters; w is not null;)
            {
                var next = w.Next;
                if (owner is null || ReferenceEquals(w.Owner, owner))
                {
                    w.Next = failed;
                    failed = w;
                }
                else
                {
                    w.Next = kept;
                    kept = w;
                }
                w = next;
            }
            _spaceWaiters = kept;
        }
        while (failed is not null)
        {
            var next = failed.Next;
            failed.Next = null;
            failed.Owner = null;
            failed.Fail(error);
            failed = next;
        }
    }

    /// <summary>Unavailable, not ENOSPC: the write was refused because the pool is closing, and a
    /// front end may tell its client to retry elsewhere (NBD's ESHUTDOWN).</summary>
    private static BlockDeviceException Closing() => new(BlockError.Unavailable, "the pool is closing");

    private static BlockDeviceException NoSpace() => new(BlockError.NoSpace, "thin pool is out of data space", errno: 28);

    /// <summary>Grows the data device online to <paramref name="newLength"/> bytes and lets queued
    /// writes proceed.</summary>
    public void GrowData(long newLength)
    {
        lock (_adminLock)
        {
            ThrowIfNotWritable("grow the data device");
            ulong newBlocks = (ulong)(newLength / BlockSize);
            ulong current = ReadMetadata(m => m.DataBlockCount);
            if (newBlocks < current)
                throw new PoolException($"cannot shrink the data space from {current} to {newBlocks} blocks");
            if (newBlocks == current)
                return;
            if (Data.Length < newLength)
                Data.Grow(newLength);
            // The flush handle is a second open of the same file, with its own idea of the length:
            // discards of the new blocks would otherwise be refused as out of range.
            if (_devices.DataFlush is { } flushHandle && flushHandle.Length < newLength)
                flushHandle.Grow(newLength);
            MutateMetadata(m => m.GrowDataSpace(newBlocks));
            CommitCore();
            Log($"data space grown to {newBlocks} blocks");
        }
    }
}
