using System.Buffers.Binary;
using ThinFast.IO;

namespace ThinFast.Metadata;

public sealed partial class ThinMetadata
{
    /// <summary>
    /// Makes the current transaction durable: device details, then the data space map, then the
    /// metadata space map (whose own write-out allocates blocks, so it iterates to a fixpoint),
    /// every dirty block, a flush, the superblock, and a second flush. The superblock is the
    /// only commit point; nothing the previous superblock reaches has been overwritten.
    /// </summary>
    public void Commit()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        WriteDeviceDetails();
        WriteDataSpaceMap();
        WriteMetadataSpaceMap();
        _cache.WriteDirty(b => _tm.Meta[b] != 0);
        _device.Flush();
        _sb.BlockNumber = 0;
        _sb.DataMappingRoot = _mappingRoot;
        _sb.DeviceDetailsRoot = _detailsRoot;
        _sb.DataSpaceMap = new SpaceMapRoot(_tm.Data.NrBlocks, _tm.Data.NrAllocated, _dataIndexRoot, _dataOverflowRoot);
        _sb.MetadataSpaceMap = new SpaceMapRoot(_tm.Meta.NrBlocks, _tm.Meta.NrAllocated, _metaIndexBlock, _metaOverflowRoot);
        _sb.MetadataNrBlocks = _tm.Meta.NrBlocks;
        _sb.Write(_superblockBuffer.GetSpan());
        _device.Write(0, _superblockBuffer.Memory);
        _device.Flush();
        _tm.EndTransaction();
        foreach (DeviceState st in _devices.Values)
        {
            st.TopPathShadowed = false;
            st.DetailsDirty = false;
        }
        _uncommitted = false;
        _cache.Trim();
    }

    /// <summary>Drops the uncommitted transaction and returns to the last committed state.</summary>
    public void Abort()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        LoadCommitted();
    }

    private void WriteDeviceDetails()
    {
        Span<byte> record = stackalloc byte[DeviceDetails.Size];
        Span<byte> old = stackalloc byte[DeviceDetails.Size];
        foreach (ulong id in _deviceIds)
        {
            DeviceState st = _devices[id];
            if (!st.DetailsDirty)
                continue;
            st.Details.Write(record);
            _detailsRoot = BTree.Insert(_tm, _detailsRoot, MetadataTree.DeviceDetails, id, record, old, out _);
        }
    }

    private void WriteDataSpaceMap()
    {
        CountTable data = _tm.Data;
        if (data.OverflowDirty || _dataOverflowRoot == 0)
        {
            if (_dataOverflowRoot != 0)
                BTree.DeleteSubtree(_tm, _dataOverflowRoot, MetadataTree.DataRefCounts);
            _dataOverflowRoot = BuildOverflowTree(data, MetadataTree.DataRefCounts);
            data.OverflowDirty = false;
        }
        bool relocated = false;
        for (int i = 0; i < data.BitmapCount; i++)
        {
            if (!data.IsBitmapDirty(i))
                continue;
            if (data.BitmapLocations[i] != 0)
                _tm.Meta.Decrement(data.BitmapLocations[i]);
            Span<byte> bitmap = _tm.NewBlock(MetadataFormat.BitmapSalt, out ulong loc);
            data.BitmapLocations[i] = loc;
            _dataEntries[i] = FillBitmap(bitmap, data, i, loc);
            data.SetBitmapDirty(i, false);
            relocated = true;
        }
        if (!relocated && _dataIndexRoot != 0)
            return;
        if (_dataIndexRoot != 0)
            BTree.DeleteSubtree(_tm, _dataIndexRoot, MetadataTree.DataSpaceMapIndex);
        var keys = new ulong[data.BitmapCount];
        var values = new byte[data.BitmapCount * IndexEntry.Size];
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = (ulong)i;
            _dataEntries[i].Write(values.AsSpan(i * IndexEntry.Size));
        }
        _dataIndexRoot = BTree.BulkBuild(_tm, MetadataTree.DataSpaceMapIndex, keys, values);
    }

    /// <summary>
    /// The metadata space map describes itself: relocating a bitmap frees one block and allocates
    /// another, which may dirty further bitmaps. Relocate each dirty bitmap once, repeat until no
    /// unrelocated dirty bitmap remains, and only then encode them, so the counts they hold are final.
    /// The overflow tree is unaffected by this loop because space-map blocks always have count 1.
    /// </summary>
    private void WriteMetadataSpaceMap()
    {
        CountTable meta = _tm.Meta;
        if (meta.OverflowDirty || _metaOverflowRoot == 0)
        {
            if (_metaOverflowRoot != 0)
                BTree.DeleteSubtree(_tm, _metaOverflowRoot, MetadataTree.MetadataRefCounts);
            _metaOverflowRoot = BuildOverflowTree(meta, MetadataTree.MetadataRefCounts);
            meta.OverflowDirty = false;
        }
        if (!meta.AnyBitmapDirty && _metaIndexBlock != 0)
            return;
        if (_metaIndexBlock != 0)
            meta.Decrement(_metaIndexBlock);
        _metaIndexBlock = _tm.AllocateMetadataBlock();
        var relocated = new bool[meta.BitmapCount];
        bool progress = true;
        while (progress)
        {
            progress = false;
            for (int i = 0; i < meta.BitmapCount; i++)
            {
                if (!meta.IsBitmapDirty(i) || relocated[i])
                    continue;
                if (meta.BitmapLocations[i] != 0)
                    meta.Decrement(meta.BitmapLocations[i]);
                meta.BitmapLocations[i] = _tm.AllocateMetadataBlock();
                relocated[i] = true;
                progress = true;
            }
        }
        for (int i = 0; i < meta.BitmapCount; i++)
        {
            if (!relocated[i])
                continue;
            ulong loc = meta.BitmapLocations[i];
            _metaEntries[i] = FillBitmap(_cache.Create(loc, MetadataFormat.BitmapSalt), meta, i, loc);
            meta.SetBitmapDirty(i, false);
        }
        Span<byte> index = _cache.Create(_metaIndexBlock, MetadataFormat.IndexSalt);
        for (int i = 0; i < meta.BitmapCount; i++)
            _metaEntries[i].Write(index.Slice(16 + IndexEntry.Size * i, IndexEntry.Size));
    }

    /// <summary>
    /// Encodes one bitmap. nr_free counts free entries up to nr_blocks (the thin_restore 0.9
    /// convention, which analyze.py also expects); none_free_before is the first free entry.
    /// </summary>
    private static IndexEntry FillBitmap(Span<byte> bitmap, CountTable table, int index, ulong location)
    {
        ulong first = (ulong)index * MetadataFormat.EntriesPerBitmap;
        ReadOnlySpan<uint> counts = table.Slice(first, MetadataFormat.EntriesPerBitmap);
        uint free = 0;
        int firstFree = -1;
        for (int j = 0; j < counts.Length; j++)
        {
            uint c = counts[j];
            if (c == 0)
            {
                free++;
                if (firstFree < 0) firstFree = j;
                continue;
            }
            MetadataFormat.WriteBitmapEntry(bitmap, j, c);
        }
        return new IndexEntry(location, free, firstFree < 0 ? (uint)counts.Length : (uint)firstFree);
    }

    private ulong BuildOverflowTree(CountTable table, MetadataTree tree)
    {
        var keys = new List<ulong>();
        var values = new List<byte>();
        Span<byte> v = stackalloc byte[4];
        for (ulong b = 0; b < table.NrBlocks; b++)
        {
            uint c = table[b];
            if (c < 3)
                continue;
            keys.Add(b);
            BinaryPrimitives.WriteUInt32LittleEndian(v, c);
            values.AddRange(v);
        }
        return BTree.BulkBuild(_tm, tree, keys.ToArray(), values.ToArray());
    }

    // ------------------------------------------------------------------ metadata snapshot

    /// <summary>
    /// Commits, then keeps a copy of the superblock (and a reference to its two trees) so that
    /// `thin_dump -m` can read a consistent view of the live pool. Committed again before returning.
    /// </summary>
    public void ReserveMetadataSnapshot()
    {
        if (_sb.HeldRoot != 0)
            throw new InvalidOperationException($"a metadata snapshot is already held at block {_sb.HeldRoot}");
        Commit();
        Span<byte> copy = _tm.NewBlock(MetadataFormat.SuperblockSalt, out ulong block);
        var snap = _sb with
        {
            BlockNumber = block,
            HeldRoot = 0,
            DataSpaceMap = default,
            MetadataSpaceMap = default,
        };
        snap.Write(copy);
        _tm.Meta.Increment(_mappingRoot);
        _tm.Meta.Increment(_detailsRoot);
        _sb.HeldRoot = block;
        _uncommitted = true;
        Commit();
    }

    /// <summary>Drops the held metadata snapshot and everything only it referenced; committed before returning.</summary>
    public void ReleaseMetadataSnapshot()
    {
        ulong held = _sb.HeldRoot;
        if (held == 0)
            throw new InvalidOperationException("no metadata snapshot is held");
        Superblock snap = ReadSuperblockAt(held, live: false);
        BTree.DeleteSubtree(_tm, snap.DataMappingRoot, MetadataTree.MappingTop);
        BTree.DeleteSubtree(_tm, snap.DeviceDetailsRoot, MetadataTree.DeviceDetails);
        _tm.Meta.Decrement(held);
        _sb.HeldRoot = 0;
        _uncommitted = true;
        Commit();
    }
}
