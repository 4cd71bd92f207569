using System.Buffers.Binary;
using ThinFast.Metadata;

namespace ThinFast.Testing;

/// <summary>Edits to a committed dm-thin metadata image that the engine never makes itself, to
/// build the states other writers leave behind (a leak after a crash of the kernel's dm-thin).</summary>
public static class MetadataImageEdits
{
    /// <summary>Sets one data block's count in the first data bitmap (counts 0..2: no overflow
    /// entry is written) and reseals the bitmap's checksum.</summary>
    public static void SetDataBlockCount(byte[] image, ulong dataBlock, uint count)
    {
        if (count > 2 || dataBlock >= MetadataFormat.EntriesPerBitmap)
            throw new ArgumentOutOfRangeException(nameof(dataBlock), "only counts 0..2 in the first bitmap");
        var sb = Superblock.Read(image);
        Span<byte> indexRoot = Block(image, sb.DataSpaceMap.BitmapRoot);
        if (!Node.IsLeaf(indexRoot))
            throw new ArgumentException("the data space-map index has more than one level");
        Span<byte> bitmap = Block(image, IndexEntry.Read(Node.Value(indexRoot, 0)).BlockNumber);
        MetadataFormat.WriteBitmapEntry(bitmap, (int)dataBlock, count);
        BinaryPrimitives.WriteUInt32LittleEndian(bitmap, MetadataFormat.ComputeChecksum(bitmap, MetadataFormat.BitmapSalt));
    }

    private static Span<byte> Block(byte[] image, ulong block) =>
        image.AsSpan(checked((int)block * MetadataFormat.BlockSize), MetadataFormat.BlockSize);
}
