using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>
/// An in-memory disk with a volatile write cache whose power can be cut at a chosen operation, for
/// crash sweeps. Reads see every completed write. Only what a real disk promises survives a cut:
/// writes completed before the last completed FLUSH, and FUA writes. Writes still in the cache
/// are dropped (or, with <see cref="PendingWritesSurvive"/>, a random subset survives: disks
/// destage their caches in any order). The operation in flight at the cut fails, and if it is a
/// write and <see cref="TearInFlightWrite"/> is set, a random subset of its 512-byte sectors
/// reaches the media: sector-atomic, not write-atomic.
/// </summary>
/// <example>
/// for (long n = 1; ; n++) {
///     var dev = new PowerCutDevice(size) { CutAfterOperations = n };
///     try { Workload(dev); } catch (BlockDeviceException e) when (e.Error == BlockError.Unavailable) { }
///     if (!dev.IsCut) break;              // the workload finished below the threshold
///     Verify(dev.DurableImage());
/// }
/// </example>
public sealed class PowerCutDevice : IBlockDevice
{
    public const int SectorSize = 512;

    private readonly object _lock;
    private readonly PowerRail _rail;
    private readonly List<(long Offset, byte[] Data, bool Fua)> _pending = new();
    private byte[] _current;
    private byte[] _durable;

    public PowerCutDevice(long length, int logicalBlockSize = 512, string name = "power-cut", PowerRail? rail = null)
        : this(new byte[length], logicalBlockSize, name, rail)
    {
    }

    /// <summary>Starts from <paramref name="image"/> (copied) as durable contents. Devices on one
    /// <paramref name="rail"/> count operations together and lose power together, like a pool's
    /// metadata and data disks in one machine.</summary>
    public PowerCutDevice(byte[] image, int logicalBlockSize = 512, string name = "power-cut", PowerRail? rail = null)
    {
        if (image.Length % logicalBlockSize != 0)
            throw new ArgumentException($"length {image.Length} is not a multiple of {logicalBlockSize}");
        _current = (byte[])image.Clone();
        _durable = (byte[])image.Clone();
        LogicalBlockSize = logicalBlockSize;
        Name = name;
        _rail = rail ?? new PowerRail();
        _lock = _rail.Lock;
        _rail.Attach(this);
    }

    public PowerRail Rail => _rail;

    public string Name { get; }

    public long Length
    {
        get { lock (_lock) return _current.LongLength; }
    }

    public int LogicalBlockSize { get; }

    public int BufferAlignment => LogicalBlockSize;

    public bool IsReadOnly => false;

    /// <summary>The cut happens at this operation of the rail (1-based; reads, writes, flushes and
    /// discards all count): it fails and so does everything after it. 0 = never.</summary>
    public long CutAfterOperations
    {
        get => _rail.CutAfterOperations;
        set => _rail.CutAfterOperations = value;
    }

    /// <summary>Lets a random subset of the in-flight write's sectors reach the media at the cut.</summary>
    public bool TearInFlightWrite
    {
        get => _rail.TearInFlightWrite;
        set => _rail.TearInFlightWrite = value;
    }

    /// <summary>Lets a random subset of the cached (unflushed) writes survive the cut, whole.</summary>
    public bool PendingWritesSurvive
    {
        get => _rail.PendingWritesSurvive;
        set => _rail.PendingWritesSurvive = value;
    }

    public int Seed
    {
        get => _rail.Seed;
        set => _rail.Seed = value;
    }

    public long OperationCount => _rail.OperationCount;

