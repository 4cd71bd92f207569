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

    [Theory]
    [InlineData("pool", new[] { "create", "info", "status", "grow", "check", "dump", "restore" })]
    [InlineData("volume", new[] { "create", "snapshot", "delete", "list" })]
    public void AGroupsHelpListsItsSubcommandsNotTheMainHelp(string group, string[] subcommands)
    {
        var r = Cli.Run(group, "--help");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.StartsWith($"Usage: thinfast {group} SUBCOMMAND", r.Stdout);
        foreach (string c in subcommands)
            Assert.Contains($"  {c} ", r.Stdout);
        Assert.DoesNotContain("Serving:", r.Stdout);
    }

    [Fact]
    public void MessagesNameTheThingInTheUsersTermsNeverACodeName()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "x");
        var twice = Cli.Run("serve", dir, "--socket", t["s.sock"], "--volume", "x", "--volume", "x");
        Assert.Equal(2, twice.ExitCode);
        Assert.Contains("--volume x is given twice", twice.Stderr);
        Assert.DoesNotContain("Parameter", twice.Stderr);

        string word = new('w', 70_000);
        foreach (var r in new[] { Cli.Run(word), Cli.Run("pool", word), Cli.Run("volume", word + "\u001b[2J"), Cli.Run("volume", "create", dir, word, "--size", "1M") })
        {
            Assert.NotEqual(0, r.ExitCode);
            Assert.True(r.Stderr.Length < 400, $"the argument was echoed whole ({r.Stderr.Length} characters)");
            Assert.DoesNotContain('\u001b', r.Stderr);
        }

        string manifest = Path.Combine(dir, "pool.json");
        string good = File.ReadAllText(manifest);
        foreach (var (text, expected) in new[]
                 {
                     (good.Replace("\"volumes\": [", "\"volumes\": 5, \"x\": ["), "a value of the wrong kind"),
                     ("{\"version\": 1, \"volumes\": [{\"name\": \"x\", \"device_id\": 1, \"size\": \"big\"}]}", "at $.volumes[0].size"),
                     ("{", "malformed JSON"),
                 })
        {
            File.WriteAllText(manifest, text);
            var r = Cli.Run("volume", "list", dir);
            Cli.AssertOneLineError(r, 1, expected);
            Assert.DoesNotContain("System.", r.Stderr);
            Assert.DoesNotContain("ThinFast.", r.Stderr);
        }
        File.WriteAllText(manifest, good);
        Assert.Equal(0, Cli.Run("volume", "list", dir).ExitCode);
    }
}
