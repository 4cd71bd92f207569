/* Prints the size of every kernel struct ThinFast mirrors in C#, and the offset and size of each
 * mirrored field, one per line: "struct size N" / "struct.field OFFSET SIZE".
 * Compiled and run by tests/ThinFast.IO.Tests (LayoutProbeTests). */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdio.h>
#include <sys/uio.h>
#include <linux/io_uring.h>
#include <linux/stat.h>

#define S(type) printf("%s size %zu\n", #type, sizeof(struct type))
#define F(type, field) printf("%s.%s %zu %zu\n", #type, #field, offsetof(struct type, field), sizeof(((struct type *)0)->field))

int main(void)
{
    S(io_sqring_offsets);
    F(io_sqring_offsets, head); F(io_sqring_offsets, tail); F(io_sqring_offsets, ring_mask);
    F(io_sqring_offsets, ring_entries); F(io_sqring_offsets, flags); F(io_sqring_offsets, dropped);
    F(io_sqring_offsets, array); F(io_sqring_offsets, resv1); F(io_sqring_offsets, resv2);

    S(io_cqring_offsets);
    F(io_cqring_offsets, head); F(io_cqring_offsets, tail); F(io_cqring_offsets, ring_mask);
    F(io_cqring_offsets, ring_entries); F(io_cqring_offsets, overflow); F(io_cqring_offsets, cqes);
    F(io_cqring_offsets, flags); F(io_cqring_offsets, resv1); F(io_cqring_offsets, resv2);

    S(io_uring_params);
    F(io_uring_params, sq_entries); F(io_uring_params, cq_entries); F(io_uring_params, flags);
    F(io_uring_params, sq_thread_cpu); F(io_uring_params, sq_thread_idle); F(io_uring_params, features);
    F(io_uring_params, wq_fd); F(io_uring_params, resv); F(io_uring_params, sq_off); F(io_uring_params, cq_off);

    S(io_uring_sqe);
    F(io_uring_sqe, opcode); F(io_uring_sqe, flags); F(io_uring_sqe, ioprio); F(io_uring_sqe, fd);
    F(io_uring_sqe, off); F(io_uring_sqe, addr); F(io_uring_sqe, len); F(io_uring_sqe, rw_flags);
    F(io_uring_sqe, user_data); F(io_uring_sqe, buf_index); F(io_uring_sqe, personality);
    F(io_uring_sqe, splice_fd_in); F(io_uring_sqe, addr3); F(io_uring_sqe, __pad2);

    S(io_uring_cqe);
    F(io_uring_cqe, user_data); F(io_uring_cqe, res); F(io_uring_cqe, flags);

    S(statx_timestamp);
    F(statx_timestamp, tv_sec); F(statx_timestamp, tv_nsec); F(statx_timestamp, __reserved);

    S(statx);
    F(statx, stx_mask); F(statx, stx_blksize); F(statx, stx_attributes); F(statx, stx_nlink);
    F(statx, stx_uid); F(statx, stx_gid); F(statx, stx_mode); F(statx, stx_ino); F(statx, stx_size);
    F(statx, stx_blocks); F(statx, stx_attributes_mask); F(statx, stx_atime); F(statx, stx_btime);
    F(statx, stx_ctime); F(statx, stx_mtime); F(statx, stx_rdev_major); F(statx, stx_rdev_minor);
    F(statx, stx_dev_major); F(statx, stx_dev_minor); F(statx, stx_mnt_id);
    F(statx, stx_dio_mem_align); F(statx, stx_dio_offset_align);

    S(iovec);
    F(iovec, iov_base); F(iovec, iov_len);
    return 0;
}
