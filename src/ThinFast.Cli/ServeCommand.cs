using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using ThinFast.Engine;
using ThinFast.IO;
using ThinFast.Nbd;

namespace ThinFast.Cli;

internal static class ServeCommand
{
    private const string Help = """
        Usage: thinfast serve DIR [--socket PATH] [--tcp [ADDR:]PORT] [--volume NAME]... [--read-only]
                                  [--pid-file PATH] [--low-water BLOCKS] [--error-if-no-space] [--origin-direct]
                                  [--io auto|uring|portable] [--max-connections N] [--idle-timeout SECONDS]
                                  [--tls-certs DIR [--tls-verify-peer yes|no]]

        Serves the pool's volumes over NBD, one export per volume by name (the default export, for
        clients that ask for none, is the first). All volumes unless --volume names some. Listens on
        a unix socket (default DIR/nbd.sock) and/or TCP (ADDR defaults to 127.0.0.1; --tcp alone
        does not imply no socket: give --socket too to keep it). Runs in the foreground, logs on
        stderr; SIGINT/SIGTERM stop accepting, finish in-flight requests, commit the metadata and
        remove the socket and pid file. --io picks the data I/O backend (auto: io_uring when the
        kernel allows it, else the portable one). Origins (base images) are read through the page
        cache, so volumes over one base share its cached blocks; --origin-direct reads them with
        O_DIRECT instead. --max-connections (default 1024) limits open connections; a client beyond
        it is told the server is at its connection limit. --idle-timeout closes a connection that
        has had no request for that many seconds (default: never, since an unused kernel NBD
        device may send nothing for hours).

        --tls-certs DIR requires TLS (NBD_OPT_STARTTLS) on every connection, TCP and unix socket,
        as qemu-nbd --tls-creds and nbdkit --tls=require do: DIR holds ca-cert.pem, server-cert.pem
        and server-key.pem (qemu's x509 layout; the key unencrypted, RSA or ECDSA). Clients must
        present a certificate signed by a CA in ca-cert.pem (qemu's verify-peer=yes);
        --tls-verify-peer no asks for none. TLS 1.2 and 1.3; TLS-PSK is not available (.NET's
        SslStream has no PSK). Without --tls-certs, STARTTLS is refused and traffic is plaintext.

        Examples:
          nbdinfo 'nbd+unix:///vm1?socket=DIR/nbd.sock'
          qemu-img info nbd://127.0.0.1:10809/vm1
          thinfast serve DIR --tcp 10809 --tls-certs /etc/pki/thinfast
          nbdinfo 'nbds://127.0.0.1:10809/vm1?tls-certificates=CLIENTDIR'
          qemu-img info --object tls-creds-x509,id=tls0,dir=CLIENTDIR,endpoint=client \
              --image-opts driver=nbd,host=127.0.0.1,port=10809,export=vm1,tls-creds=tls0
        """;

    public static int Run(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(Help);
        var a = Args.Parse(argv, ["--socket", "--tcp", "--volume", "--pid-file", "--low-water", "--io", "--max-connections", "--idle-timeout", "--tls-certs", "--tls-verify-peer"],
            ["--read-only", "--error-if-no-space", "--origin-direct"]);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        string? tcp = a.Value("--tcp");
        string? socket = a.Value("--socket") ?? (tcp is null ? Path.Combine(dir, "nbd.sock") : null);
        var endpoint = tcp is null ? null : ParseEndpoint(tcp);
        var options = new PoolOptions
        {
            LowWaterBlocks = a.Value("--low-water") is { } lw ? PoolCommands.ParseCount(lw, "--low-water") : 0,
            ErrorIfNoSpace = a.Flag("--error-if-no-space"),
            OriginPageCache = !a.Flag("--origin-direct"),
            Log = Log,
        };
        var backend = (a.Value("--io") ?? "auto") switch
        {
            "auto" => BlockDeviceBackend.Auto,
            "uring" => BlockDeviceBackend.IoUring,
            "portable" => BlockDeviceBackend.Portable,
            var other => throw new UsageException($"--io '{other}' must be auto, uring or portable"),
        };
        bool verifyPeer = (a.Value("--tls-verify-peer") ?? "yes") switch
        {
            "yes" => true,
            "no" => false,
            var other => throw new UsageException($"--tls-verify-peer '{other}' must be yes or no"),
        };
        string? tlsFolder = a.Value("--tls-certs");
        if (tlsFolder is null && a.Value("--tls-verify-peer") is not null)
            throw new UsageException("--tls-verify-peer needs --tls-certs");
        var names = a.Values("--volume");
        if (names.GroupBy(n => n).FirstOrDefault(g => g.Count() > 1) is { } twice)
            throw new UsageException($"--volume {PoolManifest.Shown(twice.Key)} is given twice");
        // Before the pool is opened: a bad folder fails at once, touching nothing.
        var tls = tlsFolder is null ? null : NbdTlsCredentials.LoadFolder(tlsFolder, verifyPeer);
        var nbd = new NbdServerOptions
        {
            Tls = tls,
            MaxConnections = a.Value("--max-connections") is { } max ? ParseMaxConnections(max) : new NbdServerOptions().MaxConnections,
            IdleTimeout = a.Value("--idle-timeout") is { } idle ? ParseSeconds(idle, "--idle-timeout") : null,
        };
        using var running = Running.Start(dir, options, names, a.Flag("--read-only"), socket, endpoint, a.Value("--pid-file"), backend, nbd);
        running.WaitForSignal();
        return Program.Ok;
    }

