namespace ThinFast.Fuzz;

/// <summary>
/// One parser under fuzz. <see cref="Run"/> feeds it the input and returns normally when the
/// parser accepted the input or refused it with one of its documented exceptions; anything else
/// escapes, and afl-fuzz (through SharpFuzz) records the input as a crash.
/// </summary>
public interface IFuzzTarget
{
    /// <summary>The name used on the command line and as the corpus folder's name.</summary>
    string Name { get; }

    /// <summary>What the target covers, one line, for <c>ThinFast.Fuzz list</c>.</summary>
    string Description { get; }

    void Run(ReadOnlySpan<byte> input);

    /// <summary>Real inputs to start a campaign from, by file name (written by <c>ThinFast.Fuzz seed</c>).</summary>
    IEnumerable<(string Name, byte[] Contents)> Seeds();
}
