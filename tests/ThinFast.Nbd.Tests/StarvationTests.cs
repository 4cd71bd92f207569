using System.Diagnostics;
using System.Text.Json;
using ThinFast.IO.Uring;

namespace ThinFast.Nbd.Tests;

/// <summary>
/// No client can starve the others: clients that stall in the middle of a WRITE, pipeline READs
/// without reading the replies, or sit idle hold only their own share (payload budget, timeouts,
/// connection limit, the io_uring ring's slots), while well-behaved clients keep being served.
/// </summary>
public class StarvationTests
{
    private static CancellationToken Cancel => TestContext.Current.CancellationToken;

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task ClientsStalledMidWriteDoNotBlockOthersAndAreDroppedAfterTheReceiveTimeout(NbdTransportMode transport)
    {
        var receiveTimeout = TimeSpan.FromSeconds(4);
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport) with { ReceiveTimeout = receiveTimeout });
        // Two 4 MiB writes take the test tiers' only 32 MiB buffer and more; sixteen 1 MiB ones
        // take all eight 2 MiB buffers and more. Each sends its header and 1000 bytes, then stalls.
        var stalled = new List<RawClient>();
        var stallStarted = Stopwatch.StartNew();
        foreach (int length in (int[])[4 << 20, 4 << 20, .. Enumerable.Repeat(1 << 20, 16)])
        {
            var client = await RawClient.ConnectAndGoAsync(h.SocketPath, Cancel);
            await client.SendRequestAsync(1, 48L << 20, length, 1, Enumerable.Repeat((byte)0xee, 1000).ToArray(), Cancel);
            stalled.Add(client);
        }
        // A moment for the server to read the stalled headers (it takes their buffers then);
        // nothing a client can see marks that point.
        await Task.Delay(300, Cancel);

        var source = Tool.Pattern(8 << 20, 21);
        var inFile = h.TempFile("in.raw");
        await File.WriteAllBytesAsync(inFile, source, Cancel);
        var script = $$"""
            import json, subprocess, time
            res = {}
            data = bytes(range(256)) * (4 << 12)
            t = time.monotonic()
            h.pwrite(data, 0)
            res['read_back'] = h.pread(4 << 20, 0) == data
            res['nbdcopy'] = subprocess.run(['nbdcopy', '{{inFile}}', '{{h.UnixUri()}}'], timeout=30).returncode
            res['seconds'] = time.monotonic() - t
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        bool allStillStalled = stalled.All(c => c.IsOpen);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        Assert.True(res["read_back"].GetBoolean(), result.StdOut);
        Assert.Equal(0, res["nbdcopy"].GetInt32());
        // Served while every stalled client still held its buffer, not after they were dropped.
        Assert.True(allStillStalled && stallStarted.Elapsed < receiveTimeout,
            $"other clients took until {stallStarted.Elapsed} (receive timeout {receiveTimeout}); stalled clients still open: {allStillStalled}");

        await Task.WhenAll(stalled.Select(c => c.ClosedByServerAsync(Cancel))).WaitAsync(receiveTimeout * 5, Cancel);
        Assert.True(stallStarted.Elapsed >= receiveTimeout, $"stalled clients dropped after {stallStarted.Elapsed}, before the receive timeout");
        Assert.Equal(stalled.Count, h.Log.Count(m => m.Contains("WRITE payload) not fully received within")));
        Tool.AssertSame(source, h.Volume.ToArray()[..source.Length]);
        // Nothing of the stalled writes landed.
        Tool.AssertFilled(h.Volume.ToArray(), 48L << 20, 4 << 20, 0);
        foreach (var c in stalled)
            c.Dispose();
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task AClientPipeliningReadsWithoutReadingRepliesHoldsOnlyItsBudget(NbdTransportMode transport)
    {
        const long hogOffset = 32L << 20;
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport) with
        {
            MaxPayload = 8 << 20,
            ConnectionBufferBytes = 8 << 20,
        });
        h.Volume.CountReadsFrom = hogOffset;
        // Sixteen 4 MiB READs, replies never read: the first reply fills the socket, so every
        // read whose buffer the budget grants stays held. 8 MiB of budget grants two.
        using var hog = await RawClient.ConnectAndGoAsync(h.SocketPath, Cancel);
        for (int i = 0; i < 16; i++)
            await hog.SendRequestAsync(0, hogOffset + ((long)i << 22), 4 << 20, (ulong)i, null, Cancel);
        await WaitUntilAsync(() => h.Volume.CountedReads >= 1);

        var script = """
            import json, time
            res = {}
            data = bytes(range(256)) * (4 << 12)
            t = time.monotonic()
            for i in range(4):
                h.pwrite(data, 0)
                res['read_back'] = h.pread(4 << 20, 0) == data
            res['seconds'] = time.monotonic() - t
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        Assert.True(res["read_back"].GetBoolean(), result.StdOut);
        // The other client never waited for the hog: the send timeout (30 s) has not dropped it.
        Assert.True(hog.IsOpen, "the hog was dropped, so the other client may have waited for that");
        Assert.True(res["seconds"].GetDouble() < 10, result.StdOut);
        // The hog still holds just its budget's worth of READ buffers.
        Assert.Equal(2, h.Volume.CountedReads);
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task ClientsOverTheLimitAreToldWhyAndIdleClientsAreClosedAfterTheIdleTimeout(NbdTransportMode transport)
    {
        var idleTimeout = TimeSpan.FromSeconds(3);
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport) with { MaxConnections = 4, IdleTimeout = idleTimeout });
        // Started before the idle clients' clocks, so it can only overstate how long they idled.
        var idleSince = Stopwatch.StartNew();
        var idle = new List<RawClient>();
        for (int i = 0; i < 3; i++)
            idle.Add(await RawClient.ConnectAndGoAsync(h.SocketPath, Cancel));
        // The fourth keeps reading now and then, never idle for the idle timeout.
        using var busy = await RawClient.ConnectAndGoAsync(h.SocketPath, Cancel);
        using var stopBusy = new CancellationTokenSource();
        var busyLoop = Task.Run(async () =>
        {
            for (ulong cookie = 0; !stopBusy.IsCancellationRequested; cookie++)
            {
                await busy.SendRequestAsync(0, 0, 4096, cookie, null, Cancel);
                Assert.Equal(0u, await busy.SimpleReplyAsync(Cancel));
                await busy.ReceiveDataAsync(4096, Cancel);
                await Task.Delay(idleTimeout / 5, Cancel);
            }
        }, Cancel);

        // qemu prints the server's message; libnbd 1.14 only the error's errno (ESHUTDOWN), the
        // message only under LIBNBD_DEBUG=1. A bare close would read "Connection reset" / EOF.
        var refused = await Tool.RunAsync("qemu-img", ["info", h.UnixUri()]);
        Assert.True(refused.ExitCode != 0, refused.ToString());
        Assert.True(refused.StdErr.Contains("Server shutting down before option 7 (go)\nserver reported: server is at its connection limit (4 connections)"),
            refused.ToString());
        refused = await Tool.RunAsync("nbdinfo", [h.UnixUri()]);
        Assert.True(refused.ExitCode != 0 && refused.StdErr.Contains("server replied with error to opt_go request: Cannot send after transport endpoint shutdown"),
            refused.ToString());
        Assert.True(idleSince.Elapsed < idleTimeout, $"nbdinfo took {idleSince.Elapsed}: the refusal may have come after the idle ones were closed");
        Assert.Contains(h.Log, m => m.Contains("refusing a connection: 4 already open; telling the client"));

        await Task.WhenAll(idle.Select(c => c.ClosedByServerAsync(Cancel))).WaitAsync(idleTimeout * 5, Cancel);
        Assert.True(idleSince.Elapsed >= idleTimeout, $"idle clients closed after {idleSince.Elapsed}");
        Assert.Equal(3, h.Log.Count(m => m.Contains("dropping client: idle for")));
        await WaitUntilAsync(() => h.Server.ConnectionCount == 1);
        await Tool.RunOkAsync("nbdinfo", h.UnixUri());
        stopBusy.Cancel();
        await busyLoop;
        Assert.True(busy.IsOpen, "a client that kept sending requests was closed as idle");
        foreach (var c in idle)
            c.Dispose();
    }

    [Fact]
    public async Task IdleConnectionsOnTheIoUringTransportDoNotStopNewClients()
    {
        // 8 entries: 7 slots, which parked receives of idle clients would fill.
        Assert.True(IoUringReactor.TryCreate(out var reactor, out string? error, entries: 8), error);
        using var _ = reactor;
        await using var h = ServerHarness.Start(options: ServerHarness.Using(NbdTransportMode.IoUring) with { Reactor = reactor, MaxConnections = 32 });
        Assert.Equal(1, h.Server.RingConnectionLimit);
        var idle = new List<RawClient>();
        for (int i = 0; i < 12; i++)
        {
            var go = RawClient.ConnectAndGoAsync(h.SocketPath, Cancel);
            Assert.True(await Task.WhenAny(go, Task.Delay(TimeSpan.FromSeconds(10), Cancel)) == go, $"client {i + 1} was not served within 10 s");
            idle.Add(await go);
        }
        var script = """
            data = bytes(range(256)) * 4096
            h.pwrite(data, 0)
            assert h.pread(len(data), 0) == data
            print('ok')
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script, TimeSpan.FromSeconds(20));
        Assert.Equal("ok", result.StdOut.Trim());
        Assert.Contains(h.Log, m => m.Contains("the io_uring ring's share of connections (1) is taken; further connections use .NET sockets"));
        foreach (var c in idle)
            c.Dispose();
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (int i = 0; i < 200 && !condition(); i++)
            await Task.Delay(50, Cancel);
        Assert.True(condition());
    }
}
