using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using ThinFast.IO;

namespace ThinFast.Nbd;

/// <summary>
/// One client connection: the fixed-newstyle handshake, then the transmission phase. A single
/// reader decodes request headers (and WRITE payloads) in order and hands each request to one of a
/// fixed set of <see cref="NbdRequest"/> slots, which serve it concurrently and write their replies
/// under the connection's send lock. Nothing is allocated per request.
/// </summary>
internal sealed partial class NbdConnection
{
    private const int ReceiveBufferSize = 64 * 1024;

    private readonly NbdServer _server;
    private readonly Socket _socket;
    // Replaced once, by a TlsTransport, when STARTTLS succeeds (before transmission starts).
    private NbdTransport _transport;
    private readonly NbdServerOptions _options;
    // Pinned so receiving into it needs no per-call pinning of a movable array.
    private readonly byte[] _rx = GC.AllocateUninitializedArray<byte>(ReceiveBufferSize, pinned: true);
    private int _rxStart;
    private int _rxEnd;

    // Handshake state.
    private bool _structuredReplies;
    private bool _noZeroes;
    private NbdExport? _metaContextExport;
    private bool _allocationContextSelected;

    // Transmission state.
    private NbdExport _export = null!;
    private NbdRequest[] _slots = [];
    private readonly object _slotLock = new();
    private NbdRequest[] _freeSlots = [];
    private int _freeCount;
    private bool _readerWaitingForSlot;
    private readonly AsyncSignal _slotFreed;

    // Replies leave through one "sender" at a time (the slot holding the role). Small replies that
    // arrive while someone is sending are copied into the pending buffer and go out with the
    // sender's next send, so a busy connection needs far fewer send calls than replies. Replies
    // that do not fit queue for the role in arrival order. Invariant: pending bytes exist only
    // while the role is held, so the holder always drains them before letting go.
    private const int SendBufferSize = 64 * 1024;
    internal const int CoalesceLimit = 16 * 1024;
    private readonly object _sendLock = new();
    private bool _sending;
    private byte[] _pending = [];
    private byte[] _inFlight = [];
    private int _pendingLength;
    private NbdRequest[] _sendQueue = [];
    private int _sendQueueHead;
    private int _sendQueueCount;

    private volatile bool _broken;

    // Watched by the server's timer: a client that never finishes the handshake, stalls in the
    // middle of a request, stops reading its replies or just sits idle would otherwise hold a
    // connection slot, and in the middle cases payload buffers, forever. Each is a timestamp
    // (0 = not running) so the hot path only stores a number.
    private long _handshakeDeadline;
    private long _sendStartedAt;
    private long _receiveStartedAt;
    private long _lastActivityAt;
    private volatile bool _transmitting;

    public NbdConnection(NbdServer server, Socket socket)
    {
        _server = server;
        _socket = socket;
        _options = server.Options;
        _transport = server.CreateTransport(socket);
        Budget = new PayloadBudget(_options.ConnectionBufferBytes);
        _slotFreed = new AsyncSignal(inline: _transport.RunsOnReactor);
        _handshakeDeadline = Environment.TickCount64 + (long)_options.HandshakeTimeout.TotalMilliseconds;
    }

    /// <summary>Called before each send call: the send timeout measures time without progress.</summary>
    internal void SendStarting() => Volatile.Write(ref _sendStartedAt, Environment.TickCount64);

    internal void SendFinished() => Volatile.Write(ref _sendStartedAt, 0);

    /// <summary>A send has been waiting for the client to read: what a stopping server drops.</summary>
    internal bool IsSending => Volatile.Read(ref _sendStartedAt) != 0;

    // A request's first bytes are here but not all of it: its receive deadline runs from now.
    private void ReceiveStarting()
    {
        if (_receiveStartedAt == 0)
            Volatile.Write(ref _receiveStartedAt, Environment.TickCount64);
    }

    private void ReceiveFinished() => Volatile.Write(ref _receiveStartedAt, 0);

    private void Active() => Volatile.Write(ref _lastActivityAt, Environment.TickCount64);

