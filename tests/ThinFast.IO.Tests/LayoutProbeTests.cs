using System.Diagnostics;
using System.Runtime.CompilerServices;
using ThinFast.Interop;

namespace ThinFast.IO.Tests;

/// <summary>Compiles native-shims/layout-probe with gcc against this machine's kernel headers and
/// checks every size and field offset it prints against the C# mirrors.</summary>
public unsafe class LayoutProbeTests
{
    private static readonly Dictionary<string, (long Offset, long Size)> Fields = BuildFields();

    private static readonly Dictionary<string, int> Sizes = new()
    {
        ["io_sqring_offsets"] = sizeof(IoSqringOffsets),
        ["io_cqring_offsets"] = sizeof(IoCqringOffsets),
        ["io_uring_params"] = sizeof(IoUringParams),
        ["io_uring_sqe"] = sizeof(IoUringSqe),
        ["io_uring_cqe"] = sizeof(IoUringCqe),
        ["statx_timestamp"] = sizeof(StatxTimestamp),
        ["statx"] = sizeof(Statx),
        ["iovec"] = sizeof(IoVec),
    };

    [Fact]
    public void DeclaredSizeConstantsMatchTheStructs()
    {
        Assert.Equal(IoSqringOffsets.Size, sizeof(IoSqringOffsets));
        Assert.Equal(IoCqringOffsets.Size, sizeof(IoCqringOffsets));
        Assert.Equal(IoUringParams.Size, sizeof(IoUringParams));
        Assert.Equal(IoUringSqe.Size, sizeof(IoUringSqe));
        Assert.Equal(IoUringCqe.Size, sizeof(IoUringCqe));
        Assert.Equal(StatxTimestamp.Size, sizeof(StatxTimestamp));
        Assert.Equal(Statx.Size, sizeof(Statx));
        Assert.Equal(IoVec.Size, sizeof(IoVec));
    }

    [Fact]
    public void EveryMirroredFieldMatchesTheKernelHeader()
    {
        var lines = RunProbe();
        var seenFields = new HashSet<string>();
        var seenSizes = new HashSet<string>();
        var mismatches = new List<string>();
        foreach (string line in lines)
        {
            string[] parts = line.Split(' ');
            if (parts[1] == "size")
            {
                Assert.True(Sizes.TryGetValue(parts[0], out int csSize), $"probe prints struct {parts[0]} that C# does not mirror");
                if (csSize != int.Parse(parts[2]))
                    mismatches.Add($"sizeof({parts[0]}): C {parts[2]}, C# {csSize}");
                seenSizes.Add(parts[0]);
                continue;
            }
            Assert.True(Fields.TryGetValue(parts[0], out var cs), $"probe prints field {parts[0]} that the test does not map to C#");
            long offset = long.Parse(parts[1]), size = long.Parse(parts[2]);
            if (cs.Offset != offset || cs.Size != size)
                mismatches.Add($"{parts[0]}: C offset {offset} size {size}, C# offset {cs.Offset} size {cs.Size}");
            seenFields.Add(parts[0]);
        }
        Assert.Empty(mismatches);
        Assert.Equal(Fields.Keys.Order(), seenFields.Order());
        Assert.Equal(Sizes.Keys.Order(), seenSizes.Order());
    }

    private static List<string> RunProbe()
    {
        string source = Path.Combine(RepoRoot(), "native-shims", "layout-probe", "layout_probe.c");
        Assert.True(File.Exists(source), $"missing {source}");
        using var dir = new TempDir();
        string exe = dir.File("layout_probe");
        var (code, output) = Run("gcc", $"-Wall -Werror -o {exe} {source}",
            "gcc is required for the layout probe test: apt-get install gcc");
        Assert.True(code == 0, "gcc failed to compile the layout probe:\n" + output);
        (code, output) = Run(exe, "", "");
        Assert.True(code == 0, "layout probe failed:\n" + output);
        return output.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
    }

