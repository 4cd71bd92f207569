namespace ThinFast.Fuzz;

/// <summary>
/// Fails an input whose processing allocated more than a fixed budget. Inputs are at most a few
/// hundred KiB and every target works on small in-memory devices, so a size field that makes the
/// code allocate gigabytes is a defect to find here, not an out-of-memory kill on a real machine.
/// Counts every thread's allocations (the NBD server serves on pool threads).
/// </summary>
public readonly struct AllocationBudget
{
    private readonly long _start;
    private readonly long _limit;

    private AllocationBudget(long limit)
    {
        _limit = limit;
        _start = GC.GetTotalAllocatedBytes(precise: false);
    }

    public static AllocationBudget Start(long limitBytes) => new(limitBytes);

    public void Check(string what)
    {
        long used = GC.GetTotalAllocatedBytes(precise: false) - _start;
        if (used > _limit)
            throw new UndocumentedFailureException($"{what} allocated {used >> 20} MiB for one input (budget {_limit >> 20} MiB)");
    }
}
