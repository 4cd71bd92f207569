using ThinFast.IO;

namespace ThinFast.Benchmarks.Metadata;

/// <summary>An in-memory metadata device, so the figures are the metadata layer's CPU cost alone.</summary>
internal sealed class RamDevice(long length) : IBlockDevice
{
    private byte[] _data = new byte[length];

    public string Name => "ram";
    public long Length => _data.LongLength;
    public int LogicalBlockSize => 512;
    public int BufferAlignment => 512;
    public bool IsReadOnly => false;

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        _data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        source.Span.CopyTo(_data.AsSpan((int)offset));
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync() => ValueTask.CompletedTask;

    public ValueTask DeallocateAsync(long offset, long length) => ZeroAsync(offset, length);

    public ValueTask ZeroAsync(long offset, long length)
    {
        _data.AsSpan((int)offset, (int)length).Clear();
        return ValueTask.CompletedTask;
    }

    public void Grow(long newLength) => Array.Resize(ref _data, checked((int)newLength));

    public void Dispose()
    {
    }
}
