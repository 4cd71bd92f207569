namespace ThinFast.Cli;

/// <summary>Usage error: the command line itself is wrong (exit code 2).</summary>
public sealed class UsageException(string message) : Exception(message);

/// <summary>
/// A small GNU-style argument list: positionals, <c>--name value</c>, <c>--name=value</c>, flags and
/// repeated options. Each command declares which options take a value and which are flags, so an
/// unknown or misspelt option is a usage error instead of being silently taken as a positional.
/// </summary>
public sealed class Args
{
    private readonly List<string> _positionals = new();
    private readonly Dictionary<string, List<string>> _values = new(StringComparer.Ordinal);
    private readonly HashSet<string> _flags = new(StringComparer.Ordinal);

    public static Args Parse(ReadOnlySpan<string> argv, string[] valueOptions, string[] flagOptions)
    {
        var args = new Args();
        bool onlyPositionals = false;
        for (int i = 0; i < argv.Length; i++)
        {
            string a = argv[i];
            if (onlyPositionals || a.Length < 2 || a[0] != '-')
            {
                args._positionals.Add(a);
                continue;
            }
            if (a == "--")
            {
                onlyPositionals = true;
                continue;
            }
            string name = a;
            string? inline = null;
            int eq = a.IndexOf('=');
            if (eq > 0)
            {
                name = a[..eq];
                inline = a[(eq + 1)..];
            }
            if (Array.IndexOf(flagOptions, name) >= 0)
            {
                if (inline is not null)
                    throw new UsageException($"{name} takes no value");
                args._flags.Add(name);
            }
            else if (Array.IndexOf(valueOptions, name) >= 0)
            {
                string value = inline ?? (i + 1 < argv.Length ? argv[++i] : throw new UsageException($"{name} needs a value"));
                if (!args._values.TryGetValue(name, out var list))
                    args._values[name] = list = new List<string>();
                list.Add(value);
            }
            else
            {
                throw new UsageException($"unknown option {name}");
            }
        }
        return args;
    }

    public IReadOnlyList<string> Positionals => _positionals;

    public bool Flag(string name) => _flags.Contains(name);

    public string? Value(string name)
    {
        if (!_values.TryGetValue(name, out var list))
            return null;
        if (list.Count > 1)
            throw new UsageException($"{name} given {list.Count} times");
        return list[0];
    }

    public IReadOnlyList<string> Values(string name) => _values.TryGetValue(name, out var list) ? list : [];

    public string Positional(int index, string what)
    {
        if (index >= _positionals.Count)
            throw new UsageException($"missing {what}");
        return _positionals[index];
    }

    public void ExpectPositionals(int count)
    {
        if (_positionals.Count > count)
            throw new UsageException($"unexpected argument '{_positionals[count]}'");
    }
}
