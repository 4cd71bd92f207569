using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>Leaked data blocks (counted by the space map, referenced by no mapping) are what a
/// crash of the kernel's dm-thin leaves; <see cref="ThinMetadata.ReclaimLeakedDataBlocks"/> frees
/// them and touches nothing else. The leaks are made by editing a committed data bitmap, and
/// analyze.py (which fails on any leak) confirms each image is what the test says it is.</summary>
public class LeakTests
{
    private const int MappedBlocks = 300;

    // Device 1 maps virtual blocks 0..299 to data blocks 0..299; device 2 is its snapshot, so every
    // leaf is shared and each block is referenced once for both devices. Device 2 then overwrites
    // virtual block 0, which unshares one leaf: the blocks in that leaf gain a second reference.
    private static (byte[] Image, ulong Remapped) MakePool()
    {
        var dev = new MemoryBlockDevice(8 << 20);
        ulong remapped;
        using (var md = ThinMetadata.Format(dev, 128, 10_000))
        {
            md.CreateThin(1);
            for (ulong v = 0; v < MappedBlocks; v++)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                md.Insert(1, v, d);
            }
            md.Commit();
            md.CreateSnapshot(2, 1);
            Assert.True(md.TryAllocateDataBlock(out remapped));
            md.Insert(2, 0, remapped);
            md.Commit();
        }
        return (dev.ToArray(), remapped);
    }

    private static void SetDataCount(byte[] image, ulong dataBlock, uint count) =>
        MetadataImageEdits.SetDataBlockCount(image, dataBlock, count);

    private static ExternalTool.Result Analyze(byte[] image)
    {
        string path = Path.Combine(Path.GetTempPath(), $"thinfast-leak-{Guid.NewGuid():N}.meta");
        File.WriteAllBytes(path, image);
        try
        {
            return ExternalTool.Run("python3", [Path.Combine(ExternalTool.SharedDirectory, "tools", "dmthin", "analyze.py"), path]);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static List<(ulong Dev, ulong Virtual, ulong Data)> AllMappings(ThinMetadata md)
    {
        var result = new List<(ulong, ulong, ulong)>();
        foreach (ulong id in md.DeviceIds)
        {
            for (ulong v = 0; v < MappedBlocks; v++)
            {
                if (md.TryLookup(id, v, out var m))
                    result.Add((id, v, m.DataBlock));
            }
        }
        return result;
    }

    [Fact]
    public void LeakedBlocksAreFreedAndEveryMappingStays()
    {
        var (image, remapped) = MakePool();
        Assert.Equal(0, Analyze(image).ExitCode);
        // Ten blocks nothing maps, and one surplus reference on a block that is still mapped.
        for (ulong b = 1000; b < 1010; b++)
            SetDataCount(image, b, 1);
        SetDataCount(image, MappedBlocks - 1, 2);
        var before = Analyze(image);
        Assert.True(before.ExitCode != 0, $"analyze.py accepted the leaked image: {before}");

        var dev = new MemoryBlockDevice(image);
        List<(ulong, ulong, ulong)> mappings;
        using (var md = ThinMetadata.Open(dev))
        {
            mappings = AllMappings(md);
            ulong freeBefore = md.FreeDataBlocks;
            var reclaim = md.ReclaimLeakedDataBlocks();
            Assert.Equal(new LeakReclaim(FreedBlocks: 10, ExcessReferences: 11), reclaim);
            md.Commit();
            Assert.Equal(freeBefore + 10, md.FreeDataBlocks);
            // A second pass finds nothing: the recount agrees with what was written.
            Assert.Equal(new LeakReclaim(0, 0), md.ReclaimLeakedDataBlocks());
        }
        string path = Path.Combine(Path.GetTempPath(), $"thinfast-reclaimed-{Guid.NewGuid():N}.meta");
        File.WriteAllBytes(path, dev.ToArray());
        try
        {
            ExternalTool.AssertMetadataClean(path);
        }
        finally
        {
            File.Delete(path);
        }
        using (var md = ThinMetadata.Open(new MemoryBlockDevice(dev.ToArray())))
        {
            Assert.Equal(mappings, AllMappings(md));
            Assert.Equal(1u, md.GetDataBlockRefCount(MappedBlocks - 1));
            // Block 5 sits in the leaf device 2 unshared: two leaves hold it, so two references.
            Assert.Equal(2u, md.GetDataBlockRefCount(5));
            Assert.Equal(1u, md.GetDataBlockRefCount(remapped));
        }
    }

    [Fact]
    public void ACountBelowTheMappingsIsDamageAndNothingIsChanged()
    {
        var (image, _) = MakePool();
        SetDataCount(image, 7, 0);
        var dev = new MemoryBlockDevice(image);
        using var md = ThinMetadata.Open(dev);
        var e = Assert.Throws<MetadataCorruptException>(() => md.ReclaimLeakedDataBlocks());
        Assert.Contains("data block 7", e.Message);
        Assert.False(md.HasUncommittedChanges);
    }

    [Fact]
    public void BlocksOnlyAHeldMetadataSnapshotMapsAreNotLeaks()
    {
        var dev = new MemoryBlockDevice(8 << 20);
        using var md = ThinMetadata.Format(dev, 128, 10_000);
        md.CreateThin(1);
        Assert.True(md.TryAllocateDataBlock(out ulong d));
        md.Insert(1, 0, d);
        md.Commit();
        md.ReserveMetadataSnapshot();
        // The live tree drops the mapping; the held snapshot still references the block.
        Assert.True(md.Remove(1, 0));
        md.Commit();
        Assert.Equal(1u, md.GetDataBlockRefCount(d));
        Assert.Equal(new LeakReclaim(0, 0), md.ReclaimLeakedDataBlocks());
    }
}
