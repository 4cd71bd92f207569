using System.Text.Json;

namespace ThinFast.Nbd.Tests;

/// <summary>The server as nbdinfo, qemu-io and qemu-img see it.</summary>
public class ClientTests
{
    [Fact]
    public async Task NbdinfoJsonReportsSizeFlagsAndBlockSizes()
    {
        await using var h = ServerHarness.Start();
        // io_uring works on this machine, so the default transport is the reactor's.
        Assert.StartsWith("io_uring", h.Server.TransportDescription);
        var result = await Tool.RunOkAsync("nbdinfo", "--json", h.UnixUri());
        using var json = JsonDocument.Parse(result.StdOut);
        var export = json.RootElement.GetProperty("exports")[0];
        Assert.Equal("disk", export.GetProperty("export-name").GetString());
        Assert.Equal("in-memory test volume", export.GetProperty("description").GetString());
        Assert.Equal(ServerHarness.DefaultSize, export.GetProperty("export-size").GetInt64());
        foreach (var flag in new[] { "can_flush", "can_fua", "can_trim", "can_zero", "can_fast_zero", "can_multi_conn", "can_cache", "can_df" })
            Assert.True(export.GetProperty(flag).GetBoolean(), $"{flag} is false: {result.StdOut}");
        Assert.False(export.GetProperty("is_read_only").GetBoolean());
        Assert.Equal(1, export.GetProperty("block_size_minimum").GetInt32());
        Assert.Equal(h.Volume.AllocationUnit, export.GetProperty("block_size_preferred").GetInt32());
        Assert.Equal(32 * 1024 * 1024, export.GetProperty("block_size_maximum").GetInt32());
        Assert.Contains(export.GetProperty("contexts").EnumerateArray(), c => c.GetString() == "base:allocation");

        // The empty name is the default export, and TCP serves the same volume.
        var viaTcp = await Tool.RunOkAsync("nbdinfo", "--size", $"nbd://127.0.0.1:{h.Tcp.Port}");
        Assert.Equal(ServerHarness.DefaultSize.ToString(), viaTcp.StdOut.Trim());
    }

    [Fact]
    public async Task NbdinfoListShowsEveryExportAndReadOnlyExportsSaySo()
    {
        var origin = new MemoryVolume(8 * 1024 * 1024, name: "origin");
        await using var h = ServerHarness.Start(extraExports: new NbdExport(origin, readOnly: true));
        var list = await Tool.RunOkAsync("nbdinfo", "--list", "--json", h.UnixUri(""));
        using var json = JsonDocument.Parse(list.StdOut);
        var names = json.RootElement.GetProperty("exports").EnumerateArray().Select(e => e.GetProperty("export-name").GetString()).ToList();
        Assert.Equal(["disk", "origin"], names.Order());

        var info = await Tool.RunOkAsync("nbdinfo", "--json", h.UnixUri("origin"));
        using var originJson = JsonDocument.Parse(info.StdOut);
        var export = originJson.RootElement.GetProperty("exports")[0];
        Assert.True(export.GetProperty("is_read_only").GetBoolean());
        Assert.False(export.GetProperty("can_trim").GetBoolean());
        Assert.Equal(8 * 1024 * 1024, export.GetProperty("export-size").GetInt64());

        var unknown = await Tool.RunAsync("nbdinfo", [h.UnixUri("nosuch")]);
        Assert.NotEqual(0, unknown.ExitCode);
        Assert.Contains("nosuch", unknown.StdErr);
    }

    [Fact]
    public async Task NbdinfoMapMatchesTheVolumeAllocation()
    {
        await using var h = ServerHarness.Start();
        int unit = h.Volume.AllocationUnit;
        await h.Volume.WriteAsync(1 * unit, Tool.Pattern(unit, 1));
        await h.Volume.WriteAsync(5 * unit + 100, Tool.Pattern(2 * unit, 2)); // touches units 5, 6, 7
        await h.Volume.WriteAsync(ServerHarness.DefaultSize - unit, Tool.Pattern(unit, 3));

        var result = await Tool.RunOkAsync("nbdinfo", "--map", "--json", h.UnixUri());
        using var json = JsonDocument.Parse(result.StdOut);
        var actual = json.RootElement.EnumerateArray()
            .Select(e => (e.GetProperty("offset").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("type").GetInt32()))
            .ToList();
        long size = ServerHarness.DefaultSize;
        (long, long, int)[] expected =
        [
            (0, unit, 3), (unit, unit, 0), (2L * unit, 3L * unit, 3), (5L * unit, 3L * unit, 0),
            (8L * unit, size - 9L * unit, 3), (size - unit, unit, 0),
        ];
        Assert.Equal(expected, actual);
    }

