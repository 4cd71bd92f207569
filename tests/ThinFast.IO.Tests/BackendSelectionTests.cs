using ThinFast.IO.Portable;
using ThinFast.IO.Uring;

namespace ThinFast.IO.Tests;

// The environment variable is process-wide: these tests must not run beside each other or beside
// anything else that opens devices with Backend = Auto.
[CollectionDefinition(nameof(BackendEnvironment), DisableParallelization = true)]
public sealed class BackendEnvironment;

[Collection(nameof(BackendEnvironment))]
public sealed class BackendSelectionTests : IDisposable
{
    private readonly TempDir _dir = new();
    private readonly string? _saved = Environment.GetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable);
    private readonly List<string> _log = [];

    public void Dispose()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, _saved);
        _dir.Dispose();
    }

    private IBlockDevice OpenAuto(BlockDeviceBackend backend = BlockDeviceBackend.Auto)
    {
        string path = _dir.File("dev");
        if (!File.Exists(path))
            BlockDevices.Create(path, 1 << 16, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable }).Dispose();
        return BlockDevices.Open(path, new BlockDeviceOptions { Backend = backend, Log = _log.Add });
    }

    [Fact]
    public void AutoPicksIoUringWhereTheKernelAllowsIt()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, null);
        using var device = OpenAuto();
        Assert.True(IoUringReactor.TryGetShared(out _, out string? why), "io_uring should work on this machine: " + why);
        Assert.IsType<IoUringBlockDevice>(device);
        Assert.Empty(_log);
    }

    [Fact]
    public void EnvironmentVariableForcesPortable()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, "portable");
        using var device = OpenAuto();
        Assert.IsType<PortableBlockDevice>(device);
    }

    [Fact]
    public void EnvironmentVariableForcesIoUring()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, "io_uring");
        using var device = OpenAuto();
        Assert.IsType<IoUringBlockDevice>(device);
    }

    [Fact]
    public void ExplicitOptionWinsOverTheEnvironment()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, "io_uring");
        using var device = OpenAuto(BlockDeviceBackend.Portable);
        Assert.IsType<PortableBlockDevice>(device);
    }

    [Fact]
    public void AutoFallsBackToPortableAndSaysWhyWhenIoUringIsUnavailable()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, null);
        IoUringReactor.SimulatedUnavailability = "io_uring_setup(512) failed: EPERM (simulated)";
        try
        {
            using (var device = OpenAuto())
                Assert.IsType<PortableBlockDevice>(device);
            string line = Assert.Single(_log);
            Assert.Contains("io_uring unavailable (io_uring_setup(512) failed: EPERM (simulated))", line);
            Assert.Contains("portable backend", line);

            var e = Assert.Throws<BlockDeviceException>(() => OpenAuto(BlockDeviceBackend.IoUring));
            Assert.Equal(BlockError.NotSupported, e.Error);
            Assert.Contains("EPERM (simulated)", e.Message);
        }
        finally
        {
            IoUringReactor.SimulatedUnavailability = null;
        }
    }

    [Fact]
    public void UnknownEnvironmentValueIsRejectedByName()
    {
        Environment.SetEnvironmentVariable(BlockDevices.BackendEnvironmentVariable, "libaio");
        var e = Assert.Throws<ArgumentException>(() => OpenAuto());
        Assert.Contains("THINFAST_IO_BACKEND='libaio'", e.Message);
        Assert.Contains("portable", e.Message);
    }
}
