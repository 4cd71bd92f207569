using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>
/// Power is cut at every device operation of a workload of creates, snapshots, deletes, insert
/// batches, range removals, growth, a metadata snapshot and 15 commits. At every cut point (three ways) the
/// surviving image opens and equals the last committed state (or, when the cut hit a commit,
/// possibly the state that commit was writing); a sample also goes through both checkers.
/// </summary>
public class CrashTests
{
    private sealed record State(string Xml, ulong FreeData, ulong FreeMetadata);

    private sealed class Progress
    {
        public int Commits;
        public bool InCommit;
        public List<State>? States;
    }

    private static State Capture(ThinMetadata md)
    {
        var xml = new StringWriter();
        md.WriteXml(xml);
        return new State(xml.ToString(), md.FreeDataBlocks, md.FreeMetadataBlocks);
    }

    private static void Workload(IBlockDevice dev, Progress p)
    {
        using var md = ThinMetadata.Open(dev);
        var rng = new Random(42);
        void Commit(Action commit)
        {
            p.InCommit = true;
            commit();
            p.InCommit = false;
            p.Commits++;
            p.States?.Add(Capture(md));
        }
        void Fill(ulong devId, int count, int range)
        {
            for (int i = 0; i < count; i++)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                md.Insert(devId, (ulong)rng.Next(range), d);
            }
        }
        md.CreateThin(1);
        Fill(1, 3000, 12000);
        Commit(md.Commit);
        md.CreateSnapshot(2, 1);
        Fill(1, 600, 12000);
        Commit(md.Commit);
        md.CreateThin(3);
        Fill(3, 2000, 30000);
        md.DeleteDevice(2);
        Commit(md.Commit);
        md.RemoveRange(1, 1000, 7000);
        md.SetTransactionId(md.TransactionId, 9);
        Commit(md.Commit);
        Commit(md.ReserveMetadataSnapshot);
        md.GrowDataSpace(md.DataBlockCount + 20_000);
        Fill(3, 800, 30000);
        md.CreateSnapshot(4, 3);
        Fill(4, 300, 30000);
        Commit(md.Commit);
        Commit(md.ReleaseMetadataSnapshot);
        md.DeleteDevice(1);
        Commit(md.Commit);
        for (int round = 0; round < 6; round++)
        {
            Fill(round % 2 == 0 ? 3UL : 4UL, 120, 30000);
            md.RemoveRange(4, (ulong)round * 5000, (ulong)round * 5000 + 400);
            Commit(md.Commit);
        }
    }

    [Fact]
    public void EveryCutPointRecoversTheLastCommittedState()
    {
        var baseDevice = new MemoryBlockDevice(4 << 20);
        ThinMetadata.Format(baseDevice, 128, 20_000).Dispose();
        byte[] baseImage = baseDevice.ToArray();

        var reference = new PowerCutDevice(baseImage);
        var progress = new Progress { States = new List<State>() };
        using (var md0 = ThinMetadata.Open(new MemoryBlockDevice((byte[])baseImage.Clone())))
            progress.States.Add(Capture(md0));
        Workload(reference, progress);
        long totalOps = reference.OperationCount;
        List<State> states = progress.States;
        Assert.Equal(15, states.Count);

        int checkedWithTools = 0, landedOnNewer = 0;
        // Each cut point three ways: cached writes lost, the in-flight write torn, a random subset of cached writes kept.
        for (long point = 3; point < 3 * (totalOps + 1); point++)
        {
            long cut = point / 3;
            int variant = (int)(point % 3);
            var dev = new PowerCutDevice(baseImage)
            {
                CutAfterOperations = cut,
                TearInFlightWrite = variant == 1,
                PendingWritesSurvive = variant == 2,
                Seed = (int)point,
            };
            var p = new Progress();
            var e = Assert.Throws<BlockDeviceException>(() => Workload(dev, p));
            Assert.Equal(BlockError.Unavailable, e.Error);

            var image = dev.DurableImage();
            using var md = ThinMetadata.Open(image);
            State got = Capture(md);
            if (got != states[p.Commits])
            {
                Assert.True(p.InCommit && got == states[p.Commits + 1],
                    $"cut at operation {cut} (variant {variant}, after {p.Commits} commits, in commit: {p.InCommit}) recovered a state that was never committed");
                landedOnNewer++;
            }
            if (point % 10 == 0 || point == 3 * totalOps + 2)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                if (md.DeviceIds.Count == 0) md.CreateThin(77);
                md.Insert(md.DeviceIds[0], 123_456, d);
                md.Commit();
                Oracles.AssertConsistent(image);
                checkedWithTools++;
            }
        }
        Assert.True(totalOps > 60, $"workload did only {totalOps} device operations");
        Assert.True(checkedWithTools >= 10);
        Assert.True(landedOnNewer > 0, "no cut landed between a superblock write and its flush (sweep too coarse?)");
    }

    /// <summary>
    /// The superblock's fields fit in its first 512-byte sector and the rest of block 0 is zero in
    /// every version, so a 4 KiB superblock write torn at any set of sector boundaries leaves either
    /// the old or the new superblock whole (both checksums cover identical zero tails). All 256
    /// sector mixes of old and new block 0 are tried on top of the new commit's other blocks.
    /// </summary>
    [Fact]
    public void EveryTearingOfTheSuperblockOpensTheOldOrTheNewState()
    {
        var dev = new MemoryBlockDevice(4 << 20);
        State before, after;
        using (var md = ThinMetadata.Format(dev, 128, 1000))
        {
            md.CreateThin(5);
            for (ulong v = 0; v < 300; v++)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                md.Insert(5, v, d);
            }
            md.Commit();
            before = Capture(md);
        }
        byte[] oldImage = dev.ToArray();
        using (var md = ThinMetadata.Open(dev))
        {
            md.CreateSnapshot(6, 5);
            md.Remove(5, 10);
            md.Commit();
            after = Capture(md);
        }
        byte[] newImage = dev.ToArray();
        Assert.NotEqual(before, after);
        Assert.True(newImage.AsSpan(0x16C, 4096 - 0x16C).IndexOfAnyExcept((byte)0) < 0);
        int sawOld = 0, sawNew = 0;
        for (int mask = 0; mask < 256; mask++)
        {
            byte[] torn = (byte[])newImage.Clone();
            for (int sector = 0; sector < 8; sector++)
                if ((mask & (1 << sector)) == 0)
                    oldImage.AsSpan(sector * 512, 512).CopyTo(torn.AsSpan(sector * 512));
            using var md = ThinMetadata.Open(new MemoryBlockDevice(torn));
            State got = Capture(md);
            if (got == before) sawOld++;
            else if (got == after) sawNew++;
            else Assert.Fail($"sector mix {mask:x2} opened a state that was never committed");
        }
        Assert.Equal(128, sawOld);
        Assert.Equal(128, sawNew);
    }
}
