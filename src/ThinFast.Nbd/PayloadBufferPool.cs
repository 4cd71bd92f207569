using ThinFast.IO;

namespace ThinFast.Nbd;

/// <summary>
/// Page-aligned payload buffers in size tiers, shared by every connection of a server. Each
/// buffer has <see cref="HeaderRoom"/> bytes in front of the payload so a READ reply's header can
/// be written right before the data and both go out in one send, while the payload itself stays
/// page-aligned for O_DIRECT engines.
/// </summary>
/// <remarks>Renting never waits: when the tier that fits has no free buffer, one of just the
/// needed size is allocated and freed again on return. Waiting for a shared buffer would let a
/// client that holds buffers without progressing (stalled mid-WRITE, not reading its READ replies)
/// stop every other client; what bounds memory instead is each connection's
/// <see cref="PayloadBudget"/>.</remarks>
internal sealed class PayloadBufferPool : IDisposable
{
    public const int HeaderRoom = NativeBuffer.PageSize;

    private readonly AlignedBufferPool[] _tiers;

    public PayloadBufferPool(IReadOnlyList<(int Size, int Count)> tiers)
    {
        _tiers = new AlignedBufferPool[tiers.Count];
        for (int i = 0; i < tiers.Count; i++)
            _tiers[i] = new AlignedBufferPool(tiers[i].Size + HeaderRoom, tiers[i].Count);
    }

    public int LargestPayload => _tiers[^1].BufferSize - HeaderRoom;

    /// <summary>A buffer whose payload area holds at least <paramref name="length"/> bytes.</summary>
    public NativeBuffer Rent(int length)
    {
        var tier = _tiers[TierFor(length)];
        if (tier.TryRent(out var buffer))
            return buffer;
        int size = (length + NativeBuffer.PageSize - 1) / NativeBuffer.PageSize * NativeBuffer.PageSize;
        return new NativeBuffer(HeaderRoom + size);
    }

    public void Return(NativeBuffer buffer)
    {
        if (buffer.PoolIndex < 0)
        {
            ((IDisposable)buffer).Dispose();
            return;
        }
        foreach (var tier in _tiers)
        {
            if (tier.BufferSize == buffer.Length)
            {
                tier.Return(buffer);
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
    }
}
