using System.Runtime.CompilerServices;
using ThinFast.IO;

namespace ThinFast.Nbd;

/// <summary>
/// Page-aligned payload buffers in size tiers, shared by every connection of a server. Each
/// buffer has <see cref="HeaderRoom"/> bytes in front of the payload so a READ reply's header can
/// be written right before the data and both go out in one send, while the payload itself stays
/// page-aligned for O_DIRECT engines.
/// </summary>
internal sealed class PayloadBufferPool : IDisposable
{
    public const int HeaderRoom = NativeBuffer.PageSize;

    private readonly AlignedBufferPool[] _tiers;
    // Counts free buffers per tier so a renter can wait when a tier is exhausted; WaitAsync only
    // allocates when it actually has to wait, which steady-state traffic does not.
    private readonly SemaphoreSlim[] _available;

    public PayloadBufferPool(IReadOnlyList<(int Size, int Count)> tiers)
    {
        _tiers = new AlignedBufferPool[tiers.Count];
        _available = new SemaphoreSlim[tiers.Count];
        for (int i = 0; i < tiers.Count; i++)
        {
            _tiers[i] = new AlignedBufferPool(tiers[i].Size + HeaderRoom, tiers[i].Count);
            _available[i] = new SemaphoreSlim(tiers[i].Count, tiers[i].Count);
        }
    }

    public int LargestPayload => _tiers[^1].BufferSize - HeaderRoom;

    /// <summary>A buffer whose payload area holds at least <paramref name="length"/> bytes, if one
    /// is free right now.</summary>
    public bool TryRent(int length, out NativeBuffer buffer)
    {
        int tier = TierFor(length);
        if (_available[tier].Wait(0))
        {
            buffer = _tiers[tier].Rent();
            return true;
        }
        buffer = null!;
        return false;
    }

    /// <summary>Waits for a buffer whose payload area holds at least <paramref name="length"/>
    /// bytes (the slow path when a tier is exhausted).</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<NativeBuffer> RentAsync(int length)
    {
        int tier = TierFor(length);
        await _available[tier].WaitAsync().ConfigureAwait(false);
        return _tiers[tier].Rent();
    }

    public void Return(NativeBuffer buffer)
    {
        for (int i = 0; i < _tiers.Length; i++)
        {
            if (_tiers[i].BufferSize == buffer.Length)
            {
                _tiers[i].Return(buffer);
                _available[i].Release();
                return;
            }
        }
        throw new ArgumentException("buffer does not belong to this pool", nameof(buffer));
    }

    private int TierFor(int length)
    {
        for (int i = 0; i < _tiers.Length; i++)
        {
            if (_tiers[i].BufferSize - HeaderRoom >= length)
                return i;
        }
        throw new ArgumentOutOfRangeException(nameof(length), length, $"larger than the largest payload buffer ({LargestPayload})");
    }

    public void Dispose()
    {
        foreach (var t in _tiers)
            t.Dispose();
        foreach (var s in _available)
            s.Dispose();
    }
}
