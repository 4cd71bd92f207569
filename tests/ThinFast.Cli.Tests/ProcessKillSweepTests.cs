using System.Diagnostics;
using System.Security.Cryptography;

namespace ThinFast.Cli.Tests;

/// <summary>
/// SIGKILL of the real <c>thinfast serve</c> at random moments while writers keep requests in
/// flight on two volumes (one over an origin file, one without), then a restart. After each kill,
/// on the files it left and again after the restart: thin_check and analyze.py pass with no leaked
/// block, the origin file is unchanged, and every write acknowledged with FUA or before a FLUSH
/// that completed reads back (or something written after it; <see cref="VolumeLedger"/>).
/// </summary>
/// <remarks>CI runs 10 kills; <c>THINFAST_KILL_SWEEP_KILLS=N</c> runs N (the long form, e.g. 50)
/// and <c>THINFAST_KILL_SWEEP_SEED</c> repeats a run's choices of requests and kill delays
/// (docs/cli.md).</remarks>
public sealed class ProcessKillSweepTests
{
    private const int BlockSize = 64 * 1024;
    private const int VolumeBytes = 16 << 20;
    private const int DepthPerVolume = 8;

    [Fact]
    public async Task SigkillAtRandomMomentsLosesNoDurableWriteAndLeaksNoBlock()
    {
        var cancel = TestContext.Current.CancellationToken;
        string thinCheck = Cli.Require("thin_check", "thin-provisioning-tools"), python = Cli.Require("python3", "python3");
        string analyze = Cli.AnalyzePy;
        int kills = int.TryParse(Environment.GetEnvironmentVariable("THINFAST_KILL_SWEEP_KILLS"), out int k) ? k : 10;
        int seed = int.TryParse(Environment.GetEnvironmentVariable("THINFAST_KILL_SWEEP_SEED"), out int s) ? s : Random.Shared.Next();
        var random = new Random(seed);
        var output = TestContext.Current.TestOutputHelper!;
        output.WriteLine($"seed {seed} (THINFAST_KILL_SWEEP_SEED repeats its choices), {kills} kills");

        using var t = new TempDir();
        string pool = t["p"], socket = t["nbd.sock"], metadata = Path.Combine(t["p"], "metadata"), originPath = t["origin.img"];
        var origin = new byte[VolumeBytes];
        random.NextBytes(origin);
        File.WriteAllBytes(originPath, origin);
        byte[] originHash = SHA256.HashData(origin);
        Assert.Equal(0, Cli.Run("pool", "create", pool, "--data-size", "128M", "--block-size", "64K").ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "over", "--origin", originPath).ExitCode);
        Assert.Equal(0, Cli.Run("volume", "create", pool, "plain", "--size", "16M").ExitCode);
        VolumeLedger[] ledgers = [new("over", VolumeBytes, origin), new("plain", VolumeBytes, null)];

        void CheckFiles(string when)
        {
            var check = Cli.Tool(thinCheck, [metadata]);
            Assert.True(check.ExitCode == 0, $"thin_check {when}:\n{check}");
            // Without --allow-data-leaks analyze.py fails on a leaked data block too.
            var recount = Cli.Tool(python, [analyze, metadata]);
            Assert.True(recount.ExitCode == 0 && recount.Stdout.Contains("analyze: consistent"), $"analyze.py {when}:\n{recount}");
            Assert.DoesNotContain("leaked data blocks", recount.Stdout);
            Assert.True(SHA256.HashData(File.ReadAllBytes(originPath)).AsSpan().SequenceEqual(originHash), $"the origin file changed ({when})");
        }

