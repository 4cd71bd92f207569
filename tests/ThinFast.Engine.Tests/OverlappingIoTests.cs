using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>
/// Requests that overlap in bytes and in time, on a data device that completes late, out of order
/// and on other threads, while snapshots are taken, read and deleted and the pool grows. No
/// sequential model can say which of two overlapping writes wins, so every 512-byte sector a
/// write puts down carries its operation id and sector number, and each sector read back is
/// checked against what that sector may hold at that moment:
/// the value of an operation that began before the read ended and was not overwritten by another
/// operation that both began after it ended and ended before the read began. A sector that holds
/// anything else (another volume's data, another sector's, a torn mix, zeros where the origin
/// should show) fails the test.
/// </summary>
public class OverlappingIoTests
{
    private const int B = PoolOptions.DefaultBlockSize;
    private const int Sector = 512;
    private const int SectorsPerBlock = B / Sector;
    private const long OriginTag = 1;   // the operation id origin sectors carry
    private const long ZerosTag = SectorStamps.Zeros;

    private static void Check(SectorHistory history, string what, byte[] bytes, int firstSector, long from, long to, FailureLog failures) =>
        history.Check(what, bytes, firstSector, (sector, value) => history.MayRead(sector, value, from, to), failures.Add);

    [Fact]
    public async Task OverlappingWritesReadsZeroesAndDiscardsWithSnapshotsAndGrowsInFlightKeepEverySectorConsistent()
    {
        const int workers = 6, opsPerWorker = 1200, volumeBlocks = 8;
        const int sectors = volumeBlocks * SectorsPerBlock;
        OutOfOrderDevice? slowData = null;
        using var h = new PoolHarness(12L * B, new PoolOptions { CommitInterval = TimeSpan.FromMilliseconds(50), LowWaterBlocks = 4 },
            size => size == PoolHarness.MetadataSize
                ? new MemoryBlockDevice(size, name: "metadata")
                : slowData = new OutOfOrderDevice(new MemoryBlockDevice(size, name: "data"), seed: 11, workers: 2, maxDelayMicroseconds: 200));

        // The origin ends inside block 5, so sectors past its end read zeros.
        int originSectors = 5 * SectorsPerBlock + 24;
        string originPath = h.AddOrigin("base", SectorStamps.Stamped(OriginTag, 0, originSectors));
        var volumes = new Dictionary<string, SectorHistory>
        {
            ["a"] = new SectorHistory(sectors, s => s < originSectors ? OriginTag : ZerosTag),
            ["b"] = new SectorHistory(sectors, _ => ZerosTag),
        };
        h.Pool.CreateVolume("a", (long)sectors * Sector, originPath);
        h.Pool.CreateVolume("b", (long)sectors * Sector);
        long nextId = 100;
        var failures = new FailureLog();
        var writes = new List<(string Volume, Change Change)>();
        int running = workers;

        async Task Worker(int seed)
        {
            var random = new Random(seed);
            try
            {
                for (int op = 0; op < opsPerWorker && failures.Count == 0; op++)
                {
                    string name = random.Next(3) == 0 ? "b" : "a";
                    var history = volumes[name];
                    var volume = h.Pool.GetVolume(name);
                    int first = random.Next(sectors);
                    int count = Math.Min(sectors - first, random.Next(4) == 0 ? random.Next(1, 3 * SectorsPerBlock) : random.Next(1, 16));
                    long offset = (long)first * Sector, length = (long)count * Sector;
                    int kind = random.Next(100);
                    long issued = SectorHistory.Tick();
                    if (kind < 40)
                    {
                        var back = new byte[length];
                        await volume.ReadAsync(offset, back);
                        Check(history, $"read of {name}", back, first, issued, SectorHistory.Tick(), failures);
                    }
                    else if (kind < 85)
                    {
                        var flags = random.Next(8) == 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None;
                        var change = Record(name, ChangeKind.Write, first, first + count, issued, flags == WriteFlags.ForceUnitAccess);
                        await volume.WriteAsync(offset, SectorStamps.Stamped(change.Id, first, count), flags);
                        history.Complete(change);
                    }
                    else if (kind < 92)
                    {
                        var change = Record(name, ChangeKind.Zero, first, first + count, issued);
                        await volume.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? ZeroFlags.MayDeallocate : ZeroFlags.None);
                        history.Complete(change);
                    }
                    else if (kind < 97)
                    {
                        // Only the whole blocks inside the range are unmapped.
                        int firstBlock = (first + SectorsPerBlock - 1) / SectorsPerBlock, endBlock = (first + count) / SectorsPerBlock;
                        var change = firstBlock < endBlock ? Record(name, ChangeKind.Discard, firstBlock * SectorsPerBlock, endBlock * SectorsPerBlock, issued) : null;
                        await volume.DiscardAsync(offset, length);
                        if (change is not null)
                            history.Complete(change);
                    }
                    else
                    {
                        await volume.FlushAsync();
                        history.Flushed(issued);
                    }
                }
            }
            finally
            {
                Interlocked.Decrement(ref running);
            }
        }

