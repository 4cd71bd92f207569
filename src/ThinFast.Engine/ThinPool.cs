using System.Runtime.Versioning;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Engine;

/// <summary>The devices a pool lives on. The pool owns and disposes them.</summary>
public sealed record PoolDevices
{
    public required IBlockDevice Metadata { get; init; }
    public required IBlockDevice Data { get; init; }
    /// <summary>The manifest file (volume names, sizes, origins), kept beside the metadata.</summary>
    public required string ManifestPath { get; init; }
    /// <summary>Opens an external origin read-only by path.</summary>
    public required Func<string, IBlockDevice> OpenOrigin { get; init; }

    /// <summary>A second handle on the data device whose flush completes on the calling thread
    /// (the portable backend), used by commits; null means <see cref="Data"/> itself. A commit
    /// flushes while holding the metadata lock, and data-path code on the io_uring reactor thread
    /// may be waiting for that lock: a flush that needed the reactor would never complete.</summary>
    public IBlockDevice? DataFlush { get; init; }
}

/// <summary>
/// A thin pool: a dm-thin metadata device, a data device of fixed-size blocks shared by thin
/// volumes, and the manifest. Volumes allocate on first write, snapshots share blocks, and a
/// volume may sit on a read-only external origin. See docs/engine.md.
/// </summary>
/// <remarks>
/// Locking, outermost first: a volume's I/O gate (closed while it is snapshotted) → block locks
/// (<see cref="BlockLockTable"/>) → the metadata lock (a reader/writer lock: lookups share it,
/// mutations and commits take it exclusive) → <see cref="_commitLock"/> is only ever taken
/// without the metadata lock held. Data I/O is never issued with the metadata lock held.
/// </remarks>
public sealed partial class ThinPool : IDisposable
{
    private readonly PoolDevices _devices;
    private readonly ThinMetadata _metadata;
    private readonly ReaderWriterLockSlim _metadataLock = new(LockRecursionPolicy.NoRecursion);
    private readonly object _adminLock = new();
    private readonly Dictionary<string, ThinVolume> _volumes = new(StringComparer.Ordinal);
    private PoolManifest _manifest;

    internal readonly BlockLockTable BlockLocks = new();
    internal readonly BounceBufferPool BounceBuffers;
    /// <summary>Never written: the source of zeros for provisioning.</summary>
    internal readonly NativeBuffer ZeroBuffer;

    private volatile PoolMode _mode = PoolMode.Write;
    private volatile bool _dirty;
    private long _mappingChanges;
    private bool _lowWaterFired;
    private bool _noSpaceTimedOut;
    private volatile bool _closing;
    private bool _disposed;

    private ThinPool(PoolDevices devices, PoolOptions options, ThinMetadata metadata, PoolManifest manifest)
    {
        _devices = devices;
        Options = options;
        _metadata = metadata;
        _manifest = manifest;
        BlockSize = checked((int)(metadata.DataBlockSizeSectors * 512u));
        ChunkSize = Math.Min(BlockSize, MaxChunk);
        BounceBuffers = new BounceBufferPool(ChunkSize, options.BounceBuffers);
        ZeroBuffer = new NativeBuffer(ChunkSize);
        _commitThread = new Thread(CommitLoop) { IsBackground = true, Name = "thinfast-commit" };
        _commitThread.Start();
    }

    /// <summary>Largest piece of a block moved through one bounce buffer.</summary>
    internal const int MaxChunk = 1 << 20;

    public PoolOptions Options { get; }

    /// <summary>Data block size in bytes.</summary>
    public int BlockSize { get; }

    internal int ChunkSize { get; }

    internal IBlockDevice Data => _devices.Data;

    private IBlockDevice DataFlush => _devices.DataFlush ?? _devices.Data;

    public PoolMode Mode => _mode;

    /// <summary>Formats new metadata and an empty manifest on the devices.</summary>
    public static ThinPool Create(PoolDevices devices, PoolOptions options)
    {
        options.Validate();
        if (File.Exists(devices.ManifestPath))
            throw new PoolException($"manifest {devices.ManifestPath} already exists: a pool is there");
        ulong dataBlocks = (ulong)(devices.Data.Length / options.BlockSize);
        if (dataBlocks == 0)
            throw new PoolException($"data device {devices.Data.Name} ({devices.Data.Length} bytes) is smaller than one {options.BlockSize}-byte block");
        var metadata = ThinMetadata.Format(devices.Metadata, (uint)(options.BlockSize / 512), dataBlocks);
        var manifest = new PoolManifest();
        manifest.Save(devices.ManifestPath);
        return new ThinPool(devices, options, metadata, manifest);
    }

