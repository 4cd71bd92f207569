using ThinFast.IO.Portable;
using ThinFast.IO.Uring;

namespace ThinFast.IO.Tests;

/// <summary>The <see cref="IBlockDevice"/> contract, run against each real backend on a real
/// O_DIRECT file. Data read back through the device is checked against an in-memory model, and
/// the whole file is finally read through the page cache (File.ReadAllBytes) as an independent
/// oracle.</summary>
public abstract class BlockDeviceContractTests : IDisposable
{
    private const int Block = 4096;
    private readonly TempDir _dir = new();

    protected abstract BlockDeviceBackend Backend { get; }

    /// <summary>The reactor io_uring devices use in these tests; null for the portable backend.</summary>
    protected virtual IoUringReactor? Reactor => null;

    /// <summary>Buffers registered with <see cref="Reactor"/> (fixed-buffer path), if any.</summary>
    protected virtual AlignedBufferPool? RegisteredPool => null;

    protected IBlockDevice Create(string name, long length, bool readOnly = false)
    {
        string path = _dir.File(name);
        BlockDevices.Create(path, length, Options()).Dispose();
        return readOnly ? Open(path, readOnly: true) : Open(path);
    }

    protected IBlockDevice Open(string path, bool readOnly = false) => BlockDevices.Open(path, Options(readOnly));

    private BlockDeviceOptions Options(bool readOnly = false) => new()
    {
        ReadOnly = readOnly,
        Backend = Backend,
        Reactor = Reactor,
        Log = message => Assert.Fail("unexpected backend fallback: " + message),
    };

    public virtual void Dispose() => _dir.Dispose();

    [Fact]
    public void OpensWithTheRequestedBackendAndKernelGeometry()
    {
        using var device = Create("geometry", 1 << 20);
        Assert.IsType(Backend == BlockDeviceBackend.Portable ? typeof(PortableBlockDevice) : typeof(IoUringBlockDevice), device);
        Assert.Equal(1 << 20, device.Length);
        // ext4 on this machine reports STATX_DIOALIGN 512/512; any real answer is a power of two.
        Assert.True(device.LogicalBlockSize is 512 or 1024 or 2048 or 4096, $"logical block size {device.LogicalBlockSize}");
        Assert.True(device.BufferAlignment > 0 && (device.BufferAlignment & (device.BufferAlignment - 1)) == 0);
        Assert.False(device.IsReadOnly);
    }

    [Fact]
    public async Task ConcurrentRandomIoMatchesTheModel()
    {
        const int workers = 64;
        const int blocksPerWorker = 8;
        const int opsPerWorker = 60;
        long length = (long)workers * blocksPerWorker * Block;
        var model = new byte[length];
        string path = _dir.File("random");
        using (var device = Create("random", length))
        {
            using var plainPool = new AlignedBufferPool(4 * Block, workers);
            var tasks = new Task[workers];
            for (int w = 0; w < workers; w++)
            {
                // Half the workers use registered buffers when the backend has them, so both the
                // fixed and the pinned path run concurrently.
                var pool = RegisteredPool is { } registered && w % 2 == 0 ? registered : plainPool;
                var buffer = pool.Rent();
                int worker = w;
                tasks[w] = Task.Run(async () =>
                {
                    try
                    {
                        await RunWorker(device, model, worker, workers, blocksPerWorker, opsPerWorker, buffer);
                    }
                    finally
                    {
                        pool.Return(buffer);
                    }
                }, TestContext.Current.CancellationToken);
            }
            await Task.WhenAll(tasks);
            await device.FlushAsync();
        }
        Assert.Equal(model, await File.ReadAllBytesAsync(path, TestContext.Current.CancellationToken));
        using (var reopened = Open(path, readOnly: true))
        using (var buffer = new NativeBuffer((int)Math.Min(length, 1 << 20)))
        {
            for (long off = 0; off < length; off += buffer.Length)
            {
                await reopened.ReadAsync(off, buffer.Memory);
                Assert.True(buffer.GetSpan().SequenceEqual(model.AsSpan((int)off, buffer.Length)), $"reopened device differs in [{off}, {off + buffer.Length})");
            }
        }
    }

