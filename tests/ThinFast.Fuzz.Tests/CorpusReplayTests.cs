namespace ThinFast.Fuzz.Tests;

/// <summary>
/// Every committed input, seeds and fixed crashes alike, through its target in-process: each must
/// be accepted or refused with the target's documented exception, within seconds. A regression
/// input that fails again means the fix it was committed with has been undone.
/// </summary>
public class CorpusReplayTests
{
    /// <summary>Inputs take milliseconds; one that takes seconds is a hang afl would kill at its
    /// -t limit (a damaged count once made the leak scan loop four billion times).</summary>
    private static readonly TimeSpan Slowest = TimeSpan.FromSeconds(5);

    public static TheoryData<string> Targets() => [.. FuzzTargets.All.Select(t => t.Name)];

    [Theory]
    [MemberData(nameof(Targets))]
    public void EveryCommittedInputIsAcceptedOrRefusedAsDocumented(string name)
    {
        var target = FuzzTargets.Find(name)!;
        var inputs = FuzzFiles.Inputs(name).ToList();
        Assert.True(Directory.GetFiles(FuzzFiles.Corpus(name)).Length > 0, $"fuzz/corpus/{name} has no seed");
        var crashes = new List<string>();
        foreach (string file in inputs)
        {
            var watch = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                crashes.Add($"{Path.GetRelativePath(FuzzFiles.Root, file)}: {e}");
            }
            if (watch.Elapsed > Slowest)
                crashes.Add($"{Path.GetRelativePath(FuzzFiles.Root, file)}: took {watch.Elapsed.TotalSeconds:F1} s (a hang)");
        }
        Assert.True(crashes.Count == 0, $"{crashes.Count} of {inputs.Count} inputs crashed {name}:\n{string.Join("\n\n", crashes)}");
    }

    [Theory]
    [MemberData(nameof(Targets))]
    public void TheCommittedCorpusHoldsEveryGeneratedSeed(string name)
    {
        // The seeds are made by the code under test; a format change that alters them should
        // come with a regenerated corpus (ThinFast.Fuzz seed fuzz/corpus).
        foreach (var (file, contents) in FuzzTargets.Find(name)!.Seeds())
        {
            string path = Path.Combine(FuzzFiles.Corpus(name), file);
            Assert.True(File.Exists(path), $"fuzz/corpus/{name}/{file} is missing: run ThinFast.Fuzz seed fuzz/corpus");
            Assert.True(contents.AsSpan().SequenceEqual(File.ReadAllBytes(path)), $"fuzz/corpus/{name}/{file} differs from the generated seed: run ThinFast.Fuzz seed fuzz/corpus");
        }
    }
}
