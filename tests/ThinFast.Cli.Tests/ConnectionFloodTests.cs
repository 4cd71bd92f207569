using System.Diagnostics;
using System.Net.Sockets;
using System.Text.RegularExpressions;

namespace ThinFast.Cli.Tests;

// Runs alone: it measures throughput, latency and the server's memory.
[CollectionDefinition(nameof(ConnectionFloodCollection), DisableParallelization = true)]
public sealed class ConnectionFloodCollection;

/// <summary>
/// 1,000 connections to one <c>thinfast serve</c>: 700 idle after GO, 150 stalled in the middle
/// of the handshake, 75 stalled half-way through a request header and 75 half-way through a WRITE
/// payload, while 64 clients keep writing and verifying their own data. The active clients keep
/// going (throughput and latency with and without the flood are reported), the stalled ones are
/// dropped by the handshake and receive timeouts, the idle ones stay, the server stays up, and
/// the server's memory per idle connection is measured.
/// </summary>
[Collection(nameof(ConnectionFloodCollection))]
public sealed class ConnectionFloodTests
{
    private const int Active = 64, Idle = 700, MidHandshake = 150, HalfHeader = 75, HalfPayload = 75;
    private const int Flood = Idle + MidHandshake + HalfHeader + HalfPayload;
    private const int RegionBytes = 256 * 1024, WriteBytes = 4096;

    [Fact]
    public async Task ActiveClientsKeepGoingThroughAThousandIdleAndStalledConnections()
    {
        var cancel = TestContext.Current.CancellationToken;
        var output = TestContext.Current.TestOutputHelper!;
        // The test process holds both ends' worth of sockets and the server inherits its limit
        // (.NET raises its own soft limit to the hard one at start-up).
        int needed = Active + Flood + 200;
        Assert.True(OpenFileLimit("self") >= needed, $"RLIMIT_NOFILE {OpenFileLimit("self")} < {needed}: raise it (ulimit -n)");

        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "256M").ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", t["p"], "vm", "--size", $"{Active * RegionBytes / (1 << 20)}M").ExitCode);
        string socket = t["nbd.sock"];
        // A host for many guests: room for all of them. The stalled ones must go by the default
        // handshake and receive timeouts (30 s), not by a limit that would refuse the guests too.
        using var server = new ServeTests.Server("serve", t["p"], "--socket", socket, "--max-connections", $"{Active + Flood + 16}");
        Assert.True(OpenFileLimit(server.Pid.ToString()) >= needed, $"the server's RLIMIT_NOFILE is below {needed}");
        await using var connections = new OpenConnections();

        var active = new List<VerifyingClient>();
        for (int i = 0; i < Active; i++)
            active.Add(new VerifyingClient(connections.Add(await PipelinedNbdClient.ConnectAsync(socket, "vm", cancel)), i * (long)RegionBytes));
        // Every block provisioned first, so that no phase pays for first writes.
        await Task.WhenAll(active.Select(c => c.FillRegionAsync()));
        var quiet = await RunPhaseAsync(active, TimeSpan.FromSeconds(3));

        // Memory of idle connections: the server's RSS before and after they connect.
        long rssBefore = Rss(server.Pid);
        var idle = new List<PipelinedNbdClient>();
        for (int i = 0; i < Idle; i++)
            idle.Add(connections.Add(await PipelinedNbdClient.ConnectAsync(socket, "vm", cancel)));
        long rssAfter = await SettledRssAsync(server.Pid);
        double perIdle = (rssAfter - rssBefore) / (double)Idle;

