using System.Buffers.Binary;
using System.Text;

namespace ThinFast.Metadata.Tests;

/// <summary>The format's golden vectors (spec §1.1, §4, §6.1), checked against thin_restore's own output.</summary>
public class CodecTests
{
    [Fact]
    public void Crc32CMatchesThePublishedCheckValueAndTheRawRegisterForm()
    {
        byte[] data = Encoding.ASCII.GetBytes("123456789");
        Assert.Equal(0x1CF96D7Cu, Crc32C.ComputeRaw(data));
        Assert.Equal(0xE3069283u, Crc32C.ComputeStandard(data));
        var random = new byte[4093];
        new Random(5).NextBytes(random);
        Assert.Equal(Crc32C.UpdateSoftware(0xFFFFFFFF, random), Crc32C.ComputeRaw(random));
    }

    [Fact]
    public void ChecksumsOfThinRestoreBlocksMatchTheSpecGoldenValues()
    {
        byte[] image = File.ReadAllBytes(Fixtures.Path("x1.bin"));
        (int Block, uint Salt, uint Stored, uint Raw)[] golden =
        [
            (0, MetadataFormat.SuperblockSalt, 0x27E0419E, 0x27E23598),
            (1, MetadataFormat.IndexSalt, 0x8E40F8A0, 0x8E428A7E),
            (2, MetadataFormat.NodeSalt, 0xC360E452, 0xC3613D41),
            (3, MetadataFormat.BitmapSalt, 0x35524EBB, 0x3551E230),
        ];
        foreach (var (block, salt, stored, raw) in golden)
        {
            ReadOnlySpan<byte> b = image.AsSpan(block * 4096, 4096);
            Assert.Equal(stored, MetadataFormat.StoredChecksum(b));
            Assert.Equal(raw, Crc32C.ComputeRaw(b[4..]));
            Assert.Equal(stored, MetadataFormat.ComputeChecksum(b, salt));
            byte[] copy = b.ToArray();
            BinaryPrimitives.WriteUInt32LittleEndian(copy, 0);
            MetadataFormat.Seal(copy, (ulong)block, salt);
            Assert.Equal(b.ToArray(), copy);
        }
    }

    [Fact]
    public void SuperblockFieldsDecodeAtTheSpecOffsetsAndRoundTrip()
    {
        byte[] image = File.ReadAllBytes(Fixtures.Path("x1.bin"));
        var sb = Superblock.Read(image.AsSpan(0, 4096));
        Assert.Equal(MetadataFormat.Magic, sb.Magic);
        Assert.Equal(2u, sb.Version);
        Assert.Equal(1u, sb.Time);
        Assert.Equal(7ul, sb.TransactionId);
        Assert.Equal(new SpaceMapRoot(1000, 3, 4, 5), sb.DataSpaceMap);
        Assert.Equal(new SpaceMapRoot(2048, 11, 1, 2), sb.MetadataSpaceMap);
        Assert.Equal(7ul, sb.DataMappingRoot);
        Assert.Equal(6ul, sb.DeviceDetailsRoot);
        Assert.Equal(128u, sb.DataBlockSize);
        Assert.Equal(8u, sb.MetadataBlockSize);
        Assert.Equal(2048ul, sb.MetadataNrBlocks);
        var written = new byte[4096];
        sb.Write(written);
        Assert.Equal(image.AsSpan(0, 4096).ToArray(), written);
    }

    [Fact]
    public void NodeLayoutValuesStartAfterMaxEntriesKeys()
    {
        Assert.Equal(336, MetadataFormat.MaxEntries(4));
        Assert.Equal(252, MetadataFormat.MaxEntries(8));
        Assert.Equal(168, MetadataFormat.MaxEntries(16));
        Assert.Equal(126, MetadataFormat.MaxEntries(24));
        byte[] image = File.ReadAllBytes(Fixtures.Path("x1.bin"));
        ReadOnlySpan<byte> leaf = image.AsSpan(10 * 4096, 4096);
        Assert.Equal(Node.LeafFlag, Node.Flags(leaf));
        Assert.Equal(3, Node.NrEntries(leaf));
        Assert.Equal(0x800, Node.ValueOffset(leaf, 0));
        Assert.Equal(new ulong[] { 0, 1, 5 }, new[] { Node.Key(leaf, 0), Node.Key(leaf, 1), Node.Key(leaf, 2) });
        Assert.Equal(0x0A000000ul, Node.Value64(leaf, 0));
        Assert.Equal(0x14000001ul, Node.Value64(leaf, 2));
        Assert.Equal(20ul, MetadataFormat.MappingBlock(Node.Value64(leaf, 2)));
        Assert.Equal(1u, MetadataFormat.MappingTime(Node.Value64(leaf, 2)));
        Assert.Equal(0x14000001ul, MetadataFormat.PackMapping(20, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => MetadataFormat.PackMapping(1, 1u << 24));
        Assert.Throws<ArgumentOutOfRangeException>(() => MetadataFormat.PackMapping(1ul << 40, 0));

        ReadOnlySpan<byte> details = image.AsSpan(6 * 4096, 4096);
        Assert.Equal(0x410, Node.ValueOffset(details, 0));
        Assert.Equal(new DeviceDetails(3, 0, 0, 1), DeviceDetails.Read(Node.Value(details, 0)));
        Assert.Equal(new DeviceDetails(0, 3, 1, 1), DeviceDetails.Read(Node.Value(details, 1)));

        ReadOnlySpan<byte> dataIndex = image.AsSpan(4 * 4096, 4096);
        Assert.Equal(0x560, Node.ValueOffset(dataIndex, 0));
        Assert.Equal(new IndexEntry(9, 997, 0), IndexEntry.Read(Node.Value(dataIndex, 0)));
        Assert.Equal(new IndexEntry(3, 2037, 11), IndexEntry.Read(image.AsSpan(4096 + 16, 16)));
    }

    [Fact]
    public void BitmapCountOneIsTheOddBit()
    {
        byte[] image = File.ReadAllBytes(Fixtures.Path("x1.bin"));
        Assert.Equal(new byte[] { 0xAA, 0xAA, 0x2A, 0x00 }, image.AsSpan(3 * 4096 + 16, 4).ToArray());
        for (int j = 0; j <= 10; j++)
            Assert.Equal(1u, MetadataFormat.ReadBitmapEntry(image.AsSpan(3 * 4096, 4096), j));
        Assert.Equal(0u, MetadataFormat.ReadBitmapEntry(image.AsSpan(3 * 4096, 4096), 11));

        var bitmap = new byte[4096];
        uint[] counts = [1, 3, 3, 3, 2, 2, 3, 2];
        for (int j = 0; j < counts.Length; j++)
            MetadataFormat.WriteBitmapEntry(bitmap, j, counts[j] == 3 ? 7 : counts[j]);
        Assert.Equal(new byte[] { 0xFE, 0x75 }, bitmap.AsSpan(16, 2).ToArray());
        for (int j = 0; j < counts.Length; j++)
            Assert.Equal(counts[j], MetadataFormat.ReadBitmapEntry(bitmap, j));
    }
}
