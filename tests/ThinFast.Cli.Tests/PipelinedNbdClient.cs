using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Net.Sockets;
using System.Text;

namespace ThinFast.Cli.Tests;

/// <summary>The server closed the connection (or died) before replying.</summary>
public sealed class NbdConnectionLostException(string message) : IOException(message);

/// <summary>
/// A well-behaved NBD client on a unix socket with many requests in flight: fixed newstyle, GO,
/// simple replies. Requests are written whole under a send lock, and one reader task matches
/// replies to requests by cookie, so callers can await as many requests at once as they like.
/// When the connection ends, every request still waiting fails with
/// <see cref="NbdConnectionLostException"/>: its outcome is unknown.
/// </summary>
public sealed class PipelinedNbdClient : IAsyncDisposable
{
    public const ushort Read = 0, Write = 1, Disconnect = 2, Flush = 3, Trim = 4;
    public const ushort FlagFua = 1;

    private sealed record Pending(TaskCompletionSource<uint> Reply, Memory<byte> ReadInto);

    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly ConcurrentDictionary<ulong, Pending> _pending = new();
    private Task _reader = Task.CompletedTask;
    private long _nextCookie;
    private volatile bool _lost;

    private PipelinedNbdClient()
    {
    }

    /// <summary>The export size from the GO reply.</summary>
    public long Size { get; private set; }

    public static async Task<PipelinedNbdClient> ConnectAsync(string socketPath, string export, CancellationToken cancel)
    {
        var client = new PipelinedNbdClient();
        try
        {
            await client.HandshakeAsync(socketPath, export, cancel);
        }
        catch
        {
            client._socket.Dispose();
            throw;
        }
        client._reader = Task.Run(client.ReadRepliesAsync, CancellationToken.None);
        return client;
    }

