namespace ThinFast.Fuzz.Tests;

/// <summary>
/// Every committed input, seeds and fixed crashes alike, through its target in-process: each must
/// be accepted or refused with the target's documented exception. A regression input that
/// crashes again means the fix it was committed with has been undone.
/// </summary>
public class CorpusReplayTests
{
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
            try
            {
                target.Run(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                crashes.Add($"{Path.GetRelativePath(FuzzFiles.Root, file)}: {e}");
            }
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
