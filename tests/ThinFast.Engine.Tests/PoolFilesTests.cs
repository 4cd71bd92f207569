using ThinFast.IO;
using ThinFast.Testing;

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

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task OriginsAreReadThroughThePageCacheAndCopiedDirect(bool originPageCache)
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-origin-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            string basePath = Path.Combine(dir, "base.img");
            var baseBytes = PoolHarness.Pattern(2 << 20, 5);
            File.WriteAllBytes(basePath, baseBytes);
            var options = new PoolOptions { OriginPageCache = originPageCache };
            using var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, options, new BlockDeviceOptions { Backend = BlockDeviceBackend.IoUring });
            var v = pool.CreateVolume("vm", 2 << 20, basePath);
            // Cached: one handle through the page cache for guest reads, one O_DIRECT for copies.
            var handles = OpenFiles.ODirectFlagsOf(basePath).Order().ToArray();
            Assert.Equal(originPageCache ? [false, true] : [true], handles);

            // A partial first write copies the rest of its block from the origin (the direct
            // handle); reads of unwritten blocks come from the origin (the cached one).
            var expected = baseBytes.ToArray();
            var data = PoolHarness.Pattern(4096, 6);
            await v.WriteAsync(70_000 & ~4095, data);
            data.CopyTo(expected, 70_000 & ~4095);
            var back = new byte[2 << 20];
            await v.ReadAsync(0, back);
            Assert.True(back.AsSpan().SequenceEqual(expected));
            await v.FlushAsync();
            Assert.Equal(baseBytes, File.ReadAllBytes(basePath));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
    [Theory]
    [InlineData(BlockDeviceBackend.IoUring, true)]
    [InlineData(BlockDeviceBackend.IoUring, false)]
    [InlineData(BlockDeviceBackend.Portable, false)]
    public async Task AnOriginWhoseLengthIsNotAMultipleOfTheSectorReadsItsTailBytes(BlockDeviceBackend backend, bool originPageCache)
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-tail-").FullName;
        try
        {
            string basePath = Path.Combine(dir, "base.img");
            int baseLength = 3 * PoolOptions.DefaultBlockSize + 1000;   // ends 1000 bytes into block 3, mid-sector
            var baseBytes = PoolHarness.Pattern(baseLength, 21);
            File.WriteAllBytes(basePath, baseBytes);
            using var pool = ThinPool.CreateFiles(PoolFiles.InFolder(dir), 8 << 20, 64 << 20, new PoolOptions { OriginPageCache = originPageCache }, new BlockDeviceOptions { Backend = backend });
            var v = pool.CreateVolume("vm", 8L * PoolOptions.DefaultBlockSize, basePath);
            var expected = new byte[8 * PoolOptions.DefaultBlockSize];
            baseBytes.CopyTo(expected, 0);

            // Read through the origin, then provision block 3 with a partial write, which copies
            // the tail from the origin.
            var back = new byte[expected.Length];
            await v.ReadAsync(0, back);
            Assert.True(back.AsSpan().SequenceEqual(expected), $"first difference at byte {back.AsSpan().CommonPrefixLength(expected)} (origin ends at {baseLength})");
            var data = PoolHarness.Pattern(4096, 22);
            long at = 3L * PoolOptions.DefaultBlockSize + 8192;
            await v.WriteAsync(at, data);
            data.CopyTo(expected, at);
            await v.ReadAsync(0, back);
            Assert.True(back.AsSpan().SequenceEqual(expected), $"after the copy: first difference at byte {back.AsSpan().CommonPrefixLength(expected)} (origin ends at {baseLength})");
            Assert.Equal(baseBytes, File.ReadAllBytes(basePath));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
