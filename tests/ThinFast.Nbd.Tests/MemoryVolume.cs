using ThinFast.IO;

namespace ThinFast.Nbd.Tests;

/// <summary>
/// An in-memory <see cref="IBlockVolume"/> that allocates storage per allocation unit, so block
/// status has something real to report: never-written and discarded units are holes that read as
/// zeros. It also keeps a "durable" copy that only <see cref="FlushAsync"/> (or a FUA write)
/// updates, so tests can tell whether a FLUSH really came after the writes it must cover.
/// </summary>
public sealed class MemoryVolume : IBlockVolume
{
    private readonly object _lock = new();
    private readonly byte[]?[] _units;
    private readonly byte[]?[] _durable;
    // Units changed since the last flush; flushing copies only these (and allocates nothing once
    // the durable copy has storage for them).
    private readonly bool[] _dirty;
    private int _inFlight;
    private int _countedReads;

    public MemoryVolume(long size, int allocationUnit = 64 * 1024, string name = "memory", bool readOnly = false)
    {
        if (size <= 0 || allocationUnit <= 0 || size % allocationUnit != 0)
            throw new ArgumentException($"size {size} must be a positive multiple of the allocation unit {allocationUnit}");
        Size = size;
        AllocationUnit = allocationUnit;
        Name = name;
        IsReadOnly = readOnly;
        _units = new byte[]?[size / allocationUnit];
        _durable = new byte[]?[size / allocationUnit];
        _dirty = new bool[size / allocationUnit];
    }

    public string Name { get; }

    public long Size { get; }

    public bool IsReadOnly { get; }

    public int AllocationUnit { get; }

    /// <summary>Makes every data operation wait this long first, so tests can keep requests in flight.</summary>
    public TimeSpan OperationDelay { get; set; }

    /// <summary>Makes FLUSH take this long, so a reply sent before the flush finished would show.</summary>
    public TimeSpan FlushDelay { get; set; }

    /// <summary>Delayed data operations currently inside the volume.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    public int FlushCount { get; private set; }

    /// <summary>Reads started so far with an offset at or past <see cref="CountReadsFrom"/>, so a
    /// test can count one client's reads while other clients read below it.</summary>
    public int CountedReads => Volatile.Read(ref _countedReads);

    public long CountReadsFrom { get; set; } = long.MaxValue;

    /// <summary>Data operations touching this range fail with this error (fault injection).</summary>
    public (long Offset, long Length, BlockError Error)? FailingRange { get; set; }

    public int AllocatedUnits
    {
        get
        {
            lock (_lock)
                return _units.Count(u => u is not null);
        }
    }

