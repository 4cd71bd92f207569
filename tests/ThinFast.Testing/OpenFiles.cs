namespace ThinFast.Testing;

/// <summary>What this process has open, from /proc/self/fd and /proc/self/fdinfo.</summary>
public static class OpenFiles
{
    /// <summary>For each fd of this process open on <paramref name="path"/>, whether it has
    /// O_DIRECT (the octal flags in fdinfo).</summary>
    public static IReadOnlyList<bool> ODirectFlagsOf(string path)
    {
        var result = new List<bool>();
        foreach (var link in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(link).LinkTarget;
            }
            catch (IOException)
            {
                continue; // closed while we looked
            }
            if (target != path)
                continue;
            string flagsLine = File.ReadAllLines("/proc/self/fdinfo/" + Path.GetFileName(link))
                .First(l => l.StartsWith("flags:", StringComparison.Ordinal));
            int flags = Convert.ToInt32(flagsLine["flags:".Length..].Trim(), 8);
            result.Add((flags & Interop.Libc.O_DIRECT) != 0);
        }
        return result;
    }
}
