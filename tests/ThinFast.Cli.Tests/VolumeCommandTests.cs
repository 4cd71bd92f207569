using System.Text.Json;

namespace ThinFast.Cli.Tests;

public sealed class VolumeCommandTests
{
    private static string NewPool(TempDir t)
    {
        var r = Cli.Run("pool", "create", t["p"], "--data-size", "64M");
        Assert.True(r.ExitCode == 0, r.ToString());
        return t["p"];
    }

    private static JsonElement[] List(string pool)
    {
        var r = Cli.Run("volume", "list", pool, "--json");
        Assert.True(r.ExitCode == 0, r.ToString());
        return JsonDocument.Parse(r.Stdout).RootElement.EnumerateArray().ToArray();
    }

    [Fact]
    public void CreateSnapshotListDelete()
    {
        using var t = new TempDir();
        string pool = NewPool(t);
        File.WriteAllBytes(t["base.img"], new byte[1 << 20]);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "thin", "--size", "10M").ExitCode);
        var r = Cli.Run("volume", "create", pool, "over", "--origin", t["base.img"]);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(0, Cli.Run("volume", "snapshot", pool, "over", "over-snap").ExitCode);

        var rows = List(pool);
        Assert.Equal(["thin", "over", "over-snap"], rows.Select(v => v.GetProperty("name").GetString()));
        Assert.Equal(10L << 20, rows[0].GetProperty("size").GetInt64());
        Assert.Equal(1L << 20, rows[1].GetProperty("size").GetInt64());
        Assert.Equal(t["base.img"], rows[2].GetProperty("origin").GetString());
        Assert.Equal(0, rows[0].GetProperty("mapped_bytes").GetInt64());

        var table = Cli.Run("volume", "list", pool);
        Assert.Matches(@"NAME\s+DEV\s+SIZE\s+MAPPED\s+SHARED\s+ORIGIN", table.Stdout);
        Assert.Contains("over-snap", table.Stdout);

        Assert.Equal(0, Cli.Run("volume", "delete", pool, "over").ExitCode);
        Assert.Equal(["thin", "over-snap"], List(pool).Select(v => v.GetProperty("name").GetString()));
        Assert.Equal(0, Cli.Run("pool", "check", pool).ExitCode);
        Assert.Equal(0, Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [Path.Combine(pool, "metadata")]).ExitCode);
    }

    [Fact]
    public void BadVolumeInputIsOneLineAndChangesNothing()
    {
        using var t = new TempDir();
        string pool = NewPool(t);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "vm", "--size", "1M").ExitCode);
        var before = t.Snapshot(pool);
        Cli.AssertOneLineError(Cli.Run("volume", "create", pool, "vm", "--size", "1M"), 1, "a volume named 'vm' already exists");
        Cli.AssertOneLineError(Cli.Run("volume", "snapshot", pool, "vm", "vm"), 1, "already exists");
        Cli.AssertOneLineError(Cli.Run("volume", "create", pool, "x", "--origin", t["missing.img"]), 1, "origin");
        Cli.AssertOneLineError(Cli.Run("volume", "create", pool, "bad/name", "--size", "1M"), 1, "volume name 'bad/name'");
        Cli.AssertOneLineError(Cli.Run("volume", "create", pool, "odd", "--size", "1000"), 2, "multiple of 512");
        Cli.AssertOneLineError(Cli.Run("volume", "create", pool, "nosize"), 2, "--size is required");
        Cli.AssertOneLineError(Cli.Run("volume", "snapshot", pool, "ghost", "s"), 1, "no volume named 'ghost'");
        Cli.AssertOneLineError(Cli.Run("volume", "delete", pool, "ghost"), 1, "no volume named 'ghost'");
        TempDir.AssertUnchanged(before, t.Snapshot(pool));
    }

    [Fact]
    public void AnOriginThatChangedSizeOrVanishedIsRefused()
    {
        using var t = new TempDir();
        string pool = NewPool(t);
        File.WriteAllBytes(t["a.img"], new byte[1 << 20]);
        File.WriteAllBytes(t["b.img"], new byte[1 << 20]);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "va", "--origin", t["a.img"]).ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "vb", "--origin", t["b.img"]).ExitCode);
        File.WriteAllBytes(t["a.img"], new byte[2 << 20]);
        File.Delete(t["b.img"]);
        var before = t.Snapshot(pool);

        Cli.AssertOneLineError(Cli.Run("volume", "snapshot", pool, "va", "sa"), 1, "changed size from 1048576 to 2097152");
        Cli.AssertOneLineError(Cli.Run("volume", "snapshot", pool, "vb", "sb"), 1, "does not exist");
        Cli.AssertServeError(Cli.Run("serve", pool, "--volume", "va", "--socket", t["s.sock"]), "changed size");
        Cli.AssertServeError(Cli.Run("serve", pool, "--volume", "vb", "--socket", t["s.sock"]), "does not exist");
        var rows = List(pool);
        Assert.Contains("changed size", rows[0].GetProperty("unavailable").GetString());
        Assert.Contains("does not exist", rows[1].GetProperty("unavailable").GetString());
        Assert.Contains("UNAVAILABLE", Cli.Run("volume", "list", pool).Stdout);
        TempDir.AssertUnchanged(before, t.Snapshot(pool));
        Assert.False(File.Exists(t["s.sock"]));
    }
}
