using System.Buffers;
using System.Collections.Concurrent;
using ThinFast.IO;

namespace ThinFast.Metadata;

/// <summary>What a block is expected to be when it is read; selects its validator.</summary>
internal enum BlockCheck
{
    Node,
    Bitmap,
    Index,
}

/// <summary>
/// 4 KiB metadata blocks in page-aligned native buffers (O_DIRECT-safe) over an <see cref="IBlockDevice"/>.
/// Readers may run concurrently with each other (misses included: the loser of a race drops its copy).
/// Blocks changed in the current transaction are dirty and pinned until <see cref="WriteDirty"/>;
/// clean blocks are evicted only by <see cref="Trim"/>, which the owner calls from writer context only,
/// so a span handed to a concurrent reader can never be freed under it.
/// </summary>
internal sealed unsafe class BlockCache : IDisposable
{
    internal sealed class Entry(NativeBuffer buffer)
    {
        public readonly NativeBuffer Buffer = buffer;
        public readonly byte* Pointer = buffer.Pointer;
        public int ValidatedAs = -1;
        public bool Dirty;
        public uint Salt;
        public Span<byte> Span => new(Pointer, MetadataFormat.BlockSize);
    }

    private readonly IBlockDevice _device;
    private readonly ConcurrentDictionary<ulong, Entry> _blocks = new();
    private readonly List<ulong> _dirty = new();
    private readonly int _capacity;
    private int _count;
    private NativeBuffer? _staging;

    /// <summary>Longest run of consecutive dirty blocks written with one request (256 KiB).</summary>
    public const int MaxRunBlocks = 64;

    public BlockCache(IBlockDevice device, int capacityBlocks)
    {
        _device = device;
        _capacity = capacityBlocks;
    }

    /// <summary>Blocks beyond this are pointers out of range.</summary>
    public ulong NrBlocks { get; set; }

    public ReadOnlySpan<byte> Read(ulong block, BlockCheck check, MetadataTree tree, int leafValueSize = 0)
    {
        if (!_blocks.TryGetValue(block, out Entry? e))
            e = Load(block, check, tree);
        int tag = (int)check << 8 | (int)tree;
        if (e.ValidatedAs != tag && !e.Dirty)
        {
            Validate(e.Span, block, check, tree, leafValueSize);
            e.ValidatedAs = tag;
        }
        return e.Span;
    }

    private Entry Load(ulong block, BlockCheck check, MetadataTree tree)
    {
        if (block == 0 || block >= NrBlocks)
            throw new MetadataCorruptException(block, KindOf(check), tree, MetadataFault.PointerOutOfRange,
                $"pointer to block {block} outside the metadata device (1..{NrBlocks - 1})");
        var buffer = new NativeBuffer(MetadataFormat.BlockSize);
        try
        {
            _device.Read((long)block * MetadataFormat.BlockSize, buffer.Memory);
        }
        catch
        {
            ((IDisposable)buffer).Dispose();
            throw;
        }
        var entry = new Entry(buffer);
        if (_blocks.TryAdd(block, entry))
        {
            Interlocked.Increment(ref _count);
            return entry;
        }
        ((IDisposable)buffer).Dispose();
        return _blocks[block];
    }

