namespace ThinFast.IO;

/// <summary>
/// A byte-addressed block device: a file or a block device holding pool metadata, pool data or a
/// read-only origin. Every offset and length must be a multiple of <see cref="LogicalBlockSize"/>,
/// and every buffer must start at a multiple of <see cref="BufferAlignment"/> in memory, because
/// the real backends use O_DIRECT. Violations throw <see cref="BlockDeviceException"/> with
/// <see cref="BlockError.InvalidArgument"/>; they are never silently fixed up.
/// </summary>
/// <remarks>
/// Completion allocates nothing in steady state: implementations return <see cref="ValueTask"/>s
/// backed by pooled <c>IValueTaskSource</c>s. A transfer either completes whole or fails; short
/// transfers are retried inside the backend. Continuations may run on a backend's I/O thread
/// (the io_uring reactor), so code awaiting a device must never block that thread by waiting
/// synchronously on the same device.
/// </remarks>
public interface IBlockDevice : IDisposable
{
    /// <summary>A name for messages: usually the path.</summary>
    string Name { get; }

    /// <summary>Current size in bytes (a multiple of <see cref="LogicalBlockSize"/>).</summary>
    long Length { get; }

    /// <summary>Alignment required of offsets and lengths (512 or 4096 for O_DIRECT devices).</summary>
    int LogicalBlockSize { get; }

    /// <summary>Alignment required of buffer addresses.</summary>
    int BufferAlignment { get; }

    bool IsReadOnly { get; }

    ValueTask ReadAsync(long offset, Memory<byte> destination);

    /// <summary>Writes <paramref name="source"/>. With <see cref="WriteFlags.ForceUnitAccess"/> the
    /// data is durable when the task completes.</summary>
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None);

    /// <summary>Makes every write completed before this call durable.</summary>
    ValueTask FlushAsync();

    /// <summary>Tells the device the range is no longer needed (a punched hole on files,
    /// BLKDISCARD on block devices). What the range reads back as afterwards is undefined: zeros,
    /// the old data or anything else, and the device may do nothing at all. Never rely on it for
    /// zeros; use <see cref="ZeroAsync"/>.</summary>
    ValueTask DeallocateAsync(long offset, long length);

    /// <summary>The range reads back as zeros afterwards, with the durability of a write
    /// (FALLOC_FL_ZERO_RANGE on files, BLKZEROOUT on block devices; where neither works, zeros are
    /// written). Storage stays allocated.</summary>
    ValueTask ZeroAsync(long offset, long length);

    /// <summary>Grows the device to <paramref name="newLength"/> bytes (files only; block devices
    /// report their own size). Shrinking is refused.</summary>
    void Grow(long newLength);
}

[Flags]
public enum WriteFlags
{
    None = 0,
    /// <summary>Durable on completion (RWF_DSYNC / NBD FUA semantics).</summary>
    ForceUnitAccess = 1,
}