    // Worker w owns blocks w, w + workers, w + 2*workers, ... so the model stays exact under
    // concurrency; each worker issues its own operations one after another.
    private static async Task RunWorker(IBlockDevice device, byte[] model, int worker, int workers, int blocksPerWorker, int ops, NativeBuffer buffer)
    {
        var rng = new Random(1234 + worker);
        for (int i = 0; i < ops; i++)
        {
            long block = worker + (long)workers * rng.Next(blocksPerWorker);
            long offset = block * Block;
            // Sub-block transfers in whole logical blocks exercise the 512-byte granularity too.
            int lbs = device.LogicalBlockSize;
            int start = rng.Next(Block / lbs) * lbs;
            int len = (rng.Next((Block - start) / lbs) + 1) * lbs;
            var mem = buffer.Memory.Slice(0, len);
            switch (rng.Next(10))
            {
                case < 4:
                    rng.NextBytes(mem.Span);
                    var flags = rng.Next(4) == 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None;
                    await device.WriteAsync(offset + start, mem, flags);
                    mem.Span.CopyTo(model.AsSpan((int)(offset + start), len));
                    break;
                case < 8:
                    mem.Span.Fill(0xEE);
                    await device.ReadAsync(offset + start, mem);
                    Assert.True(mem.Span.SequenceEqual(model.AsSpan((int)(offset + start), len)),
                        $"worker {worker}: read of {len} at {offset + start} differs from the model");
                    break;
                case 8:
                    await device.ZeroAsync(offset, Block);
                    model.AsSpan((int)offset, Block).Clear();
                    break;
                default:
                    await device.FlushAsync();
                    break;
            }
        }
    }

    [Fact]
    public async Task ZeroedRangeReadsBackAsZerosAndLeavesItsNeighbours()
    {
        using var device = Create("zero", 16 * Block);
        await AssertZeroingWorks(device);
    }

    [Fact]
    public async Task ZeroingFallsBackToWritingZerosWhereTheFileSystemCannot()
    {
        // tmpfs takes O_DIRECT but answers FALLOC_FL_ZERO_RANGE with EOPNOTSUPP: the device must
        // notice and write zeros instead, the first time and every time after.
        string path = Path.Combine("/dev/shm", $"thinfast-zero-{Environment.ProcessId}-{Backend}");
        try
        {
            BlockDevices.Create(path, 16 * Block, Options()).Dispose();
            using var device = Open(path);
            await AssertZeroingWorks(device);
            await AssertZeroingWorks(device);
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static async Task AssertZeroingWorks(IBlockDevice device)
    {
        using var buffer = new NativeBuffer(16 * Block);
        buffer.GetSpan().Fill(0x5A);
        await device.WriteAsync(0, buffer.Memory, WriteFlags.ForceUnitAccess);
        await device.ZeroAsync(4 * Block, 8 * Block);
        buffer.GetSpan().Clear();
        await device.ReadAsync(0, buffer.Memory);
        var span = buffer.GetSpan();
        Assert.True(span[..(4 * Block)].IndexOfAnyExcept((byte)0x5A) < 0, "data before the zeroed range changed");
        Assert.True(span[(4 * Block)..(12 * Block)].IndexOfAnyExcept((byte)0) < 0, "the zeroed range is not zero");
        Assert.True(span[(12 * Block)..].IndexOfAnyExcept((byte)0x5A) < 0, "data after the zeroed range changed");
    }

    [Fact]
    public async Task DeallocationLeavesItsNeighboursAndTheFileLength()
    {
        // What a deallocated range reads back as is undefined by the contract; what must hold is
        // that nothing around it changes.
        using var device = Create("deallocate", 16 * Block);
        using var buffer = new NativeBuffer(16 * Block);
        buffer.GetSpan().Fill(0x5A);
        await device.WriteAsync(0, buffer.Memory, WriteFlags.ForceUnitAccess);
        await device.DeallocateAsync(4 * Block, 8 * Block);
        buffer.GetSpan().Clear();
        await device.ReadAsync(0, buffer.Memory);
        var span = buffer.GetSpan();
        Assert.True(span[..(4 * Block)].IndexOfAnyExcept((byte)0x5A) < 0, "data before the deallocated range changed");
        Assert.True(span[(12 * Block)..].IndexOfAnyExcept((byte)0x5A) < 0, "data after the deallocated range changed");
        Assert.Equal(16 * Block, device.Length);
    }

    [Fact]
    public async Task MisalignedRequestsAreRefusedWithClearMessages()
    {
        using var device = Create("misaligned", 16 * Block);
        using var buffer = new NativeBuffer(4 * Block);
        int lbs = device.LogicalBlockSize;

        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.ReadAsync(lbs / 2, buffer.Memory.Slice(0, lbs)).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        Assert.Contains($"must be multiples of {lbs}", e.Message);

        e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.WriteAsync(0, buffer.Memory.Slice(0, lbs + 1)).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        Assert.Contains("length", e.Message);

        e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.ReadAsync(0, buffer.Memory.Slice(1, lbs)).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        Assert.Contains($"aligned to {device.BufferAlignment}", e.Message);

        e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.DeallocateAsync(lbs, lbs / 2).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.ZeroAsync(lbs / 2, lbs).AsTask());
        Assert.Equal(BlockError.InvalidArgument, e.Error);

        e = await Assert.ThrowsAsync<BlockDeviceException>(() => device.ReadAsync(15 * Block, buffer.Memory.Slice(0, 2 * Block)).AsTask());
        Assert.Equal(BlockError.OutOfRange, e.Error);
        Assert.Contains("past the end", e.Message);
    }

    [Fact]
    public async Task ReadOnlyDeviceRefusesEveryChange()
    {
        string path = _dir.File("origin");
        using (var rw = Create("origin", 4 * Block))
        using (var buffer = new NativeBuffer(Block))
        {
            buffer.GetSpan().Fill(7);
            await rw.WriteAsync(Block, buffer.Memory);
        }
        using var ro = Open(path, readOnly: true);
        using var data = new NativeBuffer(Block);
        Assert.True(ro.IsReadOnly);
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => ro.WriteAsync(0, data.Memory).AsTask());
        Assert.Equal(BlockError.ReadOnly, e.Error);
        e = await Assert.ThrowsAsync<BlockDeviceException>(() => ro.DeallocateAsync(0, Block).AsTask());
        Assert.Equal(BlockError.ReadOnly, e.Error);
        e = await Assert.ThrowsAsync<BlockDeviceException>(() => ro.ZeroAsync(0, Block).AsTask());
        Assert.Equal(BlockError.ReadOnly, e.Error);
        Assert.Equal(BlockError.ReadOnly, Assert.Throws<BlockDeviceException>(() => ro.Grow(8 * Block)).Error);
        await ro.ReadAsync(Block, data.Memory);
        Assert.True(data.GetSpan().IndexOfAnyExcept((byte)7) < 0, "read-only device read wrong data");
    }

