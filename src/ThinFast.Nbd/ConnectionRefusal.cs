using System.Buffers.Binary;
using System.Net.Sockets;

namespace ThinFast.Nbd;

/// <summary>
/// Talks to a client the server has no room for. A bare close looks to the client like a crash or
/// a network fault; instead it gets the greeting and then every option is answered with
/// NBD_REP_ERR_SHUTDOWN carrying the reason, until it gives up. qemu prints the reason ("Server
/// shutting down before option 7 (go)" / "server reported: server is at its connection limit
/// ..."); libnbd 1.14 reports ESHUTDOWN ("server replied with error to opt_go request: Cannot send
/// after transport endpoint shutdown") and shows the reason under LIBNBD_DEBUG=1. Runs on .NET
/// sockets, never on the io_uring ring, holds no payload buffer, and ends after
/// <see cref="MaxOptions"/> options or the timeout.
/// </summary>
/// <remarks>ERR_SHUTDOWN rather than ERR_POLICY: it says nothing the client could ask will be
/// granted on this connection and it should disconnect; POLICY refuses one option (libnbd reports
/// it as "Operation not supported", as if the export lacked a feature).</remarks>
internal static class ConnectionRefusal
{
    private const int MaxOptions = 16;

    public static async Task RunAsync(Socket socket, string reason, TimeSpan timeout)
    {
        using var deadline = new CancellationTokenSource(timeout);
        var token = deadline.Token;
        var message = NbdConnection.Utf8(reason);
        var header = new byte[16];
        var scratch = new byte[4096];
        try
        {
            await socket.SendAsync(NbdConnection.Greeting(), SocketFlags.None, token).ConfigureAwait(false);
            if (!await ReceiveExactAsync(socket, header.AsMemory(0, 4), token).ConfigureAwait(false))
                return;
            for (int i = 0; i < MaxOptions; i++)
            {
                if (!await ReceiveExactAsync(socket, header, token).ConfigureAwait(false))
                    return;
                var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
                uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
                if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdProtocol.IHaveOpt || length > NbdProtocol.MaxOptionLength)
                    return;
                for (int left = (int)length; left > 0; left -= Math.Min(left, scratch.Length))
                {
                    if (!await ReceiveExactAsync(socket, scratch.AsMemory(0, Math.Min(left, scratch.Length)), token).ConfigureAwait(false))
                        return;
                }
                // EXPORT_NAME has no error reply: closing is the only answer.
                if (option == NbdOption.ExportName)
                    return;
                var reply = option == NbdOption.Abort
                    ? NbdConnection.OptionReply(option, NbdOptionReply.Ack)
                    : NbdConnection.OptionReply(option, NbdOptionReply.ErrShutdown, message);
                await socket.SendAsync(reply, SocketFlags.None, token).ConfigureAwait(false);
                if (option == NbdOption.Abort)
                    return;
            }
        }
        catch (Exception e) when (e is SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away, took too long, or the server is stopping: nothing to tell.
        }
        finally
        {
            socket.Dispose();
        }
    }

    private static async ValueTask<bool> ReceiveExactAsync(Socket socket, Memory<byte> destination, CancellationToken token)
    {
        while (!destination.IsEmpty)
        {
            int got = await socket.ReceiveAsync(destination, SocketFlags.None, token).ConfigureAwait(false);
            if (got == 0)
                return false;
            destination = destination[got..];
        }
        return true;
    }
}
