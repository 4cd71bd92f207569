using System.Diagnostics;

namespace ThinFast.Fuzz.Tests;

/// <summary>
/// A copy of the ThinFast.Fuzz build in a temp folder whose product assemblies are instrumented
/// by SharpFuzz (the harness itself is not: its branches are not the code under test), as
/// afl-fuzz needs it. Made once per test run; deleted at the end.
/// </summary>
public sealed class InstrumentedHarness : IDisposable
{
    /// <summary>The assemblies whose branches afl-fuzz sees.</summary>
    public static readonly string[] Instrumented = ["ThinFast.IO", "ThinFast.Metadata", "ThinFast.Engine", "ThinFast.Nbd"];

    public InstrumentedHarness()
    {
        string sharpfuzz = Tools.Require("sharpfuzz", "dotnet tool install --global SharpFuzz.CommandLine --version 2.3.0 (scripts/install-deps.sh does it)",
            Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".dotnet", "tools", "sharpfuzz"));
        Directory = System.IO.Directory.CreateTempSubdirectory("thinfast-fuzz-").FullName;
        try
        {
            Instrument(sharpfuzz);
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    private void Instrument(string sharpfuzz)
    {
        string build = Path.GetDirectoryName(typeof(FuzzTargets).Assembly.Location)!;
        string harness = Path.Combine(Directory, "harness");
        System.IO.Directory.CreateDirectory(harness);
        foreach (string file in System.IO.Directory.GetFiles(build))
            File.Copy(file, Path.Combine(harness, Path.GetFileName(file)));
        Dll = Path.Combine(harness, "ThinFast.Fuzz.dll");
        if (!File.Exists(Path.Combine(harness, "ThinFast.Fuzz.runtimeconfig.json")))
            throw new FileNotFoundException($"ThinFast.Fuzz.runtimeconfig.json is not beside {typeof(FuzzTargets).Assembly.Location}");
        foreach (string assembly in Instrumented)
        {
            var run = Tools.Run(sharpfuzz, [Path.Combine(harness, assembly + ".dll")], TimeSpan.FromMinutes(2));
            if (run.ExitCode != 0)
                throw new InvalidOperationException($"sharpfuzz {assembly}.dll failed ({run.ExitCode}): {run.Output}");
        }
    }

    /// <summary>Holds the harness and every campaign's output.</summary>
    public string Directory { get; }

    /// <summary>The instrumented ThinFast.Fuzz.dll, to run with dotnet.</summary>
    public string Dll { get; private set; } = "";

    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}

/// <summary>Finding and running the external tools the afl tests need.</summary>
public static class Tools
{
    /// <summary>The tool's path: on PATH, or at one of <paramref name="alsoAt"/>; else the test
    /// fails saying how to install it.</summary>
    public static string Require(string name, string installHint, params string[] alsoAt)
    {
        var onPath = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries)
            .Select(d => Path.Combine(d, name));
        string? found = onPath.Concat(alsoAt).FirstOrDefault(File.Exists);
        Assert.True(found is not null, $"{name} is not installed: {installHint}");
        return found!;
    }

    public static (int ExitCode, string Output) Run(string program, IEnumerable<string> arguments, TimeSpan timeout,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(program) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in arguments)
            start.ArgumentList.Add(a);
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
            start.Environment[key] = value;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(timeout))
        {
            process.Kill(entireProcessTree: true);
            process.WaitForExit();
            return (-1, $"killed after {timeout}\n{stdout.Result}{stderr.Result}");
        }
        return (process.ExitCode, stdout.Result + stderr.Result);
    }
}
