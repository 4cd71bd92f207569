namespace ThinFast.Cli.Tests;

/// <summary>
/// Sector contents that name the write that put them there: the write's id, the sector's number
/// and bytes derived from both, so a sector read back is either one write's data for exactly this
/// sector, the volume's initial contents, or recognisably garbage (torn, misplaced, another
/// volume's).
/// </summary>
public static class SectorStamp
{
    public const int Size = 512;

    public static byte[] Make(long id, long firstSector, int sectors)
    {
        var bytes = new byte[sectors * Size];
        for (int i = 0; i < sectors; i++)
            Fill(bytes.AsSpan(i * Size, Size), id, firstSector + i);
        return bytes;
    }

    /// <summary>The id a sector carries, or null when it is not one whole stamp for this sector.</summary>
    public static long? Decode(ReadOnlySpan<byte> sector, long index)
    {
        long id = BitConverter.ToInt64(sector);
        Span<byte> expected = stackalloc byte[Size];
        Fill(expected, id, index);
        return id > 0 && sector.SequenceEqual(expected) ? id : null;
    }

    private static void Fill(Span<byte> sector, long id, long index)
    {
        BitConverter.TryWriteBytes(sector, id);
        BitConverter.TryWriteBytes(sector[8..], index);
        ulong x = (ulong)id * 0x9E3779B97F4A7C15UL ^ (ulong)index ^ 0xD1B54A32D192ED03UL;
        for (int i = 16; i < Size; i += 8)
        {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            BitConverter.TryWriteBytes(sector[i..], x);
        }
    }
}

/// <summary>One write or discard the writer sent. Times are ticks of the ledger's clock;
/// <see cref="Acked"/> stays at infinity until a successful reply arrives (and forever when the
/// server died first: the outcome of such a request is unknown).</summary>
public sealed class LedgerOp(long id, bool discard, bool fua, long issued)
{
    public long Id { get; } = id;
    public bool Discard { get; } = discard;
    public bool Fua { get; } = fua;
    public long Issued { get; } = issued;
    public long Acked { get; set; } = long.MaxValue;

    /// <summary>The value it leaves in a sector: a discarded block reads its initial contents
    /// again (zeros, or the origin's data), which the ledger calls 0.</summary>
    public long Value => Discard ? 0 : Id;
}

/// <summary>
/// What every sector of one volume may hold after the server is killed, from what the writer sent
/// and what the server acknowledged. The writer never has two requests in flight on one sector, so
/// each sector's requests are ordered. A request is durable once acknowledged with FUA, or
/// acknowledged before a FLUSH was sent that then completed (the NBD rule: a FLUSH reply covers
/// every write replied to before the FLUSH arrived). After a kill a sector may hold the value of its
/// last durable request, or of any request sent after it; with none durable, its value from the
/// last check (the baseline) or of any request sent since. Nothing else.
/// </summary>
public sealed class VolumeLedger
{
    private static long _clock;
    private readonly object _lock = new();
    private readonly long[] _baseline;
    private readonly List<LedgerOp>?[] _history;
    private long _lastCompletedFlushIssued = long.MinValue;

    public VolumeLedger(string name, long size, byte[]? origin)
    {
        Name = name;
        _baseline = new long[size / SectorStamp.Size];
        _history = new List<LedgerOp>?[_baseline.Length];
        Origin = origin;
    }

    public string Name { get; }

    /// <summary>The origin's bytes (the initial contents), or null: zeros.</summary>
    public byte[]? Origin { get; }

    public long Sectors => _baseline.Length;

    public static long Tick() => Interlocked.Increment(ref _clock);

    /// <summary>Records a request before it is sent, so a kill at any moment finds it.</summary>
    public LedgerOp Issue(long id, bool discard, long firstSector, int sectors, bool fua)
    {
        lock (_lock)
        {
            var op = new LedgerOp(id, discard, fua, Tick());
            for (long s = firstSector; s < firstSector + sectors; s++)
                (_history[s] ??= []).Add(op);
            return op;
        }
    }

    public void Acknowledged(LedgerOp op)
    {
        long now = Tick();
        lock (_lock)
            op.Acked = now;
    }

    /// <summary>A FLUSH is about to be sent: its tick, to hand to <see cref="FlushCompleted"/>.</summary>
    public static long FlushIssued() => Tick();

    public void FlushCompleted(long issued)
    {
        lock (_lock)
            _lastCompletedFlushIssued = Math.Max(_lastCompletedFlushIssued, issued);
    }

    private bool IsDurable(LedgerOp op) => op.Acked != long.MaxValue && (op.Fua || op.Acked < _lastCompletedFlushIssued);

    /// <summary>
    /// Judges the volume's contents read back after a restart, then takes them as the new baseline
    /// (a SIGKILL loses only what the server had not handed to the kernel, so what the restarted
    /// server reads is on disk). Returns the problems, at most <paramref name="maxReported"/> of
    /// them described, and counts the durable requests checked and those lost.
    /// </summary>
    public LedgerVerdict Judge(byte[] contents, int maxReported = 10)
    {
        lock (_lock)
        {
            var problems = new List<string>();
            var lost = new HashSet<long>();
            var durable = new HashSet<long>();
            int badSectors = 0;
            for (long s = 0; s < _baseline.Length; s++)
            {
                var sector = contents.AsSpan((int)(s * SectorStamp.Size), SectorStamp.Size);
                long? seen = IsInitial(sector, s) ? 0 : SectorStamp.Decode(sector, s);
                var history = _history[s];
                int lastDurable = history is null ? -1 : history.FindLastIndex(IsDurable);
                if (lastDurable >= 0)
                    durable.Add(history![lastDurable].Id);
                bool acceptable = seen is { } value && (lastDurable < 0 && value == _baseline[s]
                    || history is not null && history.Skip(Math.Max(lastDurable, 0)).Any(op => op.Value == value));
                if (!acceptable)
                {
                    badSectors++;
                    if (lastDurable >= 0)
                        lost.Add(history![lastDurable].Id);
                    if (problems.Count < maxReported)
                        problems.Add($"{Name} sector {s}: holds {(seen is { } v ? v == 0 ? "its initial contents" : $"write {v}" : "garbage")}; " +
                            $"baseline {_baseline[s]}, since then [{string.Join(", ", history?.Select(Describe) ?? [])}]");
                }
                _baseline[s] = seen ?? -1;
                _history[s] = null;
            }
            return new LedgerVerdict(badSectors, lost.Count, durable.Count, problems);
        }
    }

    private string Describe(LedgerOp op) =>
        $"{(op.Discard ? "discard" : "write")} {op.Id}{(op.Fua ? " FUA" : "")}{(op.Acked == long.MaxValue ? " unacknowledged" : IsDurable(op) ? " durable" : " acknowledged")}";

    private bool IsInitial(ReadOnlySpan<byte> sector, long s) =>
        Origin is null ? !sector.ContainsAnyExcept((byte)0) : sector.SequenceEqual(Origin.AsSpan((int)(s * SectorStamp.Size), SectorStamp.Size));
}

/// <param name="BadSectors">sectors holding a value the ledger does not allow</param>
/// <param name="LostWrites">durable requests at least one of whose sectors no longer holds them
/// (or something written later)</param>
/// <param name="DurableChecked">distinct durable requests that were some sector's last durable one</param>
public sealed record LedgerVerdict(int BadSectors, int LostWrites, int DurableChecked, List<string> Problems);
