using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>
/// Wraps a device and holds every deallocation at a gate until the test opens it: the test sees
/// the moment a discard reaches the device (<see cref="DeallocateArrived"/>) and decides what
/// happens while it is in flight. Other operations pass straight through.
/// </summary>
public sealed class GatedDevice : IBlockDevice
{
    private readonly IBlockDevice _inner;
    private readonly ManualResetEventSlim _open = new(false);
    private int _arrived;

    public GatedDevice(IBlockDevice inner) => _inner = inner;

    /// <summary>Set when the first deallocation reaches the gate.</summary>
    public ManualResetEventSlim DeallocateArrived { get; } = new(false);

    /// <summary>Deallocations that reached the gate so far.</summary>
    public int DeallocatesArrived => Volatile.Read(ref _arrived);

    /// <summary>Lets held and later deallocations through.</summary>
    public void Open() => _open.Set();

    public string Name => _inner.Name;
    public long Length => _inner.Length;
    public int LogicalBlockSize => _inner.LogicalBlockSize;
    public int BufferAlignment => _inner.BufferAlignment;
    public bool IsReadOnly => _inner.IsReadOnly;

    public ValueTask ReadAsync(long offset, Memory<byte> destination) => _inner.ReadAsync(offset, destination);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None) =>
        _inner.WriteAsync(offset, source, flags);

    public ValueTask FlushAsync() => _inner.FlushAsync();

    public ValueTask DeallocateAsync(long offset, long length)
    {
        Interlocked.Increment(ref _arrived);
        DeallocateArrived.Set();
        // Blocks the caller, as a slow discard on a synchronous handle does.
        if (!_open.Wait(TimeSpan.FromSeconds(30)))
            throw new TimeoutException($"{Name}: the test never opened the deallocation gate");
        return _inner.DeallocateAsync(offset, length);
    }

    public ValueTask ZeroAsync(long offset, long length) => _inner.ZeroAsync(offset, length);

    public void Grow(long newLength) => _inner.Grow(newLength);

    public void Dispose()
    {
        _open.Set();
        _inner.Dispose();
    }
}
