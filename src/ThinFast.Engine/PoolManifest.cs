using System.Text.Json;
using System.Text.Json.Serialization;
using ThinFast.Interop;

namespace ThinFast.Engine;

/// <summary>One volume as the manifest records it. dm-thin keeps neither a volume's size nor its
/// external origin in the metadata (they live in the kernel's table line), so we keep them here.</summary>
public sealed record VolumeRecord
{
    public required string Name { get; init; }
    public required uint DeviceId { get; init; }
    public required long Size { get; init; }
    public string? OriginPath { get; init; }
    /// <summary>The origin's size when the volume was created: an origin that changed size since is
    /// refused, because the volume's unprovisioned blocks would silently read different data.</summary>
    public long? OriginSize { get; init; }
}

/// <summary>The manifest file beside the metadata: every volume's name, dev_id, size and origin.
/// Written atomically: temp file, fsync, rename over the old one, fsync of the folder, so a crash
/// leaves either the old or the new manifest, never a torn one.</summary>
public sealed record PoolManifest
{
    public const int CurrentVersion = 1;

    public int Version { get; init; } = CurrentVersion;
    public List<VolumeRecord> Volumes { get; init; } = new();
    /// <summary>Highest thin device id ever handed out: ids are never reused, so nothing that
    /// still refers to a deleted volume's id can reach a newer volume.</summary>
    public uint HighestDeviceId { get; init; }
    /// <summary>Devices being created or deleted (the intent log): one still in the metadata and
    /// named by no volume at open was left by a crash and is reclaimed.</summary>
    public List<uint> PendingDeviceIds { get; init; } = new();

    // The serializer's messages name .NET types ("could not be converted to
    // System.Collections.Generic.List`1[...]"); an operator needs the place in the file and what
    // kind of fault it is. A syntax error is the reader's own JsonException wrapped with the path;
    // a value the reader parsed but the type cannot take has no inner exception.
    private static string Describe(JsonException e)
    {
        string fault = e.InnerException is JsonException
            ? "malformed JSON"
            : "a value of the wrong kind (a number, string, list or object where another is expected)";
        string where = string.IsNullOrEmpty(e.Path) || e.Path == "$" ? "" : $" at {e.Path}";
        string line = e.LineNumber is { } n ? $" (line {n + 1}, column {e.BytePositionInLine + 1})" : "";
        return fault + where + line;
    }

    public static PoolManifest Load(string path)
    {
        if (!File.Exists(path))
            throw new PoolException($"manifest {path} does not exist");
        return Parse(File.ReadAllBytes(path), path);
    }

    /// <summary>Decodes and validates a manifest's bytes; <paramref name="path"/> only names it in
    /// messages. Anything wrong with the contents is a <see cref="PoolException"/>.</summary>
    public static PoolManifest Parse(ReadOnlySpan<byte> json, string path)
    {
        PoolManifest? manifest;
        try
        {
            manifest = JsonSerializer.Deserialize(json, ManifestJsonContext.Default.PoolManifest);
        }
        catch (JsonException e)
        {
            throw new PoolException($"manifest {path} is not valid: {Describe(e)}");
        }
        if (manifest is null || manifest.Version != CurrentVersion)
            throw new PoolException($"manifest {path} has unsupported version {manifest?.Version}");
        // The generated reader leaves a list whose key is absent null (init-only properties are
        // set all at once, bypassing the initialisers): absent means empty. An explicit null
        // value was refused by the reader (RespectNullableAnnotations), but that does not reach
        // the entries of a list.
        manifest = manifest with { Volumes = manifest.Volumes ?? [], PendingDeviceIds = manifest.PendingDeviceIds ?? [] };
        if (manifest.Volumes.Contains(null!))
            throw new PoolException($"manifest {path} is damaged (edited by hand?): a volume entry is null");
        var names = new HashSet<string>();
        var ids = new HashSet<uint>();
        var faults = new List<string>();
        foreach (var v in manifest.Volumes)
        {
            if (!names.Add(v.Name) || !ids.Add(v.DeviceId))
                throw new PoolException($"manifest {path} names volume '{Shown(v.Name)}' (dev {v.DeviceId}) twice");
            if (NameProblem(v.Name) is { } nameProblem)
                faults.Add(nameProblem);
            if (v.Size <= 0 || v.Size % 512 != 0 || v.Size > MaxVolumeSize)
                faults.Add($"volume '{Shown(v.Name)}' has size {v.Size}, not a positive multiple of 512 up to {MaxVolumeSize}");
            if (v.DeviceId > MaxDeviceId)
                faults.Add($"volume '{Shown(v.Name)}' has dev {v.DeviceId}, above dm-thin's 24-bit device ids");
            if (v.OriginSize is < 0)
                faults.Add($"volume '{Shown(v.Name)}' has origin size {v.OriginSize}");
        }
        if (faults.Count > 0)
            throw new PoolException($"manifest {path} is damaged (edited by hand?): {string.Join("; ", faults)}");
        return manifest;
    }

