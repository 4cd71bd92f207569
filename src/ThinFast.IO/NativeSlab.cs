using System.Runtime.InteropServices;
using ThinFast.Interop;

namespace ThinFast.IO;

/// <summary>
/// One zeroed region of native memory for a whole buffer pool. On Linux a region of 2 MiB or more
/// is mapped on a 2 MiB boundary and advised for transparent huge pages, so each buffer inside it
/// is physically contiguous within its huge page.
/// </summary>
/// <remarks>
/// Why: a block device takes at most <c>max_segments</c> physically contiguous pieces per request
/// (254 on the virtio disk here). A 1 MiB buffer of scattered 4 KiB pages is 256 pieces, so the
/// kernel split every 1 MiB O_DIRECT transfer in two; on huge pages it is one piece. Measured on
/// 1 MiB sequential origin reads at QD8 (docs/io.md): 1.0 GiB/s on 4 KiB pages, 2.5-2.9 GiB/s on
/// huge pages. The advice is only advice: where THP is off the region still works, on small pages.
/// </remarks>
internal sealed unsafe class NativeSlab : IDisposable
{
    public const int HugePageSize = 2 << 20;

    private byte* _mapping;
    private readonly nuint _mappingLength;

    public NativeSlab(nuint length, int alignment)
    {
        if (OperatingSystem.IsLinux() && length >= HugePageSize && alignment <= HugePageSize)
        {
            // Map one huge page more than needed and start at the first 2 MiB boundary inside.
            _mappingLength = AlignUp(length, HugePageSize) + HugePageSize;
            nint address = Libc.Mmap(null, _mappingLength, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0);
            if (address < 0)
                throw new OutOfMemoryException($"mmap of {_mappingLength} bytes for a buffer pool failed: {Errno.Describe((int)-address)}");
            _mapping = (byte*)address;
            Pointer = (byte*)AlignUp((nuint)address, HugePageSize);
            // Anonymous memory is zero and untouched: the advice takes effect at the first fault.
            Libc.Madvise(Pointer, AlignUp(length, HugePageSize), Libc.MADV_HUGEPAGE);
        }
        else
        {
            Pointer = (byte*)NativeMemory.AlignedAlloc(length, (nuint)Math.Max(alignment, NativeBuffer.PageSize));
            NativeMemory.Clear(Pointer, length);
        }
    }

    public byte* Pointer { get; private set; }

    private static nuint AlignUp(nuint value, int alignment) => (value + (nuint)alignment - 1) & ~((nuint)alignment - 1);

    public void Dispose()
    {
        if (Pointer == null)
            return;
        if (_mapping != null)
            Libc.Munmap(_mapping, _mappingLength);
        else
            NativeMemory.AlignedFree(Pointer);
        Pointer = null;
        _mapping = null;
    }
}
