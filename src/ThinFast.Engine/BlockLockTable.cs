namespace ThinFast.Engine;

/// <summary>
/// Reader/writer locks on virtual blocks, so a request that touches a block being provisioned,
/// copied or unmapped waits behind it and then sees the new mapping (dm-thin's bio prison cells).
/// Reads take a block shared; anything that writes data or changes the block's mapping takes it
/// exclusive. Locks are hashed onto a fixed array of stripes: no allocation on the uncontended
/// path, and a parked waiter is a pooled <see cref="PooledSignal"/>.
/// </summary>
/// <remarks>
/// Deadlock freedom: a request locks all the stripes it needs in ascending stripe order. The
/// stripes of one request are distinct because consecutive blocks of one device land on
/// consecutive stripes and a request spans fewer blocks than <see cref="StripeCount"/>.
/// Waiters are granted strictly in arrival order, so writers are not starved by readers.
/// </remarks>
internal sealed class BlockLockTable
{
    public const int StripeCount = 8192;
    private const int GuardCount = 128;

    private struct Stripe
    {
        public int Readers;
        public bool Writer;
        public PooledSignal? Head;
        public PooledSignal? Tail;
    }

    private readonly Stripe[] _stripes = new Stripe[StripeCount];
    private readonly object[] _guards = new object[GuardCount];
    private long _waits;

    public BlockLockTable()
    {
        for (int i = 0; i < _guards.Length; i++)
            _guards[i] = new object();
    }

    /// <summary>Acquisitions that had to park behind another holder or waiter: the contention
    /// figure tests and benchmarks assert on, counted only on the slow path.</summary>
    public long Waits => Interlocked.Read(ref _waits);

    /// <summary>Most blocks one request may lock at once.</summary>
    public const int MaxBlocksPerRequest = StripeCount / 2;

    public static int StripeOf(uint deviceId, ulong virtualBlock) =>
        (int)((virtualBlock + deviceId * 0x9E3779B1UL) & (StripeCount - 1));

    /// <summary>The stripes for blocks [first, first+count) of a device as at most two ascending
    /// runs: [firstStripe, StripeCount) and [0, wrapEnd). Acquire the wrapped run first.</summary>
    public static (int Start, int Count, int WrapCount) StripeRuns(uint deviceId, ulong firstBlock, int count)
    {
        int start = StripeOf(deviceId, firstBlock);
        int head = Math.Min(count, StripeCount - start);
        return (start, head, count - head);
    }

    public ValueTask AcquireAsync(int stripe, bool exclusive)
    {
        lock (_guards[stripe & (GuardCount - 1)])
        {
            ref var s = ref _stripes[stripe];
            if (s.Head is null && !s.Writer && (!exclusive || s.Readers == 0))
            {
                if (exclusive)
                    s.Writer = true;
                else
                    s.Readers++;
                return ValueTask.CompletedTask;
            }
            Interlocked.Increment(ref _waits);
            var waiter = PooledSignal.Rent();
            waiter.Tag = exclusive ? 1 : 0;
            if (s.Tail is null)
                s.Head = waiter;
            else
                s.Tail.Next = waiter;
            s.Tail = waiter;
            return waiter.Task;
        }
    }

    public void Release(int stripe, bool exclusive)
    {
        PooledSignal? granted = null;
        lock (_guards[stripe & (GuardCount - 1)])
        {
            ref var s = ref _stripes[stripe];
            if (exclusive)
            {
                if (!s.Writer)
                    throw new InvalidOperationException($"block lock stripe {stripe} released exclusive but not held");
                s.Writer = false;
            }
            else
            {
                if (s.Readers <= 0)
                    throw new InvalidOperationException($"block lock stripe {stripe} released shared but not held");
                s.Readers--;
            }

            // Grant from the head in order: one writer alone, or a run of readers.
            PooledSignal? grantedTail = null;
            while (s.Head is { } next && !s.Writer)
            {
                bool wantsExclusive = next.Tag == 1;
                if (wantsExclusive && s.Readers > 0)
                    break;
                s.Head = next.Next;
                if (s.Head is null)
                    s.Tail = null;
                next.Next = null;
                if (wantsExclusive)
                    s.Writer = true;
                else
                    s.Readers++;
                if (grantedTail is null)
                    granted = next;
                else
                    grantedTail.Next = next;
                grantedTail = next;
            }
        }
        // Wake outside the guard; Next must be read before Complete lets the signal be reused.
        while (granted is not null)
        {
            var next = granted.Next;
            granted.Next = null;
            granted.Complete();
            granted = next;
        }
    }
}
