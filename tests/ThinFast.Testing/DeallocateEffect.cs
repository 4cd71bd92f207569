namespace ThinFast.Testing;

/// <summary>What a test device leaves in a deallocated range. Real devices differ: a punched
/// hole in a file reads zeros, BLKDISCARD on many SSDs and thin LUNs leaves the old data or
/// returns anything, and a device may ignore the request.</summary>
public enum DeallocateEffect
{
    /// <summary>A recognisable pattern that is neither zeros nor the old data.</summary>
    Garbage,
    Zeros,
    /// <summary>The device ignores the request: the old data stays.</summary>
    Nothing,
}

public static class DeallocateEffects
{
    /// <summary>The byte <see cref="DeallocateEffect.Garbage"/> fills with.</summary>
    public const byte GarbageByte = 0xDB;

    public static void Apply(this DeallocateEffect effect, Span<byte> range)
    {
        switch (effect)
        {
            case DeallocateEffect.Garbage:
                range.Fill(GarbageByte);
                break;
            case DeallocateEffect.Zeros:
                range.Clear();
                break;
        }
    }
}
