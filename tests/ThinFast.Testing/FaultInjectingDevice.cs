using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>Which operations a fault applies to.</summary>
[Flags]
public enum FaultTargets
{
    Read = 1,
    Write = 2,
    Flush = 4,
    Deallocate = 8,
    Zero = 16,
    All = Read | Write | Flush | Deallocate | Zero,
}

/// <summary>
/// Wraps a device and injects faults: I/O errors at a rate or on byte ranges, short transfers (part
/// of a write reaches the device, or part of a read buffer is filled, and then the operation fails
/// as a real short transfer followed by an error would), and delays that keep requests in flight
/// so concurrency paths run. Every operation completes exactly once, success or failure.
/// </summary>
public sealed class FaultInjectingDevice : IBlockDevice
{
    private readonly IBlockDevice _inner;
    private readonly object _lock = new();
    private readonly Random _random;
    private readonly List<(long Start, long End, FaultTargets Targets)> _badRanges = new();

    public FaultInjectingDevice(IBlockDevice inner, int seed = 1)
    {
        _inner = inner;
        _random = new Random(seed);
    }

    /// <summary>Probability in [0, 1] that an operation of <see cref="ErrorTargets"/> fails.</summary>
    public double ErrorRate { get; set; }

    public FaultTargets ErrorTargets { get; set; } = FaultTargets.All;

    /// <summary>Probability that a failing read or write is a short transfer (partial effect, then
    /// an error) rather than a clean failure.</summary>
    public double ShortTransferRate { get; set; }

    /// <summary>Upper bound of a random delay before each operation; zero for none.</summary>
    public TimeSpan MaxDelay { get; set; }

    /// <summary>The error reported by injected failures.</summary>
    public BlockError InjectedError { get; set; } = BlockError.IoError;

    /// <summary>When false, no fault is injected (so a test can heal the device).</summary>
    public bool Enabled { get; set; } = true;

    public long InjectedFaults { get; private set; }

    /// <summary>Every operation of <paramref name="targets"/> touching [start, end) fails.</summary>
    public void AddBadRange(long start, long end, FaultTargets targets = FaultTargets.All)
    {
        lock (_lock)
            _badRanges.Add((start, end, targets));
    }

    public void ClearBadRanges()
    {
        lock (_lock)
            _badRanges.Clear();
    }

    public string Name => _inner.Name;

    public long Length => _inner.Length;

    public int LogicalBlockSize => _inner.LogicalBlockSize;

    public int BufferAlignment => _inner.BufferAlignment;

    public bool IsReadOnly => _inner.IsReadOnly;

    public async ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        await DelayAsync();
        switch (Decide(FaultTargets.Read, offset, destination.Length))
        {
            case Outcome.Fail:
                throw Fault("read", offset);
            case Outcome.Short:
                int half = destination.Length / 2 / LogicalBlockSize * LogicalBlockSize;
                if (half > 0)
                    await _inner.ReadAsync(offset, destination[..half]);
                throw Fault("short read", offset);
        }
        await _inner.ReadAsync(offset, destination);
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        await DelayAsync();
        switch (Decide(FaultTargets.Write, offset, source.Length))
        {
            case Outcome.Fail:
                throw Fault("write", offset);
            case Outcome.Short:
                int half = source.Length / 2 / LogicalBlockSize * LogicalBlockSize;
                if (half > 0)
                    await _inner.WriteAsync(offset, source[..half], flags);
                throw Fault("short write", offset);
        }
        await _inner.WriteAsync(offset, source, flags);
    }

    public async ValueTask FlushAsync()
    {
        await DelayAsync();
        if (Decide(FaultTargets.Flush, 0, 0) != Outcome.Pass)
            throw Fault("flush", 0);
        await _inner.FlushAsync();
    }

    public async ValueTask DeallocateAsync(long offset, long length)
    {
        await DelayAsync();
        if (Decide(FaultTargets.Deallocate, offset, length) != Outcome.Pass)
            throw Fault("deallocate", offset);
        await _inner.DeallocateAsync(offset, length);
    }

    public async ValueTask ZeroAsync(long offset, long length)
    {
        await DelayAsync();
        if (Decide(FaultTargets.Zero, offset, length) != Outcome.Pass)
            throw Fault("zero", offset);
        await _inner.ZeroAsync(offset, length);
    }

    public void Grow(long newLength) => _inner.Grow(newLength);

    public void Dispose() => _inner.Dispose();

    private enum Outcome { Pass, Fail, Short }

    private Outcome Decide(FaultTargets target, long offset, long length)
    {
        lock (_lock)
        {
            if (!Enabled)
                return Outcome.Pass;
            bool fail = false;
            foreach (var (start, end, targets) in _badRanges)
                if ((targets & target) != 0 && offset < end && (offset + Math.Max(length, 1)) > start)
                    fail = true;
            if (!fail && (ErrorTargets & target) != 0 && ErrorRate > 0 && _random.NextDouble() < ErrorRate)
                fail = true;
            if (!fail)
                return Outcome.Pass;
            InjectedFaults++;
            bool isTransfer = target is FaultTargets.Read or FaultTargets.Write;
            return isTransfer && ShortTransferRate > 0 && _random.NextDouble() < ShortTransferRate ? Outcome.Short : Outcome.Fail;
        }
    }

    private ValueTask DelayAsync()
    {
        if (MaxDelay <= TimeSpan.Zero)
            return ValueTask.CompletedTask;
        TimeSpan delay;
        lock (_lock)
            delay = TimeSpan.FromTicks((long)(_random.NextDouble() * MaxDelay.Ticks));
        return new ValueTask(Task.Delay(delay));
    }

    private BlockDeviceException Fault(string what, long offset) =>
        new(InjectedError, $"{Name}: injected {what} fault at offset {offset}", errno: 5);
}
