using System.Buffers.Binary;
using ThinFast.IO;

namespace ThinFast.Metadata;

/// <summary>A mapping of one virtual block. Shared is dm-thin's time test: the device was snapshotted after the mapping was made.</summary>
public readonly record struct BlockMapping(ulong DataBlock, uint Time, bool Shared);

/// <summary>A run of consecutive virtual blocks mapped to consecutive data blocks with one time stamp.</summary>
public readonly record struct MappedRange(ulong VirtualBlock, ulong DataBlock, ulong Length, uint Time);

/// <summary>
/// dm-thin pool metadata: thin devices, their block mappings and both space maps, in the kernel's
/// on-disk format, changed in transactions that become durable at <see cref="Commit"/>.
/// Mutating calls must be serialised by the caller; read-only calls may run concurrently with each
/// other while no mutation is in progress.
/// </summary>
public sealed partial class ThinMetadata : IDisposable
{
    private sealed class DeviceState(ulong root, DeviceDetails details)
    {
        public ulong Root = root;
        public DeviceDetails Details = details;
        public bool TopPathShadowed;
        public bool DetailsDirty;
    }

    private const int DefaultCacheBlocks = 16384;

    private readonly IBlockDevice _device;
    private readonly BlockCache _cache;
    private readonly NativeBuffer _superblockBuffer = new(MetadataFormat.BlockSize);
    private TransactionManager _tm = null!;
    private Superblock _sb = new();
    private ulong _mappingRoot, _detailsRoot;
    private ulong _metaIndexBlock, _metaOverflowRoot, _dataIndexRoot, _dataOverflowRoot;
    private IndexEntry[] _metaEntries = [], _dataEntries = [];
    private Dictionary<ulong, DeviceState> _devices = new();
    private ulong[] _deviceIds = [];
    private bool _uncommitted;
    private bool _disposed;

    private ThinMetadata(IBlockDevice device)
    {
        _device = device;
        _cache = new BlockCache(device, DefaultCacheBlocks);
    }

    public uint DataBlockSizeSectors => _sb.DataBlockSize;
    public ulong DataBlockCount => _tm.Data.NrBlocks;
    /// <summary>Data blocks neither referenced nor reserved by a writer filling them.</summary>
    public ulong FreeDataBlocks => _tm.Data.Free - _tm.Data.Reserved;
    /// <summary>Data blocks <see cref="TryAllocateDataBlock"/> can hand out now: free blocks other
    /// than those freed in the open transaction and those held for a discard.</summary>
    public ulong AllocatableDataBlocks => _tm.Data.Allocatable;
    /// <summary>Data blocks reserved by <see cref="TryAllocateDataBlock"/> and not yet mapped.</summary>
    public ulong ReservedDataBlocks => _tm.Data.Reserved;

    internal long DataEntriesScanned => _tm.Data.EntriesScanned;
    public ulong MetadataBlockCount => _tm.Meta.NrBlocks;
    public ulong FreeMetadataBlocks => _tm.Meta.Free;
    public ulong TransactionId => _sb.TransactionId;
    public uint Time => _sb.Time;
    public uint Version => _sb.Version;
    public bool NeedsCheck => (_sb.Flags & Superblock.NeedsCheckFlag) != 0;
    public bool HasUncommittedChanges => _uncommitted;
    public ulong MetadataSnapshotBlock => _sb.HeldRoot;
    public IReadOnlyList<ulong> DeviceIds => _deviceIds;

    // ------------------------------------------------------------------ format / open

