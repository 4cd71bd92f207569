using System.Text.Json;

namespace ThinFast.Cli.Tests;

public sealed class PoolCommandTests
{
    [Fact]
    public void CreateMakesSparseFilesSizedByDmThinsGuidance()
    {
        using var t = new TempDir();
        string pool = t["pool"];
        var r = Cli.Run("pool", "create", pool, "--data-size", "2G", "--block-size", "128K");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(2L << 30, new FileInfo(Path.Combine(pool, "data")).Length);
        // 16384 blocks * 48 bytes = 768 KiB < 2 MiB minimum; +25% = 2.5 MiB, rounded up to 3 MiB.
        Assert.Equal(3L << 20, new FileInfo(Path.Combine(pool, "metadata")).Length);
        Assert.True(File.Exists(Path.Combine(pool, "pool.json")));

        var info = Cli.Run("pool", "info", pool, "--json");
        Assert.True(info.ExitCode == 0, info.ToString());
        using var doc = JsonDocument.Parse(info.Stdout);
        Assert.Equal(128 * 1024, doc.RootElement.GetProperty("block_size").GetInt64());
        Assert.Equal(16384UL, doc.RootElement.GetProperty("data_blocks").GetUInt64());
        Assert.Equal(0, doc.RootElement.GetProperty("volumes").GetArrayLength());

        // thin_check accepts the fresh metadata: it is real dm-thin metadata.
        var tc = Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [Path.Combine(pool, "metadata")]);
        Assert.True(tc.ExitCode == 0, tc.ToString());
    }

    [Fact]
    public void CreateOnNamedFilesLinksThemIntoTheFolder()
    {
        using var t = new TempDir();
        var r = Cli.Run("pool", "create", t["pool"], "--metadata", t["meta.img"], "--data", t["data.img"], "--data-size", "256M", "--metadata-size", "4M");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(4L << 20, new FileInfo(t["meta.img"]).Length);
        Assert.Equal(t["meta.img"], new FileInfo(Path.Combine(t["pool"], "metadata")).LinkTarget);
        var info = Cli.Run("pool", "info", t["pool"], "--json");
        using var doc = JsonDocument.Parse(info.Stdout);
        Assert.Equal(t["data.img"], doc.RootElement.GetProperty("data_path").GetString());
    }

    [Theory]
    [InlineData(new[] { "--block-size", "48K" }, 2, "multiple of 64 KiB")]
    [InlineData(new[] { "--data-size", "32K" }, 2, "smaller than one")]
    [InlineData(new[] { "--metadata-size", "1000" }, 2, "multiple of 4 KiB")]
    [InlineData(new[] { "--metadata", "/tmp/only-metadata" }, 2, "--metadata and --data go together")]
    [InlineData(new[] { "--metadata", "/dev/thinfast-no-such-device", "--data", "/dev/thinfast-no-such-data" }, 1, "does not exist")]
    public void BadCreateChangesNothing(string[] options, int exitCode, string message)
    {
        using var t = new TempDir();
        string pool = t["pool"];
        var r = Cli.Run(["pool", "create", pool, .. options]);
        Cli.AssertOneLineError(r, exitCode, message);
        Assert.False(Directory.Exists(pool), "a failed create left the pool folder behind");
        Assert.Empty(Directory.EnumerateFileSystemEntries(t.Path));
    }

    [Fact]
    public void CreateOverAnExistingPoolIsRefusedAndChangesNothing()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        var before = t.Snapshot(t["p"]);
        Cli.AssertOneLineError(Cli.Run("pool", "create", t["p"], "--data-size", "128M"), 1, "a pool already exists");
        TempDir.AssertUnchanged(before, t.Snapshot(t["p"]));
    }

    [Fact]
    public void StatusIsADmThinStatusLine()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        var r = Cli.Run("pool", "status", t["p"], "--low-water", "7");
        Assert.True(r.ExitCode == 0, r.ToString());
        // <transaction> <used>/<total meta> <used>/<total data> <held root> <mode> ... <low water>
        Assert.Matches(@"^0 \d+/\d+ 0/1024 - rw discard_passdown queue_if_no_space - 7\n", r.Stdout);
        var json = Cli.Run("pool", "status", t["p"], "--json");
        using var doc = JsonDocument.Parse(json.Stdout);
        Assert.Equal("rw", doc.RootElement.GetProperty("mode").GetString());
        Assert.Equal(64L << 20, doc.RootElement.GetProperty("free_data_bytes").GetInt64());
    }

    [Fact]
    public void GrowExtendsTheDataSpaceAndRefusesToShrink()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        var r = Cli.Run("pool", "grow", t["p"], "--data-size", "128M");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("from 1024 to 2048 blocks", r.Stdout);
        Assert.Equal(128L << 20, new FileInfo(Path.Combine(t["p"], "data")).Length);
        var before = t.Snapshot(t["p"]);
        Cli.AssertOneLineError(Cli.Run("pool", "grow", t["p"], "--data-size", "64M"), 1, "cannot shrink");
        TempDir.AssertUnchanged(before, t.Snapshot(t["p"]));
        Cli.AssertOneLineError(Cli.Run("pool", "grow", t["p"]), 2, "--data-size is required");
        Assert.Equal(0, Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [Path.Combine(t["p"], "metadata")]).ExitCode);
    }

    [Theory]
    [InlineData("info")]
    [InlineData("status")]
    [InlineData("check")]
    [InlineData("dump")]
    public void MissingPoolIsOneLine(string command)
    {
        using var t = new TempDir();
        Cli.AssertOneLineError(Cli.Run("pool", command, t["nothing-here"]), 1, "nothing-here");
    }

    [Fact]
    public void MissingDataFileIsOneLine()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        File.Delete(Path.Combine(t["p"], "data"));
        Cli.AssertOneLineError(Cli.Run("pool", "status", t["p"]), 1, "does not exist");
    }

    [Fact]
    public void TruncatedDataFileIsRefused()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        using (var f = new FileStream(Path.Combine(t["p"], "data"), FileMode.Open))
            f.SetLength(32L << 20);
        Cli.AssertOneLineError(Cli.Run("volume", "create", t["p"], "v", "--size", "1M"), 1, "truncated data device");
    }

    [Fact]
    public void CorruptMetadataIsOneLineAndNothingChanges()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        string md = Path.Combine(t["p"], "metadata");
        using (var f = new FileStream(md, FileMode.Open))
        {
            f.Position = 100;
            f.WriteByte(0x5A);
        }
        var before = t.Snapshot(t["p"]);
        foreach (string[] args in new[] { new[] { "pool", "info", t["p"] }, ["pool", "status", t["p"]], ["volume", "create", t["p"], "v", "--size", "1M"], ["volume", "list", t["p"]], ["pool", "dump", t["p"]] })
            Cli.AssertOneLineError(Cli.Run(args), 1, "superblock");
        TempDir.AssertUnchanged(before, t.Snapshot(t["p"]));
    }

    [Fact]
    public void APoolOpenInAnotherProcessIsRefused()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        // The engine's lock is flock(LOCK_EX) on pool.json.lock (FileShare.None): hold it here.
        using var held = new FileStream(Path.Combine(t["p"], "pool.json.lock"), FileMode.Open, FileAccess.ReadWrite, FileShare.None);
        var before = t.Snapshot(t["p"]);
        foreach (string[] args in new[] { new[] { "pool", "info", t["p"] }, ["pool", "status", t["p"]], ["pool", "grow", t["p"], "--data-size", "1G"],
                     ["pool", "check", t["p"]], ["pool", "dump", t["p"]], ["volume", "create", t["p"], "v", "--size", "1M"], ["volume", "list", t["p"]], ["serve", t["p"]] })
            Cli.AssertOneLineError(Cli.Run(args), 1, "is open in another process");
        TempDir.AssertUnchanged(before, t.Snapshot(t["p"]));
    }
}
