/*
 * file-probe.h - pure helpers of the file driver: O_DIRECT alignment probing and turning
 * SEEK_DATA/SEEK_HOLE answers into block-status extents.  [any thread]
 *
 * The system calls are injected as callbacks so tests/unit/test-file-probe.c can drive the logic
 * with fakes.
 */
#ifndef BLOCKD_FILE_PROBE_H
#define BLOCKD_FILE_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "blockd/blockd.h"

#define FILE_MAX_BLOCKSIZE 4096u

/* Read len bytes at file offset off into buf: bytes read (>= 0) or -errno. */
typedef long file_probe_read_fn(void *ctx, void *buf, size_t len, uint64_t off);

struct file_align {
	uint32_t req_align; /* 0 = not found */
	uint32_t buf_align; /* 0 = not found */
};

/* [any] Probe O_DIRECT alignments by trial reads at offset 0, like QEMU: the smallest request
 * size in 512..4096 that does not fail with EINVAL, then the smallest buffer misalignment in
 * 512..4096 that works with that size.  buf must be 2 * FILE_MAX_BLOCKSIZE bytes, aligned to
 * FILE_MAX_BLOCKSIZE.  A read returning 0 bytes (empty file: the kernel skips the checks at EOF)
 * proves nothing, and the answer falls back to 4096 for both. */
struct file_align file_probe_align_io(file_probe_read_fn *rd, void *ctx, void *buf);

/* Find the next data (whence SEEK_DATA) or hole (SEEK_HOLE) at or after off: the offset, or -errno
 * (-ENXIO: no more data / off at or past EOF). */
typedef int64_t file_seek_fn(void *ctx, uint64_t off, int whence);

/* [any] Fill up to max extents describing [off, off + len): DATA for data, ZERO for holes, depth 1.
 * Boundaries inside the range are rounded to align (data grows, holes shrink) so that callers with
 * a request alignment never see a partial block.  Returns the number of extents (>= 1), or
 * -ENOTSUP when the file system has no SEEK_DATA (the caller reports all data), or -errno. */
int file_map_extents(file_seek_fn *seek, void *ctx, uint64_t off, uint64_t len, uint32_t align,
		     struct bd_extent *ext, unsigned max);

#endif /* BLOCKD_FILE_PROBE_H */
