using System.Diagnostics;
using System.Text;

namespace ThinFast.Cli.Tests;

public sealed record CliResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the real built thinfast executable and the external oracles.</summary>
public static class Cli
{
    public static readonly string RepoRoot = FindRepoRoot();

    // The test binary lives in tests/ThinFast.Cli.Tests/bin/<Config>/net10.0/: use the CLI built
    // in the same configuration, or THINFAST_CLI_EXE (to run the suite against the NativeAOT binary).
    public static readonly string Exe = Environment.GetEnvironmentVariable("THINFAST_CLI_EXE") is { Length: > 0 } exe ? exe
        : Path.Combine(RepoRoot, "src", "ThinFast.Cli", "bin", new DirectoryInfo(AppContext.BaseDirectory.TrimEnd('/')).Parent!.Name, "net10.0", "thinfast");

    /// <summary>The shared dm-thin metadata analyser, beside the repository (../shared).</summary>
    public static string AnalyzePy
    {
        get
        {
            string path = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "tools", "dmthin", "analyze.py"));
            Assert.True(File.Exists(path), $"analyze.py not found at {path} (the shared tools folder belongs beside the repository)");
            return path;
        }
    }

    public static CliResult Run(params string[] args) => RunIn(null, null, args);

    public static CliResult RunIn(string? workingDirectory, Dictionary<string, string>? env, params string[] args)
    {
        Assert.True(File.Exists(Exe), $"thinfast executable not built at {Exe}");
        return Tool(Exe, args, workingDirectory, env, TimeSpan.FromSeconds(60));
    }

    public static CliResult Tool(string file, string[] args, string? workingDirectory = null, Dictionary<string, string>? env = null, TimeSpan? timeout = null)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = workingDirectory ?? "" };
        foreach (string a in args)
            psi.ArgumentList.Add(a);
        if (env is not null)
            foreach (var (k, v) in env)
                psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout ?? TimeSpan.FromSeconds(60)))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{file} {string.Join(' ', args)} did not finish in time; stderr so far: {stderr.Result}");
        }
        p.WaitForExit();
        return new CliResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>A missing oracle fails the test with an install hint (never a silent pass).</summary>
    public static string Require(string tool, string package)
    {
        foreach (string d in new[] { "/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin" })
            if (File.Exists(Path.Combine(d, tool)))
                return Path.Combine(d, tool);
        Assert.Fail($"{tool} is not installed: apt-get install {package} (or bash scripts/install-deps.sh)");
        return "";
    }

    /// <summary>A user error: one line on stderr, no stack trace, the given exit code.</summary>
    public static void AssertOneLineError(CliResult r, int exitCode, string mustContain)
    {
        Assert.True(r.ExitCode == exitCode, r.ToString());
        string[] lines = r.Stderr.TrimEnd('\n').Split('\n');
        Assert.True(lines.Length == 1, $"expected one line on stderr:\n{r}");
        Assert.StartsWith("thinfast: ", lines[0]);
        Assert.Contains(mustContain, lines[0]);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    /// <summary>serve logs on stderr (time-stamped) before it fails: the error is the last line.</summary>
    public static void AssertServeError(CliResult r, string mustContain)
    {
        Assert.True(r.ExitCode == 1, r.ToString());
        string last = r.Stderr.TrimEnd('\n').Split('\n')[^1];
        Assert.StartsWith("thinfast: ", last);
        Assert.Contains(mustContain, last);
        Assert.DoesNotContain("   at ", r.Stderr);
    }

    private static string FindRepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ThinFast.sln")))
                return d.FullName;
        throw new InvalidOperationException("ThinFast.sln not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>A scratch folder removed after the test.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir()
    {
        Path = Directory.CreateTempSubdirectory("thinfast-cli-").FullName;
    }

    public string Path { get; }

    public string this[string name] => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>Every file's bytes, to show that a failed command changed nothing.</summary>
    public Dictionary<string, byte[]> Snapshot(string dir)
    {
        var all = new Dictionary<string, byte[]>();
        foreach (string f in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
            if (!f.EndsWith(".lock", StringComparison.Ordinal))
                all[System.IO.Path.GetRelativePath(dir, f)] = File.ReadAllBytes(f);
        return all;
    }

    public static void AssertUnchanged(Dictionary<string, byte[]> before, Dictionary<string, byte[]> after)
    {
        Assert.Equal(before.Keys.Order(), after.Keys.Order());
        foreach (var (k, v) in before)
            Assert.True(v.AsSpan().SequenceEqual(after[k]), $"{k} changed");
    }
}
