using System.Text;
using ThinFast.Engine;
using ThinFast.IO;
using ThinFast.Metadata;

namespace ThinFast.Cli;

internal static class PoolCommands
{
    private const string CreateHelp = """
        Usage: thinfast pool create DIR [--block-size 64K] [--data-size 10G] [--metadata-size auto|SIZE]
                                        [--metadata PATH --data PATH] [--low-water BLOCKS]

        Creates a pool in DIR (made if missing): DIR/metadata, DIR/data (sparse files) and
        DIR/pool.json. With --metadata/--data the pool lives on those files or block devices and DIR
        holds links to them. The metadata size defaults to dm-thin's guidance: 48 bytes per data
        block, at least 2 MiB, plus a quarter for headroom.
        """;

    public static int Create(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(CreateHelp);
        var a = Args.Parse(argv, ["--block-size", "--data-size", "--metadata-size", "--metadata", "--data"], []);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        long blockSize = Sizes.Parse(a.Value("--block-size") ?? "64K", "--block-size");
        if (blockSize < 64 * 1024 || blockSize > 1 << 30 || blockSize % (64 * 1024) != 0)
            throw new UsageException($"--block-size {Sizes.Format(blockSize)} must be a multiple of 64 KiB between 64 KiB and 1 GiB");
        string? metadataPath = a.Value("--metadata"), dataPath = a.Value("--data");
        if ((metadataPath is null) != (dataPath is null))
            throw new UsageException("--metadata and --data go together");

        var inFolder = PoolFiles.InFolder(dir);
        var files = metadataPath is null ? inFolder : new PoolFiles(Path.GetFullPath(metadataPath), Path.GetFullPath(dataPath!), inFolder.ManifestPath);
        if (File.Exists(files.ManifestPath))
            throw new PoolException($"a pool already exists in {dir}");
        long dataSize = a.Value("--data-size") is { } ds ? Sizes.Parse(ds, "--data-size") : ExistingSize(files.DataPath) ?? 10L << 30;
        if (dataSize < blockSize)
            throw new UsageException($"--data-size {Sizes.Format(dataSize)} is smaller than one {Sizes.Format(blockSize)} block");
        string metadataArg = a.Value("--metadata-size") ?? "auto";
        long metadataSize = metadataArg == "auto" ? AutoMetadataSize(dataSize / blockSize) : Sizes.Parse(metadataArg, "--metadata-size");
        if (metadataSize < 64 * 1024 || metadataSize % MetadataFormat.BlockSize != 0)
            throw new UsageException($"--metadata-size {Sizes.Format(metadataSize)} must be a multiple of 4 KiB and at least 64 KiB");
        if (metadataSize / MetadataFormat.BlockSize > (long)MetadataFormat.MaxMetadataBlocks)
            throw new UsageException($"--metadata-size {Sizes.Format(metadataSize)} is above dm-thin's limit of {Sizes.Format((long)MetadataFormat.MaxMetadataBlocks * MetadataFormat.BlockSize)}");
        foreach (string device in new[] { files.MetadataPath, files.DataPath })
            if (device.StartsWith("/dev/", StringComparison.Ordinal) && !File.Exists(device))
                throw new PoolException($"block device {device} does not exist");

        // Whatever this command makes is removed again when it fails, so bad input changes nothing.
        bool madeDir = !Directory.Exists(dir);
        var made = new List<string>();
        foreach (string p in new[] { files.MetadataPath, files.DataPath, files.ManifestPath, files.LockPath })
            if (!File.Exists(p) && !Directory.Exists(p))
                made.Add(p);
        try
        {
            Directory.CreateDirectory(dir);
            // A folder we make holds every guest's disk: the owner's only.
            if (madeDir && !OperatingSystem.IsWindows())
                File.SetUnixFileMode(dir, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            using (var pool = ThinPool.CreateFiles(files, metadataSize, dataSize, new PoolOptions { BlockSize = (int)blockSize }))
            {
                if (metadataPath is not null)
                {
                    LinkInto(inFolder.MetadataPath, files.MetadataPath, made);
                    LinkInto(inFolder.DataPath, files.DataPath, made);
                }
            }
        }
        catch
        {
            foreach (string p in made)
                File.Delete(p);
            if (madeDir && Directory.Exists(dir) && !Directory.EnumerateFileSystemEntries(dir).Any())
                Directory.Delete(dir);
            throw;
        }
        Console.Out.WriteLine($"created pool {dir}: {Sizes.Format(dataSize)} data in {dataSize / blockSize} blocks of {Sizes.Format(blockSize)}, {Sizes.Format(metadataSize)} metadata");
        return Program.Ok;
    }

    /// <summary>dm-thin's rule of thumb (thin_metadata_size): 48 bytes per data block; at least
    /// 2 MiB; 25% more for snapshots' copied nodes; whole MiB.</summary>
    internal static long AutoMetadataSize(long dataBlocks)
    {
        long bytes = Math.Max(2L << 20, 48 * dataBlocks);
        bytes += bytes / 4;
        bytes = (bytes + (1 << 20) - 1) / (1 << 20) * (1 << 20);
        return Math.Min(bytes, (long)MetadataFormat.MaxMetadataBlocks * MetadataFormat.BlockSize);
    }

    private static long? ExistingSize(string path)
    {
        if (!File.Exists(path))
            return null;
        using var d = BlockDevices.Open(path, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
        return d.Length;
    }

    private static void LinkInto(string link, string target, List<string> made)
    {
        if (Path.GetFullPath(link) == target)
            return;
        File.CreateSymbolicLink(link, target);
        made.Add(link);
    }

    // ---- info / status / grow

    private const string InfoHelp = """
        Usage: thinfast pool info DIR [--json]

        The pool's files, block size, data and metadata sizes, transaction id and volumes. Reads the
        metadata without changing it; refused while another process (thinfast serve) has the pool.
        """;

    public static int Info(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(InfoHelp);
        var a = Args.Parse(argv, [], ["--json"]);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        using var offline = OfflinePool.Open(dir);
        var md = offline.Metadata;
        var info = new PoolInfoJson
        {
            Directory = Path.GetFullPath(dir),
            MetadataPath = ResolveLink(offline.Files.MetadataPath),
            DataPath = ResolveLink(offline.Files.DataPath),
            BlockSize = md.DataBlockSizeSectors * 512L,
            DataBlocks = md.DataBlockCount,
            FreeDataBlocks = md.FreeDataBlocks,
            MetadataBlocks = md.MetadataBlockCount,
            FreeMetadataBlocks = md.FreeMetadataBlocks,
            TransactionId = md.TransactionId,
            MetadataVersion = md.Version,
            NeedsCheck = md.NeedsCheck,
            Volumes = offline.Manifest.Volumes.Select(v => v.Name).ToList(),
        };
        if (a.Flag("--json"))
        {
            Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(info, CliJsonContext.Default.PoolInfoJson));
            return Program.Ok;
        }
        var o = Console.Out;
        o.WriteLine($"pool            {info.Directory}");
        o.WriteLine($"metadata        {info.MetadataPath}");
        o.WriteLine($"data            {info.DataPath}");
        o.WriteLine($"block size      {Sizes.Format(info.BlockSize)} ({md.DataBlockSizeSectors} sectors)");
        o.WriteLine($"data            {Sizes.Format((long)info.DataBlocks * info.BlockSize)} in {info.DataBlocks} blocks, {info.DataBlocks - info.FreeDataBlocks} used");
        o.WriteLine($"metadata        {Sizes.Format((long)info.MetadataBlocks * MetadataFormat.BlockSize)} in {info.MetadataBlocks} blocks, {info.MetadataBlocks - info.FreeMetadataBlocks} used");
        o.WriteLine($"transaction     {info.TransactionId}");
        o.WriteLine($"format version  {info.MetadataVersion}{(info.NeedsCheck ? " (needs_check set)" : "")}");
        o.WriteLine($"volumes         {(info.Volumes.Count == 0 ? "(none)" : string.Join(", ", info.Volumes))}");
        return Program.Ok;
    }

    private static string ResolveLink(string path) =>
        new FileInfo(path).LinkTarget is { } target ? Path.GetFullPath(target, Path.GetDirectoryName(Path.GetFullPath(path))!) : Path.GetFullPath(path);

    private const string StatusHelp = """
        Usage: thinfast pool status DIR [--json] [--low-water BLOCKS]

        The status line dmsetup status prints for a thin-pool target:
          <transaction id> <used>/<total metadata blocks> <used>/<total data blocks> <held root>
          <rw|ro|out_of_data_space|Fail> <discard_passdown> <queue_if_no_space|error_if_no_space>
          <needs_check|-> <low-water blocks>
        followed by the same figures for people. Refused while thinfast serve has the pool.
        """;

    public static int Status(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(StatusHelp);
        var a = Args.Parse(argv, ["--low-water"], ["--json"]);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        long lowWater = a.Value("--low-water") is { } lw ? ParseCount(lw, "--low-water") : 0;
        PoolStatus s;
        using (var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), new PoolOptions { LowWaterBlocks = lowWater }))
            s = pool.GetStatus();
        var json = new PoolStatusJson
        {
            TransactionId = s.TransactionId,
            UsedMetadataBlocks = s.UsedMetadataBlocks,
            TotalMetadataBlocks = s.TotalMetadataBlocks,
            UsedDataBlocks = s.UsedDataBlocks,
            TotalDataBlocks = s.TotalDataBlocks,
            FreeDataBytes = (long)(s.TotalDataBlocks - s.UsedDataBlocks) * s.BlockSize,
            BlockSize = s.BlockSize,
            Mode = ModeName(s.Mode),
            ErrorIfNoSpace = s.ErrorIfNoSpace,
            NeedsCheck = s.NeedsCheck,
            LowWaterBlocks = s.LowWaterBlocks,
            StatusLine = s.ToString(),
        };
        if (a.Flag("--json"))
        {
            Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(json, CliJsonContext.Default.PoolStatusJson));
            return Program.Ok;
        }
        Console.Out.WriteLine(json.StatusLine);
        Console.Out.WriteLine($"data      {Percent(s.UsedDataBlocks, s.TotalDataBlocks)} used: {s.UsedDataBlocks}/{s.TotalDataBlocks} blocks, {Sizes.Format(json.FreeDataBytes)} free");
        Console.Out.WriteLine($"metadata  {Percent(s.UsedMetadataBlocks, s.TotalMetadataBlocks)} used: {s.UsedMetadataBlocks}/{s.TotalMetadataBlocks} blocks");
        Console.Out.WriteLine($"mode      {json.Mode}{(s.NeedsCheck ? ", needs_check" : "")}, low-water {s.LowWaterBlocks} blocks");
        return Program.Ok;
    }

    private static string Percent(ulong used, ulong total) => total == 0 ? "0%" : $"{100.0 * used / total:0.0}%";

    internal static string ModeName(PoolMode mode) => mode switch
    {
        PoolMode.Write => "rw",
        PoolMode.OutOfDataSpace => "out_of_data_space",
        PoolMode.ReadOnly => "ro",
        _ => "Fail",
    };

    internal static long ParseCount(string text, string what) =>
        long.TryParse(text, out long v) && v >= 0 ? v : throw new UsageException($"{what} '{text}' is not a non-negative whole number");

    private const string GrowHelp = """
        Usage: thinfast pool grow DIR --data-size SIZE

        Grows the data device (a file is extended; a block device must already be that large) and
        the data space map. Shrinking is refused.
        """;

    public static int Grow(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(GrowHelp);
        var a = Args.Parse(argv, ["--data-size"], []);
        string dir = a.Positional(0, "pool directory (DIR)");
        a.ExpectPositionals(1);
        long size = Sizes.Parse(a.Value("--data-size") ?? throw new UsageException("--data-size is required"), "--data-size");
        using var pool = ThinPool.OpenFiles(PoolFiles.InFolder(dir), new PoolOptions());
        var before = pool.GetStatus();
        pool.GrowData(size);
        var after = pool.GetStatus();
        Console.Out.WriteLine(after.TotalDataBlocks == before.TotalDataBlocks
            ? $"data space unchanged: {after.TotalDataBlocks} blocks"
            : $"data space grown from {before.TotalDataBlocks} to {after.TotalDataBlocks} blocks ({Sizes.Format((long)after.TotalDataBlocks * after.BlockSize)})");
        return Program.Ok;
    }

    // ---- check / dump / restore

    private const string CheckHelp = """
        Usage: thinfast pool check DIR|METADATA [--clear-needs-check] [--json]

        Checks dm-thin metadata like thin_check (superblock, every B-tree node, space maps) and
        recounts every reference: each metadata and data block's count from the trees is compared
        with the space maps, and each device's mapped_blocks with its tree. Given DIR, also checks
        that the data device holds every block the data space map counts. Prints what is wrong.
        Leaked data blocks (counted by the space map, mapped by nothing: a crash of the kernel's
        dm-thin leaves them) are reported apart: they waste space, expose nothing, and the next
        open of the pool reclaims them.
        --clear-needs-check  when the metadata is clean (leaks allowed), clear the needs_check flag
                             a failure set, so the pool opens writable again (thin_check's
                             --clear-needs-check-flag). The pool must not be in use.
        Exit status 0 when clean, 1 when damaged.
        """;

    public static int Check(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(CheckHelp);
        var a = Args.Parse(argv, [], ["--json", "--clear-needs-check"]);
        string target = a.Positional(0, "pool directory or metadata path");
        a.ExpectPositionals(1);
        using var location = MetadataLocation.Resolve(target);
        var report = MetadataCheck.Run(location.MetadataPath, Program.Progress, location.DataPath);
        if (report.Clean && a.Flag("--clear-needs-check"))
            report = report with { NeedsCheckCleared = ClearNeedsCheck(location.MetadataPath) };
        if (a.Flag("--json"))
        {
            Console.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(report, CliJsonContext.Default.CheckReport));
        }
        else if (report.Clean)
        {
            Console.Out.WriteLine($"{location.MetadataPath}: clean: {report.Devices} devices, {report.Mappings} mappings, {report.MetadataBlocksReferenced} metadata blocks and {report.DataBlocksReferenced} data blocks referenced, " +
                (report.LeakedDataBlocks == 0 ? "all counts agree with the space maps" : "every other count agrees with the space maps"));
            if (report.LeakedDataBlocks != 0)
                Console.Out.WriteLine($"{location.MetadataPath}: {report.LeakedDataBlocks} data blocks leaked (allocated, referenced by no mapping): harmless, reclaimed when the pool next opens");
            if (report.NeedsCheckCleared)
                Console.Out.WriteLine($"{location.MetadataPath}: needs_check cleared");
        }
        else
        {
            foreach (string e in report.Errors)
                Console.Out.WriteLine($"{location.MetadataPath}: {e}");
            Console.Error.WriteLine($"thinfast: {location.MetadataPath}: metadata is damaged ({report.Errors.Count} problems)" +
                (a.Flag("--clear-needs-check") ? "; needs_check left set" : ""));
        }
        return report.Clean ? Program.Ok : Program.Error;
    }

    // Writes a new transaction with the flag cleared; false when it was not set (nothing written).
    private static bool ClearNeedsCheck(string metadataPath)
    {
        using var device = BlockDevices.Open(metadataPath, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable });
        using var md = ThinMetadata.Open(device);
        if (!md.NeedsCheck)
            return false;
        md.SetNeedsCheck(false);
        md.Commit();
        return true;
    }

    private const string DumpHelp = """
        Usage: thinfast pool dump DIR|METADATA [--format xml|human] [-o FILE]

        xml (default): thin_dump's XML, byte for byte; thin_restore and pool restore read it back.
        human: the superblock and a table of each device's mapped ranges.
        """;

    public static int Dump(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(DumpHelp);
        var a = Args.Parse(argv, ["--format", "-o", "--output"], []);
        string target = a.Positional(0, "pool directory or metadata path");
        a.ExpectPositionals(1);
        string format = a.Value("--format") ?? "xml";
        if (format is not ("xml" or "human"))
            throw new UsageException($"--format '{format}' must be xml or human");
        string? output = a.Value("-o") ?? a.Value("--output");
        using var location = MetadataLocation.Resolve(target);
        using var device = BlockDevices.Open(location.MetadataPath, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable });
        using var md = ThinMetadata.Open(device);
        Program.Progress?.Invoke("dumping");
        // Written to memory first: a dump that fails half-way must not leave a truncated file.
        var text = new StringWriter { NewLine = "\n" };
        if (format == "xml")
            md.WriteXml(text);
        else
            WriteHuman(md, text);
        if (output is null)
        {
            Console.Out.Write(text.ToString());
            Console.Out.Flush();
        }
        else
        {
            File.WriteAllText(output, text.ToString(), new UTF8Encoding(false));
        }
        return Program.Ok;
    }

    private static void WriteHuman(ThinMetadata md, TextWriter w)
    {
        long bs = md.DataBlockSizeSectors * 512L;
        w.WriteLine($"transaction {md.TransactionId}, time {md.Time}, version {md.Version}, block size {Sizes.Format(bs)}, " +
            $"data {md.DataBlockCount - md.FreeDataBlocks}/{md.DataBlockCount} blocks used, metadata {md.MetadataBlockCount - md.FreeMetadataBlocks}/{md.MetadataBlockCount} blocks used{(md.NeedsCheck ? ", needs_check" : "")}");
        var ranges = new MappedRange[512];
        var mappingsPerBlock = Sharing.MappingsPerDataBlock(md);
        foreach (ulong id in md.DeviceIds)
        {
            var d = md.GetDetails(id);
            w.WriteLine();
            w.WriteLine($"device {id}: {d.MappedBlocks} mapped blocks ({Sizes.Format((long)d.MappedBlocks * bs)}), transaction {d.TransactionId}, created at time {d.CreationTime}, snapshotted at time {d.SnapshottedTime}");
            w.WriteLine($"  {"virtual block",15} {"data block",15} {"length",10} {"time",8} {"shared",8}");
            Sharing.ForEachRange(md, id, ranges, r =>
                w.WriteLine($"  {r.VirtualBlock,15} {r.DataBlock,15} {r.Length,10} {r.Time,8} {Sharing.SharedBlocks(mappingsPerBlock, r),8}"));
        }
    }

    private const string RestoreHelp = """
        Usage: thinfast pool restore DIR|METADATA -i FILE.xml

        Replaces the metadata with the pool described by thin_dump XML (like thin_restore). The new
        metadata is built beside the old and renamed over it only when complete, so a bad file
        changes nothing. For a pool directory every volume in pool.json must exist in the XML.
        """;

    public static int Restore(ReadOnlySpan<string> argv)
    {
        if (Program.WantsHelp(argv))
            return Program.Help(RestoreHelp);
        var a = Args.Parse(argv, ["-i", "--input"], []);
        string target = a.Positional(0, "pool directory or metadata path");
        a.ExpectPositionals(1);
        string input = a.Value("-i") ?? a.Value("--input") ?? throw new UsageException("-i FILE.xml is required");
        if (!File.Exists(input))
            throw new PoolException($"input {input} does not exist");
        using var location = MetadataLocation.Resolve(target);
        string metadataPath = location.MetadataPath;
        if (!File.Exists(metadataPath))
            throw new PoolException($"metadata {metadataPath} does not exist");
        string realPath = Path.GetFullPath(new FileInfo(metadataPath).LinkTarget is { } t ? Path.GetFullPath(t, Path.GetDirectoryName(Path.GetFullPath(metadataPath))!) : metadataPath);
        bool isDevice = realPath.StartsWith("/dev/", StringComparison.Ordinal);
        long length;
        using (var existing = BlockDevices.Open(realPath, new BlockDeviceOptions { ReadOnly = true, Backend = BlockDeviceBackend.Portable }))
            length = existing.Length;
        Program.Progress?.Invoke("restoring");
        string destination = isDevice ? realPath : realPath + ".restore-tmp";
        if (isDevice)
        {
            // A block device cannot be renamed over: parse and build in memory-backed scratch first,
            // so XML errors are found before the device is touched.
            string scratch = Path.Combine(Path.GetTempPath(), $"thinfast-restore-{Environment.ProcessId}");
            try
            {
                RestoreInto(input, scratch, length, location.Manifest);
            }
            finally
            {
                File.Delete(scratch);
            }
            RestoreInto(input, realPath, length, null);
        }
        else
        {
            try
            {
                RestoreInto(input, destination, length, location.Manifest);
                File.Move(destination, realPath, overwrite: true);
            }
            finally
            {
                File.Delete(destination);
            }
        }
        Console.Out.WriteLine($"restored {metadataPath} from {input}");
        return Program.Ok;
    }

    private static void RestoreInto(string input, string path, long length, PoolManifest? manifest)
    {
        using var device = path.StartsWith("/dev/", StringComparison.Ordinal)
            ? BlockDevices.Open(path, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable })
            : BlockDevices.Create(path, length, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable });
        using var reader = new StreamReader(input);
        using var md = ThinMetadata.RestoreXml(reader, device);
        if (manifest is null)
            return;
        foreach (var v in manifest.Volumes)
            if (!md.DeviceExists(v.DeviceId))
                throw new PoolException($"{input} has no device {v.DeviceId}, which pool.json names as volume '{v.Name}'");
    }
}