    // The data methods are not async methods: in a Debug build every async method call allocates
    // its state machine, which would drown the server's own zero-allocation measurement.

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        if (offset >= CountReadsFrom)
            Interlocked.Increment(ref _countedReads);
        Check(offset, destination.Length, write: false);
        return Run(static (v, o, _, m, _) => v.ReadCore(o, m), offset, 0, destination, default);
    }

    private void ReadCore(long offset, Memory<byte> destination)
    {
        lock (_lock)
        {
            for (long done = 0; done < destination.Length;)
            {
                var (unit, at, count) = Locate(offset + done, destination.Length - done);
                var target = destination.Span.Slice((int)done, count);
                if (_units[unit] is { } data)
                    data.AsSpan(at, count).CopyTo(target);
                else
                    target.Clear();
                done += count;
            }
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        Check(offset, source.Length, write: true);
        return Run(static (v, o, f, _, s) => v.WriteCore(o, s, (WriteFlags)f), offset, (long)flags, default, source);
    }

    private void WriteCore(long offset, ReadOnlyMemory<byte> source, WriteFlags flags)
    {
        lock (_lock)
        {
            for (long done = 0; done < source.Length;)
            {
                var (unit, at, count) = Locate(offset + done, source.Length - done);
                source.Span.Slice((int)done, count).CopyTo(Allocate(unit).AsSpan(at, count));
                _dirty[unit] = true;
                if ((flags & WriteFlags.ForceUnitAccess) != 0)
                    Persist(unit);
                done += count;
            }
        }
    }

    public ValueTask FlushAsync()
    {
        if (FlushDelay > TimeSpan.Zero)
            return FlushLaterAsync();
        FlushCore();
        return ValueTask.CompletedTask;
    }

    private async ValueTask FlushLaterAsync()
    {
        await Task.Delay(FlushDelay).ConfigureAwait(false);
        FlushCore();
    }

    private void FlushCore()
    {
        lock (_lock)
        {
            for (int i = 0; i < _units.Length; i++)
            {
                if (_dirty[i])
                    Persist(i);
            }
            FlushCount++;
        }
    }

    public ValueTask DiscardAsync(long offset, long length, WriteFlags flags = WriteFlags.None)
    {
        Check(offset, length, write: true);
        return Run(static (v, o, l, _, _) => v.DiscardCore(o, l), offset, length, default, default);
    }

    private void DiscardCore(long offset, long length)
    {
        lock (_lock)
        {
            // Only whole units inside the range are released, like dm-thin.
            long first = (offset + AllocationUnit - 1) / AllocationUnit;
            long end = (offset + length) / AllocationUnit;
            for (long u = first; u < end; u++)
            {
                _units[u] = null;
                _dirty[u] = true;
            }
        }
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags zero, WriteFlags flags = WriteFlags.None)
    {
        Check(offset, length, write: true);
        // Modelled on a thin volume: keeping zeros allocated means writing them, which FAST_ZERO
        // must refuse.
        if ((zero & (ZeroFlags.FastOnly | ZeroFlags.MayDeallocate)) == ZeroFlags.FastOnly)
            return ValueTask.FromException(new BlockDeviceException(BlockError.NotSupported, $"{Name}: zeroing with NO_HOLE is not fast"));
        return (zero & ZeroFlags.MayDeallocate) != 0
            ? Run(static (v, o, l, _, _) => v.ZeroCore(o, l, mayDeallocate: true), offset, length, default, default)
            : Run(static (v, o, l, _, _) => v.ZeroCore(o, l, mayDeallocate: false), offset, length, default, default);
    }

    private void ZeroCore(long offset, long length, bool mayDeallocate)
    {
        lock (_lock)
        {
            for (long done = 0; done < length;)
            {
                var (unit, at, count) = Locate(offset + done, length - done);
                if (mayDeallocate && count == AllocationUnit)
                    _units[unit] = null;
                else if (_units[unit] is { } data)
                    data.AsSpan(at, count).Clear();
                else if (!mayDeallocate)
                    Allocate(unit);
                _dirty[unit] = true;
                done += count;
            }
        }
    }

    public ValueTask PrefetchAsync(long offset, long length)
    {
        Check(offset, length, write: false);
        return ValueTask.CompletedTask;
    }

    public int GetExtents(long offset, long length, Span<VolumeExtent> extents)
    {
        Check(offset, length, write: false);
        int filled = 0;
        long end = offset + length;
        lock (_lock)
        {
            while (offset < end && filled < extents.Length)
            {
                long unit = offset / AllocationUnit;
                var flags = _units[unit] is null ? ExtentFlags.Hole | ExtentFlags.Zero : ExtentFlags.Data;
                long runEnd = (unit + 1) * AllocationUnit;
                while (runEnd < end && (_units[runEnd / AllocationUnit] is null) == (flags != ExtentFlags.Data))
                    runEnd += AllocationUnit;
                extents[filled++] = new VolumeExtent(offset, runEnd - offset, flags);
                offset = runEnd;
            }
        }
        return filled;
    }

    /// <summary>The whole volume as it reads now.</summary>
    public byte[] ToArray() => Image(_units);

    /// <summary>The whole volume as it would read after a power cut: only flushed or FUA data.</summary>
    public byte[] DurableImage() => Image(_durable);

    /// <summary>True when [offset, offset+length) is allocated in every unit it touches.</summary>
    public bool IsAllocated(long offset, long length)
    {
        lock (_lock)
        {
            for (long u = offset / AllocationUnit; u * AllocationUnit < offset + length; u++)
            {
                if (_units[u] is null)
                    return false;
            }
            return true;
        }
    }

    private byte[] Image(byte[]?[] units)
    {
        lock (_lock)
        {
            var image = new byte[Size];
            for (int i = 0; i < units.Length; i++)
                units[i]?.CopyTo(image, (long)i * AllocationUnit);
            return image;
        }
    }

    private void Persist(long unit)
    {
        if (_units[unit] is { } data)
            data.CopyTo(_durable[unit] ??= new byte[AllocationUnit], 0);
        else
            _durable[unit] = null;
        _dirty[unit] = false;
    }

    private byte[] Allocate(long unit) => _units[unit] ??= new byte[AllocationUnit];

    private (long Unit, int At, int Count) Locate(long position, long remaining)
    {
        int at = (int)(position % AllocationUnit);
        return (position / AllocationUnit, at, (int)Math.Min(AllocationUnit - at, remaining));
    }

    private void Check(long offset, long length, bool write)
    {
        if (write && IsReadOnly)
            throw new BlockDeviceException(BlockError.ReadOnly, $"{Name}: volume is read-only");
        if (offset < 0 || length < 0 || offset > Size || length > Size - offset)
            throw new BlockDeviceException(BlockError.OutOfRange, $"{Name}: [{offset}, +{length}) is outside the volume ({Size})");
        if (FailingRange is var (failOffset, failLength, error) && offset < failOffset + failLength && failOffset < offset + length)
            throw new BlockDeviceException(error, $"{Name}: injected {error} at [{offset}, +{length})");
    }

    private delegate void Operation(MemoryVolume volume, long offset, long argument, Memory<byte> destination, ReadOnlyMemory<byte> source);

    // Static lambdas are cached delegates, so the immediate path allocates nothing.
    private ValueTask Run(Operation operation, long offset, long argument, Memory<byte> destination, ReadOnlyMemory<byte> source)
    {
        if (OperationDelay > TimeSpan.Zero)
            return RunLaterAsync(operation, offset, argument, destination, source);
        operation(this, offset, argument, destination, source);
        return ValueTask.CompletedTask;
    }

    private async ValueTask RunLaterAsync(Operation operation, long offset, long argument, Memory<byte> destination, ReadOnlyMemory<byte> source)
    {
        Interlocked.Increment(ref _inFlight);
        try
        {
            await Task.Delay(OperationDelay).ConfigureAwait(false);
            operation(this, offset, argument, destination, source);
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
    }
}
