using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using ThinFast.Engine;
using ThinFast.IO;

namespace ThinFast.Benchmarks.Engine;

/// <summary>
/// The engine in-process (no NBD) next to fio on the same files in the same run: fio reads the
/// origin file or the pool's data file directly with the same pattern, which is what a thin volume
/// costs nothing over. Prints both figures, the ratio, and ThinFast's allocated bytes per I/O.
/// </summary>
public sealed class EngineVsFio : IComparisonRun
{
    public string Name => "engine-vs-fio";

    public string Description => "thin volumes in-process vs fio --ioengine=io_uring --direct=1 on the same files (origin/provisioned 4K QD32, first writes, 1M seq)";

    private const int BlockSize = PoolOptions.DefaultBlockSize;

    private enum Pattern { Random, Sequential, EachBlockOnce }

    private sealed record Workload(string Name, string Volume, bool Write, int IoSize, int QueueDepth, Pattern Pattern,
        string FioFile, string FioRw, int FioBs, string Note = "");

    private sealed record Result(double Iops, double MiBs, double AllocPerIo);

    public async Task<int> RunAsync(string[] args)
    {
        string dir = "/var/tmp/thinfast-bench/engine";
        long originSize = 1L << 30;
        int runtime = 8, ramp = 2;
        string? only = null;
        bool originPageCache = false;
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--dir": dir = args[++i]; break;
                case "--runtime": runtime = int.Parse(args[++i], CultureInfo.InvariantCulture); break;
                case "--size-mib": originSize = long.Parse(args[++i], CultureInfo.InvariantCulture) << 20; break;
                case "--only": only = args[++i]; break;
                case "--origin-page-cache": originPageCache = true; break;
                default:
                    Console.Error.WriteLine($"unknown argument {args[i]}; usage: engine-vs-fio [--dir D] [--runtime S] [--size-mib N] [--only NAME] [--origin-page-cache]");
                    return 2;
            }
        }
        Directory.CreateDirectory(dir);
        using var fioMemory = FioRunner.UseHugePages(out string fioMemoryNote);
        Console.WriteLine(fioMemoryNote);
        string basePath = Path.Combine(dir, "base.img");
        if (!File.Exists(basePath) || new FileInfo(basePath).Length != originSize)
        {
            File.Delete(basePath);
            Console.WriteLine($"writing a {originSize >> 20} MiB base image ...");
            await FioRunner.RunRawAsync($"--name=fill --filename={basePath} --size={originSize} --rw=write --bs=1m --ioengine=io_uring --direct=1 --iodepth=8 --end_fsync=1 --output=/dev/null");
        }
        string poolDir = Path.Combine(dir, "pool");
        if (Directory.Exists(poolDir))
            Directory.Delete(poolDir, recursive: true);
        Directory.CreateDirectory(poolDir);
        var files = PoolFiles.InFolder(poolDir);
        long dataSize = 4 * originSize;

        // fio reads the origin O_DIRECT, so by default the pool does too (like for like); with
        // --origin-page-cache it uses the engine's default, the page cache.
        Console.WriteLine($"origin read {(originPageCache ? "through the page cache (the pool's default)" : "O_DIRECT, as fio reads it")}");
        using var pool = ThinPool.CreateFiles(files, 256L << 20, dataSize, new PoolOptions { OriginPageCache = originPageCache },
            new BlockDeviceOptions { Backend = BlockDeviceBackend.IoUring });
        pool.CreateVolume("origin", originSize, basePath);
        var provisioned = pool.CreateVolume("provisioned", originSize);
        pool.CreateVolume("fresh-whole", originSize, basePath);
        pool.CreateVolume("fresh-partial", originSize, basePath);
        Console.WriteLine($"provisioning {originSize >> 20} MiB of volume 'provisioned' ...");
        await Run(pool.GetVolume("provisioned"), new Workload("fill", "provisioned", true, 1 << 20, 8, Pattern.EachBlockOnce, "", "", 0), runtime: 3600, ramp: 0, stopWhenDone: true);
        await provisioned.FlushAsync();
        // Volume 'provisioned' was written first and sequentially, so its blocks are the first
        // originSize bytes of the data file: fio on that range is the same disk work.
        string dataPath = files.DataPath;
        string freshPeer = Path.Combine(dir, "fresh-peer.img");

        var workloads = new[]
        {
            new Workload("origin-randread-4k-qd32", "origin", false, 4096, 32, Pattern.Random, basePath, "randread", 4096),
            new Workload("prov-randread-4k-qd32", "provisioned", false, 4096, 32, Pattern.Random, dataPath, "randread", 4096),
            new Workload("prov-randwrite-4k-qd32", "provisioned", true, 4096, 32, Pattern.Random, dataPath, "randwrite", 4096),
            // First writes land in never-written (preallocated, unwritten) parts of the data file,
            // where the file system converts extents on every write; the peer gets the same: a
            // new file fio preallocates and writes once.
            new Workload("first-write-64k-qd32", "fresh-whole", true, BlockSize, 32, Pattern.EachBlockOnce, freshPeer, "randwrite", BlockSize, "peer: 64K writes into a new preallocated file"),
            new Workload("first-write-4k-qd32", "fresh-partial", true, 4096, 32, Pattern.EachBlockOnce, freshPeer, "randwrite", BlockSize, "peer: 64K writes into a new preallocated file (each first write reads and writes 64K)"),
            new Workload("origin-seqread-1m-qd8", "origin", false, 1 << 20, 8, Pattern.Sequential, basePath, "read", 1 << 20),
        };

        Console.WriteLine($"{"workload",-26} {"thinfast IOPS",14} {"fio IOPS",10} {"ratio",6} {"MiB/s",8} {"alloc B/IO",11}  note");
        foreach (var w in workloads)
        {
            if (only is not null && w.Name != only)
                continue;
            // First writes are one pass over fresh blocks on both sides, measured whole: a ramp
            // would use up most of the fresh blocks, and a time-based fio run would go on
            // rewriting blocks it had already written.
            bool onePass = w.Pattern == Pattern.EachBlockOnce;
            var mine = await Run(pool.GetVolume(w.Volume), w, runtime, onePass ? 0 : ramp, stopWhenDone: onePass);
            if (w.FioFile == freshPeer)
                File.Delete(freshPeer);
            var peer = await FioRunner.RunAsync(w.FioFile, originSize, w.FioRw, w.FioBs, w.QueueDepth, runtime, ramp, eachBlockOnce: onePass);
            Console.WriteLine($"{w.Name,-26} {mine.Iops,14:F0} {peer.Iops,10:F0} {mine.Iops / peer.Iops,6:F2} {mine.MiBs,8:F1} {mine.AllocPerIo,11:F3}  {w.Note}");
        }
        return 0;
    }

    private static async Task<Result> Run(IBlockVolume volume, Workload w, int runtime, int ramp, bool stopWhenDone)
    {
        using var buffers = new AlignedBufferPool(w.IoSize, w.QueueDepth);
        var cursor = new Cursor(volume.Size / w.IoSize, w.Pattern, w.IoSize, volume.Size);
        var workers = new Worker[w.QueueDepth];
        for (int i = 0; i < workers.Length; i++)
        {
            Random.Shared.NextBytes(buffers.Buffers[i].GetSpan());
            workers[i] = new Worker(volume, buffers.Buffers[i].Memory, w.Write, cursor);
        }
        var tasks = workers.Select(x => x.RunAsync()).ToArray();
        await Task.Delay(TimeSpan.FromSeconds(ramp));
        long ops0 = workers.Sum(x => x.Completed);
        long alloc0 = GC.GetTotalAllocatedBytes(precise: true);
        long start = Stopwatch.GetTimestamp();
        if (stopWhenDone)
            await Task.WhenAll(tasks);
        else
            await Task.Delay(TimeSpan.FromSeconds(runtime));
        long alloc1 = GC.GetTotalAllocatedBytes(precise: true);
        long ops1 = workers.Sum(x => x.Completed);
        double seconds = Stopwatch.GetElapsedTime(start).TotalSeconds;
        foreach (var x in workers)
            x.Stop();
        await Task.WhenAll(tasks);
        long ops = Math.Max(1, ops1 - ops0);
        return new Result(ops / seconds, ops * (double)w.IoSize / seconds / (1 << 20), (alloc1 - alloc0) / (double)ops);
    }

    /// <summary>Hands out offsets: random, sequential (wrapping), or each I/O-sized slot once in a
    /// shuffled order (first writes: every write provisions a new block) and then none.</summary>
    private sealed class Cursor
    {
        private readonly long _slots;
        private readonly Pattern _pattern;
        private readonly int _ioSize;
        private readonly long[]? _order;
        private long _next;

        public Cursor(long slots, Pattern pattern, int ioSize, long volumeSize)
        {
            _slots = slots;
            _pattern = pattern;
            _ioSize = ioSize;
            if (pattern == Pattern.EachBlockOnce)
            {
                // One I/O per data block (or per I/O-sized run of blocks), at a random aligned place
                // inside the block when the I/O is smaller than one.
                long unit = Math.Max(ioSize, BlockSize);
                long units = volumeSize / unit;
                _order = new long[units];
                var random = new Random(7);
                for (long u = 0; u < units; u++)
                    _order[u] = u * unit + (ioSize < BlockSize ? random.Next(BlockSize / ioSize) * (long)ioSize : 0);
                random.Shuffle(_order);
            }
        }

        /// <summary>The next offset, or -1 when an each-block-once run has used every block.</summary>
        public long Next(ref ulong rng)
        {
            switch (_pattern)
            {
                case Pattern.Sequential:
                    return (Interlocked.Increment(ref _next) - 1) % _slots * _ioSize;
                case Pattern.EachBlockOnce:
                    long i = Interlocked.Increment(ref _next) - 1;
                    return i < _order!.Length ? _order[i] : -1;
                default:
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    return (long)(rng % (ulong)_slots) * _ioSize;
            }
        }
    }

    private sealed class Worker(IBlockVolume volume, Memory<byte> buffer, bool write, Cursor cursor)
    {
        private long _completed;
        private volatile bool _stop;
        private ulong _rng = (ulong)Random.Shared.NextInt64(1, long.MaxValue);

        public long Completed => Volatile.Read(ref _completed);

        public void Stop() => _stop = true;

        [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
        private async ValueTask LoopAsync()
        {
            while (!_stop)
            {
                long offset = cursor.Next(ref _rng);
                if (offset < 0)
                    return;
                if (write)
                    await volume.WriteAsync(offset, buffer);
                else
                    await volume.ReadAsync(offset, buffer);
                Volatile.Write(ref _completed, _completed + 1);
            }
        }

        public Task RunAsync() => LoopAsync().AsTask();
    }
}
