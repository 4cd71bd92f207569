namespace ThinFast.Metadata;

/// <summary>
/// In-memory reference counts of one space map (metadata or data), loaded from the on-disk bitmaps
/// and overflow tree at open and written back, bitmap by dirty bitmap, at commit.
/// Blocks whose count drops to 0 are "pinned" until the commit: the committed metadata may still
/// reference them, so they must not be handed out again in this transaction.
/// Two more in-memory states exist only for the data space map, and neither is ever written out:
/// a <em>reserved</em> block is handed to a writer that is still filling it (its count stays 0
/// until the mapping is inserted, so a commit meanwhile writes it out free and a crash leaks
/// nothing); a <em>held</em> block is free but waits for its discard to reach the data device, so
/// nobody can write it before a late discard lands on it.
/// </summary>
internal sealed class CountTable
{
    private uint[] _counts;
    private ulong[] _pinned;
    private readonly List<ulong> _pinnedList = new();
    private ulong[] _reserved;
    private ulong[] _held;
    // Blocks with count 0 that cannot be handed out: pinned, held or reserved. Kept so that "no
    // space" is known without scanning the table.
    private ulong _unavailableFree;
    private bool[] _dirtyBitmaps;
    private ulong _hint;

    public CountTable(ulong nrBlocks)
    {
        if (nrBlocks > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(nrBlocks), nrBlocks, "space maps above 2^31 blocks are not supported");
        NrBlocks = nrBlocks;
        _counts = new uint[nrBlocks];
        _pinned = new ulong[(nrBlocks + 63) / 64];
        _reserved = new ulong[_pinned.Length];
        _held = new ulong[_pinned.Length];
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

    /// <summary>Blocks reserved by writers still filling them (not yet counted as allocated).</summary>
    public ulong Reserved { get; private set; }

    /// <summary>Blocks that can be handed out now: free, and neither pinned, held nor reserved.</summary>
    public ulong Allocatable => Free - _unavailableFree;

    private static bool Test(ulong[] bits, ulong b) => (bits[b >> 6] & (1UL << (int)(b & 63))) != 0;
    private static void Set(ulong[] bits, ulong b) => bits[b >> 6] |= 1UL << (int)(b & 63);
    private static void Clear(ulong[] bits, ulong b) => bits[b >> 6] &= ~(1UL << (int)(b & 63));

    private bool IsUnavailable(ulong b) => Test(_pinned, b) || Test(_held, b) || Test(_reserved, b);

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
        if (c == 0)
        {
            NrAllocated++;
            if (IsUnavailable(block))
                _unavailableFree--;
        }
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
            if (!Test(_pinned, block))
            {
                if (!Test(_held, block) && !Test(_reserved, block))
                    _unavailableFree++;
                Set(_pinned, block);
                _pinnedList.Add(block);
            }
        }
        return c - 1;
    }

    /// <summary>Lowers a block's count to <paramref name="target"/>, as that many
    /// <see cref="Decrement"/> calls would, in one step: a damaged count can be billions.</summary>
    public void LowerTo(ulong block, uint target)
    {
        CheckRange(block);
        uint c = _counts[block];
        if (target >= c)
            throw new ArgumentOutOfRangeException(nameof(target), target, $"block {block}'s count is {c}");
        if (c > 1)
        {
            if (c >= 3) OverflowDirty = true;
            _counts[block] = Math.Max(target, 1);
            _dirtyBitmaps[block / MetadataFormat.EntriesPerBitmap] = true;
        }
        if (target == 0)
            Decrement(block);
    }

    /// <summary>A block free now and free in the committed state, with its count set to 1.</summary>
    public bool TryAllocate(out ulong block)
    {
        if (!TryFindAllocatable(out block))
            return false;
        Increment(block);
        return true;
    }

    /// <summary>A block free now and free in the committed state, set aside for a writer: its
    /// count stays 0 (it is written out free) until <see cref="ConsumeReservation"/>.</summary>
    public bool TryReserve(out ulong block)
    {
        if (!TryFindAllocatable(out block))
            return false;
        Set(_reserved, block);
        Reserved++;
        _unavailableFree++;
        return true;
    }

    public bool IsReserved(ulong block) => block < NrBlocks && Test(_reserved, block);

    /// <summary>Turns a reservation into a reference (count 1): its mapping is being inserted.</summary>
    public void ConsumeReservation(ulong block)
    {
        DropReservation(block);
        _unavailableFree--;
        Increment(block);
    }

    /// <summary>Gives a reserved block back: the write that reserved it failed.</summary>
    public void CancelReservation(ulong block)
    {
        DropReservation(block);
        if (!Test(_pinned, block) && !Test(_held, block))
            _unavailableFree--;
    }

    private void DropReservation(ulong block)
    {
        CheckRange(block);
        if (!Test(_reserved, block))
            throw new InvalidOperationException($"data block {block} is not reserved");
        Clear(_reserved, block);
        Reserved--;
    }

    /// <summary>Keeps a free block from being handed out, also after the commit, until
    /// <see cref="ReleaseHeld"/> (its discard is on its way to the data device).</summary>
    public void Hold(ulong block)
    {
        CheckRange(block);
        if (_counts[block] != 0)
            throw new InvalidOperationException($"data block {block} is still referenced ({_counts[block]}) and cannot be held");
        if (Test(_held, block))
            return;
        if (!Test(_pinned, block) && !Test(_reserved, block))
            _unavailableFree++;
        Set(_held, block);
    }

    public void ReleaseHeld(ulong block)
    {
        CheckRange(block);
        if (!Test(_held, block))
            return;
        Clear(_held, block);
        if (_counts[block] == 0 && !Test(_pinned, block) && !Test(_reserved, block))
            _unavailableFree--;
    }

    /// <summary>Entries the allocator has looked at, for tests that the search stays cheap: no
    /// scan when nothing is allocatable, and no rescan of the used prefix.</summary>
    internal long EntriesScanned { get; private set; }

    private bool TryFindAllocatable(out ulong block)
    {
        // The free count says at once when there is nothing: no scan of the table under the
        // caller's exclusive lock just to learn the pool is full.
        ulong n = NrBlocks;
        if (Allocatable > 0)
        {
            for (ulong scanned = 0, b = _hint; scanned < n; scanned++, b++)
            {
                if (b >= n) b = 0;
                if (_counts[b] == 0 && !IsUnavailable(b))
                {
                    _hint = b + 1;
                    EntriesScanned += (long)scanned + 1;
                    block = b;
                    return true;
                }
            }
            EntriesScanned += (long)n;
        }
        block = 0;
        return false;
    }

    /// <summary>
    /// The committed state now equals the current one: pinned blocks become allocatable (unless
    /// held). The search hint is kept, so allocation continues where it stopped instead of
    /// rescanning the used prefix after every commit; freed blocks behind it are found when the
    /// search wraps.
    /// </summary>
    public void EndTransaction()
    {
        foreach (ulong b in _pinnedList)
        {
            Clear(_pinned, b);
            if (_counts[b] == 0 && !Test(_held, b) && !Test(_reserved, b))
                _unavailableFree--;
        }
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
        Array.Resize(ref _reserved, _pinned.Length);
        Array.Resize(ref _held, _pinned.Length);
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
