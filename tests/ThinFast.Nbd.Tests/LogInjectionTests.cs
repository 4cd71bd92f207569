using System.Text;

namespace ThinFast.Nbd.Tests;

/// <summary>What a client sends must not forge log lines: names reach the log with control
/// characters escaped and cut short.</summary>
public class LogInjectionTests
{
    [Fact]
    public async Task AnExportNameWithNewlinesAndEscapesCannotForgeOrFloodTheLog()
    {
        var cancel = TestContext.Current.CancellationToken;
        await using var h = ServerHarness.Start();
        string evil = "x\n12:00:00.000 thinfast: volume 'disk' was deleted\u001b[2J" + new string('A', 60_000);
        using (var client = await RawClient.ConnectAsync(h.SocketPath, cancel))
        {
            // NBD_OPT_EXPORT_NAME (1) of an unknown export: the server can only hang up.
            await Assert.ThrowsAsync<IOException>(() => client.OptionAsync(1, Encoding.UTF8.GetBytes(evil), cancel));
        }
        Assert.True(SpinWait.SpinUntil(() => h.Log.Any(l => l.Contains("EXPORT_NAME for unknown export")), TimeSpan.FromSeconds(10)),
            "the refused export name was never logged: " + string.Join(" | ", h.Log));
        foreach (string line in h.Log)
        {
            Assert.DoesNotContain('\n', line);
            Assert.DoesNotContain('\u001b', line);
            Assert.False(line.StartsWith("12:00:00.000 thinfast:", StringComparison.Ordinal), $"a client forged a log line: {line}");
            Assert.True(line.Length < 400, $"a log line of {line.Length} characters: {line[..Math.Min(200, line.Length)]}...");
        }
        Assert.Contains(h.Log, l => l.Contains("\\u000a12:00:00.000 thinfast") && l.Contains($"({evil.Length} characters)"));
    }
}
