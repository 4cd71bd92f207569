using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>
/// Wraps a device so that its operations complete late, out of order and on other threads, as a
/// real disk's do: each request is queued, and worker threads pick queued requests at random,
/// after a random delay, and only then apply them to the inner device and complete them, running
/// the caller's continuation on the worker thread. Requests in flight therefore really overlap: a
/// write is not visible until it completes, and a flush covers only what completed before it was
/// issued (and whatever else happened to run first). Counters show that the overlap happened, so
/// a test can assert it instead of assuming it.
/// </summary>
public sealed class OutOfOrderDevice : IBlockDevice
{
    private enum Kind { Read, Write, Flush, Deallocate, Zero }

    private sealed class Pending
    {
        public Kind Kind;
        public long Offset;
        public long Length;
        public Memory<byte> Buffer;
        public WriteFlags Flags;
        public long Sequence;
        public readonly TaskCompletionSource Done = new(TaskCreationOptions.None);
    }

    private readonly IBlockDevice _inner;
    private readonly object _lock = new();
    private readonly List<Pending> _pending = new();
    private readonly Thread[] _workers;
    private readonly Random _random;
    private readonly int _maxDelayMicroseconds;
    private long _nextSequence;
    private bool _disposed;

    /// <param name="inner">Where requests are applied, synchronously, at completion time.</param>
    /// <param name="workers">Threads completing requests (at least 1).</param>
    /// <param name="maxDelayMicroseconds">Each completion waits a random time up to this first.</param>
    public OutOfOrderDevice(IBlockDevice inner, int seed = 1, int workers = 2, int maxDelayMicroseconds = 300)
    {
        _inner = inner;
        _random = new Random(seed);
        _maxDelayMicroseconds = maxDelayMicroseconds;
        _workers = new Thread[Math.Max(1, workers)];
        for (int i = 0; i < _workers.Length; i++)
        {
            _workers[i] = new Thread(Work) { IsBackground = true, Name = $"out-of-order-{inner.Name}-{i}" };
            _workers[i].Start();
        }
    }

    public IBlockDevice Inner => _inner;

    public string Name => _inner.Name;
    public long Length => _inner.Length;
    public int LogicalBlockSize => _inner.LogicalBlockSize;
    public int BufferAlignment => _inner.BufferAlignment;
    public bool IsReadOnly => _inner.IsReadOnly;

    /// <summary>Most requests queued at once.</summary>
    public int MaxInFlight { get; private set; }

    /// <summary>Requests completed while an older request was still queued.</summary>
    public long OutOfOrderCompletions { get; private set; }

    public long Completed { get; private set; }

    /// <summary>How many requests are queued right now, by kind (for crash-point statistics).</summary>
    public (int Reads, int Writes, int Flushes, int Deallocates, int Zeroes) InFlightByKind()
    {
        lock (_lock)
        {
            int r = 0, w = 0, f = 0, d = 0, z = 0;
            foreach (var p in _pending)
            {
                switch (p.Kind)
                {
                    case Kind.Read: r++; break;
                    case Kind.Write: w++; break;
                    case Kind.Flush: f++; break;
                    case Kind.Deallocate: d++; break;
                    default: z++; break;
                }
            }
            return (r, w, f, d, z);
        }
    }

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        this.ValidateRequest(offset, destination.Length, destination.Span, isWrite: false);
        return Queue(Kind.Read, offset, destination.Length, destination, WriteFlags.None);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        this.ValidateRequest(offset, source.Length, source.Span, isWrite: true);
        return Queue(Kind.Write, offset, source.Length, System.Runtime.InteropServices.MemoryMarshal.AsMemory(source), flags);
    }

    public ValueTask FlushAsync() => Queue(Kind.Flush, 0, 0, default, WriteFlags.None);

    public ValueTask DeallocateAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, default, isWrite: true);
        return Queue(Kind.Deallocate, offset, length, default, WriteFlags.None);
    }

    public ValueTask ZeroAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, default, isWrite: true);
        return Queue(Kind.Zero, offset, length, default, WriteFlags.None);
    }

    public void Grow(long newLength) => _inner.Grow(newLength);

    private ValueTask Queue(Kind kind, long offset, long length, Memory<byte> buffer, WriteFlags flags)
    {
        var p = new Pending { Kind = kind, Offset = offset, Length = length, Buffer = buffer, Flags = flags };
        lock (_lock)
        {
            if (_disposed)
                throw new BlockDeviceException(BlockError.Unavailable, $"{Name}: device is closed");
            p.Sequence = _nextSequence++;
            _pending.Add(p);
            MaxInFlight = Math.Max(MaxInFlight, _pending.Count);
            Monitor.Pulse(_lock);
        }
        return new ValueTask(p.Done.Task);
    }

    private void Work()
    {
        while (true)
        {
            Pending p;
            int delay;
            lock (_lock)
            {
                while (_pending.Count == 0 && !_disposed)
                    Monitor.Wait(_lock);
                if (_pending.Count == 0)
                    return;
                delay = _random.Next(_maxDelayMicroseconds + 1);
            }
            // Waiting before choosing lets more requests queue up, so the choice has more to
            // reorder.
            Pause(delay);
            lock (_lock)
            {
                if (_pending.Count == 0)
                    continue;
                int index = _random.Next(_pending.Count);
                p = _pending[index];
                _pending.RemoveAt(index);
                long oldest = long.MaxValue;
                foreach (var other in _pending)
                    oldest = Math.Min(oldest, other.Sequence);
                if (oldest < p.Sequence)
                    OutOfOrderCompletions++;
            }
            Exception? failure = null;
            try
            {
                Apply(p);
            }
            catch (Exception e)
            {
                failure = e;
            }
            lock (_lock)
                Completed++;
            // The caller's continuation runs right here, on this worker thread.
            if (failure is null)
                p.Done.SetResult();
            else
                p.Done.SetException(failure);
        }
    }

    private static void Pause(int microseconds)
    {
        if (microseconds == 0)
            return;
        if (microseconds >= 1000)
        {
            Thread.Sleep(microseconds / 1000);
            return;
        }
        long until = System.Diagnostics.Stopwatch.GetTimestamp() + microseconds * System.Diagnostics.Stopwatch.Frequency / 1_000_000;
        while (System.Diagnostics.Stopwatch.GetTimestamp() < until)
            Thread.SpinWait(20);
    }

    private void Apply(Pending p)
    {
        ValueTask task = p.Kind switch
        {
            Kind.Read => _inner.ReadAsync(p.Offset, p.Buffer),
            Kind.Write => _inner.WriteAsync(p.Offset, p.Buffer, p.Flags),
            Kind.Flush => _inner.FlushAsync(),
            Kind.Deallocate => _inner.DeallocateAsync(p.Offset, p.Length),
            _ => _inner.ZeroAsync(p.Offset, p.Length),
        };
        task.AsTask().GetAwaiter().GetResult();
    }

    /// <summary>Waits for the queued requests to finish, stops the workers and disposes the inner
    /// device.</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
                return;
            _disposed = true;
            Monitor.PulseAll(_lock);
        }
        // Disposing from a continuation running on a worker must not wait for that worker.
        foreach (var w in _workers)
            if (w != Thread.CurrentThread)
                w.Join();
        _inner.Dispose();
    }
}
