using System.Buffers.Binary;
using System.Text;
using ThinFast.IO;

namespace ThinFast.Nbd;

/// <summary>
/// One request slot of a connection, reused for request after request. Its loop
/// (<see cref="RunAsync"/>) is a single long-lived async method, so its state machine is allocated
/// once per slot, not once per request; the reader wakes it through an <see cref="AsyncSignal"/>.
/// </summary>
internal sealed class NbdRequest
{
    /// <summary>Extents asked of the volume per BLOCK_STATUS; clients ask again for the rest.</summary>
    private const int MaxExtents = 1024;
    private const int MaxMessageBytes = 256;
    /// <summary>Reads at least this long are answered with one OFFSET_HOLE chunk when the volume
    /// reports the whole range as zeros; shorter ones are not worth the extra extent lookup.</summary>
    private const int HoleCheckMinimum = 64 * 1024;
    /// <summary>Bytes handed to one send call: a 4 MiB READ reply with its header still goes out
    /// in one call, while a 32 MiB one to a slow reader shows progress along the way.</summary>
    private const int MaxSendPerCall = 4 * 1024 * 1024 + NbdProtocol.StructuredHeaderSize + 8;

    private readonly NbdConnection _connection;
    private readonly AsyncSignal _work;
    // Made by the slot's first full BLOCK_STATUS: 24 KiB per slot that the GC zeroes, so made up
    // front it was 384 KiB of the ~475 KiB every connection held resident, idle or not, and most
    // clients never ask for block status (ConnectionFloodTests measures the whole).
    private VolumeExtent[]? _extents;
    // Replies without data (status, errors, block status) are built here; pinned so sends need no
    // per-call pinning.
    private readonly byte[] _reply = GC.AllocateUninitializedArray<byte>(
        NbdProtocol.StructuredHeaderSize + 4 + 8 * MaxExtents + 6 + MaxMessageBytes, pinned: true);
    private bool _exit;

    private NbdCommand _command;
    private NbdCommandFlags _flags;
    private ulong _cookie;
    private long _offset;
    private uint _length;
    private NbdError _presetError;
    private ErrorText _presetMessage;

    /// <param name="inline">Run this slot's code on the thread that hands it work or the send
    /// role (the reactor, with an io_uring transport) instead of the thread pool.</param>
    public NbdRequest(NbdConnection connection, bool inline)
    {
        _connection = connection;
        _work = new AsyncSignal(inline);
        SendGranted = new AsyncSignal(inline);
    }

    /// <summary>Signalled when this slot becomes the connection's sender.</summary>
    public AsyncSignal SendGranted { get; }

    /// <summary>The WRITE payload (received by the reader) or the READ buffer; its length is
    /// charged to the connection's <see cref="NbdConnection.Budget"/> while it is held.</summary>
    public NativeBuffer? Payload { get; set; }

    /// <summary>Gives the payload buffer back to the pool and its bytes to the budget.</summary>
    public void ReturnPayload()
    {
        if (Payload is null)
            return;
        _connection.Server.Buffers.Return(Payload);
        Payload = null;
        _connection.Budget.Give(_length);
    }

    public void Prepare(NbdCommand command, NbdCommandFlags flags, ulong cookie, long offset, uint length, NbdError error, ErrorText message)
    {
        _command = command;
        _flags = flags;
        _cookie = cookie;
        _offset = offset;
        _length = length;
        _presetError = error;
        _presetMessage = message;
    }

    public void Post() => _work.Set();

    public void PostExit()
    {
        _exit = true;
        _work.Set();
    }