    internal static void Log(string message) => Console.Error.WriteLine($"{DateTime.UtcNow:HH:mm:ss.fff} thinfast: {message}");

    private static int ParseMaxConnections(string text) =>
        int.TryParse(text, out int n) && n >= 1 ? n : throw new UsageException($"--max-connections '{text}' is not a whole number of at least 1");

    private static TimeSpan ParseSeconds(string text, string what) =>
        double.TryParse(text, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double s) && s > 0 && s <= int.MaxValue
            ? TimeSpan.FromSeconds(s)
            : throw new UsageException($"{what} '{text}' is not a positive number of seconds");

    internal static IPEndPoint ParseEndpoint(string text)
    {
        string host = "127.0.0.1", port = text;
        int colon = text.LastIndexOf(':');
        if (colon >= 0)
        {
            host = text[..colon].Trim('[', ']');
            port = text[(colon + 1)..];
        }
        if (!int.TryParse(port, out int p) || p < 0 || p > 65535)
            throw new UsageException($"--tcp '{text}': port must be 0-65535");
        // A bare port and ":PORT" mean loopback: every address only when asked for by name.
        if (!IPAddress.TryParse(host.Length == 0 ? "127.0.0.1" : host, out var address))
            throw new UsageException($"--tcp '{text}': '{host}' is not an IP address");
        return new IPEndPoint(address, p);
    }

    /// <summary>A pool served over NBD until <see cref="Dispose"/>: stop accepting, finish
    /// in-flight requests, commit, remove the socket and pid file.</summary>
    internal sealed class Running : IDisposable
    {
        private readonly ThinPool _pool;
        private readonly NbdServer _server;
        private readonly string? _pidFile;
        private readonly TaskCompletionSource _signal = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly List<PosixSignalRegistration> _signals = new();

        private Running(ThinPool pool, NbdServer server, string? pidFile)
        {
            _pool = pool;
            _server = server;
            _pidFile = pidFile;
        }

        public string? SocketPath { get; private set; }
        public IPEndPoint? TcpEndpoint { get; private set; }
        public IReadOnlyList<string> ExportNames => _server.Exports.Select(e => e.Name).ToList();

