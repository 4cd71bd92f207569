using ThinFast.IO;

namespace ThinFast.Testing;

/// <summary>
/// A strict in-memory <see cref="IBlockDevice"/>: it refuses exactly what O_DIRECT would (misaligned
/// offsets, lengths and buffer addresses), which the real disk here does not always do (a
/// misaligned O_DIRECT write succeeded on this machine's ext4), so alignment bugs surface in tests.
/// Operations complete synchronously. Thread-safe: each operation holds a lock, so concurrent
/// requests are applied whole, one after another.
/// </summary>
public sealed class MemoryBlockDevice : IBlockDevice
{
    private readonly object _lock = new();
    private byte[] _data;
    private bool _disposed;

    public MemoryBlockDevice(long length, int logicalBlockSize = 512, bool readOnly = false, string name = "memory")
        : this(new byte[CheckLength(length, logicalBlockSize)], logicalBlockSize, readOnly, name)
    {
    }

    /// <summary>Wraps <paramref name="contents"/> (not copied) as the device's storage.</summary>
    public MemoryBlockDevice(byte[] contents, int logicalBlockSize = 512, bool readOnly = false, string name = "memory")
    {
        CheckLength(contents.LongLength, logicalBlockSize);
        _data = contents;
        LogicalBlockSize = logicalBlockSize;
        IsReadOnly = readOnly;
        Name = name;
    }

    public string Name { get; }

    public long Length
    {
        get { lock (_lock) return _data.LongLength; }
    }

    public int LogicalBlockSize { get; }

    public int BufferAlignment => LogicalBlockSize;

    public bool IsReadOnly { get; }

    public long ReadCount { get; private set; }

    public long WriteCount { get; private set; }

    public long FlushCount { get; private set; }

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        lock (_lock)
        {
            CheckOpen();
            this.ValidateRequest(offset, destination.Length, destination.Span, isWrite: false);
            _data.AsSpan(checked((int)offset), destination.Length).CopyTo(destination.Span);
            ReadCount++;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        lock (_lock)
        {
            CheckOpen();
            this.ValidateRequest(offset, source.Length, source.Span, isWrite: true);
            source.Span.CopyTo(_data.AsSpan(checked((int)offset)));
            WriteCount++;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync()
    {
        lock (_lock)
        {
            CheckOpen();
            FlushCount++;
        }
        return ValueTask.CompletedTask;
    }

    /// <summary>What a deallocation leaves behind. The contract leaves it undefined, so the
    /// default is garbage: code that relies on deallocated ranges reading zeros fails its tests.</summary>
    public DeallocateEffect Deallocation { get; set; } = DeallocateEffect.Garbage;

    public long DeallocateCount { get; private set; }

    public ValueTask DeallocateAsync(long offset, long length)
    {
        lock (_lock)
        {
            CheckOpen();
            this.ValidateRequest(offset, length, default, isWrite: true);
            Deallocation.Apply(_data.AsSpan(checked((int)offset), checked((int)length)));
            DeallocateCount++;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask ZeroAsync(long offset, long length)
    {
        lock (_lock)
        {
            CheckOpen();
            this.ValidateRequest(offset, length, default, isWrite: true);
            _data.AsSpan(checked((int)offset), checked((int)length)).Clear();
            WriteCount++;
        }
        return ValueTask.CompletedTask;
    }

    public void Grow(long newLength)
    {
        lock (_lock)
        {
            CheckOpen();
            CheckLength(newLength, LogicalBlockSize);
            if (newLength < _data.LongLength)
                throw new BlockDeviceException(BlockError.InvalidArgument, $"{Name}: cannot shrink from {_data.LongLength} to {newLength}");
            Array.Resize(ref _data, checked((int)newLength));
        }
    }

    /// <summary>A copy of the whole contents.</summary>
    public byte[] ToArray()
    {
        lock (_lock)
            return (byte[])_data.Clone();
    }

    public void CopyTo(Stream stream)
    {
        lock (_lock)
            stream.Write(_data);
    }

    /// <summary>Writes the contents to a file, for external tools (thin_check, analyze.py).</summary>
    public void SaveTo(string path)
    {
        using var f = File.Create(path);
        CopyTo(f);
    }

    public static MemoryBlockDevice Load(string path, int logicalBlockSize = 512, bool readOnly = false) =>
        new(File.ReadAllBytes(path), logicalBlockSize, readOnly, path);

    /// <summary>Direct access for test set-up and inspection (corrupting a byte, say).</summary>
    public Span<byte> Contents => _data;

    public void Dispose()
    {
        lock (_lock)
            _disposed = true;
    }

    private void CheckOpen()
    {
        if (_disposed)
            throw new BlockDeviceException(BlockError.Unavailable, $"{Name}: device is closed");
    }

    private static int CheckLength(long length, int logicalBlockSize)
    {
        if (logicalBlockSize <= 0 || (logicalBlockSize & (logicalBlockSize - 1)) != 0)
            throw new ArgumentException($"logical block size {logicalBlockSize} is not a power of two");
        if (length < 0 || length % logicalBlockSize != 0 || length > Array.MaxLength)
            throw new ArgumentException($"length {length} must be a non-negative multiple of {logicalBlockSize} below 2 GiB");
        return (int)length;
    }
}