    [Fact]
    public async Task GrowExtendsAndRefusesToShrink()
    {
        using var device = Create("grow", 4 * Block);
        device.Grow(8 * Block);
        Assert.Equal(8 * Block, device.Length);
        Assert.Equal(8 * Block, new FileInfo(device.Name).Length);
        using var buffer = new NativeBuffer(Block);
        buffer.GetSpan().Fill(3);
        await device.WriteAsync(7 * Block, buffer.Memory);
        var e = Assert.Throws<BlockDeviceException>(() => device.Grow(2 * Block));
        Assert.Equal(BlockError.InvalidArgument, e.Error);
        Assert.Contains("cannot shrink", e.Message);
    }

    [Fact]
    public void CreateRefusesToOverwriteAnExistingFile()
    {
        using (Create("exists", Block))
        {
        }
        var e = Assert.Throws<BlockDeviceException>(() => BlockDevices.Create(_dir.File("exists"), Block, Options()));
        Assert.Contains("EEXIST", e.Message);
    }

    [Fact]
    public void OpeningAMissingFileNamesThePath()
    {
        string path = _dir.File("missing");
        var e = Assert.Throws<BlockDeviceException>(() => Open(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("ENOENT", e.Message);
    }
}

public sealed class PortableBlockDeviceTests : BlockDeviceContractTests
{
    protected override BlockDeviceBackend Backend => BlockDeviceBackend.Portable;
}

public sealed class IoUringBlockDeviceTests : BlockDeviceContractTests
{
    private readonly IoUringReactor _reactor;
    private readonly AlignedBufferPool _registered = new(4 * 4096, 32);

    public IoUringBlockDeviceTests()
    {
        Assert.True(IoUringReactor.TryCreate(out var reactor, out string? error), "io_uring is required on this machine: " + error);
        _reactor = reactor;
        _reactor.RegisterBuffers(_registered);
    }

    protected override BlockDeviceBackend Backend => BlockDeviceBackend.IoUring;
    protected override IoUringReactor? Reactor => _reactor;
    protected override AlignedBufferPool? RegisteredPool => _registered;

    public override void Dispose()
    {
        _reactor.Dispose();
        Assert.Equal(0, _reactor.StaleCompletions);
        _registered.Dispose();
        base.Dispose();
    }
}