    public bool IsCut => _rail.IsCut;

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        lock (_lock)
        {
            Count("read", null, 0);
            this.ValidateRequest(offset, destination.Length, destination.Span, isWrite: false);
            _current.AsSpan(checked((int)offset), destination.Length).CopyTo(destination.Span);
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        lock (_lock)
        {
            this.ValidateRequest(offset, source.Length, source.Span, isWrite: true);
            Count((flags & WriteFlags.ForceUnitAccess) != 0 ? "FUA write" : "write", source.Span, offset);
            source.Span.CopyTo(_current.AsSpan(checked((int)offset)));
            bool fua = (flags & WriteFlags.ForceUnitAccess) != 0;
            if (fua)
                source.Span.CopyTo(_durable.AsSpan(checked((int)offset)));
            // FUA writes stay in the log too, so replaying it keeps the order of overlapping writes.
            _pending.Add((offset, source.ToArray(), fua));
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync()
    {
        lock (_lock)
        {
            Count("flush", null, 0);
            foreach (var (offset, data, _) in _pending)
                data.CopyTo(_durable.AsSpan(checked((int)offset)));
            _pending.Clear();
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>What a deallocation leaves: garbage by default (the contract leaves it undefined).</summary>
    public DeallocateEffect Deallocation { get; set; } = DeallocateEffect.Garbage;

    public ValueTask DeallocateAsync(long offset, long length)
    {
        lock (_lock)
        {
            this.ValidateRequest(offset, length, default, isWrite: true);
            var after = _current.AsSpan(checked((int)offset), checked((int)length)).ToArray();
            Deallocation.Apply(after);
            Count("deallocate", after, offset);
            after.CopyTo(_current.AsSpan(checked((int)offset)));
            _pending.Add((offset, after, false));
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroAsync(long offset, long length)
    {
        lock (_lock)
        {
            this.ValidateRequest(offset, length, default, isWrite: true);
            var zeros = new byte[length];
            Count("zero", zeros, offset);
            zeros.CopyTo(_current.AsSpan(checked((int)offset)));
            _pending.Add((offset, zeros, false));
        }
        return ValueTask.CompletedTask;
    }

    public void Grow(long newLength)
    {
        lock (_lock)
        {
            if (newLength < _current.LongLength || newLength % LogicalBlockSize != 0)
                throw new BlockDeviceException(BlockError.InvalidArgument, $"{Name}: cannot resize to {newLength}");
            Array.Resize(ref _current, checked((int)newLength));
            Array.Resize(ref _durable, checked((int)newLength));
        }
    }

    /// <summary>What the media holds: after a cut, what survived it. A fresh device, so the
    /// caller can reopen the pool on it as a machine would after power returns.</summary>
    public MemoryBlockDevice DurableImage(int? logicalBlockSize = null)
    {
        lock (_lock)
            return new MemoryBlockDevice((byte[])_durable.Clone(), logicalBlockSize ?? LogicalBlockSize, name: Name + "-after-cut");
    }

    /// <summary>What reads currently return (every completed write).</summary>
    public byte[] CurrentImage()
    {
        lock (_lock)
            return (byte[])_current.Clone();
    }

    // Counts one operation on the rail; at the cut every device on it keeps only what survives.
    private void Count(string kind, ReadOnlySpan<byte> inFlightWrite, long writeOffset)
    {
        if (_rail.IsCut)
            throw Unavailable();
        if (!_rail.CountOperation($"{kind} on {Name}"))
            return;
        _rail.OnCut?.Invoke();
        foreach (var device in _rail.Devices)
            device.LoseVolatileState(_rail.Random, _rail.PendingWritesSurvive);
        if (_rail.TearInFlightWrite && !inFlightWrite.IsEmpty)
        {
            for (int s = 0; s < inFlightWrite.Length; s += SectorSize)
                if (_rail.Random.Next(2) == 0)
                    inFlightWrite.Slice(s, Math.Min(SectorSize, inFlightWrite.Length - s)).CopyTo(_durable.AsSpan(checked((int)(writeOffset + s))));
        }
        throw Unavailable();
    }

    private void LoseVolatileState(Random random, bool someSurvive)
    {
        if (someSurvive)
        {
            // Replayed in order: a FUA write is on the media already, and an older cached write
            // that reaches the media must not land on top of it.
            foreach (var (offset, data, fua) in _pending)
                if (fua || random.Next(2) == 0)
                    data.CopyTo(_durable.AsSpan(checked((int)offset)));
        }
        _pending.Clear();
    }

    private BlockDeviceException Unavailable() =>
        new(BlockError.Unavailable, $"{Name}: power cut at operation {_rail.CutAfterOperations}");

    public void Dispose()
    {
    }
}

/// <summary>The power supply shared by <see cref="PowerCutDevice"/>s: one operation counter, one
/// cut. All members are used under <see cref="Lock"/>, which the devices share.</summary>
public sealed class PowerRail
{
    private readonly List<PowerCutDevice> _devices = new();
    private Random? _random;
    private long _operations;

    internal object Lock { get; } = new();

    public long CutAfterOperations { get; set; }

    public bool TearInFlightWrite { get; set; }

    public bool PendingWritesSurvive { get; set; }

    public int Seed { get; set; } = 1;

    private bool _isCut;
    private string? _cutOperation;

    /// <summary>Read under the rail's lock: the cut may come from any thread (a commit, a discard
    /// passdown) while the test looks.</summary>
    public bool IsCut
    {
        get { lock (Lock) return _isCut; }
    }

    /// <summary>The operation the power failed in, e.g. "write on data".</summary>
    public string? CutOperation
    {
        get { lock (Lock) return _cutOperation; }
    }

    /// <summary>Called at the cut, before anything is lost, on the thread of the failing operation
    /// and under the rail's lock: to record what else was in flight at that instant.</summary>
    public Action? OnCut { get; set; }

    public long OperationCount
    {
        get { lock (Lock) return _operations; }
    }

    internal IReadOnlyList<PowerCutDevice> Devices => _devices;

    internal Random Random => _random ??= new Random(Seed);

    internal void Attach(PowerCutDevice device)
    {
        lock (Lock)
            _devices.Add(device);
    }

    /// <summary>Counts one operation; true when it is the one the power fails at. Called under
    /// <see cref="Lock"/>.</summary>
    internal bool CountOperation(string operation)
    {
        _operations++;
        if (CutAfterOperations == 0 || _operations < CutAfterOperations)
            return false;
        _cutOperation = operation;
        _isCut = true;
        return true;
    }
}
