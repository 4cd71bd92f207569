using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>
/// Randomised operations against ThinMetadata and a plain in-memory model of the pool; after every
/// abort and reopen the whole state is compared, and periodically the image goes through the oracles.
/// </summary>
public class ModelTests
{
    private sealed class Model
    {
        public uint Time;
        public ulong TransactionId;
        public SortedDictionary<ulong, (DeviceDetails Details, SortedDictionary<ulong, (ulong Data, uint Time)> Map)> Devices = new();

        public Model Clone()
        {
            var m = new Model { Time = Time, TransactionId = TransactionId };
            foreach (var (id, d) in Devices)
                m.Devices[id] = (d.Details, new SortedDictionary<ulong, (ulong, uint)>(d.Map));
            return m;
        }

        public ulong UsedDataBlocks() => (ulong)Devices.Values.SelectMany(d => d.Map.Values.Select(v => v.Data)).Distinct().LongCount();
    }

    private static void AssertMatches(Model model, ThinMetadata md, ulong dataBlocks)
    {
        Assert.Equal(model.Time, md.Time);
        Assert.Equal(model.TransactionId, md.TransactionId);
        Assert.Equal(model.Devices.Keys.ToArray(), md.DeviceIds.ToArray());
        Assert.Equal(dataBlocks - model.UsedDataBlocks(), md.FreeDataBlocks);
        Span<MappedRange> ranges = new MappedRange[64];
        foreach (var (id, d) in model.Devices)
        {
            Assert.Equal(d.Details with { MappedBlocks = (ulong)d.Map.Count }, md.GetDetails(id));
            foreach (var (vb, (data, time)) in d.Map)
            {
                Assert.True(md.TryLookup(id, vb, out BlockMapping m), $"dev {id} vblock {vb} missing");
                Assert.Equal(new BlockMapping(data, time, d.Details.SnapshottedTime > time), m);
            }
            // Ranges over the whole device reproduce the model exactly.
            var seen = new List<(ulong, ulong, uint)>();
            ulong next = 0;
            while (true)
            {
                int n = md.LookupRange(id, next, ulong.MaxValue, ranges);
                for (int i = 0; i < n; i++)
                    for (ulong k = 0; k < ranges[i].Length; k++)
                        seen.Add((ranges[i].VirtualBlock + k, ranges[i].DataBlock + k, ranges[i].Time));
                if (n < ranges.Length)
                    break;
                next = ranges[n - 1].VirtualBlock + ranges[n - 1].Length;
                seen.RemoveAll(s => s.Item1 >= next);
            }
            Assert.Equal(d.Map.Select(kv => (kv.Key, kv.Value.Data, kv.Value.Time)).ToList(), seen);
        }
    }

    [Fact]
    public void TwentyThousandRandomOperationsMatchTheModel()
    {
        const ulong dataBlocks = 60_000;
        var dev = new MemoryBlockDevice(16 << 20);
        var md = ThinMetadata.Format(dev, 128, dataBlocks);
        var model = new Model();
        var committed = model.Clone();
        ulong committedFreeMeta = md.FreeMetadataBlocks;
        var rng = new Random(1234);
        int reopens = 0, aborts = 0, commits = 0, oracleRuns = 0;
        try
        {
            void CommitAndRunOracles()
            {
                md.Commit();
                committed = model.Clone();
                committedFreeMeta = md.FreeMetadataBlocks;
                Oracles.AssertConsistent(dev);
                Oracles.AssertDumpEquals(dev, md);
                oracleRuns++;
            }

            for (int op = 0; op < 20_000; op++)
            {
                if (op > 0 && op % 4000 == 0)
                    CommitAndRunOracles();
                int kind = rng.Next(1000);
                var ids = model.Devices.Keys.ToArray();
                if (kind < 15 || ids.Length == 0)
                {
                    ulong id = (ulong)rng.Next(1, 16);
                    if (model.Devices.ContainsKey(id)) continue;
                    md.CreateThin(id);
                    model.Devices[id] = (new DeviceDetails(0, model.TransactionId, model.Time, model.Time), new());
                }
                else if (kind < 30)
                {
                    ulong id = (ulong)rng.Next(1, 16);
                    if (model.Devices.ContainsKey(id)) continue;
                    ulong origin = ids[rng.Next(ids.Length)];
                    md.CreateSnapshot(id, origin);
                    model.Time++;
                    var o = model.Devices[origin];
                    model.Devices[origin] = (o.Details with { SnapshottedTime = model.Time }, o.Map);
                    model.Devices[id] = (new DeviceDetails(0, model.TransactionId, model.Time, model.Time), new(o.Map));
                }
                else if (kind < 40)
                {
                    if (ids.Length < 3) continue;
                    ulong id = ids[rng.Next(ids.Length)];
                    md.DeleteDevice(id);
                    model.Devices.Remove(id);
                }
                else if (kind < 800)
                {
                    ulong id = ids[rng.Next(ids.Length)];
                    ulong vb = (ulong)rng.Next(4000);
                    Assert.True(md.TryAllocateDataBlock(out ulong d), "data space exhausted");
                    md.Insert(id, vb, d);
                    model.Devices[id].Map[vb] = (d, model.Time);
                }
                else if (kind < 930)
                {
                    ulong id = ids[rng.Next(ids.Length)];
                    ulong vb = (ulong)rng.Next(4000);
                    Assert.Equal(model.Devices[id].Map.Remove(vb), md.Remove(id, vb));
                }
                else if (kind < 940)
                {
                    ulong id = ids[rng.Next(ids.Length)];
                    ulong lo = (ulong)rng.Next(4000), hi = lo + (ulong)rng.Next(400);
                    var map = model.Devices[id].Map;
                    var gone = map.Keys.Where(k => k >= lo && k < hi).ToList();
                    foreach (ulong k in gone) map.Remove(k);
                    Assert.Equal((ulong)gone.Count, md.RemoveRange(id, lo, hi));
                }
                else if (kind < 945)
                {
                    md.SetTransactionId(model.TransactionId, model.TransactionId + 1);
                    model.TransactionId++;
                }
                else if (kind < 975)
                {
                    md.Commit();
                    commits++;
                    committed = model.Clone();
                    committedFreeMeta = md.FreeMetadataBlocks;
                }
                else if (kind < 988)
                {
                    md.Abort();
                    aborts++;
                    model = committed.Clone();
                    AssertMatches(model, md, dataBlocks);
                    Assert.Equal(committedFreeMeta, md.FreeMetadataBlocks);
                }
                else
                {
                    md.Dispose();
                    md = ThinMetadata.Open(dev);
                    reopens++;
                    model = committed.Clone();
                    AssertMatches(model, md, dataBlocks);
                    Assert.Equal(committedFreeMeta, md.FreeMetadataBlocks);
                }
                foreach (var (id, d) in model.Devices.ToList())
                    model.Devices[id] = (d.Details with { MappedBlocks = (ulong)d.Map.Count }, d.Map);
            }
            CommitAndRunOracles();
            Assert.True(reopens > 100 && aborts > 100 && commits > 300, $"reopens {reopens}, aborts {aborts}, commits {commits}");
            Assert.Equal(5, oracleRuns);
        }
        finally
        {
            md.Dispose();
        }
    }
}
