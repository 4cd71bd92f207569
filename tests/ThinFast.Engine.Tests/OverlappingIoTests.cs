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
    private const long ZerosTag = 0;    // an all-zero sector

    private enum OpKind { Write, Zero, Discard }

    /// <summary>Something that changes sectors [First, End) of a volume between two clock ticks.
    /// It is recorded before it is issued, with <see cref="Completed"/> at infinity until it
    /// completes, so a read that sees its data early can already account for it.</summary>
    private sealed class Change(long id, OpKind kind, int first, int end, long issued)
    {
        public long Id { get; } = id;
        public OpKind Kind { get; } = kind;
        public int First { get; } = first;
        public int End { get; } = end;
        public long Issued { get; } = issued;
        public long Completed { get; set; } = long.MaxValue;
    }

    /// <summary>A volume's history: the changes covering each sector, and each sector's
    /// value before any change.</summary>
    private sealed class History(int sectors, Func<int, long> initial)
    {
        public readonly List<Change>[] BySector = Enumerable.Range(0, sectors).Select(_ => new List<Change>()).ToArray();
        public int Sectors => BySector.Length;
        public long Initial(int sector) => initial(sector);

        public void Add(Change c)
        {
            lock (this)
                for (int s = c.First; s < c.End; s++)
                    BySector[s].Add(c);
        }

        public void Complete(Change c)
        {
            lock (this)
                c.Completed = Tick();
        }

        /// <summary>What a change leaves in a sector.</summary>
        public long ValueOf(Change c, int sector) => c.Kind switch
        {
            OpKind.Write => c.Id,
            OpKind.Zero => ZerosTag,
            _ => Initial(sector),
        };

        /// <summary>Whether sector <paramref name="sector"/> may read <paramref name="value"/> to a
        /// read that began at <paramref name="from"/> and ended at <paramref name="to"/>.</summary>
        public bool MayRead(int sector, long value, long from, long to)
        {
            lock (this)
            {
                var changes = BySector[sector];
                // The sector's value before any change is a candidate that "ended" at minus infinity.
                if (value == Initial(sector) && !changes.Any(w => w.Completed < from))
                    return true;
                foreach (var c in changes)
                {
                    if (ValueOf(c, sector) != value || c.Issued >= to)
                        continue;
                    if (!changes.Any(w => c.Completed < w.Issued && w.Completed < from))
                        return true;
                }
                return false;
            }
        }
    }

    private static long _clock;
    private static long Tick() => Interlocked.Increment(ref _clock);

    private static void Stamp(Span<byte> sector, long id, int index)
    {
        BitConverter.TryWriteBytes(sector, id);
        BitConverter.TryWriteBytes(sector[8..], index);
        ulong x = (ulong)id * 0x9E3779B97F4A7C15UL ^ (ulong)index;
        for (int i = 16; i < Sector; i += 8)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            BitConverter.TryWriteBytes(sector[i..], x);
        }
    }

    /// <summary>The operation id a sector carries, or null when its bytes are not one whole stamp
    /// for this sector number (torn, misplaced, garbage).</summary>
    private static long? Decode(ReadOnlySpan<byte> sector, int index)
    {
        if (!sector.ContainsAnyExcept((byte)0))
            return ZerosTag;
        long id = BitConverter.ToInt64(sector);
        Span<byte> expected = stackalloc byte[Sector];
        Stamp(expected, id, index);
        return sector.SequenceEqual(expected) ? id : null;
    }

    private static byte[] Stamped(long id, int firstSector, int sectors)
    {
        var bytes = new byte[sectors * Sector];
        for (int i = 0; i < sectors; i++)
            Stamp(bytes.AsSpan(i * Sector, Sector), id, firstSector + i);
        return bytes;
    }

    private sealed class Failures
    {
        private readonly List<string> _messages = new();
        public int Count { get { lock (_messages) return _messages.Count; } }
        public void Add(string message) { lock (_messages) if (_messages.Count < 20) _messages.Add(message); }
        public override string ToString() { lock (_messages) return string.Join("\n", _messages); }
    }

    private static void Check(History history, string what, byte[] bytes, int firstSector, long from, long to, Failures failures)
    {
        for (int i = 0; i < bytes.Length / Sector; i++)
        {
            int sector = firstSector + i;
            long? value = Decode(bytes.AsSpan(i * Sector, Sector), sector);
            if (value is null)
                failures.Add($"{what}: sector {sector} holds no whole stamp for itself (torn or misplaced data)");
            else if (!history.MayRead(sector, value.Value, from, to))
                failures.Add($"{what}: sector {sector} read the value of operation {value} (0 = zeros, 1 = origin), which it could not hold then");
        }
    }

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
        string originPath = h.AddOrigin("base", Stamped(OriginTag, 0, originSectors));
        var volumes = new Dictionary<string, History>
        {
            ["a"] = new History(sectors, s => s < originSectors ? OriginTag : ZerosTag),
            ["b"] = new History(sectors, _ => ZerosTag),
        };
        h.Pool.CreateVolume("a", (long)sectors * Sector, originPath);
        h.Pool.CreateVolume("b", (long)sectors * Sector);
        long nextId = 100;
        var failures = new Failures();
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
                    long issued = Tick();
                    if (kind < 40)
                    {
                        var back = new byte[length];
                        await volume.ReadAsync(offset, back);
                        Check(history, $"read of {name}", back, first, issued, Tick(), failures);
                    }
                    else if (kind < 85)
                    {
                        var change = Record(name, OpKind.Write, first, first + count, issued);
                        var flags = random.Next(8) == 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None;
                        await volume.WriteAsync(offset, Stamped(change.Id, first, count), flags);
                        history.Complete(change);
                    }
                    else if (kind < 92)
                    {
                        var change = Record(name, OpKind.Zero, first, first + count, issued);
                        await volume.WriteZeroesAsync(offset, length, random.Next(2) == 0 ? ZeroFlags.MayDeallocate : ZeroFlags.None);
                        history.Complete(change);
                    }
                    else if (kind < 97)
                    {
                        // Only the whole blocks inside the range are unmapped.
                        int firstBlock = (first + SectorsPerBlock - 1) / SectorsPerBlock, endBlock = (first + count) / SectorsPerBlock;
                        var change = firstBlock < endBlock ? Record(name, OpKind.Discard, firstBlock * SectorsPerBlock, endBlock * SectorsPerBlock, issued) : null;
                        await volume.DiscardAsync(offset, length);
                        if (change is not null)
                            history.Complete(change);
                    }
                    else
                    {
                        await volume.FlushAsync();
                    }
                }
            }
            finally
            {
                Interlocked.Decrement(ref running);
            }
        }

        Change Record(string name, OpKind kind, int first, int end, long issued)
        {
            var change = new Change(Interlocked.Increment(ref nextId), kind, first, end, issued);
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
                    long from = Tick();
                    try { await Task.Run(() => h.Pool.CreateSnapshot(source, name), TestContext.Current.CancellationToken); }
                    catch (PoolException e) { lock (h.Events) throw new Exception($"{e.Message}; status {h.Pool.GetStatus()}; log: {string.Join(" | ", h.Events)}"); }
                    live.Enqueue((name, source, from, Tick()));
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
                long now = Tick();
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
