using ThinFast.Interop;

namespace ThinFast.IO.Uring;

/// <summary>
/// One io_uring: the fd, the shared SQ/CQ mapping and the SQE array, with the memory-ordering rules
/// of the ABI (SQ tail published with a store-release, CQ tail read with a load-acquire, CQ head
/// released after the CQEs are copied out). No locking here: the reactor serialises SQ access
/// under its lock and only its own thread touches the CQ.
/// </summary>
internal sealed unsafe class IoUringRing : IDisposable
{
    private readonly FileDescriptorHandle _fd;
    private readonly MappedRegionHandle _rings;
    private readonly MappedRegionHandle _sqeRegion;

    private uint* _sqHead;
    private uint* _sqTail;
    private IoUringSqe* _sqes;
    private uint* _cqHead;
    private uint* _cqTail;
    private IoUringCqe* _cqes;
    private uint _sqLocalTail;

    private IoUringRing(FileDescriptorHandle fd, MappedRegionHandle rings, MappedRegionHandle sqes, in IoUringParams p)
    {
        _fd = fd;
        _rings = rings;
        _sqeRegion = sqes;
        byte* b = rings.Pointer;
        _sqHead = (uint*)(b + p.SqOff.Head);
        _sqTail = (uint*)(b + p.SqOff.Tail);
        SqEntries = *(uint*)(b + p.SqOff.RingEntries);
        SqMask = *(uint*)(b + p.SqOff.RingMask);
        _cqHead = (uint*)(b + p.CqOff.Head);
        _cqTail = (uint*)(b + p.CqOff.Tail);
        CqEntries = *(uint*)(b + p.CqOff.RingEntries);
        CqMask = *(uint*)(b + p.CqOff.RingMask);
        _cqes = (IoUringCqe*)(b + p.CqOff.Cqes);
        _sqes = (IoUringSqe*)sqes.Pointer;
        Features = p.Features;
        DefersTaskRun = (p.Flags & IoUring.IORING_SETUP_DEFER_TASKRUN) != 0;
        // Identity indirection: SQ slot i always names SQE i, so the array is written once.
        uint* array = (uint*)(b + p.SqOff.Array);
        for (uint i = 0; i < SqEntries; i++)
            array[i] = i;
        _sqLocalTail = *_sqTail;
    }

    public uint SqEntries { get; }
    public uint SqMask { get; }
    public uint CqEntries { get; }
    public uint CqMask { get; }
    public uint Features { get; }

    /// <summary>Single-issuer ring with DEFER_TASKRUN: it starts disabled and must be enabled by
    /// <see cref="EnableOnThisThread"/> on the thread that will issue everything; completions only
    /// appear in the CQ when that thread enters with GETEVENTS; io_uring_register from any other
    /// thread fails with EEXIST.</summary>
    public bool DefersTaskRun { get; }
    public int Fd => _fd.Fd;

