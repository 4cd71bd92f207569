using ThinFast.IO;

namespace ThinFast.Engine;

/// <summary>
/// Where a pool lives: metadata and data (files or block devices) and the manifest. The usual
/// layout is a folder holding <c>metadata</c>, <c>data</c> and <c>pool.json</c>; block devices
/// can be named instead, with the manifest kept in the folder.
/// </summary>
public sealed record PoolFiles(string MetadataPath, string DataPath, string ManifestPath)
{
    public static PoolFiles InFolder(string folder) =>
        new(Path.Combine(folder, "metadata"), Path.Combine(folder, "data"), Path.Combine(folder, "pool.json"));

    public string LockPath => ManifestPath + ".lock";

    /// <summary>Takes the pool's process lock: one process at a time opens a pool. .NET implements
    /// FileShare.None on Unix with flock(LOCK_EX | LOCK_NB), so a second process (a second
    /// <c>thinfast serve</c>, say) gets an error here instead of corrupting the pool. The lock file
    /// is the owner's only.</summary>
    public FileStream TakeProcessLock()
    {
        FileStream stream;
        try
        {
            stream = new FileStream(LockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
        }
        catch (IOException)
        {
            throw new PoolException($"the pool at {Path.GetDirectoryName(Path.GetFullPath(ManifestPath))} is open in another process (lock {LockPath})");
        }
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(stream.SafeFileHandle, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        return stream;
    }

    /// <summary>Refuses to create a pool over files that already hold one: a metadata file or
    /// device that holds dm-thin metadata would be re-initialised, and every mapping with it.</summary>
    internal void ThrowIfHoldsAPool()
    {
        if (File.Exists(ManifestPath))
            throw new PoolException($"a pool already exists at {ManifestPath}");
        if (!File.Exists(MetadataPath))
            return;
        var block = new byte[512];
        using (var file = File.OpenHandle(MetadataPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite))
        {
            if (RandomAccess.Read(file, block, 0) < block.Length)
                return;
        }
        if (ThinFast.Metadata.Superblock.Read(block).Magic == ThinFast.Metadata.MetadataFormat.Magic)
            throw new PoolException($"{MetadataPath} already holds dm-thin metadata, maybe a pool whose pool.json is missing; refusing to overwrite it (inspect it with thinfast pool check, or remove it yourself to start over)");
    }
}

public sealed partial class ThinPool
{
    private FileStream? _processLock;

    /// <summary>Creates a pool on new files (sized here) or existing block devices.</summary>
    public static ThinPool CreateFiles(PoolFiles files, long metadataSize, long dataSize, PoolOptions options, BlockDeviceOptions? io = null)
    {
        options.Validate();
        files.ThrowIfHoldsAPool();
        return Assemble(files, io, options,
            () => OpenOrCreate(files.MetadataPath, metadataSize, SynchronousIo(io), preallocate: false),
            () => OpenOrCreate(files.DataPath, dataSize, io, options.PreallocateData),
            devices => Create(devices, options));
    }

    /// <summary>Opens an existing pool. Refuses when another process has it open.</summary>
    public static ThinPool OpenFiles(PoolFiles files, PoolOptions options, BlockDeviceOptions? io = null)
    {
        if (!File.Exists(files.ManifestPath))
            throw new PoolException($"no pool at {files.ManifestPath} (manifest missing)");
        return Assemble(files, io, options,
            () => OpenExisting(files.MetadataPath, "metadata", SynchronousIo(io)),
            () => OpenExisting(files.DataPath, "data", io),
            devices => Open(devices, options));
    }

    /// <summary>Takes the process lock, opens the devices and builds the pool; on any failure
    /// closes whatever was opened, in reverse.</summary>
    private static ThinPool Assemble(PoolFiles files, BlockDeviceOptions? io, PoolOptions options, Func<IBlockDevice> openMetadata, Func<IBlockDevice> openData, Func<PoolDevices, ThinPool> build)
    {
        var processLock = files.TakeProcessLock();
        IBlockDevice? metadata = null, data = null, dataFlush = null;
        try
        {
            metadata = openMetadata();
            data = openData();
            dataFlush = BlockDevices.Open(files.DataPath, SynchronousIo(io));
            var pool = build(new PoolDevices { Metadata = metadata, Data = data, DataFlush = dataFlush, ManifestPath = files.ManifestPath, OpenOrigin = OriginOpener(io, options.OriginPageCache) });
            pool._processLock = processLock;
            return pool;
        }
        catch
        {
            dataFlush?.Dispose();
            data?.Dispose();
            metadata?.Dispose();
            processLock.Dispose();
            throw;
        }
    }

    // The metadata layer waits synchronously for its block reads and writes, and commits flush the
    // data device while holding the metadata lock. On an io_uring device those completions come
    // from the reactor thread, which also runs data-path continuations that may wait for the
    // metadata lock: a cycle. The portable backend completes on the calling thread, so neither
    // depends on the reactor.
    private static BlockDeviceOptions SynchronousIo(BlockDeviceOptions? io) => new()
    {
        Backend = BlockDeviceBackend.Portable,
        Log = io?.Log,
    };

    private static Func<string, IBlockDevice> OriginOpener(BlockDeviceOptions? io, bool pageCache) => path =>
    {
        if (!File.Exists(path) && !path.StartsWith("/dev/", StringComparison.Ordinal))
            throw new FileNotFoundException($"{path} does not exist", path);
        var direct = OpenOriginHandle(path, io, pageCache: false);
        IBlockDevice? cached = null;
        try
        {
            cached = pageCache ? OpenOriginHandle(path, io, pageCache: true) : direct;
            return new OriginDevice(cached, direct, OriginDevice.ReadTail(path, direct.Length));
        }
        catch
        {
            if (!ReferenceEquals(cached, direct))
                cached?.Dispose();
            direct.Dispose();
            throw;
        }
    };

    private static IBlockDevice OpenOriginHandle(string path, BlockDeviceOptions? io, bool pageCache) =>
        BlockDevices.Open(path, new BlockDeviceOptions
        {
            ReadOnly = true,
            PageCache = pageCache,
            Backend = io?.Backend ?? BlockDeviceBackend.Auto,
            Reactor = io?.Reactor,
            Log = io?.Log,
        });

    private static IBlockDevice OpenOrCreate(string path, long size, BlockDeviceOptions? io, bool preallocate)
    {
        if (path.StartsWith("/dev/", StringComparison.Ordinal) || File.Exists(path))
        {
            var device = BlockDevices.Open(path, io);
            if (!path.StartsWith("/dev/", StringComparison.Ordinal) && device.Length < size)
                device.Grow(size);
            return device;
        }
        return BlockDevices.Create(path, size, io, preallocate);
    }

    private static IBlockDevice OpenExisting(string path, string role, BlockDeviceOptions? io)
    {
        if (!path.StartsWith("/dev/", StringComparison.Ordinal) && !File.Exists(path))
            throw new PoolException($"{role} device {path} does not exist");
        return BlockDevices.Open(path, io);
    }
}
