using System.Diagnostics;
using Xunit;

namespace ThinFast.Testing;

/// <summary>A loop block device over a file in a temp dir, detached on dispose. Needs root and
/// losetup (util-linux, package "mount" on Debian).</summary>
public sealed class LoopDevice : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("thinfast-loop-").FullName;

    public LoopDevice(long size, int sectorSize)
    {
        string backing = System.IO.Path.Combine(_dir, "backing.img");
        using (var f = File.Create(backing))
            f.SetLength(size);
        Path = Run("losetup", $"--find --show --direct-io=on --sector-size {sectorSize} {backing}").Trim();
        Assert.True(Path.StartsWith("/dev/loop", StringComparison.Ordinal), $"losetup printed '{Path}'");
    }

    public string Path { get; }

    public void Dispose()
    {
        Run("losetup", $"-d {Path}");
        Directory.Delete(_dir, recursive: true);
    }

    private static string Run(string file, string args)
    {
        Process p;
        try
        {
            p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"cannot run {file} ({e.Message}); block-device tests need it: apt-get install mount");
            throw;
        }
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {args} failed ({p.ExitCode}): {stderr}. Block-device tests need root and loop device support.");
        return stdout;
    }
}
