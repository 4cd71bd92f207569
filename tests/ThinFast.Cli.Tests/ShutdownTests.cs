using System.Diagnostics;

namespace ThinFast.Cli.Tests;

/// <summary>SIGTERM ends serve in seconds whatever the clients are doing: a write queued for data
/// space fails with an error instead of holding the drain until the no-space timeout, and a client
/// that stopped reading its replies is dropped instead of holding it until the send timeout. The
/// metadata is committed and every flushed write is there afterwards.</summary>
public sealed class ShutdownTests
{
    // Well under the 30 s send timeout and the 60 s no-space timeout that bounded the stop before.
    private static readonly TimeSpan Bounded = TimeSpan.FromSeconds(20);

    /// <summary>An nbdsh client running a script in the background; its stdout lines are events.</summary>
    private sealed class Script : IDisposable
    {
        private readonly Process _process;
        private readonly List<string> _lines = [];
        private readonly Task<string> _stderr;

        public Script(string code)
        {
            var psi = new ProcessStartInfo(Cli.Require("nbdsh", "python3-libnbd")) { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true };
            // nbdsh runs `python3` from PATH; the system one has the libnbd module.
            psi.Environment["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH");
            psi.ArgumentList.Add("-c");
            psi.ArgumentList.Add(code);
            _process = Process.Start(psi)!;
            _process.OutputDataReceived += (_, e) =>
            {
                lock (_lines)
                {
                    if (e.Data is not null)
                        _lines.Add(e.Data);
                    Monitor.PulseAll(_lines);
                }
            };
            _process.BeginOutputReadLine();
            _stderr = _process.StandardError.ReadToEndAsync();
        }

        public string Output
        {
            get
            {
                lock (_lines)
                    return string.Join("\n", _lines);
            }
        }

        public void WaitFor(string line)
        {
            var deadline = DateTime.UtcNow.AddSeconds(30);
            lock (_lines)
            {
                while (!_lines.Contains(line))
                {
                    var left = deadline - DateTime.UtcNow;
                    Assert.True(left > TimeSpan.Zero && !_process.HasExited, $"nbdsh never printed '{line}': {string.Join(" | ", _lines)}\n{(_process.HasExited ? _stderr.Result : "")}");
                    Monitor.Wait(_lines, TimeSpan.FromMilliseconds(Math.Min(200, left.TotalMilliseconds)));
                }
            }
        }

        public void WaitForExit() => Assert.True(_process.WaitForExit(TimeSpan.FromSeconds(30)), "nbdsh did not exit");

        public void Dispose()
        {
            if (!_process.HasExited)
                _process.Kill();
            _process.Dispose();
        }
    }

    private static TimeSpan Stop(ServeTests.Server server)
    {
        var clock = Stopwatch.StartNew();
        Assert.Equal(0, server.Signal("TERM"));
        TestContext.Current.TestOutputHelper?.WriteLine($"serve stopped {clock.Elapsed.TotalSeconds:0.00} s after SIGTERM");
        return clock.Elapsed;
    }

    [Fact]
    public void SigtermFailsAWriteQueuedForSpaceAndStopsInSeconds()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "1M").ExitCode);   // 16 blocks of 64 KiB
        Assert.Equal(0, Cli.Run("volume", "create", t["p"], "vm", "--size", "4M").ExitCode);
        string socket = t["nbd.sock"];
        TimeSpan took;
        using (var server = new ServeTests.Server("serve", t["p"], "--socket", socket))
        using (var client = new Script($$"""
            import sys
            h.connect_uri("nbd+unix:///vm?socket={{socket}}")
            h.pwrite(bytes([7]) * (1 << 20), 0)      # every block of the pool
            h.flush()
            print("flushed", flush=True)
            cookie = h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([9]) * 4096), 2 << 20)   # needs a block: queues
            try:
                while not h.aio_command_completed(cookie):
                    h.poll(-1)
                print("queued write succeeded", flush=True)
            except nbd.Error as e:
                print("queued write failed: " + str(e.errno), flush=True)
            """))
        {
            client.WaitFor("flushed");
            server.WaitForLog("pool mode -> OutOfDataSpace");
            took = Stop(server);
            client.WaitForExit();
            // ESHUTDOWN: the server is going away; the write may be retried after reconnecting.
            Assert.Contains("queued write failed: ESHUTDOWN", client.Output);
            Assert.Contains("SIGTERM: shutting down", server.Log);
        }
        Assert.True(took < Bounded, $"serve took {took.TotalSeconds:0.0} s to stop with a write queued for space");
        Assert.Equal(0, Cli.Run("pool", "check", t["p"]).ExitCode);

        using (var server = new ServeTests.Server("serve", t["p"], "--socket", socket))
        using (var reader = new Script($$"""
            h.connect_uri("nbd+unix:///vm?socket={{socket}}")
            print("intact" if h.pread(1 << 20, 0) == bytes([7]) * (1 << 20) else "lost", flush=True)
            print("zeros" if h.pread(4096, 2 << 20) == bytes(4096) else "written", flush=True)
            """))
        {
            reader.WaitForExit();
            Assert.Equal("intact\nzeros", reader.Output);
        }
    }

    [Fact]
    public void SigtermDropsAClientThatStoppedReadingItsRepliesAndStopsInSeconds()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        string socket = t["nbd.sock"];
        TimeSpan took;
        using (var server = new ServeTests.Server("serve", dir, "--socket", socket))
        using (var client = new Script($$"""
            import time
            h.connect_uri("nbd+unix:///vm?socket={{socket}}")
            h.pwrite(bytes(range(256)) * 4096 * 16, 0)   # data, so replies are data, not holes
            # 16 reads of 1 MiB, their replies never read: far more than the socket buffers hold.
            for i in range(16):
                h.aio_pread(nbd.Buffer(1 << 20), i << 20)
            print("sent", flush=True)
            time.sleep(120)
            """))
        {
            client.WaitFor("sent");
            // The replies fill the socket buffers and the server's send stalls; nothing the test
            // can observe says when, so give it a moment.
            Thread.Sleep(1000);
            took = Stop(server);
            Assert.True(server.Log.Contains("dropping a client that has not taken its replies"), $"after {took.TotalSeconds:0.0} s:\n{server.Log}");
        }
        Assert.True(took < Bounded, $"serve took {took.TotalSeconds:0.0} s to stop with a client not reading its replies");
        Assert.Equal(0, Cli.Run("pool", "check", dir).ExitCode);

        // The client's write was acknowledged, never flushed by it: the stop's own flush keeps it.
        using (var server = new ServeTests.Server("serve", dir, "--socket", socket))
        using (var reader = new Script($$"""
            h.connect_uri("nbd+unix:///vm?socket={{socket}}")
            print("intact" if h.pread(16 << 20, 0) == bytes(range(256)) * 4096 * 16 else "lost", flush=True)
            """))
        {
            reader.WaitForExit();
            Assert.Equal("intact", reader.Output);
        }
    }
}
