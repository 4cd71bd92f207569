using System.Buffers.Binary;

namespace ThinFast.Metadata;

/// <summary>What <see cref="ThinMetadata.ReclaimLeakedDataBlocks"/> found: blocks the space map
/// counted although no mapping reached them (now free), and surplus references on blocks that
/// are still mapped (now corrected).</summary>
public readonly record struct LeakReclaim(ulong FreedBlocks, ulong ExcessReferences);

public sealed partial class ThinMetadata
{
    /// <summary>
    /// Recounts every data block's references from the mapping trees (the live ones and a held
    /// metadata snapshot's) and lowers any count the space map holds above that. A crash between
    /// committing an allocation and committing its mapping leaves such a leak: the kernel's
    /// dm-thin does (thin_check calls it non-fatal), and so would an older ThinFast. A block is
    /// counted once per distinct leaf that holds it, as dm-thin counts: a leaf shared by a
    /// snapshot holds one reference for both devices.
    /// A count <em>below</em> the trees' is damage, not a leak (the block could be handed out
    /// while still mapped), and is refused with <see cref="MetadataCorruptException"/>.
    /// Call on a freshly opened transaction; the changes are committed by the caller.
    /// </summary>
    public LeakReclaim ReclaimLeakedDataBlocks()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_uncommitted)
            throw new InvalidOperationException("leaks are reclaimed before anything else changes in the transaction");
        var referenced = new uint[_tm.Data.NrBlocks];
        var visitedLeaves = new HashSet<ulong>();
        CountDataReferences(_mappingRoot, referenced, visitedLeaves);
        if (_sb.HeldRoot != 0)
            CountDataReferences(ReadSuperblockAt(_sb.HeldRoot, live: false).DataMappingRoot, referenced, visitedLeaves);

        ulong freed = 0, excess = 0;
        for (ulong b = 0; b < (ulong)referenced.Length; b++)
        {
            uint onDisk = _tm.Data[b], want = referenced[b];
            if (onDisk < want)
                throw new MetadataCorruptException(b, MetadataBlockKind.Bitmap, MetadataTree.DataRefCounts, MetadataFault.Inconsistent,
                    $"the space map counts data block {b} {onDisk} times but the mappings reference it {want} times: it could be handed out while mapped");
            if (onDisk == want)
                continue;
            excess += onDisk - want;
            if (want == 0)
                freed++;
            _tm.Data.LowerTo(b, want);
            _uncommitted = true;
        }
        return new LeakReclaim(freed, excess);
    }

    private void CountDataReferences(ulong topRoot, uint[] referenced, HashSet<ulong> visitedLeaves)
    {
        var top = new EntryCollector();
        BTree.Walk(_tm, topRoot, MetadataTree.MappingTop, 0, ulong.MaxValue, ref top);
        byte[] roots = top.ValueArray();
        for (int i = 0; i < top.Keys.Count; i++)
        {
            ulong root = BinaryPrimitives.ReadUInt64LittleEndian(roots.AsSpan(i * 8, 8));
            CountSubtree(_tm.CheckedMetadataPointer(topRoot, MetadataTree.MappingTop, root), referenced, visitedLeaves, 0);
        }
    }

    // Each node is visited once however many devices share it, so shared leaves count once.
    private void CountSubtree(ulong node, uint[] referenced, HashSet<ulong> visited, int depth)
    {
        if (depth > MetadataFormat.MaxTreeDepth)
            throw new MetadataCorruptException(node, MetadataBlockKind.BTreeNode, MetadataTree.MappingBottom, MetadataFault.Inconsistent,
                $"mapping tree deeper than {MetadataFormat.MaxTreeDepth} levels (a cycle?)");
        if (!visited.Add(node))
            return;
        ReadOnlySpan<byte> n = _tm.Read(node, MetadataTree.MappingBottom);
        int nr = Node.NrEntries(n);
        if (Node.IsLeaf(n))
        {
            for (int i = 0; i < nr; i++)
                referenced[_tm.CheckedDataBlock(node, Node.Value64(n, i))]++;
            return;
        }
        // Children are collected first: the span may not outlive the reads of the recursion.
        var children = new ulong[nr];
        for (int i = 0; i < nr; i++)
            children[i] = _tm.CheckedMetadataPointer(node, MetadataTree.MappingBottom, Node.Value64(n, i));
        foreach (ulong child in children)
            CountSubtree(child, referenced, visited, depth + 1);
    }
}