    /// <summary>Why a data device of <paramref name="length"/> bytes cannot back metadata whose
    /// space map counts <paramref name="spaceMapBlocks"/> blocks (null when it can): a truncated or
    /// wrong data file would read zeros, or fail, for blocks the mappings say hold a guest's data.
    /// Shared with the offline commands, which must not call such a pool clean.</summary>
    public static string? DataDeviceShortfall(string name, long length, uint blockSizeSectors, ulong spaceMapBlocks)
    {
        ulong blocks = (ulong)(length / ((long)blockSizeSectors * 512));
        return blocks < spaceMapBlocks
            ? $"data device {name} holds {blocks} blocks ({length} bytes) but the metadata's space map counts {spaceMapBlocks}: wrong or truncated data device"
            : null;
    }

    /// <summary>Opens an existing pool. Volumes whose origin is missing or changed are reported
    /// by <see cref="GetVolume"/> with the reason; the others serve normally.</summary>
    public static ThinPool Open(PoolDevices devices, PoolOptions options)
    {
        var manifest = PoolManifest.Load(devices.ManifestPath);
        var metadata = ThinMetadata.Open(devices.Metadata);
        try
        {
            manifest.CheckDevices(id => metadata.DeviceExists(id), devices.ManifestPath);
            if (DataDeviceShortfall(devices.Data.Name, devices.Data.Length, metadata.DataBlockSizeSectors, metadata.DataBlockCount) is { } shortfall)
                throw new PoolException(shortfall);
            if (!metadata.NeedsCheck)
                ReclaimLeakedBlocks(metadata, options);
            var pool = new ThinPool(devices, options with { BlockSize = checked((int)(metadata.DataBlockSizeSectors * 512)) }, metadata, manifest);
            foreach (var v in manifest.Volumes)
                pool._volumes[v.Name] = pool.Activate(v);
            pool.PublishVolumes();
            // A metadata with needs_check is not written until the operator has checked it.
            if (!metadata.NeedsCheck)
                pool.ReclaimOrphans();
            else
                pool.SetMode(PoolMode.ReadOnly, "the metadata has needs_check set (an earlier failure may have lost writes): check it with `thinfast pool check DIR --clear-needs-check`, which clears the flag when the metadata is clean");
            return pool;
        }
        catch
        {
            metadata.Dispose();
            throw;
        }
    }

    // ---- Volumes ----

    public IReadOnlyList<VolumeRecord> VolumeRecords
    {
        get { lock (_adminLock) return _manifest.Volumes.ToArray(); }
    }

    /// <summary>Finds a volume by name without waiting: a snapshot or delete in progress holds
    /// the admin lock while it drains I/O, and a caller on an I/O completion thread that waited
    /// for that lock would keep the drained I/O from completing.</summary>
    public ThinVolume GetVolume(string name) =>
        _volumesByName.TryGetValue(name, out var volume) ? volume : throw new PoolException($"no volume named '{name}'");

    public ThinVolume CreateVolume(string name, long size, string? originPath = null)
    {
        ValidateName(name);
        if (size <= 0 || size % 512 != 0)
            throw new PoolException($"volume size {size} must be a positive multiple of 512 bytes");
        IBlockDevice? origin = null;
        if (originPath is not null)
        {
            ThrowIfOwnStorage(originPath);
            origin = OpenOrigin(originPath, expectedSize: null, volumeName: name);
        }
        try
        {
            lock (_adminLock)
            {
                ThrowIfNotWritable("create a volume");
                if (_volumes.ContainsKey(name))
                    throw new PoolException($"a volume named '{name}' already exists");
                uint id = NextDeviceId();
                // Intent first: a crash after the metadata commit and before the manifest names
                // the volume leaves a device the next open finds and reclaims.
                SaveManifest(_manifest with { PendingDeviceIds = [.. _manifest.PendingDeviceIds, id], HighestDeviceId = id });
                MutateMetadata(m => m.CreateThin(id));
                CommitCore();
                var record = new VolumeRecord { Name = name, DeviceId = id, Size = size, OriginPath = originPath is null ? null : Path.GetFullPath(originPath), OriginSize = origin is null ? null : OriginDevice.ByteLengthOf(origin) };
                SaveManifest(_manifest with { Volumes = [.. _manifest.Volumes, record], PendingDeviceIds = _manifest.PendingDeviceIds.Where(p => p != id).ToList() });
                var volume = new ThinVolume(this, record, origin);
                _volumes[name] = volume;
                PublishVolumes();
                return volume;
            }
        }
        catch
        {
            origin?.Dispose();
            throw;
        }
    }

