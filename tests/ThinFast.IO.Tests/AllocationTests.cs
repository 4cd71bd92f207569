using System.Runtime.CompilerServices;
using ThinFast.IO.Uring;

namespace ThinFast.IO.Tests;

// Allocation and CPU figures are process-wide, so nothing else may run meanwhile.
[CollectionDefinition(nameof(QuietProcess), DisableParallelization = true)]
public sealed class QuietProcess;

/// <summary>Proves that steady-state io_uring I/O on registered buffers allocates nothing: not in
/// the device, the reactor, the pooled awaitables, nor the completion path.</summary>
[Collection(nameof(QuietProcess))]
public sealed class AllocationTests : IDisposable
{
    private const int Block = 4096;
    private readonly TempDir _dir = new();

    public void Dispose() => _dir.Dispose();

    [Fact]
    public void SteadyStateRegisteredIoAllocatesNothing()
    {
        Assert.True(IoUringReactor.TryCreate(out var reactor, out string? error), "io_uring is required: " + error);
        using var _ = reactor;
        using var pool = new AlignedBufferPool(Block, 16);
        reactor.RegisterBuffers(pool);
        string path = _dir.File("alloc");
        BlockDevices.Create(path, 1024 * Block, new BlockDeviceOptions { Backend = BlockDeviceBackend.Portable }).Dispose();
        using var device = BlockDevices.Open(path, new BlockDeviceOptions { Backend = BlockDeviceBackend.IoUring, Reactor = reactor });

        var workers = new LoopWorker[pool.Buffers.Count];
        for (int i = 0; i < workers.Length; i++)
            workers[i] = new LoopWorker(device, pool.Buffers[i], seed: i);

        using var done = new CountdownEvent(workers.Length);
        RunAll(workers, opsPerWorker: 300, done);
        // Earlier tests leave handles for the finalizer thread, whose work would count here.
        GC.Collect();
        GC.WaitForPendingFinalizers();

        // The count is process-wide, so an unrelated runtime thread can add a few bytes to one
        // window. An allocation on the I/O path would add at least one object per I/O (thousands
        // of bytes) to every window, so one exactly-zero window out of three is the proof.
        const int opsPerWorker = 500;
        long ops = (long)opsPerWorker * workers.Length;
        var windows = new List<long>();
        for (int attempt = 0; attempt < 3 && (windows.Count == 0 || windows[^1] != 0); attempt++)
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            RunAll(workers, opsPerWorker, done);
            windows.Add(GC.GetTotalAllocatedBytes(precise: true) - before);
        }

        Assert.All(workers, w => Assert.Null(w.Error));
        Assert.Equal(0, reactor.StaleCompletions);
        Assert.True(windows[^1] == 0, $"bytes allocated per window of {ops} registered-buffer I/Os: {string.Join(", ", windows)}");
    }

    private static void RunAll(LoopWorker[] workers, int opsPerWorker, CountdownEvent done)
    {
        done.Reset(workers.Length);
        foreach (var w in workers)
            w.Start(opsPerWorker, done);
        // Polled rather than Wait(): the event allocates its lock object the first time a Wait
        // actually blocks, which would land inside the measured window.
        long deadline = Environment.TickCount64 + 60_000;
        while (!done.IsSet)
        {
            Assert.True(Environment.TickCount64 < deadline, "I/O did not finish within 60 s");
            Thread.Sleep(1);
        }
    }

    /// <summary>Issues reads and writes back to back: each completion, running on the reactor
    /// thread, issues the next request, as an engine request loop would.</summary>
    private sealed class LoopWorker
    {
        private readonly IBlockDevice _device;
        private readonly NativeBuffer _buffer;
        private readonly Action _onCompleted;
        private readonly long _blocks;
        private ulong _state;
        private int _remaining;
        private CountdownEvent? _done;
        private ValueTaskAwaiter _awaiter;

        public LoopWorker(IBlockDevice device, NativeBuffer buffer, int seed)
        {
            _device = device;
            _buffer = buffer;
            _blocks = device.Length / Block;
            _state = (ulong)seed * 0x9E3779B97F4A7C15 + 1;
            _onCompleted = OnCompleted;
        }

        public Exception? Error { get; private set; }

        public void Start(int ops, CountdownEvent done)
        {
            _remaining = ops;
            _done = done;
            Issue();
        }

        private void Issue()
        {
            _state ^= _state << 13;
            _state ^= _state >> 7;
            _state ^= _state << 17;
            long offset = (long)(_state % (ulong)_blocks) * Block;
            var task = (_state & 1) == 0
                ? _device.ReadAsync(offset, _buffer.Memory)
                : _device.WriteAsync(offset, _buffer.Memory, (_state & 6) == 0 ? WriteFlags.ForceUnitAccess : WriteFlags.None);
            _awaiter = task.GetAwaiter();
            if (_awaiter.IsCompleted)
                OnCompleted();
            else
                _awaiter.UnsafeOnCompleted(_onCompleted);
        }

        private void OnCompleted()
        {
            try
            {
                _awaiter.GetResult();
            }
            catch (Exception e)
            {
                Error = e;
                _remaining = 0;
            }
            if (--_remaining > 0)
                Issue();
            else
                _done!.Signal();
        }
    }
}
