using System.Runtime.InteropServices;
using ThinFast.IO;

namespace ThinFast.Benchmarks.Nbd;

/// <summary>
/// A fast in-memory <see cref="IBlockVolume"/> for measuring the NBD server alone: one zeroed
/// native allocation (pages appear on first touch) and an allocation bit per unit for block
/// status. Each allocation-unit piece of a request is applied under that unit's stripe lock, so
/// overlapping requests do not tear within a unit.
/// </summary>
public sealed unsafe class RamVolume : IBlockVolume, IDisposable
{
    private readonly byte* _memory;
    private readonly bool[] _allocated;
    private readonly object[] _stripes = new object[256];

    public RamVolume(long size, int allocationUnit = 64 * 1024, string name = "ram")
    {
        if (size <= 0 || size % allocationUnit != 0)
            throw new ArgumentException($"size {size} must be a positive multiple of {allocationUnit}");
        Size = size;
        AllocationUnit = allocationUnit;
        Name = name;
        _memory = (byte*)NativeMemory.AllocZeroed((nuint)size);
        _allocated = new bool[size / allocationUnit];
        for (int i = 0; i < _stripes.Length; i++)
            _stripes[i] = new object();
    }

    public string Name { get; }

    public long Size { get; }

    public bool IsReadOnly => false;

    public int AllocationUnit { get; }

    public ValueTask ReadAsync(long offset, Memory<byte> destination)
    {
        var target = destination.Span;
        for (int done = 0; done < target.Length;)
        {
            long unit = (offset + done) / AllocationUnit;
            int count = (int)Math.Min(AllocationUnit - (offset + done) % AllocationUnit, target.Length - done);
            lock (_stripes[unit % _stripes.Length])
                new ReadOnlySpan<byte>(_memory + offset + done, count).CopyTo(target.Slice(done, count));
            done += count;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> source, WriteFlags flags = WriteFlags.None)
    {
        var data = source.Span;
        for (int done = 0; done < data.Length;)
        {
            long unit = (offset + done) / AllocationUnit;
            int count = (int)Math.Min(AllocationUnit - (offset + done) % AllocationUnit, data.Length - done);
            lock (_stripes[unit % _stripes.Length])
            {
                data.Slice(done, count).CopyTo(new Span<byte>(_memory + offset + done, count));
                _allocated[unit] = true;
            }
            done += count;
        }
        return ValueTask.CompletedTask;
    }

    // Memory is as durable as this volume gets.
    public ValueTask FlushAsync() => ValueTask.CompletedTask;

    public ValueTask DiscardAsync(long offset, long length, WriteFlags flags = WriteFlags.None)
    {
        for (long unit = (offset + AllocationUnit - 1) / AllocationUnit; (unit + 1) * AllocationUnit <= offset + length; unit++)
        {
            lock (_stripes[unit % _stripes.Length])
            {
                NativeMemory.Clear(_memory + unit * AllocationUnit, (nuint)AllocationUnit);
                _allocated[unit] = false;
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, ZeroFlags zero, WriteFlags flags = WriteFlags.None)
    {
        bool mayDeallocate = (zero & ZeroFlags.MayDeallocate) != 0;
        for (long done = 0; done < length;)
        {
            long unit = (offset + done) / AllocationUnit;
            long count = Math.Min(AllocationUnit - (offset + done) % AllocationUnit, length - done);
            lock (_stripes[unit % _stripes.Length])
            {
                NativeMemory.Clear(_memory + offset + done, (nuint)count);
                _allocated[unit] = !(mayDeallocate && count == AllocationUnit) && (_allocated[unit] || !mayDeallocate);
            }
            done += count;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask PrefetchAsync(long offset, long length) => ValueTask.CompletedTask;

    public int GetExtents(long offset, long length, Span<VolumeExtent> extents)
    {
        int filled = 0;
        long end = offset + length;
        while (offset < end && filled < extents.Length)
        {
            long unit = offset / AllocationUnit;
            bool allocated = _allocated[unit];
            long runEnd = (unit + 1) * AllocationUnit;
            while (runEnd < end && _allocated[runEnd / AllocationUnit] == allocated)
                runEnd += AllocationUnit;
            extents[filled++] = new VolumeExtent(offset, runEnd - offset, allocated ? ExtentFlags.Data : ExtentFlags.Hole | ExtentFlags.Zero);
            offset = runEnd;
        }
        return filled;
    }

    public void Dispose() => NativeMemory.Free(_memory);
}
