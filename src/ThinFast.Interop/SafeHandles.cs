using System.Runtime.InteropServices;

namespace ThinFast.Interop;

/// <summary>Owns a file descriptor that is not a file handle for .NET (an io_uring, an eventfd).</summary>
public sealed class FileDescriptorHandle : SafeHandle
{
    public FileDescriptorHandle(int fd) : base(-1, ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle < 0;

    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;
}

/// <summary>Owns an mmap'ed region and unmaps it on release.</summary>
public sealed unsafe class MappedRegionHandle : SafeHandle
{
    public MappedRegionHandle(nint address, nuint length) : base(0, ownsHandle: true)
    {
        Length = length;
        SetHandle(address);
    }

    public override bool IsInvalid => handle == 0;

    public nuint Length { get; }

    public byte* Pointer => (byte*)handle;

    protected override bool ReleaseHandle() => Libc.Munmap((void*)handle, Length) == 0;
}
