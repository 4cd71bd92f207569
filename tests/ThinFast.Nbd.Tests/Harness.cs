using System.Diagnostics;
using System.Net;
using System.Text;

namespace ThinFast.Nbd.Tests;

/// <summary>An in-process <see cref="NbdServer"/> serving <see cref="MemoryVolume"/>s on a unix
/// socket in a temp directory and on 127.0.0.1 (port 0).</summary>
public sealed class ServerHarness : IAsyncDisposable
{
    public const long DefaultSize = 64L * 1024 * 1024;

    // Small tiers keep the many parallel test servers cheap; the last tier still holds MaxPayload.
    public static readonly NbdServerOptions TestOptions = new()
    {
        BufferTiers = [(128 * 1024, 64), (2 * 1024 * 1024, 8), (32 * 1024 * 1024, 1)],
    };

    /// <summary>The test options with connections on the given transport.</summary>
    public static NbdServerOptions Using(NbdTransportMode transport) => TestOptions with { Transport = transport };

    private readonly List<string> _log = [];

    private ServerHarness(NbdServer server, MemoryVolume volume, string directory, string socketPath, IPEndPoint tcp)
    {
        Server = server;
        Volume = volume;
        Directory = directory;
        SocketPath = socketPath;
        Tcp = tcp;
    }

    public NbdServer Server { get; }

    /// <summary>The volume of the export named "disk" (also the default export).</summary>
    public MemoryVolume Volume { get; }

    public string Directory { get; }

    public string SocketPath { get; }

    public IPEndPoint Tcp { get; }

    public IReadOnlyList<string> Log
    {
        get
        {
            lock (_log)
                return [.. _log];
        }
    }

    public static ServerHarness Start(long size = DefaultSize, NbdServerOptions? options = null, params NbdExport[] extraExports)
    {
        var volume = new MemoryVolume(size, name: "disk");
        var directory = System.IO.Directory.CreateTempSubdirectory("thinfast-nbd-").FullName;
        var socketPath = Path.Combine(directory, "nbd.sock");
        options ??= TestOptions;
        options = options with { DefaultExport = "disk" };
        List<NbdExport> exports = [new NbdExport(volume, "disk", description: "in-memory test volume"), .. extraExports];
        ServerHarness? harness = null;
        var server = new NbdServer(exports, options, message =>
        {
            if (harness is not null)
            {
                lock (harness._log)
                    harness._log.Add(message);
            }
        });
        server.ListenUnix(socketPath);
        var tcp = server.ListenTcp();
        harness = new ServerHarness(server, volume, directory, socketPath, tcp);
        return harness;
    }

    public string UnixUri(string export = "disk") => $"nbd+unix:///{export}?socket={SocketPath}";

    public string TcpUri(string export = "disk") => $"nbd://127.0.0.1:{Tcp.Port}/{export}";

    public string TempFile(string name) => Path.Combine(Directory, name);

    public async ValueTask DisposeAsync()
    {
        await Server.StopAsync();
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // A tool may still hold a file open for a moment; the temp dir is harmless.
        }
    }
}

public sealed record ToolResult(int ExitCode, string StdOut, string StdErr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{StdOut}\n--- stderr\n{StdErr}";
}

/// <summary>Runs the real NBD clients as processes. A missing tool fails the test with the
/// package to install: these clients are the oracles, so a skip would hide a broken server.</summary>
public static class Tool
{
    private static readonly Dictionary<string, string> Packages = new()
    {
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdsh"] = "python3-libnbd",
        ["qemu-img"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["fio"] = "fio",
    };

    public static string Require(string tool)
    {
        foreach (var dir in new[] { "/usr/bin", "/usr/local/bin", "/bin" })
        {
            var path = Path.Combine(dir, tool);
            if (File.Exists(path))
                return path;
        }
        Assert.Fail($"{tool} is not installed: run `apt-get install {Packages.GetValueOrDefault(tool, tool)}` (or scripts/install-deps.sh)");
        return null!;
    }

    public static async Task<ToolResult> RunAsync(string tool, IEnumerable<string> args, TimeSpan? timeout = null)
    {
        var info = new ProcessStartInfo(Require(tool))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        foreach (var a in args)
            info.ArgumentList.Add(a);
        // nbdsh runs `python3` from PATH; the system one has the libnbd module.
        info.Environment["PATH"] = "/usr/bin:/bin:" + Environment.GetEnvironmentVariable("PATH");
        using var process = Process.Start(info)!;
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(cts.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"{tool} {string.Join(' ', info.ArgumentList)} did not finish within {timeout ?? TimeSpan.FromSeconds(60)}\n{await stdout}\n{await stderr}");
        }
        return new ToolResult(process.ExitCode, await stdout, await stderr);
    }

    /// <summary>Runs a tool and fails the test, showing its output, unless it exits 0.</summary>
    public static async Task<ToolResult> RunOkAsync(string tool, params string[] args)
    {
        var result = await RunAsync(tool, args);
        Assert.True(result.ExitCode == 0, $"{tool} {string.Join(' ', args)} failed: {result}");
        return result;
    }

    /// <summary>Runs a Python script under nbdsh (libnbd's shell) with handle h connected to
    /// <paramref name="uri"/>.</summary>
    public static async Task<ToolResult> NbdshAsync(string uri, string script, TimeSpan? timeout = null)
    {
        var result = await RunAsync("nbdsh", ["-u", uri, "-c", script], timeout);
        Assert.True(result.ExitCode == 0, $"nbdsh script failed: {result}\n--- script\n{script}");
        return result;
    }

    public static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Asserts that image[offset, offset+length) holds only <paramref name="value"/>.</summary>
    public static void AssertFilled(byte[] image, long offset, int length, byte value)
    {
        var span = image.AsSpan((int)offset, length);
        int bad = span.IndexOfAnyExcept(value);
        Assert.True(bad < 0, bad < 0 ? "" : $"byte {offset + bad} is 0x{span[bad]:x2}, expected 0x{value:x2}");
    }

    public static void AssertSame(byte[] expected, byte[] actual) =>
        Assert.True(expected.AsSpan().SequenceEqual(actual), Describe(expected, actual));

    public static string Describe(byte[] expected, byte[] actual)
    {
        if (expected.Length != actual.Length)
            return $"length {actual.Length}, expected {expected.Length}";
        int i = expected.AsSpan().CommonPrefixLength(actual);
        return i == expected.Length ? "equal" : new StringBuilder().Append($"first difference at byte {i}: 0x{actual[i]:x2}, expected 0x{expected[i]:x2}").ToString();
    }
}
