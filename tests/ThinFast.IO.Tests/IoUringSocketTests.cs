using System.Net.Sockets;
using ThinFast.IO.Uring;

namespace ThinFast.IO.Tests;

/// <summary>Socket receives and sends through a reactor, on a connected unix stream pair.</summary>
public sealed class IoUringSocketTests : IDisposable
{
    private readonly IoUringReactor _reactor;
    private readonly Socket _ours;
    private readonly Socket _peer;

    public IoUringSocketTests()
    {
        Assert.True(IoUringReactor.TryCreate(out var reactor, out string? error), "io_uring is required: " + error);
        _reactor = reactor;
        string path = Path.Combine(Path.GetTempPath(), $"thinfast-sock-{Guid.NewGuid():N}");
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(path));
        listener.Listen(1);
        _peer = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        _peer.Connect(new UnixDomainSocketEndPoint(path));
        _ours = listener.Accept();
        File.Delete(path);
    }

    public void Dispose()
    {
        _ours.Dispose();
        _peer.Dispose();
        _reactor.Dispose();
    }

    [Fact]
    public async Task LargeSendsArriveWholeAndReceivesReturnWhatArrived()
    {
        var socket = new IoUringSocket(_ours.SafeHandle, _reactor, "test socket");
        var payload = new byte[8 << 20];
        new Random(3).NextBytes(payload);
        // Far more than the socket buffer: the send completes only once the peer has read it all,
        // so the reactor must continue short sends where they stopped.
        var send = socket.SendAsync(payload).AsTask();
        var received = new byte[payload.Length];
        int got = 0;
        while (got < received.Length)
            got += await _peer.ReceiveAsync(received.AsMemory(got), SocketFlags.None, TestContext.Current.CancellationToken);
        Assert.Equal(payload.Length, await send);
        Assert.True(payload.AsSpan().SequenceEqual(received));

        // A receive waits for data, then returns what came (not the whole buffer).
        var buffer = new byte[4096];
        var receive = socket.ReceiveAsync(buffer).AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(receive.IsCompleted);
        await _peer.SendAsync("hello"u8.ToArray(), SocketFlags.None, TestContext.Current.CancellationToken);
        Assert.Equal(5, await receive);
        Assert.Equal("hello"u8.ToArray(), buffer[..5]);
    }

    [Fact]
    public async Task ShutdownEndsAPendingReceiveAndAClosedSocketRefusesNewRequests()
    {
        var socket = new IoUringSocket(_ours.SafeHandle, _reactor, "test socket");
        var buffer = new byte[4096];
        var receive = socket.ReceiveAsync(buffer).AsTask();
        await Task.Delay(50, TestContext.Current.CancellationToken);
        Assert.False(receive.IsCompleted);
        // What the NBD server's timeouts do: shutdown(2) ends the receive with end of stream.
        _ours.Shutdown(SocketShutdown.Both);
        Assert.Equal(0, await receive.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
        // A send after shutdown fails with an I/O error naming the socket, not a signal.
        var failed = await Assert.ThrowsAsync<IOException>(async () => await socket.SendAsync(new byte[16]));
        Assert.Contains("test socket", failed.Message);
        // The reference each request held is released, so the close goes through at once.
        _ours.Dispose();
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await socket.ReceiveAsync(buffer));
    }

    [Fact]
    public async Task ThePeerClosingEndsAReceiveWithZero()
    {
        var socket = new IoUringSocket(_ours.SafeHandle, _reactor, "test socket");
        var receive = socket.ReceiveAsync(new byte[64]).AsTask();
        _peer.Dispose();
        Assert.Equal(0, await receive.WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken));
    }
}