        Change Record(string name, ChangeKind kind, int first, int end, long issued, bool fua = false)
        {
            var change = new Change(Interlocked.Increment(ref nextId), kind, first, end, issued, fua);
            volumes[name].Add(change);
            lock (writes)
                writes.Add((name, change));
            return change;
        }

        // The operator: snapshots of a busy volume, each read back whole while writes to its
        // source go on and then deleted; grows whenever space runs low.
        int snapshots = 0, grows = 0;
        async Task Operator()
        {
            var random = new Random(5);
            var live = new Queue<(string Name, string Source, long From, long To)>();
            while (Volatile.Read(ref running) > 0)
            {
                var status = h.Pool.GetStatus();
                if (status.UsedDataBlocks + 4 >= status.TotalDataBlocks)
                {
                    await Task.Run(() => h.Pool.GrowData((long)(status.TotalDataBlocks + 8) * B), TestContext.Current.CancellationToken);
                    grows++;
                }
                if (live.Count < 3)
                {
                    string source = random.Next(3) == 0 ? "b" : "a";
                    string name = $"snap{snapshots++}";
                    long from = SectorHistory.Tick();
                    await Task.Run(() => h.Pool.CreateSnapshot(source, name), TestContext.Current.CancellationToken);
                    live.Enqueue((name, source, from, SectorHistory.Tick()));
                }
                else
                {
                    var (name, source, from, to) = live.Dequeue();
                    var back = new byte[(long)sectors * Sector];
                    await h.Pool.GetVolume(name).ReadAsync(0, back);
                    // The snapshot holds its source as it was at some instant while it was taken.
                    Check(volumes[source], $"snapshot {name} of {source}", back, 0, from, to, failures);
                    await Task.Run(() => h.Pool.DeleteVolume(name), TestContext.Current.CancellationToken);
                }
                await Task.Delay(2, TestContext.Current.CancellationToken);
            }
        }

        var tasks = Enumerable.Range(0, workers).Select(i => Task.Run(() => Worker(1000 + i), TestContext.Current.CancellationToken)).Append(Task.Run(Operator, TestContext.Current.CancellationToken)).ToArray();
        await Task.WhenAll(tasks).WaitAsync(TimeSpan.FromMinutes(3), TestContext.Current.CancellationToken);
        await Task.Yield();
        Assert.True(failures.Count == 0, failures.ToString());
        long lockWaits = h.Pool.BlockLockWaits;

        // Every sector of a and b now holds a value no later change overwrote, and still does
        // after a flush and a reopen.
        await h.Pool.FlushAsync();
        foreach (var pass in new[] { "after the run", "after a reopen" })
        {
            foreach (var (name, history) in volumes)
            {
                var back = new byte[(long)sectors * Sector];
                await h.Pool.GetVolume(name).ReadAsync(0, back);
                long now = SectorHistory.Tick();
                Check(history, $"{name} {pass}", back, 0, now, now, failures);
            }
            Assert.True(failures.Count == 0, failures.ToString());
            if (pass == "after the run")
            {
                h.AssertMetadataClean();
                h.Reopen();
            }
        }
        h.AssertOriginsUnchanged();
        h.AssertMetadataClean();

        // The overlap this test claims, measured: writes to the same sectors in flight at the
        // same time, requests parked on block locks, completions out of order.
        int overlapping = 0;
        lock (writes)
        {
            var sorted = writes.OrderBy(w => w.Change.Issued).ToArray();
            for (int i = 0; i < sorted.Length; i++)
                for (int j = i + 1; j < sorted.Length && sorted[j].Change.Issued < sorted[i].Change.Completed; j++)
                    if (sorted[i].Volume == sorted[j].Volume && sorted[i].Change.First < sorted[j].Change.End && sorted[j].Change.First < sorted[i].Change.End)
                        overlapping++;
        }
        TestContext.Current.SendDiagnosticMessage($"overlapping change pairs: {overlapping}; block-lock waits: {lockWaits}; snapshots: {snapshots}; grows: {grows}; " +
            $"device: {slowData!.OutOfOrderCompletions} of {slowData.Completed} completions out of order, at most {slowData.MaxInFlight} in flight");
        Assert.True(overlapping > 100, $"only {overlapping} pairs of changes to the same sectors overlapped in time");
        Assert.True(lockWaits > 100, $"only {lockWaits} block-lock waits");
        Assert.True(snapshots >= 5, $"only {snapshots} snapshots were taken during the run");
        Assert.True(grows >= 1, "the pool never grew during the run");
    }
}
