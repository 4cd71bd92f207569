using System.Buffers.Binary;
using System.Runtime.CompilerServices;

namespace ThinFast.Metadata;

/// <summary>Constants and checksum helpers of the dm-thin (persistent-data) on-disk format.</summary>
public static class MetadataFormat
{
    public const int BlockSize = 4096;
    public const uint SuperblockSalt = 160774;
    public const uint NodeSalt = 121107;
    public const uint BitmapSalt = 240779;
    public const uint IndexSalt = 160478;
    public const ulong Magic = 27022010;
    public const int EntriesPerBitmap = (BlockSize - 16) * 4;
    public const int IndexEntries = 255;
    public const ulong MaxMetadataBlocks = (ulong)IndexEntries * EntriesPerBitmap;
    public const ulong MaxDataBlock = 1UL << 40;
    public const uint MaxTime = 1U << 24;
    public const int MaxTreeDepth = 16;

    public static uint ComputeChecksum(ReadOnlySpan<byte> block, uint salt) => Crc32C.ComputeRaw(block[4..BlockSize]) ^ salt;

    public static uint StoredChecksum(ReadOnlySpan<byte> block) => BinaryPrimitives.ReadUInt32LittleEndian(block);

    public static ulong StoredBlockNumber(ReadOnlySpan<byte> block) => BinaryPrimitives.ReadUInt64LittleEndian(block[8..]);

    /// <summary>Writes the block's own location and then its checksum (the checksum covers the location).</summary>
    public static void Seal(Span<byte> block, ulong blockNumber, uint salt)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(block[8..], blockNumber);
        BinaryPrimitives.WriteUInt32LittleEndian(block, ComputeChecksum(block, salt));
    }

    public static int MaxEntries(int valueSize) => 3 * ((BlockSize - 32) / (8 + valueSize) / 3);

    public static ulong PackMapping(ulong dataBlock, uint time)
    {
        if (dataBlock >= MaxDataBlock)
            throw new ArgumentOutOfRangeException(nameof(dataBlock), dataBlock, "data block numbers are 40 bits");
        if (time >= MaxTime)
            throw new ArgumentOutOfRangeException(nameof(time), time, "mapping times are 24 bits");
        return dataBlock << 24 | time;
    }

    public static ulong MappingBlock(ulong packed) => packed >> 24;

    public static uint MappingTime(ulong packed) => (uint)(packed & 0xFFFFFF);

    public static int BitmapCount(ulong nrBlocks) => checked((int)((nrBlocks + EntriesPerBitmap - 1) / EntriesPerBitmap));

    /// <summary>Count 1 is the odd bit of the pair, count 2 the even bit (§6.1): value (byte >> 2k) &amp; 3 is 2 for count 1.</summary>
    public static uint ReadBitmapEntry(ReadOnlySpan<byte> bitmapBlock, int entry)
    {
        int b = bitmapBlock[16 + (entry >> 2)] >> ((entry & 3) * 2);
        return (uint)(((b & 1) << 1) | ((b >> 1) & 1));
    }

    public static void WriteBitmapEntry(Span<byte> bitmapBlock, int entry, uint count)
    {
        uint c = count > 3 ? 3 : count;
        int shift = (entry & 3) * 2;
        int bits = (int)(((c & 1) << 1) | ((c >> 1) & 1));
        ref byte cell = ref bitmapBlock[16 + (entry >> 2)];
        cell = (byte)((cell & ~(3 << shift)) | (bits << shift));
    }
}

/// <summary>Accessors for a B-tree node (header of 32 bytes, keys, then values at 32 + 8*max_entries).</summary>
public static class Node
{
    public const uint InternalFlag = 1;
    public const uint LeafFlag = 2;
    public const int HeaderSize = 32;

