using System.Text.Json;

namespace ThinFast.Integration.Tests;

/// <summary>Real thin volumes (pool on files, external origins) served over NBD and driven by
/// nbdinfo, qemu-io, qemu-img, nbdcopy and fio as separate processes.</summary>
public class ThinVolumeClientTests
{
    private const int Block = 64 * 1024;
    private const int Data = 0, HoleZero = 3;

    [Fact(Timeout = 120_000)] // a hang (say, a deadlock between server and pool) fails instead of stalling CI
    public async Task NbdinfoMapShowsHolesOriginDataAndMappedBlocks()
    {
        await using var s = new ThinServer();
        string origin = s.CreateRandomImage("origin.raw", 8L << 20, seed: 1);
        var plain = s.Pool.CreateVolume("plain", 16L << 20);
        var over = s.Pool.CreateVolume("over", 16L << 20, origin);
        s.Serve();

        await Clients.RunOkAsync("qemu-io", "-f", "raw", s.UnixUri("plain"),
            "-c", "write -P 0x5a 1M 64k",
            "-c", $"write -P 0x5b {(3 << 20) + 4096} 4k") // partial: the whole block gets mapped
            .WaitAsync(TestContext.Current.CancellationToken);
        await Clients.RunOkAsync("qemu-io", "-f", "raw", s.TcpUri("over"),
            "-c", $"write -P 0x6a {(2 << 20) + 8192} 4k", // copy-on-write from the origin
            "-c", "write -P 0x6b 12M 64k");                 // past the origin's end

        var plainMapped = new HashSet<long> { 16, 48 };
        var overMapped = new HashSet<long> { 32, 192 };
        Assert.Equal(Expected(16L << 20, originSize: 0, plainMapped), await MapAsync(s.UnixUri("plain")));
        Assert.Equal(Expected(16L << 20, originSize: 8L << 20, overMapped), await MapAsync(s.TcpUri("over")));
        Assert.Equal((ulong)plainMapped.Count, plain.MappedBlocks);
        Assert.Equal((ulong)overMapped.Count, over.MappedBlocks);
        await s.CloseAndCheckAsync();
    }

    /// <summary>The map the pool's mappings imply, 64 KiB block by block, merged into runs.</summary>
    private static List<(long Offset, long Length, int Type)> Expected(long size, long originSize, HashSet<long> mapped)
    {
        var runs = new List<(long Offset, long Length, int Type)>();
        for (long offset = 0; offset < size; offset += Block)
        {
            int type = mapped.Contains(offset / Block) || offset < originSize ? Data : HoleZero;
            AddRun(runs, offset, Block, type);
        }
        return runs;
    }

    private static void AddRun(List<(long Offset, long Length, int Type)> runs, long offset, long length, int type)
    {
        if (runs.Count > 0 && runs[^1].Type == type && runs[^1].Offset + runs[^1].Length == offset)
            runs[^1] = (runs[^1].Offset, runs[^1].Length + length, type);
        else
            runs.Add((offset, length, type));
    }

    private static async Task<List<(long Offset, long Length, int Type)>> MapAsync(string uri)
    {
        var result = await Clients.RunOkAsync("nbdinfo", "--map", "--json", uri);
        using var json = JsonDocument.Parse(result.StdOut);
        var runs = new List<(long Offset, long Length, int Type)>();
        foreach (var e in json.RootElement.EnumerateArray())
            AddRun(runs, e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt32());
        return runs;
    }

    // Writes of every shape over an origin: whole blocks, partial blocks (copy-on-write), unaligned
    // runs across a block boundary, FUA, write-zeroes over origin data, writes past the origin.
    private static readonly string[] s_writes =
    [
        "write -P 0xab 0 64k",
        "write -f -P 0xcd 1M 4k",
        $"write -P 0x11 {(2 << 20) + 3000} 5000",
        $"write -f -P 0x22 {(4 << 20) - 1000} 2000",
        "write -z 6M 128k",
        "write -P 0x33 30M 8k",
        "flush",
    ];

    private static readonly string[] s_reads =
    [
        "read -P 0xab 0 64k",
        "read -P 0xcd 1M 4k",
        $"read -P 0x11 {(2 << 20) + 3000} 5000",
        $"read -P 0x22 {(4 << 20) - 1000} 2000",
        "read -P 0 6M 128k",
        "read -P 0x33 30M 8k",
        "read -P 0 31M 64k",
    ];