    /// <summary>An instant snapshot of <paramref name="sourceName"/>: it shares every block and keeps
    /// the source's origin and size. The source's I/O is paused while the snapshot is taken, so
    /// the snapshot holds exactly the writes completed before this call.</summary>
    public ThinVolume CreateSnapshot(string sourceName, string name)
    {
        ValidateName(name);
        lock (_adminLock)
        {
            ThrowIfNotWritable("create a snapshot");
            if (_volumes.ContainsKey(name))
                throw new PoolException($"a volume named '{name}' already exists");
            var source = GetVolume(sourceName);
            var sourceRecord = source.Record;
            IBlockDevice? origin = sourceRecord.OriginPath is null ? null : OpenOrigin(sourceRecord.OriginPath, sourceRecord.OriginSize, name);
            try
            {
                source.Gate.CloseAndDrain(Options.AdminDrainTimeout, $"snapshot '{sourceName}'");
                try
                {
                    uint id = NextDeviceId();
                    SaveManifest(_manifest with { PendingDeviceIds = [.. _manifest.PendingDeviceIds, id], HighestDeviceId = id });
                    MutateMetadata(m => m.CreateSnapshot(id, sourceRecord.DeviceId));
                    CommitCore();
                    var record = sourceRecord with { Name = name, DeviceId = id };
                    SaveManifest(_manifest with { Volumes = [.. _manifest.Volumes, record], PendingDeviceIds = _manifest.PendingDeviceIds.Where(p => p != id).ToList() });
                    var volume = new ThinVolume(this, record, origin);
                    _volumes[name] = volume;
                    PublishVolumes();
                    return volume;
                }
                finally
                {
                    source.Gate.Open();
                }
            }
            catch
            {
                origin?.Dispose();
                throw;
            }
        }
    }

    /// <summary>Deletes a volume and frees the blocks only it used. Its requests queued for data
    /// space fail, those in flight finish, and every later request on it fails: connections
    /// still open on it get EIO, never another volume's data.</summary>
    public void DeleteVolume(string name)
    {
        lock (_adminLock)
        {
            ThrowIfNotWritable("delete a volume");
            var volume = GetVolume(name);
            // Requests still writing must finish first: their blocks are freed by the delete and
            // may go to another volume at once, so a late write would land on its data. One that
            // does not finish in time refuses the delete as busy and changes nothing. Requests
            // queued for space have written nothing and are failed instead of waited for.
            volume.Gate.CloseAndDrain(Options.AdminDrainTimeout, $"delete volume '{name}'");
            try
            {
                ThrowIfNotWritable("delete a volume");   // the pool may have failed during the drain
            }
            catch
            {
                volume.Gate.Open();
                throw;
            }
            string reason = $"volume '{name}' was deleted";
            volume.Retire(reason);
            FailSpaceWaiters(new BlockDeviceException(BlockError.Unavailable, reason), volume.Gate);
            if (!volume.Gate.WaitUntilEmpty(Options.AdminDrainTimeout))
                Log($"delete of '{name}': requests queued for space still inside after {Options.AdminDrainTimeout.TotalSeconds:0} s; they fail without writing");
            // Intent first: the manifest drops the volume and names its device as pending, so a
            // crash before the metadata commit leaves a device the next open reclaims, never a
            // manifest entry without its device.
            var before = _manifest;
            SaveManifest(_manifest with
            {
                Volumes = _manifest.Volumes.Where(v => v.Name != name).ToList(),
                PendingDeviceIds = [.. _manifest.PendingDeviceIds, volume.DeviceId],
            });
            try
            {
                MutateMetadata(m => m.DeleteDevice(volume.DeviceId));
            }
            catch
            {
                // Nothing reached the metadata (the transaction was aborted): put the volume
                // back as it was, so a failed delete changes nothing.
                SaveManifest(before);
                var restored = Activate(volume.Record);
                restored.InheritDurability(volume);
                _volumes[name] = restored;
                PublishVolumes();
                volume.DisposeOrigin();
                throw;
            }
            // A failed commit may still have landed (its superblock written, the flush after it
            // failed): the volume stays deleted in the manifest and its id pending, and the next
            // open finishes the delete.
            _volumes.Remove(name);
            PublishVolumes();
            volume.DisposeOrigin();
            CommitCore();
            SaveManifest(_manifest with { PendingDeviceIds = _manifest.PendingDeviceIds.Where(p => p != volume.DeviceId).ToList() });
        }
    }