    /// <summary>Sets up a ring with <paramref name="entries"/> SQEs and twice as many CQEs.
    /// Returns 0 or -errno; <paramref name="error"/> explains a failure.</summary>
    public static int TryCreate(uint entries, out IoUringRing? ring, out string? error)
    {
        ring = null;
        IoUringParams p = default;
        // One thread (the reactor) does every io_uring_enter, so the ring can be single-issuer
        // with completion work deferred to that thread's GETEVENTS calls (DEFER_TASKRUN, 6.1+):
        // fio's setting, and measured faster here than interrupting the thread per completion.
        // The ring starts disabled so the reactor thread, not its creator, becomes the issuer.
        // Older kernels reject the flags; they get a plain ring. (COOP_TASKRUN alone was measured
        // slower than a plain ring: 4 KiB randread QD32 0.83 vs 0.94 of fio.)
        p.Flags = IoUring.IORING_SETUP_CQSIZE | IoUring.IORING_SETUP_COOP_TASKRUN | IoUring.IORING_SETUP_SINGLE_ISSUER
            | IoUring.IORING_SETUP_DEFER_TASKRUN | IoUring.IORING_SETUP_R_DISABLED;
        p.CqEntries = entries * 2;
        int fd = Syscall.IoUringSetup(entries, &p);
        if (fd == -Errno.EINVAL)
        {
            p = default;
            p.Flags = IoUring.IORING_SETUP_CQSIZE;
            p.CqEntries = entries * 2;
            fd = Syscall.IoUringSetup(entries, &p);
        }
        if (fd < 0)
        {
            error = $"io_uring_setup({entries}) failed: {Errno.Describe(fd)}";
            return fd;
        }
        var fdHandle = new FileDescriptorHandle(fd);
        const uint required = IoUring.IORING_FEAT_SINGLE_MMAP | IoUring.IORING_FEAT_NODROP;
        if ((p.Features & required) != required)
        {
            fdHandle.Dispose();
            error = $"io_uring lacks SINGLE_MMAP|NODROP (features 0x{p.Features:x}); kernel 5.5 or newer is needed";
            return -Errno.EOPNOTSUPP;
        }
        nuint sqSize = p.SqOff.Array + p.SqEntries * sizeof(uint);
        nuint cqSize = p.CqOff.Cqes + p.CqEntries * (uint)IoUringCqe.Size;
        nuint ringSize = Math.Max(sqSize, cqSize);
        // Every kernel-reported offset must land inside the mapping before a pointer is derived.
        uint[] offsets = [p.SqOff.Head, p.SqOff.Tail, p.SqOff.RingMask, p.SqOff.RingEntries, p.SqOff.Flags,
            p.CqOff.Head, p.CqOff.Tail, p.CqOff.RingMask, p.CqOff.RingEntries, p.CqOff.Overflow];
        foreach (uint o in offsets)
        {
            if (o + sizeof(uint) > ringSize)
            {
                fdHandle.Dispose();
                error = $"io_uring reported ring offset {o} outside the {ringSize}-byte mapping";
                return -Errno.EINVAL;
            }
        }
        nint rings = Libc.Mmap(null, ringSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED | Libc.MAP_POPULATE, fd, IoUring.IORING_OFF_SQ_RING);
        if (rings < 0)
        {
            fdHandle.Dispose();
            error = $"mmap of the io_uring rings failed: {Errno.Describe((int)rings)}";
            return (int)rings;
        }
        var ringsHandle = new MappedRegionHandle(rings, ringSize);
        nuint sqeSize = p.SqEntries * (uint)IoUringSqe.Size;
        nint sqes = Libc.Mmap(null, sqeSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED | Libc.MAP_POPULATE, fd, IoUring.IORING_OFF_SQES);
        if (sqes < 0)
        {
            ringsHandle.Dispose();
            fdHandle.Dispose();
            error = $"mmap of the io_uring SQEs failed: {Errno.Describe((int)sqes)}";
            return (int)sqes;
        }
        ring = new IoUringRing(fdHandle, ringsHandle, new MappedRegionHandle(sqes, sqeSize), p);
        error = null;
        return 0;
    }

    /// <summary>The next free SQE, zeroed, or null when the SQ is full. Caller holds the SQ lock.</summary>
    public IoUringSqe* TryGetSqe()
    {
        uint head = Volatile.Read(ref *_sqHead);
        if (_sqLocalTail - head >= SqEntries)
            return null;
        IoUringSqe* sqe = &_sqes[_sqLocalTail & SqMask];
        _sqLocalTail++;
        *sqe = default;
        return sqe;
    }

    /// <summary>Makes every SQE taken so far visible to the kernel. Caller holds the SQ lock.</summary>
    public void PublishSq() => Volatile.Write(ref *_sqTail, _sqLocalTail);

    /// <summary>Makes the calling thread the ring's only issuer. Returns 0 or -errno.</summary>
    public int EnableOnThisThread() =>
        DefersTaskRun ? Register(IoUring.IORING_REGISTER_ENABLE_RINGS, null, 0) : 0;


    public int Enter(uint toSubmit, uint minComplete, uint flags) => Syscall.IoUringEnter(Fd, toSubmit, minComplete, flags);

    /// <summary>Copies up to <paramref name="max"/> ready CQEs out and releases their slots to the
    /// kernel. Reactor thread only.</summary>
    public int Reap(Span<ulong> userData, Span<int> results)
    {
        uint head = *_cqHead;
        uint tail = Volatile.Read(ref *_cqTail);
        int n = (int)Math.Min(tail - head, (uint)userData.Length);
        for (int i = 0; i < n; i++)
        {
            ref IoUringCqe cqe = ref _cqes[(head + (uint)i) & CqMask];
            userData[i] = cqe.UserData;
            results[i] = cqe.Res;
        }
        if (n > 0)
            Volatile.Write(ref *_cqHead, head + (uint)n);
        return n;
    }

    public int Register(uint opcode, void* arg, uint count) => Syscall.IoUringRegister(Fd, opcode, arg, count);

    public void Dispose()
    {
        // Null the derived pointers first so a late use faults instead of touching unmapped memory.
        _sqHead = _sqTail = _cqHead = _cqTail = null;
        _sqes = null;
        _cqes = null;
        _sqeRegion.Dispose();
        _rings.Dispose();
        _fd.Dispose();
    }
}
