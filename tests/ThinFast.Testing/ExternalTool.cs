using System.Diagnostics;

namespace ThinFast.Testing;

/// <summary>Runs the external programs tests use as oracles and clients. A missing program is a
/// test failure that says how to install it, never a skip.</summary>
public static class ExternalTool
{
    private static readonly Dictionary<string, string> s_packages = new()
    {
        ["thin_check"] = "thin-provisioning-tools",
        ["thin_dump"] = "thin-provisioning-tools",
        ["thin_restore"] = "thin-provisioning-tools",
        ["python3"] = "python3",
        ["nbdinfo"] = "libnbd-bin",
        ["nbdcopy"] = "libnbd-bin",
        ["nbdsh"] = "libnbd-bin python3-libnbd",
        ["nbdfuse"] = "libnbd-bin",
        ["qemu-img"] = "qemu-utils",
        ["qemu-io"] = "qemu-utils",
        ["qemu-nbd"] = "qemu-utils",
        ["fio"] = "fio",
        ["mkfs.ext4"] = "e2fsprogs",
        ["e2fsck"] = "e2fsprogs",
        ["gcc"] = "gcc",
        ["openssl"] = "openssl",
    };

    /// <summary>Full path of <paramref name="program"/>, or an exception naming the package.</summary>
    public static string Require(string program)
    {
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':').Concat(["/usr/sbin", "/sbin"]))
        {
            var path = Path.Combine(dir, program);
            if (File.Exists(path))
                return path;
        }
        string package = s_packages.GetValueOrDefault(program, program);
        throw new InvalidOperationException($"'{program}' is not installed: run 'apt-get install {package}' (or scripts/install-deps.sh)");
    }

    public sealed record Result(int ExitCode, string StdOut, string StdErr)
    {
        public override string ToString() => $"exit {ExitCode}\nstdout:\n{StdOut}\nstderr:\n{StdErr}";
    }

    public static Result Run(string program, IEnumerable<string> arguments, TimeSpan? timeout = null, string? stdin = null)
    {
        var psi = new ProcessStartInfo(Require(program))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = stdin is not null,
            UseShellExecute = false,
        };
        foreach (var a in arguments)
            psi.ArgumentList.Add(a);
        using var process = Process.Start(psi)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
        {
            process.StandardInput.Write(stdin);
            process.StandardInput.Close();
        }
        if (!process.WaitForExit(timeout ?? TimeSpan.FromMinutes(2)))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException($"{program} {string.Join(' ', arguments)} did not finish in time");
        }
        return new Result(process.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Where shared/ lives: beside the repository root (CI clones next to it).</summary>
    public static string SharedDirectory
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "ThinFast.sln")))
                {
                    var shared = Path.GetFullPath(Path.Combine(dir.FullName, "..", "shared"));
                    if (Directory.Exists(shared))
                        return shared;
                    throw new InvalidOperationException($"shared/ not found beside the repository at {shared}");
                }
            }
            throw new InvalidOperationException("repository root (ThinFast.sln) not found above " + AppContext.BaseDirectory);
        }
    }

    /// <summary>Runs thin_check and the stricter analyze.py on a metadata image; both must pass.</summary>
    public static void AssertMetadataClean(string imagePath)
    {
        var check = Run("thin_check", [imagePath]);
        if (check.ExitCode != 0)
            throw new Xunit.Sdk.XunitException($"thin_check rejected {imagePath}: {check}");
        var analyze = Run("python3", [Path.Combine(SharedDirectory, "tools", "dmthin", "analyze.py"), imagePath]);
        if (analyze.ExitCode != 0)
            throw new Xunit.Sdk.XunitException($"analyze.py rejected {imagePath}: {analyze}");
    }
}