    public static uint Flags(ReadOnlySpan<byte> n) => BinaryPrimitives.ReadUInt32LittleEndian(n[4..]);
    public static bool IsLeaf(ReadOnlySpan<byte> n) => (Flags(n) & LeafFlag) != 0;
    public static int NrEntries(ReadOnlySpan<byte> n) => (int)BinaryPrimitives.ReadUInt32LittleEndian(n[16..]);
    public static int MaxEntries(ReadOnlySpan<byte> n) => (int)BinaryPrimitives.ReadUInt32LittleEndian(n[20..]);
    public static int ValueSize(ReadOnlySpan<byte> n) => (int)BinaryPrimitives.ReadUInt32LittleEndian(n[24..]);
    public static void SetNrEntries(Span<byte> n, int count) => BinaryPrimitives.WriteUInt32LittleEndian(n[16..], (uint)count);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Key(ReadOnlySpan<byte> n, int i) => BinaryPrimitives.ReadUInt64LittleEndian(n.Slice(HeaderSize + 8 * i, 8));
    public static void SetKey(Span<byte> n, int i, ulong key) => BinaryPrimitives.WriteUInt64LittleEndian(n.Slice(HeaderSize + 8 * i, 8), key);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int ValueOffset(ReadOnlySpan<byte> n, int i) => HeaderSize + 8 * MaxEntries(n) + i * ValueSize(n);
    public static ReadOnlySpan<byte> Value(ReadOnlySpan<byte> n, int i) => n.Slice(ValueOffset(n, i), ValueSize(n));
    public static Span<byte> Value(Span<byte> n, int i) => n.Slice(ValueOffset(n, i), ValueSize(n));

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Value64(ReadOnlySpan<byte> n, int i) => BinaryPrimitives.ReadUInt64LittleEndian(n.Slice(HeaderSize + 8 * MaxEntries(n) + 8 * i, 8));
    public static void SetValue64(Span<byte> n, int i, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(n.Slice(ValueOffset(n, i), 8), v);

    public static void Init(Span<byte> n, bool leaf, int valueSize)
    {
        n.Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(n[4..], leaf ? LeafFlag : InternalFlag);
        BinaryPrimitives.WriteUInt32LittleEndian(n[20..], (uint)MetadataFormat.MaxEntries(valueSize));
        BinaryPrimitives.WriteUInt32LittleEndian(n[24..], (uint)valueSize);
    }

    /// <summary>Largest i with key[i] &lt;= key, or -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int LowerBound(ReadOnlySpan<byte> n, ulong key)
    {
        int lo = 0, hi = NrEntries(n) - 1, found = -1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            if (Key(n, mid) <= key) { found = mid; lo = mid + 1; }
            else hi = mid - 1;
        }
        return found;
    }

    /// <summary>Opens a gap at <paramref name="index"/> (caller guarantees room) and fills it.</summary>
    public static void InsertAt(Span<byte> n, int index, ulong key, ReadOnlySpan<byte> value)
    {
        int nr = NrEntries(n), vs = ValueSize(n), vbase = HeaderSize + 8 * MaxEntries(n);
        n.Slice(HeaderSize + 8 * index, 8 * (nr - index)).CopyTo(n[(HeaderSize + 8 * (index + 1))..]);
        n.Slice(vbase + vs * index, vs * (nr - index)).CopyTo(n[(vbase + vs * (index + 1))..]);
        SetKey(n, index, key);
        value.CopyTo(n.Slice(vbase + vs * index, vs));
        SetNrEntries(n, nr + 1);
    }

    public static void RemoveAt(Span<byte> n, int index)
    {
        int nr = NrEntries(n), vs = ValueSize(n), vbase = HeaderSize + 8 * MaxEntries(n);
        n.Slice(HeaderSize + 8 * (index + 1), 8 * (nr - index - 1)).CopyTo(n[(HeaderSize + 8 * index)..]);
        n.Slice(vbase + vs * (index + 1), vs * (nr - index - 1)).CopyTo(n[(vbase + vs * index)..]);
        n.Slice(HeaderSize + 8 * (nr - 1), 8).Clear();
        n.Slice(vbase + vs * (nr - 1), vs).Clear();
        SetNrEntries(n, nr - 1);
    }

    /// <summary>Moves entries [from, nr) of <paramref name="src"/> to the end of <paramref name="dst"/>.</summary>
    public static void MoveTail(Span<byte> src, int from, Span<byte> dst)
    {
        int nr = NrEntries(src), count = nr - from, vs = ValueSize(src);
        int dnr = NrEntries(dst), sbase = HeaderSize + 8 * MaxEntries(src), dbase = HeaderSize + 8 * MaxEntries(dst);
        src.Slice(HeaderSize + 8 * from, 8 * count).CopyTo(dst[(HeaderSize + 8 * dnr)..]);
        src.Slice(sbase + vs * from, vs * count).CopyTo(dst[(dbase + vs * dnr)..]);
        src.Slice(HeaderSize + 8 * from, 8 * count).Clear();
        src.Slice(sbase + vs * from, vs * count).Clear();
        SetNrEntries(src, from);
        SetNrEntries(dst, dnr + count);
    }

