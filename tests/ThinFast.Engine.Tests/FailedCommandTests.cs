using System.Security.Cryptography;
using ThinFast.IO;
using ThinFast.Metadata;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>An administrative command that fails (here: on damaged metadata) must leave the pool as
/// it found it, byte for byte: the manifest, the metadata and the data. A delete that dropped the
/// volume from pool.json and then failed in the metadata left a device no volume named.</summary>
public class FailedCommandTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    private static string Digest(string path) => Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path)));

    [Fact]
    public async Task DamagedMetadataIsRefusedBeforeADeleteChangesAnyByteOfThePool()
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-failed-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            using (var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, new PoolOptions()))
            {
                var vm = pool.CreateVolume("vm", 64L << 20);
                var sector = PoolHarness.Pattern(4096, 7);
                // Enough mappings for a bottom tree of several leaves, so damage can land where only
                // the delete reads (a leaf the open never touches).
                for (int i = 0; i < 700; i++)
                    await vm.WriteAsync((long)(i * 37 % 1000) * B, sector);
                await vm.FlushAsync();
                pool.CreateSnapshot("vm", "snap");
                var other = pool.CreateVolume("other", 4 << 20);
                await other.WriteAsync(0, sector);
                await other.FlushAsync();
            }
            byte[] metadata = File.ReadAllBytes(files.MetadataPath), manifest = File.ReadAllBytes(files.ManifestPath);
            string data = Digest(files.DataPath);
            var used = Enumerable.Range(0, metadata.Length / 4096).Where(b => metadata.AsSpan(b * 4096, 4096).ContainsAnyExcept((byte)0)).ToArray();
            var rng = new Random(11);
            int failedOpens = 0, failedDeletes = 0, deletes = 0;
            for (int trial = 0; trial < 60; trial++)
            {
                File.WriteAllBytes(files.MetadataPath, metadata);
                File.WriteAllBytes(files.ManifestPath, manifest);
                var damaged = (byte[])metadata.Clone();
                int block = used[rng.Next(used.Length)];
                damaged[block * 4096 + rng.Next(4096)] ^= (byte)(1 << rng.Next(8));
                File.WriteAllBytes(files.MetadataPath, damaged);
                try
                {
                    using var pool = ThinPool.OpenFiles(files, new PoolOptions());
                    try
                    {
                        pool.DeleteVolume("vm");
                        deletes++;
                        continue;   // the damage was nowhere the delete looks: nothing to compare
                    }
                    catch (Exception e) when (e is PoolException or BlockDeviceException or InvalidDataException or MetadataCorruptException)
                    {
                        failedDeletes++;
                    }
                }
                catch (Exception e) when (e is PoolException or BlockDeviceException or InvalidDataException or MetadataCorruptException)
                {
                    failedOpens++;
                }
                Assert.True(damaged.AsSpan().SequenceEqual(File.ReadAllBytes(files.MetadataPath)), $"trial {trial} (block {block}): a failed command changed the metadata");
                Assert.True(manifest.AsSpan().SequenceEqual(File.ReadAllBytes(files.ManifestPath)), $"trial {trial} (block {block}): a failed command changed pool.json:\n{File.ReadAllText(files.ManifestPath)}");
                Assert.Equal(data, Digest(files.DataPath));
            }
            // The open reads every tree (it recounts data blocks to reclaim leaks), so damage the
            // delete would trip over is refused before anything is written; the sweep must at least
            // have been refused, and have compared, in some trials. The delete's own failure path is
            // driven by device faults below.
            Assert.True(failedOpens + failedDeletes >= 10, $"{failedDeletes} failed deletes, {failedOpens} failed opens, {deletes} deletes: the damage was never noticed");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData(FaultTargets.Read, 1.0, 1, false)]    // the delete may find every block it reads cached
    [InlineData(FaultTargets.Write, 1.0, 1, true)]
    [InlineData(FaultTargets.Flush, 1.0, 1, true)]
    [InlineData(FaultTargets.Write | FaultTargets.Flush, 0.3, 2, false)]
    [InlineData(FaultTargets.Write | FaultTargets.Flush, 0.3, 3, false)]
    [InlineData(FaultTargets.All, 0.2, 4, false)]
    public async Task ADeleteWhoseMetadataDeviceFailsLeavesTheVolumeWhollyThereOrWhollyGone(FaultTargets targets, double rate, int seed, bool mustFail)
    {
        var metadataMemory = new MemoryBlockDevice(PoolHarness.MetadataSize, name: "metadata");
        var metadata = new FaultInjectingDevice(metadataMemory, seed) { Enabled = false, ErrorRate = rate, ErrorTargets = targets };
        var dataMemory = new MemoryBlockDevice(64L * B, name: "data");
        using var h = new PoolHarness(64L * B, new PoolOptions { CommitInterval = TimeSpan.FromHours(1) }, size => size == PoolHarness.MetadataSize ? metadata : dataMemory);
        var vm = h.Pool.CreateVolume("vm", 32L * B);
        var other = h.Pool.CreateVolume("other", 4L * B);
        var vmData = PoolHarness.Pattern(20 * B, 1);
        var otherData = PoolHarness.Pattern(B, 2);
        await vm.WriteAsync(0, vmData);
        await vm.FlushAsync();
        await other.WriteAsync(0, otherData);
        await other.FlushAsync();
        byte[] manifest = File.ReadAllBytes(h.ManifestPath);

        metadata.Enabled = true;
        Exception? failure = Record.Exception(() => h.Pool.DeleteVolume("vm"));
        metadata.Enabled = false;
        Assert.True(!mustFail || failure is not null, "the delete succeeded although every metadata write or flush failed");
        if (failure is not null)
        {
            Assert.True(failure is PoolException or BlockDeviceException, $"the delete failed with {failure}");
            bool stillThere = h.Pool.VolumeRecords.Any(v => v.Name == "vm");
            // Only a commit that failed (and so may have landed) may leave the delete standing; the
            // pool is then read-only. A delete refused while the pool stays writable changed nothing.
            if (h.Pool.Mode == PoolMode.Write)
                Assert.True(stillThere, "a delete refused while the pool stayed writable removed the volume");
            // A delete refused before the metadata changed puts pool.json back as it was, byte for
            // byte; one whose commit failed may have landed, so the manifest keeps it deleted.
            if (stillThere)
                Assert.True(manifest.AsSpan().SequenceEqual(File.ReadAllBytes(h.ManifestPath)), "a refused delete left pool.json changed:\n" + File.ReadAllText(h.ManifestPath));
        }

        // What survives a crash now is one committed state: the volume with every byte, or no trace.
        h.CrashAndReopen(metadataMemory.ToArray(), dataMemory.ToArray());
        if (h.Pool.GetStatus().NeedsCheck)
        {
            // A failed commit set needs_check: the pool opens read-only and finishes nothing until
            // the operator has checked it. Do what `pool check --clear-needs-check` does, then the
            // next open must finish the delete the manifest recorded.
            Assert.NotNull(failure);
            Assert.Equal(PoolMode.ReadOnly, h.Pool.Mode);
            h.Pool.Dispose();
            byte[] checkedImage = ((MemoryBlockDevice)h.MetadataDevice).ToArray();
            string imagePath = Path.Combine(h.Directory, "needs-check.img");
            File.WriteAllBytes(imagePath, checkedImage);
            ExternalTool.AssertMetadataClean(imagePath);
            var image = new MemoryBlockDevice(checkedImage, name: "metadata");
            using (var md = ThinMetadata.Open(image))
            {
                md.SetNeedsCheck(false);
                md.Commit();
            }
            h.ReopenFrom(image, new MemoryBlockDevice(((MemoryBlockDevice)h.DataDevice).ToArray(), name: "data"));
        }
        var back = new byte[B];
        await h.Pool.GetVolume("other").ReadAsync(0, back);
        Assert.Equal(otherData, back);
        if (h.Pool.VolumeRecords.Any(v => v.Name == "vm"))
        {
            Assert.NotNull(failure);
            var all = new byte[20 * B];
            await h.Pool.GetVolume("vm").ReadAsync(0, all);
            Assert.True(all.AsSpan().SequenceEqual(vmData), "the volume a failed delete left lost data");
        }
        else
        {
            Assert.True(h.Pool.ReadMetadata(m => m.DeviceIds.Count) == 1, $"the deleted volume's device is still in the metadata (mode {h.Pool.Mode}, pending [{string.Join(",", PoolManifest.Load(h.ManifestPath).PendingDeviceIds)}])");
        }
        Assert.Empty(PoolManifest.Load(h.ManifestPath).PendingDeviceIds);
        h.AssertMetadataClean();
    }
}
