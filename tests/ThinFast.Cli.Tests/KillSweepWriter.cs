namespace ThinFast.Cli.Tests;

/// <summary>
/// Writes to one volume over one NBD connection with <c>depth</c> requests in flight until the
/// connection ends: whole-block and partial writes (some FUA), whole-block discards and FLUSHes,
/// each recorded in the volume's <see cref="VolumeLedger"/> before it is sent and when it is
/// acknowledged. Requests in flight never share a pool block, so each sector's requests are
/// ordered (the ledger depends on it), while the blocks around them are provisioned, copied from
/// the origin and discarded concurrently.
/// </summary>
public sealed class KillSweepWriter
{
    private static long _nextId;
    private readonly PipelinedNbdClient _client;
    private readonly VolumeLedger _ledger;
    private readonly int _blockSize;
    private readonly Random _random;
    private readonly HashSet<long> _busyBlocks = [];
    private int _inFlight, _writesInFlight;
    private long _completed;

    public KillSweepWriter(PipelinedNbdClient client, VolumeLedger ledger, int blockSize, int seed)
    {
        _client = client;
        _ledger = ledger;
        _blockSize = blockSize;
        _random = new Random(seed);
    }

    /// <summary>Requests sent and not yet answered.</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Of those, writes and discards (FLUSHes excluded).</summary>
    public int WritesInFlight => Volatile.Read(ref _writesInFlight);

    /// <summary>Requests answered.</summary>
    public long Completed => Interlocked.Read(ref _completed);

    /// <summary>A request the server answered with an error before it died; the sweep fails on it.</summary>
    public string? Error { get; private set; }

    /// <summary>Runs <paramref name="depth"/> request loops until the connection is lost.</summary>
    public Task RunAsync(int depth) => Task.WhenAll(Enumerable.Range(0, depth).Select(_ => Task.Run(LoopAsync)));

    private async Task LoopAsync()
    {
        try
        {
            while (true)
                await OneRequestAsync();
        }
        catch (NbdConnectionLostException)
        {
            // The server was killed: the request's outcome is unknown, and the ledger says so.
        }
    }

    private enum Kind { WholeBlocks, Partial, Discard, Flush }

    private async Task OneRequestAsync()
    {
        Kind kind;
        long first, end;
        bool fua;
        lock (_random)
        {
            kind = _random.Next(100) switch { < 30 => Kind.WholeBlocks, < 80 => Kind.Partial, < 90 => Kind.Discard, _ => Kind.Flush };
            fua = kind is Kind.WholeBlocks or Kind.Partial && _random.Next(100) < 15;
            long sectors = _ledger.Sectors, perBlock = _blockSize / SectorStamp.Size;
            first = kind == Kind.Partial ? _random.NextInt64(sectors) : _random.NextInt64(sectors / perBlock) * perBlock;
            end = Math.Min(sectors, kind switch
            {
                // No copy needed, even over the origin.
                Kind.WholeBlocks => first + perBlock * _random.Next(1, 3),
                // A first write here copies the rest of the block from the origin (or zeros it).
                Kind.Partial => first + _random.Next(1, (int)perBlock * 2),
                // Whole blocks only: dm-thin ignores the partial ones.
                _ => first + perBlock,
            });
        }
        if (kind == Kind.Flush)
        {
            await FlushAsync();
            return;
        }
        bool discard = kind == Kind.Discard;
        if (!Reserve(first, end))
        {
            await Task.Yield();
            return;
        }
        try
        {
            long id = Interlocked.Increment(ref _nextId);
            var op = _ledger.Issue(id, discard, first, (int)(end - first), fua);
            Interlocked.Increment(ref _inFlight);
            Interlocked.Increment(ref _writesInFlight);
            uint error;
            try
            {
                error = discard
                    ? await _client.TrimAsync(first * SectorStamp.Size, (int)(end - first) * SectorStamp.Size)
                    : await _client.WriteAsync(first * SectorStamp.Size, SectorStamp.Make(id, first, (int)(end - first)), op.Fua);
            }
            finally
            {
                Interlocked.Decrement(ref _writesInFlight);
                Interlocked.Decrement(ref _inFlight);
            }
            if (error != 0)
                Error ??= $"{(discard ? "discard" : "write")} of sectors [{first}, {end}) of {_ledger.Name} failed with NBD error {error}";
            else
                _ledger.Acknowledged(op);
            Interlocked.Increment(ref _completed);
        }
        finally
        {
            Release(first, end);
        }
    }

    private async Task FlushAsync()
    {
        long issued = VolumeLedger.FlushIssued();
        Interlocked.Increment(ref _inFlight);
        uint error;
        try
        {
            error = await _client.FlushAsync();
        }
        finally
        {
            Interlocked.Decrement(ref _inFlight);
        }
        if (error != 0)
            Error ??= $"FLUSH of {_ledger.Name} failed with NBD error {error}";
        else
            _ledger.FlushCompleted(issued);
        Interlocked.Increment(ref _completed);
    }

    private bool Reserve(long first, long end)
    {
        long perBlock = _blockSize / SectorStamp.Size;
        lock (_busyBlocks)
        {
            for (long b = first / perBlock; b <= (end - 1) / perBlock; b++)
                if (_busyBlocks.Contains(b))
                    return false;
            for (long b = first / perBlock; b <= (end - 1) / perBlock; b++)
                _busyBlocks.Add(b);
            return true;
        }
    }

    private void Release(long first, long end)
    {
        long perBlock = _blockSize / SectorStamp.Size;
        lock (_busyBlocks)
            for (long b = first / perBlock; b <= (end - 1) / perBlock; b++)
                _busyBlocks.Remove(b);
    }
}