    /// <summary>Serves request after request. Everything that can suspend is awaited directly in
    /// this one method (no nested async calls), because a long-lived async method allocates its
    /// state machine once, while nested ones would need a box per suspension.</summary>
    public async Task RunAsync()
    {
        var transport = _connection.Transport;
        var pool = _connection.Server.Buffers;
        var budget = _connection.Budget;
        while (true)
        {
            await _work.WaitAsync().ConfigureAwait(false);
            if (_exit)
                return;
            try
            {
                ReadOnlyMemory<byte> reply;
                if (_presetError != NbdError.None)
                {
                    reply = BuildError(_presetError, _presetMessage.Bytes());
                }
                else
                {
                    var volume = _connection.Export.Volume;
                    var writeFlags = (_flags & NbdCommandFlags.Fua) != 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None;
                    try
                    {
                        switch (_command)
                        {
                            case NbdCommand.Read:
                                if (ReadsAsZeros(volume))
                                {
                                    reply = BuildHoleReply();
                                    break;
                                }
                                // Over budget (replies not yet sent, say) this waits for this
                                // connection's own buffers, never for other clients'.
                                if (!budget.TryTake(_length))
                                    await budget.TakeAsync(_length).ConfigureAwait(false);
                                var buffer = pool.Rent((int)_length);
                                Payload = buffer;
                                await volume.ReadAsync(_offset, buffer.Memory.Slice(PayloadBufferPool.HeaderRoom, (int)_length)).ConfigureAwait(false);
                                reply = BuildReadReply();
                                break;
                            case NbdCommand.Write:
                                await volume.WriteAsync(_offset, Payload!.Memory.Slice(PayloadBufferPool.HeaderRoom, (int)_length), writeFlags).ConfigureAwait(false);
                                reply = BuildSimple(NbdError.None);
                                break;
                            case NbdCommand.Flush:
                                // Replying only after the volume-wide flush completes gives multi-conn
                                // its guarantee: writes acknowledged on any connection are durable.
                                await volume.FlushAsync().ConfigureAwait(false);
                                reply = BuildSimple(NbdError.None);
                                break;
                            case NbdCommand.Trim:
                                await volume.DiscardAsync(_offset, _length, writeFlags).ConfigureAwait(false);
                                reply = BuildSimple(NbdError.None);
                                break;
                            case NbdCommand.WriteZeroes:
                                // FAST_ZERO: the volume itself knows when zeroing would copy or wait,
                                // and then fails at once with NotSupported (NBD_ENOTSUP).
                                var zero = ((_flags & NbdCommandFlags.NoHole) != 0 ? ZeroFlags.None : ZeroFlags.MayDeallocate)
                                    | ((_flags & NbdCommandFlags.FastZero) != 0 ? ZeroFlags.FastOnly : ZeroFlags.None);
                                await volume.WriteZeroesAsync(_offset, _length, zero, writeFlags).ConfigureAwait(false);
                                reply = BuildSimple(NbdError.None);
                                break;
                            case NbdCommand.BlockStatus:
                                reply = BuildBlockStatus(volume);
                                break;
                            default:
                                // CACHE: a prefetch hint, which still fails where a read would.
                                await volume.PrefetchAsync(_offset, _length).ConfigureAwait(false);
                                reply = BuildSimple(NbdError.None);
                                break;
                        }
                    }
                    catch (Exception e) when (e is not (System.Net.Sockets.SocketException or ObjectDisposedException))
                    {
                        reply = BuildFailure(e);
                    }
                }

                var disposition = _connection.SubmitReply(this, reply);
                if (disposition == ReplyDisposition.WaitForTurn)
                    await SendGranted.WaitAsync().ConfigureAwait(false);
                if (disposition != ReplyDisposition.Queued)
                {
                    try
                    {
                        do
                        {
                            while (!reply.IsEmpty)
                            {
                                // Sliced so a large reply to a slow but reading client shows
                                // progress to the send timeout (a socket send only returns once all
                                // it was given has gone out).
                                _connection.SendStarting();
                                int sent = await transport.SendAsync(reply[..Math.Min(reply.Length, MaxSendPerCall)]).ConfigureAwait(false);
                                reply = reply[sent..];
                            }
                            _connection.SendFinished();
                        }
                        while (_connection.NextSend(out reply));
                    }
                    catch
                    {
                        _connection.AbandonSend();
                        throw;
                    }
                }
            }
            catch (Exception e) when (e is System.Net.Sockets.SocketException or ObjectDisposedException or IOException)
            {
                // The reply could not be sent: the connection is gone for every request.
                _connection.MarkBroken();
            }
            finally
            {
                ReturnPayload();
                _connection.ReleaseSlot(this);
            }
        }
    }