    private async Task HandshakeAsync(string socketPath, string export, CancellationToken cancel)
    {
        await _socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel);
        var greeting = await ReceiveExactlyAsync(18, cancel);
        if (!greeting.AsSpan(0, 16).SequenceEqual("NBDMAGICIHAVEOPT"u8))
            throw new IOException("not an NBD server");
        // Client flags: FIXED_NEWSTYLE | NO_ZEROES.
        await _socket.SendAsync(new byte[] { 0, 0, 0, 3 }, cancel);
        byte[] name = Encoding.UTF8.GetBytes(export);
        var option = new byte[16 + 4 + name.Length + 2];
        "IHAVEOPT"u8.CopyTo(option);
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(8), 7); // NBD_OPT_GO
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(12), (uint)(4 + name.Length + 2));
        BinaryPrimitives.WriteUInt32BigEndian(option.AsSpan(16), (uint)name.Length);
        name.CopyTo(option, 20);
        await _socket.SendAsync(option, cancel);
        while (true)
        {
            var reply = await ReceiveExactlyAsync(20, cancel);
            uint type = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12));
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16));
            byte[] body = length == 0 ? [] : await ReceiveExactlyAsync(length, cancel);
            if (type == 1) // ACK
                return;
            if ((type & 0x80000000) != 0)
                throw new IOException($"GO refused (0x{type:x8}): {Encoding.UTF8.GetString(body)}");
            // NBD_REP_INFO, NBD_INFO_EXPORT: size and transmission flags.
            if (type == 3 && length >= 12 && BinaryPrimitives.ReadUInt16BigEndian(body) == 0)
                Size = (long)BinaryPrimitives.ReadUInt64BigEndian(body.AsSpan(2));
        }
    }

    /// <summary>Completes when the connection has ended (the server closed it, or it died).</summary>
    public Task Closed => _reader;

    /// <summary>Sends bytes as they are, for a test that stalls in the middle of a request.</summary>
    public async Task SendRawAsync(ReadOnlyMemory<byte> bytes)
    {
        await _sendLock.WaitAsync(CancellationToken.None);
        try
        {
            await _socket.SendAsync(bytes, SocketFlags.None, CancellationToken.None);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>A request header as the server expects it.</summary>
    public static byte[] RequestHeader(ushort command, ushort flags, ulong cookie, long offset, int length)
    {
        var header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), (uint)length);
        return header;
    }

    public Task<uint> WriteAsync(long offset, ReadOnlyMemory<byte> data, bool fua) =>
        SendAsync(Write, fua ? FlagFua : (ushort)0, offset, data.Length, data, default);

    public Task<uint> ReadAsync(long offset, Memory<byte> into) => SendAsync(Read, 0, offset, into.Length, default, into);

    public Task<uint> FlushAsync() => SendAsync(Flush, 0, 0, 0, default, default);

    public Task<uint> TrimAsync(long offset, int length) => SendAsync(Trim, 0, offset, length, default, default);

    /// <summary>Sends one request and completes with the NBD error of its reply (0 = success).</summary>
    private async Task<uint> SendAsync(ushort command, ushort flags, long offset, int length, ReadOnlyMemory<byte> payload, Memory<byte> readInto)
    {
        ulong cookie = (ulong)Interlocked.Increment(ref _nextCookie);
        var pending = new Pending(new TaskCompletionSource<uint>(TaskCreationOptions.RunContinuationsAsynchronously), readInto);
        _pending[cookie] = pending;
        var header = RequestHeader(command, flags, cookie, offset, length);
        await _sendLock.WaitAsync(CancellationToken.None);
        try
        {
            if (_lost)
                throw new NbdConnectionLostException("connection already lost");
            await _socket.SendAsync(header, SocketFlags.None, CancellationToken.None);
            if (!payload.IsEmpty)
                await _socket.SendAsync(payload, SocketFlags.None, CancellationToken.None);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Lose();
        }
        finally
        {
            _sendLock.Release();
        }
        return await pending.Reply.Task;
    }

    private async Task ReadRepliesAsync()
    {
        try
        {
            var header = new byte[16];
            while (true)
            {
                if (!await TryReceiveExactlyAsync(header, CancellationToken.None))
                    return;
                if (BinaryPrimitives.ReadUInt32BigEndian(header) != 0x67446698)
                    throw new IOException("bad reply magic");
                uint error = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
                ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
                if (!_pending.TryRemove(cookie, out var pending))
                    throw new IOException($"reply for unknown cookie {cookie}");
                if (error == 0 && !pending.ReadInto.IsEmpty && !await TryReceiveExactlyAsync(pending.ReadInto, CancellationToken.None))
                {
                    _pending[cookie] = pending;
                    return;
                }
                pending.Reply.TrySetResult(error);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
        }
        finally
        {
            Lose();
        }
    }

    private void Lose()
    {
        _lost = true;
        foreach (var cookie in _pending.Keys)
            if (_pending.TryRemove(cookie, out var pending))
                pending.Reply.TrySetException(new NbdConnectionLostException("the connection ended before the reply"));
    }

    private async Task<byte[]> ReceiveExactlyAsync(int count, CancellationToken cancel)
    {
        var data = new byte[count];
        if (!await TryReceiveExactlyAsync(data, cancel))
            throw new NbdConnectionLostException("the server closed the connection during the handshake");
        return data;
    }

    private async Task<bool> TryReceiveExactlyAsync(Memory<byte> into, CancellationToken cancel)
    {
        for (int done = 0; done < into.Length;)
        {
            int got = await _socket.ReceiveAsync(into[done..], SocketFlags.None, cancel);
            if (got == 0)
                return false;
            done += got;
        }
        return true;
    }

    public async ValueTask DisposeAsync()
    {
        if (!_lost)
        {
            try
            {
                var disc = RequestHeader(Disconnect, 0, 0, 0, 0);
                await _sendLock.WaitAsync(CancellationToken.None);
                try
                {
                    await _socket.SendAsync(disc, SocketFlags.None, CancellationToken.None);
                    _socket.Shutdown(SocketShutdown.Send);
                }
                finally
                {
                    _sendLock.Release();
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }
        _socket.Dispose();
        await _reader;
        _sendLock.Dispose();
    }
}
