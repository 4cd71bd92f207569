using System.Net.Security;
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

    /// <summary>Ends the transport's own session before the socket closes; <paramref name="clean"/>
    /// says whether the connection ended by the protocol (then a TLS session says goodbye).</summary>
    public virtual ValueTask CloseAsync(bool clean) => default;
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

/// <summary>NBD over TLS: an <see cref="SslStream"/> over the connection's socket, after
/// NBD_OPT_STARTTLS. Always on .NET sockets (docs/nbd.md says why). One read and one write may be
/// in flight at once, which is what SslStream allows: the connection has one reader and one
/// sender.</summary>
internal sealed class TlsTransport(SslStream stream) : NbdTransport
{
    public override ValueTask<int> ReceiveAsync(Memory<byte> destination) => stream.ReadAsync(destination);

    // SslStream writes everything or fails, so a send is never short.
    public override ValueTask<int> SendAsync(ReadOnlyMemory<byte> source)
    {
        var write = stream.WriteAsync(source);
        return write.IsCompletedSuccessfully ? new ValueTask<int>(source.Length) : AwaitWrite(write, source.Length);
    }

    private static async ValueTask<int> AwaitWrite(ValueTask write, int length)
    {
        await write.ConfigureAwait(false);
        return length;
    }

    public override bool RunsOnReactor => false;

    public override async ValueTask CloseAsync(bool clean)
    {
        try
        {
            // close_notify, so the client can tell our close from a truncation attack.
            if (clean)
                await stream.ShutdownAsync().ConfigureAwait(false);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException)
        {
            // The client has gone already.
        }
        finally
        {
            await stream.DisposeAsync().ConfigureAwait(false);
        }
    }
}