    private ReadOnlyMemory<byte> BuildFailure(Exception failure)
    {
        var error = failure is BlockDeviceException b
            ? b.Error switch
            {
                BlockError.NoSpace => NbdError.NoSpace,
                BlockError.ReadOnly => NbdError.Perm,
                BlockError.InvalidArgument or BlockError.OutOfRange => NbdError.Invalid,
                BlockError.NotSupported => NbdError.NotSupported,
                // The pool closing under a stopping server: the protocol's "retry after
                // reconnecting", not a failed write.
                BlockError.Unavailable when _connection.Server.IsStopping => NbdError.Shutdown,
                _ => NbdError.IO,
            }
            : NbdError.IO;
        _connection.Server.Log($"nbd: {_command} [{_offset}, +{_length}) on '{_connection.Export.Name}' failed: {failure.Message}");
        return BuildError(error, Encoding.UTF8.GetBytes(Clip(failure.Message)));
    }

    private ReadOnlyMemory<byte> BuildBlockStatus(IBlockVolume volume)
    {
        bool one = (_flags & NbdCommandFlags.ReqOne) != 0;
        long end = _offset + _length;
        Span<VolumeExtent> first = stackalloc VolumeExtent[1];
        Span<VolumeExtent> extents = one ? first : _extents ??= new VolumeExtent[MaxExtents];
        int got = volume.GetExtents(_offset, _length, extents);
        var payload = _reply.AsSpan(NbdProtocol.StructuredHeaderSize + 4);
        int count = 0;
        long position = _offset;
        uint lastFlags = 0;
        for (int i = 0; i < got && position < end; i++)
        {
            var extent = extents[i];
            // Clip to the request: every length then fits in 32 bits and stays inside the export.
            long length = Math.Min(extent.Offset + extent.Length, end) - position;
            if (length <= 0)
                continue;
            uint flags = (uint)(extent.Flags & (ExtentFlags.Hole | ExtentFlags.Zero));
            if (count > 0 && flags == lastFlags)
            {
                uint merged = BinaryPrimitives.ReadUInt32BigEndian(payload[(8 * (count - 1))..]) + (uint)length;
                BinaryPrimitives.WriteUInt32BigEndian(payload[(8 * (count - 1))..], merged);
            }
            else
            {
                BinaryPrimitives.WriteUInt32BigEndian(payload[(8 * count)..], (uint)length);
                BinaryPrimitives.WriteUInt32BigEndian(payload[(8 * count + 4)..], flags);
                count++;
                lastFlags = flags;
            }
            position += length;
        }
        if (count == 0)
            throw new BlockDeviceException(BlockError.IoError, $"{volume.Name}: GetExtents described nothing at {_offset}");
        int payloadLength = 4 + 8 * count;
        WriteStructuredHeader(_reply, NbdReplyType.BlockStatus, payloadLength);
        BinaryPrimitives.WriteUInt32BigEndian(_reply.AsSpan(NbdProtocol.StructuredHeaderSize), NbdConnection.AllocationContextId);
        return _reply.AsMemory(0, NbdProtocol.StructuredHeaderSize + payloadLength);
    }

    private bool ReadsAsZeros(IBlockVolume volume)
    {
        if (!_connection.StructuredReplies || _length < HoleCheckMinimum || (_flags & NbdCommandFlags.DontFragment) != 0)
            return false;
        Span<VolumeExtent> first = stackalloc VolumeExtent[1];
        if (volume.GetExtents(_offset, _length, first) != 1)
            return false;
        var extent = first[0];
        return (extent.Flags & ExtentFlags.Zero) != 0 && extent.Offset <= _offset && extent.Offset + extent.Length >= _offset + _length;
    }

    private ReadOnlyMemory<byte> BuildHoleReply()
    {
        WriteStructuredHeader(_reply, NbdReplyType.OffsetHole, 12);
        BinaryPrimitives.WriteUInt64BigEndian(_reply.AsSpan(NbdProtocol.StructuredHeaderSize), (ulong)_offset);
        BinaryPrimitives.WriteUInt32BigEndian(_reply.AsSpan(NbdProtocol.StructuredHeaderSize + 8), _length);
        return _reply.AsMemory(0, NbdProtocol.StructuredHeaderSize + 12);
    }

