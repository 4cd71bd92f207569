using System.Runtime.InteropServices;

namespace ThinFast.Interop;

// Mirrors of include/uapi/linux/io_uring.h. Every field offset and size is checked against the C
// header by the layout-probe test (native-shims/layout-probe), so these must only change with it.

/// <summary>struct io_sqring_offsets (40 bytes): byte offsets inside the SQ ring mapping.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct IoSqringOffsets
{
    public const int Size = 40;
    [FieldOffset(0)] public uint Head;
    [FieldOffset(4)] public uint Tail;
    [FieldOffset(8)] public uint RingMask;
    [FieldOffset(12)] public uint RingEntries;
    [FieldOffset(16)] public uint Flags;
    [FieldOffset(20)] public uint Dropped;
    [FieldOffset(24)] public uint Array;
    [FieldOffset(28)] public uint Resv1;
    [FieldOffset(32)] public ulong Resv2;
}

/// <summary>struct io_cqring_offsets (40 bytes): byte offsets inside the CQ ring mapping.</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct IoCqringOffsets
{
    public const int Size = 40;
    [FieldOffset(0)] public uint Head;
    [FieldOffset(4)] public uint Tail;
    [FieldOffset(8)] public uint RingMask;
    [FieldOffset(12)] public uint RingEntries;
    [FieldOffset(16)] public uint Overflow;
    [FieldOffset(20)] public uint Cqes;
    [FieldOffset(24)] public uint Flags;
    [FieldOffset(28)] public uint Resv1;
    [FieldOffset(32)] public ulong Resv2;
}

/// <summary>struct io_uring_params (120 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct IoUringParams
{
    public const int Size = 120;
    [FieldOffset(0)] public uint SqEntries;
    [FieldOffset(4)] public uint CqEntries;
    [FieldOffset(8)] public uint Flags;
    [FieldOffset(12)] public uint SqThreadCpu;
    [FieldOffset(16)] public uint SqThreadIdle;
    [FieldOffset(20)] public uint Features;
    [FieldOffset(24)] public uint WqFd;
    [FieldOffset(28)] public uint Resv0;
    [FieldOffset(32)] public uint Resv1;
    [FieldOffset(36)] public uint Resv2;
    [FieldOffset(40)] public IoSqringOffsets SqOff;
    [FieldOffset(80)] public IoCqringOffsets CqOff;
}

/// <summary>struct io_uring_sqe (64 bytes; with IORING_SETUP_SQE128 each slot is 128 bytes and the
/// command area continues from <see cref="Addr3"/> for 80 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct IoUringSqe
{
    public const int Size = 64;
    public const int Size128 = 128;
    /// <summary>Byte offset of the URING_CMD payload (cmd[]).</summary>
    public const int CmdOffset = 48;

    [FieldOffset(0)] public byte Opcode;
    [FieldOffset(1)] public byte Flags;
    [FieldOffset(2)] public ushort IoPrio;
    [FieldOffset(4)] public int Fd;
    /// <summary>File offset; also addr2, and cmd_op (u32) for URING_CMD.</summary>
    [FieldOffset(8)] public ulong Off;
    /// <summary>Buffer address; the length for FALLOCATE.</summary>
    [FieldOffset(16)] public ulong Addr;
    /// <summary>Byte count; the mode for FALLOCATE.</summary>
    [FieldOffset(24)] public uint Len;
    /// <summary>The op-flags union: rw_flags, fsync_flags, uring_cmd_flags, ...</summary>
    [FieldOffset(28)] public uint OpFlags;
    [FieldOffset(32)] public ulong UserData;
    [FieldOffset(40)] public ushort BufIndex;
    [FieldOffset(42)] public ushort Personality;
    [FieldOffset(44)] public int SpliceFdIn;
    [FieldOffset(48)] public ulong Addr3;
    [FieldOffset(56)] public ulong Pad2;
}

/// <summary>struct io_uring_cqe (16 bytes; 32 with IORING_SETUP_CQE32).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct IoUringCqe
{
    public const int Size = 16;
    [FieldOffset(0)] public ulong UserData;
    /// <summary>The op's result, or -errno.</summary>
    [FieldOffset(8)] public int Res;
    [FieldOffset(12)] public uint Flags;
}

/// <summary>Constants of linux/io_uring.h used by ThinFast (values checked against kernel 6.1+).</summary>
public static class IoUring
{
    // ---- setup flags ----
    public const uint IORING_SETUP_CQSIZE = 0x8;
    public const uint IORING_SETUP_CLAMP = 0x10;
    public const uint IORING_SETUP_R_DISABLED = 0x40;
    public const uint IORING_SETUP_SUBMIT_ALL = 0x80;
    public const uint IORING_SETUP_COOP_TASKRUN = 0x100;
    public const uint IORING_SETUP_TASKRUN_FLAG = 0x200;
    public const uint IORING_SETUP_SQE128 = 0x400;
    public const uint IORING_SETUP_CQE32 = 0x800;
    public const uint IORING_SETUP_SINGLE_ISSUER = 0x1000;
    public const uint IORING_SETUP_DEFER_TASKRUN = 0x2000;

    // ---- features ----
    public const uint IORING_FEAT_SINGLE_MMAP = 0x1;
    public const uint IORING_FEAT_NODROP = 0x2;
    public const uint IORING_FEAT_EXT_ARG = 0x100;

    // ---- mmap offsets ----
    public const long IORING_OFF_SQ_RING = 0;
    public const long IORING_OFF_CQ_RING = 0x8000000;
    public const long IORING_OFF_SQES = 0x10000000;

    // ---- SQ ring flags ----
    public const uint IORING_SQ_NEED_WAKEUP = 0x1;
    public const uint IORING_SQ_CQ_OVERFLOW = 0x2;
    public const uint IORING_SQ_TASKRUN = 0x4;

    // ---- enter flags ----
    public const uint IORING_ENTER_GETEVENTS = 0x1;
    public const uint IORING_ENTER_SQ_WAKEUP = 0x2;

    // ---- register opcodes ----
    public const uint IORING_REGISTER_BUFFERS = 0;
    public const uint IORING_UNREGISTER_BUFFERS = 1;
    public const uint IORING_REGISTER_PROBE = 8;
    public const uint IORING_REGISTER_ENABLE_RINGS = 12;

    // ---- opcodes ----
    public const byte IORING_OP_NOP = 0;
    public const byte IORING_OP_FSYNC = 3;
    public const byte IORING_OP_READ_FIXED = 4;
    public const byte IORING_OP_WRITE_FIXED = 5;
    public const byte IORING_OP_FALLOCATE = 17;
    public const byte IORING_OP_READ = 22;
    public const byte IORING_OP_WRITE = 23;
    /// <summary>send(2) on a socket (5.6): fd, addr = buffer, len, msg_flags in the op-flags union.</summary>
    public const byte IORING_OP_SEND = 26;
    /// <summary>recv(2) on a socket (5.6): same fields; the CQE carries the byte count, 0 at end of stream.</summary>
    public const byte IORING_OP_RECV = 27;

    // ---- SQE flags ----
    public const byte IOSQE_FIXED_FILE = 0x1;
    public const byte IOSQE_IO_LINK = 0x4;

    public const uint IORING_FSYNC_DATASYNC = 1;

    // ---- msg_flags for SEND/RECV (sys/socket.h) ----
    /// <summary>No SIGPIPE when the peer has gone; the send fails with EPIPE instead.</summary>
    public const uint MSG_NOSIGNAL = 0x4000;

    // ---- rw_flags (RWF_*) ----
    public const uint RWF_DSYNC = 0x2;
}
