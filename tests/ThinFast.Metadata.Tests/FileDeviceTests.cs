using ThinFast.IO;

namespace ThinFast.Metadata.Tests;

/// <summary>The metadata on a real file through ThinFast.IO (O_DIRECT), checked by the tools in place.</summary>
public class FileDeviceTests
{
    [Fact]
    public void PoolOnAnODirectFilePassesTheToolsAndReopens()
    {
        string path = Oracles.TempFile("meta");
        try
        {
            string written;
            using (var dev = BlockDevices.Create(path, 16 << 20))
            using (var md = ThinMetadata.Format(dev, 256, 50_000))
            {
                md.CreateThin(1);
                for (ulong v = 0; v < 12_000; v++)
                {
                    Assert.True(md.TryAllocateDataBlock(out ulong d));
                    md.Insert(1, v * 5, d);
                }
                md.Commit();
                md.CreateSnapshot(2, 1);
                for (ulong v = 0; v < 2_000; v++)
                    md.Remove(2, v * 5);
                md.Commit();
                var w = new StringWriter();
                md.WriteXml(w);
                written = w.ToString();
            }
            Oracles.AssertConsistent(path);
            var dump = Oracles.ThinDump(path);
            Assert.True(dump.ExitCode == 0, dump.ToString());
            Assert.Equal(written, dump.Stdout);
            using (var dev = BlockDevices.Open(path))
            using (var md = ThinMetadata.Open(dev))
            {
                var w = new StringWriter();
                md.WriteXml(w);
                Assert.Equal(written, w.ToString());
                Assert.Equal(10_000ul, md.GetDetails(2).MappedBlocks);
            }
        }
        finally
        {
            File.Delete(path);
        }
    }
}
