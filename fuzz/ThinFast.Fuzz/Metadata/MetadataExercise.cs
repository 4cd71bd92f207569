using ThinFast.Metadata;
using ThinFast.Testing;

namespace ThinFast.Fuzz.Metadata;

/// <summary>
/// What every metadata target does with an image once a fuzzed block is in it: open it as the pool
/// does, read everything (thin_dump's XML, every device's details and some lookups, the leak scan
/// the pool runs at open), then change it (insert, delete a device, commit), which walks, shadows
/// and frees what the damage touched. Refusing the image with <see cref="MetadataCorruptException"/>
/// is the documented answer to damage; running out of metadata space while changing it is an
/// ordinary refusal too.
/// </summary>
internal static class MetadataExercise
{
    // A 512 KiB image read and rewritten needs a few MiB; hundreds mean a size field was trusted.
    private const long AllocationLimit = 256L << 20;

    public static void Run(byte[] image)
    {
        var budget = AllocationBudget.Start(AllocationLimit);
        try
        {
            using var md = ThinMetadata.Open(new MemoryBlockDevice(image));
            md.WriteXml(TextWriter.Null);
            Span<MappedRange> ranges = stackalloc MappedRange[16];
            foreach (ulong id in md.DeviceIds)
            {
                md.GetDetails(id);
                md.TryLookup(id, 3, out _);
                md.TryLookup(id, 10_003, out _);
                md.LookupRange(id, 0, 2_000, ranges);
            }
            md.ReclaimLeakedDataBlocks();
            if (md.DeviceIds.Count > 1)
            {
                ulong last = md.DeviceIds[^1];
                if (md.TryAllocateDataBlock(out ulong block))
                    md.Insert(last, 7, block);
                md.Remove(last, 16_500);
                md.DeleteDevice(md.DeviceIds[0]);
                md.Commit();
            }
        }
        catch (Exception e) when (e is MetadataCorruptException or MetadataSpaceExhaustedException)
        {
            // The documented refusal.
        }
        budget.Check("opening and changing the metadata");
    }
}
