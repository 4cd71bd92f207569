using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using ThinFast.IO;

namespace ThinFast.Engine;

// ---- Data-path helpers: aligned I/O with bounce buffers where the request is not aligned ----
public sealed partial class ThinPool
{
    /// <summary>Whether the caller's buffer can go to the device as it is. A managed array never
    /// does, however it is aligned now: the GC may move it before the device pins it, and an
    /// O_DIRECT transfer from the moved address fails. Front ends pass native buffers, which
    /// cannot move.</summary>
    private static bool IsDirect(IBlockDevice device, long offset, ReadOnlyMemory<byte> buffer)
    {
        int lbs = device.LogicalBlockSize;
        return (offset & (lbs - 1)) == 0 && (buffer.Length & (lbs - 1)) == 0
            && !MemoryMarshal.TryGetArray(buffer, out _)
            && BlockDeviceExtensions.IsAligned(buffer.Span, device.BufferAlignment);
    }

    /// <summary>Reads any byte range of <paramref name="device"/>: straight into the caller's
    /// buffer when offset, length and address suit O_DIRECT, else through a bounce buffer
    /// covering the enclosing aligned range.</summary>
    /// <param name="holdingBounce">The caller holds a bounce buffer already (a provisioning copy):
    /// a second one must not wait (see <see cref="BounceBufferPool"/>).</param>
    internal ValueTask ReadAnyAsync(IBlockDevice device, long offset, Memory<byte> destination, bool holdingBounce = false) =>
        IsDirect(device, offset, destination)
            ? device.ReadAsync(offset, destination)
            : ReadBouncedAsync(device, offset, destination, holdingBounce);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadBouncedAsync(IBlockDevice device, long offset, Memory<byte> destination, bool holdingBounce)
    {
        int lbs = device.LogicalBlockSize;
        var bounce = holdingBounce ? BounceBuffers.RentNested() : await BounceBuffers.RentAsync();
        try
        {
            int done = 0;
            while (done < destination.Length)
            {
                long position = offset + done;
                long alignedStart = position & ~(long)(lbs - 1);
                int lead = (int)(position - alignedStart);
                int take = Math.Min(destination.Length - done, ChunkSize - lead);
                long alignedEnd = (position + take + lbs - 1) & ~(long)(lbs - 1);
                int alignedLength = (int)(alignedEnd - alignedStart);
                await device.ReadAsync(alignedStart, bounce.Memory[..alignedLength]);
                bounce.Memory.Span.Slice(lead, take).CopyTo(destination.Span[done..]);
                done += take;
            }
        }
        finally
        {
            BounceBuffers.Return(bounce);
        }
    }

    /// <summary>Writes any byte range of the data device, read-modify-writing the partial sectors
    /// at the edges. The caller holds the block lock, so nobody else touches those sectors.</summary>
    internal ValueTask WriteAnyAsync(long offset, ReadOnlyMemory<byte> source) =>
        IsDirect(Data, offset, source)
            ? Data.WriteAsync(offset, source)
            : WriteBouncedAsync(offset, source);

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask WriteBouncedAsync(long offset, ReadOnlyMemory<byte> source)
    {
        int lbs = Data.LogicalBlockSize;
        var bounce = await BounceBuffers.RentAsync();
        try
        {
            int done = 0;
            while (done < source.Length)
            {
                long position = offset + done;
                long alignedStart = position & ~(long)(lbs - 1);
                int lead = (int)(position - alignedStart);
                int take = Math.Min(source.Length - done, ChunkSize - lead);
                long alignedEnd = (position + take + lbs - 1) & ~(long)(lbs - 1);
                int alignedLength = (int)(alignedEnd - alignedStart);
                var buffer = bounce.Memory[..alignedLength];
                if (lead != 0 || ((position + take) & (lbs - 1)) != 0)
                    await Data.ReadAsync(alignedStart, buffer);
                source.Span.Slice(done, take).CopyTo(buffer.Span[lead..]);
                await Data.WriteAsync(alignedStart, buffer);
                done += take;
            }
        }
        finally
        {
            BounceBuffers.Return(bounce);
        }
    }
}