    public static ThinMetadata Format(IBlockDevice metadata, uint dataBlockSizeSectors, ulong dataBlockCount)
    {
        if (dataBlockSizeSectors < 128 || dataBlockSizeSectors > 2097152 || dataBlockSizeSectors % 128 != 0)
            throw new ArgumentOutOfRangeException(nameof(dataBlockSizeSectors), dataBlockSizeSectors,
                "data block size must be a multiple of 128 sectors (64 KiB) between 128 and 2097152");
        // dm-thin allows 2^40 - 1; the in-memory space maps stop at 2^31 - 1.
        if (dataBlockCount == 0 || dataBlockCount > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(dataBlockCount), dataBlockCount, "data block count must be in 1 .. 2^31-1");
        ulong nrMeta = Math.Min((ulong)metadata.Length / MetadataFormat.BlockSize, MetadataFormat.MaxMetadataBlocks);
        if (nrMeta < 16)
            throw new ArgumentException($"{metadata.Name}: metadata device of {metadata.Length} bytes is too small (at least 64 KiB)", nameof(metadata));
        // Each data bitmap takes a metadata block; refused here rather than after allocating the
        // in-memory counts (4 bytes a data block) that a commit could never write out.
        if ((ulong)MetadataFormat.BitmapCount(dataBlockCount) > nrMeta)
            throw new ArgumentException($"{metadata.Name}: metadata device of {metadata.Length} bytes is too small for {dataBlockCount} data blocks", nameof(metadata));
        var md = new ThinMetadata(metadata);
        try
        {
            md._sb = new Superblock { Version = 2, DataBlockSize = dataBlockSizeSectors, MetadataNrBlocks = nrMeta };
            md.InitialiseEmpty(nrMeta, dataBlockCount);
            md.Commit();
            return md;
        }
        catch
        {
            md.Dispose();
            throw;
        }
    }

    private void InitialiseEmpty(ulong nrMeta, ulong dataBlockCount)
    {
        var meta = new CountTable(nrMeta);
        var data = new CountTable(dataBlockCount);
        meta.Load(0, 1);
        _cache.Clear();
        _cache.NrBlocks = nrMeta;
        _tm = new TransactionManager(_cache, meta, data);
        for (int i = 0; i < meta.BitmapCount; i++) meta.SetBitmapDirty(i, true);
        for (int i = 0; i < data.BitmapCount; i++) data.SetBitmapDirty(i, true);
        _metaEntries = new IndexEntry[meta.BitmapCount];
        _dataEntries = new IndexEntry[data.BitmapCount];
        _metaIndexBlock = _metaOverflowRoot = _dataIndexRoot = _dataOverflowRoot = 0;
        _mappingRoot = BTree.CreateEmpty(_tm, MetadataTree.MappingTop);
        _detailsRoot = BTree.CreateEmpty(_tm, MetadataTree.DeviceDetails);
        _devices = new Dictionary<ulong, DeviceState>();
        _deviceIds = [];
        _uncommitted = true;
    }

    public static ThinMetadata Open(IBlockDevice metadata)
    {
        var md = new ThinMetadata(metadata);
        try
        {
            md.LoadCommitted();
            return md;
        }
        catch
        {
            md.Dispose();
            throw;
        }
    }