        public static Running Start(string dir, PoolOptions options, IReadOnlyList<string> names, bool readOnly, string? socket, IPEndPoint? tcp, string? pidFile,
            BlockDeviceBackend backend = BlockDeviceBackend.Auto, NbdServerOptions? nbd = null)
        {
            if (pidFile is not null)
                CheckPidFilePath(pidFile, dir);
            var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), options, new BlockDeviceOptions { Backend = backend, Log = Log });
            Running? running = null;
            try
            {
                var exports = new List<NbdExport>();
                if (names.Count == 0)
                {
                    foreach (var record in pool.VolumeRecords)
                    {
                        var volume = pool.GetVolume(record.Name);
                        if (volume.UnavailableReason is { } why)
                            Log($"not serving volume '{record.Name}': {why}");
                        else
                            exports.Add(new NbdExport(volume, record.Name, readOnly));
                    }
                }
                else
                {
                    foreach (string name in names)
                    {
                        var volume = pool.GetVolume(name);
                        if (volume.UnavailableReason is { } why)
                            throw new PoolException($"volume '{name}' is unavailable: {why}");
                        exports.Add(new NbdExport(volume, name, readOnly));
                    }
                }
                if (exports.Count == 0)
                    throw new PoolException($"the pool in {dir} has no volume to serve (create one with thinfast volume create)");
                var server = new NbdServer(exports, (nbd ?? new NbdServerOptions()) with { DefaultExport = exports[0].Name }, Log);
                running = new Running(pool, server, pidFile);
                if (socket is not null)
                {
                    RemoveStaleSocket(socket);
                    server.ListenUnix(socket);
                    running.SocketPath = socket;
                }
                if (tcp is not null)
                {
                    if (!IPAddress.IsLoopback(tcp.Address) && server.Options.Tls is null)
                        Log($"warning: serving NBD on {tcp.Address}, not loopback, without TLS: anyone who can reach it can read and write the exported volumes");
                    try
                    {
                        running.TcpEndpoint = server.ListenTcp(tcp);
                    }
                    catch (SocketException e)
                    {
                        throw new IOException($"cannot listen on {tcp}: {e.Message}");
                    }
                }
                if (pidFile is not null)
                    WritePidFile(pidFile);
                foreach (var sig in new[] { PosixSignal.SIGINT, PosixSignal.SIGTERM })
                    running._signals.Add(PosixSignalRegistration.Create(sig, ctx =>
                    {
                        ctx.Cancel = true;
                        Log($"{ctx.Signal}: shutting down");
                        running._signal.TrySetResult();
                    }));
                Log($"serving {string.Join(", ", exports.Select(e => e.Name))} (default {exports[0].Name}{(readOnly ? ", read-only" : "")})" +
                    $"{(socket is null ? "" : $" on unix:{socket}")}{(running.TcpEndpoint is null ? "" : $" on tcp:{running.TcpEndpoint}")} via {server.TransportDescription}");
                return running;
            }
            catch
            {
                if (running is not null)
                    running.Dispose();
                else
                    pool.Dispose();
                throw;
            }
        }

        public void WaitForSignal() => _signal.Task.Wait();

        public void Dispose()
        {
            foreach (var s in _signals)
                s.Dispose();
            // Writes waiting for data space would hold the drain until the no-space timeout.
            _pool.BeginClose();
            _server.StopAsync().GetAwaiter().GetResult();
            _pool.Dispose();
            // Only our own pid file: if someone replaced it, it is theirs.
            if (_pidFile is not null && File.Exists(_pidFile) && File.ReadAllText(_pidFile).Trim() == Environment.ProcessId.ToString())
                File.Delete(_pidFile);
            Log("stopped; metadata committed");
        }

        /// <summary>A pid file may replace only a stale pid file: never a pool's file, never
        /// anything else that happens to be at the path, never one naming a live process.</summary>
        private static void CheckPidFilePath(string pidFile, string dir)
        {
            var files = PoolFiles.InFolder(dir);
            var target = FileIdentity.Of(pidFile);
            foreach (string own in new[] { files.ManifestPath, files.MetadataPath, files.DataPath, files.LockPath })
                if (target is not null && FileIdentity.Of(own) == target)
                    throw new PoolException($"--pid-file {pidFile} is the pool's {Path.GetFileName(own)}; choose another path");
            if (!File.Exists(pidFile) && !Directory.Exists(pidFile))
                return;
            if (!IsPidFile(pidFile, out int pid))
                throw new PoolException($"--pid-file {pidFile} exists and is not a pid file; refusing to overwrite it");
            if (Directory.Exists($"/proc/{pid}"))
                throw new PoolException($"pid file {pidFile} names a running process ({pid})");
        }

        private static bool IsPidFile(string path, out int pid)
        {
            pid = 0;
            if (!File.Exists(path) || new FileInfo(path).Length > 32)
                return false;
            return int.TryParse(File.ReadAllText(path).Trim(), out pid) && pid > 0;
        }

        // Created exclusively; a stale pid file (checked above) is replaced atomically.
        private static void WritePidFile(string path)
        {
            string temp = $"{path}.{Environment.ProcessId}.tmp";
            using (var f = new FileStream(temp, FileMode.CreateNew, FileAccess.Write))
                f.Write(System.Text.Encoding.ASCII.GetBytes($"{Environment.ProcessId}\n"));
            File.Move(temp, path, overwrite: true);
        }

        // We hold the pool lock, so a socket at our path is left over from a process that died
        // without cleaning up, unless something else entirely listens there: connect to find out.
        // Anything that is not a socket is never removed.
        private static void RemoveStaleSocket(string path)
        {
            if (!File.Exists(path) && !Directory.Exists(path))
                return;
            if (!FileIdentity.IsSocket(path))
                throw new IOException($"--socket {path} exists and is not a socket; refusing to remove it (choose another path)");
            using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            try
            {
                probe.Connect(new UnixDomainSocketEndPoint(path));
            }
            catch (SocketException)
            {
                File.Delete(path);
                return;
            }
            throw new IOException($"{path} is a socket another process listens on");
        }
    }
}