    /// <summary>Deletes the devices a crash left between the manifest and the metadata: named
    /// pending in the manifest but belonging to no volume.</summary>
    private void ReclaimOrphans()
    {
        if (_manifest.PendingDeviceIds.Count == 0)
            return;
        var named = _manifest.Volumes.Select(v => v.DeviceId).ToHashSet();
        var orphans = _manifest.PendingDeviceIds.Where(id => !named.Contains(id)).ToList();
        foreach (uint id in orphans)
        {
            if (ReadMetadata(m => m.DeviceExists(id)))
            {
                MutateMetadata(m => m.DeleteDevice(id));
                Log($"reclaimed thin device {id}: a crash left it in the metadata without a volume");
            }
        }
        if (_dirty)
            CommitCore();
        SaveManifest(_manifest with { PendingDeviceIds = [] });
    }

    /// <summary>Frees the data blocks a crash left allocated but unmapped (by the kernel's dm-thin,
    /// which commits allocations before their mappings, or by an older ThinFast), so a pool does
    /// not lose space for good and <c>pool check</c> sees no leaks after the next open. Runs
    /// before anything else touches the transaction; a metadata with needs_check is left alone.</summary>
    private static void ReclaimLeakedBlocks(ThinMetadata metadata, PoolOptions options)
    {
        var reclaim = metadata.ReclaimLeakedDataBlocks();
        if (reclaim.ExcessReferences == 0)
            return;
        metadata.Commit();
        options.Log?.Invoke($"reclaimed {reclaim.FreedBlocks} leaked data blocks ({reclaim.ExcessReferences} references the space map held but no mapping did): a crash had left them allocated");
    }

    private ThinVolume Activate(VolumeRecord record)
    {
        IBlockDevice? origin = null;
        string? unavailable = null;
        if (record.OriginPath is not null)
        {
            try
            {
                origin = OpenOrigin(record.OriginPath, record.OriginSize, record.Name);
            }
            catch (Exception e) when (e is PoolException or IOException or UnauthorizedAccessException)
            {
                unavailable = e.Message;
                Log($"volume '{record.Name}' is unavailable: {e.Message}");
            }
        }
        return new ThinVolume(this, record, origin, unavailable);
    }

    /// <summary>Refuses an origin that is this pool's own storage: a volume over the pool's data
    /// would read every other volume's blocks, and one over its metadata the mappings.</summary>
    private void ThrowIfOwnStorage(string originPath)
    {
        if (FileIdentity.Of(originPath) is not { } origin)
            return;
        foreach (var (device, what) in new[] { (_devices.Data.Name, "data"), (_devices.Metadata.Name, "metadata"), (_devices.ManifestPath, "manifest") })
        {
            if (FileIdentity.Of(device) == origin)
                throw new PoolException($"origin {originPath} is this pool's own {what} ({device}): a volume over it would expose every other volume");
        }
    }

    /// <summary>An origin other users can write is not refused (a shared base on a group-writable
    /// share is a choice an operator may make), but it is said: whoever can write it changes, under
    /// every guest on it, the blocks those guests never wrote, and can read nothing of the pool but
    /// can make it serve anything. So is a folder others can write without the sticky bit: they can
    /// rename another file of the same size over the origin, which nothing at open would notice.</summary>
    private void WarnIfWritableByOthers(string path, string volumeName)
    {
        if (OperatingSystem.IsWindows() || ModeOf(path) is not { } mode)
            return;
        // Block devices are group-writable by the disk group everywhere; that group is root's peer.
        bool groupCounts = FileIdentity.Of(path) is not { IsBlockDevice: true };
        if (WhoElseWrites(mode, groupCounts) is { } who)
            Log($"warning: origin {path} of volume '{volumeName}' is writable by {who} (mode {Octal(mode)}): a write to it changes what the volume reads wherever the volume never wrote; make it read-only (chmod go-w)");

        string target = new FileInfo(path).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(path);
        if (Path.GetDirectoryName(target) is { } folder && ModeOf(folder) is { } folderMode
            && (folderMode & UnixFileMode.StickyBit) == 0 && WhoElseWrites(folderMode, groupCounts: true) is { } folderWho)
            Log($"warning: origin {path} of volume '{volumeName}' is in {folder}, which {folderWho} can write (mode {Octal(folderMode)}): anyone who can may replace the origin; keep base images in a folder only their owner writes");
    }

