using System.Diagnostics;
using System.Net;
using ThinFast.Engine;

namespace ThinFast.Cli;

public sealed class DemoException(string message) : Exception(message);

internal static class DemoCommand
{
    private const string Help = """
        Usage: thinfast demo [DIR] [--tcp [ADDR:]PORT] [--exit-after-check]

        Creates (if absent) a demo pool in DIR (default ./demo): a 64 MiB ext4 base image holding
        known files (made with mkfs.ext4 -d, no root needed), and two thin volumes over it, vm1 and
        vm2. Serves both over NBD on DIR/nbd.sock and TCP 127.0.0.1:10809 (or --tcp, or the
        THINFAST_DEMO_TCP environment variable), checks itself as a client (nbdinfo, nbdcopy, and
        debugfs reading a file out of the served filesystem), prints commands to try and serves until
        Ctrl-C. With --exit-after-check or THINFAST_DEMO_EXIT=1 it exits 0 after the check.
        """;

    private const string HelloText = "Hello from ThinFast: this file lives in an ext4 filesystem on a thin volume.\n";
    private const long BaseSize = 64L << 20;

    public static int Run(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(Help);
        var a = Args.Parse(argv, ["--tcp"], ["--exit-after-check"]);
        string dir = Path.GetFullPath(a.Positionals.Count > 0 ? a.Positionals[0] : "demo");
        a.ExpectPositionals(1);
        IPEndPoint tcp = ServeCommand.ParseEndpoint(a.Value("--tcp") ?? Environment.GetEnvironmentVariable("THINFAST_DEMO_TCP") ?? "127.0.0.1:10809");
        bool exitAfterCheck = a.Flag("--exit-after-check") || Environment.GetEnvironmentVariable("THINFAST_DEMO_EXIT") == "1";
        foreach (string tool in new[] { "mkfs.ext4", "debugfs", "nbdinfo", "nbdcopy" })
            if (FindTool(tool) is null)
                throw new DemoException($"{tool} is not installed (run: bash scripts/install-deps.sh, or apt-get install e2fsprogs libnbd-bin)");

        string baseImage = Path.Combine(dir, "base.img");
        if (!File.Exists(Path.Combine(dir, "pool.json")))
            Build(dir, baseImage);
        else
            Console.Error.WriteLine($"thinfast demo: using the existing demo pool in {dir}");

        string socket = Path.Combine(dir, "nbd.sock");
        using var running = ServeCommand.Running.Start(dir, new PoolOptions { Log = ServeCommand.Log }, ["vm1", "vm2"], readOnly: false, socket, tcp, pidFile: null);
        SelfCheck(dir, socket, running.TcpEndpoint!, baseImage);
        PrintCommands(dir, socket, running.TcpEndpoint!);
        if (exitAfterCheck)
        {
            Console.Out.WriteLine("demo check passed; exiting (THINFAST_DEMO_EXIT=1 / --exit-after-check)");
            return Program.Ok;
        }
        Console.Out.WriteLine("serving until Ctrl-C ...");
        Console.Out.Flush();
        running.WaitForSignal();
        return Program.Ok;
    }

    private static void Build(string dir, string baseImage)
    {
        var progress = Program.Progress;
        Directory.CreateDirectory(dir);
        string source = Path.Combine(dir, "base-files");
        Directory.CreateDirectory(source);
        File.WriteAllText(Path.Combine(source, "hello.txt"), HelloText);
        Directory.CreateDirectory(Path.Combine(source, "docs"));
        File.WriteAllText(Path.Combine(source, "docs", "README"), "Files in this image were put there by mkfs.ext4 -d at demo build time.\n");
        var pattern = new byte[1 << 20];
        for (int i = 0; i < pattern.Length; i++)
            pattern[i] = (byte)(i * 7 + i / 4096);
        File.WriteAllBytes(Path.Combine(source, "pattern.bin"), pattern);

        progress?.Invoke("building the 64 MiB ext4 base image");
        string temp = baseImage + ".tmp";
        using (var f = new FileStream(temp, FileMode.Create))
            f.SetLength(BaseSize);
        RunTool("mkfs.ext4", ["-q", "-F", "-L", "thinfast-demo", "-d", source, temp]);
        File.Move(temp, baseImage, overwrite: true);

        progress?.Invoke("creating the pool and volumes vm1, vm2");
        Check(Program.Main(["pool", "create", dir, "--data-size", "1G"]), "pool create");
        Check(Program.Main(["volume", "create", dir, "vm1", "--origin", baseImage]), "volume create vm1");
        Check(Program.Main(["volume", "create", dir, "vm2", "--origin", baseImage]), "volume create vm2");

        static void Check(int code, string what)
        {
            if (code != Program.Ok)
                throw new DemoException($"demo setup failed at {what}");
        }
    }

