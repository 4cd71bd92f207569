using System.Runtime.CompilerServices;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Engine;

/// <summary>
/// A thin volume: what the front ends serve. Requests are split at data-block boundaries and each
/// block is decided on its own (dm-thin's rules, docs/engine.md): read the pool, the origin or
/// zeros; write in place, or provision a new block (copying the rest of it from the origin, from
/// the shared block, or zeros) and insert the mapping.
/// </summary>
public sealed partial class ThinVolume : IBlockVolume
{
    private readonly ThinPool _pool;
    private IBlockDevice? _origin;
    private IBlockDevice? _originForCopies;
    private readonly long _originSize;
    private readonly string? _unavailable;
    private readonly int _blockSize;

    internal readonly IoGate Gate = new();

    // The flush generation when the last write, discard or zeroing completed (ThinPool.Durability.cs);
    // -1: nothing changed since the pool opened.
    private long _lastChange = -1;
    // Set for good once writes of this volume may have been lost: FLUSH and FUA fail from then on.
    private volatile string? _lostWrites;
    private volatile string? _retired;

    internal ThinVolume(ThinPool pool, VolumeRecord record, IBlockDevice? origin, string? unavailable = null)
    {
        _pool = pool;
        Record = record;
        _origin = origin;
        _originForCopies = origin is OriginDevice two ? two.ForCopies : origin;
        _originSize = origin is null ? 0 : OriginDevice.ByteLengthOf(origin);
        _unavailable = unavailable;
        _blockSize = pool.BlockSize;
    }

    internal VolumeRecord Record { get; }

    internal uint DeviceId => Record.DeviceId;

    public string Name => Record.Name;

    public long Size => Record.Size;

    public bool IsReadOnly => false;

    public int AllocationUnit => _blockSize;

    public string? OriginPath => Record.OriginPath;

    /// <summary>Why the volume cannot serve (its origin is missing or changed), or null.</summary>
    public string? UnavailableReason => _unavailable;

    /// <summary>Number of data blocks mapped by this volume (dm-thin's mapped_blocks).</summary>
    public ulong MappedBlocks => _pool.MappedBlocks(DeviceId);

    /// <summary>Why acknowledged writes of this volume may have been lost, or null.</summary>
    public string? LostWritesReason => _lostWrites;

    /// <summary>The volume was deleted or the pool closed: every request fails from now on.</summary>
    internal void Retire(string reason)
    {
        _retired = reason;
        Gate.Retire(reason);
    }

    /// <summary>Takes over what <paramref name="predecessor"/> (the same volume, put back after a
    /// failed delete) knew about its durability: writes it may have lost stay lost.</summary>
    internal void InheritDurability(ThinVolume predecessor)
    {
        Volatile.Write(ref _lastChange, Volatile.Read(ref predecessor._lastChange));
        _lostWrites = predecessor._lostWrites;
    }

    // Called when a write completes, before it is acknowledged.
    private void MarkChanged() => Volatile.Write(ref _lastChange, _pool.FlushGeneration);

    internal bool MarkLostIfChangedSince(long durableBefore, string why)
    {
        if (Volatile.Read(ref _lastChange) < durableBefore || _lostWrites is not null)
            return false;
        _lostWrites = why;
        return true;
    }

    internal void DisposeOrigin()
    {
        _origin?.Dispose();
        _origin = null;
        _originForCopies = null;
    }

