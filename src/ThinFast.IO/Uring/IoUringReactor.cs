using System.Diagnostics;
using System.Runtime.InteropServices;
using ThinFast.Interop;

namespace ThinFast.IO.Uring;

/// <summary>
/// One dedicated thread that owns one io_uring and serves any number of devices.
/// </summary>
/// <remarks>
/// <para>Threading rule: completions run their continuations inline on the reactor thread, so the
/// next I/O a continuation issues joins the batch the reactor submits with its next
/// io_uring_enter. Code that awaits a device must therefore never block (Wait, .Result, sync
/// device helpers, long CPU work): that stalls every device on this reactor.</para>
/// <para>Submission is safe from any thread: the SQ, the slots and the waiting queue sit behind one
/// short lock. Only the reactor thread enters the kernel to submit; a thread that submits while the
/// reactor sleeps in io_uring_enter(GETEVENTS) wakes it through an eventfd that the ring itself
/// always has a read pending on.</para>
/// <para>In-flight requests occupy preallocated slots (struct-of-arrays with a free list);
/// user_data is generation &lt;&lt; 32 | slot, and the generation changes when a slot is freed, so
/// a stale or duplicated CQE is counted and ignored instead of completing someone else's request.
/// There are SQ entries − 1 slots (one entry is kept for the wake-up read) and the CQ is twice the
/// SQ, so neither queue can overflow; requests beyond the slot count wait in FIFO order.</para>
/// </remarks>
public sealed unsafe partial class IoUringReactor : IDisposable
{
#if DEBUG
    // Small in debug builds so the slot-exhaustion queue and ring wrap-around run in every test.
    public const uint DefaultEntries = 8;
#else
    public const uint DefaultEntries = 512;
#endif
    private const ulong WakeUserData = ulong.MaxValue;

    private static readonly Lock s_sharedLock = new();
    private static IoUringReactor? s_shared;
    private static string? s_sharedError;

    private readonly IoUringRing _ring;
    private readonly Lock _lock = new();
    private readonly IoUringOperation?[] _slotOp;
    private readonly uint[] _slotGen;
    private readonly int[] _nextFree;
    private int _freeHead;
    private int _inFlight;
    private uint _unsubmitted;
    private IoUringOperation? _waitHead;
    private IoUringOperation? _waitTail;
    private bool _closed;

    private readonly Lock _poolLock = new();
    private readonly IoUringOperation[] _pool;
    private int _poolCount;

    private readonly Lock _registerLock = new();
    private volatile NativeBuffer[] _registered = [];

    // Work that must run on the reactor thread (io_uring_register on a single-issuer ring).
    private Func<int>? _controlWork;
    private int _controlResult;
    private readonly ManualResetEventSlim _controlDone = new();

    private readonly FileDescriptorHandle _eventFd;
    private readonly ulong* _eventBuffer;
    private int _sleeping;
    private volatile bool _stopping;
    private readonly Thread _thread;

    // Set on each reactor's own thread, so code can refuse to block it.
    [ThreadStatic]
    private static bool t_isReactorThread;

    /// <summary>True on any reactor's thread. Code that would wait synchronously for I/O
    /// (closing a pool, say) checks this: on the reactor thread the wait could never end.</summary>
    public static bool IsReactorThread => t_isReactorThread;
    private readonly int _threadId;
    private readonly long _spinTicks;
    private readonly uint _submitBatch;
    private long _staleCompletions;

    private readonly ulong[] _reapUserData;
    private readonly int[] _reapResults;
    private readonly IoUringOperation?[] _reapOps;