    [UnsupportedOSPlatform("windows")]
    private static UnixFileMode? ModeOf(string path)
    {
        try
        {
            return File.GetUnixFileMode(path);   // follows symlinks: the mode of what is read
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    private static string? WhoElseWrites(UnixFileMode mode, bool groupCounts) =>
        (mode & UnixFileMode.OtherWrite) != 0 ? "every user"
        : (mode & UnixFileMode.GroupWrite) != 0 && groupCounts ? "its group"
        : null;

    private static string Octal(UnixFileMode mode) => Convert.ToString((int)mode, 8).PadLeft(4, '0');

    private IBlockDevice OpenOrigin(string path, long? expectedSize, string volumeName)
    {
        IBlockDevice origin;
        try
        {
            origin = _devices.OpenOrigin(path);
        }
        catch (FileNotFoundException)
        {
            throw new PoolException($"origin {path} of volume '{volumeName}' does not exist");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new PoolException($"origin {path} of volume '{volumeName}' cannot be opened: {e.Message}", e);
        }
        if (!origin.IsReadOnly)
        {
            origin.Dispose();
            throw new PoolException($"origin {path} was not opened read-only");
        }
        long length = OriginDevice.ByteLengthOf(origin);
        if (expectedSize is { } size && length != size)
        {
            origin.Dispose();
            throw new PoolException($"origin {path} of volume '{volumeName}' changed size from {size} to {length} bytes; refusing to serve stale data");
        }
        if (origin.Length % 512 != 0)
        {
            origin.Dispose();
            throw new PoolException($"origin {path} is {origin.Length} bytes, not a multiple of 512");
        }
        WarnIfWritableByOthers(path, volumeName);
        return origin;
    }

    /// <summary>A device id never used in this pool: above every id in the metadata and every id
    /// the manifest ever handed out, so a connection still open on a deleted volume can never see
    /// a new volume's mappings under the old id.</summary>
    private uint NextDeviceId()
    {
        ulong highest = Math.Max(_manifest.HighestDeviceId, ReadMetadata(m => m.DeviceIds.Count == 0 ? 0 : m.DeviceIds.Max()));
        // dm-thin message ids are below 2^24.
        if (highest + 1 >= 1u << 24)
            throw new PoolException("no unused device id is left (2^24 have been used)");
        return (uint)(highest + 1);
    }

    private void SaveManifest(PoolManifest manifest)
    {
        manifest.Save(_devices.ManifestPath);
        _manifest = manifest;
    }

    private static void ValidateName(string name)
    {
        if (PoolManifest.NameProblem(name) is { } problem)
            throw new PoolException(problem);
    }

    // ---- Metadata access ----

    /// <summary>Runs a read-only metadata query under the shared lock.</summary>
    internal T ReadMetadata<T>(Func<ThinMetadata, T> query)
    {
        using var shared = new SharedLock(_metadataLock);
        return query(_metadata);
    }

    // Lookups are the hot path: no delegate, just the shared lock around the B-tree walk.
    internal bool TryLookup(uint deviceId, ulong virtualBlock, out BlockMapping mapping)
    {
        using var shared = new SharedLock(_metadataLock);
        return _metadata.TryLookup(deviceId, virtualBlock, out mapping);
    }

    internal int LookupRange(uint deviceId, ulong first, ulong end, Span<MappedRange> result)
    {
        using var shared = new SharedLock(_metadataLock);
        return _metadata.LookupRange(deviceId, first, end, result);
    }

    private readonly ref struct SharedLock
    {
        private readonly ReaderWriterLockSlim _lock;

        public SharedLock(ReaderWriterLockSlim rwLock)
        {
            _lock = rwLock;
            rwLock.EnterReadLock();
        }

        public void Dispose() => _lock.ExitReadLock();
    }

    /// <summary>Runs a metadata mutation under the exclusive lock. A failure inside the metadata
    /// layer (I/O error, exhaustion, corruption) aborts the transaction and degrades the pool to
    /// read-only, as dm-thin does; argument errors from the caller do not.</summary>
    private void MutateMetadata(Action<ThinMetadata> mutation) =>
        MutateMetadata(mutation, static (m, action) => action(m));

    /// <summary>The same, with the arguments passed as state so hot callers can use a static
    /// lambda: a capturing one would allocate on every provisioning write.</summary>
    private void MutateMetadata<TState>(TState state, Action<ThinMetadata, TState> mutation)
    {
        EnterWriteLockForMappingChange();
        try
        {
            mutation(_metadata, state);
            _dirty = true;
            _mappingChanges++;
        }
        catch (Exception e) when (!IsCallerError(e))
        {
            AbortAndDegrade(e);
            throw;
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
    }

    /// <summary>Errors that say the request was wrong (a name taken, an id unknown), as opposed to
    /// the metadata failing underneath it. Only the latter degrade the pool.</summary>
    private static bool IsCallerError(Exception e) =>
        e is PoolException or ArgumentException or KeyNotFoundException
        || (e is InvalidOperationException && e is not MetadataSpaceExhaustedException);

    /// <summary>Takes the metadata lock exclusively for a mapping change, or refuses: read-only
    /// and fail modes commit nothing, so nothing may change in memory either (a change would be
    /// visible until the restart and then silently gone, and a FLUSH in between would report it
    /// durable). A refusal is no metadata failure, so it happens before the callers' abort
    /// handlers, with the lock given back.</summary>
    private void EnterWriteLockForMappingChange()
    {
        _metadataLock.EnterWriteLock();
        if (_mode is PoolMode.ReadOnly or PoolMode.Fail)
        {
            var mode = _mode;
            _metadataLock.ExitWriteLock();
            throw new BlockDeviceException(BlockError.IoError, $"pool is {(mode == PoolMode.Fail ? "in fail mode" : "read-only")}: no mapping can change (see pool status and the log)");
        }
    }

    internal void InsertMapping(uint deviceId, ulong virtualBlock, ulong dataBlock) =>
        MutateMetadata((pool: this, deviceId, virtualBlock, dataBlock), static (m, s) =>
        {
            m.Insert(s.deviceId, s.virtualBlock, s.dataBlock);
            s.pool._changedInTransaction.Add(s.deviceId);
        });

    /// <summary>Unmaps blocks [first, end) of a device. Data blocks nobody references any more
    /// are discarded on the data device once the commit that frees them is durable
    /// (ThinPool.Passdown.cs).</summary>
    internal void UnmapRange(uint deviceId, ulong first, ulong end)
    {
        Span<MappedRange> runs = stackalloc MappedRange[64];
        EnterWriteLockForMappingChange();
        try
        {
            ulong cursor = first;
            while (cursor < end)
            {
                int n = _metadata.LookupRange(deviceId, cursor, end, runs);
                if (n == 0)
                    break;
                _changedInTransaction.Add(deviceId);
                foreach (var run in runs[..n])
                {
                    for (ulong i = 0; i < run.Length; i++)
                    {
                        _metadata.Remove(deviceId, run.VirtualBlock + i);
                        if (_metadata.GetDataBlockRefCount(run.DataBlock + i) == 0)
                            QueuePassdownLocked(run.DataBlock + i);
                    }
                    cursor = run.VirtualBlock + run.Length;
                }
                _dirty = true;
                _mappingChanges++;
            }
        }
        catch (Exception e) when (!IsCallerError(e))
        {
            AbortAndDegrade(e);
            throw;
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
    }

    /// <summary>Gives back a block reserved by <see cref="AllocateDataBlockAsync"/> whose write
    /// failed. Nothing on disk changes: a reservation is never written out.</summary>
    internal void ReleaseDataBlock(ulong dataBlock)
    {
        _metadataLock.EnterWriteLock();
        try
        {
            // After an abort the reservation is already gone with the transaction it was made in.
            if (_metadata.ReservedDataBlocks > 0)
                _metadata.ReleaseDataBlock(dataBlock);
        }
        catch (ArgumentOutOfRangeException)
        {
            // Reserved before an abort reloaded the space map: nothing to give back.
        }
        finally
        {
            _metadataLock.ExitWriteLock();
        }
    }

    /// <summary>A metadata operation or commit failed: the open transaction is dropped, and with
    /// it every change since the last commit (ThinPool.Durability.cs). Called with the metadata
    /// lock held exclusively.</summary>
    private void AbortAndDegrade(Exception cause, long? durableBefore = null)
    {
        string why = $"metadata operation failed, transaction aborted: {cause.Message}";
        DurabilityLost(durableBefore ?? Volatile.Read(ref _durableThrough), why);
        AbortLocked(why);
    }

    private void AbortLocked(string why)
    {
        MarkTransactionLostLocked(why);
        _passdownPending.Clear();
        try
        {
            _metadata.Abort();
            _dirty = false;
        }
        catch (Exception e)
        {
            SetMode(PoolMode.Fail, $"metadata abort failed: {e.Message}");
            return;
        }
        RecordNeedsCheckLocked(why);
    }

    // ---- Modes, status, events ----

    private void SetMode(PoolMode mode, string why)
    {
        lock (_spaceLock)
        {
            if (_mode == mode || _mode == PoolMode.Fail || (_mode == PoolMode.ReadOnly && mode != PoolMode.Fail))
                return;
            _mode = mode;
        }
        Log($"pool mode -> {mode}: {why}");
    }

    private void ThrowIfNotWritable(string what)
    {
        if (_mode is PoolMode.ReadOnly or PoolMode.Fail)
            throw new PoolException($"cannot {what}: the pool is {(_mode == PoolMode.ReadOnly ? "read-only after a failure (see pool status and the log)" : "in fail mode")}");
    }

    internal void Log(string message) => Options.Log?.Invoke(message);

    public PoolStatus GetStatus()
    {
        return ReadMetadata(m => new PoolStatus(
            m.TransactionId,
            m.MetadataBlockCount - m.FreeMetadataBlocks,
            m.MetadataBlockCount,
            m.DataBlockCount - m.FreeDataBlocks,
            m.DataBlockCount,
            BlockSize,
            _mode,
            Options.ErrorIfNoSpace || _noSpaceTimedOut,
            m.NeedsCheck,
            Options.LowWaterBlocks,
            _dirty));
    }

    /// <summary>Requests that waited for a block lock another request held (provisioning, copy,
    /// unmap): how much I/O to the same blocks overlapped, since the pool opened.</summary>
    public long BlockLockWaits => BlockLocks.Waits;

    /// <summary>Mapped blocks of a volume (dm-thin's details.mapped_blocks).</summary>
    internal ulong MappedBlocks(uint deviceId) => ReadMetadata(m => m.GetDetails(deviceId).MappedBlocks);

    /// <summary>The first step of closing, for a front end about to drain its clients: writes
    /// queued for data space fail now (BlockError.Unavailable, "the pool is closing"), and later
    /// ones that find no free block fail at once instead of queueing, so the drain does not wait
    /// for space that will never come. Everything else, FLUSH included, keeps working until
    /// <see cref="Dispose"/>.</summary>
    public void BeginClose()
    {
        lock (_spaceLock)
            _closing = true;
        FailSpaceWaiters(Closing());
    }

    /// <summary>Waits for in-flight requests, commits and closes the devices.</summary>
    public void Dispose()
    {
        lock (_adminLock)
        {
            if (_disposed)
                return;
            _disposed = true;
        }
        // Writes queued for space fail first: the drain below would otherwise wait for them.
        lock (_spaceLock)
            _closing = true;
        foreach (var v in _volumesByName.Values)
            v.Retire("the pool is closed");
        FailSpaceWaiters(Closing());
        foreach (var v in _volumesByName.Values)
        {
            if (!v.Gate.WaitUntilEmpty(Options.AdminDrainTimeout))
                Log($"closing: requests on '{v.Name}' still in flight after {Options.AdminDrainTimeout.TotalSeconds:0} s");
        }
        StopCommitThread();
        if (_mode is PoolMode.Write or PoolMode.OutOfDataSpace)
        {
            try
            {
                CommitNow();
            }
            catch (Exception e)
            {
                Log($"final commit failed: {e.Message}");
            }
        }
        StopPassdownThread();
        foreach (var v in _volumesByName.Values)
            v.DisposeOrigin();
        _metadata.Dispose();
        _devices.Metadata.Dispose();
        _devices.Data.Dispose();
        _devices.DataFlush?.Dispose();
        BounceBuffers.Dispose();
        ((IDisposable)ZeroBuffer).Dispose();
        _metadataLock.Dispose();
        _processLock?.Dispose();
    }
}
