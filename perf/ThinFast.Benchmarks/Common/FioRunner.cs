using System.Globalization;
using System.Diagnostics;
using System.Text.Json;

namespace ThinFast.Benchmarks;

/// <summary>Runs fio as the peer of a comparison run and reads its JSON output.</summary>
internal static class FioRunner
{
    public sealed record Figures(double Iops, double MiBs, double CpuUsPerIo);

    /// <summary>Extra fio arguments for its I/O buffers: "--iomem=shmhuge" inside a
    /// <see cref="UseHugePages"/> scope, else empty (fio's default, malloc'ed small pages).</summary>
    private static string s_memoryArguments = "";

    /// <summary>
    /// Gives fio's buffers huge pages, as ThinFast's buffer pools have (NativeSlab): a 1 MiB buffer
    /// on 4 KiB pages is 256 pieces, more than a virtio disk takes in one request (254), so each
    /// 1 MiB transfer is split in two, and the comparison would measure page size, not engines.
    /// Reserves hugetlb pages for the run (root only) and gives them back on dispose. Returns a
    /// description of what fio gets.
    /// </summary>
    public static IDisposable UseHugePages(out string description)
    {
        const string Knob = "/proc/sys/vm/nr_hugepages";
        const int Pages = 32; // 64 MiB: fio needs QD x block size, 8 MiB at most here
        try
        {
            int before = int.Parse(File.ReadAllText(Knob).Trim(), CultureInfo.InvariantCulture);
            File.WriteAllText(Knob, (before + Pages).ToString(CultureInfo.InvariantCulture));
            int after = int.Parse(File.ReadAllText(Knob).Trim(), CultureInfo.InvariantCulture);
            if (after < before + Pages)
            {
                File.WriteAllText(Knob, before.ToString(CultureInfo.InvariantCulture));
                description = $"fio buffers on small pages (only {after - before} of {Pages} huge pages could be reserved)";
                return new Scope(null);
            }
            s_memoryArguments = "--iomem=shmhuge";
            description = "fio buffers on huge pages (--iomem=shmhuge), as ThinFast's";
            return new Scope(() =>
            {
                s_memoryArguments = "";
                File.WriteAllText(Knob, before.ToString(CultureInfo.InvariantCulture));
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            description = $"fio buffers on small pages (huge pages not reservable: {e.Message})";
            return new Scope(null);
        }
    }

    private sealed class Scope(Action? undo) : IDisposable
    {
        public void Dispose() => undo?.Invoke();
    }

    public static async Task<bool> IsInstalledAsync()
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo("fio", "--version") { RedirectStandardOutput = true })!;
            await p.WaitForExitAsync();
            return p.ExitCode == 0;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return false;
        }
    }

    /// <summary>A time-based run after a ramp, or with <paramref name="eachBlockOnce"/> one pass that
    /// touches every <paramref name="bs"/> block of the file once in random order (fio's random
    /// map) and is measured whole: what first writes into a new file are.</summary>
    public static async Task<Figures> RunAsync(string file, long size, string rw, int bs, int qd, int runtime, int ramp, bool eachBlockOnce = false)
    {
        string pattern = eachBlockOnce
            ? "--randrepeat=0"
            : $"--time_based --runtime={runtime} --ramp_time={ramp} --randrepeat=0 --norandommap";
        string output = await RunRawAsync(
            $"--name=peer --filename={file} --size={size} --ioengine=io_uring --direct=1 --rw={rw} --bs={bs} " +
            $"--iodepth={qd} {pattern} {s_memoryArguments} --output-format=json");
        using var json = JsonDocument.Parse(output[output.IndexOf('{')..]);
        var job = json.RootElement.GetProperty("jobs")[0];
        var dir = job.GetProperty(rw.Contains("write") ? "write" : "read");
        double iops = dir.GetProperty("iops").GetDouble();
        double bw = dir.GetProperty("bw_bytes").GetDouble();
        // usr_cpu/sys_cpu are percent of one CPU over the job's run time.
        double cpuPercent = job.GetProperty("usr_cpu").GetDouble() + job.GetProperty("sys_cpu").GetDouble();
        return new Figures(iops, bw / (1 << 20), cpuPercent / 100 * 1e6 / iops);
    }

    public static async Task<string> RunRawAsync(string arguments)
    {
        using var p = Process.Start(new ProcessStartInfo("fio", arguments) { RedirectStandardOutput = true, RedirectStandardError = true })
            ?? throw new InvalidOperationException("fio could not be started: apt-get install fio");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"fio {arguments} exited with {p.ExitCode}: {await stderr}");
        return await stdout;
    }
}
