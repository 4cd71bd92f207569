using System.Buffers.Binary;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>Damage to each block kind is reported as MetadataCorruptException naming block, kind and fault.</summary>
public class CorruptionTests
{
    private sealed record Layout(Superblock Sb, ulong MetaBitmap, ulong DataBitmap, ulong BottomRoot, ulong BottomLeaf);

    private static (byte[] Image, Layout Layout) MakePool()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using (var md = ThinMetadata.Format(dev, 128, 10_000))
        {
            md.CreateThin(1);
            md.CreateThin(2);
            for (ulong v = 0; v < 1000; v++)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                md.Insert(1, v, d);
            }
            md.Commit();
        }
        byte[] image = dev.ToArray();
        var sb = Superblock.Read(image);
        ulong metaBitmap = IndexEntry.Read(Block(image, sb.MetadataSpaceMap.BitmapRoot).Slice(16, 16)).BlockNumber;
        ulong dataBitmap = IndexEntry.Read(Node.Value(Block(image, sb.DataSpaceMap.BitmapRoot), 0)).BlockNumber;
        ulong bottomRoot = Node.Value64(Block(image, sb.DataMappingRoot), 0);
        Assert.False(Node.IsLeaf(Block(image, bottomRoot)));
        ulong bottomLeaf = Node.Value64(Block(image, bottomRoot), 1);
        return (image, new Layout(sb, metaBitmap, dataBitmap, bottomRoot, bottomLeaf));
    }

    private static Span<byte> Block(byte[] image, ulong b) => image.AsSpan((int)b * 4096, 4096);

    private static void Reseal(byte[] image, ulong b, uint salt) =>
        BinaryPrimitives.WriteUInt32LittleEndian(Block(image, b), MetadataFormat.ComputeChecksum(Block(image, b), salt));

    private static MetadataCorruptException OpenAndRead(byte[] image)
    {
        return Assert.Throws<MetadataCorruptException>(() =>
        {
            using var md = ThinMetadata.Open(new MemoryBlockDevice(image));
            for (ulong v = 0; v < 1000; v++)
                md.TryLookup(1, v, out _);
        });
    }

    private static void AssertFault(MetadataCorruptException e, ulong block, MetadataBlockKind kind, MetadataFault fault, MetadataTree tree = MetadataTree.None)
    {
        Assert.Equal(block, e.BlockNumber);
        Assert.Equal(kind, e.Kind);
        Assert.Equal(fault, e.Fault);
        if (tree != MetadataTree.None)
            Assert.Equal(tree, e.Tree);
        Assert.Contains($"metadata block {block} ", e.Message);
        Assert.Contains(fault.ToString(), e.Message);
    }

    [Fact]
    public void FlippedByteInEachBlockKindIsABadChecksumOfThatBlock()
    {
        var (pristine, l) = MakePool();
        (ulong Block, MetadataBlockKind Kind, MetadataTree Tree, string Name)[] targets =
        [
            (0, MetadataBlockKind.Superblock, MetadataTree.None, "superblock"),
            (l.Sb.MetadataSpaceMap.BitmapRoot, MetadataBlockKind.Index, MetadataTree.None, "metadata space-map index"),
            (l.MetaBitmap, MetadataBlockKind.Bitmap, MetadataTree.None, "space-map bitmap"),
            (l.DataBitmap, MetadataBlockKind.Bitmap, MetadataTree.None, "space-map bitmap"),
            (l.Sb.DataSpaceMap.BitmapRoot, MetadataBlockKind.BTreeNode, MetadataTree.DataSpaceMapIndex, "data space-map index tree"),
            (l.Sb.DataSpaceMap.RefCountRoot, MetadataBlockKind.BTreeNode, MetadataTree.DataRefCounts, "data ref-count tree"),
            (l.Sb.MetadataSpaceMap.RefCountRoot, MetadataBlockKind.BTreeNode, MetadataTree.MetadataRefCounts, "metadata ref-count tree"),
            (l.Sb.DeviceDetailsRoot, MetadataBlockKind.BTreeNode, MetadataTree.DeviceDetails, "device details tree"),
            (l.Sb.DataMappingRoot, MetadataBlockKind.BTreeNode, MetadataTree.MappingTop, "mapping top-level tree"),
            (l.BottomRoot, MetadataBlockKind.BTreeNode, MetadataTree.MappingBottom, "mapping bottom-level tree"),
            (l.BottomLeaf, MetadataBlockKind.BTreeNode, MetadataTree.MappingBottom, "mapping bottom-level tree"),
        ];
        foreach (var (block, kind, tree, name) in targets)
        {
            byte[] image = (byte[])pristine.Clone();
            Block(image, block)[100] ^= 0x40;
            var e = OpenAndRead(image);
            AssertFault(e, block, kind, MetadataFault.BadChecksum, tree);
            Assert.Contains(name, e.Message);
        }
    }

    [Fact]
    public void DamagedSuperblocksAreRefusedWithTheReason()
    {
        var (pristine, _) = MakePool();
        (int Offset, ulong Value, int Size, MetadataFault Fault)[] cases =
        [
            (0x20, 12345, 8, MetadataFault.BadMagic),
            (0x08, 5, 8, MetadataFault.WrongBlockNumber),
            (0x28, 3, 4, MetadataFault.UnsupportedVersion),
            (0x168, 1, 4, MetadataFault.UnsupportedFeatures),
            (0x154, 16, 4, MetadataFault.BadGeometry),
            (0x158, 1 << 30, 8, MetadataFault.BadGeometry),
        ];
        foreach (var (offset, value, size, fault) in cases)
        {
            byte[] image = (byte[])pristine.Clone();
            if (size == 8) BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(offset), value);
            else BinaryPrimitives.WriteUInt32LittleEndian(image.AsSpan(offset), (uint)value);
            Reseal(image, 0, MetadataFormat.SuperblockSalt);
            AssertFault(OpenAndRead(image), 0, MetadataBlockKind.Superblock, fault);
        }
        byte[] zero = new byte[pristine.Length];
        AssertFault(OpenAndRead(zero), 0, MetadataBlockKind.Superblock, MetadataFault.BadChecksum);
    }

    [Fact]
    public void StructuralNodeDamageIsNamedEvenWithAValidChecksum()
    {
        var (pristine, l) = MakePool();
        ulong leaf = l.BottomLeaf, root = l.BottomRoot;
        (ulong Block, Action<byte[]> Damage, MetadataFault Fault)[] cases =
        [
            (leaf, img => BinaryPrimitives.WriteUInt64LittleEndian(Block(img, leaf)[8..], leaf + 1), MetadataFault.WrongBlockNumber),
            (leaf, img => BinaryPrimitives.WriteUInt32LittleEndian(Block(img, leaf)[4..], 3), MetadataFault.BadFlags),
            (leaf, img => BinaryPrimitives.WriteUInt32LittleEndian(Block(img, leaf)[20..], 251), MetadataFault.BadMaxEntries),
            (leaf, img => BinaryPrimitives.WriteUInt32LittleEndian(Block(img, leaf)[24..], 16), MetadataFault.BadValueSize),
            (leaf, img => BinaryPrimitives.WriteUInt32LittleEndian(Block(img, leaf)[16..], 253), MetadataFault.TooManyEntries),
            (leaf, img =>
            {
                Span<byte> n = Block(img, leaf);
                ulong k0 = Node.Key(n, 0), k1 = Node.Key(n, 1);
                Node.SetKey(n, 0, k1);
                Node.SetKey(n, 1, k0);
            }, MetadataFault.KeysOutOfOrder),
            (1000, img => Node.SetValue64(Block(img, root), 1, 1000), MetadataFault.BadChecksum),
            (1_000_000, img => Node.SetValue64(Block(img, root), 1, 1_000_000), MetadataFault.PointerOutOfRange),
            (root, img => Node.SetValue64(Block(img, root), 0, root), MetadataFault.TreeTooDeep),
        ];
        foreach (var (block, damage, fault) in cases)
        {
            byte[] image = (byte[])pristine.Clone();
            damage(image);
            Reseal(image, leaf, MetadataFormat.NodeSalt);
            Reseal(image, root, MetadataFormat.NodeSalt);
            AssertFault(OpenAndRead(image), block, MetadataBlockKind.BTreeNode, fault, MetadataTree.MappingBottom);
        }
    }
}