    private Superblock ReadSuperblockAt(ulong block, bool live)
    {
        // Compared in blocks: a held root read from a damaged superblock can be any 64-bit
        // number, and its byte offset would overflow.
        if (block >= (ulong)_device.Length / MetadataFormat.BlockSize)
            throw new MetadataCorruptException(block, MetadataBlockKind.Superblock, MetadataTree.None, MetadataFault.PointerOutOfRange,
                $"block {block} is past the end of {_device.Name}");
        _device.Read((long)block * MetadataFormat.BlockSize, _superblockBuffer.Memory);
        ReadOnlySpan<byte> b = _superblockBuffer.GetSpan();
        uint stored = MetadataFormat.StoredChecksum(b), computed = MetadataFormat.ComputeChecksum(b, MetadataFormat.SuperblockSalt);
        if (stored != computed)
            throw Bad(block, MetadataFault.BadChecksum, $"stored checksum {stored:x8}, computed {computed:x8}");
        var sb = Superblock.Read(b);
        if (sb.Magic != MetadataFormat.Magic)
            throw Bad(block, MetadataFault.BadMagic, $"magic {sb.Magic}, expected {MetadataFormat.Magic}: not dm-thin metadata");
        if (sb.BlockNumber != block)
            throw Bad(block, MetadataFault.WrongBlockNumber, $"superblock claims to be block {sb.BlockNumber}");
        if (sb.Version is < 1 or > 2)
            throw Bad(block, MetadataFault.UnsupportedVersion, $"metadata version {sb.Version} (supported: 1, 2)");
        if (sb.IncompatFlags != 0 || sb.CompatRoFlags != 0)
            throw Bad(block, MetadataFault.UnsupportedFeatures, $"incompat flags {sb.IncompatFlags:x}, compat_ro flags {sb.CompatRoFlags:x}");
        if (sb.MetadataBlockSize != 8)
            throw Bad(block, MetadataFault.BadGeometry, $"metadata block size {sb.MetadataBlockSize} sectors (must be 8)");
        if (!live)
            return sb;
        ulong deviceBlocks = (ulong)_device.Length / MetadataFormat.BlockSize;
        if (sb.MetadataNrBlocks == 0 || sb.MetadataNrBlocks > deviceBlocks || sb.MetadataNrBlocks > MetadataFormat.MaxMetadataBlocks
            || sb.MetadataSpaceMap.NrBlocks != sb.MetadataNrBlocks)
            throw Bad(block, MetadataFault.BadGeometry,
                $"metadata_nr_blocks {sb.MetadataNrBlocks}, space map nr_blocks {sb.MetadataSpaceMap.NrBlocks}, device holds {deviceBlocks}");
        if (sb.Time >= MetadataFormat.MaxTime)
            throw Bad(block, MetadataFault.Inconsistent, $"time {sb.Time} does not fit the 24 bits of a mapping");
        // Every data bitmap is a metadata block, so a data space map needing more bitmaps than the
        // metadata device has blocks is damage; checked before its counts (4 bytes a block) are
        // allocated, which a damaged count would otherwise size at up to 8 GiB.
        if (sb.DataBlockSize == 0 || sb.DataSpaceMap.NrBlocks > int.MaxValue
            || (ulong)MetadataFormat.BitmapCount(sb.DataSpaceMap.NrBlocks) > sb.MetadataNrBlocks)
            throw Bad(block, MetadataFault.BadGeometry,
                $"data block size {sb.DataBlockSize}, data blocks {sb.DataSpaceMap.NrBlocks} (the metadata device holds {sb.MetadataNrBlocks} blocks)");
        return sb;

        static MetadataCorruptException Bad(ulong block, MetadataFault fault, string detail) =>
            new(block, MetadataBlockKind.Superblock, MetadataTree.None, fault, detail);
    }

