namespace ThinFast.Metadata;

/// <summary>
/// In-memory reference counts of one space map (metadata or data), loaded from the on-disk bitmaps
/// and overflow tree at open and written back, bitmap by dirty bitmap, at commit.
/// Blocks whose count drops to 0 are "pinned" until the commit: the committed metadata may still
/// reference them, so they must not be handed out again in this transaction.
/// </summary>
internal sealed class CountTable
{
    private uint[] _counts;
    private ulong[] _pinned;
    private readonly List<ulong> _pinnedList = new();
    private bool[] _dirtyBitmaps;
    private ulong _hint;

    public CountTable(ulong nrBlocks)
    {
        if (nrBlocks > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(nrBlocks), nrBlocks, "space maps above 2^31 blocks are not supported");
        NrBlocks = nrBlocks;
        _counts = new uint[nrBlocks];
        _pinned = new ulong[(nrBlocks + 63) / 64];
        _dirtyBitmaps = new bool[MetadataFormat.BitmapCount(nrBlocks)];
        BitmapLocations = new ulong[_dirtyBitmaps.Length];
    }

    public ulong NrBlocks { get; private set; }
    public ulong NrAllocated { get; private set; }
    public ulong[] BitmapLocations { get; private set; }
    public int BitmapCount => _dirtyBitmaps.Length;

    /// <summary>Some count at or above 3 changed, so the overflow tree must be rewritten.</summary>
    public bool OverflowDirty { get; set; }

    public ulong Free => NrBlocks - NrAllocated;

    public uint this[ulong block] => _counts[block];

    public bool IsBitmapDirty(int i) => _dirtyBitmaps[i];
    public void SetBitmapDirty(int i, bool dirty) => _dirtyBitmaps[i] = dirty;
    public bool AnyBitmapDirty => Array.IndexOf(_dirtyBitmaps, true) >= 0;

    /// <summary>Sets a count while loading from disk (no dirtiness, no pinning).</summary>
    public void Load(ulong block, uint count)
    {
        if (_counts[block] == 0 && count != 0) NrAllocated++;
        else if (_counts[block] != 0 && count == 0) NrAllocated--;
        _counts[block] = count;
    }

    public uint Increment(ulong block)
    {
        CheckRange(block);
        uint c = _counts[block];
        if (c == 0) NrAllocated++;
        if (c >= 2) OverflowDirty = true;
        _counts[block] = c + 1;
        _dirtyBitmaps[block / MetadataFormat.EntriesPerBitmap] = true;
        return c + 1;
    }

    public uint Decrement(ulong block)
    {
        CheckRange(block);
        uint c = _counts[block];
        if (c == 0)
            throw new MetadataCorruptException(block, MetadataBlockKind.Bitmap, MetadataTree.None, MetadataFault.Inconsistent,
                $"reference count of block {block} would drop below zero: the space map and the trees disagree");
        if (c >= 3) OverflowDirty = true;
        _counts[block] = c - 1;
        _dirtyBitmaps[block / MetadataFormat.EntriesPerBitmap] = true;
        if (c == 1)
        {
            NrAllocated--;
            if ((_pinned[block >> 6] & (1UL << (int)(block & 63))) == 0)
            {
                _pinned[block >> 6] |= 1UL << (int)(block & 63);
                _pinnedList.Add(block);
            }
        }
        return c - 1;
    }

    /// <summary>A block free now and free in the committed state, with its count set to 1.</summary>
    public bool TryAllocate(out ulong block)
    {
        ulong n = NrBlocks;
        for (ulong scanned = 0, b = _hint; scanned < n; scanned++, b++)
        {
            if (b >= n) b = 0;
            if (_counts[b] == 0 && (_pinned[b >> 6] & (1UL << (int)(b & 63))) == 0)
            {
                Increment(b);
                _hint = b + 1;
                block = b;
                return true;
            }
        }
        block = 0;
        return false;
    }

    /// <summary>
    /// The committed state now equals the current one: pinned blocks become allocatable. The search
    /// hint is kept, so allocation continues where it stopped instead of rescanning the used prefix
    /// after every commit; freed blocks behind it are found when the search wraps.
    /// </summary>
    public void EndTransaction()
    {
        foreach (ulong b in _pinnedList)
            _pinned[b >> 6] &= ~(1UL << (int)(b & 63));
        _pinnedList.Clear();
    }

    public void Grow(ulong newNrBlocks)
    {
        if (newNrBlocks < NrBlocks)
            throw new ArgumentOutOfRangeException(nameof(newNrBlocks), newNrBlocks, $"space maps only grow (now {NrBlocks})");
        if (newNrBlocks > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(newNrBlocks), newNrBlocks, "space maps above 2^31 blocks are not supported");
        int oldBitmaps = _dirtyBitmaps.Length;
        Array.Resize(ref _counts, (int)newNrBlocks);
        Array.Resize(ref _pinned, (int)((newNrBlocks + 63) / 64));
        int newBitmaps = MetadataFormat.BitmapCount(newNrBlocks);
        var dirty = _dirtyBitmaps;
        Array.Resize(ref dirty, newBitmaps);
        var locations = BitmapLocations;
        Array.Resize(ref locations, newBitmaps);
        _dirtyBitmaps = dirty;
        BitmapLocations = locations;
        // The last old bitmap gains entries; it and every new one must be written.
        for (int i = Math.Max(0, oldBitmaps - 1); i < newBitmaps; i++)
            _dirtyBitmaps[i] = true;
        NrBlocks = newNrBlocks;
    }

    /// <summary>Counts of blocks [first, first+count), clipped to NrBlocks.</summary>
    public ReadOnlySpan<uint> Slice(ulong first, int count) =>
        _counts.AsSpan((int)first, (int)Math.Min((ulong)count, NrBlocks - first));

    private void CheckRange(ulong block)
    {
        if (block >= NrBlocks)
            throw new ArgumentOutOfRangeException(nameof(block), block, $"block beyond the space map ({NrBlocks} blocks)");
    }
}
