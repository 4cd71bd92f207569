using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>
/// Power cuts while several requests are in flight. Writers, flushers, trimmers and zeroers run
/// at once on two volumes (one over an origin); the data device completes late and out of order
/// on other threads, above a power-cut disk that shares its rail with the metadata disk. For each
/// operation number N the workload runs again with the power failing at the N-th device
/// operation, which lands while blocks are being provisioned, while a commit writes the metadata,
/// or while a discard is passed down. After each cut the pool reopens, the checkers pass, the
/// origin is unchanged, and every sector holds a value no durable change superseded
/// (<see cref="SectorHistory.MayHoldAfterCrash"/>). The sweep counts what was in flight at the cut
/// and asserts that each of those situations happened.
/// </summary>
public class ConcurrentCrashSweepTests
{
    private const int B = PoolOptions.DefaultBlockSize;
    private const int Sector = SectorStamps.Sector;
    private const int SectorsPerBlock = B / Sector;
    private const int VolumeBlocks = 6;
    private const int Sectors = VolumeBlocks * SectorsPerBlock;
    private const long OriginTag = 1;
    private const int OriginSectors = 4 * SectorsPerBlock + 40;

    private sealed class Run : IDisposable
    {
        public readonly PowerRail Rail = new();
        public readonly PoolHarness Harness;
        public readonly OutOfOrderDevice SlowData;
        public readonly Dictionary<string, SectorHistory> Volumes = new();
        public (int Reads, int Writes, int Flushes, int Deallocates, int Zeroes) InFlightAtCut;
        private long _nextId = 100;

        public Run(int seed)
        {
            OutOfOrderDevice? slow = null;
            Harness = new PoolHarness(64L * B, new PoolOptions { CommitInterval = TimeSpan.FromHours(1) },
                size => size == PoolHarness.MetadataSize
                    ? new PowerCutDevice(size, name: "metadata", rail: Rail)
                    : slow = new OutOfOrderDevice(new PowerCutDevice(size, name: "data", rail: Rail), seed, workers: 2, maxDelayMicroseconds: 300));
            SlowData = slow!;
            string origin = Harness.AddOrigin("base", SectorStamps.Stamped(OriginTag, 0, OriginSectors));
            Harness.Pool.CreateVolume("a", (long)Sectors * Sector, origin);
            Harness.Pool.CreateVolume("b", (long)Sectors * Sector);
            Volumes["a"] = new SectorHistory(Sectors, s => s < OriginSectors ? OriginTag : SectorStamps.Zeros);
            Volumes["b"] = new SectorHistory(Sectors, _ => SectorStamps.Zeros);
            Rail.OnCut = () => InFlightAtCut = SlowData.InFlightByKind();
        }

        /// <summary>Eight clients at once, twenty requests each; each stops at its first failure,
        /// which must be the power cut's.</summary>
        public async Task WorkloadAsync(int seed)
        {
            var clients = Enumerable.Range(0, 8).Select(c => Task.Run(() => ClientAsync(new Random(seed * 10 + c)), TestContext.Current.CancellationToken)).ToArray();
            await Task.WhenAll(clients);
            await Task.Yield();
        }

        private async Task ClientAsync(Random random)
        {
            for (int op = 0; op < 20; op++)
            {
                string name = random.Next(2) == 0 ? "a" : "b";
                var history = Volumes[name];
                var volume = Harness.Pool.GetVolume(name);
                int first = random.Next(Sectors);
                int count = Math.Min(Sectors - first, random.Next(3) == 0 ? SectorsPerBlock : random.Next(1, 2 * SectorsPerBlock));
                long offset = (long)first * Sector, length = (long)count * Sector;
                int kind = random.Next(100);
                if (kind is >= 70 and < 90)
                {
                    // TRIMs of whole blocks, so they unmap and their passdowns reach the disk.
                    first = random.Next(VolumeBlocks) * SectorsPerBlock;
                    count = Math.Min(Sectors - first, SectorsPerBlock * random.Next(1, 3));
                    (offset, length) = ((long)first * Sector, (long)count * Sector);
                }
                long issued = SectorHistory.Tick();
                try
                {
                    if (kind < 60)
                    {
                        bool fua = random.Next(4) == 0;
                        var change = Record(history, ChangeKind.Write, first, first + count, issued, fua);
                        await volume.WriteAsync(offset, SectorStamps.Stamped(change.Id, first, count), fua ? WriteFlags.ForceUnitAccess : WriteFlags.None);
                        history.Complete(change);
                    }
                    else if (kind < 70)
                    {
                        await volume.FlushAsync();
                        history.Flushed(issued);
                    }
                    else if (kind < 90)
                    {
                        int firstBlock = (first + SectorsPerBlock - 1) / SectorsPerBlock, endBlock = (first + count) / SectorsPerBlock;
                        var change = firstBlock < endBlock ? Record(history, ChangeKind.Discard, firstBlock * SectorsPerBlock, endBlock * SectorsPerBlock, issued, fua: false) : null;
                        await volume.DiscardAsync(offset, length);
                        if (change is not null)
                            history.Complete(change);
                    }
                    else
                    {
                        var change = Record(history, ChangeKind.Zero, first, first + count, issued, fua: false);
                        await volume.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? ZeroFlags.MayDeallocate : ZeroFlags.None);
                        history.Complete(change);
                    }
                }
                catch (BlockDeviceException e) when (Rail.IsCut && e.Error is BlockError.Unavailable or BlockError.IoError)
                {
                    return;
                }
            }
        }

