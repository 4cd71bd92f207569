using System.Security.Cryptography;

namespace ThinFast.Cli.Tests;

/// <summary>The mistakes operators make: a path given to the wrong option, a pool whose manifest
/// went missing, a base image that is the pool itself, a careless umask. None of them may cost a
/// byte of a pool, or let another user read it.</summary>
public sealed class OperatorSafetyTests
{
    private const UnixFileMode OwnerOnly = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private static string Digest(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    private static void AssertPoolClean(string dir)
    {
        var check = Cli.Run("pool", "check", dir);
        Assert.True(check.ExitCode == 0, check.ToString());
    }

    [Fact]
    public void ServeNeverRemovesASocketPathThatIsNotASocket()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        string metadata = Path.Combine(dir, "metadata");
        string before = Digest(metadata);
        var r = Cli.Run("serve", dir, "--socket", metadata);
        Cli.AssertServeError(r, "is not a socket");
        Assert.True(File.Exists(metadata), "serve removed the pool's metadata");
        Assert.Equal(before, Digest(metadata));
        AssertPoolClean(dir);
    }

    [Fact]
    public void ServeNeverWritesItsPidOverAPoolFileOrAnyOtherFile()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        string manifest = Path.Combine(dir, "pool.json");
        string before = Digest(manifest);
        Cli.AssertServeError(Cli.Run("serve", dir, "--socket", t["s.sock"], "--pid-file", manifest), "pool's pool.json");
        Assert.Equal(before, Digest(manifest));

