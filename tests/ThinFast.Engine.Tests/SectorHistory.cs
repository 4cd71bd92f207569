namespace ThinFast.Engine.Tests;

/// <summary>
/// Stamps for 512-byte sectors: each sector a test writes carries the id of the operation that
/// wrote it and its own sector number, filled out with bytes derived from both, so a sector read
/// back names the operation whose data it holds, or is recognisably torn, misplaced or garbage.
/// </summary>
internal static class SectorStamps
{
    public const int Sector = 512;

    /// <summary>The value of an all-zero sector.</summary>
    public const long Zeros = 0;

    public static void Stamp(Span<byte> sector, long id, int index)
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

    /// <summary>The operation id a sector carries, <see cref="Zeros"/> for zeros, or null when its
    /// bytes are not one whole stamp for this sector number.</summary>
    public static long? Decode(ReadOnlySpan<byte> sector, int index)
    {
        if (!sector.ContainsAnyExcept((byte)0))
            return Zeros;
        long id = BitConverter.ToInt64(sector);
        Span<byte> expected = stackalloc byte[Sector];
        Stamp(expected, id, index);
        return sector.SequenceEqual(expected) ? id : null;
    }

    public static byte[] Stamped(long id, int firstSector, int sectors)
    {
        var bytes = new byte[sectors * Sector];
        for (int i = 0; i < sectors; i++)
            Stamp(bytes.AsSpan(i * Sector, Sector), id, firstSector + i);
        return bytes;
    }
}

internal enum ChangeKind { Write, Zero, Discard }

/// <summary>Something that changes sectors [First, End) of a volume between two ticks of a
/// <see cref="SectorHistory"/>'s clock. It is recorded before it is issued, with
/// <see cref="Completed"/> at infinity until it completes, so a read that sees its data early can
/// already account for it.</summary>
internal sealed class Change(long id, ChangeKind kind, int first, int end, long issued, bool fua)
{
    public long Id { get; } = id;
    public ChangeKind Kind { get; } = kind;
    public int First { get; } = first;
    public int End { get; } = end;
    public long Issued { get; } = issued;
    public bool Fua { get; } = fua;
    public long Completed { get; set; } = long.MaxValue;
}

/// <summary>
/// What each sector of one volume may hold, for tests whose requests overlap in bytes and time,
/// so that no sequential model can say which write wins. A value is possible when some operation
/// that put it there began before the observation ended and no other operation that began after
/// it ended had both ended before the observation began and covered the sector (the sector's
/// first value counts as an operation that ended at minus infinity). After a crash, a sector must
/// hold a value no durable change superseded: a change is durable once it completed with FUA or
/// a FLUSH of the volume issued after it completed has completed.
/// </summary>
internal sealed class SectorHistory(int sectors, Func<int, long> initial)
{
    private static long _clock;
    private readonly List<Change>[] _bySector = Enumerable.Range(0, sectors).Select(_ => new List<Change>()).ToArray();
    private readonly List<(long Issued, long Completed)> _flushes = new();
    private readonly object _lock = new();

    /// <summary>A tick of the clock every history shares: take one before issuing and one after
    /// completing.</summary>
    public static long Tick() => Interlocked.Increment(ref _clock);

    public long Initial(int sector) => initial(sector);

    public void Add(Change c)
    {
        lock (_lock)
            for (int s = c.First; s < c.End; s++)
                _bySector[s].Add(c);
    }

    public void Complete(Change c)
    {
        lock (_lock)
            c.Completed = Tick();
    }

    /// <summary>Records a FLUSH of the volume that completed.</summary>
    public void Flushed(long issued)
    {
        lock (_lock)
            _flushes.Add((issued, Tick()));
    }

    /// <summary>What a change leaves in a sector: its stamp, zeros, or (unmapped) the sector's
    /// first value.</summary>
    public long ValueOf(Change c, int sector) => c.Kind switch
    {
        ChangeKind.Write => c.Id,
        ChangeKind.Zero => SectorStamps.Zeros,
        _ => Initial(sector),
    };

    /// <summary>Whether <paramref name="sector"/> may read <paramref name="value"/> to a read that
    /// began at <paramref name="from"/> and ended at <paramref name="to"/>.</summary>
    public bool MayRead(int sector, long value, long from, long to)
    {
        lock (_lock)
            return MayHold(sector, value, w => w.Completed < from, to);
    }

    /// <summary>Whether <paramref name="sector"/> may hold <paramref name="value"/> after a crash.</summary>
    public bool MayHoldAfterCrash(int sector, long value)
    {
        lock (_lock)
            return MayHold(sector, value, IsDurable, long.MaxValue);
    }

    private bool IsDurable(Change w) =>
        w.Completed != long.MaxValue && (w.Fua || _flushes.Exists(f => f.Issued > w.Completed));

    // A value is possible if an operation put it there (issued before `before`) that no
    // `superseding` change covering the sector was issued after.
    private bool MayHold(int sector, long value, Func<Change, bool> superseding, long before)
    {
        var changes = _bySector[sector];
        if (value == Initial(sector) && !changes.Any(superseding))
            return true;
        foreach (var c in changes)
        {
            if (ValueOf(c, sector) != value || c.Issued >= before)
                continue;
            if (!changes.Any(w => c.Completed < w.Issued && superseding(w)))
                return true;
        }
        return false;
    }

    /// <summary>Checks sectors read back from <paramref name="firstSector"/> on; each failure is
    /// described to <paramref name="fail"/>.</summary>
    public void Check(string what, ReadOnlySpan<byte> bytes, int firstSector, Func<int, long, bool> mayHold, Action<string> fail)
    {
        for (int i = 0; i < bytes.Length / SectorStamps.Sector; i++)
        {
            int sector = firstSector + i;
            long? value = SectorStamps.Decode(bytes.Slice(i * SectorStamps.Sector, SectorStamps.Sector), sector);
            if (value is null)
                fail($"{what}: sector {sector} holds no whole stamp for itself (torn, misplaced or garbage)");
            else if (!mayHold(sector, value.Value))
                fail($"{what}: sector {sector} holds the value of operation {value} (0 = zeros, 1 = origin), which it could not hold then");
        }
    }
}

/// <summary>Failures collected from many threads (the first 20 kept), asserted on at the end.</summary>
internal sealed class FailureLog
{
    private readonly List<string> _messages = new();
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public void Add(string message)
    {
        Interlocked.Increment(ref _count);
        lock (_messages)
            if (_messages.Count < 20)
                _messages.Add(message);
    }

    public override string ToString()
    {
        lock (_messages)
            return $"{Count} failure(s):\n" + string.Join("\n", _messages);
    }
}
