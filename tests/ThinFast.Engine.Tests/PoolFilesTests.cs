using ThinFast.IO;

namespace ThinFast.Engine.Tests;

/// <summary>Pools on real files with O_DIRECT, through the IO layer's backends.</summary>
public class PoolFilesTests
{
    [Theory]
    [InlineData(BlockDeviceBackend.IoUring)]
    [InlineData(BlockDeviceBackend.Portable)]
    public async Task APoolOnFilesRoundTripsAndRefusesASecondOpener(BlockDeviceBackend backend)
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-files-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            var io = new BlockDeviceOptions { Backend = backend };
            string basePath = Path.Combine(dir, "base.img");
            var baseBytes = PoolHarness.Pattern(3 << 20, 1);
            File.WriteAllBytes(basePath, baseBytes);
            var data = PoolHarness.Pattern(200_000, 2);
            using (var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, new PoolOptions(), io))
            {
                var v = pool.CreateVolume("vm", 4 << 20, basePath);
                await v.WriteAsync(123_456, data);
                await v.FlushAsync();
                var e = Assert.Throws<PoolException>(() => ThinPool.OpenFiles(files, new PoolOptions(), io));
                Assert.Contains("open in another process", e.Message);
            }
            using (var pool = ThinPool.OpenFiles(files, new PoolOptions(), io))
            {
                var v = pool.GetVolume("vm");
                var back = new byte[4 << 20];
                await v.ReadAsync(0, back);
                var expected = new byte[4 << 20];
                baseBytes.CopyTo(expected, 0);
                data.CopyTo(expected, 123_456);
                Assert.True(back.AsSpan().SequenceEqual(expected));
            }
            Assert.Equal(baseBytes, File.ReadAllBytes(basePath));
            ThinFast.Testing.ExternalTool.AssertMetadataClean(files.MetadataPath);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
