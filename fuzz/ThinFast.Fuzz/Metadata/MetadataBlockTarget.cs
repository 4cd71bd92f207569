using ThinFast.Metadata;

namespace ThinFast.Fuzz.Metadata;

/// <summary>
/// Grafts the input over one block of <see cref="MetadataImage"/> and exercises the image. The
/// input's first byte picks the block among the target's candidates, the rest is its contents
/// (zero-padded or cut to 4 KiB). The checksum is recomputed, since a fuzzer would almost never
/// get it right and every mutation would stop at the checksum test; the stored block number is
/// left as the input has it, so the location check is fuzzed too.
/// </summary>
public abstract class MetadataBlockTarget : IFuzzTarget
{
    public abstract string Name { get; }

    public abstract string Description { get; }

    /// <summary>The blocks of the image this target may replace.</summary>
    protected abstract IReadOnlyList<int> Candidates { get; }

    protected MetadataImage Image => MetadataImage.Instance;

    public void Run(ReadOnlySpan<byte> input)
    {
        // Even an empty input runs the code under test: SharpFuzz reads its first input before
        // afl has surely written it, and a first run that reaches no instrumented code makes afl
        // abort with "No instrumentation detected".
        var candidates = Candidates;
        int block = candidates[input.IsEmpty ? 0 : input[0] % candidates.Count];
        byte[] image = (byte[])Image.Bytes.Clone();
        Span<byte> target = image.AsSpan(block * MetadataFormat.BlockSize, MetadataFormat.BlockSize);
        ReadOnlySpan<byte> contents = input.IsEmpty ? [] : input[1..];
        if (contents.Length > MetadataFormat.BlockSize)
            contents = contents[..MetadataFormat.BlockSize];
        target.Clear();
        contents.CopyTo(target);
        uint salt = MetadataImage.Salt(Image.Blocks.First(b => b.Block == block).Kind);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(target, MetadataFormat.ComputeChecksum(target, salt));
        MetadataExercise.Run(image);
    }

    public IEnumerable<(string Name, byte[] Contents)> Seeds()
    {
        var candidates = Candidates;
        for (int i = 0; i < candidates.Count; i++)
        {
            int block = candidates[i];
            var kind = Image.Blocks.First(b => b.Block == block).Kind;
            byte[] seed = new byte[1 + MetadataFormat.BlockSize];
            seed[0] = (byte)i;
            Image.Bytes.AsSpan(block * MetadataFormat.BlockSize, MetadataFormat.BlockSize).CopyTo(seed.AsSpan(1));
            yield return ($"{kind.ToString().ToLowerInvariant()}-block-{block}", seed);
        }
    }
}

/// <summary>Block 0: geometry, roots of every tree, both space-map roots.</summary>
public sealed class SuperblockTarget : MetadataBlockTarget
{
    public override string Name => "superblock";

    public override string Description => "the superblock (block 0): magic, version, geometry, tree and space-map roots";

    protected override IReadOnlyList<int> Candidates => [0];
}

/// <summary>Every B-tree node of the image: mapping top and bottom levels, device details, the data
/// space-map index tree and both ref-count (overflow) trees, internal nodes and leaves.</summary>
public sealed class BTreeNodeTarget : MetadataBlockTarget
{
    public override string Name => "btree-node";

    public override string Description => "any B-tree node: mapping trees, details tree, data space-map index, ref-count trees";

    protected override IReadOnlyList<int> Candidates => Image.BlocksOf(ImageBlockKind.BTreeNode);
}

/// <summary>The device-details tree's leaf: one 24-byte record per thin device.</summary>
public sealed class DeviceDetailsTarget : MetadataBlockTarget
{
    public override string Name => "device-details";

    public override string Description => "the device-details leaf: mapped blocks, transaction, creation and snapshot times per device";

    protected override IReadOnlyList<int> Candidates => [Image.DetailsRoot];
}

/// <summary>The space maps' own blocks: the metadata space map's index block and every bitmap of
/// both space maps.</summary>
public sealed class SpaceMapTarget : MetadataBlockTarget
{
    public override string Name => "space-map";

    public override string Description => "space-map blocks: the metadata index block and the bitmaps of both space maps";

    protected override IReadOnlyList<int> Candidates => Image.BlocksOf(ImageBlockKind.Index, ImageBlockKind.Bitmap);
}
