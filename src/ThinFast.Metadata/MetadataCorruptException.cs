namespace ThinFast.Metadata;

/// <summary>What a metadata block is, for error messages and validation.</summary>
public enum MetadataBlockKind
{
    Superblock,
    BTreeNode,
    Bitmap,
    Index,
}

/// <summary>Which tree a B-tree node belongs to.</summary>
public enum MetadataTree
{
    None,
    MappingTop,
    MappingBottom,
    DeviceDetails,
    DataSpaceMapIndex,
    MetadataRefCounts,
    DataRefCounts,
}

public enum MetadataFault
{
    BadChecksum,
    WrongBlockNumber,
    BadMagic,
    BadFlags,
    BadMaxEntries,
    BadValueSize,
    TooManyEntries,
    TooFewEntries,
    KeysOutOfOrder,
    PointerOutOfRange,
    TreeTooDeep,
    UnsupportedVersion,
    UnsupportedFeatures,
    BadGeometry,
    Inconsistent,
}

/// <summary>
/// Metadata on the device is damaged or not dm-thin metadata. Names the block, its kind (and tree
/// for B-tree nodes) and the fault, so an operator can feed it to thin_check/thin_repair.
/// </summary>
public sealed class MetadataCorruptException : Exception
{
    public MetadataCorruptException(ulong blockNumber, MetadataBlockKind kind, MetadataTree tree, MetadataFault fault, string detail)
        : base(Describe(blockNumber, kind, tree, fault, detail))
    {
        BlockNumber = blockNumber;
        Kind = kind;
        Tree = tree;
        Fault = fault;
    }

    public ulong BlockNumber { get; }
    public MetadataBlockKind Kind { get; }
    public MetadataTree Tree { get; }
    public MetadataFault Fault { get; }

    private static string Describe(ulong block, MetadataBlockKind kind, MetadataTree tree, MetadataFault fault, string detail)
    {
        string what = kind switch
        {
            MetadataBlockKind.Superblock => "superblock",
            MetadataBlockKind.BTreeNode => $"btree node ({TreeName(tree)} tree)",
            MetadataBlockKind.Bitmap => "space-map bitmap",
            _ => "metadata space-map index",
        };
        return $"metadata block {block} ({what}): {fault}: {detail}";
    }

    private static string TreeName(MetadataTree tree) => tree switch
    {
        MetadataTree.MappingTop => "mapping top-level",
        MetadataTree.MappingBottom => "mapping bottom-level",
        MetadataTree.DeviceDetails => "device details",
        MetadataTree.DataSpaceMapIndex => "data space-map index",
        MetadataTree.MetadataRefCounts => "metadata ref-count",
        MetadataTree.DataRefCounts => "data ref-count",
        _ => "unknown",
    };
}

/// <summary>The metadata device has no free block left for this transaction.</summary>
public sealed class MetadataSpaceExhaustedException(string message) : InvalidOperationException(message);
