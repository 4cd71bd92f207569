using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using System.Text.Json;
using ThinFast.IO;
using ThinFast.IO.Uring;

namespace ThinFast.Benchmarks.Device;

/// <summary>
/// The raw device limit: fio with io_uring + O_DIRECT against ThinFast's io_uring device on the
/// same preallocated, fully written file, same patterns, one after the other in one run.
/// </summary>
public sealed class DeviceVsFio : IComparisonRun
{
    public string Name => "device-vs-fio";

    public string Description => "io_uring device vs fio --ioengine=io_uring --direct=1 (4K randread/randwrite QD32, 1M seq read QD8)";

    private sealed record Result(double Iops, double MiBs, double CpuUsPerIo, double AllocPerIo);

    private static void Print(Workload w, string engine, Result r) =>
        Console.WriteLine($"{w.Name,-18} {engine,-9} {r.Iops,10:F0} {r.MiBs,9:F1} {r.CpuUsPerIo,10:F2} {(double.IsNaN(r.AllocPerIo) ? "-" : r.AllocPerIo.ToString("F3", CultureInfo.InvariantCulture)),11}");

    private static double MedianOf(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        return v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
    }

    private static Result Median(IEnumerable<Result> results)
    {
        var r = results.ToArray();
        return new Result(MedianOf(r.Select(x => x.Iops)), MedianOf(r.Select(x => x.MiBs)),
            MedianOf(r.Select(x => x.CpuUsPerIo)), MedianOf(r.Select(x => x.AllocPerIo)));
    }

    private sealed record Workload(string Name, string FioRw, int BlockSize, int QueueDepth, bool Write, bool Sequential);

    private static readonly Workload[] Workloads =
    [
        new("4k-randread-qd32", "randread", 4096, 32, Write: false, Sequential: false),
        new("4k-randwrite-qd32", "randwrite", 4096, 32, Write: true, Sequential: false),
        new("1m-seqread-qd8", "read", 1 << 20, 8, Write: false, Sequential: true),
    ];