    private static void SelfCheck(string dir, string socket, IPEndPoint tcp, string baseImage)
    {
        Program.Progress?.Invoke("checking the exports as an NBD client");
        foreach (string uri in new[] { $"nbd+unix:///vm1?socket={socket}", $"nbd://{tcp}/vm2" })
        {
            string size = RunTool("nbdinfo", ["--size", uri]).Trim();
            if (size != BaseSize.ToString())
                throw new DemoException($"self-check: nbdinfo --size {uri} said '{size}', expected {BaseSize}");
        }
        // The demo never writes to its volumes, so unless a visitor wrote to vm2 every byte of it
        // comes from the base image: debugfs reads a known file out of the served filesystem and
        // e2fsck (read-only) checks the whole filesystem as served.
        string copy = Path.Combine(dir, "selfcheck.img");
        try
        {
            RunTool("nbdcopy", [$"nbd+unix:///vm2?socket={socket}", copy]);
            string hello = RunTool("debugfs", ["-R", "cat /hello.txt", copy]);
            if (!hello.Contains(HelloText.Trim(), StringComparison.Ordinal))
                throw new DemoException($"self-check: /hello.txt read through NBD holds '{hello.Trim()}'");
            string fsck = RunTool("e2fsck", ["-fn", copy]);
            Console.Error.WriteLine($"thinfast demo: self-check passed: nbdinfo on unix and tcp, /hello.txt read back, {fsck.Trim().Split('\n')[^1]}");
        }
        finally
        {
            File.Delete(copy);
        }
    }

    private static void PrintCommands(string dir, string socket, IPEndPoint tcp)
    {
        Console.Out.WriteLine($"""

            ThinFast demo pool in {dir}: volumes vm1 and vm2 over a 64 MiB ext4 base image.
            NBD on unix:{socket} and tcp:{tcp}. Try, in another terminal:

              nbdinfo 'nbd+unix:///vm1?socket={socket}'
              nbdinfo --map 'nbd://{tcp}/vm1'
              qemu-img info 'nbd://{tcp}/vm2'
              qemu-img convert -O qcow2 'nbd://{tcp}/vm1' /tmp/vm1.qcow2

            Mount vm1 (as root; writes go to the pool, the base image never changes):
              mkdir -p /tmp/vm1 /tmp/vm1-mnt
              nbdfuse /tmp/vm1 'nbd+unix:///vm1?socket={socket}' &
              sleep 1; losetup -f --show /tmp/vm1/nbd      # prints /dev/loopN
              mount /dev/loopN /tmp/vm1-mnt && cat /tmp/vm1-mnt/hello.txt
              umount /tmp/vm1-mnt; losetup -d /dev/loopN; fusermount3 -u /tmp/vm1

            Then: thinfast volume snapshot {dir} vm1 vm1-snap; thinfast volume list {dir}
            (stop this server first: the pool is open in one process at a time).
            """);
    }

    internal static string? FindTool(string name)
    {
        foreach (string d in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin:/bin").Split(':').Concat(["/usr/sbin", "/sbin"]))
            if (File.Exists(Path.Combine(d, name)))
                return Path.Combine(d, name);
        return null;
    }

    private static string RunTool(string tool, string[] args)
    {
        var psi = new ProcessStartInfo(FindTool(tool) ?? tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string arg in args)
            psi.ArgumentList.Add(arg);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        string stdout = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new DemoException($"{tool} {string.Join(' ', args)} failed ({p.ExitCode}): {stderr.Result.Trim().ReplaceLineEndings(" ")}");
        return stdout;
    }
}
