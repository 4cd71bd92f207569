namespace ThinFast.Nbd;

/// <summary>Wire constants of the NBD protocol (fixed newstyle, compact headers). Values are
/// from the protocol specification; names follow it without the NBD_ prefix.</summary>
internal static class NbdProtocol
{
    public const ulong NbdMagic = 0x4e42444d41474943;           // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;           // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x0003e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    public const int RequestHeaderSize = 28;
    public const int SimpleReplySize = 16;
    public const int StructuredHeaderSize = 20;

    // Handshake flags (server) and client flags.
    public const ushort FlagFixedNewstyle = 1;
    public const ushort FlagNoZeroes = 2;
    public const uint ClientFlagFixedNewstyle = 1;
    public const uint ClientFlagNoZeroes = 2;

    /// <summary>Real options are tiny; anything longer is refused by closing.</summary>
    public const int MaxOptionLength = 64 * 1024;
    /// <summary>Strings (export and context names) longer than this are refused.</summary>
    public const int MaxStringLength = 4096;
}

internal enum NbdOption : uint
{
    ExportName = 1,
    Abort = 2,
    List = 3,
    StartTls = 5,
    Info = 6,
    Go = 7,
    StructuredReply = 8,
    ListMetaContext = 9,
    SetMetaContext = 10,
}

internal enum NbdOptionReply : uint
{
    Ack = 1,
    Server = 2,
    Info = 3,
    MetaContext = 4,
    ErrUnsup = 0x80000001,
    ErrPolicy = 0x80000002,
    ErrInvalid = 0x80000003,
    ErrTlsReqd = 0x80000005,
    ErrUnknown = 0x80000006,
    ErrShutdown = 0x80000007,
    ErrTooBig = 0x80000009,
}

internal enum NbdInfo : ushort
{
    Export = 0,
    Name = 1,
    Description = 2,
    BlockSize = 3,
}

[Flags]
internal enum NbdTransmissionFlags : ushort
{
    HasFlags = 0x0001,
    ReadOnly = 0x0002,
    SendFlush = 0x0004,
    SendFua = 0x0008,
    SendTrim = 0x0020,
    SendWriteZeroes = 0x0040,
    SendDf = 0x0080,
    CanMultiConn = 0x0100,
    SendCache = 0x0400,
    SendFastZero = 0x0800,
}

internal enum NbdCommand : ushort
{
    Read = 0,
    Write = 1,
    Disconnect = 2,
    Flush = 3,
    Trim = 4,
    Cache = 5,
    WriteZeroes = 6,
    BlockStatus = 7,
}

[Flags]
internal enum NbdCommandFlags : ushort
{
    None = 0,
    Fua = 0x01,
    NoHole = 0x02,
    DontFragment = 0x04,
    ReqOne = 0x08,
    FastZero = 0x10,
}

internal enum NbdReplyType : ushort
{
    None = 0,
    OffsetData = 1,
    OffsetHole = 2,
    BlockStatus = 5,
    Error = 0x8001,
}

/// <summary>Transmission-phase error numbers (the only values the protocol defines).</summary>
internal enum NbdError : uint
{
    None = 0,
    Perm = 1,
    IO = 5,
    NoMem = 12,
    Invalid = 22,
    NoSpace = 28,
    Overflow = 75,
    NotSupported = 95,
    Shutdown = 108,
}
