using System.Buffers;
using System.Runtime.InteropServices;
using System.Threading.Tasks.Sources;
using ThinFast.Interop;

namespace ThinFast.IO.Uring;

/// <summary>
/// One request in flight: the parameters of its SQE, the progress of a transfer that may be split
/// by short reads/writes/sends, and the awaitable that completes it. Pooled by the reactor, so a
/// steady-state I/O allocates nothing: the ValueTask handed out wraps this object, and
/// GetResult returns it to the pool. Block requests complete whole or fail; a socket receive
/// completes with what arrived (0 at end of stream), a send with everything sent.
/// </summary>
internal sealed unsafe class IoUringOperation : IValueTaskSource, IValueTaskSource<int>
{
    // EAGAIN/EINTR in a CQE are transient; a request that keeps getting them is failed rather than
    // spun forever.
    private const int MaxTransientRetries = 1000;

    private readonly IoUringReactor _reactor;
    private ManualResetValueTaskSourceCore<int> _core;
    private string _deviceName = "";
    private byte _opcode;
    private int _fd;
    private long _offset;
    private byte* _buffer;
    private long _length;
    private long _done;
    private ushort _bufIndex;
    private uint _opFlags;
    private MemoryHandle _pin;
    private bool _pinned;
    private int _retries;
    // A socket request holds a reference on the socket's handle from submission to completion, so
    // a concurrent close cannot free the fd number while the kernel may still be given it.
    private SafeHandle? _socketHandle;

    /// <summary>Intrusive link for the reactor's queue of requests waiting for a slot.</summary>
    internal IoUringOperation? NextWaiting;

    public IoUringOperation(IoUringReactor reactor)
    {
        _reactor = reactor;
        // Continuations run inline on the reactor thread: that is what lets a continuation's next
        // I/O join the current batch. It is also why nobody may block that thread.
        _core.RunContinuationsAsynchronously = false;
    }

    public ValueTask AsValueTask() => new(this, _core.Version);

    public ValueTask<int> AsValueTaskOfInt() => new(this, _core.Version);

    public void PrepareTransfer(string deviceName, int fd, bool write, long offset, Memory<byte> memory, uint rwFlags)
    {
        Init(deviceName, fd, offset, memory.Length);
        if (MemoryMarshal.TryGetMemoryManager<byte, NativeBuffer>(memory, out var native, out int start, out _)
            && _reactor.IsRegistered(native))
        {
            _opcode = write ? IoUring.IORING_OP_WRITE_FIXED : IoUring.IORING_OP_READ_FIXED;
            _bufIndex = (ushort)native.RegistrationIndex;
            _buffer = native.Pointer + start;
        }
        else
        {
            _opcode = write ? IoUring.IORING_OP_WRITE : IoUring.IORING_OP_READ;
            _pin = memory.Pin();
            _pinned = true;
            _buffer = (byte*)_pin.Pointer;
        }
        _opFlags = rwFlags;
    }

    /// <summary>A RECV (whatever arrives, up to the buffer) or a SEND (all of it) on a connected
    /// stream socket. The caller has added a reference to <paramref name="handle"/>; completion
    /// releases it.</summary>
    public void PrepareSocket(string name, SafeHandle handle, bool send, ReadOnlyMemory<byte> memory)
    {
        Init(name, (int)handle.DangerousGetHandle(), 0, memory.Length);
        _socketHandle = handle;
        _opcode = send ? IoUring.IORING_OP_SEND : IoUring.IORING_OP_RECV;
        _pin = memory.Pin();
        _pinned = true;
        _buffer = (byte*)_pin.Pointer;
        // NOSIGNAL: a peer that went away fails the send with EPIPE instead of signalling the process.
        _opFlags = send ? IoUring.MSG_NOSIGNAL : 0;
    }

    public void PrepareFsync(string deviceName, int fd)
    {
        Init(deviceName, fd, 0, 0);
        _opcode = IoUring.IORING_OP_FSYNC;
        _opFlags = IoUring.IORING_FSYNC_DATASYNC;
    }

    /// <summary>fallocate(2) with <paramref name="mode"/> (FALLOC_FL_PUNCH_HOLE or
    /// FALLOC_FL_ZERO_RANGE, with KEEP_SIZE).</summary>
    public void PrepareFallocate(string deviceName, int fd, long offset, long length, int mode)
    {
        Init(deviceName, fd, offset, length);
        _opcode = IoUring.IORING_OP_FALLOCATE;
        _opFlags = (uint)mode;
    }

