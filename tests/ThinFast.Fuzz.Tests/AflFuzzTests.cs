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
        Assert.True(result.ExitCode == 0 && result.Stats.Count > 0,
            $"afl-fuzz did not complete a campaign on {name} (exit {result.ExitCode}):\n{Tail(result.Log)}");
        // Seconds of fuzzing at hundreds of executions a second at the least: far fewer means
        // the target was not really being run (instrumentation missing, every input timing out).
        Assert.True(result.Executions >= 100L * campaigns.Seconds, $"only {result.Executions} executions in {campaigns.Seconds} s: {result.Summary}");
        var saved = result.Crashes.Concat(result.Hangs).ToList();
        if (saved.Count == 0)
            return;
        string keep = Path.Combine(Path.GetDirectoryName(FuzzFiles.Root)!, "artifacts", "fuzz-findings", name);
        Directory.CreateDirectory(keep);
        var report = new List<string>();
        foreach (string file in saved)
        {
            string copy = Path.Combine(keep, Path.GetFileName(file).Replace(':', '_'));
            File.Copy(file, copy, overwrite: true);
            report.Add($"{copy}: {Replay(name, file)}");
        }
        Assert.Fail($"{result.Summary}\n{string.Join("\n\n", report)}");
    }

    private static string Replay(string name, string file)
    {
        try
        {
            FuzzTargets.Find(name)!.Run(File.ReadAllBytes(file));
            return "does not crash when replayed in-process (a hang, or state left by earlier inputs)";
        }
        catch (Exception e)
        {
            return e.ToString();
        }
    }

    private static string Tail(string log) => string.Join("\n", log.Split('\n').TakeLast(25));
}
