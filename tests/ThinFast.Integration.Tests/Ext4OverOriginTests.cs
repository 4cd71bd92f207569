using System.Diagnostics;

namespace ThinFast.Integration.Tests;

/// <summary>An ext4 base image as the external origin of two thin volumes, each exported over NBD
/// and mounted by the kernel through nbdfuse and a loop device (needs root, FUSE and loop).</summary>
public class Ext4OverOriginTests
{
    private const long BaseSize = 64L << 20;

    [Fact(Timeout = 120_000)] // a hang (say, a deadlock between server and pool) fails instead of stalling CI
    public async Task Ext4OnThinVolumesOverOneBaseImage()
    {
        await using var s = new ThinServer();
        string source = s.PathOf("base-files");
        var baseFiles = new Dictionary<string, string>();
        var random = new Random(7);
        foreach (var (name, length) in new[] { ("etc/hostname", 9), ("bin/tool", 3 << 20), ("var/lib/data.bin", 700_001), ("empty", 0) })
        {
            string path = Path.Combine(source, name);
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            var bytes = new byte[length];
            random.NextBytes(bytes);
            File.WriteAllBytes(path, bytes);
            baseFiles[name] = ThinServer.Sha256(path);
        }
        string baseImage = s.PathOf("base.img");
        await Clients.RunOkAsync("mkfs.ext4", "-q", "-F", "-b", "4096", "-d", source, baseImage, $"{BaseSize / 1024}k");
        string baseSum = ThinServer.Sha256(baseImage);

        s.Pool.CreateVolume("vm1", BaseSize, baseImage);
        s.Pool.CreateVolume("vm2", BaseSize, baseImage);
        s.Serve();

        var written = new Dictionary<string, byte[]>
        {
            ["vm1-note.txt"] = "written through ext4 on a thin volume\n"u8.ToArray(),
            ["bin/vm1-big.bin"] = RandomBytes(5 << 20, seed: 8),
        };

        await using (var vm1 = await MountedVolume.MountAsync(s, "vm1"))
        {
            AssertFiles(vm1.Root, baseFiles);
            foreach (var (name, bytes) in written)
                await File.WriteAllBytesAsync(Path.Combine(vm1.Root, name), bytes, TestContext.Current.CancellationToken);
            await vm1.UnmountAsync();
            var fsck = await Clients.RunAsync("e2fsck", "-fn", vm1.LoopDevice);
            Assert.True(fsck.ExitCode == 0, $"e2fsck on vm1: {fsck}");
            await vm1.RemountAsync();
            AssertFiles(vm1.Root, baseFiles);
            foreach (var (name, bytes) in written)
            {
                byte[] readBack = await File.ReadAllBytesAsync(Path.Combine(vm1.Root, name), TestContext.Current.CancellationToken);
                Assert.True(bytes.AsSpan().SequenceEqual(readBack), $"{name} differs after remount");
            }
        }

        await using (var vm2 = await MountedVolume.MountAsync(s, "vm2"))
        {
            AssertFiles(vm2.Root, baseFiles);
            foreach (var name in written.Keys)
                Assert.False(File.Exists(Path.Combine(vm2.Root, name)), $"vm2 sees vm1's {name}");
        }

        Assert.Equal(baseSum, ThinServer.Sha256(baseImage));
        Assert.True(s.Pool.GetVolume("vm1").MappedBlocks > s.Pool.GetVolume("vm2").MappedBlocks);
        await s.CloseAndCheckAsync();
    }

    private static byte[] RandomBytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    private static void AssertFiles(string root, Dictionary<string, string> expected)
    {
        foreach (var (name, sum) in expected)
            Assert.True(sum == ThinServer.Sha256(Path.Combine(root, name)), $"{name} reads back with a different sha256");
    }

    /// <summary>nbdfuse exposing one export as a file, a loop device on it and an ext4 mount; every
    /// layer is taken down on dispose even when the test failed half-way.</summary>
    private sealed class MountedVolume : IAsyncDisposable
    {
        private readonly string _fuseDir;
        private readonly Process _nbdfuse;
        private bool _mounted;

        private MountedVolume(string fuseDir, Process nbdfuse, string root)
        {
            _fuseDir = fuseDir;
            _nbdfuse = nbdfuse;
            Root = root;
        }

        public string Root { get; }

        public string LoopDevice { get; private set; } = "";

        public static async Task<MountedVolume> MountAsync(ThinServer s, string export)
        {
            string fuseDir = s.PathOf($"fuse-{export}");
            string root = s.PathOf($"mnt-{export}");
            Directory.CreateDirectory(fuseDir);
            Directory.CreateDirectory(root);
            Clients.Require("fusermount3");
            Clients.Require("losetup");
            var nbdfuse = Clients.Start("nbdfuse", s.PathOf($"nbdfuse-{export}.log"), Path.Combine(fuseDir, "nbd"), s.UnixUri(export));
            var volume = new MountedVolume(fuseDir, nbdfuse, root);
            try
            {
                string file = Path.Combine(fuseDir, "nbd");
                var deadline = Stopwatch.StartNew();
                while (!File.Exists(file))
                {
                    if (nbdfuse.HasExited)
                        Assert.Fail($"nbdfuse exited with {nbdfuse.ExitCode}: {File.ReadAllText(s.PathOf($"nbdfuse-{export}.log"))}");
                    if (deadline.Elapsed > TimeSpan.FromSeconds(20))
                        Assert.Fail("nbdfuse did not create its file within 20 s");
                    await Task.Delay(50);
                }
                var loop = await Clients.RunOkAsync("losetup", "--find", "--show", file);
                volume.LoopDevice = loop.StdOut.Trim();
                await volume.RemountAsync();
                return volume;
            }
            catch
            {
                await volume.DisposeAsync();
                throw;
            }
        }

        public async Task RemountAsync()
        {
            await Clients.RunOkAsync("mount", "-t", "ext4", LoopDevice, Root);
            _mounted = true;
        }

        public async Task UnmountAsync()
        {
            await Clients.RunOkAsync("umount", Root);
            _mounted = false;
        }

        public async ValueTask DisposeAsync()
        {
            if (_mounted)
                await Clients.RunAsync("umount", Root);
            if (LoopDevice.Length > 0)
                await Clients.RunAsync("losetup", "-d", LoopDevice);
            await Clients.RunAsync("fusermount3", "-u", _fuseDir);
            if (!_nbdfuse.WaitForExit(TimeSpan.FromSeconds(10)))
                _nbdfuse.Kill();
            _nbdfuse.Dispose();
        }
    }
}
