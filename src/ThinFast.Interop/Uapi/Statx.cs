using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>struct statx_timestamp (linux/stat.h).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct StatxTimestamp
{
    public const int Size = 16;
    [FieldOffset(0)] public long TvSec;
    [FieldOffset(8)] public uint TvNsec;
    [FieldOffset(12)] public int Reserved;
}

/// <summary>struct statx (linux/stat.h, 256 bytes).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public struct Statx
{
    public const int Size = 256;
    [FieldOffset(0)] public uint Mask;
    [FieldOffset(4)] public uint BlkSize;
    [FieldOffset(8)] public ulong Attributes;
    [FieldOffset(16)] public uint Nlink;
    [FieldOffset(20)] public uint Uid;
    [FieldOffset(24)] public uint Gid;
    [FieldOffset(28)] public ushort Mode;
    [FieldOffset(32)] public ulong Ino;
    [FieldOffset(40)] public ulong FileSize;
    [FieldOffset(48)] public ulong Blocks;
    [FieldOffset(56)] public ulong AttributesMask;
    [FieldOffset(64)] public StatxTimestamp Atime;
    [FieldOffset(80)] public StatxTimestamp Btime;
    [FieldOffset(96)] public StatxTimestamp Ctime;
    [FieldOffset(112)] public StatxTimestamp Mtime;
    [FieldOffset(128)] public uint RdevMajor;
    [FieldOffset(132)] public uint RdevMinor;
    [FieldOffset(136)] public uint DevMajor;
    [FieldOffset(140)] public uint DevMinor;
    [FieldOffset(144)] public ulong MntId;
    /// <summary>Required buffer alignment for O_DIRECT; 0 when the file does not support it.</summary>
    [FieldOffset(152)] public uint DioMemAlign;
    /// <summary>Required offset and length alignment for O_DIRECT; 0 when unsupported.</summary>
    [FieldOffset(156)] public uint DioOffsetAlign;
}

/// <summary>struct iovec (sys/uio.h).</summary>
[StructLayout(LayoutKind.Explicit, Size = Size)]
public unsafe struct IoVec
{
    public const int Size = 16;
    [FieldOffset(0)] public void* Base;
    [FieldOffset(8)] public nuint Length;
}
