using System.Buffers.Binary;
using Microsoft.Win32.SafeHandles;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Cli;

public sealed record CheckReport(
    bool Clean,
    List<string> Errors,
    int Devices,
    ulong Mappings,
    ulong MetadataBlocksReferenced,
    ulong DataBlocksReferenced,
    ulong LeakedDataBlocks)
{
    /// <summary>--clear-needs-check found the metadata clean and cleared the flag.</summary>
    public bool NeedsCheckCleared { get; init; }
}

/// <summary>
/// <c>pool check</c>: what thin_check verifies (superblock, every node of every tree, space maps)
/// plus a full reference recount in the manner of analyze.py: every metadata block and every data
/// block is counted from the trees that reach it and compared with the on-disk space maps. The
/// recount reads raw blocks itself instead of trusting ThinMetadata, so a space map that agrees with
/// a damaged tree is still caught; ThinMetadata.Open then supplies the on-disk counts and its own
/// validation, and every device's mappings are read through it (bottom trees are validated lazily).
/// A data block the space map counts more often than the mappings reference it is a leak, reported
/// apart from damage as thin_check does: it wastes space but exposes nothing, and the next open of
/// the pool reclaims it. Every other disagreement is damage.
/// </summary>
public sealed class MetadataCheck : IDisposable
{
    private const int Bs = MetadataFormat.BlockSize;
    private readonly SafeFileHandle _file;
    private readonly string _path;
    private readonly ulong _deviceBlocks;
    private readonly byte[] _buffer = new byte[Bs];
    private readonly List<string> _errors = new();
    private readonly Dictionary<ulong, uint> _metaCounts = new();
    private readonly Dictionary<ulong, uint> _dataCounts = new();
    private readonly Action<string>? _progress;
    private readonly List<ulong> _metaBitmaps = new(), _dataBitmaps = new();
    private readonly List<(ulong Key, ulong Value)> _metaOverflow = new(), _dataOverflow = new();
    private Superblock? _sb;
    private ulong _nrBlocks;
    private ulong _dataNrBlocks;
    private ulong _mappings;
    private ulong _leakedDataBlocks;

