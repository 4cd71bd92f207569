using System.Runtime.InteropServices;
using ThinFast.Engine;
using ThinFast.Nbd;

namespace ThinFast.Benchmarks.NbdThin;

/// <summary>
/// Creates a pool in a folder, one or more thin volumes over a base image (the external origin),
/// and serves them over NBD on a unix socket until SIGTERM/SIGINT, so perf/thin-peers.sh can run
/// fio against real thin volumes next to qemu-nbd/qcow2 and nbdkit-cow. That script prints the
/// figures and ratios.
/// </summary>
public sealed class NbdThinRun : IComparisonRun
{
    public string Name => "nbd-thin";

    public string Description =>
        "serve thin volumes over a base image: --pool DIR --base IMAGE --socket PATH [--volumes a,b] [--block-size BYTES] [--data-size BYTES] [--commit-interval-ms N] [--origin-direct] [--pid-file F]";

    public async Task<int> RunAsync(string[] args)
    {
        string? poolDir = null, baseImage = null, socketPath = null, pidFile = null;
        string[] volumes = ["vol"];
        int blockSize = PoolOptions.DefaultBlockSize;
        long? dataSize = null;
        var commitInterval = new PoolOptions().CommitInterval;
        bool originPageCache = true;
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--pool": poolDir = Value(); break;
                case "--base": baseImage = Value(); break;
                case "--socket": socketPath = Value(); break;
                case "--volumes": volumes = Value().Split(',', StringSplitOptions.RemoveEmptyEntries); break;
                case "--block-size": blockSize = int.Parse(Value()); break;
                case "--data-size": dataSize = long.Parse(Value()); break;
                case "--commit-interval-ms": commitInterval = TimeSpan.FromMilliseconds(int.Parse(Value())); break;
                case "--pid-file": pidFile = Value(); break;
                case "--origin-direct": originPageCache = false; break;
                default:
                    Console.Error.WriteLine($"nbd-thin: unknown argument '{args[i]}'; {Description}");
                    return 2;
            }
        }
        if (poolDir is null || baseImage is null || socketPath is null || volumes.Length == 0)
        {
            Console.Error.WriteLine($"nbd-thin: --pool, --base and --socket are required; {Description}");
            return 2;
        }
        if (!File.Exists(baseImage))
        {
            Console.Error.WriteLine($"nbd-thin: base image {baseImage} does not exist");
            return 2;
        }
        long baseSize = new FileInfo(baseImage).Length;
        Directory.CreateDirectory(poolDir);

        // Data space for every volume to be fully provisioned, so a benchmark never waits for space.
        var pool = ThinPool.CreateFiles(PoolFiles.InFolder(poolDir), 64L << 20, dataSize ?? baseSize * volumes.Length,
            new PoolOptions { BlockSize = blockSize, CommitInterval = commitInterval, OriginPageCache = originPageCache, Log = message => Console.Error.WriteLine($"nbd-thin: {message}") });
        var exports = volumes.Select(v => new NbdExport(pool.CreateVolume(v, baseSize, baseImage))).ToList();
        var server = new NbdServer(exports, new NbdServerOptions { DefaultExport = exports[0].Name },
            message => Console.Error.WriteLine(message));
        server.ListenUnix(socketPath);
        if (pidFile is not null)
            await File.WriteAllTextAsync(pidFile, Environment.ProcessId.ToString());

        var stop = new TaskCompletionSource();
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
        Console.Error.WriteLine($"nbd-thin: serving {string.Join(',', volumes)} ({baseSize} bytes over {baseImage}, {blockSize} byte blocks, origin {(originPageCache ? "page-cached" : "O_DIRECT")}) on {socketPath} via {server.TransportDescription}");
        await stop.Task;
        await server.StopAsync();
        // StopAsync may finish on the io_uring reactor thread, where a synchronous pool close
        // would wait on itself.
        await Task.Run(pool.Dispose);
        return 0;
    }
}
