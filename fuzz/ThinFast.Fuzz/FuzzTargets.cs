using ThinFast.Fuzz.Manifest;
using ThinFast.Fuzz.Metadata;
using ThinFast.Fuzz.Nbd;
using ThinFast.Fuzz.Xml;

namespace ThinFast.Fuzz;

/// <summary>Every target, by name.</summary>
public static class FuzzTargets
{
    public static IReadOnlyList<IFuzzTarget> All { get; } =
    [
        new NbdHandshakeTarget(),
        new NbdTransmissionTarget(),
        new SuperblockTarget(),
        new BTreeNodeTarget(),
        new DeviceDetailsTarget(),
        new SpaceMapTarget(),
        new XmlRestoreTarget(),
        new PoolManifestTarget(),
    ];

    public static IFuzzTarget? Find(string name) => All.FirstOrDefault(t => t.Name == name);
}