    /// <summary>Moves the first <paramref name="count"/> entries of <paramref name="src"/> to the end of <paramref name="dst"/>.</summary>
    public static void MoveHead(Span<byte> src, int count, Span<byte> dst)
    {
        int nr = NrEntries(src), vs = ValueSize(src), dnr = NrEntries(dst);
        int sbase = HeaderSize + 8 * MaxEntries(src), dbase = HeaderSize + 8 * MaxEntries(dst);
        src.Slice(HeaderSize, 8 * count).CopyTo(dst[(HeaderSize + 8 * dnr)..]);
        src.Slice(sbase, vs * count).CopyTo(dst[(dbase + vs * dnr)..]);
        SetNrEntries(dst, dnr + count);
        src.Slice(HeaderSize + 8 * count, 8 * (nr - count)).CopyTo(src[HeaderSize..]);
        src.Slice(sbase + vs * count, vs * (nr - count)).CopyTo(src[sbase..]);
        src.Slice(HeaderSize + 8 * (nr - count), 8 * count).Clear();
        src.Slice(sbase + vs * (nr - count), vs * count).Clear();
        SetNrEntries(src, nr - count);
    }

    /// <summary>Inserts the last <paramref name="count"/> entries of <paramref name="src"/> in front of <paramref name="dst"/>'s.</summary>
    public static void MoveTailToFront(Span<byte> src, int count, Span<byte> dst)
    {
        int snr = NrEntries(src), dnr = NrEntries(dst), vs = ValueSize(src);
        int sbase = HeaderSize + 8 * MaxEntries(src), dbase = HeaderSize + 8 * MaxEntries(dst);
        dst.Slice(HeaderSize, 8 * dnr).CopyTo(dst[(HeaderSize + 8 * count)..]);
        dst.Slice(dbase, vs * dnr).CopyTo(dst[(dbase + vs * count)..]);
        src.Slice(HeaderSize + 8 * (snr - count), 8 * count).CopyTo(dst[HeaderSize..]);
        src.Slice(sbase + vs * (snr - count), vs * count).CopyTo(dst[dbase..]);
        src.Slice(HeaderSize + 8 * (snr - count), 8 * count).Clear();
        src.Slice(sbase + vs * (snr - count), vs * count).Clear();
        SetNrEntries(src, snr - count);
        SetNrEntries(dst, dnr + count);
    }
}

/// <summary>Per-device record in the details tree (24 bytes on disk).</summary>
public readonly record struct DeviceDetails(ulong MappedBlocks, ulong TransactionId, uint CreationTime, uint SnapshottedTime)
{
    public const int Size = 24;

    public static DeviceDetails Read(ReadOnlySpan<byte> v) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(v),
        BinaryPrimitives.ReadUInt64LittleEndian(v[8..]),
        BinaryPrimitives.ReadUInt32LittleEndian(v[16..]),
        BinaryPrimitives.ReadUInt32LittleEndian(v[20..]));

    public void Write(Span<byte> v)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(v, MappedBlocks);
        BinaryPrimitives.WriteUInt64LittleEndian(v[8..], TransactionId);
        BinaryPrimitives.WriteUInt32LittleEndian(v[16..], CreationTime);
        BinaryPrimitives.WriteUInt32LittleEndian(v[20..], SnapshottedTime);
    }
}

/// <summary>One space-map index entry (16 bytes), used by both space maps.</summary>
public readonly record struct IndexEntry(ulong BlockNumber, uint NrFree, uint NoneFreeBefore)
{
    public const int Size = 16;

    public static IndexEntry Read(ReadOnlySpan<byte> v) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(v),
        BinaryPrimitives.ReadUInt32LittleEndian(v[8..]),
        BinaryPrimitives.ReadUInt32LittleEndian(v[12..]));

    public void Write(Span<byte> v)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(v, BlockNumber);
        BinaryPrimitives.WriteUInt32LittleEndian(v[8..], NrFree);
        BinaryPrimitives.WriteUInt32LittleEndian(v[12..], NoneFreeBefore);
    }
}

