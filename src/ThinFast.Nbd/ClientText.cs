using System.Text;

namespace ThinFast.Nbd;

/// <summary>Client-supplied text (export names, option data) as it may appear in a log line or an
/// error message: control characters escaped, so a client cannot start a line of its own or send
/// terminal escape sequences, and cut short, so it cannot fill the log.</summary>
internal static class ClientText
{
    public const int MaxChars = 64;

    public static string ForLog(ReadOnlySpan<byte> utf8) => ForLog(Encoding.UTF8.GetString(utf8));

    public static string ForLog(string text)
    {
        var sb = new StringBuilder(Math.Min(text.Length, MaxChars) + 16);
        int shown = 0;
        foreach (char c in text)
        {
            if (shown == MaxChars)
            {
                sb.Append($"... ({text.Length} characters)");
                break;
            }
            if (char.IsControl(c) || c is '\u2028' or '\u2029')
                sb.Append($"\\u{(int)c:x4}");
            else
                sb.Append(c);
            shown++;
        }
        return sb.ToString();
    }
}
