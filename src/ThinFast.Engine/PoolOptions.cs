namespace ThinFast.Engine;

public sealed record PoolOptions
{
    public const int DefaultBlockSize = 64 * 1024;

    /// <summary>Data block size in bytes for a new pool: 64 KiB to 1 GiB in 64 KiB steps (dm-thin's
    /// rule). An existing pool keeps the size its superblock records.</summary>
    public int BlockSize { get; init; } = DefaultBlockSize;

    /// <summary>When free data blocks fall to this many, the pool logs a low-water event once
    /// (re-armed when free space rises above it again).</summary>
    public long LowWaterBlocks { get; init; }

    /// <summary>Out of data space: fail writes that need a new block at once with ENOSPC
    /// (dm-thin's error_if_no_space) instead of queueing them.</summary>
    public bool ErrorIfNoSpace { get; init; }

    /// <summary>How long writes queue for space before failing with ENOSPC (dm-thin's
    /// no_space_timeout, default 60 s). Zero queues for ever.</summary>
    public TimeSpan NoSpaceTimeout { get; init; } = TimeSpan.FromSeconds(60);

    /// <summary>How long a snapshot, delete or close waits for a volume's requests in flight
    /// (not those queued for data space) before it answers "busy".</summary>
    public TimeSpan AdminDrainTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Commit changed metadata at least this often (dm-thin: 1 s).</summary>
    public TimeSpan CommitInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>Discard freed data blocks on the data device (dm-thin's discard_passdown).</summary>
    public bool DiscardPassdown { get; init; } = true;

    /// <summary>A new data file is allocated in full when the pool is made (like an LVM data LV)
    /// instead of sparse: first writes into file holes cost the file system an allocation and a
    /// journal entry each. Turn off to keep the file sparse (tests, demos).</summary>
    public bool PreallocateData { get; init; } = true;

    /// <summary>
    /// Read external origins through the kernel's page cache instead of O_DIRECT. An origin is a
    /// read-only base shared by many volumes (many guests booting one image), so every block a
    /// guest reads from it is likely to be read again by the next guest: cached, the disk serves
    /// it once; direct, once per guest. Nothing is written through this path, so the cache costs
    /// no durability, only reclaimable memory. Turn off for origins too large to be worth caching,
    /// or to keep the page cache for something else. Provisioning copies from the origin are read
    /// O_DIRECT either way (<see cref="OriginDevice"/>). Pool data and metadata are always O_DIRECT.
    /// </summary>
    public bool OriginPageCache { get; init; } = true;

    /// <summary>Bounce buffers for provisioning copies and unaligned requests, each one chunk
    /// (the block size, at most 1 MiB): a bound, not a cache; requests beyond it wait for one.</summary>
    public int BounceBuffers { get; init; } = 64;

    /// <summary>Where events (low water, mode changes, commit failures) are reported.</summary>
    public Action<string>? Log { get; init; }

    internal void Validate()
    {
        if (BlockSize < 64 * 1024 || BlockSize > 1 << 30 || BlockSize % (64 * 1024) != 0)
            throw new PoolException($"block size {BlockSize} must be a multiple of 64 KiB between 64 KiB and 1 GiB");
        if (LowWaterBlocks < 0)
            throw new PoolException("low-water mark must not be negative");
        if (BounceBuffers < 4)
            throw new PoolException("at least 4 bounce buffers are needed");
    }
}

/// <summary>dm-thin's pool modes, in degrading order.</summary>
public enum PoolMode
{
    Write,
    OutOfDataSpace,
    ReadOnly,
    Fail,
}

/// <summary>A snapshot of the pool's state, like dm-thin's status line.</summary>
public sealed record PoolStatus(
    ulong TransactionId,
    ulong UsedMetadataBlocks,
    ulong TotalMetadataBlocks,
    ulong UsedDataBlocks,
    ulong TotalDataBlocks,
    int BlockSize,
    PoolMode Mode,
    bool ErrorIfNoSpace,
    bool NeedsCheck,
    long LowWaterBlocks,
    bool HasUncommittedChanges)
{
    public override string ToString() =>
        $"{TransactionId} {UsedMetadataBlocks}/{TotalMetadataBlocks} {UsedDataBlocks}/{TotalDataBlocks} - " +
        $"{Mode switch { PoolMode.Write => "rw", PoolMode.OutOfDataSpace => "out_of_data_space", PoolMode.ReadOnly => "ro", _ => "Fail" }} " +
        $"discard_passdown {(ErrorIfNoSpace ? "error_if_no_space" : "queue_if_no_space")} {(NeedsCheck ? "needs_check" : "-")} {LowWaterBlocks}";
}
