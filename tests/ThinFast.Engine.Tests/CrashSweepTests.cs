using System.IO.Hashing;
using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>
/// Power-cut sweeps over mixed workloads: the metadata and data devices share one power rail, and
/// for every operation number N the same workload runs again with the power failing at its N-th
/// device operation. After each cut the pool must reopen from what survived, the metadata checkers
/// must pass, and every 512-byte sector of every volume must hold a value it may hold: the value
/// at its last durability point (a completed FLUSH, a completed FUA write of it, or a completed
/// commit from create/snapshot/delete), or a value written to it after that point. Any other
/// value (garbage, another volume's data, a lost flushed write) fails the test.
/// </summary>
public class CrashSweepTests
{
    private const int B = PoolOptions.DefaultBlockSize;
    private const int Sector = 512;
    private const long VolumeSize = 6L * B;

    private sealed class SectorModel
    {
        public required byte[] Current;
        public required ulong[] Durable;
        public required HashSet<ulong>?[] Since;

        public static SectorModel From(byte[] contents)
        {
            var m = new SectorModel { Current = contents, Durable = new ulong[contents.Length / Sector], Since = new HashSet<ulong>?[contents.Length / Sector] };
            m.MakeAllDurable();
            return m;
        }

        public SectorModel CloneDurable() => From((byte[])Current.Clone());

        public void MakeAllDurable()
        {
            for (int s = 0; s < Durable.Length; s++)
            {
                Durable[s] = Hash(s);
                Since[s] = null;
            }
        }

        public ulong Hash(int sector) => XxHash64.HashToUInt64(Current.AsSpan(sector * Sector, Sector));

        /// <summary>Applies a change to the model; the new sector values become possible.</summary>
        public void Change(long offset, long length, Action<Span<byte>> change)
        {
            change(Current.AsSpan((int)offset, (int)length));
            for (long s = offset / Sector; s < (offset + length + Sector - 1) / Sector; s++)
                (Since[s] ??= new()).Add(Hash((int)s));
        }

        public void MakeDurable(long offset, long length)
        {
            for (long s = offset / Sector; s < (offset + length + Sector - 1) / Sector; s++)
            {
                Durable[s] = Hash((int)s);
                Since[s] = null;
            }
        }
    }

    private sealed class Workload(PoolHarness h, int seed)
    {
        public Dictionary<string, SectorModel> Models { get; } = new();
        private readonly Random _random = new(seed);
        private int _step;

        private void AllDurable()
        {
            foreach (var m in Models.Values)
                m.MakeAllDurable();
        }

        public async Task RunAsync(string originPath, byte[] origin)
        {
            h.Pool.CreateVolume("a", VolumeSize, originPath);
            var contents = new byte[VolumeSize];
            origin.AsSpan(0, (int)Math.Min(VolumeSize, origin.Length)).CopyTo(contents);
            Models["a"] = SectorModel.From(contents);
            AllDurable();
            h.Pool.CreateVolume("b", VolumeSize);
            Models["b"] = SectorModel.From(new byte[VolumeSize]);
            AllDurable();

            for (_step = 0; _step < 36; _step++)
            {
                int kind = _random.Next(100);
                var names = Models.Keys.Order().ToArray();
                string name = names[_random.Next(names.Length)];
                var model = Models[name];
                var volume = h.Pool.GetVolume(name);
                long offset = _random.NextInt64(VolumeSize / Sector) * Sector + (_random.Next(4) == 0 ? _random.Next(Sector) : 0);
                long length = Math.Min(VolumeSize - offset, _random.Next(3) == 0 ? B : _random.Next(1, 2 * B));
                if (kind < 45)
                {
                    var data = PoolHarness.Pattern((int)length, seed * 1000 + _step);
                    bool fua = _random.Next(4) == 0;
                    model.Change(offset, length, span => data.CopyTo(span));
                    await volume.WriteAsync(offset, data, fua ? WriteFlags.ForceUnitAccess : WriteFlags.None);
                    if (fua)
                        model.MakeDurable(offset, length);
                }
                else if (kind < 60)
                {
                    await volume.FlushAsync();
                    AllDurable();
                }
                else if (kind < 70)
                {
                    var record = h.Pool.VolumeRecords.First(r => r.Name == name);
                    for (long block = (offset + B - 1) / B; block < (offset + length) / B; block++)
                    {
                        model.Change(block * B, B, span =>
                        {
                            span.Clear();
                            if (record.OriginPath is not null && block * B < origin.Length)
                                origin.AsSpan((int)(block * B), (int)Math.Min(B, origin.Length - block * B)).CopyTo(span);
                        });
                    }
                    await volume.DiscardAsync(offset, length);
                }
                else if (kind < 80)
                {
                    model.Change(offset, length, span => span.Clear());
                    await volume.WriteZeroesAsync(offset, length, _random.Next(2) == 0 ? ZeroFlags.MayDeallocate : ZeroFlags.None);
                }
                else if (kind < 90 && Models.Count < 5)
                {
                    string snap = $"s{_step}";
                    h.Pool.CreateSnapshot(name, snap);
                    AllDurable();
                    Models[snap] = model.CloneDurable();
                }
                else if (Models.Count > 2)
                {
                    var victim = names.Where(n => n.StartsWith('s')).FirstOrDefault() ?? names[^1];
                    Models.Remove(victim);
                    h.Pool.DeleteVolume(victim);
                    AllDurable();
                }
            }
            await h.Pool.GetVolume("a").FlushAsync();
            AllDurable();
        }
    }

