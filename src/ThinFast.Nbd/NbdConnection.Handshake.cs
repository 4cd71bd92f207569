using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;

namespace ThinFast.Nbd;

// The handshake runs once per connection, so it favours clarity over avoiding allocations.
internal sealed partial class NbdConnection
{
    internal const string AllocationContext = "base:allocation";
    internal const uint AllocationContextId = 1;

    /// <summary>Runs option haggling; true when the client entered the transmission phase.</summary>
    private async Task<bool> HandshakeAsync()
    {
        await SendAsync(Greeting()).ConfigureAwait(false);

        uint clientFlags = BinaryPrimitives.ReadUInt32BigEndian(await ReceiveBytesAsync(4).ConfigureAwait(false));
        if ((clientFlags & ~(NbdProtocol.ClientFlagFixedNewstyle | NbdProtocol.ClientFlagNoZeroes)) != 0)
            throw new NbdProtocolException($"client flags 0x{clientFlags:x} have unknown bits");
        // Without fixed newstyle we could not even send an error reply to an option.
        if ((clientFlags & NbdProtocol.ClientFlagFixedNewstyle) == 0)
            throw new NbdProtocolException("client does not speak fixed newstyle");
        _noZeroes = (clientFlags & NbdProtocol.ClientFlagNoZeroes) != 0;

        while (true)
        {
            if (!await FillAsync(16).ConfigureAwait(false))
                return false;
            ulong magic = BinaryPrimitives.ReadUInt64BigEndian(_rx.AsSpan(_rxStart));
            var option = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(_rx.AsSpan(_rxStart + 8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(_rx.AsSpan(_rxStart + 12));
            _rxStart += 16;
            if (magic != NbdProtocol.IHaveOpt)
                throw new NbdProtocolException($"bad option magic 0x{magic:x16}");
            if (length > NbdProtocol.MaxOptionLength)
                throw new NbdProtocolException($"option {(uint)option} has {length} bytes of data (limit {NbdProtocol.MaxOptionLength})");
            var data = await ReceiveBytesAsync((int)length).ConfigureAwait(false);

            if (_server.IsStopping)
            {
                await SendOptionReplyAsync(option, NbdOptionReply.ErrShutdown, Utf8("server is shutting down")).ConfigureAwait(false);
                return false;
            }

            if (await RefuseBeforeTlsAsync(option).ConfigureAwait(false))
                continue;

            switch (option)
            {
                case NbdOption.ExportName:
                    if (await ExportNameAsync(data).ConfigureAwait(false))
                        return true;
                    return false;
                case NbdOption.Abort:
                    try
                    {
                        await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
                    }
                    catch (SocketException)
                    {
                        // Clients may close without reading the ACK.
                    }
                    return false;
                case NbdOption.List:
                    await ListAsync(data).ConfigureAwait(false);
                    break;
                case NbdOption.StartTls:
                    await StartTlsAsync(data).ConfigureAwait(false);
                    break;
                case NbdOption.Info:
                case NbdOption.Go:
                    if (await InfoOrGoAsync(option, data).ConfigureAwait(false))
                        return true;
                    break;
                case NbdOption.StructuredReply:
                    if (data.Length != 0)
                    {
                        await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8("STRUCTURED_REPLY takes no data")).ConfigureAwait(false);
                        break;
                    }
                    _structuredReplies = true;
                    await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
                    break;
                case NbdOption.ListMetaContext:
                case NbdOption.SetMetaContext:
                    await MetaContextAsync(option, data).ConfigureAwait(false);
                    break;
                default:
                    await SendOptionReplyAsync(option, NbdOptionReply.ErrUnsup, Utf8($"option {(uint)option} is not supported")).ConfigureAwait(false);
                    break;
            }
        }
    }

    private async Task<bool> ExportNameAsync(byte[] data)
    {
        // The old-style reply has no way to say "unknown export": closing is the only answer.
        var export = _server.FindExport(Encoding.UTF8.GetString(data))
            ?? throw new NbdProtocolException($"EXPORT_NAME for unknown export '{ClientText.ForLog(data)}'");
        var reply = new byte[_noZeroes ? 10 : 134];
        BinaryPrimitives.WriteUInt64BigEndian(reply, (ulong)export.Volume.Size);
        BinaryPrimitives.WriteUInt16BigEndian(reply.AsSpan(8), TransmissionFlags(export));
        await SendAsync(reply).ConfigureAwait(false);
        EnterTransmission(export);
        return true;
    }

    private async Task ListAsync(byte[] data)
    {
        if (data.Length != 0)
        {
            await SendOptionReplyAsync(NbdOption.List, NbdOptionReply.ErrInvalid, Utf8("LIST takes no data")).ConfigureAwait(false);
            return;
        }
        if (!_options.AllowList)
        {
            await SendOptionReplyAsync(NbdOption.List, NbdOptionReply.ErrPolicy, Utf8("listing exports is disabled")).ConfigureAwait(false);
            return;
        }
        foreach (var export in _server.Exports)
        {
            var name = Utf8(export.Name);
            var description = export.Description is null ? [] : Utf8(export.Description);
            var reply = new byte[4 + name.Length + description.Length];
            BinaryPrimitives.WriteUInt32BigEndian(reply, (uint)name.Length);
            name.CopyTo(reply, 4);
            description.CopyTo(reply, 4 + name.Length);
            await SendOptionReplyAsync(NbdOption.List, NbdOptionReply.Server, reply).ConfigureAwait(false);
        }
        await SendOptionReplyAsync(NbdOption.List, NbdOptionReply.Ack).ConfigureAwait(false);
    }

    private async Task<bool> InfoOrGoAsync(NbdOption option, byte[] data)
    {
        if (data.Length < 6)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8($"option data of {data.Length} bytes is shorter than 6")).ConfigureAwait(false);
            return false;
        }
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(data);
        if (nameLength > data.Length - 6)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8("export name runs past the option data")).ConfigureAwait(false);
            return false;
        }
        int requests = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(4 + (int)nameLength));
        if (6 + nameLength + 2 * requests != data.Length)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8("inconsistent lengths in the info request")).ConfigureAwait(false);
            return false;
        }
        string name = Encoding.UTF8.GetString(data, 4, (int)nameLength);
        var export = _server.FindExport(name);
        if (export is null)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrUnknown, Utf8($"export '{ClientText.ForLog(name)}' not present")).ConfigureAwait(false);
            return false;
        }
        bool wantName = false, wantDescription = false;
        for (int i = 0; i < requests; i++)
        {
            var info = (NbdInfo)BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(6 + (int)nameLength + 2 * i));
            wantName |= info == NbdInfo.Name;
            wantDescription |= info == NbdInfo.Description;
        }

        var exportInfo = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo, (ushort)NbdInfo.Export);
        BinaryPrimitives.WriteUInt64BigEndian(exportInfo.AsSpan(2), (ulong)export.Volume.Size);
        BinaryPrimitives.WriteUInt16BigEndian(exportInfo.AsSpan(10), TransmissionFlags(export));
        await SendOptionReplyAsync(option, NbdOptionReply.Info, exportInfo).ConfigureAwait(false);

        var blockSize = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(blockSize, (ushort)NbdInfo.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(2), (uint)_options.MinimumBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(6), (uint)PreferredBlockSize(export));
        BinaryPrimitives.WriteUInt32BigEndian(blockSize.AsSpan(10), (uint)_options.MaxPayload);
        await SendOptionReplyAsync(option, NbdOptionReply.Info, blockSize).ConfigureAwait(false);

        if (wantName)
            await SendOptionReplyAsync(option, NbdOptionReply.Info, InfoString(NbdInfo.Name, export.Name)).ConfigureAwait(false);
        if (wantDescription && export.Description is not null)
            await SendOptionReplyAsync(option, NbdOptionReply.Info, InfoString(NbdInfo.Description, export.Description)).ConfigureAwait(false);
        await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);

        if (option != NbdOption.Go)
            return false;
        EnterTransmission(export);
        return true;
    }

    private async Task MetaContextAsync(NbdOption option, byte[] data)
    {
        bool set = option == NbdOption.SetMetaContext;
        if (!_structuredReplies)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8("meta contexts need structured replies first")).ConfigureAwait(false);
            return;
        }
        if (!TryParseMetaContextRequest(data, out var exportName, out var queries))
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrInvalid, Utf8("meta context request is malformed")).ConfigureAwait(false);
            return;
        }
        var export = _server.FindExport(exportName);
        if (set)
        {
            // SET replaces the selection even when it fails.
            _metaContextExport = null;
            _allocationContextSelected = false;
        }
        if (export is null)
        {
            await SendOptionReplyAsync(option, NbdOptionReply.ErrUnknown, Utf8($"export '{ClientText.ForLog(exportName)}' not present")).ConfigureAwait(false);
            return;
        }
        bool matches = set
            ? queries.Contains(AllocationContext)
            : queries.Count == 0 || queries.Contains(AllocationContext) || queries.Contains("base:");
        if (matches)
        {
            var name = Utf8(AllocationContext);
            var reply = new byte[4 + name.Length];
            BinaryPrimitives.WriteUInt32BigEndian(reply, set ? AllocationContextId : 0);
            name.CopyTo(reply, 4);
            await SendOptionReplyAsync(option, NbdOptionReply.MetaContext, reply).ConfigureAwait(false);
        }
        if (set)
        {
            _metaContextExport = export;
            _allocationContextSelected = matches;
        }
        await SendOptionReplyAsync(option, NbdOptionReply.Ack).ConfigureAwait(false);
    }

    private static bool TryParseMetaContextRequest(byte[] data, out string exportName, out List<string> queries)
    {
        exportName = "";
        queries = [];
        var span = data.AsSpan();
        if (span.Length < 4)
            return false;
        uint nameLength = BinaryPrimitives.ReadUInt32BigEndian(span);
        if (nameLength > NbdProtocol.MaxStringLength || nameLength > span.Length - 8)
            return false;
        exportName = Encoding.UTF8.GetString(span.Slice(4, (int)nameLength));
        span = span[(4 + (int)nameLength)..];
        uint count = BinaryPrimitives.ReadUInt32BigEndian(span);
        span = span[4..];
        for (uint i = 0; i < count; i++)
        {
            if (span.Length < 4)
                return false;
            uint length = BinaryPrimitives.ReadUInt32BigEndian(span);
            if (length > NbdProtocol.MaxStringLength || length > span.Length - 4)
                return false;
            queries.Add(Encoding.UTF8.GetString(span.Slice(4, (int)length)));
            span = span[(4 + (int)length)..];
        }
        return span.IsEmpty;
    }

    private void EnterTransmission(NbdExport export)
    {
        Volatile.Write(ref _handshakeDeadline, 0);
        _export = export;
        // A context selection counts only for the export it was made for.
        if (!ReferenceEquals(_metaContextExport, export))
            _allocationContextSelected = false;
    }

    private ushort TransmissionFlags(NbdExport export)
    {
        var flags = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush | NbdTransmissionFlags.CanMultiConn
            | NbdTransmissionFlags.SendCache;
        flags |= export.ReadOnly
            ? NbdTransmissionFlags.ReadOnly
            : NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes | NbdTransmissionFlags.SendFastZero;
        if (_structuredReplies)
            flags |= NbdTransmissionFlags.SendDf;
        return (ushort)flags;
    }

    private int PreferredBlockSize(NbdExport export)
    {
        int unit = export.Volume.AllocationUnit;
        bool usable = unit > 0 && (unit & (unit - 1)) == 0 && unit >= Math.Max(_options.MinimumBlockSize, 512) && unit <= _options.MaxPayload;
        return usable ? unit : Math.Max(4096, _options.MinimumBlockSize);
    }

    private static byte[] InfoString(NbdInfo type, string value)
    {
        var text = Utf8(value);
        var reply = new byte[2 + text.Length];
        BinaryPrimitives.WriteUInt16BigEndian(reply, (ushort)type);
        text.CopyTo(reply, 2);
        return reply;
    }

    private async Task SendOptionReplyAsync(NbdOption option, NbdOptionReply type, byte[]? data = null) =>
        await SendAsync(OptionReply(option, type, data)).ConfigureAwait(false);

    /// <summary>The server's first message: magic, IHAVEOPT, handshake flags.</summary>
    internal static byte[] Greeting()
    {
        var greeting = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(greeting, NbdProtocol.NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(greeting.AsSpan(8), NbdProtocol.IHaveOpt);
        BinaryPrimitives.WriteUInt16BigEndian(greeting.AsSpan(16), NbdProtocol.FlagFixedNewstyle | NbdProtocol.FlagNoZeroes);
        return greeting;
    }

    internal static byte[] OptionReply(NbdOption option, NbdOptionReply type, byte[]? data = null)
    {
        int length = data?.Length ?? 0;
        var reply = new byte[20 + length];
        BinaryPrimitives.WriteUInt64BigEndian(reply, NbdProtocol.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(12), (uint)type);
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(16), (uint)length);
        data?.CopyTo(reply, 20);
        return reply;
    }
}
