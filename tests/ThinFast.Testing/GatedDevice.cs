using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>Which operations a <see cref="GatedDevice"/> holds.</summary>
[Flags]
public enum GatedOperations
{
    Deallocate = 1,
    Write = 2,
}

/// <summary>
/// Wraps a device and holds the chosen operations at a gate until the test opens it: the test sees
/// the moment one reaches the device (<see cref="DeallocateArrived"/>, <see cref="WriteArrived"/>)
/// and decides what happens while it is in flight. Other operations pass straight through.
/// </summary>
public sealed class GatedDevice : IBlockDevice
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);
    private readonly IBlockDevice _inner;
    private readonly GatedOperations _gated;
    private volatile TaskCompletionSource _open = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _deallocates, _writes;

    public GatedDevice(IBlockDevice inner, GatedOperations gated = GatedOperations.Deallocate)
    {
        _inner = inner;
        _gated = gated;
    }

    /// <summary>The wrapped device (its contents, for a crash image).</summary>
    public IBlockDevice Inner => _inner;

    /// <summary>Set when the first deallocation reaches the closed gate.</summary>
    public ManualResetEventSlim DeallocateArrived { get; } = new(false);

    /// <summary>Set when the first write reaches the closed gate.</summary>
    public ManualResetEventSlim WriteArrived { get; } = new(false);

    /// <summary>Deallocations that reached the gate so far.</summary>
    public int DeallocatesArrived => Volatile.Read(ref _deallocates);

    /// <summary>Writes that reached the gate so far.</summary>
    public int WritesArrived => Volatile.Read(ref _writes);

    /// <summary>Lets held and later operations through.</summary>
    public void Open() => _open.TrySetResult();

    /// <summary>Holds the operations that arrive from now on (the gate starts closed).</summary>
    public void Close()
    {
        if (_open.Task.IsCompleted)
            _open = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
    }

    public string Name => _inner.Name;
    public long Length => _inner.Length;
    public int LogicalBlockSize => _inner.LogicalBlockSize;
    public int BufferAlignment => _inner.BufferAlignment;
    public bool IsReadOnly => _inner.IsReadOnly;

    public ValueTask ReadAsync(long offset, Memory<byte> destination) => _inner.ReadAsync(offset, destination);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        if ((_gated & GatedOperations.Write) == 0 || _open.Task.IsCompleted)
            return _inner.WriteAsync(offset, source, flags);
        Interlocked.Increment(ref _writes);
        WriteArrived.Set();
        return HeldWriteAsync(offset, source, flags);
    }

    // Completes late, as a slow device does, without blocking the submitter.
    private async ValueTask HeldWriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags)
    {
        await WaitForOpenAsync().ConfigureAwait(false);
        await _inner.WriteAsync(offset, source, flags).ConfigureAwait(false);
    }

    private async Task WaitForOpenAsync()
    {
        try
        {
            await _open.Task.WaitAsync(Patience).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"{Name}: the test never opened the gate");
        }
    }

    public ValueTask FlushAsync() => _inner.FlushAsync();

    public ValueTask DeallocateAsync(long offset, long length)
    {
        if ((_gated & GatedOperations.Deallocate) == 0 || _open.Task.IsCompleted)
            return _inner.DeallocateAsync(offset, length);
        Interlocked.Increment(ref _deallocates);
        DeallocateArrived.Set();
        // Blocks the caller, as a slow discard on a synchronous handle does.
        WaitForOpenAsync().GetAwaiter().GetResult();
        return _inner.DeallocateAsync(offset, length);
    }

    public ValueTask ZeroAsync(long offset, long length) => _inner.ZeroAsync(offset, length);

    public void Grow(long newLength) => _inner.Grow(newLength);

    public void Dispose()
    {
        Open();
        _inner.Dispose();
    }
}
