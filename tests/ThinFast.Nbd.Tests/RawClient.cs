using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace ThinFast.Nbd.Tests;

/// <summary>
/// A deliberately badly behaved NBD client on the unix socket: negotiates with GO (simple
/// replies) and then sends whatever the test asks, reading replies only if told to, so tests can
/// stall mid-payload, pipeline requests without reading, or just sit idle.
/// </summary>
public sealed class RawClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);

    private RawClient()
    {
    }

    /// <summary>Connects, checks the greeting and sends the client flags.</summary>
    public static async Task<RawClient> ConnectAsync(string socketPath, CancellationToken cancel)
    {
        var client = new RawClient();
        await client._socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel);
        var greeting = await client.ReceiveAsync(18, cancel);
        Assert.True(greeting is not null && greeting.AsSpan(0, 16).SequenceEqual("NBDMAGICIHAVEOPT"u8), "no NBD greeting");
        // Client flags: fixed newstyle, no zeroes.
        await client._socket.SendAsync(new byte[] { 0, 0, 0, 3 }, cancel);
        return client;
    }

    /// <summary>Connects and negotiates the export with GO, ready for requests.</summary>
    public static async Task<RawClient> ConnectAndGoAsync(string socketPath, CancellationToken cancel, string export = "disk")
    {
        var client = await ConnectAsync(socketPath, cancel);
        var name = Encoding.UTF8.GetBytes(export);
        var data = new byte[4 + name.Length + 2];
        BinaryPrimitives.WriteUInt32BigEndian(data, (uint)name.Length);
        name.CopyTo(data, 4);
        var replies = await client.OptionAsync(7, data, cancel);
        Assert.Equal(1u, replies[^1].Type);
        return client;
    }

    /// <summary>Sends an option and returns its replies up to the final one (ACK or an error).</summary>
    public async Task<List<(uint Type, string Data)>> OptionAsync(uint option, byte[] data, CancellationToken cancel)
    {
        var header = new byte[16];
        "IHAVEOPT"u8.CopyTo(header);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)data.Length);
        await _socket.SendAsync(header.Concat(data).ToArray(), cancel);
        var replies = new List<(uint, string)>();
        while (true)
        {
            var reply = await ReceiveAsync(20, cancel) ?? throw new IOException($"server closed after {replies.Count} replies to option {option}");
            uint type = BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(12));
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(16));
            var body = length == 0 ? [] : await ReceiveAsync(length, cancel) ?? throw new IOException("server closed mid-reply");
            replies.Add((type, Encoding.UTF8.GetString(body)));
            if (type == 1 || (type & 0x80000000) != 0)
                return replies;
        }
    }

    /// <summary>Sends a request header followed by <paramref name="payload"/> (which may be only
    /// part of what the header announces).</summary>
    public async Task SendRequestAsync(ushort command, long offset, int length, ulong cookie, byte[]? payload, CancellationToken cancel)
    {
        var header = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(header, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(header.AsSpan(6), command);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(header.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(24), (uint)length);
        await _socket.SendAsync(payload is null ? header : [.. header, .. payload], cancel);
    }

    /// <summary>Reads a simple reply header; returns its error, or null when the server closed.</summary>
    public async Task<uint?> SimpleReplyAsync(CancellationToken cancel)
    {
        var reply = await ReceiveAsync(16, cancel);
        return reply is null ? null : BinaryPrimitives.ReadUInt32BigEndian(reply.AsSpan(4));
    }

    /// <summary>Reads a READ reply's data.</summary>
    public async Task ReceiveDataAsync(int length, CancellationToken cancel)
    {
        if (await ReceiveAsync(length, cancel) is null)
            throw new IOException("server closed mid-reply");
    }

    /// <summary>Completes when the server closes the connection (bytes it still sends are
    /// discarded).</summary>
    public async Task ClosedByServerAsync(CancellationToken cancel)
    {
        var sink = new byte[1 << 20];
        try
        {
            while (await _socket.ReceiveAsync(sink, cancel) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // A reset is a close too.
        }
    }

    /// <summary>True while the server has not closed the connection (without reading anything).</summary>
    public bool IsOpen
    {
        get
        {
            var probe = new byte[1];
            try
            {
                return !(_socket.Poll(0, SelectMode.SelectRead) && _socket.Receive(probe, SocketFlags.Peek) == 0);
            }
            catch (SocketException)
            {
                return false;
            }
        }
    }

    private async Task<byte[]?> ReceiveAsync(int count, CancellationToken cancel)
    {
        var data = new byte[count];
        for (int done = 0; done < count;)
        {
            int got = await _socket.ReceiveAsync(data.AsMemory(done), cancel);
            if (got == 0)
                return null;
            done += got;
        }
        return data;
    }

    public void Dispose() => _socket.Dispose();
}