    private ReadOnlyMemory<byte> BuildReadReply()
    {
        var buffer = Payload!;
        int headerLength;
        if (_connection.StructuredReplies)
        {
            headerLength = NbdProtocol.StructuredHeaderSize + 8;
            var header = buffer.GetSpan().Slice(PayloadBufferPool.HeaderRoom - headerLength, headerLength);
            WriteStructuredHeader(header, NbdReplyType.OffsetData, 8 + (int)_length);
            BinaryPrimitives.WriteUInt64BigEndian(header[NbdProtocol.StructuredHeaderSize..], (ulong)_offset);
        }
        else
        {
            headerLength = NbdProtocol.SimpleReplySize;
            WriteSimpleHeader(buffer.GetSpan().Slice(PayloadBufferPool.HeaderRoom - headerLength, headerLength), NbdError.None);
        }
        return buffer.Memory.Slice(PayloadBufferPool.HeaderRoom - headerLength, headerLength + (int)_length);
    }

    private ReadOnlyMemory<byte> BuildSimple(NbdError error)
    {
        WriteSimpleHeader(_reply, error);
        return _reply.AsMemory(0, NbdProtocol.SimpleReplySize);
    }

    /// <summary>Structured connections get an ERROR chunk with a message (mandatory for READ),
    /// others a simple reply carrying the error number.</summary>
    private ReadOnlyMemory<byte> BuildError(NbdError error, ReadOnlySpan<byte> message)
    {
        if (!_connection.StructuredReplies)
            return BuildSimple(error);
        message = message[..Math.Min(message.Length, MaxMessageBytes)];
        int payloadLength = 6 + message.Length;
        WriteStructuredHeader(_reply, NbdReplyType.Error, payloadLength);
        var payload = _reply.AsSpan(NbdProtocol.StructuredHeaderSize);
        BinaryPrimitives.WriteUInt32BigEndian(payload, (uint)error);
        BinaryPrimitives.WriteUInt16BigEndian(payload[4..], (ushort)message.Length);
        message.CopyTo(payload[6..]);
        return _reply.AsMemory(0, NbdProtocol.StructuredHeaderSize + payloadLength);
    }

    private void WriteSimpleHeader(Span<byte> header, NbdError error)
    {
        BinaryPrimitives.WriteUInt32BigEndian(header, NbdProtocol.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(header[4..], (uint)error);
        BinaryPrimitives.WriteUInt64BigEndian(header[8..], _cookie);
    }

    private void WriteStructuredHeader(Span<byte> header, NbdReplyType type, int payloadLength)
    {
        const ushort done = 1;
        BinaryPrimitives.WriteUInt32BigEndian(header, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(header[4..], done);
        BinaryPrimitives.WriteUInt16BigEndian(header[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(header[8..], _cookie);
        BinaryPrimitives.WriteUInt32BigEndian(header[16..], (uint)payloadLength);
    }

    private static string Clip(string message) => message.Length <= MaxMessageBytes / 4 ? message : message[..(MaxMessageBytes / 4)];
}

/// <summary>Fixed messages for requests refused before they reach the volume, pre-encoded so
/// refusing allocates nothing.</summary>
internal enum ErrorText
{
    None,
    UnknownCommand,
    UnknownFlag,
    ReadOnly,
    NoMetaContext,
    ZeroLength,
    OutOfRange,
    TooLarge,
    Misaligned,
}

internal static class ErrorTextExtensions
{
    private static readonly byte[][] Texts =
    [
        [],
        "unknown command"u8.ToArray(),
        "flag not valid for this command"u8.ToArray(),
        "export is read-only"u8.ToArray(),
        "block status needs the base:allocation meta context"u8.ToArray(),
        "zero-length request"u8.ToArray(),
        "request runs past the end of the export"u8.ToArray(),
        "request is larger than the maximum payload"u8.ToArray(),
        "request is not aligned to the minimum block size"u8.ToArray(),
    ];

    public static ReadOnlySpan<byte> Bytes(this ErrorText text) => Texts[(int)text];
}