/// <summary>The 32 meaningful bytes of a 128-byte sm_root field.</summary>
public readonly record struct SpaceMapRoot(ulong NrBlocks, ulong NrAllocated, ulong BitmapRoot, ulong RefCountRoot)
{
    public static SpaceMapRoot Read(ReadOnlySpan<byte> v) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(v),
        BinaryPrimitives.ReadUInt64LittleEndian(v[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(v[16..]),
        BinaryPrimitives.ReadUInt64LittleEndian(v[24..]));

    public void Write(Span<byte> v)
    {
        v[..128].Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(v, NrBlocks);
        BinaryPrimitives.WriteUInt64LittleEndian(v[8..], NrAllocated);
        BinaryPrimitives.WriteUInt64LittleEndian(v[16..], BitmapRoot);
        BinaryPrimitives.WriteUInt64LittleEndian(v[24..], RefCountRoot);
    }
}

/// <summary>Decoded superblock (block 0, or a metadata-snapshot copy).</summary>
public sealed record Superblock
{
    public uint Flags { get; set; }
    public ulong BlockNumber { get; set; }
    public ulong Magic { get; set; } = MetadataFormat.Magic;
    public uint Version { get; set; } = 2;
    public uint Time { get; set; }
    public ulong TransactionId { get; set; }
    public ulong HeldRoot { get; set; }
    public SpaceMapRoot DataSpaceMap { get; set; }
    public SpaceMapRoot MetadataSpaceMap { get; set; }
    public ulong DataMappingRoot { get; set; }
    public ulong DeviceDetailsRoot { get; set; }
    public uint DataBlockSize { get; set; }
    public uint MetadataBlockSize { get; set; } = 8;
    public ulong MetadataNrBlocks { get; set; }
    public uint CompatFlags { get; set; }
    public uint CompatRoFlags { get; set; }
    public uint IncompatFlags { get; set; }

    public const uint NeedsCheckFlag = 1;

    public static Superblock Read(ReadOnlySpan<byte> b) => new()
    {
        Flags = BinaryPrimitives.ReadUInt32LittleEndian(b[0x4..]),
        BlockNumber = BinaryPrimitives.ReadUInt64LittleEndian(b[0x8..]),
        Magic = BinaryPrimitives.ReadUInt64LittleEndian(b[0x20..]),
        Version = BinaryPrimitives.ReadUInt32LittleEndian(b[0x28..]),
        Time = BinaryPrimitives.ReadUInt32LittleEndian(b[0x2C..]),
        TransactionId = BinaryPrimitives.ReadUInt64LittleEndian(b[0x30..]),
        HeldRoot = BinaryPrimitives.ReadUInt64LittleEndian(b[0x38..]),
        DataSpaceMap = SpaceMapRoot.Read(b[0x40..]),
        MetadataSpaceMap = SpaceMapRoot.Read(b[0xC0..]),
        DataMappingRoot = BinaryPrimitives.ReadUInt64LittleEndian(b[0x140..]),
        DeviceDetailsRoot = BinaryPrimitives.ReadUInt64LittleEndian(b[0x148..]),
        DataBlockSize = BinaryPrimitives.ReadUInt32LittleEndian(b[0x150..]),
        MetadataBlockSize = BinaryPrimitives.ReadUInt32LittleEndian(b[0x154..]),
        MetadataNrBlocks = BinaryPrimitives.ReadUInt64LittleEndian(b[0x158..]),
        CompatFlags = BinaryPrimitives.ReadUInt32LittleEndian(b[0x160..]),
        CompatRoFlags = BinaryPrimitives.ReadUInt32LittleEndian(b[0x164..]),
        IncompatFlags = BinaryPrimitives.ReadUInt32LittleEndian(b[0x168..]),
    };

    /// <summary>Writes every field and seals the block (blocknr, then checksum).</summary>
    public void Write(Span<byte> b)
    {
        b[..MetadataFormat.BlockSize].Clear();
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x4..], Flags);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x20..], Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x28..], Version);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x2C..], Time);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x30..], TransactionId);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x38..], HeldRoot);
        DataSpaceMap.Write(b[0x40..]);
        MetadataSpaceMap.Write(b[0xC0..]);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x140..], DataMappingRoot);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x148..], DeviceDetailsRoot);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x150..], DataBlockSize);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x154..], MetadataBlockSize);
        BinaryPrimitives.WriteUInt64LittleEndian(b[0x158..], MetadataNrBlocks);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x160..], CompatFlags);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x164..], CompatRoFlags);
        BinaryPrimitives.WriteUInt32LittleEndian(b[0x168..], IncompatFlags);
        MetadataFormat.Seal(b, BlockNumber, MetadataFormat.SuperblockSalt);
    }
}
