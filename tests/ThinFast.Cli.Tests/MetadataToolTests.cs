using System.Buffers.Binary;
using System.Text.Json;
using ThinFast.Metadata;

namespace ThinFast.Cli.Tests;

/// <summary>pool dump / restore / check against thin_dump, thin_check and analyze.py.</summary>
public sealed class MetadataToolTests
{
    private static readonly string Fixtures = Path.Combine(Cli.RepoRoot, "tests", "fixtures", "metadata");
    private const int Bs = MetadataFormat.BlockSize;

    private static string CopyFixture(TempDir t, string name)
    {
        string path = t[name];
        File.Copy(Path.Combine(Fixtures, name), path);
        return path;
    }

    [Theory]
    [InlineData("x1.bin")]
    [InlineData("x2.bin")]
    [InlineData("x3.bin")]
    public void DumpIsThinDumpAndRestoreRoundTrips(string fixture)
    {
        using var t = new TempDir();
        string md = CopyFixture(t, fixture);
        var dump = Cli.Run("pool", "dump", md);
        Assert.True(dump.ExitCode == 0, dump.ToString());
        var oracle = Cli.Tool(Cli.Require("thin_dump", "thin-provisioning-tools"), [md]);
        Assert.Equal(oracle.Stdout, dump.Stdout);

        File.WriteAllText(t["dump.xml"], dump.Stdout);
        Assert.Equal(0, Cli.Run("pool", "restore", md, "-i", t["dump.xml"]).ExitCode);
        Assert.Equal(dump.Stdout, Cli.Run("pool", "dump", md).Stdout);
        var tc = Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [md]);
        Assert.True(tc.ExitCode == 0, tc.ToString());
        Assert.Equal(0, Cli.Run("pool", "check", md).ExitCode);

