using ThinFast.IO;
using ThinFast.Testing;

namespace ThinFast.Engine.Tests;

/// <summary>No block leaks when the power goes while a commit and a provisioning write overlap,
/// and a pool that another writer left with leaks gets them back when it opens.</summary>
public class LeakedBlockTests
{
    private const int B = PoolOptions.DefaultBlockSize;

    [Fact]
    public async Task ACommitWhileANewBlockIsBeingFilledLeaksNothingAfterACrash()
    {
        GatedDevice? gated = null;
        using var h = new PoolHarness(16L * B, new PoolOptions { CommitInterval = TimeSpan.FromHours(1) }, size =>
            size == PoolHarness.MetadataSize
                ? new MemoryBlockDevice(size, name: "metadata")
                : gated = new GatedDevice(new MemoryBlockDevice(size, name: "data"), GatedOperations.Write));
        var a = h.Pool.CreateVolume("a", 4L * B);
        var b = h.Pool.CreateVolume("b", 4L * B);
        gated!.Open();
        await b.WriteAsync(0, PoolHarness.Pattern(B, 2));
        gated.Close();

        // a's first write to block 0 has its block and is filling it on the (held) data device.
        var filling = Task.Run(async () => await a.WriteAsync(0, PoolHarness.Pattern(B, 1)), TestContext.Current.CancellationToken);
        Assert.True(gated.WriteArrived.Wait(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken), "the provisioning write never reached the data device");
        // A commit now (what a FLUSH of another volume or the periodic commit does), then the power goes.
        h.Pool.CommitNow();
        byte[] metadataImage = ((MemoryBlockDevice)h.MetadataDevice).ToArray();
        byte[] dataImage = ((MemoryBlockDevice)((GatedDevice)h.DataDevice).Inner).ToArray();
        string imagePath = Path.Combine(h.Directory, "crashed.meta");
        File.WriteAllBytes(imagePath, metadataImage);
        ExternalTool.AssertMetadataClean(imagePath);

        gated.Open();
        await filling.WaitAsync(TimeSpan.FromSeconds(10), TestContext.Current.CancellationToken);
        h.CrashAndReopen(metadataImage, dataImage);
        Assert.DoesNotContain(h.Events, e => e.Contains("leaked"));
        var back = new byte[B];
        await h.Pool.GetVolume("a").ReadAsync(0, back);
        Assert.Equal(new byte[B], back);
        await h.Pool.GetVolume("b").ReadAsync(0, back);
        Assert.Equal(PoolHarness.Pattern(B, 2), back);
        Assert.Equal(1UL, h.Pool.GetStatus().UsedDataBlocks);
        h.AssertMetadataClean();
    }

    [Fact]
    public async Task OpeningAPoolWithLeakedBlocksReclaimsThemAndLogsIt()
    {
        using var h = new PoolHarness(16L * B);
        var a = h.Pool.CreateVolume("a", 4L * B);
        await a.WriteAsync(0, PoolHarness.Pattern(2 * B, 3));
        await a.FlushAsync();
        h.Pool.Dispose();

        // What a crash of the kernel's dm-thin leaves: blocks 5 and 6 allocated, mapped by nothing.
        byte[] metadataImage = ((MemoryBlockDevice)h.MetadataDevice).ToArray();
        MetadataImageEdits.SetDataBlockCount(metadataImage, 5, 1);
        MetadataImageEdits.SetDataBlockCount(metadataImage, 6, 1);
        string leakedPath = Path.Combine(h.Directory, "leaked.meta");
        File.WriteAllBytes(leakedPath, metadataImage);
        Assert.Throws<Xunit.Sdk.XunitException>(() => ExternalTool.AssertMetadataClean(leakedPath));

        h.ReopenFrom(new MemoryBlockDevice(metadataImage, name: "metadata"), new MemoryBlockDevice(((MemoryBlockDevice)h.DataDevice).ToArray(), name: "data"));
        h.WaitForEvent("reclaimed 2 leaked data blocks");
        Assert.Equal(2UL, h.Pool.GetStatus().UsedDataBlocks);
        var back = new byte[2 * B];
        await h.Pool.GetVolume("a").ReadAsync(0, back);
        Assert.Equal(PoolHarness.Pattern(2 * B, 3), back);
        // The reclaim was committed at open: a crash right after it keeps the space.
        h.CrashAndReopen(((MemoryBlockDevice)h.MetadataDevice).ToArray(), ((MemoryBlockDevice)h.DataDevice).ToArray());
        Assert.Equal(2UL, h.Pool.GetStatus().UsedDataBlocks);
        h.AssertMetadataClean();
    }
}
