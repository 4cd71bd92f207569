using System.Runtime.CompilerServices;

namespace ThinFast.IO;

public static class BlockDeviceExtensions
{
    /// <summary>Checks an I/O request against the device's alignment rules and size. Backends and
    /// test devices call this first so every implementation refuses the same requests with the
    /// same messages.</summary>
    public static void ValidateRequest(this IBlockDevice device, long offset, long length, ReadOnlySpan<byte> buffer, bool isWrite)
    {
        if (isWrite && device.IsReadOnly)
            ThrowReadOnly(device);
        int lbs = device.LogicalBlockSize;
        if (offset < 0 || (offset & (lbs - 1)) != 0 || (length & (lbs - 1)) != 0)
            ThrowMisaligned(device, offset, length);
        if (!buffer.IsEmpty && !IsAligned(buffer, device.BufferAlignment))
            ThrowBufferMisaligned(device);
        if (offset + length > device.Length)
            ThrowOutOfRange(device, offset, length);
    }

    /// <summary>True when the buffer's first byte sits at a multiple of <paramref name="alignment"/>.</summary>
    public static unsafe bool IsAligned(ReadOnlySpan<byte> buffer, int alignment)
    {
        fixed (byte* p = buffer)
            return ((nuint)p & (nuint)(alignment - 1)) == 0;
    }

    // Synchronous helpers for code off the data path (metadata block cache, tools). They must not
    // be called on a backend's I/O thread: the wait would deadlock the reactor.

    public static void Read(this IBlockDevice device, long offset, Memory<byte> destination)
    {
        if (device is ISynchronousBlockDevice sync)
            sync.ReadSynchronously(offset, destination.Span);
        else
            Wait(device.ReadAsync(offset, destination));
    }

    public static void Write(this IBlockDevice device, long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        if (device is ISynchronousBlockDevice sync)
            sync.WriteSynchronously(offset, source.Span, flags);
        else
            Wait(device.WriteAsync(offset, source, flags));
    }

    public static void Flush(this IBlockDevice device)
    {
        if (device is ISynchronousBlockDevice sync)
            sync.FlushSynchronously();
        else
            Wait(device.FlushAsync());
    }

    private static void Wait(ValueTask task)
    {
        if (task.IsCompletedSuccessfully)
            return;
        task.AsTask().GetAwaiter().GetResult();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowReadOnly(IBlockDevice device) =>
        throw new BlockDeviceException(BlockError.ReadOnly, $"{device.Name}: device is read-only");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowMisaligned(IBlockDevice device, long offset, long length) =>
        throw new BlockDeviceException(BlockError.InvalidArgument,
            $"{device.Name}: offset {offset} and length {length} must be multiples of {device.LogicalBlockSize}");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowBufferMisaligned(IBlockDevice device) =>
        throw new BlockDeviceException(BlockError.InvalidArgument,
            $"{device.Name}: buffer address must be aligned to {device.BufferAlignment} bytes");

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowOutOfRange(IBlockDevice device, long offset, long length) =>
        throw new BlockDeviceException(BlockError.OutOfRange,
            $"{device.Name}: request [{offset}, {offset + length}) is past the end ({device.Length})");
}
