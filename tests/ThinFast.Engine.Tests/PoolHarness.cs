using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>A pool on in-memory devices with named in-memory origins, for engine tests.
/// Origins are opened read-only: a write to one throws, and <see cref="OriginUnchanged"/> checks
/// their bytes too.</summary>
internal sealed class PoolHarness : IDisposable
{
    public const long MetadataSize = 16 << 20;

    private readonly Dictionary<string, byte[]> _origins = new();
    private readonly Dictionary<string, byte[]> _originDigests = new();

    public PoolHarness(long dataSize, PoolOptions? options = null, Func<long, IBlockDevice>? makeDevice = null)
    {
        Directory = System.IO.Directory.CreateTempSubdirectory("thinfast-engine-").FullName;
        Options = (options ?? new PoolOptions()) with { Log = Record };
        MetadataDevice = makeDevice?.Invoke(MetadataSize) ?? new MemoryBlockDevice(MetadataSize, name: "metadata");
        DataDevice = makeDevice?.Invoke(dataSize) ?? new MemoryBlockDevice(dataSize, name: "data");
        Pool = ThinPool.Create(Devices(MetadataDevice, DataDevice), Options);
    }

    public string Directory { get; }

    public PoolOptions Options { get; }

    /// <summary>The pool's log lines; lock it to read while the pool runs.</summary>
    public List<string> Events { get; } = new();

    private void Record(string message)
    {
        lock (Events)
        {
            Events.Add(message);
            Monitor.PulseAll(Events);
        }
    }

    /// <summary>Waits for a log line containing <paramref name="text"/>; fails after 10 s.</summary>
    public void WaitForEvent(string text)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        lock (Events)
        {
            while (!Events.Any(e => e.Contains(text)))
            {
                var left = deadline - DateTime.UtcNow;
                Assert.True(left > TimeSpan.Zero, $"no log line containing '{text}' within 10 s; the log: {string.Join(" | ", Events)}");
                Monitor.Wait(Events, left);
            }
        }
    }

    public IBlockDevice MetadataDevice { get; private set; }

    public IBlockDevice DataDevice { get; private set; }

    public ThinPool Pool { get; private set; }

    public string ManifestPath => Path.Combine(Directory, "pool.json");

    public PoolDevices Devices(IBlockDevice metadata, IBlockDevice data) => new()
    {
        Metadata = metadata,
        Data = data,
        ManifestPath = ManifestPath,
        OpenOrigin = OpenOrigin,
        // As in production, where the data device completes on the reactor: commits flush through
        // a handle that completes on the calling thread, because they block while they flush.
        DataFlush = data is OutOfOrderDevice slow ? slow.Inner : null,
    };

    /// <summary>Registers an origin image under a made-up path.</summary>
    public string AddOrigin(string name, byte[] contents)
    {
        string path = "/origins/" + name;
        _origins[path] = contents;
        _originDigests[path] = System.Security.Cryptography.SHA256.HashData(contents);
        return path;
    }

    public void ReplaceOrigin(string path, byte[]? contents)
    {
        if (contents is null)
            _origins.Remove(path);
        else
            _origins[path] = contents;
    }

    public byte[] Origin(string path) => _origins[path];

    public void AssertOriginsUnchanged()
    {
        foreach (var (path, digest) in _originDigests)
            if (_origins.TryGetValue(path, out var bytes))
                Assert.Equal(digest, System.Security.Cryptography.SHA256.HashData(bytes));
    }

    /// <summary>Every origin device the pool opened, newest last (to count their reads).</summary>
    public List<MemoryBlockDevice> OpenedOrigins { get; } = new();

    private IBlockDevice OpenOrigin(string path)
    {
        if (!_origins.TryGetValue(path, out var bytes))
            throw new FileNotFoundException($"{path} does not exist", path);
        var device = new MemoryBlockDevice(bytes, readOnly: true, name: path);
        OpenedOrigins.Add(device);
        return device;
    }

    /// <summary>Closes the pool cleanly and opens it again on the same devices.</summary>
    public void Reopen()
    {
        Pool.Dispose();
        var metadataImage = Memory(MetadataDevice).ToArray();
        var dataImage = Memory(DataDevice).ToArray();
        ReopenFrom(new MemoryBlockDevice(metadataImage, name: "metadata"), new MemoryBlockDevice(dataImage, name: "data"));
    }

    private static MemoryBlockDevice Memory(IBlockDevice device) => device switch
    {
        MemoryBlockDevice m => m,
        OutOfOrderDevice o => Memory(o.Inner),
        _ => throw new InvalidOperationException($"{device.Name} is not an in-memory device"),
    };

    /// <summary>A power cut: the given device images are what survives. The pool that was
    /// running is then shut down on its old devices (what it writes while stopping reaches
    /// nothing that survives), and a new one opens on copies of the images.</summary>
    public void CrashAndReopen(byte[] metadataImage, byte[] dataImage)
    {
        try
        {
            Pool.Dispose();
        }
        catch (Exception e)
        {
            Record($"(the crashed pool failed to stop: {e.Message})");
        }
        ReopenFrom(new MemoryBlockDevice(metadataImage, name: "metadata"), new MemoryBlockDevice(dataImage, name: "data"));
    }

    public void ReopenFrom(IBlockDevice metadata, IBlockDevice data)
    {
        MetadataDevice = metadata;
        DataDevice = data;
        Pool = ThinPool.Open(Devices(metadata, data), Options);
    }

    /// <summary>thin_check and analyze.py on the committed metadata.</summary>
    public void AssertMetadataClean()
    {
        Pool.CommitNow();
        string image = Path.Combine(Directory, "metadata.img");
        File.WriteAllBytes(image, MetadataImage());
        ExternalTool.AssertMetadataClean(image);
    }

    public byte[] MetadataImage() => MetadataDevice switch
    {
        MemoryBlockDevice m => m.ToArray(),
        PowerCutDevice p => p.CurrentImage(),
        _ => throw new InvalidOperationException("unknown metadata device"),
    };

    public void Dispose()
    {
        try
        {
            Pool.Dispose();
        }
        finally
        {
            System.IO.Directory.Delete(Directory, recursive: true);
        }
    }

    public static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }
}
