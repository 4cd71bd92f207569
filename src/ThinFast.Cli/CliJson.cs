using System.Text.Json.Serialization;

namespace ThinFast.Cli;

public sealed record PoolInfoJson
{
    public required string Directory { get; init; }
    public required string MetadataPath { get; init; }
    public required string DataPath { get; init; }
    public long BlockSize { get; init; }
    public ulong DataBlocks { get; init; }
    public ulong FreeDataBlocks { get; init; }
    public ulong MetadataBlocks { get; init; }
    public ulong FreeMetadataBlocks { get; init; }
    public ulong TransactionId { get; init; }
    public uint MetadataVersion { get; init; }
    public bool NeedsCheck { get; init; }
    public required List<string> Volumes { get; init; }
}

public sealed record PoolStatusJson
{
    public ulong TransactionId { get; init; }
    public ulong UsedMetadataBlocks { get; init; }
    public ulong TotalMetadataBlocks { get; init; }
    public ulong UsedDataBlocks { get; init; }
    public ulong TotalDataBlocks { get; init; }
    public long FreeDataBytes { get; init; }
    public int BlockSize { get; init; }
    public required string Mode { get; init; }
    public bool ErrorIfNoSpace { get; init; }
    public bool NeedsCheck { get; init; }
    public long LowWaterBlocks { get; init; }
    public required string StatusLine { get; init; }
}

public sealed record VolumeJson
{
    public required string Name { get; init; }
    public uint DeviceId { get; init; }
    public long Size { get; init; }
    public long MappedBytes { get; init; }
    public long SharedBytes { get; init; }
    public string? Origin { get; init; }
    public string? Unavailable { get; init; }
}

// Source-generated (no reflection), so --json works in the NativeAOT binary.
[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower)]
[JsonSerializable(typeof(PoolInfoJson))]
[JsonSerializable(typeof(PoolStatusJson))]
[JsonSerializable(typeof(List<VolumeJson>))]
[JsonSerializable(typeof(CheckReport))]
internal sealed partial class CliJsonContext : JsonSerializerContext
{
}
