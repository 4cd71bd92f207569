using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>Pools on real files with O_DIRECT, through the IO layer's backends.</summary>
public class PoolFilesTests
{
    private const int B = PoolOptions.DefaultBlockSize;

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
            int baseLength = 3 * B + 1000;   // ends 1000 bytes into block 3, mid-sector
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

    [Fact]
    public async Task AnOriginFileThatGrewByLessThanTheAlignmentIsRefusedAtReopen()
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-grow-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            var io = new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable };
            string basePath = Path.Combine(dir, "base.img");
            int baseLength = 3 * B;   // a multiple of every DIO alignment: no tail
            File.WriteAllBytes(basePath, PoolHarness.Pattern(baseLength, 21));
            var before = new byte[4096];
            using (var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, new PoolOptions(), io))
            {
                var v = pool.CreateVolume("vm", 8L * B, basePath);
                Assert.Equal(baseLength, pool.VolumeRecords.Single().OriginSize);
                await v.ReadAsync(baseLength, before);
                Assert.False(before.AsSpan().ContainsAnyExcept((byte)0));
            }

            using (var f = new FileStream(basePath, FileMode.Append))
                f.Write(PoolHarness.Pattern(100, 22));

            using (var pool = ThinPool.OpenFiles(files, new PoolOptions(), io))
            {
                var v = pool.GetVolume("vm");
                var after = new byte[4096];
                if (v.UnavailableReason is null)
                    await v.ReadAsync(baseLength, after);
                Assert.True(v.UnavailableReason is not null,
                    $"the origin grew from {baseLength} to {baseLength + 100} bytes and the volume still serves; bytes past the old end now read {(after.AsSpan().ContainsAnyExcept((byte)0) ? "the appended data" : "zeros")}");
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public async Task AnOriginReachedThroughASymlinkServesItsTargetAndThePoolReopens()
    {
        // The length must come from the file opened, not from the path: lstat of a symlink gives
        // the link's own length (before, 44 bytes: an OverflowException out of CreateVolume).
        var dir = Directory.CreateTempSubdirectory("thinfast-link-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            var io = new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable };
            string target = Path.Combine(dir, "base-v1.img");
            string link = Path.Combine(dir, "base.img");
            var bytes = PoolHarness.Pattern(3 * B + 700, 31);
            File.WriteAllBytes(target, bytes);
            File.CreateSymbolicLink(link, target);
            var expected = new byte[8 * B];
            bytes.CopyTo(expected, 0);
            var back = new byte[8 * B];
            using (var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, new PoolOptions(), io))
            {
                var v = pool.CreateVolume("linked", 8L * B, link);
                Assert.Equal(bytes.Length, pool.VolumeRecords.Single().OriginSize);
                await v.ReadAsync(0, back);
                Assert.Equal(expected, back);
            }
            using (var pool = ThinPool.OpenFiles(files, new PoolOptions(), io))
            {
                var v = pool.GetVolume("linked");
                Assert.Null(v.UnavailableReason);
                await v.ReadAsync(0, back);
                Assert.Equal(expected, back);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void APoolWhoseOriginBecameASymlinkStillOpens()
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-link2-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir);
            var io = new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable };
            string path = Path.Combine(dir, "base.img");
            string target = Path.Combine(dir, "base-v1.img");
            File.WriteAllBytes(path, PoolHarness.Pattern(3 * B, 31));
            using (var pool = ThinPool.CreateFiles(files, 8 << 20, 64 << 20, new PoolOptions(), io))
            {
                pool.CreateVolume("vm", 8L * B, path);
                pool.CreateVolume("other", 8L * B);
            }
            // The same bytes, now reached through a symlink, as an image store that versions its
            // files would leave them.
            File.Move(path, target);
            File.CreateSymbolicLink(path, target);
            using var reopened = ThinPool.OpenFiles(files, new PoolOptions(), io);
            Assert.Null(reopened.GetVolume("vm").UnavailableReason);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void ExtentsOverAnOriginWithATailStayOnSectorBoundaries()
    {
        var dir = Directory.CreateTempSubdirectory("thinfast-ext-").FullName;
        try
        {
            string basePath = Path.Combine(dir, "base.img");
            int baseLength = 3 * B + 1000;
            File.WriteAllBytes(basePath, PoolHarness.Pattern(baseLength, 21));
            using var pool = ThinPool.CreateFiles(PoolFiles.InFolder(dir), 8 << 20, 64 << 20, new PoolOptions(), new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable });
            var v = pool.CreateVolume("vm", 8L * B, basePath);
            var extents = new VolumeExtent[8];
            int n = v.GetExtents(0, v.Size, extents);
            Assert.True(n > 0, "no extents");
            for (int i = 0; i < n; i++)
                Assert.Equal(i == 0 ? 0 : extents[i - 1].Offset + extents[i - 1].Length, extents[i].Offset);
            Assert.Equal(v.Size, extents[n - 1].Offset + extents[n - 1].Length);
            var bad = extents[..n].Where(e => e.Length % 512 != 0 || e.Offset % 512 != 0).ToList();
            Assert.True(bad.Count == 0, "extents not on sector boundaries: " + string.Join(", ", bad.Select(e => $"[{e.Offset}, +{e.Length}) {e.Flags}")));
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Theory]
    [InlineData(BlockDeviceBackend.IoUring)]
    [InlineData(BlockDeviceBackend.Portable)]
    public async Task OnALoopDeviceANewVolumeNeverReadsADeletedVolumesData(BlockDeviceBackend backend)
    {
        // Passdown off: the deleted volume's data stays on the device, as it may on any disk
        // (BLKDISCARD promises nothing), so only zeroing and copying stand between it and b.
        using var loop = new LoopDevice(16L * B, 4096);
        var dir = Directory.CreateTempSubdirectory("thinfast-loop-pool-").FullName;
        try
        {
            var files = PoolFiles.InFolder(dir) with { DataPath = loop.Path };
            var io = new BlockDeviceOptions { Backend = backend };
            using var pool = ThinPool.CreateFiles(files, 8 << 20, 16L * B, new PoolOptions { DiscardPassdown = false }, io);
            var a = pool.CreateVolume("a", 16L * B);
            var secret = PoolHarness.Pattern(16 * B, 41);
            await a.WriteAsync(0, secret);
            await a.FlushAsync();
            pool.DeleteVolume("a");

            var b = pool.CreateVolume("b", 16L * B);
            var expected = new byte[16 * B];
            var data = PoolHarness.Pattern(4096, 42);
            await b.WriteAsync(B + 8192, data);                                       // a partial first write
            data.CopyTo(expected, B + 8192);
            await b.WriteZeroesAsync(2L * B, B, ZeroFlags.None);                      // NO_HOLE, a whole block
            await b.WriteZeroesAsync(3L * B + 4096, 4096, ZeroFlags.None);            // NO_HOLE, part of a block
            await b.WriteZeroesAsync(4L * B, 4096, ZeroFlags.MayDeallocate | ZeroFlags.FastOnly);
            Assert.Equal(3UL, pool.GetStatus().UsedDataBlocks);
            await b.FlushAsync();
            var back = new byte[16 * B];
            await b.ReadAsync(0, back);
            Assert.True(back.AsSpan().SequenceEqual(expected), $"b reads other data at byte {back.AsSpan().CommonPrefixLength(expected)}");
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }
}
