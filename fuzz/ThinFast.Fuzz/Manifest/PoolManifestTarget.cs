using System.Text;
using ThinFast.Engine;

namespace ThinFast.Fuzz.Manifest;

/// <summary>
/// pool.json into <see cref="PoolManifest.Parse"/> (what <see cref="PoolManifest.Load"/> does
/// with the file's bytes), then what opening a pool does next: the device check against the
/// metadata (here: every even id exists). A manifest that loaded must also survive being written
/// back and loaded again, since every volume command rewrites it. The documented refusal is
/// <see cref="PoolException"/>.
/// </summary>
public sealed class PoolManifestTarget : IFuzzTarget
{
    private const string Path = "pool.json";
    private const long AllocationLimit = 64L << 20;

    public string Name => "pool-manifest";

    public string Description => "pool.json read by PoolManifest (names, ids, sizes, origins, intent log), written back and read again";

    public void Run(ReadOnlySpan<byte> input)
    {
        var budget = AllocationBudget.Start(AllocationLimit);
        PoolManifest manifest;
        try
        {
            manifest = PoolManifest.Parse(input, Path);
            manifest.CheckDevices(id => id % 2 == 0, Path);
        }
        catch (PoolException)
        {
            return;
        }
        byte[] written = manifest.ToJson();
        try
        {
            PoolManifest.Parse(written, Path);
        }
        catch (PoolException e)
        {
            throw new UndocumentedFailureException($"a manifest that loaded does not load once written back: {e.Message}");
        }
        budget.Check("reading the manifest");
    }

    public IEnumerable<(string Name, byte[] Contents)> Seeds()
    {
        var manifest = new PoolManifest
        {
            HighestDeviceId = 6,
            Volumes =
            [
                new VolumeRecord { Name = "root", DeviceId = 2, Size = 8L << 30 },
                new VolumeRecord { Name = "web-1.snap", DeviceId = 4, Size = 8L << 30, OriginPath = "/srv/images/debian-12.raw", OriginSize = 2L << 30 },
            ],
            PendingDeviceIds = [6],
        };
        yield return ("two-volumes.json", manifest.ToJson());
        yield return ("empty-pool.json", Encoding.UTF8.GetBytes("{\n  \"version\": 1,\n  \"volumes\": [],\n  \"highest_device_id\": 0,\n  \"pending_device_ids\": []\n}"));
    }
}