        string notes = t["notes.txt"];
        File.WriteAllText(notes, "an operator's notes\n");
        Cli.AssertServeError(Cli.Run("serve", dir, "--socket", t["s.sock"], "--pid-file", notes), "is not a pid file");
        Assert.Equal("an operator's notes\n", File.ReadAllText(notes));
        AssertPoolClean(dir);
    }

    [Fact]
    public void PoolCreateOverAPoolWhoseManifestIsMissingRefusesAndKeepsItsMetadata()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        Assert.Equal(0, Cli.Run("volume", "create", dir, "vm2", "--size", "4M").ExitCode);
        string metadata = Path.Combine(dir, "metadata");
        string before = Digest(metadata);
        File.Delete(Path.Combine(dir, "pool.json"));
        var r = Cli.Run("pool", "create", dir, "--data-size", "128M");
        Cli.AssertOneLineError(r, 1, "already holds dm-thin metadata");
        Assert.Equal(before, Digest(metadata));
        Assert.False(File.Exists(Path.Combine(dir, "pool.json")), "a refused create left a manifest behind");
    }

    [Fact]
    public void AVolumeOverThePoolsOwnDataOrMetadataIsRefused()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        File.CreateSymbolicLink(t["base.img"], Path.Combine(dir, "data"));
        foreach (var (origin, what) in new[] { (Path.Combine(dir, "data"), "own data"), (Path.Combine(dir, "metadata"), "own metadata"), (t["base.img"], "own data") })
        {
            var r = Cli.Run("volume", "create", dir, "peek", "--origin", origin);
            Cli.AssertOneLineError(r, 1, what);
        }
        var list = Cli.Run("volume", "list", dir);
        Assert.DoesNotContain("peek", list.Stdout);
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void PoolFilesAndTheSocketAreTheOwnersOnlyWhateverTheUmask()
    {
        using var t = new TempDir();
        string dir = t["p"];
        var create = Cli.Tool("/bin/sh", ["-c", $"umask 000 && '{Cli.Exe}' pool create '{dir}' --data-size 128M && '{Cli.Exe}' volume create '{dir}' vm --size 4M"]);
        Assert.True(create.ExitCode == 0, create.ToString());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, File.GetUnixFileMode(dir));
        foreach (string name in new[] { "metadata", "data", "pool.json", "pool.json.lock" })
        {
            var mode = File.GetUnixFileMode(Path.Combine(dir, name));
            Assert.True(mode == OwnerOnly, $"{name} is {mode}, not owner read/write only");
        }

        string socket = t["nbd.sock"];
        using var server = new ServeTests.Server("serve", dir, "--socket", socket);
        Assert.Equal(OwnerOnly, File.GetUnixFileMode(socket));
    }

    [Fact]
    public void TcpWithoutAnAddressListensOnLoopbackOnlyAndEveryAddressIsWarnedAbout()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        using (var server = new ServeTests.Server("serve", dir, "--socket", t["a.sock"], "--tcp", ":0"))
        {
            Assert.Contains("tcp:127.0.0.1:", server.ReadyLine);
            Assert.DoesNotContain("not loopback", server.Log);
        }
        using (var server = new ServeTests.Server("serve", dir, "--socket", t["b.sock"], "--tcp", "0.0.0.0:0"))
            Assert.Contains("warning: serving NBD on 0.0.0.0, not loopback, without TLS", server.Log);
    }

    [Fact]
    public void AHandEditedManifestIsRefusedWithOneClearLineNotAStackTrace()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        string manifest = Path.Combine(dir, "pool.json");
        string good = File.ReadAllText(manifest);

        // A device id the metadata lacks: before, volume list died with a stack trace (exit 134).
        File.WriteAllText(manifest, good.Replace("\"device_id\": 1", "\"device_id\": 7"));
        foreach (var command in new[] { new[] { "volume", "list", dir }, new[] { "serve", dir, "--socket", t["s.sock"] } })
        {
            var r = Cli.Run(command);
            Assert.True(r.ExitCode == 1, r.ToString());
            Assert.Contains("names volume 'vm' as dev 7, which the metadata does not have", r.Stderr);
            Assert.DoesNotContain("   at ", r.Stderr);
        }

        // Sizes and names no volume can have: before, they were served.
        foreach (var (edit, expected) in new[]
        {
            (good.Replace("\"size\": 16777216", "\"size\": -4096"), "has size -4096"),
            (good.Replace("\"size\": 16777216", "\"size\": 0"), "has size 0"),
            (good.Replace("\"size\": 16777216", "\"size\": 9223372036854775807"), "has size 9223372036854775807"),
            (good.Replace("\"name\": \"vm\"", "\"name\": \"../../etc/x\""), "volume name '../../etc/x' must be"),
        })
        {
            File.WriteAllText(manifest, edit);
            Cli.AssertOneLineError(Cli.Run("volume", "list", dir), 1, expected);
            Cli.AssertServeError(Cli.Run("serve", dir, "--socket", t["s.sock"]), expected);
        }
        File.WriteAllText(manifest, good);
        Assert.Equal(0, Cli.Run("volume", "list", dir).ExitCode);
    }

    [Fact]
    public void APoolWhoseDataFileWasTruncatedIsNeverCalledClean()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t, "vm");
        string data = Path.Combine(dir, "data");
        foreach (long length in new[] { 0L, 64L << 20 })
        {
            using (var f = File.OpenHandle(data, FileMode.Open, FileAccess.ReadWrite))
                RandomAccess.SetLength(f, length);
            var check = Cli.Run("pool", "check", dir);
            Assert.True(check.ExitCode == 1, check.ToString());
            Assert.Contains("wrong or truncated data device", check.Stdout);
            Assert.DoesNotContain("clean", check.Stdout);
            var json = Cli.Run("pool", "check", dir, "--json");
            Assert.Equal(1, json.ExitCode);
            Assert.Contains("\"Clean\":false", json.Stdout.Replace(" ", ""), StringComparison.OrdinalIgnoreCase);
            Cli.AssertOneLineError(Cli.Run("volume", "list", dir), 1, "wrong or truncated data device");
            Cli.AssertOneLineError(Cli.Run("pool", "info", dir), 1, "wrong or truncated data device");
        }
        using (var f = File.OpenHandle(data, FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.SetLength(f, 128L << 20);
        AssertPoolClean(dir);
        Assert.Equal(0, Cli.Run("volume", "list", dir).ExitCode);
    }

    [Fact]
    [System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
    public void AnOriginOthersCanWriteIsWarnedAboutAtCreateAndAtEveryOpen()
    {
        using var t = new TempDir();
        string dir = ServeTests.NewPool(t);
        string origin = t["base.img"];
        File.WriteAllBytes(origin, new byte[1 << 20]);
        File.SetUnixFileMode(origin, OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        var quiet = Cli.Run("volume", "create", dir, "a", "--origin", origin);
        Assert.True(quiet.ExitCode == 0, quiet.ToString());
        Assert.DoesNotContain("warning", quiet.Stderr);

        File.SetUnixFileMode(origin, OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead | UnixFileMode.OtherWrite);
        var created = Cli.Run("volume", "create", dir, "b", "--origin", origin);
        Assert.True(created.ExitCode == 0, created.ToString());
        Assert.Contains($"origin {origin} of volume 'b' is writable by every user (mode 0646)", created.Stderr);
        // Opening the pool activates a and b on the same origin: both are named.
        var opened = Cli.Run("volume", "create", dir, "c", "--size", "1M");
        Assert.Contains("volume 'a' is writable by every user", opened.Stderr);
        Assert.Contains("volume 'b' is writable by every user", opened.Stderr);

        File.SetUnixFileMode(origin, OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.GroupWrite);
        Assert.Contains("is writable by its group (mode 0660)", Cli.Run("volume", "create", dir, "d", "--size", "1M").Stderr);

        // The file read-only, but in a folder anyone can write: it can be replaced by a rename.
        string shared = t["shared"];
        Directory.CreateDirectory(shared);
        string replaceable = Path.Combine(shared, "base.img");
        File.WriteAllBytes(replaceable, new byte[1 << 20]);
        File.SetUnixFileMode(replaceable, OwnerOnly | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        const UnixFileMode Open = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute
            | UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute
            | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;
        File.SetUnixFileMode(shared, Open);
        Assert.Contains($"is in {shared}, which every user can write (mode 0777)", Cli.Run("volume", "create", dir, "e", "--origin", replaceable).Stderr);
        // With the sticky bit (as /tmp), only the file's owner may rename over it: no warning.
        File.SetUnixFileMode(shared, Open | UnixFileMode.StickyBit);
        var sticky = Cli.Run("volume", "create", dir, "f", "--origin", replaceable);
        Assert.DoesNotContain($"is in {shared}", sticky.Stderr);
    }
}
