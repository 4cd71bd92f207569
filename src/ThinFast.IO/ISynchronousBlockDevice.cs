namespace ThinFast.IO;

/// <summary>
/// A device that can also do its I/O on the calling thread. The synchronous helpers in
/// <see cref="BlockDeviceExtensions"/> use it when present: waiting on an async operation that
/// itself needs a thread-pool thread, from a thread-pool thread, starves the pool (the runtime
/// then adds a thread about once a second, which showed up as 1 s stalls under NBD load).
/// </summary>
public interface ISynchronousBlockDevice : IBlockDevice
{
    void ReadSynchronously(long offset, Span<byte> destination);

    void WriteSynchronously(long offset, ReadOnlySpan<byte> source, WriteFlags flags);

    void FlushSynchronously();
}
