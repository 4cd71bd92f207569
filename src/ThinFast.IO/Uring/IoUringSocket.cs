using System.Runtime.InteropServices;
using ThinFast.Interop;

namespace ThinFast.IO.Uring;

/// <summary>
/// Receives and sends on a connected stream socket through an <see cref="IoUringReactor"/>, so a
/// server's network I/O shares the ring, the batches and the thread of its disk I/O: a request
/// read from the socket, the disk reads it causes and its reply can all go to the kernel in one
/// io_uring_enter, and their continuations run inline on the reactor thread (the same rule as
/// for devices: never block in them).
/// </summary>
/// <remarks>
/// The socket stays owned by its creator (a .NET <c>Socket</c>, say); this only borrows the
/// handle. Each request holds a reference on it until its completion, so closing the socket
/// while a request is in flight defers the close instead of letting the fd number be reused under
/// the kernel. Close with shutdown first: a receive waiting for data only ends when the peer or
/// shutdown(2) ends the stream.
/// </remarks>
public sealed class IoUringSocket
{
    private readonly IoUringReactor _reactor;
    private readonly SafeHandle _handle;
    private readonly string _name;

    /// <summary>Clears O_NONBLOCK on the socket: io_uring then waits for readiness itself (poll
    /// arming) instead of completing receives with EAGAIN.</summary>
    public IoUringSocket(SafeHandle handle, IoUringReactor reactor, string name)
    {
        ArgumentNullException.ThrowIfNull(handle);
        ArgumentNullException.ThrowIfNull(reactor);
        _handle = handle;
        _reactor = reactor;
        _name = name;
        int r = Libc.ClearNonBlocking((int)handle.DangerousGetHandle());
        if (r < 0)
            throw new IOException($"{name}: fcntl(F_SETFL) failed: {Errno.Describe(r)}");
    }

    public IoUringReactor Reactor => _reactor;

    /// <summary>Completes with the bytes received (at most the buffer's length), 0 once the peer
    /// has closed its side.</summary>
    public ValueTask<int> ReceiveAsync(Memory<byte> destination) =>
        destination.IsEmpty ? ValueTask.FromResult(0) : Start(send: false, destination);

    /// <summary>Completes once every byte has been handed to the kernel.</summary>
    public ValueTask<int> SendAsync(ReadOnlyMemory<byte> source) =>
        source.IsEmpty ? ValueTask.FromResult(0) : Start(send: true, source);

    private ValueTask<int> Start(bool send, ReadOnlyMemory<byte> memory)
    {
        bool added = false;
        // Throws ObjectDisposedException once the socket is closed; released by the completion.
        _handle.DangerousAddRef(ref added);
        var op = _reactor.RentOperation();
        op.PrepareSocket(_name, _handle, send, memory);
        var task = op.AsValueTaskOfInt();
        _reactor.Submit(op);
        return task;
    }
}
