using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>Holds the first write that touches an armed byte range until the test releases it (a
/// slow device queue under one request), passing everything else straight through. One hold per
/// device: arm it once, before the write it is for.</summary>
public sealed class RangeHoldDevice(IBlockDevice inner) : IBlockDevice
{
    private long _start = -1, _end = -1;
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Set when the held write arrives.</summary>
    public ManualResetEventSlim Held { get; } = new(false);

    /// <summary>Holds the next write overlapping [start, end).</summary>
    public void Arm(long start, long end)
    {
        _start = start;
        _end = end;
    }

    public void Release() => _release.TrySetResult();

    public string Name => inner.Name;
    public long Length => inner.Length;
    public int LogicalBlockSize => inner.LogicalBlockSize;
    public int BufferAlignment => inner.BufferAlignment;
    public bool IsReadOnly => inner.IsReadOnly;

    public ValueTask ReadAsync(long offset, Memory<byte> destination) => inner.ReadAsync(offset, destination);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        if (offset >= _end || offset + source.Length <= _start)
            return inner.WriteAsync(offset, source, flags);
        _start = _end = -1;
        Held.Set();
        return HeldWriteAsync(offset, source, flags);
    }

    private async ValueTask HeldWriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags)
    {
        await _release.Task.WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        await inner.WriteAsync(offset, source, flags).ConfigureAwait(false);
    }

    public ValueTask FlushAsync() => inner.FlushAsync();
    public ValueTask DeallocateAsync(long offset, long length) => inner.DeallocateAsync(offset, length);
    public ValueTask ZeroAsync(long offset, long length) => inner.ZeroAsync(offset, length);
    public void Grow(long newLength) => inner.Grow(newLength);

    public void Dispose()
    {
        Release();
        inner.Dispose();
    }
}
