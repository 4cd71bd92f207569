using Microsoft.Win32.SafeHandles;
using ThinFast.Interop;
using ThinFast.IO.Portable;
using ThinFast.IO.Uring;

namespace ThinFast.IO;

/// <summary>Opens files and block devices as O_DIRECT <see cref="IBlockDevice"/>s (or, read-only
/// and on request, through the page cache).</summary>
public static class BlockDevices
{
    public const string BackendEnvironmentVariable = "THINFAST_IO_BACKEND";

    public static IBlockDevice Open(string path, BlockDeviceOptions? options = null)
    {
        options ??= new BlockDeviceOptions();
        var log = options.Log ?? (message => Console.Error.WriteLine(message));
        var backend = ResolveBackend(options.Backend);
        IoUringReactor? reactor = null;
        if (backend != BlockDeviceBackend.Portable)
        {
            reactor = options.Reactor;
            if (reactor is null && !IoUringReactor.TryGetShared(out reactor, out string? why))
            {
                if (backend == BlockDeviceBackend.IoUring)
                    throw new BlockDeviceException(BlockError.NotSupported, $"{path}: io_uring backend requested but unavailable: {why}");
                log($"thinfast: io_uring unavailable ({why}); using the portable backend for {path}");
            }
        }

        if (options.PageCache && !options.ReadOnly)
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{path}: page-cached devices must be read-only");
        int flags = (options.ReadOnly ? Libc.O_RDONLY : Libc.O_RDWR) | (options.PageCache ? 0 : Libc.O_DIRECT) | Libc.O_CLOEXEC;
        int fd = Libc.Open(path, flags);
        if (fd < 0)
        {
            string hint = fd == -Errno.EINVAL ? " (the file system may not support O_DIRECT)" : "";
            throw BlockErrors.FromErrno(fd, path, options.PageCache ? "open" : "open with O_DIRECT" + hint);
        }
        var handle = new SafeFileHandle(fd, ownsHandle: true);
        try
        {
            var geometry = DeviceGeometry.Probe(fd, path);
            return reactor is null
                ? new PortableBlockDevice(path, handle, geometry, options.ReadOnly)
                : new IoUringBlockDevice(path, handle, geometry, options.ReadOnly, reactor);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>Creates a new file of <paramref name="length"/> bytes and opens it read-write.
    /// Fails if the file exists, so nothing is overwritten by accident. With
    /// <paramref name="preallocate"/> the file's blocks are allocated now (fallocate) instead of
    /// left sparse: a first O_DIRECT write into a hole makes the file system allocate and journal
    /// on the write path, which cost a thin pool's first writes a factor of seven here.</summary>
    public static IBlockDevice Create(string path, long length, BlockDeviceOptions? options = null, bool preallocate = false)
    {
        if (length < 0 || length % DeviceGeometry.FallbackAlignment != 0)
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{path}: length {length} must be a non-negative multiple of {DeviceGeometry.FallbackAlignment}");
        if (options is { ReadOnly: true })
            throw new BlockDeviceException(BlockError.InvalidArgument, $"{path}: cannot create a read-only device");
        int fd = Libc.Open(path, Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL | Libc.O_CLOEXEC, 0x180 /* 0600 */);
        if (fd < 0)
            throw BlockErrors.FromErrno(fd, path, "create");
        // A pool's files hold every guest's disk: owner only, exactly, whatever the umask.
        if (!OperatingSystem.IsWindows())
            File.SetUnixFileMode(path, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        int r = preallocate && length > 0 ? Libc.Fallocate(fd, 0, 0, length) : Libc.Ftruncate(fd, length);
        Libc.Close(fd);
        if (r < 0)
        {
            File.Delete(path);
            throw BlockErrors.FromErrno(r, path, preallocate ? $"fallocate {length} bytes" : $"ftruncate to {length}");
        }
        return Open(path, options);
    }

    private static BlockDeviceBackend ResolveBackend(BlockDeviceBackend requested)
    {
        if (requested != BlockDeviceBackend.Auto)
            return requested;
        string? env = Environment.GetEnvironmentVariable(BackendEnvironmentVariable);
        return env switch
        {
            null or "" or "auto" => BlockDeviceBackend.Auto,
            "portable" => BlockDeviceBackend.Portable,
            "io_uring" => BlockDeviceBackend.IoUring,
            _ => throw new ArgumentException($"{BackendEnvironmentVariable}='{env}' is not one of auto, portable, io_uring"),
        };
    }
}
