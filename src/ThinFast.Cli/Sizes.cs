using System.Globalization;

namespace ThinFast.Cli;

/// <summary>Sizes as LVM writes them: a number with an optional binary suffix (K, M, G, T, P;
/// "KiB"/"KB" alike, powers of 1024) or "s" for 512-byte sectors.</summary>
public static class Sizes
{
    public static long Parse(string text, string what)
    {
        string t = text.Trim();
        int end = 0;
        while (end < t.Length && (char.IsAsciiDigit(t[end]) || t[end] == '.'))
            end++;
        if (end == 0 || !double.TryParse(t.AsSpan(0, end), NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out double number))
            throw new UsageException($"{what} '{text}' is not a size (examples: 512M, 10G, 64K, 2048s)");
        long unit = t[end..].ToUpperInvariant() switch
        {
            "" or "B" => 1,
            "S" => 512,
            "K" or "KB" or "KIB" => 1L << 10,
            "M" or "MB" or "MIB" => 1L << 20,
            "G" or "GB" or "GIB" => 1L << 30,
            "T" or "TB" or "TIB" => 1L << 40,
            "P" or "PB" or "PIB" => 1L << 50,
            _ => throw new UsageException($"{what} '{text}' has an unknown unit (use K, M, G, T, P or s)"),
        };
        double bytes = number * unit;
        if (bytes <= 0 || bytes > long.MaxValue / 2 || bytes != Math.Floor(bytes))
            throw new UsageException($"{what} '{text}' is not a positive whole number of bytes");
        return (long)bytes;
    }

    public static string Format(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        double v = bytes;
        int u = 0;
        while (v >= 1024 && u < units.Length - 1)
        {
            v /= 1024;
            u++;
        }
        return u == 0 ? $"{bytes} B" : string.Create(CultureInfo.InvariantCulture, $"{v:0.##} {units[u]}");
    }
}
