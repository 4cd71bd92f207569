namespace ThinFast.IO;

/// <summary>
/// Zeroes a range of a device by writing zeros, for devices whose kernel-side zeroing
/// (FALLOC_FL_ZERO_RANGE, BLKZEROOUT) is not supported. The zeros come from one page-aligned
/// buffer that is never written, so every backend can use it as an O_DIRECT source.
/// </summary>
public static class ZeroWriter
{
    /// <summary>Largest piece written at once.</summary>
    public const int ChunkSize = 1 << 20;

    private static readonly Lazy<NativeBuffer> s_zeros = new(() => new NativeBuffer(ChunkSize));

    /// <summary>A buffer of <see cref="ChunkSize"/> zero bytes. Never write into it.</summary>
    public static ReadOnlyMemory<byte> Zeros => s_zeros.Value.Memory;

    /// <summary>Writes zeros over [offset, offset+length) a chunk at a time. The range must be
    /// valid for the device (aligned, inside it).</summary>
    public static async ValueTask WriteZerosAsync(IBlockDevice device, long offset, long length)
    {
        var zeros = Zeros;
        for (long done = 0; done < length;)
        {
            int piece = (int)Math.Min(ChunkSize, length - done);
            await device.WriteAsync(offset + done, zeros[..piece]).ConfigureAwait(false);
            done += piece;
        }
    }

    /// <summary>The same on the calling thread, for a device that can write synchronously.</summary>
    public static void WriteZeros(ISynchronousBlockDevice device, long offset, long length)
    {
        var zeros = Zeros.Span;
        for (long done = 0; done < length;)
        {
            int piece = (int)Math.Min(ChunkSize, length - done);
            device.WriteSynchronously(offset + done, zeros[..piece], WriteFlags.None);
            done += piece;
        }
    }
}
