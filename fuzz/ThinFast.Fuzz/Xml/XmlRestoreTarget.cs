using System.Text;
using System.Xml;
using ThinFast.Metadata;
using ThinFast.Testing;

namespace ThinFast.Fuzz.Xml;

/// <summary>
/// thin_dump XML into <see cref="ThinMetadata.RestoreXml"/>, as <c>thinfast pool restore</c> feeds
/// it, onto a 1 MiB metadata device; what it restores is dumped, reopened and dumped again. Documented refusals:
/// <see cref="FormatException"/> (bad or missing attributes, misplaced elements),
/// <see cref="XmlException"/> (not XML), <see cref="MetadataSpaceExhaustedException"/> (more
/// mappings than the device holds) and the <see cref="ArgumentException"/>s of
/// <see cref="ThinMetadata.Format"/> for a geometry it cannot format. An ArgumentException from
/// anywhere else (a span sliced out of range, a mapping packed past 40 bits) is a crash. XML
/// that restore accepts must give metadata that opens and dumps the same again.
/// </summary>
public sealed class XmlRestoreTarget : IFuzzTarget
{
    private const long MetadataDeviceBytes = 1 << 20;
    private const long AllocationLimit = 256L << 20;

    public string Name => "xml-restore";

    public string Description => "thin_dump XML read by pool restore (ThinMetadata.RestoreXml); the result must reopen and dump the same";

    public void Run(ReadOnlySpan<byte> input)
    {
        var budget = AllocationBudget.Start(AllocationLimit);
        using var text = new StreamReader(new MemoryStream(input.ToArray()), Encoding.UTF8);
        var device = new MemoryBlockDevice(MetadataDeviceBytes);
        string dump;
        try
        {
            using var md = ThinMetadata.RestoreXml(text, device);
            var writer = new StringWriter();
            md.WriteXml(writer);
            dump = writer.ToString();
        }
        catch (Exception e) when (e is FormatException or XmlException or MetadataSpaceExhaustedException || IsFormatGeometryRefusal(e))
        {
            // The documented refusal.
            budget.Check("restoring the XML");
            return;
        }
        // What restore committed is what the pool will open: it must open, and dump the same.
        try
        {
            using var reopened = ThinMetadata.Open(device);
            var writer = new StringWriter();
            reopened.WriteXml(writer);
            if (writer.ToString() != dump)
                throw new UndocumentedFailureException($"the restored metadata dumps differently once reopened:\n{dump}\n---\n{writer}");
        }
        catch (MetadataCorruptException e)
        {
            throw new UndocumentedFailureException($"restore accepted the XML but wrote metadata that does not open: {e.Message}");
        }
        budget.Check("restoring the XML");
    }

    private static bool IsFormatGeometryRefusal(Exception e) =>
        e is ArgumentException && e.TargetSite is { Name: nameof(ThinMetadata.Format) } site && site.DeclaringType == typeof(ThinMetadata);

    public IEnumerable<(string Name, byte[] Contents)> Seeds()
    {
        // A small pool made by the code under test, as thin_dump would print it: single and
        // range mappings, a snapshot sharing them, an empty device.
        var device = new MemoryBlockDevice(MetadataDeviceBytes);
        using (var md = ThinMetadata.Format(device, 128, 1000))
        {
            md.CreateThin(1);
            for (ulong v = 0; v < 12; v++)
            {
                if (md.TryAllocateDataBlock(out ulong block))
                    md.Insert(1, v < 8 ? v : v * 5, block);
            }
            md.CreateSnapshot(2, 1);
            md.CreateThin(7);
            md.Commit();
            var dump = new StringWriter();
            md.WriteXml(dump);
            yield return ("small-pool.xml", Encoding.UTF8.GetBytes(dump.ToString()));
        }
        yield return ("empty-pool.xml", Encoding.UTF8.GetBytes(
            "<superblock uuid=\"\" time=\"0\" transaction=\"0\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"100\">\n</superblock>\n"));
    }
}