    private void Init(string deviceName, int fd, long offset, long length)
    {
        _deviceName = deviceName;
        _fd = fd;
        _offset = offset;
        _length = length;
        _done = 0;
        _retries = 0;
        _buffer = null;
        _bufIndex = 0;
        _opFlags = 0;
    }

    /// <summary>Requests that must move every byte (a short one is continued where it stopped).</summary>
    private bool IsTransfer => _opcode is IoUring.IORING_OP_READ or IoUring.IORING_OP_WRITE
        or IoUring.IORING_OP_READ_FIXED or IoUring.IORING_OP_WRITE_FIXED or IoUring.IORING_OP_SEND;

    /// <summary>Writes every SQE field this request needs; the ring hands out zeroed SQEs, so the
    /// rest (flags, ioprio, personality, splice_fd_in, addr3) stay 0 for every opcode used here.</summary>
    public void FillSqe(IoUringSqe* sqe)
    {
        sqe->Opcode = _opcode;
        sqe->Fd = _fd;
        switch (_opcode)
        {
            case IoUring.IORING_OP_FSYNC:
                // off = len = 0 syncs the whole file.
                sqe->OpFlags = _opFlags;
                break;
            case IoUring.IORING_OP_FALLOCATE:
                // FALLOCATE reuses the fields: addr is the length, len is the mode.
                sqe->Off = (ulong)_offset;
                sqe->Addr = (ulong)_length;
                sqe->Len = _opFlags;
                break;
            case IoUring.IORING_OP_SEND:
            case IoUring.IORING_OP_RECV:
                sqe->Addr = (ulong)(_buffer + _done);
                sqe->Len = (uint)(_length - _done);
                sqe->OpFlags = _opFlags;
                break;
            default:
                sqe->Off = (ulong)(_offset + _done);
                sqe->Addr = (ulong)(_buffer + _done);
                sqe->Len = (uint)(_length - _done);
                sqe->OpFlags = _opFlags;
                sqe->BufIndex = _bufIndex;
                break;
        }
    }

    /// <summary>Handles this request's CQE on the reactor thread: finishes it, or resubmits the
    /// rest of a short transfer, or retries a transient error.</summary>
    public void OnCompletion(int res)
    {
        if (res == -Errno.EAGAIN || res == -Errno.EINTR)
        {
            if (++_retries < MaxTransientRetries)
            {
                _reactor.Submit(this, inFlight: true);
                return;
            }
        }
        else if (res >= 0 && IsTransfer)
        {
            _done += res;
            if (_done < _length)
            {
                if (res > 0)
                {
                    _reactor.Submit(this, inFlight: true);
                    return;
                }
                Fail(new BlockDeviceException(BlockError.IoError,
                    $"{_deviceName}: {OpName} at {_offset + _done} transferred nothing (end of file?)"));
                return;
            }
        }
        if (res < 0)
        {
            Fail(_socketHandle is not null
                ? new IOException($"{_deviceName}: {OpName} of {_length} bytes failed: {Errno.Describe(res)}")
                : BlockErrors.FromErrno(res, _deviceName, $"{OpName} of {_length} bytes at {_offset}"));
            return;
        }
        ReleasePin();
        _core.SetResult(_opcode == IoUring.IORING_OP_RECV ? res : (int)Math.Min(_done, int.MaxValue));
    }

    /// <summary>Fails the request without a CQE (reactor shut down).</summary>
    public void Fail(Exception error)
    {
        ReleasePin();
        _core.SetException(error);
    }

    private string OpName => _opcode switch
    {
        IoUring.IORING_OP_READ or IoUring.IORING_OP_READ_FIXED => "read",
        IoUring.IORING_OP_WRITE or IoUring.IORING_OP_WRITE_FIXED => "write",
        IoUring.IORING_OP_FSYNC => "fdatasync",
        IoUring.IORING_OP_FALLOCATE => (_opFlags & Libc.FALLOC_FL_ZERO_RANGE) != 0 ? "fallocate(ZERO_RANGE)" : "fallocate(PUNCH_HOLE)",
        IoUring.IORING_OP_SEND => "send",
        IoUring.IORING_OP_RECV => "recv",
        _ => "op " + _opcode,
    };

    private void ReleasePin()
    {
        if (_socketHandle is not null)
        {
            _socketHandle.DangerousRelease();
            _socketHandle = null;
        }
        if (_pinned)
        {
            _pin.Dispose();
            _pin = default;
            _pinned = false;
        }
    }

    public void GetResult(short token) => ((IValueTaskSource<int>)this).GetResult(token);

    int IValueTaskSource<int>.GetResult(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _core.Reset();
            _deviceName = "";
            _reactor.ReturnOperation(this);
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _core.OnCompleted(continuation, state, token, flags);
}