    // ---- Reads ----

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        if (!CheckRequest(offset, destination.Length, write: false, out var error))
            return ValueTask.FromException(error);
        if (destination.Length == 0)
            return ValueTask.CompletedTask;
        return offset % _blockSize + destination.Length <= _blockSize
            ? ReadInOneBlockAsync(offset, destination)
            : ReadCoreAsync(offset, destination);
    }

    /// <summary>The common case (a request inside one block) in one state machine: with the gate
    /// and the block lock free, only the device read suspends it.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadInOneBlockAsync(long offset, Memory<byte> destination)
    {
        await Gate.EnterAsync();
        try
        {
            ulong block = (ulong)(offset / _blockSize);
            int stripe = BlockLockTable.StripeOf(DeviceId, block);
            if (!TryTakeBlockLockNow(stripe, exclusive: false, out var lockWait))
            {
                await lockWait;
                await ResumeAfterLockWaitAsync(stripe, exclusive: false);
            }
            try
            {
                if (_pool.TryLookup(DeviceId, block, out var mapping))
                    await _pool.ReadAnyAsync(_pool.Data, (long)mapping.DataBlock * _blockSize + offset % _blockSize, destination);
                else if (_origin is not null)
                    await ReadOriginAsync(offset, destination);
                else
                    destination.Span.Clear();
            }
            finally
            {
                _pool.BlockLocks.Release(stripe, exclusive: false);
            }
        }
        finally
        {
            Gate.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadCoreAsync(long offset, Memory<byte> destination)
    {
        await Gate.EnterAsync();
        try
        {
            int done = 0;
            while (done < destination.Length)
            {
                long position = offset + done;
                ulong first = (ulong)(position / _blockSize);
                int length = SegmentLength(position, destination.Length - done, out int blocks);
                await LockAsync(first, blocks, exclusive: false);
                try
                {
                    await ReadSegmentAsync(position, destination.Slice(done, length));
                }
                finally
                {
                    Unlock(first, blocks, exclusive: false);
                }
                done += length;
            }
        }
        finally
        {
            Gate.Exit();
        }
    }

    private enum Source : byte { Zero, Origin, Pool }

    /// <summary>Reads a run of blocks the caller has locked, coalescing consecutive blocks that
    /// come from the same place (contiguous pool blocks, the origin, zeros) into one I/O.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadSegmentAsync(long offset, Memory<byte> destination)
    {
        int runStart = 0, runLength = 0;
        Source runSource = Source.Zero;
        ulong runDataBlock = 0, runNextDataBlock = 0;
        int done = 0;
        while (done < destination.Length)
        {
            long position = offset + done;
            ulong block = (ulong)(position / _blockSize);
            int inBlock = (int)(position % _blockSize);
            int piece = Math.Min(_blockSize - inBlock, destination.Length - done);
            Source source;
            ulong dataBlock = 0;
            if (_pool.TryLookup(DeviceId, block, out var mapping))
            {
                source = Source.Pool;
                dataBlock = mapping.DataBlock;
            }
            else
            {
                source = _origin is null ? Source.Zero : Source.Origin;
            }

            bool continues = runLength > 0 && source == runSource && (source != Source.Pool || dataBlock == runNextDataBlock);
            if (!continues)
            {
                if (runLength > 0)
                    await ReadRunAsync(runSource, runDataBlock, offset + runStart, destination.Slice(runStart, runLength));
                runStart = done;
                runLength = 0;
                runSource = source;
                runDataBlock = dataBlock;
            }
            runNextDataBlock = dataBlock + 1;
            runLength += piece;
            done += piece;
        }
        if (runLength > 0)
            await ReadRunAsync(runSource, runDataBlock, offset + runStart, destination.Slice(runStart, runLength));
    }

    private ValueTask ReadRunAsync(Source source, ulong firstDataBlock, long virtualOffset, Memory<byte> destination)
    {
        switch (source)
        {
            case Source.Zero:
                destination.Span.Clear();
                return ValueTask.CompletedTask;
            case Source.Origin:
                return ReadOriginAsync(virtualOffset, destination);
            default:
                long deviceOffset = (long)firstDataBlock * _blockSize + virtualOffset % _blockSize;
                return _pool.ReadAnyAsync(_pool.Data, deviceOffset, destination);
        }
    }

    /// <summary>Origin data at the same offset; zeros past the origin's end (dm-thin §4.3).
    /// <paramref name="forCopy"/>: a provisioning copy, read O_DIRECT even when guest reads use
    /// the page cache (<see cref="OriginDevice"/>).</summary>
    private ValueTask ReadOriginAsync(long virtualOffset, Memory<byte> destination, bool forCopy = false)
    {
        long available = _originSize - virtualOffset;
        if (available <= 0)
        {
            destination.Span.Clear();
            return ValueTask.CompletedTask;
        }
        if (available < destination.Length)
        {
            destination.Span[(int)available..].Clear();
            destination = destination[..(int)available];
        }
        if (_origin is OriginDevice file)
        {
            destination = destination[..file.CopyTail(virtualOffset, destination.Span)];
            if (destination.IsEmpty)
                return ValueTask.CompletedTask;
        }
        return _pool.ReadAnyAsync(forCopy ? _originForCopies! : _origin!, virtualOffset, destination, holdingBounce: forCopy);
    }

    // ---- Writes ----

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        if (!CheckRequest(offset, source.Length, write: true, out var error))
            return ValueTask.FromException(error);
        if (source.Length == 0)
            return (flags & WriteFlags.ForceUnitAccess) != 0 ? FlushAsync() : ValueTask.CompletedTask;
        return offset % _blockSize + source.Length <= _blockSize && (flags & WriteFlags.ForceUnitAccess) == 0
            ? WriteInOneBlockAsync(offset, source)
            : WriteCoreAsync(offset, source, flags);
    }

    /// <summary>A write inside one block, in one state machine when the block is mapped and not
    /// shared (the steady state of a running guest); anything else takes the general path.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteInOneBlockAsync(long offset, ReadOnlyMemory<byte> source)
    {
        await Gate.EnterAsync();
        try
        {
            ulong block = (ulong)(offset / _blockSize);
            int stripe = BlockLockTable.StripeOf(DeviceId, block);
            if (!TryTakeBlockLockNow(stripe, exclusive: true, out var lockWait))
            {
                await lockWait;
                await ResumeAfterLockWaitAsync(stripe, exclusive: true);
            }
            try
            {
                if (_pool.TryLookup(DeviceId, block, out var mapping) && !mapping.Shared)
                    await _pool.WriteAnyAsync((long)mapping.DataBlock * _blockSize + offset % _blockSize, source);
                else
                    await WriteBlockAsync(block, (int)(offset % _blockSize), source);
                MarkChanged();
            }
            finally
            {
                _pool.BlockLocks.Release(stripe, exclusive: true);
            }
        }
        finally
        {
            Gate.Exit();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags)
    {
        await Gate.EnterAsync();
        try
        {
            int done = 0;
            while (done < source.Length)
            {
                long position = offset + done;
                ulong first = (ulong)(position / _blockSize);
                int length = SegmentLength(position, source.Length - done, out int blocks);
                await LockAsync(first, blocks, exclusive: true);
                try
                {
                    int segmentDone = 0;
                    while (segmentDone < length)
                    {
                        long p = position + segmentDone;
                        int inBlock = (int)(p % _blockSize);
                        int piece = Math.Min(_blockSize - inBlock, length - segmentDone);
                        await WriteBlockAsync((ulong)(p / _blockSize), inBlock, source.Slice(done + segmentDone, piece));
                        segmentDone += piece;
                    }
                    MarkChanged();
                }
                finally
                {
                    Unlock(first, blocks, exclusive: true);
                }
                done += length;
            }
        }
        finally
        {
            Gate.Exit();
        }
        // FUA: the data must be durable, and so must the mapping if the write provisioned; a
        // flush does both (it commits only when something changed).
        if ((flags & WriteFlags.ForceUnitAccess) != 0)
            await FlushAsync();
    }

    /// <summary>Writes inside one locked block.</summary>
    /// <param name="mayWaitForSpace">False for FAST_ZERO: a full pool answers "not supported"
    /// at once instead of queueing the request.</param>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteBlockAsync(ulong block, int inBlock, ReadOnlyMemory<byte> data, bool mayWaitForSpace = true)
    {
        bool mapped = _pool.TryLookup(DeviceId, block, out var mapping);
        if (mapped && !mapping.Shared)
        {
            await _pool.WriteAnyAsync((long)mapping.DataBlock * _blockSize + inBlock, data);
            return;
        }
        if (_pool.Mode == PoolMode.ReadOnly)
            throw new BlockDeviceException(BlockError.IoError, $"volume '{Name}': pool is read-only, cannot provision block {block}");
        // Provisioning takes the metadata lock twice (allocate, insert) for microseconds, except
        // while a commit holds it to write the metadata (about once a second, milliseconds). On
        // the io_uring reactor thread, which also serves every socket and device, that wait would
        // stall everything, so a reactor continuation moves to the thread pool while a commit
        // runs, and stays put otherwise (the hop costs a thread switch and, measured, ~200 bytes
        // of state-machine boxes per write).
        if (_pool.CommitRunning && ThinFast.IO.Uring.IoUringReactor.IsReactorThread)
            await Task.Yield();
        ulong newBlock = await _pool.AllocateDataBlockAsync(Gate, mayWaitForSpace);
        try
        {
            await BuildBlockAsync(block, newBlock, mapped ? mapping.DataBlock : ulong.MaxValue, inBlock, data);
            if (_pool.CommitRunning && ThinFast.IO.Uring.IoUringReactor.IsReactorThread)
                await Task.Yield();
            _pool.InsertMapping(DeviceId, block, newBlock);
        }
        catch
        {
            _pool.ReleaseDataBlock(newBlock);
            throw;
        }
    }

    /// <summary>Fills a newly allocated data block: the written bytes from <paramref name="data"/>
    /// and the rest from the old shared block, the origin, or zeros. Whole-block writes copy
    /// nothing. Works a chunk (at most 1 MiB) at a time, so 1 GiB blocks need no 1 GiB buffer.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask BuildBlockAsync(ulong virtualBlock, ulong newBlock, ulong sharedBlock, int inBlock, ReadOnlyMemory<byte> data)
    {
        long blockBase = (long)newBlock * _blockSize;
        int dataEnd = inBlock + data.Length;
        for (int chunkStart = 0; chunkStart < _blockSize; chunkStart += _pool.ChunkSize)
        {
            // The last chunk is short when the block size is not a multiple of the chunk (a
            // 1.5 MiB block): writing a whole chunk would run into the next data block.
            int chunk = Math.Min(_pool.ChunkSize, _blockSize - chunkStart);
            int chunkEnd = chunkStart + chunk;
            int overlapStart = Math.Max(chunkStart, inBlock), overlapEnd = Math.Min(chunkEnd, dataEnd);
            if (overlapStart <= chunkStart && overlapEnd >= chunkEnd)
            {
                await _pool.WriteAnyAsync(blockBase + chunkStart, data.Slice(chunkStart - inBlock, chunk));
                continue;
            }
            bool fromZeros = sharedBlock == ulong.MaxValue && (_origin is null || (long)virtualBlock * _blockSize + chunkStart >= _originSize);
            if (fromZeros && overlapStart >= overlapEnd)
            {
                await _pool.Data.WriteAsync(blockBase + chunkStart, _pool.ZeroBuffer.Memory[..chunk]);
                continue;
            }
            var bounce = await _pool.BounceBuffers.RentAsync();
            try
            {
                var buffer = bounce.Memory[..chunk];
                if (fromZeros)
                    buffer.Span.Clear();
                else if (sharedBlock != ulong.MaxValue)
                    await _pool.Data.ReadAsync((long)sharedBlock * _blockSize + chunkStart, buffer);
                else
                    await ReadOriginAsync((long)virtualBlock * _blockSize + chunkStart, buffer, forCopy: true);
                if (overlapStart < overlapEnd)
                    data.Span.Slice(overlapStart - inBlock, overlapEnd - overlapStart).CopyTo(buffer.Span[(overlapStart - chunkStart)..]);
                await _pool.Data.WriteAsync(blockBase + chunkStart, buffer);
            }
            finally
            {
                _pool.BounceBuffers.Return(bounce);
            }
        }
    }

    // ---- Flush, discard, write-zeroes ----

    /// <summary>Makes this volume's completed writes durable. Fails with EIO for good once any of
    /// them may have been lost (a failed flush or commit), even when later flushes succeed.</summary>
    public ValueTask FlushAsync()
    {
        if (_retired is not null || _unavailable is not null)
            return ValueTask.FromException(Unavailable());
        if (_lostWrites is not null)
            return ValueTask.FromException(LostWrites());
        return FlushCoreAsync();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask FlushCoreAsync()
    {
        await _pool.FlushAsync();
        // A failure elsewhere (a periodic commit) while this flush ran may have lost our writes.
        if (_lostWrites is not null)
            throw LostWrites();
    }

    private BlockDeviceException LostWrites() =>
        new(BlockError.IoError, $"volume '{Name}': acknowledged writes may have been lost ({_lostWrites}); the pool needs checking", errno: 5);

    public ValueTask DiscardAsync(long offset, long length, WriteFlags flags = WriteFlags.None)
    {
        if (!CheckRequest(offset, length, write: true, out var error))
            return ValueTask.FromException(error);
        // Only whole blocks are unmapped; partial head and tail are ignored (dm-thin §4.7).
        ulong first = (ulong)((offset + _blockSize - 1) / _blockSize);
        ulong end = (ulong)((offset + length) / _blockSize);
        if (first >= end || _pool.Mode == PoolMode.ReadOnly)
            return ValueTask.CompletedTask;
        return UnmapBlocksAsync(first, end, flags);
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask UnmapBlocksAsync(ulong first, ulong end, WriteFlags flags)
    {
        await Gate.EnterAsync();
        try
        {
            for (ulong start = first; start < end;)
            {
                int blocks = (int)Math.Min(end - start, (ulong)BlockLockTable.MaxBlocksPerRequest);
                await LockAsync(start, blocks, exclusive: true);
                try
                {
                    _pool.UnmapRange(DeviceId, start, start + (ulong)blocks);
                }
                finally
                {
                    Unlock(start, blocks, exclusive: true);
                }
                start += (ulong)blocks;
            }
            MarkChanged();
        }
        finally
        {
            Gate.Exit();
        }
        if ((flags & WriteFlags.ForceUnitAccess) != 0)
            await FlushAsync();
    }

    /// <summary>The range reads zeros afterwards. Whole blocks are unmapped where unmapped reads
    /// zeros and <see cref="ZeroFlags.MayDeallocate"/> allows it; otherwise they are zeroed on the
    /// data device (never by a discard, which promises nothing), a newly provisioned block
    /// included. <see cref="ZeroFlags.FastOnly"/> refuses with NotSupported, before changing
    /// anything, when zeroing would copy data (a partial block over the origin or a shared block)
    /// or wait for space.</summary>
    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags zero, WriteFlags flags = WriteFlags.None)
    {
        if (!CheckRequest(offset, length, write: true, out var error))
            return ValueTask.FromException(error);
        if (length == 0)
            return ValueTask.CompletedTask;
        if ((zero & ZeroFlags.FastOnly) != 0 && NeedsCopyToZero(offset, length) is { } why)
            return ValueTask.FromException(new BlockDeviceException(BlockError.NotSupported, $"volume '{Name}': zeroing cannot be done fast: {why}"));
        return WriteZeroesCoreAsync(offset, length, zero, flags);
    }

    /// <summary>Why zeroing the partial blocks at the edges of the range would copy data, or null.</summary>
    private string? NeedsCopyToZero(long offset, long length)
    {
        long end = offset + length;
        foreach (long edge in (ReadOnlySpan<long>)[offset, end - 1])
        {
            ulong block = (ulong)(edge / _blockSize);
            long blockStart = (long)block * _blockSize;
            bool partial = offset > blockStart || end < blockStart + _blockSize;
            if (!partial)
                continue;
            bool mapped = _pool.TryLookup(DeviceId, block, out var mapping);
            if (mapped && mapping.Shared)
                return $"block {block} is shared with a snapshot and only part of it is zeroed";
            if (!mapped && _origin is not null && blockStart < _originSize)
                return $"block {block} is on the origin and only part of it is zeroed";
        }
        return null;
    }

    public ValueTask PrefetchAsync(long offset, long length) =>
        CheckRequest(offset, length, write: false, out var error) ? ValueTask.CompletedTask : ValueTask.FromException(error);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteZeroesCoreAsync(long offset, long length, ZeroFlags zero, WriteFlags flags)
    {
        await Gate.EnterAsync();
        try
        {
            long done = 0;
            while (done < length)
            {
                long position = offset + done;
                ulong block = (ulong)(position / _blockSize);
                int inBlock = (int)(position % _blockSize);
                long piece = Math.Min(_blockSize - inBlock, length - done);
                await LockAsync(block, 1, exclusive: true);
                try
                {
                    if (piece == _blockSize)
                        await ZeroWholeBlockAsync(block, zero);
                    else if (!PartAlreadyReadsZeros(block, zero))
                        await ZeroPartAsync(block, inBlock, (int)piece, zero);
                }
                finally
                {
                    Unlock(block, 1, exclusive: true);
                }
                done += piece;
            }
            MarkChanged();
        }
        finally
        {
            Gate.Exit();
        }
        if ((flags & WriteFlags.ForceUnitAccess) != 0)
            await FlushAsync();
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ZeroWholeBlockAsync(ulong block, ZeroFlags zero)
    {
        bool originBelow = _origin is not null && (long)block * _blockSize < _originSize;
        if ((zero & ZeroFlags.MayDeallocate) != 0 && !originBelow)
        {
            // Unmapped reads as zeros here, so unmapping is enough.
            _pool.UnmapRange(DeviceId, block, block + 1);
            return;
        }
        bool mapped = _pool.TryLookup(DeviceId, block, out var mapping);
        if (mapped && !mapping.Shared)
        {
            await _pool.Data.ZeroAsync((long)mapping.DataBlock * _blockSize, _blockSize);
            return;
        }
        // NO_HOLE (keep storage allocated), over the origin, or over a shared block: the zeros
        // need a block of their own, zeroed before it is mapped.
        ulong newBlock = await _pool.AllocateDataBlockAsync(Gate, mayWait: (zero & ZeroFlags.FastOnly) == 0);
        try
        {
            await _pool.Data.ZeroAsync((long)newBlock * _blockSize, _blockSize);
            _pool.InsertMapping(DeviceId, block, newBlock);
        }
        catch
        {
            _pool.ReleaseDataBlock(newBlock);
            throw;
        }
    }

    /// <summary>Part of an unmapped block that reads zeros (no origin below it) needs nothing
    /// when holes are allowed. Without MAY_TRIM (NBD's NO_HOLE) the range must end up allocated,
    /// FAST_ZERO or not. Under the block's lock.</summary>
    private bool PartAlreadyReadsZeros(ulong block, ZeroFlags zero) =>
        (zero & ZeroFlags.MayDeallocate) != 0
        && (_origin is null || (long)block * _blockSize >= _originSize)
        && !_pool.TryLookup(DeviceId, block, out _);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ZeroPartAsync(ulong block, int inBlock, int length, ZeroFlags zero)
    {
        int chunk = _pool.ChunkSize;
        for (int done = 0; done < length;)
        {
            int piece = Math.Min(chunk, length - done);
            await WriteBlockAsync(block, inBlock + done, _pool.ZeroBuffer.Memory[..piece], mayWaitForSpace: (zero & ZeroFlags.FastOnly) == 0);
            done += piece;
        }
    }

    // ---- Block status ----

    public int GetExtents(long offset, long length, Span<VolumeExtent> extents)
    {
        if (_retired is not null || _unavailable is not null)
            throw Unavailable();
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            throw new BlockDeviceException(BlockError.OutOfRange, $"volume '{Name}': extent query [{offset}, {offset + length}) is outside its {Size} bytes");
        if (extents.IsEmpty || length == 0)
            return 0;
        int count = 0;
        long position = offset, end = offset + length;
        Span<MappedRange> runs = stackalloc MappedRange[32];
        while (position < end && count < extents.Length)
        {
            ulong block = (ulong)(position / _blockSize);
            ulong endBlock = (ulong)((end + _blockSize - 1) / _blockSize);
            int n = _pool.LookupRange(DeviceId, block, endBlock, runs);
            if (n == 0)
            {
                AddUnmapped(ref count, extents, position, end);
                break;
            }
            foreach (var run in runs[..n])
            {
                long runStart = Math.Max(position, (long)run.VirtualBlock * _blockSize);
                long runEnd = Math.Min(end, (long)(run.VirtualBlock + run.Length) * _blockSize);
                if (runStart > position)
                    AddUnmapped(ref count, extents, position, runStart);
                Add(ref count, extents, runStart, runEnd, ExtentFlags.Data);
                position = runEnd;
                if (count >= extents.Length)
                    break;
            }
        }
        return count;
    }

    /// <summary>Unmapped: origin data where the origin covers it, a hole that reads zeros past it.</summary>
    private void AddUnmapped(ref int count, Span<VolumeExtent> extents, long start, long end)
    {
        // The sector holding the origin's last byte is data as a whole: extents stay on
        // 512-byte boundaries, as NBD block status expects.
        long originEnd = _origin is null ? 0 : Math.Min(end, (_originSize + 511) & ~511L);
        if (originEnd > start)
        {
            Add(ref count, extents, start, originEnd, ExtentFlags.Data);
            start = originEnd;
        }
        if (end > start)
            Add(ref count, extents, start, end, ExtentFlags.Hole | ExtentFlags.Zero);
    }

    private static void Add(ref int count, Span<VolumeExtent> extents, long start, long end, ExtentFlags flags)
    {
        if (end <= start || count > extents.Length)
            return;
        if (count > 0 && extents[count - 1].Flags == flags && extents[count - 1].Offset + extents[count - 1].Length == start)
        {
            extents[count - 1] = extents[count - 1] with { Length = end - extents[count - 1].Offset };
            return;
        }
        if (count < extents.Length)
            extents[count++] = new VolumeExtent(start, end - start, flags);
    }

    // ---- Helpers ----

    private bool CheckRequest(long offset, long length, bool write, out Exception error)
    {
        if (_retired is not null || _unavailable is not null)
        {
            error = Unavailable();
            return false;
        }
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
        {
            error = new BlockDeviceException(BlockError.OutOfRange, $"volume '{Name}': request [{offset}, {offset + length}) is outside its {Size} bytes");
            return false;
        }
        if (_pool.Mode == PoolMode.Fail)
        {
            error = new BlockDeviceException(BlockError.IoError, $"volume '{Name}': pool is in fail mode");
            return false;
        }
        error = null!;
        return true;
    }

    private BlockDeviceException Unavailable() =>
        new(BlockError.Unavailable, _retired ?? $"volume '{Name}' is unavailable: {_unavailable}");

    /// <summary>The part of a request handled under one set of block locks.</summary>
    private int SegmentLength(long position, int remaining, out int blocks)
    {
        long limit = ((position / _blockSize) + BlockLockTable.MaxBlocksPerRequest) * _blockSize - position;
        int length = (int)Math.Min(remaining, limit);
        blocks = (int)((position + length - 1) / _blockSize - position / _blockSize + 1);
        return length;
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask LockAsync(ulong first, int blocks, bool exclusive)
    {
        var (start, head, wrap) = BlockLockTable.StripeRuns(DeviceId, first, blocks);
        int held = 0;
        try
        {
            for (; held < wrap + head; held++)
            {
                int stripe = held < wrap ? held : start + held - wrap;
                if (!TryTakeBlockLockNow(stripe, exclusive, out var lockWait))
                {
                    await lockWait;
                    await ResumeAfterLockWaitAsync(stripe, exclusive);
                }
            }
        }
        catch
        {
            // The volume was deleted while this request waited: give back what it holds.
            for (int i = 0; i < held; i++)
                _pool.BlockLocks.Release(i < wrap ? i : start + i - wrap, exclusive);
            throw;
        }
    }

    // Taking a block lock: the wait, when there is one, is awaited in the caller's own state
    // machine (a helper async method would allocate a box whenever a lock is contended). A request
    // that has to wait is parked meanwhile (the holder may be queued for space for minutes, and
    // this request has looked nothing up yet), so snapshots and deletes do not wait for it.

    /// <summary>Takes the stripe now, or parks the request and returns the wait for it in
    /// <paramref name="wait"/>; after awaiting that, call <see cref="ResumeAfterLockWaitAsync"/>.</summary>
    private bool TryTakeBlockLockNow(int stripe, bool exclusive, out ValueTask wait)
    {
        wait = _pool.BlockLocks.AcquireAsync(stripe, exclusive);
        if (wait.IsCompletedSuccessfully)
        {
            wait.GetAwaiter().GetResult();
            return true;
        }
        Gate.Park();
        return false;
    }

    /// <summary>After a parked wait for a block lock: goes on only through an open gate. Fails,
    /// holding nothing, when the volume was deleted meanwhile.</summary>
    private ValueTask ResumeAfterLockWaitAsync(int stripe, bool exclusive)
    {
        var resume = Gate.ResumeAsync();
        if (resume.IsCompletedSuccessfully)
        {
            resume.GetAwaiter().GetResult();
            return ValueTask.CompletedTask;
        }
        return ResumeSlowAsync(resume, stripe, exclusive);
    }

    private async ValueTask ResumeSlowAsync(ValueTask resume, int stripe, bool exclusive)
    {
        try
        {
            await resume;
        }
        catch
        {
            _pool.BlockLocks.Release(stripe, exclusive);
            throw;
        }
    }

    private void Unlock(ulong first, int blocks, bool exclusive)
    {
        var (start, head, wrap) = BlockLockTable.StripeRuns(DeviceId, first, blocks);
        for (int i = 0; i < wrap; i++)
            _pool.BlockLocks.Release(i, exclusive);
        for (int i = 0; i < head; i++)
            _pool.BlockLocks.Release(start + i, exclusive);
    }
}
