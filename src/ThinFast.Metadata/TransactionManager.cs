namespace ThinFast.Metadata;

/// <summary>
/// Shadowing (copy-on-write) over the block cache and the two count tables, following the
/// kernel's rule: a node is changed in place only if this transaction created it and nothing
/// else references it; otherwise it is copied, and when the original was shared, everything
/// the copy points at gains a reference.
/// </summary>
internal sealed class TransactionManager
{
    private ulong[] _owned;
    private readonly List<ulong> _ownedList = new();

    public TransactionManager(BlockCache cache, CountTable meta, CountTable data)
    {
        Cache = cache;
        Meta = meta;
        Data = data;
        _owned = new ulong[(meta.NrBlocks + 63) / 64];
    }

    public BlockCache Cache { get; }
    public CountTable Meta { get; }
    public CountTable Data { get; }

    public bool IsOwned(ulong b) => (_owned[b >> 6] & (1UL << (int)(b & 63))) != 0;

    public ulong AllocateMetadataBlock()
    {
        if (!Meta.TryAllocate(out ulong b))
            throw new MetadataSpaceExhaustedException(
                $"metadata device full: {Meta.NrBlocks} blocks, none free outside the committed state; commit or grow the metadata device");
        _owned[b >> 6] |= 1UL << (int)(b & 63);
        _ownedList.Add(b);
        return b;
    }

    public Span<byte> NewBlock(uint salt, out ulong block)
    {
        block = AllocateMetadataBlock();
        return Cache.Create(block, salt);
    }

    public Span<byte> NewNode(bool leaf, int valueSize, out ulong block)
    {
        Span<byte> n = NewBlock(MetadataFormat.NodeSalt, out block);
        Node.Init(n, leaf, valueSize);
        return n;
    }

    public ReadOnlySpan<byte> Read(ulong block, MetadataTree tree) =>
        Cache.Read(block, BlockCheck.Node, tree, BTree.LeafValueSize(tree));

    public Span<byte> Writable(ulong block) => Cache.Writable(block);

    /// <summary>The block to change instead of <paramref name="block"/>: itself when exclusive to this transaction, else a copy.</summary>
    public ulong Shadow(ulong block, MetadataTree tree)
    {
        if (IsOwned(block) && Meta[block] == 1)
            return block;
        ReadOnlySpan<byte> source = Read(block, tree);
        Span<byte> copy = NewBlock(MetadataFormat.NodeSalt, out ulong shadow);
        source.CopyTo(copy);
        uint count = Meta[block];
        Meta.Decrement(block);
        if (count > 1)
            IncrementChildren(block, copy, tree);
        return shadow;
    }

    private void IncrementChildren(ulong original, ReadOnlySpan<byte> n, MetadataTree tree)
    {
        int nr = Node.NrEntries(n);
        if (!Node.IsLeaf(n) || tree == MetadataTree.MappingTop)
        {
            for (int i = 0; i < nr; i++)
                Meta.Increment(CheckedMetadataPointer(original, tree, Node.Value64(n, i)));
        }
        else if (tree == MetadataTree.MappingBottom)
        {
            for (int i = 0; i < nr; i++)
                Data.Increment(CheckedDataBlock(original, Node.Value64(n, i)));
        }
    }

    public ulong CheckedMetadataPointer(ulong node, MetadataTree tree, ulong pointer) =>
        pointer != 0 && pointer < Meta.NrBlocks ? pointer
            : throw new MetadataCorruptException(node, MetadataBlockKind.BTreeNode, tree, MetadataFault.PointerOutOfRange,
                $"points to block {pointer}, outside the metadata device (1..{Meta.NrBlocks - 1})");

    public ulong CheckedDataBlock(ulong leaf, ulong packed)
    {
        ulong block = MetadataFormat.MappingBlock(packed);
        return block < Data.NrBlocks ? block
            : throw new MetadataCorruptException(leaf, MetadataBlockKind.BTreeNode, MetadataTree.MappingBottom, MetadataFault.PointerOutOfRange,
                $"maps data block {block}, beyond the data device ({Data.NrBlocks} blocks)");
    }

    public void GrowMetadata(ulong newNrBlocks)
    {
        Meta.Grow(newNrBlocks);
        Array.Resize(ref _owned, (int)((newNrBlocks + 63) / 64));
        Cache.NrBlocks = newNrBlocks;
    }

    public void EndTransaction()
    {
        foreach (ulong b in _ownedList)
            _owned[b >> 6] &= ~(1UL << (int)(b & 63));
        _ownedList.Clear();
        Meta.EndTransaction();
        Data.EndTransaction();
    }
}