    /// <summary>Drops the connection if its handshake, receiving a request or sending a reply has
    /// taken too long, or it has been idle too long.</summary>
    internal void CheckTimeouts(long now)
    {
        long deadline = Volatile.Read(ref _handshakeDeadline);
        long sendStarted = Volatile.Read(ref _sendStartedAt);
        long receiveStarted = Volatile.Read(ref _receiveStartedAt);
        string? reason = null;
        if (deadline != 0 && now > deadline)
            reason = $"handshake not finished within {_options.HandshakeTimeout}";
        else if (sendStarted != 0 && now - sendStarted > (long)_options.SendTimeout.TotalMilliseconds)
            reason = $"client has not read its replies for {_options.SendTimeout}";
        else if (receiveStarted != 0 && now - receiveStarted > (long)_options.ReceiveTimeout.TotalMilliseconds)
            reason = $"request (header or WRITE payload) not fully received within {_options.ReceiveTimeout}";
        else if (_options.IdleTimeout is { } idle && IsIdle && now - Volatile.Read(ref _lastActivityAt) > (long)idle.TotalMilliseconds)
            reason = $"idle for {idle}";
        if (reason is null)
            return;
        _server.Log($"nbd: dropping client: {reason}");
        // Shutting down ends a receive or send stuck in the kernel, on io_uring too; the
        // connection's own task closes the socket once its requests have let go of it. Closing it
        // here could not work: Socket.Dispose spins until no request holds the handle, and an
        // io_uring request only lets go when the reactor runs its completion, which may be
        // waiting for the lock this runs under.
        MarkBroken();
    }

    // Read without the slot lock: a stale count only moves the idle check to the next tick.
    private bool IsIdle => _transmitting && Volatile.Read(ref _freeCount) == _slots.Length && Volatile.Read(ref _receiveStartedAt) == 0;

    internal NbdServer Server => _server;

    /// <summary>The payload bytes this connection may hold.</summary>
    internal PayloadBudget Budget { get; }

    internal NbdTransport Transport => _transport;

    internal NbdExport Export => _export;

    internal bool StructuredReplies => _structuredReplies;

