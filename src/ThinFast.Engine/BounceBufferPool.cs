using ThinFast.IO;

namespace ThinFast.Engine;

/// <summary>
/// The pool's bounce buffers, for I/O whose offset, length or buffer does not suit O_DIRECT and
/// for provisioning copies. Bounded: when every buffer is out, a request waits (first come, first
/// served) for one to come back, so no burst of unaligned I/O from any client can grow native
/// memory without limit. A buffer is held only across device I/O, never while waiting on a
/// client, so waiting always ends.
/// </summary>
/// <remarks>
/// A holder never waits for a second buffer: that could deadlock with every buffer held by a
/// request waiting for another. The one place that reads through the bounce path while holding a
/// buffer (a provisioning copy from an origin) takes <see cref="RentNested"/>, which never waits
/// and is bounded by the number of holders.
/// </remarks>
internal sealed class BounceBufferPool : IDisposable
{
    private readonly AlignedBufferPool _buffers;
    private readonly Queue<TaskCompletionSource<NativeBuffer>> _waiters = new();
    private long _waits;
    private int _temporaries;

    public BounceBufferPool(int bufferSize, int count)
    {
        _buffers = new AlignedBufferPool(bufferSize, count);
    }

    public int BufferSize => _buffers.BufferSize;

    /// <summary>Rentals that had to wait for a buffer to come back.</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>Requests waiting for a buffer now.</summary>
    public int Waiting
    {
        get { lock (_waiters) return _waiters.Count; }
    }

    /// <summary>Temporary buffers of nested rentals in use now.</summary>
    public int Temporaries => Volatile.Read(ref _temporaries);

    /// <summary>A buffer now if one is free, else when one comes back. Allocates only when it waits.</summary>
    public ValueTask<NativeBuffer> RentAsync()
    {
        lock (_waiters)
        {
            if (_waiters.Count == 0 && _buffers.TryRent(out var buffer))
                return new ValueTask<NativeBuffer>(buffer);
            // Continuations run on the thread pool: a buffer's return must not run the next
            // request's I/O inside the returner's call.
            var waiter = new TaskCompletionSource<NativeBuffer>(TaskCreationOptions.RunContinuationsAsynchronously);
            _waiters.Enqueue(waiter);
            _waits++;
            return new ValueTask<NativeBuffer>(waiter.Task);
        }
    }

    /// <summary>A second buffer for a caller that already holds one: from the pool if one is
    /// free, else a temporary one freed on return. Never waits.</summary>
    public NativeBuffer RentNested()
    {
        lock (_waiters)
        {
            if (_waiters.Count == 0 && _buffers.TryRent(out var buffer))
                return buffer;
        }
        Interlocked.Increment(ref _temporaries);
        return new NativeBuffer(_buffers.BufferSize);
    }

    public void Return(NativeBuffer buffer)
    {
        if (buffer.PoolIndex < 0)
        {
            ((IDisposable)buffer).Dispose();
            Interlocked.Decrement(ref _temporaries);
            return;
        }
        TaskCompletionSource<NativeBuffer>? next;
        lock (_waiters)
        {
            if (!_waiters.TryDequeue(out next))
            {
                _buffers.Return(buffer);
                return;
            }
        }
        // Handed straight to the oldest waiter, so nobody arriving later can take it first.
        next.SetResult(buffer);
    }

    public void Dispose() => _buffers.Dispose();
}
