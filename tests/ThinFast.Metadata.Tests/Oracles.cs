using System.Diagnostics;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>The external checkers: thin-provisioning-tools 0.9 and the shared Python reader/checker.</summary>
internal static class Oracles
{
    private const string ToolsHint = "apt-get install thin-provisioning-tools";
    public const string AnalyzePy = "/work/shared/tools/dmthin/analyze.py";
    public const string DmthinPy = "/work/shared/tools/dmthin/dmthin.py";

    public sealed record Result(int ExitCode, string Stdout, string Stderr)
    {
        public override string ToString() => $"exit {ExitCode}\nstdout:\n{Stdout}\nstderr:\n{Stderr}";
    }

    public static Result Run(string tool, string hint, params string[] args)
    {
        string? path = Find(tool);
        Assert.True(path != null, $"{tool} is not installed (PATH={Environment.GetEnvironmentVariable("PATH")}): {hint}");
        var psi = new ProcessStartInfo(path!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    private static string? Find(string tool)
    {
        var dirs = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Concat(["/usr/sbin", "/sbin", "/usr/bin"]);
        return dirs.Select(d => Path.Combine(d, tool)).FirstOrDefault(File.Exists);
    }

    public static Result ThinCheck(string image) => Run("thin_check", ToolsHint, image);
    public static Result ThinDump(string image, bool metadataSnap = false) =>
        metadataSnap ? Run("thin_dump", ToolsHint, "-m", image) : Run("thin_dump", ToolsHint, image);
    public static Result ThinRestore(string xml, string image) => Run("thin_restore", ToolsHint, "-i", xml, "-o", image);

    public static Result Analyze(string image)
    {
        Assert.True(File.Exists(AnalyzePy), $"{AnalyzePy} is missing (shared oracle tools)");
        return Run("python3", "apt-get install python3", AnalyzePy, image);
    }

    /// <summary>thin_check and analyze.py both accept the image, with every reference count right.</summary>
    public static void AssertConsistent(string image)
    {
        Result check = ThinCheck(image);
        Assert.True(check.ExitCode == 0, $"thin_check {image}: {check}");
        Result analyze = Analyze(image);
        Assert.True(analyze.ExitCode == 0, $"analyze.py {image}: {analyze}");
        Assert.Contains("metadata refcount mismatches (block, expected, ondisk): [] total 0", analyze.Stdout);
        Assert.Contains("data refcount mismatches: [] total 0", analyze.Stdout);
        Assert.Contains("strict (1.x-style) checks: OK", analyze.Stdout);
        Assert.DoesNotContain("index entry", analyze.Stdout);
    }

    public static void AssertConsistent(MemoryBlockDevice device)
    {
        string path = TempFile("img");
        try
        {
            device.SaveTo(path);
            AssertConsistent(path);
        }
        finally
        {
            File.Delete(path);
        }
    }

    /// <summary>thin_dump's XML of the image equals ThinMetadata.WriteXml's.</summary>
    public static void AssertDumpEquals(MemoryBlockDevice device, ThinMetadata md)
    {
        string path = TempFile("img");
        try
        {
            device.SaveTo(path);
            Result dump = ThinDump(path);
            Assert.True(dump.ExitCode == 0, $"thin_dump: {dump}");
            var ours = new StringWriter();
            md.WriteXml(ours);
            Assert.Equal(dump.Stdout, ours.ToString());
        }
        finally
        {
            File.Delete(path);
        }
    }

    public static string TempFile(string ext) => Path.Combine(Path.GetTempPath(), $"thinfast-md-{Guid.NewGuid():N}.{ext}");
}
