using ThinFast.IO;

namespace ThinFast.Engine;

/// <summary>
/// An external origin file, as volumes read it: through two handles, and with its true byte
/// length.
/// Guest reads may go through the page cache, which every volume over the same base shares, so a
/// block one guest read is in memory for the next. Provisioning copies read O_DIRECT: each copies
/// a block into the pool once per volume, usually a block nobody read before, and a buffered
/// io_uring read that misses the cache measured twice the time and three times the CPU of a
/// direct one (docs/architecture.md).
/// A file's length need not be a multiple of the sector, but O_DIRECT reads are: the devices
/// report the length rounded down, and the bytes past that (the tail, less than a sector) are
/// read once at open, buffered, and served from memory.
/// </summary>
internal sealed class OriginDevice : IBlockDevice
{
    private readonly IBlockDevice _reads;
    private readonly IBlockDevice _copies;
    private readonly byte[] _tail;

    /// <param name="reads">The handle guest reads use (buffered or direct).</param>
    /// <param name="copies">The O_DIRECT handle for provisioning copies; may be <paramref name="reads"/>.</param>
    /// <param name="byteLength">The file's length in bytes.</param>
    public OriginDevice(IBlockDevice reads, IBlockDevice copies, long byteLength)
    {
        _reads = reads;
        _copies = copies;
        ByteLength = byteLength;
        _tail = new byte[byteLength - copies.Length];
        if (_tail.Length > 0)
        {
            using var file = File.OpenHandle(copies.Name, FileMode.Open, FileAccess.Read);
            if (RandomAccess.Read(file, _tail, copies.Length) != _tail.Length)
                throw new IOException($"{copies.Name}: could not read its last {_tail.Length} bytes");
        }
    }

    /// <summary>The O_DIRECT handle, for provisioning copies.</summary>
    public IBlockDevice ForCopies => _copies;

    /// <summary>The origin's length in bytes, the tail included.</summary>
    public long ByteLength { get; }

    /// <summary>Copies the part of [offset, offset + destination.Length) that lies in the tail
    /// and returns how much of the front remains for the devices to read.</summary>
    public int CopyTail(long offset, Span<byte> destination)
    {
        long tailStart = _copies.Length;
        long end = offset + destination.Length;
        if (end <= tailStart)
            return destination.Length;
        int front = (int)Math.Max(0, tailStart - offset);
        long from = Math.Max(offset, tailStart);
        _tail.AsSpan((int)(from - tailStart), (int)(end - from)).CopyTo(destination[front..]);
        return front;
    }

    public string Name => _reads.Name;
    /// <summary>The length the devices can read, a multiple of the sector; see <see cref="ByteLength"/>.</summary>
    public long Length => _copies.Length;
    // Requests valid for the direct handle are valid for both.
    public int LogicalBlockSize => _copies.LogicalBlockSize;
    public int BufferAlignment => _copies.BufferAlignment;
    public bool IsReadOnly => true;

    public ValueTask ReadAsync(long offset, Memory<byte> destination) => _reads.ReadAsync(offset, destination);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None) => _reads.WriteAsync(offset, source, flags);

    public ValueTask FlushAsync() => ValueTask.CompletedTask;

    public ValueTask DeallocateAsync(long offset, long length) => _reads.DeallocateAsync(offset, length);

    public ValueTask ZeroAsync(long offset, long length) => _reads.ZeroAsync(offset, length);

    public void Grow(long newLength) => _reads.Grow(newLength);

    public void Dispose()
    {
        _reads.Dispose();
        if (!ReferenceEquals(_copies, _reads))
            _copies.Dispose();
    }
}
