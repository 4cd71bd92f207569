using ThinFast.Metadata;

namespace ThinFast.Cli;

/// <summary>
/// Sharing as thin_ls counts it: a data block mapped by more than one (device, virtual block)
/// pair. The data space map cannot say it: after a snapshot, the blocks in B-tree leaves the two
/// devices share keep a reference count of 1 until one side copies the leaf.
/// </summary>
internal static class Sharing
{
    public static Dictionary<ulong, int> MappingsPerDataBlock(ThinMetadata md)
    {
        var counts = new Dictionary<ulong, int>();
        var ranges = new MappedRange[512];
        foreach (ulong dev in md.DeviceIds)
            ForEachRange(md, dev, ranges, r =>
            {
                for (ulong b = 0; b < r.Length; b++)
                    counts[r.DataBlock + b] = counts.GetValueOrDefault(r.DataBlock + b) + 1;
            });
        return counts;
    }

    public static void ForEachRange(ThinMetadata md, ulong deviceId, MappedRange[] buffer, Action<MappedRange> range)
    {
        ulong next = 0;
        while (true)
        {
            int n = md.LookupRange(deviceId, next, ulong.MaxValue, buffer);
            if (n == 0)
                return;
            for (int i = 0; i < n; i++)
                range(buffer[i]);
            next = buffer[n - 1].VirtualBlock + buffer[n - 1].Length;
        }
    }

    /// <summary>How many blocks of the run are mapped more than once.</summary>
    public static ulong SharedBlocks(Dictionary<ulong, int> counts, MappedRange run)
    {
        ulong shared = 0;
        for (ulong b = 0; b < run.Length; b++)
            if (counts[run.DataBlock + b] > 1)
                shared++;
        return shared;
    }
}