    private void LoadCommitted()
    {
        _cache.Clear();
        _sb = ReadSuperblockAt(0, live: true);
        var meta = new CountTable(_sb.MetadataNrBlocks);
        var data = new CountTable(_sb.DataSpaceMap.NrBlocks);
        _cache.NrBlocks = _sb.MetadataNrBlocks;
        _tm = new TransactionManager(_cache, meta, data);
        _metaIndexBlock = _sb.MetadataSpaceMap.BitmapRoot;
        _metaOverflowRoot = _sb.MetadataSpaceMap.RefCountRoot;
        _dataIndexRoot = _sb.DataSpaceMap.BitmapRoot;
        _dataOverflowRoot = _sb.DataSpaceMap.RefCountRoot;

        ReadOnlySpan<byte> index = _cache.Read(_metaIndexBlock, BlockCheck.Index, MetadataTree.None);
        _metaEntries = new IndexEntry[meta.BitmapCount];
        for (int i = 0; i < meta.BitmapCount; i++)
            _metaEntries[i] = IndexEntry.Read(index.Slice(16 + IndexEntry.Size * i, IndexEntry.Size));
        LoadCounts(meta, _metaEntries, _metaOverflowRoot, MetadataTree.MetadataRefCounts, _metaIndexBlock, MetadataBlockKind.Index);

        var dataIndex = new EntryCollector();
        BTree.Walk(_tm, _dataIndexRoot, MetadataTree.DataSpaceMapIndex, 0, ulong.MaxValue, ref dataIndex);
        _dataEntries = new IndexEntry[data.BitmapCount];
        if (dataIndex.Keys.Count != data.BitmapCount)
            throw new MetadataCorruptException(_dataIndexRoot, MetadataBlockKind.BTreeNode, MetadataTree.DataSpaceMapIndex, MetadataFault.Inconsistent,
                $"data space-map index has {dataIndex.Keys.Count} entries, {data.BitmapCount} bitmaps expected");
        byte[] dataIndexValues = dataIndex.ValueArray();
        for (int i = 0; i < data.BitmapCount; i++)
        {
            if (dataIndex.Keys[i] != (ulong)i)
                throw new MetadataCorruptException(_dataIndexRoot, MetadataBlockKind.BTreeNode, MetadataTree.DataSpaceMapIndex, MetadataFault.Inconsistent,
                    $"data space-map index key {dataIndex.Keys[i]} where {i} was expected");
            _dataEntries[i] = IndexEntry.Read(dataIndexValues.AsSpan(i * IndexEntry.Size, IndexEntry.Size));
        }
        LoadCounts(data, _dataEntries, _dataOverflowRoot, MetadataTree.DataRefCounts, _dataIndexRoot, MetadataBlockKind.BTreeNode);

        _mappingRoot = _sb.DataMappingRoot;
        _detailsRoot = _sb.DeviceDetailsRoot;
        var top = new EntryCollector();
        BTree.Walk(_tm, _mappingRoot, MetadataTree.MappingTop, 0, ulong.MaxValue, ref top);
        var details = new EntryCollector();
        BTree.Walk(_tm, _detailsRoot, MetadataTree.DeviceDetails, 0, ulong.MaxValue, ref details);
        if (!top.Keys.SequenceEqual(details.Keys))
            throw new MetadataCorruptException(_detailsRoot, MetadataBlockKind.BTreeNode, MetadataTree.DeviceDetails, MetadataFault.Inconsistent,
                $"device ids in the details tree ({string.Join(",", details.Keys)}) differ from the mapping tree ({string.Join(",", top.Keys)})");
        _devices = new Dictionary<ulong, DeviceState>(top.Keys.Count);
        byte[] roots = top.ValueArray(), records = details.ValueArray();
        for (int i = 0; i < top.Keys.Count; i++)
        {
            ulong root = BinaryPrimitives.ReadUInt64LittleEndian(roots.AsSpan(i * 8, 8));
            if (root == 0 || root >= meta.NrBlocks || meta[root] == 0)
                throw new MetadataCorruptException(root, MetadataBlockKind.BTreeNode, MetadataTree.MappingBottom, MetadataFault.PointerOutOfRange,
                    $"device {top.Keys[i]}'s mapping root {root} is not an allocated metadata block");
            _devices[top.Keys[i]] = new DeviceState(root, DeviceDetails.Read(records.AsSpan(i * DeviceDetails.Size, DeviceDetails.Size)));
        }
        RefreshDeviceIds();
        _tm.EndTransaction();
        _uncommitted = false;
    }

