using System.Runtime.Versioning;
using System.Text.RegularExpressions;

namespace ThinFast.Cli.Tests;

/// <summary>
/// A pool created and served by root, probed by an unprivileged user (nobody, through setpriv):
/// every pool file and the socket refuse that user with EACCES, nbdinfo as that user fails with
/// "Permission denied", and the server listens on no TCP port unless asked.
/// </summary>
[UnsupportedOSPlatform("windows")]
public sealed class UnprivilegedUserTests
{
    private static readonly string[] PoolFiles = ["metadata", "data", "pool.json", "pool.json.lock"];

    // Opens each path for reading and for writing (or connects, for the socket) and prints one
    // line per attempt: the path, the attempt, and "ok" or the errno's name.
    private const string Probe = """
        import errno, os, socket, sys
        for path in sys.argv[1:]:
            attempts = [("connect", None)] if path.endswith(".sock") else [("read", os.O_RDONLY), ("write", os.O_WRONLY)]
            for what, flags in attempts:
                try:
                    if flags is None:
                        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                        s.connect(path)
                        s.close()
                    else:
                        os.close(os.open(path, flags))
                    result = "ok"
                except OSError as e:
                    result = errno.errorcode.get(e.errno, str(e.errno))
                print(path, what, result)
        """;

    [Fact]
    public void NobodyCanNeitherOpenThePoolsFilesNorConnectAndNoTcpPortIsOpen()
    {
        Assert.True(Environment.IsPrivilegedProcess, "this test creates the pool as root and probes it as nobody: run it as root");
        string setpriv = Cli.Require("setpriv", "util-linux"), nbdinfo = Cli.Require("nbdinfo", "libnbd-bin"), python = Cli.Require("python3", "python3");
        using var t = new TempDir();
        // The scratch folder is root's only (0700); open it so that what refuses nobody is the
        // pool's own folder and files, not the folder around them.
        File.SetUnixFileMode(t.Path, (UnixFileMode)0b111_101_101);
        string pool = ServeTests.NewPool(t, "vm");
        string socket = t["nbd.sock"];
        using var server = new ServeTests.Server("serve", pool, "--socket", socket);
        string[] files = [.. PoolFiles.Select(f => Path.Combine(pool, f)), socket];

        // Root gets everything: the probe can succeed, so the denials below are about the user.
        Assert.All(RunProbe(python, null, files), line => Assert.EndsWith(" ok", line));

        // As created the pool folder is 0700: nobody cannot even look inside it.
        var asCreated = RunProbe(python, setpriv, files);
        foreach (string f in PoolFiles)
        {
            Assert.Contains($"{Path.Combine(pool, f)} read EACCES", asCreated);
            Assert.Contains($"{Path.Combine(pool, f)} write EACCES", asCreated);
        }
        Assert.Contains($"{socket} connect EACCES", asCreated);

        // An operator who opens the folder (0755) still exposes nothing: each file is 0600 itself.
        File.SetUnixFileMode(pool, (UnixFileMode)0b111_101_101);
        var folderOpen = RunProbe(python, setpriv, files);
        Assert.Equal(asCreated, folderOpen);
        Assert.Equal(2 * PoolFiles.Length + 1, folderOpen.Count);

        // A real NBD client as nobody: refused by the socket's mode, and it says so.
        var info = Cli.Tool(setpriv, [.. AsNobody, nbdinfo, $"nbd+unix:///vm?socket={socket}"]);
        Assert.True(info.ExitCode != 0 && info.Stderr.Contains("Permission denied"), info.ToString());
        TestContext.Current.TestOutputHelper!.WriteLine($"as nobody: {string.Join("; ", folderOpen)}\nnbdinfo as nobody: {info.Stderr.Trim()}");

        // Only the unix socket listens; a TCP port only when --tcp asks for one.
        Assert.Empty(TcpListeners(server.Pid));
        using var t2 = new TempDir();
        string other = ServeTests.NewPool(t2, "vm");
        using var tcpServer = new ServeTests.Server("serve", other, "--socket", t2["nbd.sock"], "--tcp", ":0");
        Assert.Equal([$"127.0.0.1:{tcpServer.Port}"], TcpListeners(tcpServer.Pid));
        Assert.Equal(0, tcpServer.Signal("TERM"));
        Assert.Equal(0, server.Signal("TERM"));
    }

    private static readonly string[] AsNobody = ["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"];

    private static List<string> RunProbe(string python, string? setpriv, string[] paths)
    {
        var r = setpriv is null ? Cli.Tool(python, ["-c", Probe, .. paths]) : Cli.Tool(setpriv, [.. AsNobody, python, "-c", Probe, .. paths]);
        Assert.True(r.ExitCode == 0, r.ToString());
        return [.. r.Stdout.TrimEnd('\n').Split('\n')];
    }

    /// <summary>The TCP sockets the process listens on, as ADDRESS:PORT: its socket inodes
    /// (/proc/PID/fd) matched with the LISTEN entries (state 0A) of /proc/net/tcp and tcp6.</summary>
    private static List<string> TcpListeners(int pid)
    {
        var inodes = new HashSet<string>();
        foreach (string fd in Directory.GetFiles($"/proc/{pid}/fd"))
            if (new FileInfo(fd).LinkTarget is { } target && Regex.Match(target, @"^socket:\[(\d+)\]$") is { Success: true } m)
                inodes.Add(m.Groups[1].Value);
        var listening = new List<string>();
        foreach (string table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
            foreach (string line in File.ReadLines(table).Skip(1))
            {
                string[] f = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (f[3] == "0A" && inodes.Contains(f[9]))
                    listening.Add(Endpoint(f[1]));
            }
        return listening;
    }

    // /proc/net/tcp writes an IPv4 address as one little-endian hex word, then the port.
    private static string Endpoint(string hex)
    {
        string[] parts = hex.Split(':');
        if (parts[0].Length != 8)
            return hex;
        uint address = Convert.ToUInt32(parts[0], 16);
        return $"{address & 0xff}.{(address >> 8) & 0xff}.{(address >> 16) & 0xff}.{address >> 24}:{Convert.ToInt32(parts[1], 16)}";
    }
}
