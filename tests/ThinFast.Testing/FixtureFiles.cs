namespace ThinFast.Testing;

/// <summary>Finds files under tests/fixtures/ from a test's output folder.</summary>
public static class FixtureFiles
{
    /// <summary>The full path of tests/fixtures/<paramref name="folder"/>/<paramref name="name"/>.</summary>
    public static string Path(string folder, string name)
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d != null; d = d.Parent)
        {
            string candidate = System.IO.Path.Combine(d.FullName, "tests", "fixtures", folder);
            if (Directory.Exists(candidate))
                return System.IO.Path.Combine(candidate, name);
        }
        throw new DirectoryNotFoundException($"tests/fixtures/{folder} not found above {AppContext.BaseDirectory}");
    }

    /// <summary>Decompresses a .gz fixture into <paramref name="destination"/>.</summary>
    public static void Gunzip(string folder, string name, string destination)
    {
        using var input = new System.IO.Compression.GZipStream(File.OpenRead(Path(folder, name)), System.IO.Compression.CompressionMode.Decompress);
        using var output = File.Create(destination);
        input.CopyTo(output);
    }
}