    private void LoadCounts(CountTable table, IndexEntry[] entries, ulong overflowRoot, MetadataTree overflowTree, ulong indexBlock, MetadataBlockKind indexKind)
    {
        for (int i = 0; i < entries.Length; i++)
        {
            ulong loc = entries[i].BlockNumber;
            if (loc == 0 || loc >= _tm.Meta.NrBlocks)
                throw new MetadataCorruptException(indexBlock, indexKind, indexKind == MetadataBlockKind.BTreeNode ? MetadataTree.DataSpaceMapIndex : MetadataTree.None,
                    MetadataFault.PointerOutOfRange, $"index entry {i} points to bitmap block {loc}, outside the metadata device");
            ReadOnlySpan<byte> bitmap = _cache.Read(loc, BlockCheck.Bitmap, MetadataTree.None);
            table.BitmapLocations[i] = loc;
            ulong first = (ulong)i * MetadataFormat.EntriesPerBitmap;
            int n = (int)Math.Min(MetadataFormat.EntriesPerBitmap, table.NrBlocks - first);
            for (int j = 0; j < n; j++)
            {
                uint c = MetadataFormat.ReadBitmapEntry(bitmap, j);
                if (c != 0)
                    table.Load(first + (ulong)j, c);
            }
        }
        var overflow = new EntryCollector();
        BTree.Walk(_tm, overflowRoot, overflowTree, 0, ulong.MaxValue, ref overflow);
        byte[] counts = overflow.ValueArray();
        for (int i = 0; i < overflow.Keys.Count; i++)
        {
            ulong b = overflow.Keys[i];
            uint count = BinaryPrimitives.ReadUInt32LittleEndian(counts.AsSpan(i * 4, 4));
            if (b >= table.NrBlocks || table[b] != 3 || count < 3)
                throw new MetadataCorruptException(overflowRoot, MetadataBlockKind.BTreeNode, overflowTree, MetadataFault.Inconsistent,
                    $"overflow entry for block {b} with count {count} does not match its bitmap entry");
            table.Load(b, count);
        }
        var overflowKeys = new HashSet<ulong>(overflow.Keys);
        for (ulong b = 0; b < table.NrBlocks; b++)
            if (table[b] == 3 && !overflowKeys.Contains(b))
                throw new MetadataCorruptException(overflowRoot, MetadataBlockKind.BTreeNode, overflowTree, MetadataFault.Inconsistent,
                    $"block {b} has bitmap entry 3 but no overflow entry");
    }

    private struct EntryCollector() : IEntryVisitor
    {
        public readonly List<ulong> Keys = new();
        public readonly List<byte> ValueBytes = new();
        public readonly byte[] ValueArray() => ValueBytes.ToArray();

        public bool Visit(ulong key, ReadOnlySpan<byte> value)
        {
            Keys.Add(key);
            ValueBytes.AddRange(value);
            return true;
        }
    }

    // ------------------------------------------------------------------ devices

    public bool DeviceExists(ulong devId) => _devices.ContainsKey(devId);

    public DeviceDetails GetDetails(ulong devId) => Device(devId).Details;

    private DeviceState Device(ulong devId) =>
        _devices.TryGetValue(devId, out DeviceState? st) ? st : throw new KeyNotFoundException($"thin device {devId} does not exist");

    public void CreateThin(ulong devId)
    {
        ThrowIfExists(devId);
        _uncommitted = true;
        ulong root = BTree.CreateEmpty(_tm, MetadataTree.MappingBottom);
        _mappingRoot = BTree.Insert64(_tm, _mappingRoot, MetadataTree.MappingTop, devId, root, out _, out _);
        _devices[devId] = new DeviceState(root, new DeviceDetails(0, _sb.TransactionId, _sb.Time, _sb.Time))
        {
            TopPathShadowed = true,
            DetailsDirty = true,
        };
        RefreshDeviceIds();
    }

