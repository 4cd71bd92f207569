using System.Text;
using ThinFast.IO;
using ThinFast.Metadata;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>A pool the Linux kernel's dm-thin wrote (tests/fixtures/kernel, made in a 6.12 guest):
/// ThinFast reads it as thin_dump does, serves its data, changes it, and the checkers still pass.</summary>
public class KernelPoolTests
{
    private const int B = 64 * 1024;

    [Fact]
    public async Task APoolWrittenByTheKernelOpensServesAndStaysClean()
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-kernel-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            FixtureFiles.Gunzip("kernel", "meta.img.gz", files.MetadataPath);
            FixtureFiles.Gunzip("kernel", "data.img.gz", files.DataPath);
            var dataImage = File.ReadAllBytes(files.DataPath);

            // The metadata layer alone: our XML equals thin_dump's, byte for byte.
            using (var device = BlockDevices.Open(files.MetadataPath, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable }))
            using (var metadata = ThinMetadata.Open(device))
            {
                var ours = new StringWriter();
                metadata.WriteXml(ours);
                var dump = ExternalTool.Run("thin_dump", [files.MetadataPath]);
                Assert.Equal(0, dump.ExitCode);
                Assert.Equal(dump.StdOut, ours.ToString());
                Assert.Equal(7UL, metadata.TransactionId);
            }

            // dm-thin keeps volume sizes in the kernel's table, so adopting the devices takes a
            // manifest: thin 1 and its snapshot 2 were 16 MiB.
            new PoolManifest
            {
                Volumes =
                [
                    new VolumeRecord { Name = "thin1", DeviceId = 1, Size = 16 << 20 },
                    new VolumeRecord { Name = "snap", DeviceId = 2, Size = 16 << 20 },
                ],
            }.Save(files.ManifestPath);
            using (var pool = ThinPool.OpenFiles(files, new PoolOptions()))
            {
                var thin = pool.GetVolume("thin1");
                var snap = pool.GetVolume("snap");
                var block = new byte[B];
                // Block 1 of thin 1 was rewritten after the snapshot: data block 5; the snapshot
                // keeps data block 1 (thin_dump: 1 -> 5 and 0..3 -> 0..3).
                await thin.ReadAsync(B, block);
                Assert.True(block.AsSpan().SequenceEqual(dataImage.AsSpan(5 * B, B)));
                await snap.ReadAsync(B, block);
                Assert.True(block.AsSpan().SequenceEqual(dataImage.AsSpan(1 * B, B)));
                // Block 100 holds "hello-kernel\n" and the zeros the kernel filled the rest with.
                await thin.ReadAsync(100L * B, block);
                Assert.Equal("hello-kernel\n", Encoding.ASCII.GetString(block, 0, 13));
                Assert.All(block[13..], b => Assert.Equal(0, b));

                // Change it: our writes, a new volume and a snapshot on top of the kernel's trees.
                await thin.WriteAsync(B + 100, new byte[] { 1, 2, 3 });
                await snap.WriteAsync(200L * B, Enumerable.Repeat((byte)7, B).ToArray());
                var fresh = pool.CreateVolume("fresh", 8 << 20);
                await fresh.WriteAsync(0, new byte[] { 9 });
                pool.CreateSnapshot("thin1", "thin1-snap");
                await thin.FlushAsync();
            }
            ExternalTool.AssertMetadataClean(files.MetadataPath);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
