/*
 * test-file-probe.c - unit tests of the file driver's pure helpers (protocols/file-probe.c,
 * protocols/file-lock.c): O_DIRECT alignment probing with a fake read, block-status extents from
 * a fake SEEK_DATA/SEEK_HOLE map, QEMU's lock bytes, and real OFD locks between two open file
 * descriptions of one temporary file (OFD locks conflict within a process, so one process can
 * play both sides).
 */
#include "protocols/file-lock.h"
#include "protocols/file-probe.h"

#include "blockd/blockd.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failures;
static int checks;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		checks++;                                                                          \
		if (!(cond)) {                                                                     \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
				__func__, #cond);                                                  \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_U64(a, b)                                                                         \
	do {                                                                                       \
		unsigned long long a_ = (unsigned long long)(a), b_ = (unsigned long long)(b);     \
		checks++;                                                                          \
		if (a_ != b_) {                                                                    \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: %s == %llu, expected %llu\n", __FILE__,        \
				__LINE__, __func__, #a, a_, b_);                                   \
		}                                                                                  \
	} while (0)

/* ---- alignment probing ---- */

struct fake_dev {
	uint32_t req_align; /* offset/length alignment the "kernel" wants */
	uint32_t mem_align; /* buffer alignment */
	uint64_t size;	    /* file size: reads at EOF return 0 without checks */
	int calls;
};

static long fake_read(void *ctx, void *buf, size_t len, uint64_t off)
{
	struct fake_dev *d = ctx;

	d->calls++;
	if (off >= d->size)
		return 0;
	if ((len | off) % d->req_align || (uintptr_t)buf % d->mem_align)
		return -EINVAL;
	return (long)(len < d->size - off ? len : d->size - off);
}

static void test_probe_align(void)
{
	void *buf = aligned_alloc(FILE_MAX_BLOCKSIZE, 2 * FILE_MAX_BLOCKSIZE);
	static const uint32_t reqs[] = {512, 1024, 2048, 4096};
	struct file_align a;

	for (unsigned i = 0; i < 4; i++) {
		for (uint32_t mem = 512; mem <= 4096; mem <<= 1) {
			struct fake_dev d = {reqs[i], mem, 1 << 20, 0};
			a = file_probe_align_io(fake_read, &d, buf);
			CHECK_EQ_U64(a.req_align, reqs[i]);
			CHECK_EQ_U64(a.buf_align, mem);
		}
	}
	/* Empty file: nothing can be learnt, the safe answer is 4096. */
	{
		struct fake_dev d = {512, 512, 0, 0};
		a = file_probe_align_io(fake_read, &d, buf);
		CHECK_EQ_U64(a.req_align, 4096);
		CHECK_EQ_U64(a.buf_align, 4096);
	}
	/* A file shorter than the alignment still answers (a short read is an answer). */
	{
		struct fake_dev d = {512, 512, 100, 0};
		a = file_probe_align_io(fake_read, &d, buf);
		CHECK_EQ_U64(a.req_align, 512);
	}
	/* Nothing works (alignment above 4096): not found. */
	{
		struct fake_dev d = {8192, 512, 1 << 20, 0};
		a = file_probe_align_io(fake_read, &d, buf);
		CHECK_EQ_U64(a.req_align, 0);
	}
	free(buf);
}

/* ---- block status ---- */

/* A fake file: sorted, non-overlapping data ranges; everything else up to size is a hole. */
struct fake_map {
	uint64_t size;
	int n;
	uint64_t start[8], end[8];
	int err; /* if set, every seek fails with it */
};

static int64_t fake_seek(void *ctx, uint64_t off, int whence)
{
	struct fake_map *m = ctx;

	if (m->err)
		return m->err;
	if (whence == SEEK_END)
		return (int64_t)m->size;
	if (off >= m->size)
		return -ENXIO;
	for (int i = 0; i < m->n; i++) {
		if (whence == SEEK_DATA) {
			if (off < m->end[i])
				return (int64_t)(off > m->start[i] ? off : m->start[i]);
		} else {
			if (off < m->start[i])
				return (int64_t)off;
			if (off < m->end[i])
				return (int64_t)m->end[i];
		}
	}
	return whence == SEEK_DATA ? -ENXIO : (int64_t)m->size;
}

static void test_extents(void)
{
	struct bd_extent e[8];
	int n;

	/* data [0,64K) hole [64K,128K) data [128K,192K) hole to 1M */
	struct fake_map m = {1 << 20, 2, {0, 131072}, {65536, 196608}, 0};
	n = file_map_extents(fake_seek, &m, 0, 1 << 20, 1, e, 8);
	CHECK_EQ_U64(n, 4);
	CHECK_EQ_U64(e[0].length, 65536);
	CHECK_EQ_U64(e[0].flags, BD_EXT_DATA);
	CHECK_EQ_U64(e[0].depth, 1);
	CHECK_EQ_U64(e[1].length, 65536);
	CHECK_EQ_U64(e[1].flags, BD_EXT_ZERO);
	CHECK_EQ_U64(e[2].length, 65536);
	CHECK_EQ_U64(e[2].flags, BD_EXT_DATA);
	CHECK_EQ_U64(e[3].length, (1 << 20) - 196608);
	CHECK_EQ_U64(e[3].flags, BD_EXT_ZERO);

	/* max extents honoured; a range in the middle */
	n = file_map_extents(fake_seek, &m, 4096, 200000, 1, e, 2);
	CHECK_EQ_U64(n, 2);
	CHECK_EQ_U64(e[0].length, 65536 - 4096);
	CHECK_EQ_U64(e[1].length, 65536);
	n = file_map_extents(fake_seek, &m, 70000, 10, 1, e, 1);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(e[0].length, 10);
	CHECK_EQ_U64(e[0].flags, BD_EXT_ZERO);

	/* past EOF (node larger than the file) is data: a reader must read it and see the error
	 * (or the zeroes of a rounded-up O_DIRECT tail), never trust a hole there */
	n = file_map_extents(fake_seek, &m, 1 << 20, 4096, 1, e, 8);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(e[0].flags, BD_EXT_DATA);
	/* a trailing hole that the end of the file cuts: hole up to EOF, data after it */
	n = file_map_extents(fake_seek, &m, (1 << 20) - 8192, 16384, 1, e, 8);
	CHECK_EQ_U64(n, 2);
	CHECK_EQ_U64(e[0].flags, BD_EXT_ZERO);
	CHECK_EQ_U64(e[0].length, 8192);
	CHECK_EQ_U64(e[1].flags, BD_EXT_DATA);
	CHECK_EQ_U64(e[1].length, 8192);

	/* Unaligned boundaries with alignment 4096: data grows, holes shrink, small holes vanish
	 * into the data around them. */
	struct fake_map u = {1 << 20, 2, {0, 9000}, {5000, 20000}, 0};
	n = file_map_extents(fake_seek, &u, 0, 1 << 20, 4096, e, 8);
	/* data [0,5000)->[0,8192); hole [8192,9000) is smaller than a block: data to 20480 */
	CHECK_EQ_U64(n, 2);
	CHECK_EQ_U64(e[0].length, 20480);
	CHECK_EQ_U64(e[0].flags, BD_EXT_DATA);
	CHECK_EQ_U64(e[1].length, (1 << 20) - 20480);
	CHECK_EQ_U64(e[1].flags, BD_EXT_ZERO);
	uint64_t sum = 0;
	for (int i = 0; i < n; i++)
		sum += e[i].length;
	CHECK_EQ_U64(sum, 1 << 20);

	/* a file with no SEEK_DATA */
	struct fake_map nos = {1 << 20, 0, {0}, {0}, -EINVAL};
	n = file_map_extents(fake_seek, &nos, 0, 4096, 1, e, 8);
	CHECK_EQ_U64(n, -ENOTSUP);

	/* all hole, then all data */
	struct fake_map hole = {1 << 20, 0, {0}, {0}, 0};
	n = file_map_extents(fake_seek, &hole, 0, 1 << 20, 512, e, 8);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(e[0].flags, BD_EXT_ZERO);
	struct fake_map data = {1 << 20, 1, {0}, {1 << 20}, 0};
	n = file_map_extents(fake_seek, &data, 512, 4096, 512, e, 8);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(e[0].flags, BD_EXT_DATA);
	CHECK_EQ_U64(e[0].length, 4096);
}

/* ---- lock bytes ---- */

static void test_lock_bytes(void)
{
	int offs[8];
	uint32_t bits[8];
	struct file_perm w = file_lock_perm_for(true, true, false);
	struct file_perm r = file_lock_perm_for(false, true, false);
	struct file_perm fs = file_lock_perm_for(false, true, true);
	int n;

	CHECK_EQ_U64(w.perm, FILE_PERM_CONSISTENT_READ | FILE_PERM_WRITE | FILE_PERM_RESIZE);
	CHECK_EQ_U64(w.shared, FILE_PERM_CONSISTENT_READ | FILE_PERM_WRITE_UNCHANGED);
	CHECK_EQ_U64(r.perm, FILE_PERM_CONSISTENT_READ);
	CHECK_EQ_U64(r.shared, FILE_PERM_CONSISTENT_READ | FILE_PERM_WRITE_UNCHANGED);
	CHECK_EQ_U64(fs.shared, FILE_PERM_ALL);
	CHECK_EQ_U64(file_lock_perm_for(true, false, false).perm,
		     FILE_PERM_CONSISTENT_READ | FILE_PERM_WRITE);

	/* A writer tests 200, 201, 203 (perms it takes) then 101, 103 (perms it does not share). */
	n = file_lock_check_offsets(w, offs, bits);
	CHECK_EQ_U64(n, 5);
	CHECK_EQ_U64(offs[0], 200);
	CHECK_EQ_U64(offs[1], 201);
	CHECK_EQ_U64(offs[2], 203);
	CHECK_EQ_U64(offs[3], 101);
	CHECK_EQ_U64(bits[3], FILE_PERM_WRITE);
	CHECK_EQ_U64(offs[4], 103);
	n = file_lock_check_offsets(fs, offs, bits);
	CHECK_EQ_U64(n, 1);
	CHECK_EQ_U64(offs[0], 200);
	CHECK(!strcmp(file_perm_name(FILE_PERM_WRITE), "write"));
	CHECK(!strcmp(file_perm_name(FILE_PERM_CONSISTENT_READ), "consistent read"));
}

static bool byte_locked(int fd, int off)
{
	struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};
	return fcntl(fd, F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK;
}

static void test_real_locks(void)
{
	char path[] = "/tmp/test-file-probe.XXXXXX";
	int fd0 = mkstemp(path);
	int fd1, fd2, fd3;
	struct file_lock_state s1 = {0}, s2 = {0}, s3 = {0};
	struct bd_err err = {0};
	int ret;

	CHECK(fd0 >= 0);
	if (fd0 < 0)
		return;
	fd1 = open(path, O_RDWR);
	fd2 = open(path, O_RDWR);
	fd3 = open(path, O_RDONLY);
	CHECK(fd1 >= 0 && fd2 >= 0 && fd3 >= 0);
	if (!file_lock_supported(fd1)) {
		fprintf(stderr, "no OFD locks on /tmp: skipping the real lock checks\n");
		goto out;
	}

	/* writer 1 */
	ret = file_lock_take(fd1, &s1, file_lock_perm_for(true, true, false), path, &err);
	CHECK_EQ_U64(ret, 0);
	CHECK(byte_locked(fd0, 100) && byte_locked(fd0, 101) && byte_locked(fd0, 103));
	CHECK(byte_locked(fd0, 201) && byte_locked(fd0, 203));
	CHECK(!byte_locked(fd0, 102) && !byte_locked(fd0, 200) && !byte_locked(fd0, 202));

	/* writer 2 must fail, and leave nothing behind */
	bd_err_clear(&err);
	ret = file_lock_take(fd2, &s2, file_lock_perm_for(true, true, false), path, &err);
	CHECK_EQ_U64(ret, -EAGAIN);
	CHECK(strstr(err.msg, "Failed to get \"write\" lock") != NULL);
	CHECK(strstr(err.msg, "Is another process using the image") != NULL);
	CHECK_EQ_U64(s2.locked_perm | s2.locked_unshared, 0);

	/* a plain reader (like qemu-img info) fails: it does not share write */
	bd_err_clear(&err);
	ret = file_lock_take(fd3, &s3, file_lock_perm_for(false, true, false), path, &err);
	CHECK_EQ_U64(ret, -EAGAIN);
	CHECK(strstr(err.msg, "Failed to get shared \"write\" lock") != NULL);

	/* force-share reader (qemu-img info -U) works */
	bd_err_clear(&err);
	ret = file_lock_take(fd3, &s3, file_lock_perm_for(false, true, true), path, &err);
	CHECK_EQ_U64(ret, 0);
	file_lock_release(fd3, &s3);

	/* after writer 1 releases, writer 2 gets it */
	file_lock_release(fd1, &s1);
	CHECK_EQ_U64(s1.locked_perm | s1.locked_unshared, 0);
	bd_err_clear(&err);
	ret = file_lock_take(fd2, &s2, file_lock_perm_for(true, true, false), path, &err);
	CHECK_EQ_U64(ret, 0);
	file_lock_release(fd2, &s2);

	/* two readers coexist */
	ret = file_lock_take(fd1, &s1, file_lock_perm_for(false, true, false), path, &err);
	CHECK_EQ_U64(ret, 0);
	ret = file_lock_take(fd3, &s3, file_lock_perm_for(false, true, false), path, &err);
	CHECK_EQ_U64(ret, 0);
	/* but a writer cannot join them */
	bd_err_clear(&err);
	ret = file_lock_take(fd2, &s2, file_lock_perm_for(true, true, false), path, &err);
	CHECK_EQ_U64(ret, -EAGAIN);
	file_lock_release(fd1, &s1);
	file_lock_release(fd3, &s3);
out:
	close(fd1);
	close(fd2);
	close(fd3);
	close(fd0);
	unlink(path);
}

int main(void)
{
	test_probe_align();
	test_extents();
	test_lock_bytes();
	test_real_locks();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
