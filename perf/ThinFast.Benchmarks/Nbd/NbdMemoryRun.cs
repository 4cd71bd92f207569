using System.Net;
using System.Runtime.InteropServices;
using ThinFast.Nbd;

namespace ThinFast.Benchmarks.Nbd;

/// <summary>
/// Serves a <see cref="RamVolume"/> over NBD until SIGTERM/SIGINT, so perf/nbd-peers.sh can point
/// fio at ThinFast's NBD server next to qemu-nbd and nbdkit. The comparison itself (figures and
/// ratios) is printed by that script, which owns the peers' command lines.
/// </summary>
public sealed class NbdMemoryRun : IComparisonRun
{
    public string Name => "nbd-memory";

    public string Description => "serve an in-memory volume over NBD: --socket PATH | --port N, [--size BYTES] [--export NAME] [--pid-file F]";

    public async Task<int> RunAsync(string[] args)
    {
        string? socketPath = null, pidFile = null;
        int? port = null;
        long size = 1L << 30;
        string export = "";
        for (int i = 0; i < args.Length; i++)
        {
            string Value() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--socket": socketPath = Value(); break;
                case "--port": port = int.Parse(Value()); break;
                case "--size": size = long.Parse(Value()); break;
                case "--export": export = Value(); break;
                case "--pid-file": pidFile = Value(); break;
                default:
                    Console.Error.WriteLine($"nbd-memory: unknown argument '{args[i]}'; {Description}");
                    return 2;
            }
        }
        if (socketPath is null && port is null)
        {
            Console.Error.WriteLine($"nbd-memory: give --socket or --port; {Description}");
            return 2;
        }

        using var volume = new RamVolume(size, name: export.Length == 0 ? "ram" : export);
        var server = new NbdServer([new NbdExport(volume)], new NbdServerOptions { DefaultExport = volume.Name },
            message => Console.Error.WriteLine(message));
        if (socketPath is not null)
            server.ListenUnix(socketPath);
        if (port is not null)
            server.ListenTcp(new IPEndPoint(IPAddress.Loopback, port.Value));
        if (pidFile is not null)
            await File.WriteAllTextAsync(pidFile, Environment.ProcessId.ToString());

        var stop = new TaskCompletionSource();
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
        Console.Error.WriteLine($"nbd-memory: serving {size} bytes as '{volume.Name}' on {socketPath ?? $"127.0.0.1:{port}"}");
        await stop.Task;
        await server.StopAsync();
        return 0;
    }
}
