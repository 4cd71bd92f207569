namespace ThinFast.Fuzz.Tests;

/// <summary>Finds the repository's fuzz/ folder (corpora, regression inputs, the harness build).</summary>
public static class FuzzFiles
{
    public static string Root { get; } = FindRoot();

    /// <summary>Seed inputs of a target: fuzz/corpus/TARGET/.</summary>
    public static string Corpus(string target) => Path.Combine(Root, "corpus", target);

    /// <summary>Crashes found and fixed, kept as regression inputs: fuzz/regressions/TARGET/.</summary>
    public static string Regressions(string target) => Path.Combine(Root, "regressions", target);

    /// <summary>Every corpus and regression file of a target.</summary>
    public static IEnumerable<string> Inputs(string target) =>
        new[] { Corpus(target), Regressions(target) }.Where(Directory.Exists).SelectMany(Directory.GetFiles).Order();

    private static string FindRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string candidate = Path.Combine(d.FullName, "fuzz", "corpus");
            if (Directory.Exists(candidate))
                return Path.GetDirectoryName(candidate)!;
        }
        throw new DirectoryNotFoundException($"fuzz/corpus not found above {AppContext.BaseDirectory}");
    }
}
