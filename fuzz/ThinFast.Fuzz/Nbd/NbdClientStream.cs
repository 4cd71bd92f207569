using System.Buffers.Binary;
using System.Text;

namespace ThinFast.Fuzz.Nbd;

/// <summary>
/// Writes what an NBD client sends, in wire order: client flags, options, then requests. The
/// numbers are the protocol's (docs/nbd.md and shared/spec/nbd-protocol.md); the server's own
/// constants are internal to it on purpose, and a second spelling here is what a client has.
/// </summary>
internal sealed class NbdClientStream
{
    public const uint FixedNewstyle = 1, NoZeroes = 2;

    public const uint OptExportName = 1, OptAbort = 2, OptList = 3, OptStartTls = 5, OptInfo = 6, OptGo = 7,
        OptStructuredReply = 8, OptListMetaContext = 9, OptSetMetaContext = 10;

    public const ushort InfoName = 1, InfoDescription = 2, InfoBlockSize = 3;

    public const ushort CmdRead = 0, CmdWrite = 1, CmdDisconnect = 2, CmdFlush = 3, CmdTrim = 4, CmdCache = 5,
        CmdWriteZeroes = 6, CmdBlockStatus = 7;

    public const ushort FlagFua = 1, FlagNoHole = 2, FlagDontFragment = 4, FlagReqOne = 8, FlagFastZero = 16;

    private const ulong IHaveOpt = 0x49484156454F5054;
    private const uint RequestMagic = 0x25609513;

    private readonly MemoryStream _bytes = new();
    private ulong _cookie;

    public NbdClientStream ClientFlags(uint flags) => U32(flags);

    public NbdClientStream Option(uint option, byte[]? data = null)
    {
        data ??= [];
        U64(IHaveOpt).U32(option).U32((uint)data.Length);
        _bytes.Write(data);
        return this;
    }

    /// <summary>INFO or GO: export name, then the information types asked for.</summary>
    public NbdClientStream InfoOrGo(uint option, string export, params ushort[] requests)
    {
        var data = new NbdClientStream().String(export).U16((ushort)requests.Length);
        foreach (ushort r in requests)
            data.U16(r);
        return Option(option, data.ToArray());
    }

    /// <summary>LIST or SET_META_CONTEXT: export name, then the queries.</summary>
    public NbdClientStream MetaContext(uint option, string export, params string[] queries)
    {
        var data = new NbdClientStream().String(export).U32((uint)queries.Length);
        foreach (string q in queries)
            data.String(q);
        return Option(option, data.ToArray());
    }

    public NbdClientStream Request(ushort command, ushort flags, ulong offset, uint length, byte[]? payload = null)
    {
        U32(RequestMagic).U16(flags).U16(command).U64(++_cookie).U64(offset).U32(length);
        if (payload is not null)
            _bytes.Write(payload);
        return this;
    }

    public byte[] ToArray() => _bytes.ToArray();

    private NbdClientStream String(string s)
    {
        byte[] text = Encoding.UTF8.GetBytes(s);
        U32((uint)text.Length);
        _bytes.Write(text);
        return this;
    }

    private NbdClientStream U16(ushort v)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16BigEndian(b, v);
        _bytes.Write(b);
        return this;
    }

    private NbdClientStream U32(uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, v);
        _bytes.Write(b);
        return this;
    }

    private NbdClientStream U64(ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(b, v);
        _bytes.Write(b);
        return this;
    }
}
