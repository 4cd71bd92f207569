namespace ThinFast.Cli.Tests;

public sealed class DemoTests
{
    [Fact]
    public void DemoBuildsChecksItselfAndExitsThenReusesThePool()
    {
        Cli.Require("mkfs.ext4", "e2fsprogs");
        Cli.Require("nbdinfo", "libnbd-bin");
        using var t = new TempDir();
        string dir = t["demo"];
        var first = Cli.Run("demo", dir, "--tcp", "127.0.0.1:0", "--exit-after-check");
        Assert.True(first.ExitCode == 0, first.ToString());
        Assert.Contains("self-check passed", first.Stderr);
        Assert.Contains($"nbdinfo 'nbd+unix:///vm1?socket={dir}/nbd.sock'", first.Stdout);
        Assert.Contains("qemu-img info", first.Stdout);
        Assert.Contains("nbdfuse", first.Stdout);
        Assert.False(File.Exists(Path.Combine(dir, "nbd.sock")));

        var second = Cli.RunIn(t.Path, new() { ["THINFAST_DEMO_EXIT"] = "1", ["THINFAST_DEMO_TCP"] = "127.0.0.1:0" }, "demo");
        Assert.True(second.ExitCode == 0, second.ToString());
        Assert.Contains("using the existing demo pool", second.Stderr);
        Assert.Contains("self-check passed", second.Stderr);
        Assert.Equal(0, Cli.Run("pool", "check", dir).ExitCode);
        var list = Cli.Run("volume", "list", dir);
        Assert.Contains("vm1", list.Stdout);
        Assert.Contains("vm2", list.Stdout);
    }
}
