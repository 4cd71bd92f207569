using BenchmarkDotNet.Attributes;
using ThinFast.Metadata;

namespace ThinFast.Benchmarks.Metadata;

internal static class Pools
{
    /// <summary>A committed pool whose device 1 maps <paramref name="mappings"/> consecutive blocks.</summary>
    public static ThinMetadata Build(ulong mappings, ulong spareData)
    {
        var md = ThinMetadata.Format(new RamDevice(256L << 20), 128, mappings + spareData);
        md.CreateThin(1);
        for (ulong v = 0; v < mappings; v++)
        {
            md.TryAllocateDataBlock(out ulong d);
            md.Insert(1, v, d);
        }
        md.Commit();
        return md;
    }
}

/// <summary>Random lookups in a 1,000,000-mapping device with every node cached.</summary>
[MemoryDiagnoser]
public class MetadataLookupBenchmarks
{
    private const int Batch = 4096;
    private ThinMetadata _md = null!;
    private ulong[] _keys = null!;

    [GlobalSetup]
    public void Setup()
    {
        _md = Pools.Build(1_000_000, 1000);
        var rng = new Random(1);
        _keys = new ulong[Batch];
        for (int i = 0; i < Batch; i++)
            _keys[i] = (ulong)rng.Next(1_000_000);
        for (ulong v = 0; v < 1_000_000; v++)
            _md.TryLookup(1, v, out _);
    }

    [GlobalCleanup]
    public void Cleanup() => _md.Dispose();

    [Benchmark(OperationsPerInvoke = Batch)]
    public ulong RandomLookup()
    {
        ulong sum = 0;
        foreach (ulong k in _keys)
            if (_md.TryLookup(1, k, out BlockMapping m))
                sum += m.DataBlock;
        return sum;
    }
}

/// <summary>Random overwrites (allocate, insert, old block released) in a 1,000,000-mapping device, committed per batch.</summary>
[MemoryDiagnoser]
public class MetadataInsertBenchmarks
{
    private ThinMetadata _md = null!;
    private Random _rng = null!;

    [Params(1, 1024)]
    public int BatchSize;

    [GlobalSetup]
    public void Setup()
    {
        _md = Pools.Build(1_000_000, 200_000);
        _rng = new Random(2);
    }

    [GlobalCleanup]
    public void Cleanup() => _md.Dispose();

    /// <summary>Per-op cost of BatchSize inserts plus the commit; with BatchSize 1 it is commit latency.</summary>
    [Benchmark]
    public void InsertBatchAndCommit()
    {
        for (int i = 0; i < BatchSize; i++)
        {
            _md.TryAllocateDataBlock(out ulong d);
            _md.Insert(1, (ulong)_rng.Next(1_000_000), d);
        }
        _md.Commit();
    }
}

/// <summary>
/// Snapshot creation (and deletion, to keep the device count constant) must not grow with the
/// origin's size. Each snapshot advances the pool's 24-bit time, so the pool is rebuilt (outside
/// the measurement) before the counter could run out.
/// </summary>
[MemoryDiagnoser]
[InvocationCount(1_000_000)]
public class MetadataSnapshotBenchmarks
{
    private ThinMetadata _md = null!;

    [Params(1_000UL, 1_000_000UL)]
    public ulong Mappings;

    [GlobalSetup]
    public void Setup() => _md = Pools.Build(Mappings, 1000);

    [IterationSetup]
    public void RebuildBeforeTimeRunsOut()
    {
        if (_md.Time < 8_000_000)
            return;
        _md.Dispose();
        _md = Pools.Build(Mappings, 1000);
    }

    [GlobalCleanup]
    public void Cleanup() => _md.Dispose();

    [Benchmark]
    public void SnapshotThenDelete()
    {
        _md.CreateSnapshot(2, 1);
        _md.DeleteDevice(2);
    }
}