    public void CreateSnapshot(ulong devId, ulong originDevId)
    {
        ThrowIfExists(devId);
        DeviceState origin = Device(originDevId);
        if (_sb.Time + 1 >= MetadataFormat.MaxTime)
            throw new InvalidOperationException("the pool's snapshot time counter is exhausted (24 bits)");
        _uncommitted = true;
        _tm.Meta.Increment(origin.Root);
        _sb.Time++;
        _mappingRoot = BTree.Insert64(_tm, _mappingRoot, MetadataTree.MappingTop, devId, origin.Root, out _, out _);
        origin.Details = origin.Details with { SnapshottedTime = _sb.Time };
        origin.DetailsDirty = true;
        _devices[devId] = new DeviceState(origin.Root,
            new DeviceDetails(origin.Details.MappedBlocks, _sb.TransactionId, _sb.Time, _sb.Time))
        {
            TopPathShadowed = true,
            DetailsDirty = true,
        };
        RefreshDeviceIds();
    }

    public void DeleteDevice(ulong devId)
    {
        Device(devId);
        _uncommitted = true;
        _mappingRoot = BTree.Remove64(_tm, _mappingRoot, MetadataTree.MappingTop, devId, out _, out ulong root);
        BTree.DeleteSubtree(_tm, root, MetadataTree.MappingBottom);
        Span<byte> old = stackalloc byte[DeviceDetails.Size];
        _detailsRoot = BTree.Remove(_tm, _detailsRoot, MetadataTree.DeviceDetails, devId, old, out _);
        _devices.Remove(devId);
        RefreshDeviceIds();
    }

    public void SetTransactionId(ulong expectedOld, ulong newId)
    {
        if (_sb.TransactionId != expectedOld)
            throw new InvalidOperationException($"transaction id is {_sb.TransactionId}, not {expectedOld}");
        _uncommitted = true;
        _sb.TransactionId = newId;
    }

    /// <summary>Sets or clears the superblock's NEEDS_CHECK flag (persisted at the next commit).</summary>
    public void SetNeedsCheck(bool value)
    {
        _uncommitted = true;
        _sb.Flags = value ? _sb.Flags | Superblock.NeedsCheckFlag : _sb.Flags & ~Superblock.NeedsCheckFlag;
    }

    private void ThrowIfExists(ulong devId)
    {
        if (_devices.ContainsKey(devId))
            throw new InvalidOperationException($"thin device {devId} already exists");
    }

    private void RefreshDeviceIds()
    {
        var ids = _devices.Keys.ToArray();
        Array.Sort(ids);
        _deviceIds = ids;
    }

    // ------------------------------------------------------------------ mappings

    public bool TryLookup(ulong devId, ulong virtualBlock, out BlockMapping mapping)
    {
        if (!_devices.TryGetValue(devId, out DeviceState? st)
            || !BTree.TryFind64(_tm, st.Root, MetadataTree.MappingBottom, virtualBlock, out ulong packed))
        {
            mapping = default;
            return false;
        }
        uint time = MetadataFormat.MappingTime(packed);
        mapping = new BlockMapping(MetadataFormat.MappingBlock(packed), time, st.Details.SnapshottedTime > time);
        return true;
    }

    private ref struct RangeCollector(Span<MappedRange> result) : IEntryVisitor
    {
        private readonly Span<MappedRange> _result = result;
        public int Count;

        public bool Visit(ulong key, ReadOnlySpan<byte> value)
        {
            ulong packed = BinaryPrimitives.ReadUInt64LittleEndian(value);
            ulong block = MetadataFormat.MappingBlock(packed);
            uint time = MetadataFormat.MappingTime(packed);
            if (Count > 0)
            {
                ref MappedRange last = ref _result[Count - 1];
                if (key == last.VirtualBlock + last.Length && block == last.DataBlock + last.Length && time == last.Time)
                {
                    last = last with { Length = last.Length + 1 };
                    return true;
                }
            }
            if (Count == _result.Length)
                return false;
            _result[Count++] = new MappedRange(key, block, 1, time);
            return true;
        }
    }

