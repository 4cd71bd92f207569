using System.Buffers;
using System.Runtime.InteropServices;

namespace ThinFast.IO;

/// <summary>
/// A page-aligned block of native memory that never moves, so it can be handed to O_DIRECT I/O
/// and registered with an io_uring as a fixed buffer. Exposed as <see cref="Memory{T}"/> through
/// <see cref="MemoryManager{T}"/>; backends recognise it with
/// <c>MemoryMarshal.TryGetMemoryManager&lt;byte, NativeBuffer&gt;</c> and use its
/// <see cref="RegistrationIndex"/> for READ_FIXED / WRITE_FIXED.
/// </summary>
public sealed unsafe class NativeBuffer : MemoryManager<byte>
{
    public const int PageSize = 4096;

    private byte* _pointer;
    private readonly int _length;
    // False for a buffer carved out of a pool's slab, which the pool frees.
    private readonly bool _ownsMemory = true;

    public NativeBuffer(int length, int alignment = PageSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(length);
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
            throw new ArgumentException($"alignment {alignment} is not a power of two", nameof(alignment));
        _length = length;
        _pointer = (byte*)NativeMemory.AlignedAlloc((nuint)length, (nuint)alignment);
        NativeMemory.Clear(_pointer, (nuint)length);
    }

    /// <summary>A view of <paramref name="length"/> bytes of memory the caller owns and outlives
    /// the buffer (an <see cref="AlignedBufferPool"/>'s slab).</summary>
    internal NativeBuffer(byte* pointer, int length)
    {
        _pointer = pointer;
        _length = length;
        _ownsMemory = false;
    }

    public byte* Pointer => _pointer;

    public int Length => _length;

    /// <summary>Index of this buffer in the io_uring fixed-buffer table it is registered in, or -1.</summary>
    public int RegistrationIndex { get; set; } = -1;

    /// <summary>Position in the owning <see cref="AlignedBufferPool"/>, or -1 for a standalone buffer.</summary>
    public int PoolIndex { get; init; } = -1;

    public override Span<byte> GetSpan()
    {
        ObjectDisposedException.ThrowIf(_pointer == null, this);
        return new Span<byte>(_pointer, _length);
    }

    // The memory is native and never moves: pinning is a no-op.
    public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
        if (_pointer != null && _ownsMemory)
            NativeMemory.AlignedFree(_pointer);
        _pointer = null;
    }
}
