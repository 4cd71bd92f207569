using ThinFast.Engine;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Cli;

/// <summary>
/// A pool opened for reading only (info, list, dump, check): the engine's process lock is taken the
/// same way ThinPool takes it (flock via FileShare.None on pool.json.lock), so a pool being served
/// is refused instead of read half-committed, and the metadata is opened read-only.
/// </summary>
internal sealed class OfflinePool : IDisposable
{
    private readonly FileStream _lock;
    private readonly IBlockDevice _device;

    private OfflinePool(PoolFiles files, FileStream processLock, IBlockDevice device, ThinMetadata metadata, PoolManifest manifest)
    {
        Files = files;
        _lock = processLock;
        _device = device;
        Metadata = metadata;
        Manifest = manifest;
    }

    public PoolFiles Files { get; }
    public ThinMetadata Metadata { get; }
    public PoolManifest Manifest { get; }

    public static OfflinePool Open(string dir)
    {
        var files = PoolFiles.InFolder(dir);
        if (!File.Exists(files.ManifestPath))
            throw new PoolException($"no pool at {dir} ({files.ManifestPath} missing)");
        var processLock = files.TakeProcessLock();
        IBlockDevice? device = null;
        try
        {
            var manifest = PoolManifest.Load(files.ManifestPath);
            if (!File.Exists(files.MetadataPath))
                throw new PoolException($"metadata device {files.MetadataPath} does not exist");
            device = BlockDevices.Open(files.MetadataPath, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
            var metadata = ThinMetadata.Open(device);
            try
            {
                manifest.CheckDevices(id => metadata.DeviceExists(id), files.ManifestPath);
                ThrowIfDataShort(files.DataPath, metadata);
            }
            catch
            {
                metadata.Dispose();
                throw;
            }
            return new OfflinePool(files, processLock, device, metadata, manifest);
        }
        catch
        {
            device?.Dispose();
            processLock.Dispose();
            throw;
        }
    }

    // The engine refuses to open such a pool; the offline commands must not list or describe it
    // as if it were whole.
    private static void ThrowIfDataShort(string dataPath, ThinMetadata metadata)
    {
        if (DataDeviceProblem(dataPath, metadata.DataBlockSizeSectors, metadata.DataBlockCount) is { } problem)
            throw new PoolException(problem);
    }

    /// <summary>Why the data device at <paramref name="dataPath"/> cannot back a space map of
    /// <paramref name="spaceMapBlocks"/> blocks (missing, or shorter), or null.</summary>
    internal static string? DataDeviceProblem(string dataPath, uint blockSizeSectors, ulong spaceMapBlocks)
    {
        if (!File.Exists(dataPath))
            return $"data device {dataPath} does not exist";
        using var data = BlockDevices.Open(dataPath, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
        return ThinPool.DataDeviceShortfall(dataPath, data.Length, blockSizeSectors, spaceMapBlocks);
    }

    public void Dispose()
    {
        Metadata.Dispose();
        _device.Dispose();
        _lock.Dispose();
    }
}

/// <summary>A DIR|METADATA argument: a pool directory (locked while in use) or a metadata
/// file or block device given directly, as thin_check and thin_dump take it.</summary>
internal sealed class MetadataLocation : IDisposable
{
    private readonly FileStream? _lock;

    private MetadataLocation(string metadataPath, FileStream? processLock, PoolManifest? manifest, string? dataPath = null)
    {
        MetadataPath = metadataPath;
        DataPath = dataPath;
        _lock = processLock;
        Manifest = manifest;
    }

    public string MetadataPath { get; }
    public PoolManifest? Manifest { get; }
    /// <summary>The pool's data device when a pool directory was named; null for bare metadata.</summary>
    public string? DataPath { get; }

    public static MetadataLocation Resolve(string target)
    {
        if (Directory.Exists(target))
        {
            var files = PoolFiles.InFolder(target);
            if (!File.Exists(files.ManifestPath))
                throw new PoolException($"no pool at {target} ({files.ManifestPath} missing)");
            var processLock = files.TakeProcessLock();
            try
            {
                return new MetadataLocation(files.MetadataPath, processLock, PoolManifest.Load(files.ManifestPath), files.DataPath);
            }
            catch
            {
                processLock.Dispose();
                throw;
            }
        }
        if (!File.Exists(target))
            throw new PoolException($"{target} does not exist (expected a pool directory or a metadata file or device)");
        return new MetadataLocation(target, null, null);
    }

    public void Dispose() => _lock?.Dispose();
}