    [Fact]
    public async Task QemuImgMapWalksExtentsWithReqOne()
    {
        await using var h = ServerHarness.Start(size: 8L * 1024 * 1024);
        int unit = h.Volume.AllocationUnit;
        await h.Volume.WriteAsync(2 * unit, Tool.Pattern(3 * unit, 5));
        await h.Volume.WriteAsync(100 * unit, Tool.Pattern(unit, 6));

        // qemu's client asks BLOCK_STATUS with REQ_ONE, one extent per request.
        var result = await Tool.RunOkAsync("qemu-img", "map", "--output=json", "-f", "raw", h.UnixUri());
        using var json = JsonDocument.Parse(result.StdOut);
        var actual = json.RootElement.EnumerateArray()
            .Select(e => (e.GetProperty("start").GetInt64(), e.GetProperty("length").GetInt64(), e.GetProperty("data").GetBoolean(), e.GetProperty("zero").GetBoolean()))
            .ToList();
        long size = 8L * 1024 * 1024;
        (long, long, bool, bool)[] expected =
        [
            (0, 2L * unit, false, true), (2L * unit, 3L * unit, true, false), (5L * unit, 95L * unit, false, true),
            (100L * unit, unit, true, false), (101L * unit, size - 101L * unit, false, true),
        ];
        Assert.Equal(expected, actual);
    }

    [Fact]
    public async Task QemuIoPatternsFuaZeroesDiscardAndFlush()
    {
        await using var h = ServerHarness.Start();
        var result = await Tool.RunOkAsync("qemu-io", "-f", "raw", "-t", "none", h.UnixUri(),
            "-c", "write -P 0xab 0 1M",
            "-c", "write -f -P 0xcd 1M 64k",
            "-c", "write -P 0x11 3000 5000",
            "-c", "write -z 2M 256k",
            "-c", "write -P 0xee 4M 1M",
            "-c", "discard 4M 1M",
            "-c", "flush",
            "-c", "read -P 0xab 0 3000",
            "-c", "read -P 0x11 3000 5000",
            "-c", "read -P 0xab 8000 1040576",
            "-c", "read -P 0xcd 1M 64k",
            "-c", "read -P 0 2M 256k",
            "-c", "read -P 0 4M 1M");
        Assert.DoesNotContain("failed", result.StdOut + result.StdErr);
        Assert.DoesNotContain("error", (result.StdOut + result.StdErr).ToLowerInvariant());

        var image = h.Volume.ToArray();
        Tool.AssertFilled(image, 0, 3000, 0xab);
        Tool.AssertFilled(image, 3000, 5000, 0x11);
        Tool.AssertFilled(image, 1 << 20, 64 << 10, 0xcd);
        // FUA made the 0xcd write durable before its reply, and the flush made the rest durable.
        var durable = h.Volume.DurableImage();
        Assert.Equal(0xcd, durable[(1 << 20) + 100]);
        Assert.Equal(0xab, durable[0]);
        Assert.True(h.Volume.FlushCount >= 1);
        // write -z sends NO_HOLE: the zeroed range stays allocated; discard released whole units.
        Assert.True(h.Volume.IsAllocated(2 << 20, 256 << 10));
        Assert.False(h.Volume.IsAllocated(4 << 20, 1 << 20));
    }

    [Fact]
    public async Task QemuImgCompareMatchesAnExpectedImageAfterKnownWrites()
    {
        await using var h = ServerHarness.Start(size: 16L * 1024 * 1024);
        var expected = new byte[16 * 1024 * 1024];
        var source = h.TempFile("source.raw");
        var pieces = new (long Offset, int Length, int Seed)[] { (0, 65536, 1), (1_000_000, 123_457, 2), (9 << 20, 2 << 20, 3) };
        foreach (var (offset, length, seed) in pieces)
            Tool.Pattern(length, seed).CopyTo(expected, offset);
        await File.WriteAllBytesAsync(source, expected, TestContext.Current.CancellationToken);

        // qemu-img convert writes the data through qemu's NBD client (zeroes for the holes).
        await Tool.RunOkAsync("qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", source, h.UnixUri());
        var compare = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, h.UnixUri()]);
        Assert.True(compare.ExitCode == 0, compare.ToString());
        Assert.Contains("Images are identical", compare.StdOut);
        Tool.AssertSame(expected, h.Volume.ToArray());

        // And a difference is reported, at the right place.
        await h.Volume.WriteAsync(5 << 20, new byte[] { 1 });
        var differ = await Tool.RunAsync("qemu-img", ["compare", "-f", "raw", "-F", "raw", source, h.UnixUri()]);
        Assert.Equal(1, differ.ExitCode);
        Assert.Contains($"offset {5 << 20}", differ.StdOut);
    }
}
