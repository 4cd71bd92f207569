using System.Net.Sockets;
using ThinFast.IO.Uring;

namespace ThinFast.Nbd;

/// <summary>How a connection's bytes move: through the io_uring reactor that also serves the disks
/// (Linux), or through .NET sockets (everywhere else, or when io_uring is unavailable).</summary>
internal abstract class NbdTransport
{
    /// <summary>Completes with the bytes received, 0 at end of stream.</summary>
    public abstract ValueTask<int> ReceiveAsync(Memory<byte> destination);

    /// <summary>Completes with the bytes sent (callers send the rest if it is short).</summary>
    public abstract ValueTask<int> SendAsync(ReadOnlyMemory<byte> source);

    /// <summary>True when completions run inline on a reactor thread. The connection then hands
    /// requests to its slots inline too, so a request is parsed, served and answered on that one
    /// thread; with .NET sockets it hands them to the thread pool.</summary>
    public abstract bool RunsOnReactor { get; }
}

internal sealed class SocketTransport(Socket socket) : NbdTransport
{
    public override ValueTask<int> ReceiveAsync(Memory<byte> destination) => socket.ReceiveAsync(destination, SocketFlags.None);

    public override ValueTask<int> SendAsync(ReadOnlyMemory<byte> source) => socket.SendAsync(source, SocketFlags.None);

    public override bool RunsOnReactor => false;
}

internal sealed class UringTransport(IoUringSocket socket) : NbdTransport
{
    public override ValueTask<int> ReceiveAsync(Memory<byte> destination) => socket.ReceiveAsync(destination);

    public override ValueTask<int> SendAsync(ReadOnlyMemory<byte> source) => socket.SendAsync(source);

    public override bool RunsOnReactor => true;
}
