using System.Diagnostics;
using System.Globalization;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Benchmarks.Metadata;

/// <summary>
/// ThinMetadata next to thin-provisioning-tools on the same XML and the same kind of file:
/// restore (XML to binary metadata, ending in a flush) and dump (binary metadata to XML, cold open).
/// </summary>
public sealed class MetadataVsThinTools : IComparisonRun
{
    public string Name => "metadata-vs-thin-tools";

    public string Description => "RestoreXml vs thin_restore and Open+WriteXml vs thin_dump, 1M mappings in 3 devices (args: [mappings])";

    public Task<int> RunAsync(string[] args)
    {
        int mappings = args.Length > 0 ? int.Parse(args[0], CultureInfo.InvariantCulture) : 1_000_000;
        string dir = Directory.CreateTempSubdirectory("thinfast-mdbench-").FullName;
        try
        {
            string xml = Path.Combine(dir, "pool.xml");
            WriteXml(xml, mappings);
            const long size = 256L << 20;

            string theirs = Path.Combine(dir, "tools.bin");
            using (var f = File.Create(theirs))
                f.SetLength(size);
            double toolsRestore = Time(() => Run("thin_restore", "-q", "-i", xml, "-o", theirs));
            double toolsDump = Time(() => Run("thin_dump", theirs));

            string ours = Path.Combine(dir, "thinfast.bin");
            double ourRestore = Time(() =>
            {
                using var dev = BlockDevices.Create(ours, size);
                using var reader = new StreamReader(xml);
                ThinMetadata.RestoreXml(reader, dev).Dispose();
            });
            string ourXml = "";
            double ourDump = Time(() =>
            {
                using var dev = BlockDevices.Open(ours);
                using var md = ThinMetadata.Open(dev);
                var w = new StringWriter();
                md.WriteXml(w);
                ourXml = w.ToString();
            });
            string toolsXml = Run("thin_dump", theirs);
            string toolsOnOurs = Run("thin_dump", ours);
            bool same = ourXml == toolsXml && toolsOnOurs == toolsXml;

            Console.WriteLine($"{mappings} mappings, 3 devices; same XML from both dumps of both images: {same}");
            Console.WriteLine($"{"operation",-30} {"thin tools (s)",14} {"ThinFast (s)",13} {"ratio",7}");
            Console.WriteLine($"{"restore XML -> metadata",-30} {toolsRestore,14:F3} {ourRestore,13:F3} {toolsRestore / ourRestore,7:F2}x");
            Console.WriteLine($"{"cold open + dump to XML",-30} {toolsDump,14:F3} {ourDump,13:F3} {toolsDump / ourDump,7:F2}x");
            Console.WriteLine("(ratio > 1: ThinFast faster; thin_dump time includes writing its XML to a pipe)");
            return Task.FromResult(same ? 0 : 1);
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static void WriteXml(string path, int mappings)
    {
        using var w = new StreamWriter(path);
        int perDev = mappings / 3;
        w.Write($"<superblock uuid=\"\" time=\"1\" transaction=\"1\" flags=\"0\" version=\"2\" data_block_size=\"128\" nr_data_blocks=\"{mappings * 2}\">\n");
        var rng = new Random(3);
        for (int dev = 1; dev <= 3; dev++)
        {
            w.Write($"  <device dev_id=\"{dev}\" mapped_blocks=\"{perDev}\" transaction=\"0\" creation_time=\"0\" snap_time=\"1\">\n");
            int v = 0, d = (dev - 1) * perDev;
            while (v < perDev)
            {
                int run = Math.Min(perDev - v, rng.Next(1, 8));
                w.Write($"    <range_mapping origin_begin=\"{v * 2}\" data_begin=\"{d}\" length=\"{run}\" time=\"{rng.Next(2)}\"/>\n");
                v += run;
                d += run + 1;
            }
            w.Write("  </device>\n");
        }
        w.Write("</superblock>\n");
    }

    private static double Time(Action a)
    {
        var sw = Stopwatch.StartNew();
        a();
        return sw.Elapsed.TotalSeconds;
    }

    private static string Run(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (string a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"{tool} did not start (apt-get install thin-provisioning-tools)");
        Task<string> err = p.StandardError.ReadToEndAsync();
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{tool} {string.Join(' ', args)} exited {p.ExitCode}: {err.Result}");
        return output;
    }
}
