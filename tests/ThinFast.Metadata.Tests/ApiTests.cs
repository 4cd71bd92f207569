using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

public class ApiTests
{
    private static ThinMetadata PoolWithMappings(MemoryBlockDevice dev, ulong count)
    {
        var md = ThinMetadata.Format(dev, 128, count * 2);
        md.CreateThin(1);
        for (ulong v = 0; v < count; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v * 2, d);
        }
        md.Commit();
        return md;
    }

    [Fact]
    public void WarmLookupsAllocateNothing()
    {
        var dev = new MemoryBlockDevice(16 << 20);
        using var md = PoolWithMappings(dev, 50_000);
        for (ulong v = 0; v < 100_000; v++)
            md.TryLookup(1, v, out _);
        Span<MappedRange> ranges = stackalloc MappedRange[16];
        md.LookupRange(1, 0, 1000, ranges);
        long before = GC.GetAllocatedBytesForCurrentThread();
        ulong found = 0;
        for (ulong v = 0; v < 100_000; v++)
            if (md.TryLookup(1, v, out BlockMapping m) && m.DataBlock == v / 2)
                found++;
        int n = md.LookupRange(1, 0, 1000, ranges);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(50_000ul, found);
        Assert.Equal(16, n);
        Assert.Equal(0, allocated);
    }

    [Fact]
    public void ConcurrentColdReadersSeeTheSameMappings()
    {
        var dev = new MemoryBlockDevice(16 << 20);
        PoolWithMappings(dev, 60_000).Dispose();
        using var md = ThinMetadata.Open(dev);
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        Parallel.For(0, 8, t =>
        {
            for (ulong v = (ulong)t; v < 120_000; v += 3)
            {
                bool mapped = md.TryLookup(1, v, out BlockMapping m);
                if (mapped != (v % 2 == 0) || (mapped && m.DataBlock != v / 2))
                    errors.Enqueue($"thread {t} vblock {v}: mapped {mapped} block {m.DataBlock}");
            }
        });
        Assert.Empty(errors);
    }

    [Fact]
    public void MisuseIsRefusedWithoutChangingState()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using var md = PoolWithMappings(dev, 10);
        Assert.Throws<InvalidOperationException>(() => md.CreateThin(1));
        Assert.Throws<KeyNotFoundException>(() => md.CreateSnapshot(2, 9));
        Assert.Throws<KeyNotFoundException>(() => md.DeleteDevice(9));
        Assert.Throws<KeyNotFoundException>(() => md.Insert(9, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => md.Insert(1, 0, 19));
        Assert.Throws<InvalidOperationException>(() => md.SetTransactionId(5, 6));
        Assert.Throws<InvalidOperationException>(() => md.ReleaseMetadataSnapshot());
        Assert.False(md.HasUncommittedChanges);
        Assert.Throws<ArgumentOutOfRangeException>(() => ThinMetadata.Format(new MemoryBlockDevice(1 << 20), 100, 10));
    }

    [Fact]
    public void DataSpaceRunsOutThenGrows()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using var md = ThinMetadata.Format(dev, 128, 100);
        md.CreateThin(1);
        for (ulong v = 0; v < 100; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v, d);
        }
        Assert.False(md.TryAllocateDataBlock(out _));
        md.GrowDataSpace(40_000);
        Assert.Equal(39_900ul, md.FreeDataBlocks);
        for (ulong v = 100; v < 20_000; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v, d);
        }
        md.Commit();
        Oracles.AssertConsistent(dev);
        Oracles.AssertDumpEquals(dev, md);
    }

    [Fact]
    public void ACommitWhileWritersFillTheirBlocksWritesThoseBlocksOutFree()
    {
        // A commit that runs while provisioning writes are still filling their blocks must not
        // make those blocks allocated on disk without a mapping: a crash would leak them for good.
        var dev = new MemoryBlockDevice(4 << 20);
        using var md = ThinMetadata.Format(dev, 128, 8);
        md.CreateThin(1);
        Assert.True(md.TryAllocateDataBlock(out ulong mapped));
        Assert.True(md.TryAllocateDataBlock(out ulong filling));
        Assert.True(md.TryAllocateDataBlock(out ulong failed));
        md.Insert(1, 0, mapped);
        md.ReleaseDataBlock(failed);
        md.Commit();
        Oracles.AssertConsistent(dev);
        using (var crashed = ThinMetadata.Open(new MemoryBlockDevice(dev.ToArray())))
        {
            Assert.Equal(7ul, crashed.FreeDataBlocks);
            Assert.Equal(0u, crashed.GetDataBlockRefCount(filling));
        }
        // Still reserved in memory: nobody else gets it, and the writer can map it.
        Assert.Equal(1ul, md.ReservedDataBlocks);
        for (int i = 0; i < 6; i++)
            Assert.True(md.TryAllocateDataBlock(out ulong other) && other != filling && other != mapped);
        Assert.False(md.TryAllocateDataBlock(out _));
        md.Insert(1, 1, filling);
        Assert.Equal(1u, md.GetDataBlockRefCount(filling));
    }

    [Fact]
    public void HeldDataBlocksStayUnallocatableThroughTheCommitUntilReleased()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using var md = ThinMetadata.Format(dev, 128, 2);
        md.CreateThin(1);
        Assert.True(md.TryAllocateDataBlock(out ulong a));
        md.Insert(1, 0, a);
        md.Commit();
        Assert.True(md.Remove(1, 0));
        md.HoldDataBlock(a);
        md.Commit();
        Oracles.AssertConsistent(dev);
        Assert.Equal(2ul, md.FreeDataBlocks);
        Assert.Equal(1ul, md.AllocatableDataBlocks);
        Assert.True(md.TryAllocateDataBlock(out ulong b));
        Assert.NotEqual(a, b);
        Assert.False(md.TryAllocateDataBlock(out _));
        md.ReleaseHeldDataBlock(a);
        Assert.True(md.TryAllocateDataBlock(out ulong again));
        Assert.Equal(a, again);
    }

    [Fact]
    public void AllocationOnAFullPoolScansNothingAndFillingItScansEachEntryAboutOnce()
    {
        // A write on a full pool asks for a block under the pool's exclusive metadata lock, and
        // asks again each time it is retried: that must not cost a pass over the whole table.
        const ulong blocks = 200_000;
        var dev = new MemoryBlockDevice(16 << 20);
        using var md = ThinMetadata.Format(dev, 128, blocks);
        for (ulong i = 0; i < blocks; i++)
            Assert.True(md.TryAllocateDataBlock(out _));
        long filling = md.DataEntriesScanned;
        Assert.True(filling <= 2 * (long)blocks, $"filling {blocks} blocks looked at {filling} entries");
        for (int i = 0; i < 1000; i++)
            Assert.False(md.TryAllocateDataBlock(out _));
        Assert.Equal(filling, md.DataEntriesScanned);
    }

    [Fact]
    public void FreedDataBlocksAreNotReusedBeforeTheCommit()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using var md = ThinMetadata.Format(dev, 128, 3);
        md.CreateThin(1);
        Assert.True(md.TryAllocateDataBlock(out ulong a));
        md.Insert(1, 0, a);
        md.Commit();
        Assert.True(md.Remove(1, 0));
        Assert.Equal(0u, md.GetDataBlockRefCount(a));
        Assert.True(md.TryAllocateDataBlock(out ulong b));
        Assert.True(md.TryAllocateDataBlock(out ulong c));
        Assert.DoesNotContain(a, new[] { b, c });
        Assert.False(md.TryAllocateDataBlock(out _));
        md.ReleaseDataBlock(c);
        md.Commit();
        Assert.True(md.TryAllocateDataBlock(out ulong again));
        Assert.True(again == a || again == c);
    }

    [Fact]
    public void MetadataGrowsPastOneBitmapAndIsCapped()
    {
        var file = new MemoryBlockDevice(8 << 20);
        using var md = ThinMetadata.Format(file, 128, 200_000);
        Assert.Equal(2048ul, md.MetadataBlockCount);
        file.Grow(80L << 20);
        md.GrowMetadata(20480);
        Assert.Equal(20480ul, md.MetadataBlockCount);
        md.CreateThin(1);
        for (ulong v = 0; v < 150_000; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v * 3, d);
        }
        md.Commit();
        Oracles.AssertConsistent(file);
        Oracles.AssertDumpEquals(file, md);
        md.Dispose();
        using var reopened = ThinMetadata.Open(file);
        Assert.Equal(20480ul, reopened.MetadataBlockCount);
        Assert.Throws<ArgumentOutOfRangeException>(() => reopened.GrowMetadata(30000));
    }

    [Fact]
    public void MetadataSnapshotIsReadableByThinDumpWhileThePoolChanges()
    {
        var dev = new MemoryBlockDevice(8 << 20);
        using var md = PoolWithMappings(dev, 3000);
        var frozen = new StringWriter();
        md.WriteXml(frozen);
        md.ReserveMetadataSnapshot();
        Assert.NotEqual(0ul, md.MetadataSnapshotBlock);
        Assert.Throws<InvalidOperationException>(() => md.ReserveMetadataSnapshot());
        for (ulong v = 0; v < 500; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v, d);
        }
        md.CreateSnapshot(2, 1);
        md.Commit();
        string path = Oracles.TempFile("img");
        try
        {
            dev.SaveTo(path);
            Oracles.AssertConsistent(path);
            var snap = Oracles.ThinDump(path, metadataSnap: true);
            Assert.True(snap.ExitCode == 0, snap.ToString());
            // thin_dump -m prints nr_data_blocks 0 for the copy; otherwise the frozen state.
            Assert.Equal(frozen.ToString().Replace("nr_data_blocks=\"6000\"", "nr_data_blocks=\"0\""), snap.Stdout);
            var check = Oracles.Run("thin_check", "apt-get install thin-provisioning-tools", "-m", path);
            Assert.True(check.ExitCode == 0, check.ToString());
        }
        finally
        {
            File.Delete(path);
        }
        md.ReleaseMetadataSnapshot();
        Assert.Equal(0ul, md.MetadataSnapshotBlock);
        Oracles.AssertConsistent(dev);
        Oracles.AssertDumpEquals(dev, md);
    }

    [Fact]
    public void NeedsCheckFlagPersistsAndShowsInTheDump()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        using (var md = PoolWithMappings(dev, 10))
        {
            Assert.False(md.NeedsCheck);
            md.SetNeedsCheck(true);
            Assert.True(md.HasUncommittedChanges);
            md.Commit();
            Oracles.AssertDumpEquals(dev, md);
        }
        using (var md = ThinMetadata.Open(dev))
        {
            Assert.True(md.NeedsCheck);
            var xml = new StringWriter();
            md.WriteXml(xml);
            Assert.Contains("flags=\"1\"", xml.ToString());
            md.SetNeedsCheck(false);
            md.Commit();
        }
        using (var md = ThinMetadata.Open(dev))
            Assert.False(md.NeedsCheck);
    }
}
