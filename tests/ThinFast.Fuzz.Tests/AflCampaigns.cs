namespace ThinFast.Fuzz.Tests;

/// <summary>
/// Runs every target under afl-fuzz once per test run, two at a time (the machine's two cores),
/// for <see cref="Seconds"/> each: 8 by default, which keeps the whole of it near a minute;
/// THINFAST_FUZZ_SECONDS asks for longer campaigns (docs/fuzzing.md).
/// </summary>
public sealed class AflCampaigns : IDisposable
{
    private readonly InstrumentedHarness _harness = new();
    private readonly Dictionary<string, AflResult> _results;

    public AflCampaigns()
    {
        Seconds = int.TryParse(Environment.GetEnvironmentVariable("THINFAST_FUZZ_SECONDS"), out int s) && s > 0 ? s : 8;
        var results = new System.Collections.Concurrent.ConcurrentDictionary<string, AflResult>();
        try
        {
            Parallel.ForEach(FuzzTargets.All, new ParallelOptions { MaxDegreeOfParallelism = 2 },
                target => results[target.Name] = AflCampaign.Run(_harness, target.Name, Seconds));
        }
        catch
        {
            // A fixture whose constructor throws is never disposed.
            _harness.Dispose();
            throw;
        }
        _results = new Dictionary<string, AflResult>(results);
    }

    public int Seconds { get; }

    public AflResult this[string target] => _results[target];

    public void Dispose() => _harness.Dispose();
}
