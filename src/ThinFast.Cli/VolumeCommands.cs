using ThinFast.Engine;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Cli;

internal static class VolumeCommands
{
    private const string CreateHelp = """
        Usage: thinfast volume create DIR NAME [--size SIZE] [--origin PATH]

        Creates an empty thin volume, or one over a read-only external origin (a base image file or
        block device): unwritten blocks read from the origin, writes go to the pool. With --origin,
        --size defaults to the origin's size. Names: letters, digits, '-', '_', '.'.
        """;

    public static int Create(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(CreateHelp);
        var a = Args.Parse(argv, ["--size", "--origin"], []);
        string dir = a.Positional(0, "pool directory (DIR)");
        string name = a.Positional(1, "volume NAME");
        a.ExpectPositionals(2);
        string? origin = a.Value("--origin");
        if (origin is not null && !File.Exists(origin))
            throw new PoolException($"origin {origin} does not exist");
        // The origin's size rounded up to the sector: its last partial sector reads its tail and
        // then zeros.
        long size = a.Value("--size") is { } s ? Sizes.Parse(s, "--size")
            : origin is not null ? (OriginLength(origin) + 511) & ~511L
            : throw new UsageException("--size is required (or --origin to take the origin's size)");
        if (size % 512 != 0)
            throw new UsageException($"--size {size} must be a multiple of 512 bytes");
        using var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), new PoolOptions { Log = message => Console.Error.WriteLine($"thinfast: {message}") });
        var volume = pool.CreateVolume(name, size, origin);
        Console.Out.WriteLine($"created volume {name}: {Sizes.Format(size)}{(origin is null ? "" : $" over origin {volume.OriginPath}")}");
        return Program.Ok;
    }

    private const string SnapshotHelp = """
        Usage: thinfast volume snapshot DIR SOURCE NAME

        An instant snapshot: NAME shares every block of SOURCE (and its origin) until either is
        written.
        """;

    public static int Snapshot(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(SnapshotHelp);
        var a = Args.Parse(argv, [], []);
        string dir = a.Positional(0, "pool directory (DIR)");
        string source = a.Positional(1, "SOURCE volume");
        string name = a.Positional(2, "snapshot NAME");
        a.ExpectPositionals(3);
        using var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), new PoolOptions());
        pool.CreateSnapshot(source, name);
        Console.Out.WriteLine($"created snapshot {name} of {source}");
        return Program.Ok;
    }

    private const string DeleteHelp = """
        Usage: thinfast volume delete DIR NAME

        Deletes a volume and frees the blocks no other volume shares.
        """;

    public static int Delete(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(DeleteHelp);
        var a = Args.Parse(argv, [], []);
        string dir = a.Positional(0, "pool directory (DIR)");
        string name = a.Positional(1, "volume NAME");
        a.ExpectPositionals(2);
        using var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), new PoolOptions());
        pool.DeleteVolume(name);
        Console.Out.WriteLine($"deleted volume {name}");
        return Program.Ok;
    }

    private const string ListHelp = """
        Usage: thinfast volume list DIR [--json]

        Each volume's size, space mapped in the pool, how much of that is shared with other volumes
        (snapshots), and its origin. A volume whose origin vanished or changed size is marked.
        """;

    public static int List(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(ListHelp);
        var a = Args.Parse(argv, [], ["--json"]);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        using var offline = OfflinePool.Open(dir);
        var md = offline.Metadata;
        long bs = md.DataBlockSizeSectors * 512L;
        var rows = new List<VolumeJson>();
        var mappingsPerBlock = Sharing.MappingsPerDataBlock(md);
        var ranges = new MappedRange[512];
        foreach (var v in offline.Manifest.Volumes)
        {
            ulong shared = 0;
            Sharing.ForEachRange(md, v.DeviceId, ranges, r => shared += Sharing.SharedBlocks(mappingsPerBlock, r));
            rows.Add(new VolumeJson
            {
                Name = v.Name,
                DeviceId = v.DeviceId,
                Size = v.Size,
                MappedBytes = (long)md.GetDetails(v.DeviceId).MappedBlocks * bs,
                SharedBytes = (long)shared * bs,
                Origin = v.OriginPath,
                Unavailable = OriginProblem(v),
            });
        }
        if (a.Flag("--json"))
        {
            Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(rows, CliJsonContext.Default.ListVolumeJson));
            return Program.Ok;
        }
        Console.Out.WriteLine($"{"NAME",-20} {"DEV",5} {"SIZE",12} {"MAPPED",12} {"SHARED",12}  ORIGIN");
        foreach (var r in rows)
            Console.Out.WriteLine($"{r.Name,-20} {r.DeviceId,5} {Sizes.Format(r.Size),12} {Sizes.Format(r.MappedBytes),12} {Sizes.Format(r.SharedBytes),12}  {r.Origin ?? "-"}{(r.Unavailable is null ? "" : $" (UNAVAILABLE: {r.Unavailable})")}");
        return Program.Ok;
    }

    /// <summary>The length of what the path names: through symlinks, and for block devices the
    /// device's size (a file's own length would be the link's, or 0).</summary>
    private static long OriginLength(string path)
    {
        if (FileIdentity.Of(path) is { IsBlockDevice: true })
        {
            using var device = BlockDevices.Open(path, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
            return device.Length;
        }
        using var file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        return RandomAccess.GetLength(file);
    }

    private static string? OriginProblem(VolumeRecord v)
    {
        if (v.OriginPath is null || v.OriginPath.StartsWith("/dev/", StringComparison.Ordinal))
            return null;
        if (!File.Exists(v.OriginPath))
            return "origin does not exist";
        long length = OriginLength(v.OriginPath);
        return v.OriginSize is { } expected && expected != length ? $"origin changed size from {expected} to {length} bytes" : null;
    }
}