        // The stalled ones. Their timeouts (30 s) run from here.
        var stalledAt = Stopwatch.StartNew();
        var stalledClosed = new List<Task>();
        for (int i = 0; i < MidHandshake; i++)
        {
            var s = connections.Add(new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified));
            await s.ConnectAsync(new UnixDomainSocketEndPoint(socket), cancel);
            var greeting = new byte[18];
            await s.ReceiveAsync(greeting, cancel);
            // Client flags, then half an option header.
            await s.SendAsync((byte[])[0, 0, 0, 3, .. "IHAVEOPT"u8.ToArray()], cancel);
            stalledClosed.Add(ClosedAsync(s));
        }
        for (int i = 0; i < HalfHeader + HalfPayload; i++)
        {
            var c = connections.Add(await PipelinedNbdClient.ConnectAsync(socket, "vm", cancel));
            byte[] header = PipelinedNbdClient.RequestHeader(PipelinedNbdClient.Write, 0, 1, 0, 64 * 1024);
            await c.SendRawAsync(i < HalfHeader ? header.AsMemory(0, 14) : (byte[])[.. header, .. new byte[32 * 1024]]);
            stalledClosed.Add(c.Closed);
        }
        var flooded = await RunPhaseAsync(active, TimeSpan.FromSeconds(5));
        long rssFlooded = Rss(server.Pid);

        // Every stalled connection is dropped by its timeout; no idle one is, and the active
        // clients still reach the server afterwards.
        var allClosed = Task.WhenAll(stalledClosed);
        if (await Task.WhenAny(allClosed, Task.Delay(TimeSpan.FromSeconds(60), cancel)) != allClosed)
            Assert.Fail($"{stalledClosed.Count(c => !c.IsCompleted)} of {stalledClosed.Count} stalled connections still open after 60 s");
        var dropped = stalledAt.Elapsed;
        Assert.True(dropped > TimeSpan.FromSeconds(25), $"the stalled clients went after {dropped}, before their 30 s timeouts");
        Assert.Equal(MidHandshake, Regex.Matches(server.Log, "dropping client: handshake not finished within").Count);
        Assert.Equal(HalfHeader + HalfPayload, Regex.Matches(server.Log, @"dropping client: request \(header or WRITE payload\) not fully received").Count);
        Assert.DoesNotContain(idle, c => c.Closed.IsCompleted);
        Assert.DoesNotContain("refusing a connection", server.Log);
        var after = await RunPhaseAsync(active, TimeSpan.FromSeconds(1));
        foreach (var c in active)
            await c.VerifyRegionAsync();

        output.WriteLine($"{Active} active clients (QD 1 each, {WriteBytes} B write + read-back):");
        output.WriteLine($"  without the flood: {quiet}");
        output.WriteLine($"  with {Flood} idle/stalled connections: {flooded}");
        output.WriteLine($"  after the stalled ones were dropped ({dropped.TotalSeconds:F1} s): {after}");
        output.WriteLine($"server RSS {rssBefore / 1024} KiB before {Idle} idle connections, {rssAfter / 1024} KiB after: {perIdle:F0} bytes per idle connection; {rssFlooded / 1024} KiB with the whole flood");
        // Every active client kept going through the flood, none waited on a stalled client's 30 s
        // timeout, and idle connections cost what a server for many guests can afford (about 475 KiB
        // each before the block-status extents were made on demand, 85-91 KiB after).
        Assert.True(flooded.SlowestClientIterations > 0 && after.SlowestClientIterations > 0, $"an active client stopped: {flooded}; {after}");
        Assert.True(flooded.MaxMs < 5000, $"an active client waited {flooded.MaxMs:F0} ms during the flood");
        Assert.True(perIdle < 200 * 1024, $"{perIdle:F0} bytes of server memory per idle connection");

        await connections.DisposeAsync();
        Assert.Equal(0, server.Signal("TERM"));
    }

    /// <summary>Runs every active client for <paramref name="duration"/>; a wrong read fails the test.</summary>
    private static async Task<PhaseFigures> RunPhaseAsync(List<VerifyingClient> clients, TimeSpan duration)
    {
        var latencies = new List<double>[clients.Count];
        var clock = Stopwatch.StartNew();
        await Task.WhenAll(clients.Select((c, i) => Task.Run(async () => latencies[i] = await c.RunAsync(duration))));
        double seconds = clock.Elapsed.TotalSeconds;
        var all = latencies.SelectMany(l => l).Order().ToArray();
        Assert.NotEmpty(all);
        return new PhaseFigures(all.Length, latencies.Min(l => l.Count), seconds, all[all.Length / 2], all[all.Length * 99 / 100], all[^1]);
    }

    private sealed record PhaseFigures(int Iterations, int SlowestClientIterations, double Seconds, double P50Ms, double P99Ms, double MaxMs)
    {
        public override string ToString() =>
            $"{Iterations / Seconds:F0} write+verify/s ({2 * Iterations / Seconds:F0} requests/s, {Iterations * (double)WriteBytes / Seconds / (1 << 20):F1} MiB/s written), " +
            $"latency p50 {P50Ms:F2} ms, p99 {P99Ms:F2} ms, max {MaxMs:F1} ms, slowest client {SlowestClientIterations} iterations";
    }

    /// <summary>One client writing 4 KiB stamps into its own region and reading each back at once;
    /// it keeps a copy of the region to check the whole of it at the end.</summary>
    private sealed class VerifyingClient(PipelinedNbdClient client, long regionStart)
    {
        private readonly byte[] _mirror = new byte[RegionBytes];
        private readonly Random _random = new((int)(regionStart / RegionBytes));
        private long _nextId = regionStart / RegionBytes << 32;

        public async Task<List<double>> RunAsync(TimeSpan duration)
        {
            var latencies = new List<double>();
            var clock = Stopwatch.StartNew();
            var back = new byte[WriteBytes];
            while (clock.Elapsed < duration)
            {
                long offset = _random.Next(RegionBytes / WriteBytes) * (long)WriteBytes;
                byte[] data = SectorStamp.Make(++_nextId, (regionStart + offset) / SectorStamp.Size, WriteBytes / SectorStamp.Size);
                long started = Stopwatch.GetTimestamp();
                Assert.Equal(0u, await client.WriteAsync(regionStart + offset, data, fua: false));
                Assert.Equal(0u, await client.ReadAsync(regionStart + offset, back));
                latencies.Add(Stopwatch.GetElapsedTime(started).TotalMilliseconds);
                Assert.True(back.AsSpan().SequenceEqual(data), $"client at {regionStart} read back something else at {regionStart + offset}");
                data.CopyTo(_mirror, offset);
            }
            return latencies;
        }

        public async Task FillRegionAsync()
        {
            for (int offset = 0; offset < RegionBytes; offset += 64 * 1024)
            {
                byte[] data = SectorStamp.Make(++_nextId, (regionStart + offset) / SectorStamp.Size, 64 * 1024 / SectorStamp.Size);
                Assert.Equal(0u, await client.WriteAsync(regionStart + offset, data, fua: false));
                data.CopyTo(_mirror, offset);
            }
        }

        public async Task VerifyRegionAsync()
        {
            var region = new byte[RegionBytes];
            Assert.Equal(0u, await client.ReadAsync(regionStart, region));
            Assert.True(region.AsSpan().SequenceEqual(_mirror), $"the region at {regionStart} does not hold what its client wrote");
        }
    }

    /// <summary>Every connection the test opened, closed at the end whether it passed or not.</summary>
    private sealed class OpenConnections : IAsyncDisposable
    {
        private readonly List<PipelinedNbdClient> _clients = [];
        private readonly List<Socket> _sockets = [];

        public PipelinedNbdClient Add(PipelinedNbdClient client)
        {
            _clients.Add(client);
            return client;
        }

        public Socket Add(Socket socket)
        {
            _sockets.Add(socket);
            return socket;
        }

        public async ValueTask DisposeAsync()
        {
            foreach (var s in _sockets)
                s.Dispose();
            _sockets.Clear();
            foreach (var c in _clients)
                await c.DisposeAsync();
            _clients.Clear();
        }
    }

    private static async Task ClosedAsync(Socket s)
    {
        var sink = new byte[256];
        try
        {
            while (await s.ReceiveAsync(sink, SocketFlags.None) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // A reset is a close too.
        }
    }

    private static long Rss(int pid) =>
        long.Parse(Regex.Match(File.ReadAllText($"/proc/{pid}/status"), @"VmRSS:\s+(\d+) kB").Groups[1].Value) * 1024;

    // The idle clients' GO replies have arrived, but the server sets up each connection's
    // transmission state just after sending them: wait until its RSS stops moving.
    private static async Task<long> SettledRssAsync(int pid)
    {
        long last = Rss(pid);
        for (int stable = 0; stable < 3;)
        {
            await Task.Delay(200, TestContext.Current.CancellationToken);
            long now = Rss(pid);
            stable = Math.Abs(now - last) < 64 * 1024 ? stable + 1 : 0;
            last = now;
        }
        return last;
    }

    private static long OpenFileLimit(string pid) =>
        long.Parse(Regex.Match(File.ReadAllText($"/proc/{pid}/limits"), @"Max open files\s+(\d+)").Groups[1].Value);
}
