namespace ThinFast.Metadata.Tests;

internal static class Fixtures
{
    private static readonly Lazy<string> Dir = new(() =>
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string candidate = System.IO.Path.Combine(d.FullName, "tests", "fixtures", "metadata");
            if (Directory.Exists(candidate))
                return candidate;
        }
        throw new DirectoryNotFoundException($"tests/fixtures/metadata not found above {AppContext.BaseDirectory}");
    });

    public static string Path(string name) => System.IO.Path.Combine(Dir.Value, name);
}