    /// <summary>
    /// Starts reads for the uncached children [start, end) of an internal node all at once and waits
    /// for them, so a cold walk costs one device round trip per node instead of one per child.
    /// Nothing is validated here (<see cref="Read"/> does that on first use), and a failed read is
    /// dropped, so <see cref="Read"/> reports it with the block's identity.
    /// </summary>
    public void PrefetchChildren(ReadOnlySpan<byte> node, int start, int end)
    {
        int misses = 0;
        for (int i = start; i < end; i++)
        {
            ulong b = Node.Value64(node, i);
            if (b != 0 && b < NrBlocks && !_blocks.ContainsKey(b))
                misses++;
        }
        // Overlapping reads only pay off on a device that completes them asynchronously by
        // itself. A synchronous device (the portable backend pools metadata uses) would run each
        // on a thread-pool thread while this one blocks waiting: starvation under load.
        if (misses < 2 || _device is ISynchronousBlockDevice)
            return;
        var blocks = ArrayPool<ulong>.Shared.Rent(misses);
        var buffers = ArrayPool<NativeBuffer?>.Shared.Rent(misses);
        var reads = ArrayPool<ValueTask>.Shared.Rent(misses);
        int n = 0;
        try
        {
            for (int i = start; i < end && n < misses; i++)
            {
                ulong b = Node.Value64(node, i);
                if (b == 0 || b >= NrBlocks || _blocks.ContainsKey(b))
                    continue;
                var buffer = new NativeBuffer(MetadataFormat.BlockSize);
                try
                {
                    reads[n] = _device.ReadAsync((long)b * MetadataFormat.BlockSize, buffer.Memory);
                }
                catch (BlockDeviceException)
                {
                    ((IDisposable)buffer).Dispose();
                    continue;
                }
                blocks[n] = b;
                buffers[n] = buffer;
                n++;
            }
            for (int k = 0; k < n; k++)
            {
                bool ok = true;
                try
                {
                    if (!reads[k].IsCompletedSuccessfully)
                        reads[k].AsTask().GetAwaiter().GetResult();
                }
                catch (BlockDeviceException)
                {
                    ok = false;
                }
                if (ok && _blocks.TryAdd(blocks[k], new Entry(buffers[k]!)))
                {
                    Interlocked.Increment(ref _count);
                    buffers[k] = null;
                }
            }
        }
        finally
        {
            for (int k = 0; k < n; k++)
                if (buffers[k] != null)
                    ((IDisposable)buffers[k]!).Dispose();
            ArrayPool<ulong>.Shared.Return(blocks);
            ArrayPool<NativeBuffer?>.Shared.Return(buffers, clearArray: true);
            ArrayPool<ValueTask>.Shared.Return(reads, clearArray: true);
        }
    }

    /// <summary>A zeroed block that this transaction now owns; it is written at the next commit.</summary>
    public Span<byte> Create(ulong block, uint salt)
    {
        if (_blocks.TryGetValue(block, out Entry? e))
        {
            e.Span.Clear();
        }
        else
        {
            e = new Entry(new NativeBuffer(MetadataFormat.BlockSize));
            _blocks[block] = e;
            _count++;
        }
        if (!e.Dirty)
        {
            e.Dirty = true;
            _dirty.Add(block);
        }
        e.Salt = salt;
        e.ValidatedAs = -1;
        return e.Span;
    }

    /// <summary>A block created by <see cref="Create"/> in this transaction, for further changes.</summary>
    public Span<byte> Writable(ulong block)
    {
        Entry e = _blocks[block];
        if (!e.Dirty)
            throw new InvalidOperationException($"metadata block {block} is not owned by this transaction");
        return e.Span;
    }

    /// <summary>
    /// Seals (blocknr + checksum) and writes every dirty block still in use, in block order.
    /// Runs of consecutive blocks (the allocator hands them out in order) go out as one write of up
    /// to <see cref="MaxRunBlocks"/> blocks through an aligned staging buffer.
    /// </summary>
    public void WriteDirty(Func<ulong, bool> inUse)
    {
        _dirty.Sort();
        int runLength = 0;
        ulong runStart = 0;
        foreach (ulong block in _dirty)
        {
            Entry e = _blocks[block];
            e.Dirty = false;
            if (!inUse(block))
            {
                _blocks.TryRemove(block, out _);
                _count--;
                ((IDisposable)e.Buffer).Dispose();
                continue;
            }
            MetadataFormat.Seal(e.Span, block, e.Salt);
            if (runLength > 0 && (block != runStart + (ulong)runLength || runLength == MaxRunBlocks))
            {
                WriteRun(runStart, runLength);
                runLength = 0;
            }
            if (runLength == 0)
                runStart = block;
            _staging ??= new NativeBuffer(MaxRunBlocks * MetadataFormat.BlockSize);
            e.Span.CopyTo(_staging.GetSpan()[(runLength * MetadataFormat.BlockSize)..]);
            runLength++;
        }
        if (runLength > 0)
            WriteRun(runStart, runLength);
        _dirty.Clear();
    }