    /// <summary>dm-thin's device ids are 24 bits.</summary>
    public const uint MaxDeviceId = (1 << 24) - 1;

    /// <summary>1 EiB: far beyond any disk, and far from overflowing byte arithmetic.</summary>
    public const long MaxVolumeSize = 1L << 60;

    /// <summary>Why a volume name is not allowed, or null. Names become NBD export names and
    /// appear in paths and logs: letters, digits, '-', '_' and '.', not starting with '.'.</summary>
    public static string? NameProblem(string name) =>
        string.IsNullOrEmpty(name) || name.Length > 128 || name.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.')) || name[0] == '.'
            ? $"volume name '{Shown(name)}' must be 1-128 characters of letters, digits, '-', '_' and '.', not starting with '.'"
            : null;

    /// <summary>Text from outside (a name in a hand-edited file, a command-line word), fit for one
    /// line of a message: control characters shown as '?', cut at 64 characters.</summary>
    public static string Shown(string name)
    {
        string printable = new(name.Select(c => char.IsControl(c) ? '?' : c).Take(64).ToArray());
        return name.Length > 64 ? printable + "..." : printable;
    }

    /// <summary>Refuses a manifest that names a device the metadata does not have.</summary>
    public void CheckDevices(Func<uint, bool> deviceExists, string manifestPath)
    {
        var missing = Volumes.Where(v => !deviceExists(v.DeviceId)).Select(v => $"'{Shown(v.Name)}' as dev {v.DeviceId}").ToList();
        if (missing.Count > 0)
            throw new PoolException($"manifest {manifestPath} names volume {string.Join(", ", missing)}, which the metadata does not have");
    }

    /// <summary>The manifest as <see cref="Save"/> writes it.</summary>
    public byte[] ToJson() => JsonSerializer.SerializeToUtf8Bytes(this, ManifestJsonContext.Default.PoolManifest);

    public void Save(string path)
    {
        string full = Path.GetFullPath(path);
        string dir = Path.GetDirectoryName(full)!;
        string temp = full + ".tmp";
        byte[] json = ToJson();
        using (var f = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            if (!OperatingSystem.IsWindows())
                File.SetUnixFileMode(f.SafeFileHandle, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            f.Write(json);
            f.Flush(flushToDisk: true);
        }
        File.Move(temp, full, overwrite: true);
        FsyncDirectory(dir);
    }

    // Makes the rename durable: without it a crash can bring back the old directory entry.
    private static void FsyncDirectory(string dir)
    {
        if (!OperatingSystem.IsLinux())
            return;
        int fd = Libc.Open(dir, Libc.O_RDONLY | Libc.O_CLOEXEC);
        if (fd < 0)
            throw new IOException($"cannot open directory {dir} to fsync it: errno {-fd}");
        try
        {
            int rc = Libc.Fsync(fd);
            if (rc < 0)
                throw new IOException($"fsync of directory {dir} failed: errno {-rc}");
        }
        finally
        {
            Libc.Close(fd);
        }
    }
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.SnakeCaseLower,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, RespectNullableAnnotations = true)]
[JsonSerializable(typeof(PoolManifest))]
internal sealed partial class ManifestJsonContext : JsonSerializerContext
{
}
