using ThinFast.IO;

namespace ThinFast.Engine;

/// <summary>
/// An external origin opened twice. Guest reads go through the page cache, which every volume over
/// the same base shares, so a block one guest read is in memory for the next. Provisioning copies
/// read O_DIRECT: each copies a block into the pool once per volume, usually a block nobody read
/// before, and a buffered io_uring read that misses the cache measured twice the time and three
/// times the CPU of a direct one (docs/architecture.md).
/// </summary>
internal sealed class OriginDevice(IBlockDevice cached, IBlockDevice direct) : IBlockDevice
{
    /// <summary>The O_DIRECT handle, for provisioning copies.</summary>
    public IBlockDevice ForCopies => direct;

    public string Name => cached.Name;
    public long Length => cached.Length;
    // Both handles are on one file; the direct one's rules are the stricter, so requests valid
    // for it are valid for both.
    public int LogicalBlockSize => direct.LogicalBlockSize;
    public int BufferAlignment => direct.BufferAlignment;
    public bool IsReadOnly => true;

    public ValueTask ReadAsync(long offset, Memory<byte> destination) => cached.ReadAsync(offset, destination);

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None) => cached.WriteAsync(offset, source, flags);

    public ValueTask FlushAsync() => ValueTask.CompletedTask;

    public ValueTask DeallocateAsync(long offset, long length) => cached.DeallocateAsync(offset, length);

    public ValueTask ZeroAsync(long offset, long length) => cached.ZeroAsync(offset, length);

    public void Grow(long newLength) => cached.Grow(newLength);

    public void Dispose()
    {
        cached.Dispose();
        direct.Dispose();
    }
}