    private MetadataCheck(string path, Action<string>? progress)
    {
        _path = path;
        _progress = progress;
        _file = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        // RandomAccess.GetLength is 0 for block devices; the IO layer asks the kernel (BLKGETSIZE64).
        using (var device = BlockDevices.Open(path, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable }))
            _deviceBlocks = (ulong)device.Length / Bs;
    }

    /// <param name="dataPath">The pool's data device, when known (a pool directory was named):
    /// it must hold every block the data space map counts.</param>
    public static CheckReport Run(string metadataPath, Action<string>? progress, string? dataPath = null)
    {
        using var check = new MetadataCheck(metadataPath, progress);
        return check.RunCore(dataPath);
    }

    public void Dispose() => _file.Dispose();

    private CheckReport RunCore(string? dataPath)
    {
        int devices = 0;
        _progress?.Invoke("checking superblock");
        var sb = ReadSuperblock(0, live: true);
        if (sb is not null)
        {
            _sb = sb;
            _nrBlocks = sb.MetadataNrBlocks;
            _dataNrBlocks = sb.DataSpaceMap.NrBlocks;
            if (dataPath is not null)
                CheckDataDevice(dataPath, sb);
            _progress?.Invoke("recounting references");
            Count(0);
            devices = CountSuperblockTrees(sb);
            if (sb.HeldRoot != 0)
            {
                Count(sb.HeldRoot);
                var snap = ReadSuperblock(sb.HeldRoot, live: false);
                if (snap is not null)
                    CountSuperblockTrees(snap);
            }
            CountSpaceMaps(sb);
            if (_errors.Count == 0)
                CompareWithSpaceMaps();
        }
        return new CheckReport(_errors.Count == 0, _errors, devices, _mappings, (ulong)_metaCounts.Count, (ulong)_dataCounts.Count, _leakedDataBlocks);
    }

    private void CheckDataDevice(string dataPath, Superblock sb)
    {
        if (OfflinePool.DataDeviceProblem(dataPath, sb.DataBlockSize, sb.DataSpaceMap.NrBlocks) is { } problem)
            _errors.Add(problem);
    }

    private Superblock? ReadSuperblock(ulong block, bool live)
    {
        if (block >= _deviceBlocks)
        {
            _errors.Add($"superblock at block {block} is past the end of {_path} ({_deviceBlocks} blocks)");
            return null;
        }
        RandomAccess.Read(_file, _buffer, (long)block * Bs);
        uint stored = MetadataFormat.StoredChecksum(_buffer), computed = MetadataFormat.ComputeChecksum(_buffer, MetadataFormat.SuperblockSalt);
        if (stored != computed)
        {
            _errors.Add($"superblock {block}: bad checksum (stored {stored:x8}, computed {computed:x8})");
            return null;
        }
        var sb = Superblock.Read(_buffer);
        if (sb.Magic != MetadataFormat.Magic)
            _errors.Add($"superblock {block}: bad magic {sb.Magic}: not dm-thin metadata");
        else if (sb.BlockNumber != block)
            _errors.Add($"superblock {block}: claims to be block {sb.BlockNumber}");
        else if (sb.Version is < 1 or > 2)
            _errors.Add($"superblock {block}: unsupported version {sb.Version}");
        else if (live && (sb.MetadataNrBlocks == 0 || sb.MetadataNrBlocks > _deviceBlocks || sb.MetadataSpaceMap.NrBlocks != sb.MetadataNrBlocks))
            _errors.Add($"superblock {block}: metadata_nr_blocks {sb.MetadataNrBlocks} does not fit the device ({_deviceBlocks} blocks) or its space map ({sb.MetadataSpaceMap.NrBlocks})");
        else
            return sb;
        return null;
    }

    private int CountSuperblockTrees(Superblock sb)
    {
        CountTree(sb.DeviceDetailsRoot, DeviceDetails.Size, "device details", null);
        var subtreeRoots = new List<(ulong Key, ulong Value)>();
        CountTree(sb.DataMappingRoot, 8, "mapping top-level", subtreeRoots);
        foreach (var (_, root) in subtreeRoots)
            CountMappingTree(root, 0);
        return subtreeRoots.Count;
    }

    private void CountSpaceMaps(Superblock sb)
    {
        var msm = sb.MetadataSpaceMap;
        if (Count(msm.BitmapRoot) && ReadBlock(msm.BitmapRoot, MetadataFormat.IndexSalt, "metadata space-map index"))
        {
            int bitmaps = MetadataFormat.BitmapCount(msm.NrBlocks);
            var locations = new ulong[bitmaps];
            for (int i = 0; i < bitmaps; i++)
                locations[i] = BinaryPrimitives.ReadUInt64LittleEndian(_buffer.AsSpan(16 + IndexEntry.Size * i));
            foreach (ulong loc in locations)
                CountBitmap(loc, "metadata", _metaBitmaps);
        }
        CountTree(msm.RefCountRoot, 4, "metadata ref-count", _metaOverflow);
        var dataIndex = new List<(ulong Key, ulong Value)>();
        CountTree(sb.DataSpaceMap.BitmapRoot, IndexEntry.Size, "data space-map index", dataIndex);
        for (int i = 0; i < dataIndex.Count; i++)
        {
            if (dataIndex[i].Key != (ulong)i)
                _errors.Add($"data space-map index: entry {i} has key {dataIndex[i].Key}");
            CountBitmap(dataIndex[i].Value, "data", _dataBitmaps);
        }
        if (dataIndex.Count != MetadataFormat.BitmapCount(sb.DataSpaceMap.NrBlocks))
            _errors.Add($"data space-map index has {dataIndex.Count} bitmaps, {MetadataFormat.BitmapCount(sb.DataSpaceMap.NrBlocks)} expected for {sb.DataSpaceMap.NrBlocks} blocks");
        CountTree(sb.DataSpaceMap.RefCountRoot, 4, "data ref-count", _dataOverflow);
    }

    private void CountBitmap(ulong loc, string which, List<ulong> locations)
    {
        locations.Add(loc);
        if (Count(loc))
            ReadBlock(loc, MetadataFormat.BitmapSalt, $"{which} space-map bitmap");
    }

    // Adds one reference to a metadata block; true when it is the first (the caller then reads
    // and descends, shared blocks are descended once), false when out of range or already seen.
    private bool Count(ulong block)
    {
        if (block >= _nrBlocks)
        {
            _errors.Add($"pointer to metadata block {block} is outside the metadata space ({_nrBlocks} blocks)");
            return false;
        }
        _metaCounts.TryGetValue(block, out uint c);
        _metaCounts[block] = c + 1;
        return c == 0;
    }

    private bool ReadBlock(ulong block, uint salt, string what)
    {
        RandomAccess.Read(_file, _buffer, (long)block * Bs);
        uint stored = MetadataFormat.StoredChecksum(_buffer), computed = MetadataFormat.ComputeChecksum(_buffer, salt);
        if (stored != computed)
        {
            _errors.Add($"metadata block {block} ({what}): bad checksum (stored {stored:x8}, computed {computed:x8})");
            return false;
        }
        if (MetadataFormat.StoredBlockNumber(_buffer) != block)
        {
            _errors.Add($"metadata block {block} ({what}): claims to be block {MetadataFormat.StoredBlockNumber(_buffer)}");
            return false;
        }
        return true;
    }

    // Reads and validates one B-tree node into a fresh array (the walk is recursive).
    private byte[]? ReadNode(ulong block, int leafValueSize, string tree, int depth)
    {
        if (depth > MetadataFormat.MaxTreeDepth)
        {
            _errors.Add($"{tree} tree: deeper than {MetadataFormat.MaxTreeDepth} levels at block {block} (a cycle?)");
            return null;
        }
        if (!ReadBlock(block, MetadataFormat.NodeSalt, $"{tree} tree node"))
            return null;
        byte[] n = _buffer.ToArray();
        uint flags = Node.Flags(n);
        bool leaf = (flags & Node.LeafFlag) != 0;
        string? fault = null;
        if (flags != Node.LeafFlag && flags != Node.InternalFlag)
            fault = $"bad flags {flags}";
        else if (Node.ValueSize(n) != (leaf ? leafValueSize : 8))
            fault = $"value size {Node.ValueSize(n)}, expected {(leaf ? leafValueSize : 8)}";
        else if (Node.MaxEntries(n) != MetadataFormat.MaxEntries(Node.ValueSize(n)))
            fault = $"max_entries {Node.MaxEntries(n)}, expected {MetadataFormat.MaxEntries(Node.ValueSize(n))}";
        else if (Node.NrEntries(n) > Node.MaxEntries(n))
            fault = $"nr_entries {Node.NrEntries(n)} above max_entries {Node.MaxEntries(n)}";
        else
        {
            for (int i = 1; i < Node.NrEntries(n); i++)
            {
                if (Node.Key(n, i) <= Node.Key(n, i - 1))
                {
                    fault = $"keys out of order at entry {i}";
                    break;
                }
            }
        }
        if (fault is null)
            return n;
        _errors.Add($"metadata block {block} ({tree} tree node): {fault}");
        return null;
    }

    private void CountTree(ulong root, int leafValueSize, string tree, List<(ulong Key, ulong Value)>? leafValues, int depth = 0)
    {
        if (!Count(root))
            return;
        byte[]? n = ReadNode(root, leafValueSize, tree, depth);
        if (n is null)
            return;
        bool leaf = Node.IsLeaf(n);
        for (int i = 0; i < Node.NrEntries(n); i++)
        {
            if (!leaf)
                CountTree(Node.Value64(n, i), leafValueSize, tree, leafValues, depth + 1);
            else if (leafValues is not null)
                leafValues.Add((Node.Key(n, i), leafValueSize switch
                {
                    IndexEntry.Size => IndexEntry.Read(Node.Value(n, i)).BlockNumber,
                    4 => BinaryPrimitives.ReadUInt32LittleEndian(Node.Value(n, i)),
                    _ => Node.Value64(n, i),
                }));
        }
    }

    private void CountMappingTree(ulong block, int depth)
    {
        if (!Count(block))
            return;
        byte[]? n = ReadNode(block, 8, "mapping bottom-level", depth);
        if (n is null)
            return;
        bool leaf = Node.IsLeaf(n);
        for (int i = 0; i < Node.NrEntries(n); i++)
        {
            ulong v = Node.Value64(n, i);
            if (!leaf)
            {
                CountMappingTree(v, depth + 1);
                continue;
            }
            ulong data = MetadataFormat.MappingBlock(v);
            _mappings++;
            if (data >= _dataNrBlocks)
            {
                _errors.Add($"metadata block {block}: mapping of virtual block {Node.Key(n, i)} points to data block {data}, past the data device ({_dataNrBlocks} blocks)");
                continue;
            }
            _dataCounts.TryGetValue(data, out uint c);
            _dataCounts[data] = c + 1;
        }
    }

    private void CompareWithSpaceMaps()
    {
        _progress?.Invoke("comparing with the space maps");
        using var device = BlockDevices.Open(_path, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
        ThinMetadata md;
        try
        {
            md = ThinMetadata.Open(device);
        }
        catch (MetadataCorruptException e)
        {
            _errors.Add(e.Message);
            return;
        }
        using (md)
        {
            int reported = CompareCounts("metadata", _sb!.MetadataNrBlocks, _metaBitmaps, _metaOverflow, _metaCounts, "the trees hold", leaksAreDamage: true)
                + CompareCounts("data", _sb.DataSpaceMap.NrBlocks, _dataBitmaps, _dataOverflow, _dataCounts, "the mappings hold", leaksAreDamage: false);
            if (reported > MaxReported)
                _errors.Add($"... {reported - MaxReported} more reference-count mismatches");
            var ranges = new MappedRange[256];
            foreach (ulong id in md.DeviceIds)
            {
                ulong mapped = 0, next = 0;
                try
                {
                    while (true)
                    {
                        int n = md.LookupRange(id, next, ulong.MaxValue, ranges);
                        if (n == 0)
                            break;
                        for (int i = 0; i < n; i++)
                            mapped += ranges[i].Length;
                        next = ranges[n - 1].VirtualBlock + ranges[n - 1].Length;
                    }
                }
                catch (MetadataCorruptException e)
                {
                    _errors.Add($"device {id}: {e.Message}");
                    continue;
                }
                ulong recorded = md.GetDetails(id).MappedBlocks;
                if (recorded != mapped)
                    _errors.Add($"device {id}: details say {recorded} mapped blocks, its tree maps {mapped}");
            }
        }
    }

    private const int MaxReported = 40;

    // The on-disk count of every block (2-bit bitmap entries, 3 meaning "see the overflow tree")
    // against the recount; returns how many differ, reporting the first few. With leaksAreDamage
    // false a count above the recount is counted as a leaked block instead.
    private int CompareCounts(string kind, ulong nrBlocks, List<ulong> bitmaps, List<(ulong Key, ulong Value)> overflow, Dictionary<ulong, uint> expected, string holder, bool leaksAreDamage)
    {
        var overflowCounts = new Dictionary<ulong, ulong>();
        foreach (var (k, v) in overflow)
            overflowCounts[k] = v;
        int mismatches = 0;
        var bitmap = new byte[Bs];
        for (int i = 0; i < bitmaps.Count; i++)
        {
            RandomAccess.Read(_file, bitmap, (long)bitmaps[i] * Bs);
            ulong first = (ulong)i * MetadataFormat.EntriesPerBitmap;
            for (ulong j = 0; j < MetadataFormat.EntriesPerBitmap && first + j < nrBlocks; j++)
            {
                ulong b = first + j;
                ulong onDisk = MetadataFormat.ReadBitmapEntry(bitmap, (int)j);
                if (onDisk == 3)
                    onDisk = overflowCounts.TryGetValue(b, out ulong c) ? c : 3;
                expected.TryGetValue(b, out uint want);
                if (onDisk > want && !leaksAreDamage)
                    _leakedDataBlocks++;
                else if (onDisk != want && mismatches++ < MaxReported)
                    _errors.Add($"{kind} block {b}: space map says {onDisk} references, {holder} {want}");
            }
        }
        return mismatches;
    }
}