    private static string[] Script(string target, string[] commands) =>
        ["-f", "raw", target, .. commands.SelectMany(c => new[] { "-c", c })];

    [Fact(Timeout = 120_000)] // a hang (say, a deadlock between server and pool) fails instead of stalling CI
    public async Task QemuIoWritesOverOriginMatchTheExpectedImageAndNbdcopyRoundTrips()
    {
        const long size = 32L << 20;
        await using var s = new ThinServer();
        string origin = s.CreateRandomImage("origin.raw", 24L << 20, seed: 2);
        string originSum = ThinServer.Sha256(origin);
        s.Pool.CreateVolume("vm", size, origin);
        s.Pool.CreateVolume("copy", size);
        s.Serve();

        // The expected image: the origin, zero-extended to the volume size, with the same writes.
        string expected = s.PathOf("expected.raw");
        File.Copy(origin, expected);
        using (var f = new FileStream(expected, FileMode.Open))
            f.SetLength(size);
        await Clients.RunOkAsync("qemu-io", Script(expected, s_writes));

        await Clients.RunOkAsync("qemu-io", Script(s.UnixUri("vm"), s_writes)).WaitAsync(TestContext.Current.CancellationToken);
        var reads = await Clients.RunOkAsync("qemu-io", Script(s.UnixUri("vm"), s_reads));
        Assert.DoesNotContain("verification failed", reads.StdOut + reads.StdErr, StringComparison.OrdinalIgnoreCase);
        var compare = await Clients.RunOkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, s.UnixUri("vm"));
        Assert.Contains("Images are identical", compare.StdOut);

        // Export -> file, then file -> a fresh volume with no origin, then export -> export.
        string copied = s.PathOf("copied.raw");
        await Clients.RunOkAsync("nbdcopy", "--connections=2", s.UnixUri("vm"), copied);
        Assert.Equal(ThinServer.Sha256(expected), ThinServer.Sha256(copied));
        await Clients.RunOkAsync("nbdcopy", "--flush", expected, s.TcpUri("copy"));
        compare = await Clients.RunOkAsync("qemu-img", "compare", "-f", "raw", "-F", "raw", expected, s.TcpUri("copy"));
        Assert.Contains("Images are identical", compare.StdOut);

        Assert.Equal(originSum, ThinServer.Sha256(origin));
        await s.CloseAndCheckAsync();
    }

    [Fact(Timeout = 120_000)] // a hang (say, a deadlock between server and pool) fails instead of stalling CI
    public async Task FioVerifiesRandomWritesOverAnOriginOnTwoConnections()
    {
        await using var s = new ThinServer();
        string origin = s.CreateRandomImage("origin.raw", 64L << 20, seed: 3);
        string originSum = ThinServer.Sha256(origin);
        var volume = s.Pool.CreateVolume("fio", 64L << 20, origin);
        s.Serve();

        // io_size below size: part of each region is written (copy-on-write of partial blocks
        // from the origin, next to untouched origin data) and fio reads back what it wrote.
        var result = await Clients.RunAsync("fio",
        [
            "--name=verify", "--ioengine=nbd", $"--uri={s.TcpUri("fio")}", "--rw=randwrite",
            "--bssplit=4k/50:16k/20:64k/20:256k/10", "--size=32m", "--io_size=12m", "--offset_increment=32m",
            "--numjobs=2", "--iodepth=16", "--verify=crc32c", "--do_verify=1", "--verify_fatal=1",
            "--randrepeat=0", "--output-format=json",
        ], TimeSpan.FromSeconds(120)).WaitAsync(TestContext.Current.CancellationToken);
        Assert.True(result.ExitCode == 0, result.ToString());
        using var json = JsonDocument.Parse(result.StdOut[result.StdOut.IndexOf('{')..]);
        var jobs = json.RootElement.GetProperty("jobs");
        Assert.Equal(2, jobs.GetArrayLength());
        foreach (var job in jobs.EnumerateArray())
        {
            Assert.Equal(0, job.GetProperty("error").GetInt32());
            long written = job.GetProperty("write").GetProperty("io_bytes").GetInt64();
            Assert.True(written >= 12L << 20, $"fio wrote {written} bytes");
            Assert.Equal(written, job.GetProperty("read").GetProperty("io_bytes").GetInt64());
        }
        Assert.InRange(volume.MappedBlocks, 1UL, 64UL * 16 - 1);
        Assert.Equal(originSum, ThinServer.Sha256(origin));
        await s.CloseAndCheckAsync();
    }
}
