using System.Diagnostics;
using ThinFast.IO.Uring;

namespace ThinFast.IO.Tests;

[Collection(nameof(QuietProcess))]
public sealed class ReactorTests : IDisposable
{
    private const int Block = 4096;
    private readonly TempDir _dir = new();
    private readonly IoUringReactor _reactor;
    private readonly IBlockDevice _device;

    public ReactorTests()
    {
        // An explicit spin: the default is none on 2-CPU machines, and the poll-then-sleep path
        // must be covered everywhere.
        Assert.True(IoUringReactor.TryCreate(out var reactor, out string? error, spin: TimeSpan.FromMicroseconds(50)), "io_uring is required: " + error);
        _reactor = reactor;
        string path = _dir.File("reactor");
        BlockDevices.Create(path, 64 * Block, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable }).Dispose();
        _device = BlockDevices.Open(path, new BlockDeviceOptions { Backend = BlockDeviceBackend.IoUring, Reactor = reactor });
    }

    public void Dispose()
    {
        _device.Dispose();
        _reactor.Dispose();
        _dir.Dispose();
    }

    [Fact]
    public async Task ASleepingReactorIsWokenBySubmissionsFromOtherThreads()
    {
        using var buffer = new NativeBuffer(Block);
        for (int i = 0; i < 10; i++)
        {
            // Well past the spin phase: the reactor is asleep in io_uring_enter(GETEVENTS).
            await Task.Delay(20, TestContext.Current.CancellationToken);
            buffer.GetSpan().Fill((byte)i);
            // WaitAsync turns a lost wake-up into a TimeoutException instead of a hung test.
            await _device.WriteAsync(i * Block, buffer.Memory).AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
            buffer.GetSpan().Clear();
            await _device.ReadAsync(i * Block, buffer.Memory).AsTask().WaitAsync(TimeSpan.FromSeconds(5), TestContext.Current.CancellationToken);
            Assert.True(buffer.GetSpan().IndexOfAnyExcept((byte)i) < 0);
        }
    }

    [Fact]
    public void AnIdleReactorBurnsNoCpu()
    {
        using var buffer = new NativeBuffer(Block);
        _device.Read(0, buffer.Memory);
        Thread.Sleep(50);
        long before = ReactorThreadTicks(out int threads);
        Assert.True(threads > 0, "no thinfast-uring thread found in /proc/self/task");
        Thread.Sleep(500);
        long ticks = ReactorThreadTicks(out _) - before;
        // A spinning reactor would use ~50 ticks (100 Hz clock) here.
        Assert.True(ticks <= 2, $"{threads} idle reactor thread(s) used {ticks} clock ticks in 500 ms");
    }

    /// <summary>utime + stime of every reactor thread in this process, from /proc/self/task/*/stat.</summary>
    private static long ReactorThreadTicks(out int threads)
    {
        long total = 0;
        threads = 0;
        foreach (string task in Directory.EnumerateDirectories("/proc/self/task"))
        {
            string comm;
            string stat;
            try
            {
                comm = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                stat = File.ReadAllText(Path.Combine(task, "stat"));
            }
            catch (IOException)
            {
                continue;
            }
            if (comm != "thinfast-uring")
                continue;
            // Fields after the ")" that closes comm: state is field 3, utime 14, stime 15.
            string[] f = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            total += long.Parse(f[11]) + long.Parse(f[12]);
            threads++;
        }
        return total;
    }

    [Fact]
    public async Task MoreRequestsThanSlotsQueueAndAllComplete()
    {
        int count = (int)_reactor.SqEntries * 4;
        var buffers = new NativeBuffer[count];
        var tasks = new Task[count];
        for (int i = 0; i < count; i++)
        {
            buffers[i] = new NativeBuffer(Block);
            buffers[i].GetSpan().Fill((byte)(i + 1));
            tasks[i] = _device.WriteAsync(i % 64 * Block, buffers[i].Memory).AsTask();
        }
        await Task.WhenAll(tasks);
        for (int i = 0; i < count; i++)
            tasks[i] = _device.ReadAsync(i % 64 * Block, buffers[i].Memory).AsTask();
        await Task.WhenAll(tasks);
        foreach (var b in buffers)
            ((IDisposable)b).Dispose();
        Assert.Equal(0, _reactor.StaleCompletions);
    }

    [Fact]
    public async Task ADisposedReactorFailsNewRequestsAsUnavailable()
    {
        using var buffer = new NativeBuffer(Block);
        await _device.ReadAsync(0, buffer.Memory);
        _reactor.Dispose();
        var e = await Assert.ThrowsAsync<BlockDeviceException>(() => _device.ReadAsync(0, buffer.Memory).AsTask());
        Assert.Equal(BlockError.Unavailable, e.Error);
    }
}
