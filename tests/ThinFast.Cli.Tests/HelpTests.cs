namespace ThinFast.Cli.Tests;

/// <summary>Help text and usage errors (exit 2) for every command.</summary>
public sealed class HelpTests
{
    [Fact]
    public void MainHelpListsEveryCommandAndExitsZero()
    {
        var r = Cli.Run("--help");
        Assert.True(r.ExitCode == 0, r.ToString());
        foreach (string c in new[] { "pool create", "pool info", "pool status", "pool grow", "pool check", "pool dump", "pool restore",
                     "volume create", "volume snapshot", "volume delete", "volume list", "serve", "demo", "Exit status" })
            Assert.Contains(c, r.Stdout);
    }

    [Theory]
    [InlineData("pool", "create")]
    [InlineData("pool", "info")]
    [InlineData("pool", "status")]
    [InlineData("pool", "grow")]
    [InlineData("pool", "check")]
    [InlineData("pool", "dump")]
    [InlineData("pool", "restore")]
    [InlineData("volume", "create")]
    [InlineData("volume", "snapshot")]
    [InlineData("volume", "delete")]
    [InlineData("volume", "list")]
    [InlineData("serve", null)]
    [InlineData("demo", null)]
    public void EachCommandHasHelp(string group, string? command)
    {
        var r = command is null ? Cli.Run(group, "--help") : Cli.Run(group, command, "--help");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.StartsWith($"Usage: thinfast {group}{(command is null ? "" : " " + command)}", r.Stdout);
        Assert.Equal("", r.Stderr);
    }

    [Theory]
    [InlineData(new string[0], "COMMAND")]
    [InlineData(new[] { "frobnicate" }, "unknown command 'frobnicate'")]
    [InlineData(new[] { "pool" }, "pool needs a subcommand")]
    [InlineData(new[] { "pool", "explode", "x" }, "unknown pool subcommand")]
    [InlineData(new[] { "volume", "create", "/tmp" }, "missing volume NAME")]
    [InlineData(new[] { "pool", "create", "/tmp/x", "--data-sise", "1G" }, "unknown option --data-sise")]
    [InlineData(new[] { "pool", "create", "/tmp/x", "--data-size" }, "--data-size needs a value")]
    [InlineData(new[] { "pool", "create", "/tmp/x", "--data-size", "12Q" }, "unknown unit")]
    [InlineData(new[] { "pool", "info", "a", "b" }, "unexpected argument 'b'")]
    [InlineData(new[] { "serve", "/tmp/x", "--tcp", "99999" }, "port must be 0-65535")]
    [InlineData(new[] { "serve", "/tmp/x", "--io", "spdk" }, "must be auto, uring or portable")]
    [InlineData(new[] { "serve", "/tmp/x", "--max-connections", "0" }, "--max-connections '0' is not a whole number of at least 1")]
    [InlineData(new[] { "serve", "/tmp/x", "--idle-timeout", "soon" }, "--idle-timeout 'soon' is not a positive number of seconds")]
    [InlineData(new[] { "serve", "/tmp/x", "--idle-timeout", "0" }, "--idle-timeout '0' is not a positive number of seconds")]
    public void BadUsageExitsTwo(string[] args, string message)
    {
        var r = Cli.Run(args);
        Assert.True(r.ExitCode == 2, r.ToString());
        Assert.Contains(message, r.Stderr);
        Assert.DoesNotContain("   at ", r.Stderr);
    }
}
