using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;
using ThinFast.Engine;
using ThinFast.Nbd;
using ThinFast.Testing;

namespace ThinFast.Integration.Tests;

/// <summary>A real pool on files in a temp folder under /var/tmp (data on the io_uring backend, as
/// BlockDevices picks it), its volumes served by an in-process <see cref="NbdServer"/> on a unix
/// socket and on 127.0.0.1 (port 0). Disposing stops the server, closes the pool and checks the
/// committed metadata with thin_check and analyze.py.</summary>
internal sealed class ThinServer : IAsyncDisposable
{
    public const long MetadataSize = 16L << 20;

    private readonly List<string> _log = [];
    private NbdServer? _server;
    private bool _closed;

    public ThinServer(long dataSize = 512L << 20)
    {
        // /var/tmp is disk-backed, so the pool's O_DIRECT files work there even where /tmp is tmpfs.
        Directory = Path.Combine("/var/tmp", "thinfast-integ-" + Guid.NewGuid().ToString("N")[..12]);
        System.IO.Directory.CreateDirectory(Directory);
        Files = PoolFiles.InFolder(Path.Combine(Directory, "pool"));
        System.IO.Directory.CreateDirectory(Path.Combine(Directory, "pool"));
        Pool = ThinPool.CreateFiles(Files, MetadataSize, dataSize, new PoolOptions { Log = AddLog });
    }

    public string Directory { get; }

    public PoolFiles Files { get; }

    public ThinPool Pool { get; }

    public string SocketPath => Path.Combine(Directory, "nbd.sock");

    public IPEndPoint? Tcp { get; private set; }

    public IReadOnlyList<string> Log
    {
        get
        {
            lock (_log)
                return [.. _log];
        }
    }

    public string PathOf(string name) => Path.Combine(Directory, name);

    /// <summary>Starts serving every volume created so far, each under its own name.</summary>
    public void Serve()
    {
        var exports = Pool.VolumeRecords.Select(r => new NbdExport(Pool.GetVolume(r.Name))).ToList();
        _server = new NbdServer(exports, new NbdServerOptions { DefaultExport = exports[0].Name }, AddLog);
        _server.ListenUnix(SocketPath);
        Tcp = _server.ListenTcp(new IPEndPoint(IPAddress.Loopback, 0));
    }

    public string UnixUri(string export) => $"nbd+unix:///{export}?socket={SocketPath}";

    public string TcpUri(string export) => $"nbd://127.0.0.1:{Tcp!.Port}/{export}";

    /// <summary>Stops the server, closes the pool and runs the metadata oracles on its file.</summary>
    public async Task CloseAndCheckAsync()
    {
        if (_closed)
            return;
        _closed = true;
        await StopServerAndPoolAsync();
        ExternalTool.AssertMetadataClean(Files.MetadataPath);
    }

    public async ValueTask DisposeAsync()
    {
        if (!_closed)
        {
            _closed = true;
            await StopServerAndPoolAsync();
        }
        try
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
        catch (IOException)
        {
            // A client may still hold a file for a moment; a leftover temp folder is harmless.
        }
    }

    // StopAsync can complete on the io_uring reactor thread; disposing the pool there would wait
    // synchronously for its own final flush on that same thread (a deadlock seen in this test), so
    // the pool is closed from the thread pool.
    private async Task StopServerAndPoolAsync()
    {
        if (_server is not null)
            await _server.StopAsync();
        await Task.Run(Pool.Dispose);
    }

    private void AddLog(string message)
    {
        lock (_log)
            _log.Add(message);
    }

    /// <summary>A file of <paramref name="length"/> pseudo-random bytes (seeded: reruns see the
    /// same image).</summary>
    public string CreateRandomImage(string name, long length, int seed)
    {
        string path = PathOf(name);
        var random = new Random(seed);
        var chunk = new byte[1 << 20];
        using var file = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        for (long done = 0; done < length; done += chunk.Length)
        {
            random.NextBytes(chunk);
            file.Write(chunk, 0, (int)Math.Min(chunk.Length, length - done));
        }
        return path;
    }

    public static string Sha256(string path)
    {
        using var file = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(file));
    }
}

/// <summary>Runs external clients. They run on their own thread because the server they talk to
/// lives in this process and must keep its thread pool free.</summary>
internal static class Clients
{
    // Programs ExternalTool does not know the package of.
    private static readonly Dictionary<string, string> s_packages = new()
    {
        ["losetup"] = "mount",
        ["mount"] = "mount",
        ["umount"] = "mount",
        ["fusermount3"] = "fuse3",
    };

    public static string Require(string program)
    {
        if (s_packages.TryGetValue(program, out var package))
        {
            foreach (var dir in new[] { "/usr/bin", "/usr/sbin", "/bin", "/sbin" })
                if (File.Exists(Path.Combine(dir, program)))
                    return Path.Combine(dir, program);
            throw new InvalidOperationException($"'{program}' is not installed: run 'apt-get install {package}' (or scripts/install-deps.sh)");
        }
        return ExternalTool.Require(program);
    }

    public static Task<ExternalTool.Result> RunAsync(string program, params string[] arguments) =>
        RunAsync(program, arguments, TimeSpan.FromMinutes(2));

    public static Task<ExternalTool.Result> RunAsync(string program, string[] arguments, TimeSpan timeout)
    {
        Require(program);
        return Task.Factory.StartNew(() => ExternalTool.Run(program, arguments, timeout),
            CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    public static async Task<ExternalTool.Result> RunOkAsync(string program, params string[] arguments)
    {
        var result = await RunAsync(program, arguments);
        if (result.ExitCode != 0)
            Assert.Fail($"{program} {string.Join(' ', arguments)} failed: {result}");
        return result;
    }

    /// <summary>Starts a long-running client (nbdfuse) whose output goes to a log file.</summary>
    public static Process Start(string program, string logPath, params string[] arguments)
    {
        var psi = new ProcessStartInfo(Require(program))
        {
            UseShellExecute = false,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in arguments)
            psi.ArgumentList.Add(a);
        var process = Process.Start(psi)!;
        var log = new StreamWriter(logPath) { AutoFlush = true };
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }
}
