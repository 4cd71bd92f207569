using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

public class BasicTests
{
    [Fact]
    public void FreshPoolPassesCheckersAndDumpsIdentically()
    {
        var dev = new MemoryBlockDevice(8 << 20);
        using var md = ThinMetadata.Format(dev, 128, 1000);
        Oracles.AssertConsistent(dev);
        Oracles.AssertDumpEquals(dev, md);
    }

    [Fact]
    public void DevicesMappingsAndSnapshotsPassCheckers()
    {
        var dev = new MemoryBlockDevice(8 << 20);
        using var md = ThinMetadata.Format(dev, 128, 100_000);
        md.CreateThin(1);
        for (ulong v = 0; v < 2000; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v * 3, d);
        }
        md.Commit();
        md.CreateSnapshot(2, 1);
        md.CreateThin(7);
        for (ulong v = 0; v < 500; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v * 3, d);
        }
        for (ulong v = 1000; v < 1200; v++)
            md.Remove(2, v * 3);
        md.Commit();
        Oracles.AssertConsistent(dev);
        Oracles.AssertDumpEquals(dev, md);
        Assert.Equal(2000UL, md.GetDetails(1).MappedBlocks);
        Assert.Equal(1800UL, md.GetDetails(2).MappedBlocks);
        Assert.True(md.TryLookup(2, 3, out var m));
        Assert.True(m.Shared);
        md.DeleteDevice(1);
        md.Commit();
        Oracles.AssertConsistent(dev);
        Oracles.AssertDumpEquals(dev, md);
        using var reopened = ThinMetadata.Open(dev);
        Assert.Equal(new ulong[] { 2, 7 }, reopened.DeviceIds);
        Assert.Equal(md.FreeDataBlocks, reopened.FreeDataBlocks);
        Assert.Equal(md.FreeMetadataBlocks, reopened.FreeMetadataBlocks);
    }
}
