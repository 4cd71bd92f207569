using System.Buffers.Binary;
using System.Runtime.Intrinsics.X86;

namespace ThinFast.Metadata;

/// <summary>
/// CRC-32C (Castagnoli) in the form persistent-data uses: seed 0xFFFFFFFF and no final inversion
/// (the "raw register"). SSE4.2 when the CPU has it, a slicing table otherwise.
/// </summary>
public static class Crc32C
{
    private const uint Polynomial = 0x82F63B78;
    private static readonly uint[] Table = BuildTable();

    private static uint[] BuildTable()
    {
        var table = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            uint c = i;
            for (int k = 0; k < 8; k++)
                c = (c & 1) != 0 ? (c >> 1) ^ Polynomial : c >> 1;
            table[i] = c;
        }
        return table;
    }

    /// <summary>The register after feeding <paramref name="data"/> from seed 0xFFFFFFFF, not inverted.</summary>
    public static uint ComputeRaw(ReadOnlySpan<byte> data) => Update(0xFFFFFFFF, data);

    /// <summary>The published CRC-32C (final inversion applied).</summary>
    public static uint ComputeStandard(ReadOnlySpan<byte> data) => ComputeRaw(data) ^ 0xFFFFFFFF;

    public static uint Update(uint crc, ReadOnlySpan<byte> data)
    {
        if (Sse42.X64.IsSupported)
        {
            ulong c = crc;
            while (data.Length >= 8)
            {
                c = Sse42.X64.Crc32(c, BinaryPrimitives.ReadUInt64LittleEndian(data));
                data = data[8..];
            }
            crc = (uint)c;
        }
        uint[] table = Table;
        foreach (byte b in data)
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }

    /// <summary>Table-only path, exposed so tests can check it against the hardware path.</summary>
    public static uint UpdateSoftware(uint crc, ReadOnlySpan<byte> data)
    {
        uint[] table = Table;
        foreach (byte b in data)
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
        return crc;
    }
}
