using System.Buffers.Binary;
using ThinFast.Testing;

namespace ThinFast.Metadata.Tests;

/// <summary>
/// Random damage with the checksum recomputed, so it reaches the structural validators: opening,
/// reading everything and then changing the pool either works or throws MetadataCorruptException;
/// never another exception or a hang.
/// </summary>
public class FuzzTests
{
    [Fact]
    public void ResealedRandomDamageIsReportedAsCorruptionOnly()
    {
        var dev = new MemoryBlockDevice(2 << 20);
        using (var md = ThinMetadata.Format(dev, 128, 5000))
        {
            md.CreateThin(1);
            for (ulong v = 0; v < 1500; v++)
            {
                Assert.True(md.TryAllocateDataBlock(out ulong d));
                md.Insert(1, v * 2, d);
            }
            md.CreateSnapshot(2, 1);
            md.CreateThin(3);
            md.Commit();
        }
        byte[] pristine = dev.ToArray();
        var used = new List<(int Block, uint Salt)>();
        for (int b = 0; b < pristine.Length / 4096; b++)
        {
            ReadOnlySpan<byte> blk = pristine.AsSpan(b * 4096, 4096);
            foreach (uint salt in new[] { MetadataFormat.SuperblockSalt, MetadataFormat.NodeSalt, MetadataFormat.BitmapSalt, MetadataFormat.IndexSalt })
                if (MetadataFormat.StoredChecksum(blk) == MetadataFormat.ComputeChecksum(blk, salt))
                    used.Add((b, salt));
        }
        Assert.True(used.Count > 10);
        var rng = new Random(77);
        int corrupt = 0, fine = 0;
        for (int i = 0; i < 3000; i++)
        {
            byte[] image = (byte[])pristine.Clone();
            var (block, salt) = used[rng.Next(used.Count)];
            Span<byte> blk = image.AsSpan(block * 4096, 4096);
            int flips = rng.Next(1, 4);
            for (int f = 0; f < flips; f++)
            {
                // Mostly the header and the first keys/values, where structure lives.
                int offset = rng.Next(3) == 0 ? rng.Next(4, 4096) : rng.Next(4, 0x170);
                if (rng.Next(2) == 0)
                    blk[offset] ^= (byte)(1 << rng.Next(8));
                else
                    blk[offset] = (byte)rng.Next(256);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(blk, MetadataFormat.ComputeChecksum(blk, salt));
            try
            {
                using var md = ThinMetadata.Open(new MemoryBlockDevice(image));
                md.WriteXml(TextWriter.Null);
                foreach (ulong id in md.DeviceIds)
                    md.TryLookup(id, 100, out _);
                // Changes walk, shadow and free what the damage touched.
                if (md.DeviceIds.Count > 1)
                {
                    ulong last = md.DeviceIds[^1];
                    if (md.TryAllocateDataBlock(out ulong d))
                        md.Insert(last, 7, d);
                    md.DeleteDevice(md.DeviceIds[0]);
                    md.Commit();
                }
                fine++;
            }
            catch (MetadataCorruptException)
            {
                corrupt++;
            }
            catch (Exception e)
            {
                Assert.Fail($"damage to block {block} (case {i}) gave {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
        }
        Assert.True(corrupt > 1000, $"only {corrupt} of 3000 damaged images were reported corrupt ({fine} opened)");
    }
}
