using System.Text.RegularExpressions;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

public class LargePoolTests
{
    /// <summary>
    /// Over 300,000 mappings across snapshots, so bottom trees are three levels deep and removals
    /// merge and redistribute internal nodes; every stage passes thin_check and dumps identically, and
    /// two stages also go through analyze.py's full recount (slow in Python, hence not all four).
    /// </summary>
    [Fact]
    public void ThreeLevelTreesWithSnapshotsPassTheOracles()
    {
        var dev = new MemoryBlockDevice(48L << 20);
        using var md = ThinMetadata.Format(dev, 128, 360_000);
        var rng = new Random(99);
        md.CreateThin(1);
        for (ulong v = 0; v < 220_000; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, v, d);
        }
        md.Commit();
        md.CreateSnapshot(2, 1);
        for (int i = 0; i < 20_000; i++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(1, (ulong)rng.Next(220_000), d);
        }
        md.CreateSnapshot(3, 2);
        for (ulong v = 0; v < 100_000; v++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(3, 300_000 + v * 2, d);
        }
        md.Commit();
        Check(dev, md, minDepth: 3, analyze: false);

        Assert.Equal(60_000ul, md.RemoveRange(1, 50_000, 110_000));
        for (int i = 0; i < 5_000; i++)
            md.Remove(3, (ulong)rng.Next(400_000));
        md.DeleteDevice(2);
        md.Commit();
        Check(dev, md, minDepth: 3);

        md.ReserveMetadataSnapshot();
        for (int i = 0; i < 2_000; i++)
        {
            Assert.True(md.TryAllocateDataBlock(out ulong d));
            md.Insert(3, (ulong)rng.Next(200_000), d);
        }
        md.Commit();
        Check(dev, md, minDepth: 3, analyze: false);
        md.ReleaseMetadataSnapshot();
        Check(dev, md, minDepth: 3);
    }

    private static void Check(MemoryBlockDevice dev, ThinMetadata md, int minDepth, bool analyze = true)
    {
        string path = Oracles.TempFile("img");
        try
        {
            dev.SaveTo(path);
            if (analyze)
                Oracles.AssertConsistent(path);
            else
                Assert.Equal(0, Oracles.ThinCheck(path).ExitCode);
            var dump = Oracles.ThinDump(path);
            Assert.True(dump.ExitCode == 0, dump.ToString());
            var ours = new StringWriter();
            md.WriteXml(ours);
            Assert.Equal(dump.Stdout, ours.ToString());
            if (md.MetadataSnapshotBlock != 0)
            {
                var snap = Oracles.ThinDump(path, metadataSnap: true);
                Assert.True(snap.ExitCode == 0, snap.ToString());
                Assert.Contains("<device dev_id=\"3\"", snap.Stdout);
            }
            if (!analyze)
                return;
            var report = Oracles.Analyze(path);
            int depth = Regex.Matches(report.Stdout, @"subtree root=\d+ mappings=\d+ depth=(\d+)").Max(m => int.Parse(m.Groups[1].Value));
            Assert.True(depth >= minDepth, $"deepest bottom tree has {depth} levels:\n{report.Stdout}");
        }
        finally
        {
            File.Delete(path);
        }
    }
}
