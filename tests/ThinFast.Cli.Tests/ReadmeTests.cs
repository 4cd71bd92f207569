using System.Text.RegularExpressions;

namespace ThinFast.Cli.Tests;

/// <summary>
/// The README's two quick-start commands, verbatim, on a fresh clone of the committed repository.
/// The second command (scripts/test.sh) would run this test again inside the clone: the clone's run
/// sets THINFAST_README_TEST=1, which makes this one test return at once. It is the only test that
/// looks at that variable. The clone's run is also restricted to one fast class (test.sh passes
/// extra arguments to every runner) to keep the suite inside its time budget.
/// </summary>
public sealed class ReadmeTests
{
    private const string FastClass = "ThinFast.Cli.Tests.HelpTests";

    [Fact]
    public void QuickStartCommandsWorkOnAFreshClone()
    {
        if (Environment.GetEnvironmentVariable("THINFAST_README_TEST") == "1")
            return;
        string git = Cli.Require("git", "git");
        string readme = File.ReadAllText(Path.Combine(Cli.RepoRoot, "README.md"));
        var block = Regex.Match(readme, @"## Quick start.*?```sh\n(.*?)```", RegexOptions.Singleline);
        Assert.True(block.Success, "README.md has no ```sh block under ## Quick start");
        string[] commands = block.Groups[1].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        Assert.Equal(["bash scripts/demo.sh", "bash scripts/test.sh"], commands);

        using var t = new TempDir();
        string clone = t["clone"];
        var c = Cli.Tool(git, ["clone", "-q", Cli.RepoRoot, clone]);
        Assert.True(c.ExitCode == 0, c.ToString());

        var demo = Cli.Tool("/bin/bash", ["-c", commands[0]], clone,
            new() { ["THINFAST_DEMO_EXIT"] = "1", ["THINFAST_DEMO_TCP"] = "127.0.0.1:0" }, TimeSpan.FromMinutes(8));
        Assert.True(demo.ExitCode == 0, demo.ToString());
        Assert.Contains("demo check passed", demo.Stdout);
        Assert.Contains("self-check passed", demo.Stderr);
        Assert.True(File.Exists(Path.Combine(clone, "demo", "pool.json")));

        var tests = Cli.Tool("/bin/bash", ["-c", $"{commands[1]} -class {FastClass}"], clone,
            new() { ["THINFAST_README_TEST"] = "1" }, TimeSpan.FromMinutes(10));
        Assert.True(tests.ExitCode == 0, tests.ToString());
        var summary = Regex.Match(tests.Stdout, @"^(\d+) passed, 0 failed$", RegexOptions.Multiline);
        Assert.True(summary.Success, $"no 'N passed, 0 failed' line:\n{tests}");
        Assert.True(int.Parse(summary.Groups[1].Value) >= 20, $"too few tests ran in the clone:\n{tests.Stdout}");
    }
}