    private IoUringReactor(IoUringRing ring, FileDescriptorHandle eventFd, TimeSpan spin, uint submitBatch)
    {
        _submitBatch = Math.Max(1, submitBatch);
        _ring = ring;
        _eventFd = eventFd;
        _eventBuffer = (ulong*)NativeMemory.AlignedAlloc(sizeof(ulong), sizeof(ulong));
        int slots = (int)ring.SqEntries - 1;
        _slotOp = new IoUringOperation?[slots];
        _slotGen = new uint[slots];
        _nextFree = new int[slots];
        for (int i = 0; i < slots; i++)
            _nextFree[i] = i + 1 < slots ? i + 1 : -1;
        _freeHead = 0;
        _pool = new IoUringOperation[slots * 4];
        for (int i = 0; i < slots; i++)
            _pool[_poolCount++] = new IoUringOperation(this);
        _reapUserData = new ulong[ring.CqEntries];
        _reapResults = new int[ring.CqEntries];
        _reapOps = new IoUringOperation?[ring.CqEntries];
        _spinTicks = (long)(spin.TotalSeconds * Stopwatch.Frequency);
        lock (_lock)
            ArmWakeLocked();
        _thread = new Thread(Run) { IsBackground = true, Name = "thinfast-uring" };
        _threadId = _thread.ManagedThreadId;
        _thread.Start();
    }

    /// <summary>
    /// How long the reactor keeps polling the CQ after its last completion before it sleeps in
    /// io_uring_enter(GETEVENTS). While completions keep arriving it never sleeps either way.
    /// On a 2-CPU machine polling takes the CPU the kernel needs to complete the I/O: device-vs-fio
    /// (4 KiB QD32, 3 pairs each, loaded 2-vCPU VM) gave randread/randwrite/1M-read ratios to fio of
    /// 0.94/0.93/1.05 with no spin, 0.91/0.69/0.60 at 20 us and 0.83/0.99/0.86 at 50 us, and
    /// spinning raised CPU per I/O (measured with the earlier COOP_TASKRUN ring, where polling
    /// was pure user-space CQ reads; with DEFER_TASKRUN each poll is a syscall, so polling only
    /// costs more). So: no spin up to 2 CPUs, a short one above.
    /// </summary>
    public static readonly TimeSpan DefaultSpin = Environment.ProcessorCount > 2 ? TimeSpan.FromMicroseconds(20) : TimeSpan.Zero;

    /// <summary>
    /// While the reactor runs a round of completions, the requests their continuations queue are
    /// submitted once this many have gathered (and the rest after the round), instead of all in one
    /// io_uring_enter after the round. A round can reap 32 completions; holding the first new
    /// request until the 32nd continuation has run keeps the device's queue shallower than the
    /// caller's depth. device-vs-fio, 4 KiB randread QD32 on a virtio disk, ratio to fio: 0.84 with
    /// one submit per round, 0.97-0.99 submitting each request at once (fio's own pattern: one
    /// io_uring_enter per request), 0.96-1.10 at 4, which needs fewer syscalls (3.5-4.1 CPU-us per
    /// I/O against 4.7-5.1 at 1).
    /// </summary>
    public const uint DefaultSubmitBatch = 4;

    /// <summary>CQEs whose generation no longer matched their slot (should stay 0).</summary>
    public long StaleCompletions => Interlocked.Read(ref _staleCompletions);

    public uint SqEntries => _ring.SqEntries;

    /// <summary>True when the ring is single-issuer with DEFER_TASKRUN (Linux 6.1+), false for the
    /// plain ring older kernels get.</summary>
    public bool DefersTaskRun => _ring.DefersTaskRun;

    /// <summary>The process-wide reactor devices use unless given their own. Created on first
    /// use; never disposed.</summary>
    public static IoUringReactor Shared =>
        TryGetShared(out var reactor, out string? error)
            ? reactor
            : throw new BlockDeviceException(BlockError.NotSupported, "io_uring unavailable: " + error);

