namespace ThinFast.IO;

/// <summary>
/// What a front end (NBD, ublk) serves: a virtual disk addressed in bytes. Unlike
/// <see cref="IBlockDevice"/>, offsets, lengths and buffers may have any alignment; the
/// implementation bounces through aligned buffers where it must. Requests must lie inside
/// [0, <see cref="Size"/>); front ends check that first and answer out-of-range requests
/// themselves. Failures throw <see cref="BlockDeviceException"/>, whose
/// <see cref="BlockDeviceException.Error"/> front ends map to protocol errors.
/// </summary>
/// <remarks>
/// Many requests may be in flight at once, from many threads. Overlapping requests never tear:
/// each is applied as a whole in some order. Completion allocates nothing in steady state.
/// </remarks>
public interface IBlockVolume
{
    string Name { get; }

    long Size { get; }

    bool IsReadOnly { get; }

    /// <summary>The allocation unit (the pool's data block size): the preferred I/O size and
    /// the granularity of discard and of <see cref="GetExtents"/>.</summary>
    int AllocationUnit { get; }

    ValueTask ReadAsync(long offset, Memory<byte> destination);

    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None);

    /// <summary>Makes every write completed before this call durable (data and metadata).</summary>
    ValueTask FlushAsync();

    /// <summary>A hint that the range is no longer needed. Only whole allocation units inside the
    /// range are released; what it reads back as afterwards is implementation-defined (dm-thin:
    /// the origin's data, or zeros without an origin).</summary>
    ValueTask DiscardAsync(long offset, long length, WriteFlags flags = WriteFlags.None);

    /// <summary>The range reads back as zeros afterwards. With <see cref="ZeroFlags.MayDeallocate"/>
    /// the implementation may release storage to achieve that; without it the range stays (or
    /// becomes) allocated. With <see cref="ZeroFlags.FastOnly"/> it fails at once with
    /// <see cref="BlockError.NotSupported"/>, doing nothing, when zeroing would be slower than
    /// writing zeros (NBD's FAST_ZERO).</summary>
    ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags zero, WriteFlags flags = WriteFlags.None);

    /// <summary>A hint that the range will be read soon (NBD_CMD_CACHE). It fails as a read of the
    /// range would (out of range, a deleted or unavailable volume); otherwise it may warm a cache
    /// or do nothing.</summary>
    ValueTask PrefetchAsync(long offset, long length);

    /// <summary>Describes [offset, offset+length) as consecutive extents, starting at
    /// <paramref name="offset"/>, filling at most <paramref name="extents"/>.Length entries.
    /// Returns how many were filled (at least 1 when length &gt; 0).</summary>
    int GetExtents(long offset, long length, Span<VolumeExtent> extents);
}

/// <summary>How <see cref="IBlockVolume.WriteZeroesAsync"/> may zero a range.</summary>
[Flags]
public enum ZeroFlags
{
    None = 0,
    /// <summary>Storage may be released: the range may become a hole that reads zeros.</summary>
    MayDeallocate = 1,
    /// <summary>Fail with <see cref="BlockError.NotSupported"/> instead of doing anything slower
    /// than writing zeros would be (copying from an origin, waiting for data space).</summary>
    FastOnly = 2,
}

/// <summary>One run of a volume with the same allocation state.</summary>
public readonly record struct VolumeExtent(long Offset, long Length, ExtentFlags Flags);

[Flags]
public enum ExtentFlags
{
    /// <summary>Allocated data (pool data, or origin data under an unmapped block).</summary>
    Data = 0,
    /// <summary>Nothing is allocated here (NBD_STATE_HOLE).</summary>
    Hole = 1,
    /// <summary>Reads as zeros (NBD_STATE_ZERO).</summary>
    Zero = 2,
}
