using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;
using ThinFast.Interop;

namespace ThinFast.IO.Portable;

/// <summary>
/// The fallback backend: .NET <see cref="RandomAccess"/> on an O_DIRECT handle. RandomAccess runs
/// each transfer as a blocking pread/pwrite on the thread pool, so it is slower than io_uring and
/// allocates per I/O, but it works wherever io_uring is forbidden (containers, seccomp).
/// FUA is write + fdatasync; deallocation is a punched hole (files) or BLKDISCARD (block
/// devices); zeroing is FALLOC_FL_ZERO_RANGE or BLKZEROOUT, or zeros written where the file system
/// or device cannot (remembered after the first EOPNOTSUPP).
/// </summary>
public sealed class PortableBlockDevice : ISynchronousBlockDevice
{
    private readonly SafeFileHandle _handle;
    private readonly bool _isBlockDevice;
    private long _length;
    private volatile bool _zeroRangeUnsupported;

    internal PortableBlockDevice(string name, SafeFileHandle handle, DeviceGeometry geometry, bool readOnly)
    {
        Name = name;
        _handle = handle;
        _isBlockDevice = geometry.IsBlockDevice;
        _length = geometry.Length;
        LogicalBlockSize = geometry.LogicalBlockSize;
        BufferAlignment = geometry.BufferAlignment;
        IsReadOnly = readOnly;
    }

    public string Name { get; }
    public long Length => Volatile.Read(ref _length);
    public int LogicalBlockSize { get; }
    public int BufferAlignment { get; }
    public bool IsReadOnly { get; }

    private int Fd => (int)_handle.DangerousGetHandle();

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        this.ValidateRequest(offset, destination.Length, destination.Span, isWrite: false);
        return ReadCoreAsync(offset, destination);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        this.ValidateRequest(offset, source.Length, source.Span, isWrite: true);
        return WriteCoreAsync(offset, source, flags);
    }

    public ValueTask FlushAsync()
    {
        // fdatasync blocks for as long as the device takes; keep it off the caller's thread.
        return new ValueTask(Task.Run(() => Check(Libc.Fdatasync(Fd), "fdatasync")));
    }

    public ValueTask DeallocateAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, ReadOnlySpan<byte>.Empty, isWrite: true);
        if (length == 0)
            return default;
        return new ValueTask(Task.Run(() =>
        {
            if (_isBlockDevice)
                Check(Libc.IoctlBlkDiscard(Fd, (ulong)offset, (ulong)length), "ioctl(BLKDISCARD)");
            else
                Check(Libc.Fallocate(Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, offset, length), "fallocate(PUNCH_HOLE)");
        }));
    }

    public ValueTask ZeroAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, ReadOnlySpan<byte>.Empty, isWrite: true);
        if (length == 0)
            return default;
        return new ValueTask(Task.Run(() => ZeroSynchronously(offset, length)));
    }

    private void ZeroSynchronously(long offset, long length)
    {
        if (!_zeroRangeUnsupported)
        {
            int r = _isBlockDevice
                ? Libc.IoctlBlkZeroOut(Fd, (ulong)offset, (ulong)length)
                : Libc.Fallocate(Fd, Libc.FALLOC_FL_ZERO_RANGE | Libc.FALLOC_FL_KEEP_SIZE, offset, length);
            if (r == 0)
                return;
            if (BlockErrors.Classify(r) != BlockError.NotSupported)
                Check(r, _isBlockDevice ? "ioctl(BLKZEROOUT)" : "fallocate(ZERO_RANGE)");
            _zeroRangeUnsupported = true;
        }
        ZeroWriter.WriteZeros(this, offset, length);
    }

    public void Grow(long newLength) => FileGrowth.Grow(this, Fd, _isBlockDevice, ref _length, newLength);

    public void Dispose() => _handle.Dispose();

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadCoreAsync(long offset, Memory<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            int n;
            try
            {
                n = await RandomAccess.ReadAsync(_handle, destination[done..], offset + done).ConfigureAwait(false);
            }
            catch (IOException e) when (e is not BlockDeviceException)
            {
                throw Translate(e, "read");
            }
            if (n == 0)
                throw new BlockDeviceException(BlockError.IoError, $"{Name}: read at {offset + done} hit the end of the file");
            done += n;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteCoreAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags)
    {
        // RandomAccess.WriteAsync already loops until the whole buffer is written.
        try
        {
            await RandomAccess.WriteAsync(_handle, source, offset).ConfigureAwait(false);
        }
        catch (IOException e) when (e is not BlockDeviceException)
        {
            throw Translate(e, "write");
        }
        if ((flags & WriteFlags.ForceUnitAccess) != 0)
            Check(Libc.Fdatasync(Fd), "fdatasync after FUA write");
    }

    public void ReadSynchronously(long offset, Span<byte> destination)
    {
        this.ValidateRequest(offset, destination.Length, destination, isWrite: false);
        int done = 0;
        while (done < destination.Length)
        {
            int n;
            try
            {
                n = RandomAccess.Read(_handle, destination[done..], offset + done);
            }
            catch (IOException e) when (e is not BlockDeviceException)
            {
                throw Translate(e, "read");
            }
            if (n == 0)
                throw new BlockDeviceException(BlockError.IoError, $"{Name}: read at {offset + done} hit the end of the file");
            done += n;
        }
    }

    public void WriteSynchronously(long offset, ReadOnlySpan<byte> source, WriteFlags flags)
    {
        this.ValidateRequest(offset, source.Length, source, isWrite: true);
        try
        {
            RandomAccess.Write(_handle, source, offset);
        }
        catch (IOException e) when (e is not BlockDeviceException)
        {
            throw Translate(e, "write");
        }
        if ((flags & WriteFlags.ForceUnitAccess) != 0)
            Check(Libc.Fdatasync(Fd), "fdatasync after FUA write");
    }

    public void FlushSynchronously() => Check(Libc.Fdatasync(Fd), "fdatasync");

    private void Check(int result, string what)
    {
        if (result < 0)
            throw BlockErrors.FromErrno(result, Name, what);
    }

    // On Unix, RandomAccess reports the raw errno in HResult for the errors it does not map.
    private BlockDeviceException Translate(IOException e, string what) =>
        e.HResult is > 0 and < 4096
            ? new BlockDeviceException(BlockErrors.Classify(e.HResult), $"{Name}: {what} failed: {e.Message}", e.HResult, e)
            : new BlockDeviceException(BlockError.IoError, $"{Name}: {what} failed: {e.Message}", 0, e);
}
