using System.Diagnostics;
using System.Text.Json;

namespace ThinFast.Nbd.Tests;

/// <summary>Bulk copies (nbdcopy), fio with verification over two connections, multi-conn FLUSH
/// and shutdown with requests in flight.</summary>
public class BulkAndConcurrencyTests
{
    [Fact]
    public async Task NbdcopyRoundTripsAFileThroughTheExport()
    {
        const int size = 32 * 1024 * 1024;
        await using var h = ServerHarness.Start(size: size);
        var source = new byte[size];
        Tool.Pattern(3 << 20, 11).CopyTo(source, 0);
        Tool.Pattern(100_000, 12).CopyTo(source, 10_000_000);
        Tool.Pattern(4 << 20, 13).CopyTo(source, 20 << 20);
        var inFile = h.TempFile("in.raw");
        var outFile = h.TempFile("out.raw");
        await File.WriteAllBytesAsync(inFile, source, TestContext.Current.CancellationToken);

        await Tool.RunOkAsync("nbdcopy", "--flush", inFile, h.UnixUri());
        Tool.AssertSame(source, h.Volume.ToArray());
        Tool.AssertSame(source, h.Volume.DurableImage());
        // Large zero runs of the source did not become allocated storage.
        Assert.False(h.Volume.IsAllocated(5 << 20, 4 << 20));

        await Tool.RunOkAsync("nbdcopy", h.TcpUri(), outFile);
        var copy = await File.ReadAllBytesAsync(outFile, TestContext.Current.CancellationToken);
        Assert.True(source.AsSpan().SequenceEqual(copy), Tool.Describe(source, copy));
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task FioRandomWritesVerifyOverTwoConnections(NbdTransportMode transport)
    {
        await using var h = ServerHarness.Start(options: ServerHarness.Using(transport));
        var result = await Tool.RunAsync("fio",
        [
            "--name=verify", "--ioengine=nbd", $"--uri={h.TcpUri()}", "--rw=randwrite",
            // Mixed sizes: small replies coalesce while large ones queue for the sender.
            "--bssplit=4k/60:16k/15:64k/15:1m/10",
            "--size=24m", "--offset_increment=32m", "--numjobs=2", "--iodepth=32",
            "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--randrepeat=0", "--output-format=json",
        ], TimeSpan.FromSeconds(120));
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdOut[result.StdOut.IndexOf('{')..]);
        var jobs = json.RootElement.GetProperty("jobs");
        Assert.Equal(2, jobs.GetArrayLength());
        foreach (var job in jobs.EnumerateArray())
        {
            Assert.Equal(0, job.GetProperty("error").GetInt32());
            Assert.Equal(24L * 1024 * 1024, job.GetProperty("write").GetProperty("io_bytes").GetInt64());
            // The verify phase read back every block written.
            Assert.Equal(24L * 1024 * 1024, job.GetProperty("read").GetProperty("io_bytes").GetInt64());
        }
        Assert.True(h.Volume.IsAllocated(0, 24 << 20) && h.Volume.IsAllocated(32 << 20, 24 << 20));
    }

    [Fact]
    public async Task FlushOnOneConnectionCoversWritesAcknowledgedOnAnother()
    {
        await using var h = ServerHarness.Start();
        h.Volume.FlushDelay = TimeSpan.FromMilliseconds(300);
        var script = $$"""
            import json, time
            h2 = nbd.NBD()
            h2.connect_uri('{{h.UnixUri()}}')
            h3 = nbd.NBD()
            h3.connect_uri('{{h.UnixUri()}}')
            res = {'multi_conn': h.can_multi_conn() and h2.can_multi_conn()}
            h.pwrite(b'\xa1' * 65536, 0)
            h3.pwrite(b'\xc3' * 65536, 1 << 20)
            t = time.monotonic()
            h2.flush()
            res['flush_seconds'] = time.monotonic() - t
            # Written after the flush, on a third connection: must not be durable yet.
            h3.pwrite(b'\xd4' * 65536, 2 << 20)
            res['visible_on_h2'] = h2.pread(65536, 0) == b'\xa1' * 65536 and h2.pread(65536, 2 << 20) == b'\xd4' * 65536
            print(json.dumps(res))
            """;
        var result = await Tool.NbdshAsync(h.UnixUri(), script);
        var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
        Assert.True(res["multi_conn"].GetBoolean());
        Assert.True(res["visible_on_h2"].GetBoolean());
        // The reply waited for the volume's flush to finish.
        Assert.True(res["flush_seconds"].GetDouble() >= 0.29, result.StdOut);

        var durable = h.Volume.DurableImage();
        Assert.Equal(1, h.Volume.FlushCount);
        Tool.AssertFilled(durable, 0, 65536, 0xa1);
        Tool.AssertFilled(durable, 1 << 20, 65536, 0xc3);
        Tool.AssertFilled(durable, 2 << 20, 65536, 0);
    }

    [Theory]
    [InlineData(NbdTransportMode.IoUring)]
    [InlineData(NbdTransportMode.Sockets)]
    public async Task StopFinishesInFlightRequestsThenFlushesAndRefusesNewClients(NbdTransportMode transport)
    {
        var h = ServerHarness.Start(options: ServerHarness.Using(transport));
        try
        {
            h.Volume.OperationDelay = TimeSpan.FromMilliseconds(500);
            var script = """
                import json
                cookies = []
                for i in range(8):
                    buf = nbd.Buffer.from_bytearray(bytearray([0x40 + i]) * 65536)
                    cookies.append((i, h.aio_pwrite(buf, i * 65536), buf))
                res = {}
                try:
                    while h.aio_in_flight() > 0:
                        h.poll(-1)
                except nbd.Error as e:
                    res['poll_error'] = str(e)
                for i, c, buf in cookies:
                    try:
                        res[str(i)] = 'ok' if h.aio_command_completed(c) else 'pending'
                    except nbd.Error as e:
                        res[str(i)] = 'errno %d' % e.errnum
                print(json.dumps(res))
                """;
            var client = Tool.RunAsync("nbdsh", ["-u", h.UnixUri(), "-c", script]);
            var wait = Stopwatch.StartNew();
            while (h.Volume.InFlight < 8 && wait.Elapsed < TimeSpan.FromSeconds(20))
                await Task.Delay(10, TestContext.Current.CancellationToken);
            Assert.Equal(8, h.Volume.InFlight);

            await h.Server.StopAsync();
            Assert.Equal(0, h.Volume.InFlight);
            Assert.Equal(0, h.Server.ConnectionCount);
            Assert.Equal(1, h.Volume.FlushCount);

            var result = await client;
            Assert.True(result.ExitCode == 0, result.ToString());
            var res = JsonSerializer.Deserialize<Dictionary<string, JsonElement>>(result.StdOut.Trim())!;
            for (int i = 0; i < 8; i++)
                Assert.True(res[i.ToString()].GetString() == "ok", result.StdOut);
            var durable = h.Volume.DurableImage();
            for (int i = 0; i < 8; i++)
                Assert.Equal(0x40 + i, durable[i * 65536 + 1234]);

            Assert.False(File.Exists(h.SocketPath));
            var refused = await Tool.RunAsync("nbdinfo", [h.TcpUri()]);
            Assert.NotEqual(0, refused.ExitCode);
        }
        finally
        {
            await h.DisposeAsync();
        }
    }
}