    /// <summary>
    /// Mapped runs within [first, end) in order. Stops early when <paramref name="result"/> is full;
    /// continue from the end of the last run returned.
    /// </summary>
    public int LookupRange(ulong devId, ulong firstVirtualBlock, ulong endVirtualBlock, Span<MappedRange> result)
    {
        if (!_devices.TryGetValue(devId, out DeviceState? st) || result.IsEmpty || firstVirtualBlock >= endVirtualBlock)
            return 0;
        var collector = new RangeCollector(result);
        BTree.Walk(_tm, st.Root, MetadataTree.MappingBottom, firstVirtualBlock, endVirtualBlock, ref collector);
        return collector.Count;
    }

    /// <summary>
    /// Reserves a data block for a write that will fill it and then <see cref="Insert"/> it. Until
    /// then the block is in use in memory only: a commit writes it out free, so a crash before the
    /// mapping is inserted leaks nothing. <see cref="ReleaseDataBlock"/> gives it back.
    /// </summary>
    public bool TryAllocateDataBlock(out ulong dataBlock) => _tm.Data.TryReserve(out dataBlock);

    /// <summary>Maps <paramref name="virtualBlock"/> to <paramref name="dataBlock"/>, reserved by
    /// <see cref="TryAllocateDataBlock"/>: the reservation becomes the mapping's reference.</summary>
    public void Insert(ulong devId, ulong virtualBlock, ulong dataBlock)
    {
        DeviceState st = Device(devId);
        if (dataBlock >= _tm.Data.NrBlocks || !_tm.Data.IsReserved(dataBlock))
            throw new ArgumentOutOfRangeException(nameof(dataBlock), dataBlock, "data block is not reserved (use TryAllocateDataBlock)");
        InsertMapping(st, devId, virtualBlock, MetadataFormat.PackMapping(dataBlock, _sb.Time));
        _tm.Data.ConsumeReservation(dataBlock);
    }

    private void InsertMapping(DeviceState st, ulong devId, ulong virtualBlock, ulong packed)
    {
        _uncommitted = true;
        EnsureTopPathShadowed(st, devId);
        ulong root = BTree.Insert64(_tm, st.Root, MetadataTree.MappingBottom, virtualBlock, packed, out bool existed, out ulong old);
        if (existed)
            _tm.Data.Decrement(MetadataFormat.MappingBlock(old));
        else
            st.Details = st.Details with { MappedBlocks = st.Details.MappedBlocks + 1 };
        st.DetailsDirty = true;
        SetRoot(st, devId, root);
    }

    public bool Remove(ulong devId, ulong virtualBlock)
    {
        DeviceState st = Device(devId);
        if (!BTree.TryFind64(_tm, st.Root, MetadataTree.MappingBottom, virtualBlock, out _))
            return false;
        _uncommitted = true;
        EnsureTopPathShadowed(st, devId);
        ulong root = BTree.Remove64(_tm, st.Root, MetadataTree.MappingBottom, virtualBlock, out _, out ulong old);
        _tm.Data.Decrement(MetadataFormat.MappingBlock(old));
        st.Details = st.Details with { MappedBlocks = st.Details.MappedBlocks - 1 };
        st.DetailsDirty = true;
        SetRoot(st, devId, root);
        return true;
    }

    private struct KeyCollector() : IEntryVisitor
    {
        public readonly List<ulong> Keys = new();

        public bool Visit(ulong key, ReadOnlySpan<byte> value)
        {
            Keys.Add(key);
            return true;
        }
    }

    public ulong RemoveRange(ulong devId, ulong firstVirtualBlock, ulong endVirtualBlock)
    {
        DeviceState st = Device(devId);
        if (firstVirtualBlock >= endVirtualBlock)
            return 0;
        var keys = new KeyCollector();
        BTree.Walk(_tm, st.Root, MetadataTree.MappingBottom, firstVirtualBlock, endVirtualBlock, ref keys);
        foreach (ulong vb in keys.Keys)
            Remove(devId, vb);
        return (ulong)keys.Keys.Count;
    }

