using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using ThinFast.Interop;

namespace ThinFast.IO.Uring;

/// <summary>
/// An O_DIRECT file or block device driven by an <see cref="IoUringReactor"/>. Reads and writes
/// into registered <see cref="NativeBuffer"/>s go out as READ_FIXED/WRITE_FIXED, other memory is
/// pinned for the duration. FUA is RWF_DSYNC on the write, flush is FSYNC(DATASYNC), deallocation
/// is FALLOCATE(PUNCH_HOLE|KEEP_SIZE) for files and BLKDISCARD for block devices, zeroing is
/// FALLOCATE(ZERO_RANGE|KEEP_SIZE) or BLKZEROOUT, with zeros written where those are unsupported.
/// </summary>
public sealed class IoUringBlockDevice : IBlockDevice
{
    private readonly SafeFileHandle _handle;
    private readonly IoUringReactor _reactor;
    private readonly bool _isBlockDevice;
    private readonly int _fd;
    private long _length;
    private volatile bool _zeroRangeUnsupported;

    internal IoUringBlockDevice(string name, SafeFileHandle handle, DeviceGeometry geometry, bool readOnly, IoUringReactor reactor)
    {
        Name = name;
        _handle = handle;
        _fd = (int)handle.DangerousGetHandle();
        _reactor = reactor;
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
    public IoUringReactor Reactor => _reactor;

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        this.ValidateRequest(offset, destination.Length, destination.Span, isWrite: false);
        if (destination.IsEmpty)
            return default;
        var op = _reactor.RentOperation();
        op.PrepareTransfer(Name, _fd, write: false, offset, destination, rwFlags: 0);
        return Start(op);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        this.ValidateRequest(offset, source.Length, source.Span, isWrite: true);
        if (source.IsEmpty)
            return default;
        var op = _reactor.RentOperation();
        uint rwFlags = (flags & WriteFlags.ForceUnitAccess) != 0 ? IoUring.RWF_DSYNC : 0;
        // The kernel only reads from the buffer; the cast never leads to a write into it.
        op.PrepareTransfer(Name, _fd, write: true, offset, MemoryMarshal.AsMemory(source), rwFlags);
        return Start(op);
    }

    public ValueTask FlushAsync()
    {
        var op = _reactor.RentOperation();
        op.PrepareFsync(Name, _fd);
        return Start(op);
    }

    public ValueTask DeallocateAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, ReadOnlySpan<byte>.Empty, isWrite: true);
        if (length == 0)
            return default;
        if (_isBlockDevice)
            return RunIoctl(Libc.BLKDISCARD, offset, length);
        var op = _reactor.RentOperation();
        op.PrepareFallocate(Name, _fd, offset, length, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE);
        return Start(op);
    }

    public ValueTask ZeroAsync(long offset, long length)
    {
        this.ValidateRequest(offset, length, ReadOnlySpan<byte>.Empty, isWrite: true);
        if (length == 0)
            return default;
        if (_zeroRangeUnsupported)
            return ZeroWriter.WriteZerosAsync(this, offset, length);
        if (_isBlockDevice)
            return ZeroOrWriteZerosAsync(RunIoctl(Libc.BLKZEROOUT, offset, length), offset, length);
        var op = _reactor.RentOperation();
        op.PrepareFallocate(Name, _fd, offset, length, Libc.FALLOC_FL_ZERO_RANGE | Libc.FALLOC_FL_KEEP_SIZE);
        return ZeroOrWriteZerosAsync(Start(op), offset, length);
    }

    private async ValueTask ZeroOrWriteZerosAsync(ValueTask zeroing, long offset, long length)
    {
        try
        {
            await zeroing.ConfigureAwait(false);
        }
        catch (BlockDeviceException e) when (e.Error == BlockError.NotSupported)
        {
            _zeroRangeUnsupported = true;
            await ZeroWriter.WriteZerosAsync(this, offset, length).ConfigureAwait(false);
        }
    }

    // BLKDISCARD and BLKZEROOUT have no io_uring opcode on the kernels we support and can take a
    // while: run them off the caller's (possibly the reactor's) thread.
    private ValueTask RunIoctl(ulong request, long offset, long length) => new(Task.Run(() =>
    {
        int r = request == Libc.BLKDISCARD
            ? Libc.IoctlBlkDiscard(_fd, (ulong)offset, (ulong)length)
            : Libc.IoctlBlkZeroOut(_fd, (ulong)offset, (ulong)length);
        if (r < 0)
            throw BlockErrors.FromErrno(r, Name, request == Libc.BLKDISCARD ? "ioctl(BLKDISCARD)" : "ioctl(BLKZEROOUT)");
    }));

    public void Grow(long newLength) => FileGrowth.Grow(this, _fd, _isBlockDevice, ref _length, newLength);

    /// <summary>Closes the fd. Only call once no I/O on this device is in flight.</summary>
    public void Dispose() => _handle.Dispose();

    private ValueTask Start(IoUringOperation op)
    {
        var task = op.AsValueTask();
        _reactor.Submit(op);
        return task;
    }
}
