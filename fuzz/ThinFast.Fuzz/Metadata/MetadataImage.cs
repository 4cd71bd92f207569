using ThinFast.Metadata;
using ThinFast.Testing;

namespace ThinFast.Fuzz.Metadata;

/// <summary>What a block of <see cref="MetadataImage"/> holds, as its checksum salt tells.</summary>
public enum ImageBlockKind
{
    Superblock,
    BTreeNode,
    Bitmap,
    Index,
}

/// <summary>
/// A small but complete pool's metadata, made by the code under test: a thin device with enough
/// mappings for internal and leaf nodes, snapshots of it written to afterwards (shared subtrees,
/// data ref counts of 3 and more, so the overflow trees are populated), an empty thin, two data
/// space-map bitmaps (so the data index tree has two entries). The block targets graft one fuzzed
/// block into a copy of it.
/// </summary>
public sealed class MetadataImage
{
    public const int MetadataBlocks = 128;
    public const ulong DataBlocks = 20000;

    private MetadataImage(byte[] bytes, IReadOnlyList<(int Block, ImageBlockKind Kind)> blocks, int detailsRoot)
    {
        Bytes = bytes;
        Blocks = blocks;
        DetailsRoot = detailsRoot;
    }

    /// <summary>The committed image (do not change it: targets copy it).</summary>
    public byte[] Bytes { get; }

    /// <summary>Every block in use, with what it is.</summary>
    public IReadOnlyList<(int Block, ImageBlockKind Kind)> Blocks { get; }

    /// <summary>The device-details tree's root, a leaf with one record per device.</summary>
    public int DetailsRoot { get; }

    public static MetadataImage Instance { get; } = Build();

    public IReadOnlyList<int> BlocksOf(params ImageBlockKind[] kinds) =>
        [.. Blocks.Where(b => kinds.Contains(b.Kind)).Select(b => b.Block)];

    public static uint Salt(ImageBlockKind kind) => kind switch
    {
        ImageBlockKind.Superblock => MetadataFormat.SuperblockSalt,
        ImageBlockKind.BTreeNode => MetadataFormat.NodeSalt,
        ImageBlockKind.Bitmap => MetadataFormat.BitmapSalt,
        _ => MetadataFormat.IndexSalt,
    };

    private static MetadataImage Build()
    {
        var device = new MemoryBlockDevice((long)MetadataBlocks * MetadataFormat.BlockSize);
        using (var md = ThinMetadata.Format(device, 128, DataBlocks))
        {
            md.CreateThin(1);
            for (ulong v = 0; v < 700; v++)
                Map(md, 1, v * 3);
            // Each snapshot shares device 1's tree; the writes after it shadow the shared nodes,
            // which raises the data blocks' counts by one each time.
            for (ulong snap = 2; snap <= 4; snap++)
            {
                md.CreateSnapshot(snap, 1);
                Map(md, 1, 10_000 + snap);
            }
            md.CreateThin(5);
            Map(md, 5, 16_500);
            MapPastFirstBitmap(md, 5, 16_501);
            md.Commit();
        }
        byte[] bytes = device.ToArray();
        var blocks = new List<(int, ImageBlockKind)>();
        for (int b = 0; b < MetadataBlocks; b++)
        {
            ReadOnlySpan<byte> block = bytes.AsSpan(b * MetadataFormat.BlockSize, MetadataFormat.BlockSize);
            foreach (var kind in Enum.GetValues<ImageBlockKind>())
            {
                if (MetadataFormat.StoredChecksum(block) == MetadataFormat.ComputeChecksum(block, Salt(kind))
                    && MetadataFormat.StoredBlockNumber(block) == (ulong)b && IsLive(bytes, b))
                    blocks.Add((b, kind));
            }
        }
        var superblock = Superblock.Read(bytes);
        return new MetadataImage(bytes, blocks, checked((int)superblock.DeviceDetailsRoot));
    }

    // Copies from before the last commit keep valid checksums but nothing points to them, and a
    // fuzzed block there would never be read: a block is live when wiping it is noticed.
    private static bool IsLive(byte[] image, int block)
    {
        byte[] wiped = (byte[])image.Clone();
        wiped.AsSpan(block * MetadataFormat.BlockSize, MetadataFormat.BlockSize).Clear();
        try
        {
            using var md = ThinMetadata.Open(new MemoryBlockDevice(wiped));
            md.WriteXml(TextWriter.Null);
            return false;
        }
        catch (MetadataCorruptException)
        {
            return true;
        }
    }

    private static void Map(ThinMetadata md, ulong device, ulong virtualBlock) => md.Insert(device, virtualBlock, Allocate(md));

    // A mapping in the second data bitmap, so that bitmap holds a count too. Blocks are handed out
    // lowest first: reserve up to the bitmap's end, map the last one, give the others back.
    private static void MapPastFirstBitmap(ThinMetadata md, ulong device, ulong virtualBlock)
    {
        var reserved = new List<ulong>();
        ulong block;
        do
        {
            block = Allocate(md);
            reserved.Add(block);
        }
        while (block < MetadataFormat.EntriesPerBitmap);
        md.Insert(device, virtualBlock, block);
        foreach (ulong b in reserved.SkipLast(1))
            md.ReleaseDataBlock(b);
    }

    private static ulong Allocate(ThinMetadata md) =>
        md.TryAllocateDataBlock(out ulong block) ? block : throw new InvalidOperationException("the seed pool ran out of data blocks");
}