    /// <summary>Stops reading new requests; in-flight ones still finish and get replies.</summary>
    public void BeginShutdown()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Receive);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already closed by the client: nothing left to stop.
        }
    }

    public async Task RunAsync()
    {
        bool clean = false;
        try
        {
            if (await HandshakeAsync().ConfigureAwait(false))
                await TransmitAsync().ConfigureAwait(false);
            clean = !_broken;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException or NbdProtocolException)
        {
            // The client went away or broke the protocol; only this connection ends.
            _server.Log(e is NbdProtocolException ? $"nbd: dropping client: {e.Message}" : null);
        }
        finally
        {
            try
            {
                // A clean TLS close sends close_notify, which a client not reading would hold
                // forever: the send timeout covers it like any reply.
                SendStarting();
                await _transport.CloseAsync(clean).ConfigureAwait(false);
            }
            finally
            {
                SendFinished();
                _socket.Dispose();
                _server.TransportClosed(_transport);
            }
        }
    }

    // ---- transmission phase -------------------------------------------------------------------

    private async Task TransmitAsync()
    {
        int n = _options.RequestsPerConnection;
        _slots = new NbdRequest[n];
        _freeSlots = new NbdRequest[n];
        _sendQueue = new NbdRequest[n];
        _pending = GC.AllocateUninitializedArray<byte>(SendBufferSize, pinned: true);
        _inFlight = GC.AllocateUninitializedArray<byte>(SendBufferSize, pinned: true);
        var loops = new Task[n];
        for (int i = 0; i < n; i++)
        {
            _slots[i] = new NbdRequest(this, inline: _transport.RunsOnReactor);
            _freeSlots[i] = _slots[i];
            loops[i] = _slots[i].RunAsync();
        }
        _freeCount = n;
        Active();
        _transmitting = true;

        try
        {
            await ReadRequestsAsync().ConfigureAwait(false);
        }
        finally
        {
            // Let every in-flight request finish and reply, then stop the slot loops.
            for (int i = 0; i < n; i++)
            {
                while (!TryTakeSlot(out _))
                    await _slotFreed.WaitAsync().ConfigureAwait(false);
            }
            foreach (var slot in _slots)
                slot.PostExit();
            await Task.WhenAll(loops).ConfigureAwait(false);
        }
    }

    /// <summary>Reads requests in order. Every receive is awaited directly in this long-lived
    /// method, so reading requests allocates nothing.</summary>
    private async Task ReadRequestsAsync()
    {
        long size = _export.Volume.Size;
        var pool = _server.Buffers;
        while (!_server.IsStopping && !_broken)
        {
            while (_rxEnd - _rxStart < NbdProtocol.RequestHeaderSize)
            {
                if (_rxEnd > _rxStart)
                    ReceiveStarting();
                CompactReceiveBuffer();
                int got = await _transport.ReceiveAsync(_rx.AsMemory(_rxEnd)).ConfigureAwait(false);
                if (got == 0)
                {
                    if (_rxEnd == _rxStart)
                        return;
                    throw new NbdProtocolException("connection closed in the middle of a request header");
                }
                _rxEnd += got;
                Active();
            }
            var header = _rx.AsSpan(_rxStart, NbdProtocol.RequestHeaderSize);
            uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
            if (magic != NbdProtocol.RequestMagic)
                throw new NbdProtocolException($"bad request magic 0x{magic:x8}");
            var flags = (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(header[4..]);
            var command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(header[6..]);
            ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header[8..]);
            ulong offset = BinaryPrimitives.ReadUInt64BigEndian(header[16..]);
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header[24..]);
            _rxStart += NbdProtocol.RequestHeaderSize;
            // Waiting for a slot or for budget below is this server holding the client back, not
            // the client stalling: the receive deadline only covers the client's bytes.
            ReceiveFinished();

            if (command == NbdCommand.Disconnect)
                return;

            NbdRequest? slot;
            while (!TryTakeSlot(out slot))
                await _slotFreed.WaitAsync().ConfigureAwait(false);
            var error = Validate(command, flags, offset, length, size, out var message);
            slot.Prepare(command, flags, cookie, (long)offset, length, error, message);

            if (command == NbdCommand.Write)
            {
                if (error == NbdError.None)
                {
                    // Over budget, only this connection's own requests can free it: wait for them
                    // before the payload is read, so the client is held back through TCP.
                    if (!Budget.TryTake(length))
                        await Budget.TakeAsync(length).ConfigureAwait(false);
                    ReceiveStarting();
                    var buffer = pool.Rent((int)length);
                    slot.Payload = buffer;
                    var destination = buffer.Memory.Slice(PayloadBufferPool.HeaderRoom, (int)length);
                    int buffered = Math.Min(_rxEnd - _rxStart, destination.Length);
                    _rx.AsSpan(_rxStart, buffered).CopyTo(destination.Span);
                    _rxStart += buffered;
                    destination = destination[buffered..];
                    // The rest goes straight from the socket into the payload buffer.
                    while (!destination.IsEmpty)
                    {
                        int got = await _transport.ReceiveAsync(destination).ConfigureAwait(false);
                        if (got == 0)
                        {
                            AbandonSlot(slot);
                            return;
                        }
                        destination = destination[got..];
                    }
                }
                else if (length <= _options.MaxDrainBytes)
                {
                    ReceiveStarting();
                    // Keep the stream in sync: read the refused payload and throw it away.
                    long remaining = length;
                    while (remaining > 0)
                    {
                        if (_rxStart == _rxEnd)
                        {
                            _rxStart = _rxEnd = 0;
                            int got = await _transport.ReceiveAsync(_rx.AsMemory()).ConfigureAwait(false);
                            if (got == 0)
                            {
                                AbandonSlot(slot);
                                return;
                            }
                            _rxEnd = got;
                        }
                        int take = (int)Math.Min(remaining, _rxEnd - _rxStart);
                        _rxStart += take;
                        remaining -= take;
                    }
                }
                else
                {
                    // Too much to throw away: answer, then hang up (the stream cannot be resynchronised).
                    slot.Post();
                    return;
                }
            }
            ReceiveFinished();
            slot.Post();
        }
    }

    private void AbandonSlot(NbdRequest slot)
    {
        slot.ReturnPayload();
        ReleaseSlot(slot);
    }

    private void CompactReceiveBuffer()
    {
        if (_rxStart == 0)
            return;
        Buffer.BlockCopy(_rx, _rxStart, _rx, 0, _rxEnd - _rxStart);
        _rxEnd -= _rxStart;
        _rxStart = 0;
    }

    private NbdError Validate(NbdCommand command, NbdCommandFlags flags, ulong offset, uint length, long size, out ErrorText message)
    {
        bool readOnly = _export.ReadOnly;
        // FUA is accepted (and ignored where meaningless) on every command once advertised.
        var common = readOnly ? NbdCommandFlags.None : NbdCommandFlags.Fua;
        NbdCommandFlags allowed;
        bool writes = false;
        switch (command)
        {
            case NbdCommand.Read:
                allowed = common | (_structuredReplies ? NbdCommandFlags.DontFragment : 0);
                break;
            case NbdCommand.Write:
            case NbdCommand.Trim:
                allowed = common;
                writes = true;
                break;
            case NbdCommand.Flush:
            case NbdCommand.Cache:
                allowed = common;
                break;
            case NbdCommand.WriteZeroes:
                allowed = common | NbdCommandFlags.NoHole | NbdCommandFlags.FastZero;
                writes = true;
                break;
            case NbdCommand.BlockStatus:
                allowed = common | NbdCommandFlags.ReqOne;
                break;
            default:
                message = ErrorText.UnknownCommand;
                return NbdError.Invalid;
        }
        if ((flags & ~allowed) != 0)
        {
            message = ErrorText.UnknownFlag;
            return NbdError.Invalid;
        }
        if (command == NbdCommand.Flush)
        {
            message = ErrorText.None;
            return NbdError.None;
        }
        if (writes && readOnly)
        {
            message = ErrorText.ReadOnly;
            return NbdError.Perm;
        }
        if (command == NbdCommand.BlockStatus && !_allocationContextSelected)
        {
            message = ErrorText.NoMetaContext;
            return NbdError.Invalid;
        }
        if (length == 0)
        {
            message = ErrorText.ZeroLength;
            return NbdError.Invalid;
        }
        if (command is NbdCommand.Read or NbdCommand.Write && length > (uint)_options.MaxPayload)
        {
            message = ErrorText.TooLarge;
            return (flags & NbdCommandFlags.DontFragment) != 0 ? NbdError.Overflow : NbdError.Invalid;
        }
        if (offset > (ulong)size || length > (ulong)size - offset)
        {
            message = ErrorText.OutOfRange;
            return command is NbdCommand.Write or NbdCommand.WriteZeroes ? NbdError.NoSpace : NbdError.Invalid;
        }
        int minimum = _options.MinimumBlockSize;
        if (minimum > 1 && ((offset | length) & (ulong)(minimum - 1)) != 0)
        {
            message = ErrorText.Misaligned;
            return NbdError.Invalid;
        }
        message = ErrorText.None;
        return NbdError.None;
    }

    private bool TryTakeSlot([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out NbdRequest? slot)
    {
        lock (_slotLock)
        {
            if (_freeCount > 0)
            {
                slot = _freeSlots[--_freeCount];
                return true;
            }
            _readerWaitingForSlot = true;
            slot = null;
            return false;
        }
    }

    internal void ReleaseSlot(NbdRequest slot)
    {
        Active();
        bool wake;
        lock (_slotLock)
        {
            _freeSlots[_freeCount++] = slot;
            wake = _readerWaitingForSlot;
            _readerWaitingForSlot = false;
        }
        if (wake)
            _slotFreed.Set();
    }

    /// <summary>Hands a finished reply to the connection.</summary>
    internal ReplyDisposition SubmitReply(NbdRequest slot, ReadOnlyMemory<byte> reply)
    {
        lock (_sendLock)
        {
            if (!_sending)
            {
                _sending = true;
                return ReplyDisposition.SendNow;
            }
            if (_sendQueueCount == 0 && reply.Length <= CoalesceLimit && reply.Length <= SendBufferSize - _pendingLength)
            {
                reply.Span.CopyTo(_pending.AsSpan(_pendingLength));
                _pendingLength += reply.Length;
                return ReplyDisposition.Queued;
            }
            _sendQueue[(_sendQueueHead + _sendQueueCount++) % _sendQueue.Length] = slot;
            return ReplyDisposition.WaitForTurn;
        }
    }

    /// <summary>Called by the sender after each send: true with the next bytes to send while it
    /// keeps the role; false once the role went to a queued slot or was released.</summary>
    internal bool NextSend(out ReadOnlyMemory<byte> data)
    {
        NbdRequest? next = null;
        lock (_sendLock)
        {
            // Pending bytes go first: nothing is appended while slots queue, so neither side starves.
            if (_pendingLength > 0)
            {
                // Swap so slots can keep appending while these bytes are on their way.
                (_pending, _inFlight) = (_inFlight, _pending);
                data = _inFlight.AsMemory(0, _pendingLength);
                _pendingLength = 0;
                return true;
            }
            data = default;
            if (_sendQueueCount > 0)
            {
                next = _sendQueue[_sendQueueHead];
                _sendQueue[_sendQueueHead] = null!;
                _sendQueueHead = (_sendQueueHead + 1) % _sendQueue.Length;
                _sendQueueCount--;
            }
            else
            {
                _sending = false;
            }
        }
        // The role passes straight to the next waiter, so nobody can overtake it.
        next?.SendGranted.Set();
        return false;
    }

    /// <summary>The sender's send failed: pending bytes are dropped (the connection is lost) and the
    /// role moves on so queued slots can fail too and free themselves.</summary>
    internal void AbandonSend()
    {
        lock (_sendLock)
            _pendingLength = 0;
        NextSend(out _);
    }

    /// <summary>A reply could not be written: stop reading; in-flight requests fail their sends.</summary>
    internal void MarkBroken()
    {
        _broken = true;
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already gone.
        }
    }

    // ---- socket I/O ---------------------------------------------------------------------------

    // Helpers for the handshake only; the request path awaits the transport directly.

    private async ValueTask SendAsync(ReadOnlyMemory<byte> data)
    {
        while (!data.IsEmpty)
        {
            int sent = await _transport.SendAsync(data).ConfigureAwait(false);
            data = data[sent..];
        }
    }

    /// <summary>Makes at least <paramref name="count"/> bytes available at _rx[_rxStart..];
    /// false on a clean end of stream before the first byte.</summary>
    private async ValueTask<bool> FillAsync(int count)
    {
        CompactReceiveBuffer();
        while (_rxEnd < count)
        {
            int got = await _transport.ReceiveAsync(_rx.AsMemory(_rxEnd)).ConfigureAwait(false);
            if (got == 0)
            {
                if (_rxEnd == 0)
                    return false;
                throw new NbdProtocolException($"connection closed in the middle of a message ({_rxEnd} of {count} bytes)");
            }
            _rxEnd += got;
        }
        return true;
    }

    private async ValueTask<bool> ReceiveExactAsync(Memory<byte> destination)
    {
        int buffered = Math.Min(_rxEnd - _rxStart, destination.Length);
        _rx.AsSpan(_rxStart, buffered).CopyTo(destination.Span);
        _rxStart += buffered;
        destination = destination[buffered..];
        while (!destination.IsEmpty)
        {
            int got = await _transport.ReceiveAsync(destination).ConfigureAwait(false);
            if (got == 0)
                return false;
            destination = destination[got..];
        }
        return true;
    }

    private async ValueTask<byte[]> ReceiveBytesAsync(int count)
    {
        var data = new byte[count];
        if (!await ReceiveExactAsync(data).ConfigureAwait(false))
            throw new NbdProtocolException("connection closed during the handshake");
        return data;
    }

    internal static byte[] Utf8(string s) => Encoding.UTF8.GetBytes(s);
}

internal enum ReplyDisposition
{
    /// <summary>The slot holds the sender role: send the reply, then drain what others queued.</summary>
    SendNow,
    /// <summary>The reply was copied into the pending buffer; the current sender will send it.</summary>
    Queued,
    /// <summary>Await <see cref="NbdRequest.SendGranted"/>, then send as the sender.</summary>
    WaitForTurn,
}

/// <summary>The client broke the protocol in a way that cannot be answered; the connection ends.</summary>
internal sealed class NbdProtocolException(string message) : Exception(message);
