namespace ThinFast.IO;

/// <summary>
/// A fixed set of equally sized <see cref="NativeBuffer"/>s made up front, so the data path never
/// allocates and an io_uring can register every buffer once. Renting when all are out returns
/// false instead of allocating: callers queue and retry, which bounds memory under load. The
/// buffers share one <see cref="NativeSlab"/> (huge pages where it is large enough).
/// </summary>
public sealed class AlignedBufferPool : IDisposable
{
    private readonly NativeSlab _slab;
    private readonly NativeBuffer[] _buffers;
    // A stack of free buffers under a lock: ConcurrentStack would allocate a node per push.
    private readonly NativeBuffer[] _free;
    private readonly bool[] _isFree;
    private int _freeCount;
    private bool _disposed;

    public unsafe AlignedBufferPool(int bufferSize, int count, int alignment = NativeBuffer.PageSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bufferSize);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        BufferSize = bufferSize;
        long stride = (bufferSize + (long)alignment - 1) & ~((long)alignment - 1);
        _slab = new NativeSlab((nuint)(stride * count), alignment);
        _buffers = new NativeBuffer[count];
        _free = new NativeBuffer[count];
        _isFree = new bool[count];
        for (int i = 0; i < count; i++)
        {
            _buffers[i] = new NativeBuffer(_slab.Pointer + stride * i, bufferSize) { PoolIndex = i };
            _free[count - 1 - i] = _buffers[i];
            _isFree[i] = true;
        }
        _freeCount = count;
    }

    public int BufferSize { get; }

    /// <summary>Every buffer of the pool, in registration order.</summary>
    public IReadOnlyList<NativeBuffer> Buffers => _buffers;

    public int FreeCount => Volatile.Read(ref _freeCount);

    public bool TryRent(out NativeBuffer buffer)
    {
        lock (_free)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_freeCount == 0)
            {
                buffer = null!;
                return false;
            }
            buffer = _free[--_freeCount];
            _isFree[buffer.PoolIndex] = false;
            return true;
        }
    }

    public NativeBuffer Rent() =>
        TryRent(out var buffer) ? buffer : throw new InvalidOperationException($"all {_buffers.Length} buffers of {BufferSize} bytes are in use");

    public void Return(NativeBuffer buffer)
    {
        int index = buffer.PoolIndex;
        if ((uint)index >= (uint)_buffers.Length || !ReferenceEquals(_buffers[index], buffer))
            throw new ArgumentException("buffer does not belong to this pool", nameof(buffer));
        lock (_free)
        {
            if (_isFree[index])
                throw new InvalidOperationException("buffer returned twice");
            _isFree[index] = true;
            _free[_freeCount++] = buffer;
        }
    }

    public void Dispose()
    {
        lock (_free)
        {
            if (_disposed)
                return;
            _disposed = true;
        }
        foreach (var b in _buffers)
            ((IDisposable)b).Dispose();
        _slab.Dispose();
    }
}
