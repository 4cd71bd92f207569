namespace ThinFast.Fuzz.Tests;

/// <summary>The figures afl-fuzz wrote in fuzzer_stats at the end of a campaign, and what it saved.</summary>
public sealed record AflResult(string Target, int ExitCode, string Log, IReadOnlyDictionary<string, string> Stats,
    IReadOnlyList<string> Crashes, IReadOnlyList<string> Hangs, string LastInput)
{
    /// <summary>SharpFuzz runs every input in the one process afl started, so an input that
    /// overruns -t (afl kills the process) or kills the runtime ends the fork server: afl stops
    /// with this, and the input it was running is left in <see cref="LastInput"/>.</summary>
    public bool ForkServerLost => Log.Contains("Unable to communicate with fork server", StringComparison.Ordinal);

    public long Executions => long.Parse(Stats.GetValueOrDefault("execs_done", "0"));

    public string Summary => $"{Target}: {Executions} execs ({Stats.GetValueOrDefault("execs_per_sec", "?")}/s), " +
        $"corpus {Stats.GetValueOrDefault("corpus_count", "?")}, stability {Stats.GetValueOrDefault("stability", "?")}, " +
        $"{Crashes.Count} crashes, {Hangs.Count} hangs";
}

/// <summary>
/// One bounded afl-fuzz run of a target on the instrumented harness, from its committed corpus.
/// </summary>
public static class AflCampaign
{
    /// <summary>afl's per-input timeout: far above any input's time (milliseconds), so only a
    /// real hang reaches it, on a loaded machine too.</summary>
    private const int TimeoutMs = 20_000;

    public static AflResult Run(InstrumentedHarness harness, string target, int seconds)
    {
        string aflFuzz = Tools.Require("afl-fuzz", "apt-get install afl++ (scripts/install-deps.sh does it)");
        string dotnet = Tools.Require("dotnet", "the .NET 10 SDK", "/usr/bin/dotnet", "/usr/share/dotnet/dotnet");
        string output = Path.Combine(harness.Directory, "findings-" + target);
        var environment = new Dictionary<string, string>
        {
            // The target is a managed program, not an afl-instrumented binary; SharpFuzz speaks
            // afl's fork-server protocol itself.
            ["AFL_SKIP_BIN_CHECK"] = "1",
            ["AFL_SKIP_CPUFREQ"] = "1",
            ["AFL_NO_UI"] = "1",
            // Crashes are exceptions SharpFuzz reports, not core dumps, so a core_pattern that
            // pipes to a handler does not lose any.
            ["AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES"] = "1",
            // Two campaigns run at once beside other work; pinning each to a core would collide.
            ["AFL_NO_AFFINITY"] = "1",
            // An allocation of gigabytes fails fast as OutOfMemoryException (a crash) instead of
            // taking the machine's memory; the harness's own budget catches smaller ones.
            ["DOTNET_GCHeapHardLimit"] = "0x40000000",
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        };
        var (exitCode, log) = Tools.Run(aflFuzz,
            ["-V", seconds.ToString(), "-t", TimeoutMs.ToString(), "-m", "none", "-i", FuzzFiles.Corpus(target), "-o", output,
                "--", dotnet, harness.Dll, "run", target],
            TimeSpan.FromSeconds(seconds + 120), environment);
        string stats = Path.Combine(output, "default", "fuzzer_stats");
        var figures = File.Exists(stats)
            ? File.ReadAllLines(stats).Select(l => l.Split(':', 2)).Where(p => p.Length == 2)
                .ToDictionary(p => p[0].Trim(), p => p[1].Trim())
            : new Dictionary<string, string>();
        return new AflResult(target, exitCode, log, figures, Saved(output, "crashes"), Saved(output, "hangs"),
            Path.Combine(output, "default", ".cur_input"));
    }

    private static List<string> Saved(string output, string kind)
    {
        string dir = Path.Combine(output, "default", kind);
        return Directory.Exists(dir) ? [.. Directory.GetFiles(dir).Where(f => Path.GetFileName(f) != "README.txt").Order()] : [];
    }
}