    public async Task<int> RunAsync(string[] args)
    {
        string file = "/var/tmp/thinfast-bench/device-vs-fio.img";
        long size = 2L << 30;
        int runtime = 10, ramp = 2, repeat = 1;
        bool keep = false;
        TimeSpan? spin = null;
        string? only = null;
        bool registered = true;
        uint submitBatch = IoUringReactor.DefaultSubmitBatch;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--file": file = args[++i]; break;
                case "--size-mib": size = long.Parse(args[++i], CultureInfo.InvariantCulture) << 20; break;
                case "--runtime": runtime = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--ramp": ramp = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--repeat": repeat = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--keep": keep = true; break;
                case "--only": only = args[++i]; break;
                case "--plain-buffers": registered = false; break;
                case "--submit-batch": submitBatch = uint.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--spin-us": spin = TimeSpan.FromMicroseconds(double.Parse(args[++i], CultureInfo.InvariantCulture)); break;
                default:
                    Console.Error.WriteLine($"unknown argument '{args[i]}'; usage: device-vs-fio [--file PATH] [--size-mib N] [--runtime S] [--ramp S] [--repeat N] [--keep] [--spin-us N] [--only WORKLOAD] [--plain-buffers] [--submit-batch N]");
                    return 2;
            }
        }
        if (!await FioRunner.IsInstalledAsync())
        {
            Console.Error.WriteLine("fio is required: apt-get install fio");
            return 1;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        bool created = await PrepareAsync(file, size);
        using var fioMemory = FioRunner.UseHugePages(out string fioMemoryNote);
        Console.WriteLine(fioMemoryNote);

        Console.WriteLine($"reactor spin {(spin ?? IoUringReactor.DefaultSpin).TotalMicroseconds} us, submit batch {submitBatch}, {(IoUringReactor.Shared.DefersTaskRun ? "single-issuer DEFER_TASKRUN ring" : "plain ring")}, {(registered ? "registered (fixed)" : "plain")} buffers; file {file} ({size >> 20} MiB, fully written), runtime {runtime} s after {ramp} s ramp, {repeat} repetition(s), alternating fio / ThinFast");
        Console.WriteLine($"{"workload",-18} {"engine",-9} {"IOPS",10} {"MiB/s",9} {"CPU us/IO",10} {"alloc B/IO",11}");
        var summary = new List<string>();
        foreach (var w in Workloads)
        {
            if (only is not null && w.Name != only)
                continue;
            var pairs = new List<(Result Fio, Result ThinFast)>();
            for (int r = 0; r < repeat; r++)
            {
                var figures = await FioRunner.RunAsync(file, size, w.FioRw, w.BlockSize, w.QueueDepth, runtime, ramp);
                var f = new Result(figures.Iops, figures.MiBs, figures.CpuUsPerIo, double.NaN);
                Print(w, "fio", f);
                var t = RunThinFast(file, w, runtime, ramp, spin, submitBatch, registered);
                Print(w, "ThinFast", t);
                pairs.Add((f, t));
            }
            var fio = Median(pairs.Select(p => p.Fio));
            var tf = Median(pairs.Select(p => p.ThinFast));
            double ratio = MedianOf(pairs.Select(p => p.ThinFast.Iops / p.Fio.Iops));
            summary.Add($"{w.Name,-18} fio {fio.Iops,8:F0} IOPS {fio.MiBs,7:F1} MiB/s {fio.CpuUsPerIo,5:F1} CPU-us/IO | " +
                $"ThinFast {tf.Iops,8:F0} IOPS {tf.MiBs,7:F1} MiB/s {tf.CpuUsPerIo,5:F1} CPU-us/IO {tf.AllocPerIo:F3} B/IO | ratio {ratio:F3}");
        }
        Console.WriteLine();
        Console.WriteLine("summary (medians over repetitions; ratio = median of ThinFast/fio IOPS per adjacent pair, target >= 0.95):");
        foreach (string line in summary)
            Console.WriteLine(line);
        if (created && !keep)
            File.Delete(file);
        return 0;
    }

    /// <summary>Creates the file with fio (sequential 1 MiB direct writes, so every block is
    /// allocated and written, none unwritten) unless a file of the right size is already there.</summary>
    private static async Task<bool> PrepareAsync(string file, long size)
    {
        if (File.Exists(file) && new FileInfo(file).Length == size)
            return false;
        File.Delete(file);
        Console.WriteLine($"writing {size >> 20} MiB to {file} ...");
        await FioRunner.RunRawAsync($"--name=fill --filename={file} --size={size} --rw=write --bs=1m --ioengine=io_uring --direct=1 --iodepth=8 --end_fsync=1 --output=/dev/null");
        return true;
    }

    private static Result RunThinFast(string file, Workload w, int runtime, int ramp, TimeSpan? spin, uint submitBatch, bool registered)
    {
        // Declared before the reactor so it is freed after the ring (and its fixed-buffer table) is gone.
        using var pool = new AlignedBufferPool(w.BlockSize, w.QueueDepth);
        if (!IoUringReactor.TryCreate(out var reactor, out string? why, entries: 256, spin: spin, submitBatch: submitBatch))
            throw new InvalidOperationException("io_uring unavailable: " + why);
        using var _ = reactor;
        if (registered)
            reactor.RegisterBuffers(pool);
        // Read jobs open the file read-only, as fio does.
        using var device = BlockDevices.Open(file, new BlockDeviceOptions { Backend = BlockDeviceBackend.IoUring, Reactor = reactor, ReadOnly = !w.Write });
        var shared = new SharedCursor(device.Length / w.BlockSize);
        var workers = new Worker[w.QueueDepth];
        using var done = new CountdownEvent(workers.Length);
        for (int i = 0; i < workers.Length; i++)
        {
            Random.Shared.NextBytes(pool.Buffers[i].GetSpan());
            workers[i] = new Worker(device, pool.Buffers[i], w, shared, seed: i + 1, done);
        }
        foreach (var worker in workers)
            worker.Start();
        Thread.Sleep(TimeSpan.FromSeconds(ramp));
        // Reading process CPU time parses /proc and allocates, so the allocation window sits
        // strictly inside the CPU window: it holds only the I/O and this thread's sleep.
        var process = Process.GetCurrentProcess();
        var cpu0 = process.TotalProcessorTime;
        long start = Stopwatch.GetTimestamp();
        long ops0 = SumCompleted(workers);
        long alloc0 = GC.GetTotalAllocatedBytes(precise: true);
        Thread.Sleep(TimeSpan.FromSeconds(runtime));
        long alloc1 = GC.GetTotalAllocatedBytes(precise: true);
        long ops1 = SumCompleted(workers);
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        process.Refresh();
        var cpu = process.TotalProcessorTime - cpu0;
        foreach (var worker in workers)
            worker.Stop();
        if (!done.Wait(TimeSpan.FromSeconds(30)))
            throw new TimeoutException("ThinFast workers did not stop");
        var error = workers.Select(x => x.Error).FirstOrDefault(e => e is not null);
        if (error is not null)
            throw new InvalidOperationException("I/O failed during the benchmark", error);
        long ops = ops1 - ops0;
        ops = Math.Max(ops, 1);
        return new Result(ops / seconds, ops * (double)w.BlockSize / seconds / (1 << 20), cpu.TotalMicroseconds / ops, (alloc1 - alloc0) / (double)ops);
    }

    private static long SumCompleted(Worker[] workers)
    {
        long total = 0;
        foreach (var w in workers)
            total += w.Completed;
        return total;
    }

    /// <summary>The next block for sequential workloads, shared by all workers of a run.</summary>
    private sealed class SharedCursor(long blocks)
    {
        private long _next;
        public long Blocks { get; } = blocks;
        public long Next() => (Interlocked.Increment(ref _next) - 1) % Blocks;
    }

    /// <summary>One queue-depth slot: each completion (on the reactor thread) issues the next
    /// request at once, the way fio keeps its queue full.</summary>
    private sealed class Worker
    {
        private readonly IBlockDevice _device;
        private readonly NativeBuffer _buffer;
        private readonly Workload _workload;
        private readonly SharedCursor _cursor;
        private readonly CountdownEvent _done;
        private readonly Action _onCompleted;
        private ulong _rng;
        private long _completed;
        private volatile bool _stop;
        private ValueTaskAwaiter _awaiter;

        public Worker(IBlockDevice device, NativeBuffer buffer, Workload workload, SharedCursor cursor, int seed, CountdownEvent done)
        {
            _device = device;
            _buffer = buffer;
            _workload = workload;
            _cursor = cursor;
            _done = done;
            _rng = (ulong)seed * 0x9E3779B97F4A7C15;
            _onCompleted = OnCompleted;
        }

        public long Completed => Volatile.Read(ref _completed);
        public Exception? Error { get; private set; }

        public void Start() => Issue();

        public void Stop() => _stop = true;

        private void Issue()
        {
            long block;
            if (_workload.Sequential)
            {
                block = _cursor.Next();
            }
            else
            {
                _rng ^= _rng << 13;
                _rng ^= _rng >> 7;
                _rng ^= _rng << 17;
                block = (long)(_rng % (ulong)_cursor.Blocks);
            }
            long offset = block * _workload.BlockSize;
            var task = _workload.Write ? _device.WriteAsync(offset, _buffer.Memory) : _device.ReadAsync(offset, _buffer.Memory);
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
                Volatile.Write(ref _completed, _completed + 1);
            }
            catch (Exception e)
            {
                Error = e;
                _stop = true;
            }
            if (_stop)
                _done.Signal();
            else
                Issue();
        }
    }
}