    private static (int Code, string Output) Run(string file, string args, string missingHint)
    {
        Process p;
        try
        {
            p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Fail($"cannot run {file}: {e.Message}. {missingHint}");
            throw;
        }
        string stdout = p.StandardOutput.ReadToEnd();
        string stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout + stderr);
    }

    internal static string RepoRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "ThinFast.sln")))
                return d.FullName;
        throw new InvalidOperationException("ThinFast.sln not found above " + AppContext.BaseDirectory);
    }

    private static (long, long) F<TStruct, TField>(ref TStruct s, ref TField f) where TStruct : unmanaged where TField : unmanaged =>
        ((long)Unsafe.ByteOffset(ref Unsafe.As<TStruct, byte>(ref s), ref Unsafe.As<TField, byte>(ref f)), sizeof(TField));

    private static Dictionary<string, (long, long)> BuildFields()
    {
        var d = new Dictionary<string, (long, long)>();
        IoSqringOffsets sq = default;
        d["io_sqring_offsets.head"] = F(ref sq, ref sq.Head);
        d["io_sqring_offsets.tail"] = F(ref sq, ref sq.Tail);
        d["io_sqring_offsets.ring_mask"] = F(ref sq, ref sq.RingMask);
        d["io_sqring_offsets.ring_entries"] = F(ref sq, ref sq.RingEntries);
        d["io_sqring_offsets.flags"] = F(ref sq, ref sq.Flags);
        d["io_sqring_offsets.dropped"] = F(ref sq, ref sq.Dropped);
        d["io_sqring_offsets.array"] = F(ref sq, ref sq.Array);
        d["io_sqring_offsets.resv1"] = F(ref sq, ref sq.Resv1);
        d["io_sqring_offsets.resv2"] = F(ref sq, ref sq.Resv2);
        IoCqringOffsets cq = default;
        d["io_cqring_offsets.head"] = F(ref cq, ref cq.Head);
        d["io_cqring_offsets.tail"] = F(ref cq, ref cq.Tail);
        d["io_cqring_offsets.ring_mask"] = F(ref cq, ref cq.RingMask);
        d["io_cqring_offsets.ring_entries"] = F(ref cq, ref cq.RingEntries);
        d["io_cqring_offsets.overflow"] = F(ref cq, ref cq.Overflow);
        d["io_cqring_offsets.cqes"] = F(ref cq, ref cq.Cqes);
        d["io_cqring_offsets.flags"] = F(ref cq, ref cq.Flags);
        d["io_cqring_offsets.resv1"] = F(ref cq, ref cq.Resv1);
        d["io_cqring_offsets.resv2"] = F(ref cq, ref cq.Resv2);
        IoUringParams p = default;
        d["io_uring_params.sq_entries"] = F(ref p, ref p.SqEntries);
        d["io_uring_params.cq_entries"] = F(ref p, ref p.CqEntries);
        d["io_uring_params.flags"] = F(ref p, ref p.Flags);
        d["io_uring_params.sq_thread_cpu"] = F(ref p, ref p.SqThreadCpu);
        d["io_uring_params.sq_thread_idle"] = F(ref p, ref p.SqThreadIdle);
        d["io_uring_params.features"] = F(ref p, ref p.Features);
        d["io_uring_params.wq_fd"] = F(ref p, ref p.WqFd);
        // resv is __u32[3] in C, three u32 fields in C#.
        var resv0 = F(ref p, ref p.Resv0);
        Assert.Equal(resv0.Item1 + 4, F(ref p, ref p.Resv1).Item1);
        Assert.Equal(resv0.Item1 + 8, F(ref p, ref p.Resv2).Item1);
        d["io_uring_params.resv"] = (resv0.Item1, 12);
        d["io_uring_params.sq_off"] = F(ref p, ref p.SqOff);
        d["io_uring_params.cq_off"] = F(ref p, ref p.CqOff);
        IoUringSqe e = default;
        d["io_uring_sqe.opcode"] = F(ref e, ref e.Opcode);
        d["io_uring_sqe.flags"] = F(ref e, ref e.Flags);
        d["io_uring_sqe.ioprio"] = F(ref e, ref e.IoPrio);
        d["io_uring_sqe.fd"] = F(ref e, ref e.Fd);
        d["io_uring_sqe.off"] = F(ref e, ref e.Off);
        d["io_uring_sqe.addr"] = F(ref e, ref e.Addr);
        d["io_uring_sqe.len"] = F(ref e, ref e.Len);
        d["io_uring_sqe.rw_flags"] = F(ref e, ref e.OpFlags);
        d["io_uring_sqe.user_data"] = F(ref e, ref e.UserData);
        d["io_uring_sqe.buf_index"] = F(ref e, ref e.BufIndex);
        d["io_uring_sqe.personality"] = F(ref e, ref e.Personality);
        d["io_uring_sqe.splice_fd_in"] = F(ref e, ref e.SpliceFdIn);
        d["io_uring_sqe.addr3"] = F(ref e, ref e.Addr3);
        d["io_uring_sqe.__pad2"] = F(ref e, ref e.Pad2);
        IoUringCqe c = default;
        d["io_uring_cqe.user_data"] = F(ref c, ref c.UserData);
        d["io_uring_cqe.res"] = F(ref c, ref c.Res);
        d["io_uring_cqe.flags"] = F(ref c, ref c.Flags);
        StatxTimestamp t = default;
        d["statx_timestamp.tv_sec"] = F(ref t, ref t.TvSec);
        d["statx_timestamp.tv_nsec"] = F(ref t, ref t.TvNsec);
        d["statx_timestamp.__reserved"] = F(ref t, ref t.Reserved);
        Statx x = default;
        d["statx.stx_mask"] = F(ref x, ref x.Mask);
        d["statx.stx_blksize"] = F(ref x, ref x.BlkSize);
        d["statx.stx_attributes"] = F(ref x, ref x.Attributes);
        d["statx.stx_nlink"] = F(ref x, ref x.Nlink);
        d["statx.stx_uid"] = F(ref x, ref x.Uid);
        d["statx.stx_gid"] = F(ref x, ref x.Gid);
        d["statx.stx_mode"] = F(ref x, ref x.Mode);
        d["statx.stx_ino"] = F(ref x, ref x.Ino);
        d["statx.stx_size"] = F(ref x, ref x.FileSize);
        d["statx.stx_blocks"] = F(ref x, ref x.Blocks);
        d["statx.stx_attributes_mask"] = F(ref x, ref x.AttributesMask);
        d["statx.stx_atime"] = F(ref x, ref x.Atime);
        d["statx.stx_btime"] = F(ref x, ref x.Btime);
        d["statx.stx_ctime"] = F(ref x, ref x.Ctime);
        d["statx.stx_mtime"] = F(ref x, ref x.Mtime);
        d["statx.stx_rdev_major"] = F(ref x, ref x.RdevMajor);
        d["statx.stx_rdev_minor"] = F(ref x, ref x.RdevMinor);
        d["statx.stx_dev_major"] = F(ref x, ref x.DevMajor);
        d["statx.stx_dev_minor"] = F(ref x, ref x.DevMinor);
        d["statx.stx_mnt_id"] = F(ref x, ref x.MntId);
        d["statx.stx_dio_mem_align"] = F(ref x, ref x.DioMemAlign);
        d["statx.stx_dio_offset_align"] = F(ref x, ref x.DioOffsetAlign);
        IoVec v = default;
        d["iovec.iov_base"] = ((long)((byte*)&v.Base - (byte*)&v), sizeof(void*));
        d["iovec.iov_len"] = F(ref v, ref v.Length);
        return d;
    }
}
