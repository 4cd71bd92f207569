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
/// A file's length need not be a multiple of the direct-I/O alignment, but O_DIRECT transfers
/// are: the devices report the length rounded down to it, and the bytes past that (the tail) are
/// read once at open, buffered, and served from memory.
/// </summary>
internal sealed class OriginDevice : IBlockDevice
{
    private readonly IBlockDevice _reads;
    private readonly IBlockDevice _copies;
    private readonly byte[] _tail;

    /// <param name="reads">The handle guest reads use (buffered or direct).</param>
    /// <param name="copies">The O_DIRECT handle for provisioning copies; may be <paramref name="reads"/>.</param>
    /// <param name="tail">The file's bytes past <paramref name="copies"/>' length.</param>
    public OriginDevice(IBlockDevice reads, IBlockDevice copies, byte[] tail)
    {
        _reads = reads;
        _copies = copies;
        _tail = tail;
    }

    /// <summary>The bytes of <paramref name="path"/> past the first <paramref name="directLength"/>
    /// (what O_DIRECT reaches), read through a buffered handle on the file itself (a symlink is
    /// followed). Empty for block devices and for files whose length is aligned.</summary>
    public static byte[] ReadTail(string path, long directLength)
    {
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        long length = RandomAccess.GetLength(file);
        // A block device reports 0 here and has no tail; a file's tail is shorter than the
        // alignment its direct length was rounded down to, which is at most a page or so.
        long tailLength = length - directLength;
        if (tailLength <= 0 || tailLength >= 1 << 20)
            return [];
        var tail = new byte[tailLength];
        if (RandomAccess.Read(file, tail, directLength) != tail.Length)
            throw new IOException($"{path}: could not read its last {tail.Length} bytes");
        return tail;
    }

    /// <summary>The O_DIRECT handle, for provisioning copies.</summary>
    public IBlockDevice ForCopies => _copies;

    /// <summary>The origin's length in bytes, the tail included.</summary>
    public long ByteLength => _copies.Length + _tail.Length;

    /// <summary>The byte length of any origin device: files carry their tail.</summary>
    public static long ByteLengthOf(IBlockDevice origin) => origin is OriginDevice file ? file.ByteLength : origin.Length;

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
