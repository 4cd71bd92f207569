using ThinFast.IO;

namespace ThinFast.Fuzz.Nbd;

/// <summary>
/// An in-memory volume behind the fuzzed NBD server that never fails, so that every error reply
/// and every "failed" log line the server produces comes from the server's own code. It records,
/// instead of throwing, any request that breaks the front end's side of
/// <see cref="IBlockVolume"/>'s contract (a range outside the volume, a write to a read-only
/// export), because the server would turn a thrown exception into an ordinary EIO reply.
/// </summary>
internal sealed class ContractVolume(string name, long size, bool readOnly) : IBlockVolume
{
    private readonly byte[] _data = new byte[size];
    private string? _violation;

    public string Name => name;

    public long Size => size;

    public bool IsReadOnly => readOnly;

    public int AllocationUnit => 64 * 1024;

    /// <summary>The first contract breach since the last call, or null; clears it.</summary>
    public string? TakeViolation() => Interlocked.Exchange(ref _violation, null);

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        if (InRange("READ", offset, destination.Length))
            _data.AsSpan((int)offset, destination.Length).CopyTo(destination.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        if (Writable("WRITE") && InRange("WRITE", offset, source.Length))
            source.Span.CopyTo(_data.AsSpan((int)offset));
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync() => ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, WriteFlags flags = WriteFlags.None)
    {
        if (Writable("TRIM"))
            InRange("TRIM", offset, length);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags zero, WriteFlags flags = WriteFlags.None)
    {
        if (Writable("WRITE_ZEROES") && InRange("WRITE_ZEROES", offset, length))
            _data.AsSpan((int)offset, (int)length).Clear();
        return ValueTask.CompletedTask;
    }

    public ValueTask PrefetchAsync(long offset, long length)
    {
        InRange("CACHE", offset, length);
        return ValueTask.CompletedTask;
    }

    public int GetExtents(long offset, long length, Span<VolumeExtent> extents)
    {
        if (!InRange("BLOCK_STATUS", offset, length) || extents.IsEmpty)
            return 0;
        // Alternating data and holes per allocation unit, so replies have several extents to clip.
        int filled = 0;
        long position = offset;
        while (filled < extents.Length && position < offset + length)
        {
            long unitEnd = (position / AllocationUnit + 1) * AllocationUnit;
            var flags = position / AllocationUnit % 2 == 0 ? ExtentFlags.Data : ExtentFlags.Hole | ExtentFlags.Zero;
            extents[filled++] = new VolumeExtent(position, unitEnd - position, flags);
            position = unitEnd;
        }
        return filled;
    }

    private bool InRange(string what, long offset, long length)
    {
        if (offset >= 0 && length > 0 && offset <= size && length <= size - offset)
            return true;
        Interlocked.CompareExchange(ref _violation, $"{what} of [{offset}, +{length}) reached volume '{name}' of {size} bytes", null);
        return false;
    }

    private bool Writable(string what)
    {
        if (!readOnly)
            return true;
        Interlocked.CompareExchange(ref _violation, $"{what} reached read-only volume '{name}'", null);
        return false;
    }
}