        private Change Record(SectorHistory history, ChangeKind kind, int first, int end, long issued, bool fua)
        {
            var change = new Change(Interlocked.Increment(ref _nextId), kind, first, end, issued, fua);
            history.Add(change);
            return change;
        }

        public void Dispose() => Harness.Dispose();
    }

    [Fact]
    public async Task EveryCrashPointWithRequestsInFlightReopensCleanAndKeepsDurableWrites()
    {
        const int seed = 3;
        long total;
        using (var clean = new Run(seed))
        {
            long before = clean.Rail.OperationCount;
            await clean.WorkloadAsync(seed);
            total = clean.Rail.OperationCount - before;
        }
        Assert.True(total > 100, $"the workload made only {total} device operations");

        var failures = new FailureLog();
        int cuts = 0, busyCuts = 0, commitCuts = 0, passdownCuts = 0, passdowns = 0, checkedMetadata = 0;
        for (long n = 1; n <= total && failures.Count == 0; n++)
        {
            using var run = new Run(seed);
            run.Rail.CutAfterOperations = run.Rail.OperationCount + n;
            run.Rail.TearInFlightWrite = n % 2 == 0;
            run.Rail.PendingWritesSurvive = n % 2 == 0;
            run.Rail.Seed = (int)n;
            await run.WorkloadAsync(seed);
            if (!run.Rail.IsCut)
                continue;   // this run needed fewer operations than the clean one
            cuts++;
            var inFlight = run.InFlightAtCut;
            string at = run.Rail.CutOperation!;
            if (inFlight.Writes >= 2)
                busyCuts++;
            if (at.EndsWith("on metadata") && inFlight.Writes >= 1)
                commitCuts++;
            if (at == "deallocate on data")
                passdowns++;
            if (at == "deallocate on data" && inFlight.Writes >= 1)
                passdownCuts++;

            var h = run.Harness;
            var metadata = ((PowerCutDevice)h.MetadataDevice).DurableImage();
            var data = ((PowerCutDevice)run.SlowData.Inner).DurableImage();
            try
            {
                h.Pool.Dispose();
            }
            catch (Exception)
            {
                // The pool on dead devices may fail to close; only what is on the media matters.
            }
            h.ReopenFrom(metadata, data);
            foreach (var (name, history) in run.Volumes)
            {
                var back = new byte[(long)Sectors * Sector];
                await h.Pool.GetVolume(name).ReadAsync(0, back);
                history.Check($"cut {n}/{total} at {at} ({inFlight.Writes} data writes in flight): {name}", back, 0, history.MayHoldAfterCrash, failures.Add);
            }
            if (n % 8 == 0)
            {
                h.AssertMetadataClean();
                checkedMetadata++;
            }
            h.AssertOriginsUnchanged();
        }
        Assert.True(failures.Count == 0, failures.ToString());
        TestContext.Current.SendDiagnosticMessage($"{cuts} cuts of {total}: {busyCuts} with 2+ data writes in flight, {commitCuts} in a metadata write with data writes in flight, {passdownCuts} of {passdowns} in a discard passdown with data writes in flight; metadata checked at {checkedMetadata}");
        Assert.True(cuts > total / 2, $"only {cuts} of {total} runs reached their cut");
        Assert.True(busyCuts > cuts / 10, $"only {busyCuts} of {cuts} cuts fell with two or more data writes in flight");
        Assert.True(commitCuts > 0, "no cut fell in a metadata write while data writes were in flight");
        Assert.True(passdownCuts > 0, "no cut fell in a discard passdown while data writes were in flight");
        Assert.True(checkedMetadata > 0);
    }
}