    private static PoolHarness NewHarness(PowerRail rail) =>
        new(64L * B, new PoolOptions { CommitInterval = TimeSpan.FromHours(1) },
            size => new PowerCutDevice(size, name: size == PoolHarness.MetadataSize ? "metadata" : "data", rail: rail));

    [Theory]
    [InlineData(false, 11)]
    [InlineData(true, 12)]
    public async Task EveryCrashPointReopensCleanAndKeepsDurableWrites(bool tornAndReordered, int seed)
    {
        var origin = PoolHarness.Pattern(4 * B + 8 * Sector, 99);

        // A clean run first: how many device operations the workload takes.
        long total;
        {
            var rail = new PowerRail();
            using var h = NewHarness(rail);
            string path = h.AddOrigin("base", origin);
            long before = rail.OperationCount;
            await new Workload(h, seed).RunAsync(path, origin);
            total = rail.OperationCount - before;
        }
        Assert.True(total > 100, $"the workload made only {total} device operations");

        int checkedPoints = 0;
        for (long cut = 1; cut <= total; cut++)
        {
            var rail = new PowerRail();
            var h = NewHarness(rail);
            string path = h.AddOrigin("base", origin);
            rail.CutAfterOperations = rail.OperationCount + cut;
            rail.TearInFlightWrite = tornAndReordered;
            rail.PendingWritesSurvive = tornAndReordered;
            rail.Seed = (int)cut;
            var workload = new Workload(h, seed);
            try
            {
                await workload.RunAsync(path, origin);
            }
            catch (BlockDeviceException e) when (e.Error == BlockError.Unavailable || rail.IsCut)
            {
            }
            catch (PoolException) when (rail.IsCut)
            {
            }
            Assert.True(rail.IsCut, $"the power did not fail at operation {cut} of {total}");
            var metadata = ((PowerCutDevice)h.MetadataDevice).DurableImage();
            var data = ((PowerCutDevice)h.DataDevice).DurableImage();
            try
            {
                h.Pool.Dispose();
            }
            catch (Exception)
            {
                // The pool on dead devices may fail to close; only what is on the media matters.
            }
            h.ReopenFrom(metadata, data);
            var manifestNames = h.Pool.VolumeRecords.Select(r => r.Name).ToHashSet();
            foreach (var (name, model) in workload.Models)
            {
                if (!manifestNames.Contains(name))
                    continue;   // created or snapshotted by the operation the power failed in
                var actual = new byte[VolumeSize];
                await h.Pool.GetVolume(name).ReadAsync(0, actual);
                for (int s = 0; s < model.Durable.Length; s++)
                {
                    ulong value = XxHash64.HashToUInt64(actual.AsSpan(s * Sector, Sector));
                    if (value != model.Durable[s] && model.Since[s]?.Contains(value) != true)
                        Assert.Fail($"cut at operation {cut}/{total}: volume {name} sector {s} holds data it was never given after its last durable point");
                }
            }
            // The checkers cost ~0.2 s a run: every eighth crash point, plus the last.
            if (cut % 8 == 0 || cut == total)
            {
                h.AssertMetadataClean();
                checkedPoints++;
            }
            h.AssertOriginsUnchanged();
            h.Dispose();
        }
        Assert.True(checkedPoints > 0);
    }
}