        var inFlightAtKill = new List<(int Writes, int All)>();
        long requests = 0, durableChecked = 0, lost = 0, badSectors = 0;
        for (int round = 0; round <= kills; round++)
        {
            using var server = new ServeTests.Server("serve", pool, "--socket", socket);
            Assert.DoesNotContain("reclaimed", server.Log);
            if (round > 0)
            {
                // What the killed server left, read by the restarted one.
                foreach (var ledger in ledgers)
                {
                    var verdict = ledger.Judge(await ReadVolumeAsync(socket, ledger.Name, cancel));
                    durableChecked += verdict.DurableChecked;
                    lost += verdict.LostWrites;
                    badSectors += verdict.BadSectors;
                    Assert.True(verdict.BadSectors == 0, $"after kill {round} (seed {seed}): {verdict.BadSectors} sectors hold what they may not, " +
                        $"{verdict.LostWrites} durable writes lost:\n{string.Join('\n', verdict.Problems)}\n--- serve log\n{server.Log}");
                }
                // Nothing writes the metadata while no client writes (the periodic commit only runs
                // when something changed), so the files can be checked under the running server.
                CheckFiles($"after the restart following kill {round}");
            }
            if (round == kills)
            {
                Assert.Equal(0, server.Signal("TERM"));
                break;
            }

            var clients = new List<PipelinedNbdClient>();
            var writers = new List<KillSweepWriter>();
            foreach (var ledger in ledgers)
            {
                var client = await PipelinedNbdClient.ConnectAsync(socket, ledger.Name, cancel);
                clients.Add(client);
                writers.Add(new KillSweepWriter(client, ledger, BlockSize, random.Next()));
            }
            var running = Task.WhenAll(writers.Select(w => w.RunAsync(DepthPerVolume)));
            // A random moment, then the first one with several writes in flight.
            await Task.Delay(random.Next(20, 400), cancel);
            var deadline = Stopwatch.StartNew();
            // Polled at a millisecond, not spun: a spin would take a core from the server and the
            // writers it waits for.
            while (writers.Sum(w => w.WritesInFlight) < 4 && deadline.Elapsed < TimeSpan.FromSeconds(5))
                await Task.Delay(1, cancel);
            (int Writes, int All) atKill = (writers.Sum(w => w.WritesInFlight), writers.Sum(w => w.InFlight));
            server.KillNow();
            await running.WaitAsync(TimeSpan.FromSeconds(30), cancel);
            foreach (var client in clients)
                await client.DisposeAsync();
            Assert.True(writers.All(w => w.Error is null), string.Join('\n', writers.Select(w => w.Error)) + "\n--- serve log\n" + server.Log);
            Assert.True(atKill.Writes >= 2, $"kill {round + 1} found only {atKill.Writes} writes in flight");
            inFlightAtKill.Add(atKill);
            requests += writers.Sum(w => w.Completed);
            output.WriteLine($"kill {round + 1}: {atKill.Writes} writes/discards ({atKill.All} requests) in flight, {writers.Sum(w => w.Completed)} requests answered in the round");
            // The files as the kill left them, before anything reopens them.
            CheckFiles($"on the files kill {round + 1} left");
        }

        var writesAtKill = inFlightAtKill.Select(x => x.Writes).Order().ToArray();
        output.WriteLine($"{kills} kills, {requests} requests answered, writes in flight at the kill min {writesAtKill[0]} median {writesAtKill[writesAtKill.Length / 2]} max {writesAtKill[^1]}; " +
            $"{durableChecked} durable writes checked, {lost} lost, {badSectors} bad sectors, 0 leaks (analyze.py and thin_check {2 * kills} times each)");
        Assert.Equal(0, lost);
    }

    /// <summary>The whole volume, read through the server with four 1 MiB reads in flight.</summary>
    private static async Task<byte[]> ReadVolumeAsync(string socket, string export, CancellationToken cancel)
    {
        await using var client = await PipelinedNbdClient.ConnectAsync(socket, export, cancel);
        Assert.Equal(VolumeBytes, client.Size);
        var contents = new byte[VolumeBytes];
        const int Chunk = 1 << 20;
        var reads = new List<Task<uint>>();
        for (int offset = 0; offset < VolumeBytes; offset += Chunk)
            reads.Add(client.ReadAsync(offset, contents.AsMemory(offset, Chunk)));
        Assert.All(await Task.WhenAll(reads), error => Assert.Equal(0u, error));
        return contents;
    }
}
