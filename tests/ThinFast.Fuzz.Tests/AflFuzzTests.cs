namespace ThinFast.Fuzz.Tests;

/// <summary>
/// A short afl-fuzz campaign per target on the SharpFuzz-instrumented assemblies: afl must have
/// started, run the target many times and saved no crash and no hang. A crash found here is
/// copied to artifacts/fuzz-findings/TARGET/ and replayed in-process for the failure message;
/// docs/fuzzing.md says how to minimise it and commit it as a regression input.
/// </summary>
public class AflFuzzTests(AflCampaigns campaigns) : IClassFixture<AflCampaigns>
{
    public static TheoryData<string> Targets() => [.. FuzzTargets.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(Targets))]
    public void AflFindsNoCrashOrHangInAShortCampaign(string name)
    {
        var result = campaigns[name];
        TestContext.Current.SendDiagnosticMessage(result.Summary);
        if (result.ForkServerLost && File.Exists(result.LastInput))
            Assert.Fail($"{name}: the target process died or overran afl's -t (a hang) on an input, kept as " +
                $"{Keep(name, result.LastInput, "hang-or-death")}: {Replay(name, result.LastInput)}\n{Tail(result.Log)}");
        Assert.True(result.ExitCode == 0 && result.Stats.Count > 0,
            $"afl-fuzz did not complete a campaign on {name} (exit {result.ExitCode}):\n{Tail(result.Log)}");
        // Seconds of fuzzing at hundreds of executions a second at the least: far fewer means
        // the target was not really being run (instrumentation missing, every input timing out).
        Assert.True(result.Executions >= 100L * campaigns.Seconds, $"only {result.Executions} executions in {campaigns.Seconds} s: {result.Summary}");
        var saved = result.Crashes.Concat(result.Hangs).ToList();
        if (saved.Count == 0)
            return;
        var report = saved.Select(file => $"{Keep(name, file, Path.GetFileName(file))}: {Replay(name, file)}");
        Assert.Fail($"{result.Summary}\n{string.Join("\n\n", report)}");
    }

    // Copies a finding out of the campaign's temp folder, which is deleted after the run.
    private static string Keep(string name, string file, string fileName)
    {
        string dir = Path.Combine(Path.GetDirectoryName(FuzzFiles.Root)!, "artifacts", "fuzz-findings", name);
        Directory.CreateDirectory(dir);
        string copy = Path.Combine(dir, fileName.Replace(':', '_'));
        File.Copy(file, copy, overwrite: true);
        return copy;
    }

    private static string Replay(string name, string file)
    {
        var watch = System.Diagnostics.Stopwatch.StartNew();
        try
        {
            FuzzTargets.Find(name)!.Run(File.ReadAllBytes(file));
            return $"replayed in-process it returns, after {watch.Elapsed.TotalSeconds:F1} s (a hang if that is long; else state left by earlier inputs)";
        }
        catch (Exception e)
        {
            return e.ToString();
        }
    }

    private static string Tail(string log) => string.Join("\n", log.Split('\n').TakeLast(25));
}