    public static bool TryGetShared([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out IoUringReactor? reactor, out string? error)
    {
        lock (s_sharedLock)
        {
            if (SimulatedUnavailability is { } simulated)
            {
                reactor = null;
                error = simulated;
                return false;
            }
            if (s_shared is null && s_sharedError is null && !TryCreate(out s_shared, out s_sharedError))
                s_shared = null;
            reactor = s_shared;
            error = s_sharedError;
            return reactor is not null;
        }
    }

    /// <summary>Sets up a ring and starts its thread. False (with the reason) when io_uring cannot
    /// be used here: old kernel, io_uring disabled by sysctl, or forbidden by a seccomp filter.</summary>
    public static bool TryCreate([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out IoUringReactor? reactor, out string? error,
        uint entries = DefaultEntries, TimeSpan? spin = null, uint submitBatch = DefaultSubmitBatch)
    {
        reactor = null;
        if (IoUringRing.TryCreate(entries, out var ring, out error) < 0)
            return false;
        int efd = Libc.Eventfd(0, Libc.EFD_CLOEXEC);
        if (efd < 0)
        {
            ring!.Dispose();
            error = "eventfd failed: " + Errno.Describe(efd);
            return false;
        }
        reactor = new IoUringReactor(ring!, new FileDescriptorHandle(efd), spin ?? DefaultSpin, submitBatch);
        return true;
    }

    /// <summary>
    /// Registers every buffer of <paramref name="pool"/> with this ring, so I/O into them uses
    /// READ_FIXED / WRITE_FIXED (no per-I/O page pinning in the kernel). Call before issuing I/O on
    /// those buffers. A buffer can belong to one ring only. The table is rebuilt whole each time,
    /// since the kernel accepts one registration per ring. The register calls run on the reactor
    /// thread (a single-issuer ring refuses them from any other); this call waits for them.
    /// </summary>
    public void RegisterBuffers(AlignedBufferPool pool)
    {
        lock (_registerLock)
        {
            var current = _registered;
            var all = new NativeBuffer[current.Length + pool.Buffers.Count];
            current.CopyTo(all, 0);
            for (int i = 0; i < pool.Buffers.Count; i++)
            {
                var b = pool.Buffers[i];
                if (b.RegistrationIndex >= 0)
                    throw new InvalidOperationException($"buffer {b.PoolIndex} of the pool is already registered with a ring");
                all[current.Length + i] = b;
            }
            var iovecs = new IoVec[all.Length];
            for (int i = 0; i < all.Length; i++)
            {
                iovecs[i].Base = all[i].Pointer;
                iovecs[i].Length = (nuint)all[i].Length;
            }
            bool hadTable = current.Length > 0;
            int r = RunOnReactor(() =>
            {
                if (hadTable)
                {
                    int u = _ring.Register(IoUring.IORING_UNREGISTER_BUFFERS, null, 0);
                    if (u < 0)
                        return u;
                }
                fixed (IoVec* p = iovecs)
                    return _ring.Register(IoUring.IORING_REGISTER_BUFFERS, p, (uint)iovecs.Length);
            });
            if (r < 0)
            {
                foreach (var b in current)
                    b.RegistrationIndex = -1;
                _registered = [];
                throw BlockErrors.FromErrno(r, "io_uring", $"IORING_REGISTER_BUFFERS of {all.Length} buffers (RLIMIT_MEMLOCK applies without CAP_IPC_LOCK)");
            }
            for (int i = 0; i < all.Length; i++)
                all[i].RegistrationIndex = i;
            _registered = all;
        }
    }

    /// <summary>Runs <paramref name="work"/> on the reactor thread and returns its result: a
    /// single-issuer ring accepts io_uring_register only from its issuer.</summary>
    private int RunOnReactor(Func<int> work)
    {
        if (Environment.CurrentManagedThreadId == _threadId)
            return work();
        lock (_controlDone)
        {
            ObjectDisposedException.ThrowIf(_stopping, this);
            _controlDone.Reset();
            Volatile.Write(ref _controlWork, work);
            Interlocked.Exchange(ref _sleeping, 0);
            Libc.EventfdWrite(_eventFd.Fd, 1);
            _controlDone.Wait();
            return _controlResult;
        }
    }

    private void RunControlWork()
    {
        var work = Volatile.Read(ref _controlWork);
        if (work is null)
            return;
        _controlResult = work();
        Volatile.Write(ref _controlWork, null);
        _controlDone.Set();
    }

    internal bool IsRegistered(NativeBuffer buffer)
    {
        var registered = _registered;
        int i = buffer.RegistrationIndex;
        return (uint)i < (uint)registered.Length && ReferenceEquals(registered[i], buffer);
    }

    // ---- operation pool ----

    internal IoUringOperation RentOperation()
    {
        lock (_poolLock)
        {
            if (_poolCount > 0)
            {
                var op = _pool[--_poolCount];
                _pool[_poolCount] = null!;
                return op;
            }
        }
        return new IoUringOperation(this);
    }

    internal void ReturnOperation(IoUringOperation op)
    {
        lock (_poolLock)
        {
            if (_poolCount < _pool.Length)
                _pool[_poolCount++] = op;
        }
    }

    // ---- submission (any thread) ----

    /// <summary>Queues a request. <paramref name="inFlight"/> marks the rest of a request that
    /// already started (a short transfer, a transient error): those are still accepted while a
    /// disposed reactor drains, new ones are refused.</summary>
    internal void Submit(IoUringOperation op, bool inFlight = false)
    {
        bool closed;
        lock (_lock)
        {
            closed = _closed || (_stopping && !inFlight);
            if (!closed)
            {
                if (_freeHead >= 0)
                    PrepareLocked(op);
                else if (_waitTail is null)
                    _waitHead = _waitTail = op;
                else
                    _waitTail = _waitTail.NextWaiting = op;
            }
        }
        if (closed)
        {
            op.Fail(new BlockDeviceException(BlockError.Unavailable, "the io_uring reactor has been disposed"));
            return;
        }
        if (Environment.CurrentManagedThreadId != _threadId)
            WakeIfSleeping();
    }

    private void PrepareLocked(IoUringOperation op)
    {
        int slot = _freeHead;
        _freeHead = _nextFree[slot];
        _slotOp[slot] = op;
        _inFlight++;
        IoUringSqe* sqe = _ring.TryGetSqe();
        if (sqe == null)
            Environment.FailFast($"io_uring SQ full with a free slot ({_inFlight} in flight, {_ring.SqEntries} entries)");
        op.FillSqe(sqe);
        sqe->UserData = ((ulong)_slotGen[slot] << 32) | (uint)slot;
        _unsubmitted++;
    }

    private void ArmWakeLocked()
    {
        IoUringSqe* sqe = _ring.TryGetSqe();
        if (sqe == null)
            Environment.FailFast("io_uring SQ full while arming the wake-up read");
        sqe->Opcode = IoUring.IORING_OP_READ;
        sqe->Fd = _eventFd.Fd;
        sqe->Addr = (ulong)_eventBuffer;
        sqe->Len = sizeof(ulong);
        sqe->UserData = WakeUserData;
        _unsubmitted++;
    }

    private void WakeIfSleeping()
    {
        // Pairs with the exchange in Run: either the reactor sees our SQE before it sleeps, or we
        // see it asleep and wake it.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _sleeping) == 1 && Interlocked.Exchange(ref _sleeping, 0) == 1)
            Libc.EventfdWrite(_eventFd.Fd, 1);
    }

    // ---- the reactor thread ----

    private void Run()
    {
        t_isReactorThread = true;
        try
        {
            int enabled = _ring.EnableOnThisThread();
            if (enabled < 0)
                Environment.FailFast("io_uring: enabling the ring on the reactor thread failed: " + Errno.Describe(enabled));
            long lastCompletion = Stopwatch.GetTimestamp();
            while (true)
            {
                RunControlWork();
                // Reap first: the continuations queue their next requests, which then go to the
                // kernel together in one io_uring_enter below.
                if (ProcessCompletions() > 0)
                {
                    lastCompletion = Stopwatch.GetTimestamp();
                    continue;
                }
                if (_stopping && IsDrained())
                    break;
                if (Stopwatch.GetTimestamp() - lastCompletion < _spinTicks)
                {
                    // Polling. A DEFER_TASKRUN ring only posts CQEs when we enter with
                    // GETEVENTS, so polling it means entering; a plain ring's CQ can be watched
                    // from user space, entering only to submit.
                    if (_ring.DefersTaskRun || Volatile.Read(ref _unsubmitted) > 0)
                        SubmitPending(wait: false);
                    else
                        Thread.SpinWait(16);
                    continue;
                }
                Interlocked.Exchange(ref _sleeping, 1);
                SubmitPending(wait: true);
                Interlocked.Exchange(ref _sleeping, 0);
            }
        }
        catch (Exception e)
        {
            Environment.FailFast("io_uring reactor loop failed: " + e);
        }
        Shutdown();
    }

    private bool IsDrained()
    {
        lock (_lock)
            return _inFlight == 0 && _waitHead is null;
    }

    /// <summary>Publishes and submits every queued SQE in one io_uring_enter, which (GETEVENTS)
    /// also runs completion work the kernel deferred to this thread (DEFER_TASKRUN) and moves any
    /// CQ overflow backlog back into the ring. With <paramref name="wait"/> the same call sleeps until
    /// at least one completion is available.</summary>
    private void SubmitPending(bool wait)
    {
        uint n;
        lock (_lock)
        {
            n = _unsubmitted;
            if (n > 0)
                _ring.PublishSq();
            _unsubmitted = 0;
        }
        const uint flags = IoUring.IORING_ENTER_GETEVENTS;
        uint min = wait ? 1u : 0u;
        while (true)
        {
            int r = _ring.Enter(n, min, flags);
            if (r >= 0)
            {
                // The kernel may stop early (e.g. out of memory for a request); the rest stay in
                // the SQ and are offered again next time.
                if ((uint)r < n)
                {
                    lock (_lock)
                        _unsubmitted += n - (uint)r;
                }
                return;
            }
            // A negative result means nothing was consumed.
            if (r == -Errno.EINTR)
                continue;
            if (r == -Errno.EAGAIN || r == -Errno.EBUSY)
            {
                lock (_lock)
                    _unsubmitted += n;
                Thread.Yield();
                return;
            }
            Environment.FailFast($"io_uring_enter(to_submit={n}, min_complete={min}, flags={flags}) failed: {Errno.Describe(r)}");
        }
    }

    private int ProcessCompletions()
    {
        int n = _ring.Reap(_reapUserData, _reapResults);
        if (n == 0)
            return 0;
        lock (_lock)
        {
            for (int i = 0; i < n; i++)
            {
                ulong userData = _reapUserData[i];
                _reapOps[i] = null;
                if (userData == WakeUserData)
                {
                    if (!_stopping)
                        ArmWakeLocked();
                    continue;
                }
                uint slot = (uint)userData;
                uint generation = (uint)(userData >> 32);
                if (slot >= (uint)_slotOp.Length || _slotGen[slot] != generation || _slotOp[slot] is null)
                {
                    _staleCompletions++;
                    continue;
                }
                _reapOps[i] = _slotOp[slot];
                _slotOp[slot] = null;
                _slotGen[slot]++;
                _nextFree[slot] = _freeHead;
                _freeHead = (int)slot;
                _inFlight--;
            }
            while (_waitHead is not null && _freeHead >= 0)
            {
                var op = _waitHead;
                _waitHead = op.NextWaiting;
                op.NextWaiting = null;
                if (_waitHead is null)
                    _waitTail = null;
                PrepareLocked(op);
            }
        }
        for (int i = 0; i < n; i++)
        {
            var op = _reapOps[i];
            if (op is not null)
            {
                _reapOps[i] = null;
                op.OnCompletion(_reapResults[i]);
                // Requests queued by continuations go to the kernel a few at a time rather than
                // all after the last continuation: see DefaultSubmitBatch.
                if (_unsubmitted >= _submitBatch)
                    SubmitPending(wait: false);
            }
        }
        return n;
    }

    private void Shutdown()
    {
        lock (_lock)
            _closed = true;
        RunControlWork();
        _ring.Dispose();
        _eventFd.Dispose();
        NativeMemory.AlignedFree(_eventBuffer);
        foreach (var b in _registered)
            b.RegistrationIndex = -1;
        _registered = [];
    }

    /// <summary>Refuses new requests at once, lets the ones in flight finish, then stops the thread
    /// and closes the ring; requests made afterwards fail with <see cref="BlockError.Unavailable"/>.
    /// Called from another thread it waits for all that; called from a continuation on the reactor
    /// thread it cannot, and the reactor stops as soon as that continuation returns.</summary>
    public void Dispose()
    {
        if (ReferenceEquals(this, s_shared))
            return;
        lock (_lock)
        {
            if (_stopping)
                return;
            _stopping = true;
        }
        Interlocked.Exchange(ref _sleeping, 0);
        Libc.EventfdWrite(_eventFd.Fd, 1);
        if (Environment.CurrentManagedThreadId != _threadId)
            _thread.Join();
    }
}