    private void WriteRun(ulong first, int blocks) =>
        _device.Write((long)first * MetadataFormat.BlockSize, _staging!.Memory[..(blocks * MetadataFormat.BlockSize)]);

    /// <summary>Drops every block (used by abort and reopen). Writer context only.</summary>
    public void Clear()
    {
        foreach (var kv in _blocks)
            ((IDisposable)kv.Value.Buffer).Dispose();
        _blocks.Clear();
        _dirty.Clear();
        _count = 0;
    }

    /// <summary>Evicts clean blocks down to 3/4 of capacity. Writer context only.</summary>
    public void Trim()
    {
        if (_count <= _capacity)
            return;
        int target = _capacity * 3 / 4;
        foreach (var kv in _blocks)
        {
            if (_count <= target)
                break;
            if (kv.Value.Dirty)
                continue;
            if (_blocks.TryRemove(kv.Key, out Entry? e))
            {
                _count--;
                ((IDisposable)e.Buffer).Dispose();
            }
        }
    }

    public void Dispose()
    {
        Clear();
        if (_staging != null)
            ((IDisposable)_staging).Dispose();
        _staging = null;
    }

    private static MetadataBlockKind KindOf(BlockCheck check) => check switch
    {
        BlockCheck.Node => MetadataBlockKind.BTreeNode,
        BlockCheck.Bitmap => MetadataBlockKind.Bitmap,
        _ => MetadataBlockKind.Index,
    };

    internal static void Validate(ReadOnlySpan<byte> b, ulong block, BlockCheck check, MetadataTree tree, int leafValueSize)
    {
        MetadataBlockKind kind = KindOf(check);
        uint salt = check switch
        {
            BlockCheck.Node => MetadataFormat.NodeSalt,
            BlockCheck.Bitmap => MetadataFormat.BitmapSalt,
            _ => MetadataFormat.IndexSalt,
        };
        uint stored = MetadataFormat.StoredChecksum(b), computed = MetadataFormat.ComputeChecksum(b, salt);
        if (stored != computed)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.BadChecksum,
                $"stored checksum {stored:x8}, computed {computed:x8}");
        ulong self = MetadataFormat.StoredBlockNumber(b);
        if (self != block)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.WrongBlockNumber,
                $"block claims to be block {self}");
        if (check != BlockCheck.Node)
            return;
        uint flags = Node.Flags(b);
        if (flags != Node.InternalFlag && flags != Node.LeafFlag)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.BadFlags, $"node flags {flags} (want 1 = internal or 2 = leaf)");
        int valueSize = Node.ValueSize(b);
        int expectedValueSize = flags == Node.InternalFlag ? 8 : leafValueSize;
        if (valueSize != expectedValueSize)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.BadValueSize, $"value size {valueSize}, expected {expectedValueSize}");
        int max = Node.MaxEntries(b);
        if (max <= 0 || max % 3 != 0 || Node.HeaderSize + (long)max * (8 + valueSize) > MetadataFormat.BlockSize)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.BadMaxEntries, $"max_entries {max} for value size {valueSize}");
        int nr = Node.NrEntries(b);
        if (nr < 0 || nr > max)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.TooManyEntries, $"nr_entries {nr} > max_entries {max}");
        if (flags == Node.InternalFlag && nr == 0)
            throw new MetadataCorruptException(block, kind, tree, MetadataFault.TooFewEntries, "internal node with no entries");
        for (int i = 1; i < nr; i++)
            if (Node.Key(b, i) <= Node.Key(b, i - 1))
                throw new MetadataCorruptException(block, kind, tree, MetadataFault.KeysOutOfOrder,
                    $"key[{i}] = {Node.Key(b, i)} after key[{i - 1}] = {Node.Key(b, i - 1)}");
    }
}