        var human = Cli.Run("pool", "dump", md, "--format", "human");
        Assert.True(human.ExitCode == 0, human.ToString());
        Assert.Contains("virtual block", human.Stdout);
    }

    [Fact]
    public void PoolDirectoryDumpRestoreDumpIsIdentical()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", t["p"], "a", "--size", "8M").ExitCode);
        Assert.Equal(0, Cli.Run("volume", "snapshot", t["p"], "a", "b").ExitCode);
        var first = Cli.Run("pool", "dump", t["p"], "-o", t["one.xml"]);
        Assert.True(first.ExitCode == 0, first.ToString());
        var restore = Cli.Run("pool", "restore", t["p"], "-i", t["one.xml"]);
        Assert.True(restore.ExitCode == 0, restore.ToString());
        Assert.Equal(0, Cli.Run("pool", "dump", t["p"], "-o", t["two.xml"]).ExitCode);
        Assert.Equal(File.ReadAllText(t["one.xml"]), File.ReadAllText(t["two.xml"]));
        Assert.Equal(0, Cli.Run("volume", "list", t["p"]).ExitCode);
    }

    [Fact]
    public void BadRestoreChangesNothing()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", t["p"], "a", "--size", "8M").ExitCode);
        var before = t.Snapshot(t["p"]);
        File.WriteAllText(t["broken.xml"], "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"1024\">\n  <device dev_id=\"1\"");
        Cli.AssertOneLineError(Cli.Run("pool", "restore", t["p"], "-i", t["broken.xml"]), 1, "");
        File.WriteAllText(t["beyond.xml"], "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"1024\">\n" +
            "  <device dev_id=\"1\" mapped_blocks=\"1\" transaction=\"0\" creation_time=\"0\" snap_time=\"0\">\n    <single_mapping origin_block=\"0\" data_block=\"5000\" time=\"0\"/>\n  </device>\n</superblock>\n");
        Cli.AssertOneLineError(Cli.Run("pool", "restore", t["p"], "-i", t["beyond.xml"]), 1, "beyond end of data device");
        File.WriteAllText(t["nodev.xml"], "<superblock uuid=\"\" time=\"0\" transaction=\"1\" data_block_size=\"128\" nr_data_blocks=\"1024\">\n</superblock>\n");
        Cli.AssertOneLineError(Cli.Run("pool", "restore", t["p"], "-i", t["nodev.xml"]), 1, "volume 'a'");
        Cli.AssertOneLineError(Cli.Run("pool", "restore", t["p"], "-i", t["absent.xml"]), 1, "does not exist");
        Cli.AssertOneLineError(Cli.Run("pool", "restore", t["p"]), 2, "-i FILE.xml is required");
        Cli.AssertOneLineError(Cli.Run("pool", "dump", t["p"], "--format", "yaml"), 2, "must be xml or human");
        TempDir.AssertUnchanged(before, t.Snapshot(t["p"]));
    }

    // ---- check against the oracles

    public enum Damage { None, FlippedNodeByte, WrongBlockNumber, DamagedSuperblock, LeakedDataBlock, UnderCountedDataBlock, LeakedMetadataBlock }

    // thin_check 0.9 does not compare the data space map with the mappings: an under-counted data
    // block (a shared block that one delete would free under the other volume) passes it.
    // analyze.py's recount reports it, and so do we. A leaked one is in the next test.
    [Theory]
    [InlineData(Damage.None, false)]
    [InlineData(Damage.FlippedNodeByte, true)]
    [InlineData(Damage.WrongBlockNumber, true)]
    [InlineData(Damage.DamagedSuperblock, true)]
    [InlineData(Damage.UnderCountedDataBlock, false)]
    [InlineData(Damage.LeakedMetadataBlock, true)]
    public void CheckAgreesWithThinCheckAndAnalyze(Damage damage, bool thinCheckSeesIt)
    {
        using var t = new TempDir();
        string md = CopyFixture(t, "x2.bin");
        string expectedText = Apply(md, damage);

        var ours = Cli.Run("pool", "check", md, "--json");
        var thinCheck = Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [md]);
        var analyze = Cli.Tool(Cli.Require("python3", "python3"), [Cli.AnalyzePy, md]);
        bool analyzeDamaged = analyze.ExitCode != 0 || !analyze.Stdout.Contains("metadata refcount mismatches (block, expected, ondisk): [] total 0")
            || !analyze.Stdout.Contains("data refcount mismatches: [] total 0");

        bool damaged = damage != Damage.None;
        Assert.True(thinCheck.ExitCode != 0 == thinCheckSeesIt, $"thin_check disagrees with the premise for {damage}:\n{thinCheck}");
        Assert.True(analyzeDamaged == damaged, $"analyze.py disagrees with the premise for {damage}:\n{analyze}");
        Assert.True(ours.ExitCode == (damaged ? 1 : 0), ours.ToString());
        using var report = JsonDocument.Parse(ours.Stdout);
        Assert.Equal(!damaged, report.RootElement.GetProperty("clean").GetBoolean());
        string errors = string.Join("\n", report.RootElement.GetProperty("errors").EnumerateArray().Select(e => e.GetString()));
        Assert.Contains(expectedText, errors);

        var text = Cli.Run("pool", "check", md);
        Assert.Equal(ours.ExitCode, text.ExitCode);
        if (damaged)
            Assert.Contains("metadata is damaged", text.Stderr);
        else
            Assert.Contains("clean: 5 devices, 7500 mappings", text.Stdout);
    }

    [Fact]
    public void ALeakedDataBlockIsReportedApartFromDamage()
    {
        using var t = new TempDir();
        string md = CopyFixture(t, "x2.bin");
        Apply(md, Damage.LeakedDataBlock);
        var analyze = Cli.Tool(Cli.Require("python3", "python3"), [Cli.AnalyzePy, md]);
        Assert.True(analyze.ExitCode != 0 && analyze.Stdout.Contains("leaked data blocks"), $"analyze.py does not see the leak:\n{analyze}");

        var json = Cli.Run("pool", "check", md, "--json");
        Assert.True(json.ExitCode == 0, json.ToString());
        using var report = JsonDocument.Parse(json.Stdout);
        Assert.True(report.RootElement.GetProperty("clean").GetBoolean());
        Assert.Equal(1UL, report.RootElement.GetProperty("leaked_data_blocks").GetUInt64());
        Assert.Empty(report.RootElement.GetProperty("errors").EnumerateArray());
        var text = Cli.Run("pool", "check", md);
        Assert.True(text.ExitCode == 0, text.ToString());
        Assert.Contains("1 data blocks leaked", text.Stdout);
        Assert.Contains("reclaimed when the pool next opens", text.Stdout);
    }

    [Fact]
    public void ClearNeedsCheckClearsTheFlagOnlyWhenTheMetadataIsClean()
    {
        using var t = new TempDir();
        Assert.Equal(0, Cli.Run("pool", "create", t["p"], "--data-size", "64M").ExitCode);
        string md = Path.Combine(t["p"], "metadata");
        SetNeedsCheck(md);
        var cleared = Cli.Run("pool", "check", t["p"], "--clear-needs-check");
        Assert.True(cleared.ExitCode == 0, cleared.ToString());
        Assert.Contains("needs_check cleared", cleared.Stdout);
        Assert.False(ReadNeedsCheck(md));
        Assert.Equal(0, Cli.Tool(Cli.Require("thin_check", "thin-provisioning-tools"), [md]).ExitCode);

        // Damaged metadata keeps its flag: the pool must not open writable on it.
        string damaged = CopyFixture(t, "x2.bin");
        SetNeedsCheck(damaged);
        Apply(damaged, Damage.UnderCountedDataBlock);
        var refused = Cli.Run("pool", "check", damaged, "--clear-needs-check");
        Assert.Equal(1, refused.ExitCode);
        Assert.Contains("needs_check left set", refused.Stderr);
        Assert.True(ReadNeedsCheck(damaged));
    }

    private static void SetNeedsCheck(string metadataPath)
    {
        using var device = ThinFast.IO.BlockDevices.Open(metadataPath, new ThinFast.IO.BlockDeviceOptions { Backend = ThinFast.IO.BlockDeviceBackend.Portable });
        using var md = ThinMetadata.Open(device);
        md.SetNeedsCheck(true);
        md.Commit();
    }

    private static bool ReadNeedsCheck(string metadataPath)
    {
        using var f = new FileStream(metadataPath, FileMode.Open, FileAccess.Read);
        return (Superblock.Read(ReadBlock(f, 0)).Flags & Superblock.NeedsCheckFlag) != 0;
    }

    // Damages the image and returns text the check must report.
    private static string Apply(string path, Damage damage)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        var sb = Superblock.Read(ReadBlock(f, 0));
        ulong firstSubtree = Node.Value64(ReadBlock(f, sb.DataMappingRoot), 0);
        switch (damage)
        {
            case Damage.None:
                return "";
            case Damage.FlippedNodeByte:
            {
                var n = ReadBlock(f, firstSubtree);
                n[200] ^= 0x10;
                WriteBlock(f, firstSubtree, n);
                return $"metadata block {firstSubtree} (mapping bottom-level tree node): bad checksum";
            }
            case Damage.WrongBlockNumber:
            {
                var n = ReadBlock(f, firstSubtree);
                MetadataFormat.Seal(n, firstSubtree + 1, MetadataFormat.NodeSalt);
                WriteBlock(f, firstSubtree, n);
                return $"claims to be block {firstSubtree + 1}";
            }
            case Damage.DamagedSuperblock:
            {
                var b = ReadBlock(f, 0);
                b[0x30] ^= 0x01;
                WriteBlock(f, 0, b);
                return "superblock 0: bad checksum";
            }
            case Damage.LeakedDataBlock:
                // A data block no mapping uses, marked in use in its bitmap with a valid checksum:
                // only a recount finds this.
                return $"data block {RecountDataBitmapEntry(f, sb, from: 0, to: 1)}: space map says 1 references, the mappings hold 0";
            case Damage.UnderCountedDataBlock:
                // A data block two mappings share, its bitmap saying one: freeing one mapping would
                // free the block under the other.
                return $"data block {RecountDataBitmapEntry(f, sb, from: 2, to: 1)}: space map says 1 references, the mappings hold 2";
            case Damage.LeakedMetadataBlock:
            {
                // The last metadata block marked in use though nothing references it.
                var index = ReadBlock(f, sb.MetadataSpaceMap.BitmapRoot);
                ulong bitmapBlock = BinaryPrimitives.ReadUInt64LittleEndian(index.AsSpan(16));
                ulong leaked = sb.MetadataNrBlocks - 1;
                var bitmap = ReadBlock(f, bitmapBlock);
                Assert.Equal(0u, MetadataFormat.ReadBitmapEntry(bitmap, (int)leaked));
                MetadataFormat.WriteBitmapEntry(bitmap, (int)leaked, 1);
                MetadataFormat.Seal(bitmap, bitmapBlock, MetadataFormat.BitmapSalt);
                WriteBlock(f, bitmapBlock, bitmap);
                return $"metadata block {leaked}: space map says 1 references, the trees hold 0";
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(damage));
        }
    }

    /// <summary>Finds the first data block whose count in the first data bitmap is
    /// <paramref name="from"/>, sets it to <paramref name="to"/> and reseals the bitmap.</summary>
    private static int RecountDataBitmapEntry(FileStream f, Superblock sb, uint from, uint to)
    {
        ulong index = sb.DataSpaceMap.BitmapRoot;
        var indexNode = ReadBlock(f, index);
        while (!Node.IsLeaf(indexNode))
            indexNode = ReadBlock(f, index = Node.Value64(indexNode, 0));
        ulong bitmapBlock = IndexEntry.Read(Node.Value(indexNode, 0)).BlockNumber;
        var bitmap = ReadBlock(f, bitmapBlock);
        int data = 0;
        while ((ulong)data < sb.DataSpaceMap.NrBlocks && MetadataFormat.ReadBitmapEntry(bitmap, data) != from)
            data++;
        Assert.True((ulong)data < sb.DataSpaceMap.NrBlocks, $"x2 has no data block with count {from} in its first bitmap");
        MetadataFormat.WriteBitmapEntry(bitmap, data, to);
        MetadataFormat.Seal(bitmap, bitmapBlock, MetadataFormat.BitmapSalt);
        WriteBlock(f, bitmapBlock, bitmap);
        return data;
    }

    private static byte[] ReadBlock(FileStream f, ulong block)
    {
        var b = new byte[Bs];
        RandomAccess.Read(f.SafeFileHandle, b, (long)block * Bs);
        return b;
    }

    private static void WriteBlock(FileStream f, ulong block, byte[] b) => RandomAccess.Write(f.SafeFileHandle, b, (long)block * Bs);
}