    /// <summary>
    /// Before a device's bottom tree is shadowed, the top-level path to its entry must be exclusive,
    /// so that a top-level leaf shared with a metadata snapshot is copied (adding a reference to
    /// every subtree root) before the subtree root itself is copied. Re-inserting the same value does that.
    /// </summary>
    private void EnsureTopPathShadowed(DeviceState st, ulong devId)
    {
        if (st.TopPathShadowed)
            return;
        _mappingRoot = BTree.Insert64(_tm, _mappingRoot, MetadataTree.MappingTop, devId, st.Root, out _, out _);
        st.TopPathShadowed = true;
    }

    private void SetRoot(DeviceState st, ulong devId, ulong root)
    {
        if (root == st.Root)
            return;
        st.Root = root;
        _mappingRoot = BTree.Insert64(_tm, _mappingRoot, MetadataTree.MappingTop, devId, root, out _, out _);
    }

    public uint GetDataBlockRefCount(ulong dataBlock) =>
        dataBlock < _tm.Data.NrBlocks ? _tm.Data[dataBlock]
            : throw new ArgumentOutOfRangeException(nameof(dataBlock), dataBlock, $"pool has {_tm.Data.NrBlocks} data blocks");

    /// <summary>Gives back a block reserved by <see cref="TryAllocateDataBlock"/> and never mapped.</summary>
    public void ReleaseDataBlock(ulong dataBlock)
    {
        if (dataBlock >= _tm.Data.NrBlocks || !_tm.Data.IsReserved(dataBlock))
            throw new ArgumentOutOfRangeException(nameof(dataBlock), dataBlock, "data block is not reserved");
        _tm.Data.CancelReservation(dataBlock);
    }

    /// <summary>Keeps a data block nobody references any more from being handed out, through the
    /// commit and after it, until <see cref="ReleaseHeldDataBlock"/>: its discard has yet to reach
    /// the data device. Held blocks are written out free; a crash simply ends the hold.</summary>
    public void HoldDataBlock(ulong dataBlock) => _tm.Data.Hold(dataBlock);

    public void ReleaseHeldDataBlock(ulong dataBlock) => _tm.Data.ReleaseHeld(dataBlock);

    // ------------------------------------------------------------------ growth

    public void GrowDataSpace(ulong newDataBlockCount)
    {
        if (newDataBlockCount < _tm.Data.NrBlocks || newDataBlockCount >= MetadataFormat.MaxDataBlock)
            throw new ArgumentOutOfRangeException(nameof(newDataBlockCount), newDataBlockCount, $"data space only grows (now {_tm.Data.NrBlocks})");
        if (newDataBlockCount == _tm.Data.NrBlocks)
            return;
        _uncommitted = true;
        _tm.Data.Grow(newDataBlockCount);
        Array.Resize(ref _dataEntries, _tm.Data.BitmapCount);
    }

    public void GrowMetadata(ulong newMetadataBlockCount)
    {
        ulong capped = Math.Min(newMetadataBlockCount, MetadataFormat.MaxMetadataBlocks);
        if (capped < _tm.Meta.NrBlocks)
            throw new ArgumentOutOfRangeException(nameof(newMetadataBlockCount), newMetadataBlockCount, $"metadata only grows (now {_tm.Meta.NrBlocks})");
        if ((ulong)_device.Length < capped * MetadataFormat.BlockSize)
            throw new ArgumentOutOfRangeException(nameof(newMetadataBlockCount), newMetadataBlockCount,
                $"{_device.Name} holds only {_device.Length / MetadataFormat.BlockSize} blocks; grow the device first");
        if (capped == _tm.Meta.NrBlocks)
            return;
        _uncommitted = true;
        _tm.GrowMetadata(capped);
        _sb.MetadataNrBlocks = capped;
        Array.Resize(ref _metaEntries, _tm.Meta.BitmapCount);
    }

    public void Dispose()
    {
        if (_disposed)
            return;
        _disposed = true;
        _cache.Dispose();
        ((IDisposable)_superblockBuffer).Dispose();
    }
}
