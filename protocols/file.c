/*
 * file.c - the "file" (regular files) and "host_device" (block devices) protocol drivers.
 *
 * open/close/resize/describe run on the control thread; submit() and every completion run on the
 * I/O loop of the request's channel.  All I/O goes through that loop's io_uring: reads and writes
 * (readv/writev, FUA as RWF_DSYNC), flush (fdatasync), write-zeroes and discard (fallocate, or the
 * block layer's discard command on block devices), cache (fadvise WILLNEED).  Block status is
 * answered synchronously with SEEK_DATA/SEEK_HOLE.  aio=threads asks io_uring to run each operation
 * on its worker threads (IOSQE_ASYNC).  Image locking is QEMU's (file-lock.c).
 *
 * The node's fd is shared by every loop; state learnt at run time (fallocate modes the file system
 * lacks, a failed fdatasync) is kept in atomics in the node.
 */
#include "blockd/blockd.h"
#include "protocols/file-lock.h"
#include "protocols/file-probe.h"

#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD _IO(0x12, 0) /* linux/blkdev.h, kernel >= 6.12 */
#endif

#define FILE_MAX_TRANSFER (32u << 20)
#define FILE_EAGAIN_RETRIES 8

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum file_aio { FILE_AIO_THREADS, FILE_AIO_NATIVE, FILE_AIO_IO_URING };
static const char *const aio_names[] = {"threads", "native", "io_uring", NULL};
enum file_locking { FILE_LOCK_AUTO, FILE_LOCK_ON, FILE_LOCK_OFF };
static const char *const locking_names[] = {"auto", "on", "off", NULL};

struct file_node {
	int fd;
	bool bdev;
	bool direct;
	bool threads; /* aio=threads: IOSQE_ASYNC */
	bool writable;
	bool discard_unmap;
	bool no_flush;
	bool use_lock;
	bool bdev_fast_zero; /* block device: write-zeroes offloaded (not written by the kernel) */
	bool bdev_discard;   /* block device: supports discard */
	enum file_aio aio;
	struct file_lock_state lock;
	char *filename;
	/* The file size at open or at the last resize (the node is drained then): reads past it
	 * read zeroes (the node may be larger under O_DIRECT, rounded up to whole blocks). */
	uint64_t size;
	uint32_t req_align;
	uint32_t lbs;		    /* block device logical block size */
	atomic_bool no_zero_range;  /* fallocate(ZERO_RANGE) unsupported */
	atomic_bool no_punch;	    /* fallocate(PUNCH_HOLE) unsupported */
	atomic_bool no_discard_cmd; /* BLOCK_URING_CMD_DISCARD unsupported */
	atomic_int flush_err;	    /* fdatasync failed on a cached fd: every later flush fails */
};

enum file_step {
	STEP_RW,
	STEP_FLUSH,
	STEP_WZ_PUNCH,	    /* write-zeroes with unmap: punch a hole */
	STEP_WZ_ZERO_RANGE, /* write-zeroes: FALLOC_FL_ZERO_RANGE */
	STEP_WZ_PUNCH_ONLY, /* write-zeroes without ZERO_RANGE: punch, then re-allocate */
	STEP_WZ_ALLOC,
	STEP_FUA_SYNC, /* write-zeroes with FUA: fdatasync after */
	STEP_DISCARD_CMD,
	STEP_DISCARD_PUNCH,
	STEP_CACHE,
};

/* Per loop: reads and writes this channel has on the ring (for the inline write decision). */
struct file_chan {
	unsigned rw_inflight;
};

/* Buffered writes up to this size may be done inline (see write_inline). */
#define FILE_INLINE_WRITE_MAX (128u << 10)

struct file_req {
	struct bd_io io;
	struct bd_req *req;
	struct file_node *fn;
	struct file_chan *fc;
	bool counted; /* in fc->rw_inflight */
	struct bd_loop *loop;
	/* READ/WRITE: what is transferred, req's iovec or the tail bounce buffer */
	const struct iovec *iov;
	int iovcnt;
	uint64_t len;
	struct iovec biov;   /* O_DIRECT at an unaligned end of the image: one aligned buffer */
	struct iovec *tmp;   /* remainder of a short transfer, or a window of > IOV_MAX iovecs */
	uint64_t done;	     /* READ/WRITE: bytes transferred so far */
	uint64_t doff, dlen; /* DISCARD: the range (aligned on block devices) */
	int tmp_cap;
	uint8_t step;
	uint8_t eagain;
	uint8_t zero_tries;
};

/* ---------------------------------------------------------------------------------------------
 * I/O loop side
 */

static void file_io_done(struct bd_io *io, int res);

static void fr_attach(struct file_req *fr, struct io_uring_sqe *sqe)
{
	bd_io_attach(sqe, &fr->io);
	if (fr->fn->threads)
		sqe->flags |= IOSQE_ASYNC;
}

static void fr_free(struct file_req *fr)
{
	free(fr->tmp);
	fr->tmp = NULL;
	fr->tmp_cap = 0;
	free(fr->biov.iov_base);
	fr->biov.iov_base = NULL;
}

static void fr_finish(struct file_req *fr, int ret)
{
	struct bd_req *req = fr->req;

	if (fr->biov.iov_base && ret == 0 && req->op == BD_OP_READ)
		bd_iov_from_buf(req->iov, req->iovcnt, 0, fr->biov.iov_base, req->len);
	if (fr->counted) {
		fr->fc->rw_inflight--;
		fr->counted = false;
	}
	fr_free(fr);
	bd_req_complete(req, ret);
}

/* Zero the part of the transfer from fr->done on (it lies past the end of the file). */
static void fr_zero_rest(struct file_req *fr)
{
	bd_iov_memset(fr->iov, fr->iovcnt, fr->done, 0, fr->len - fr->done);
}

/* Queue the (rest of the) read or write.  0 or -ENOMEM (nothing queued). */
static int rw_issue(struct file_req *fr)
{
	struct bd_req *req = fr->req;
	const struct iovec *iov = fr->iov;
	int cnt = fr->iovcnt;
	struct io_uring_sqe *sqe;
	uint64_t off = req->offset + fr->done;

	if (fr->done || cnt > IOV_MAX) {
		uint64_t skip = fr->done;
		int i = 0, n;

		while (i < cnt && skip >= iov[i].iov_len) {
			skip -= iov[i].iov_len;
			i++;
		}
		n = cnt - i < IOV_MAX ? cnt - i : IOV_MAX;
		if (n <= 0)
			return -EIO;
		if (fr->tmp_cap < n) {
			struct iovec *t = realloc(fr->tmp, (size_t)n * sizeof(*t));
			if (!t)
				return -ENOMEM;
			fr->tmp = t;
			fr->tmp_cap = n;
		}
		memcpy(fr->tmp, &iov[i], (size_t)n * sizeof(*iov));
		fr->tmp[0].iov_base = (char *)fr->tmp[0].iov_base + skip;
		fr->tmp[0].iov_len -= skip;
		iov = fr->tmp;
		cnt = n;
	}

	if (!fr->counted && fr->fc) {
		fr->fc->rw_inflight++;
		fr->counted = true;
	}
	sqe = bd_loop_sqe(fr->loop);
	if (req->op == BD_OP_READ) {
		if (cnt == 1)
			io_uring_prep_read(sqe, fr->fn->fd, iov[0].iov_base,
					   (unsigned)iov[0].iov_len, off);
		else
			io_uring_prep_readv(sqe, fr->fn->fd, iov, (unsigned)cnt, off);
	} else {
		if (cnt == 1)
			io_uring_prep_write(sqe, fr->fn->fd, iov[0].iov_base,
					    (unsigned)iov[0].iov_len, off);
		else
			io_uring_prep_writev(sqe, fr->fn->fd, iov, (unsigned)cnt, off);
		if (req->flags & BD_REQ_FUA)
			sqe->rw_flags = RWF_DSYNC;
	}
	fr->step = STEP_RW;
	fr_attach(fr, sqe);
	return 0;
}

/* The core passes a request ending at an unaligned end of the image as is (only its tail is
 * short).  O_DIRECT cannot do that: go through one aligned buffer, rounded up.  A read past EOF
 * reads zeroes; a write of the last block extends the file to the alignment (as QEMU does). */
static int rw_setup(struct file_node *fn, struct file_req *fr)
{
	struct bd_req *req = fr->req;
	uint64_t a = fn->req_align, blen;

	fr->iov = req->iov;
	fr->iovcnt = req->iovcnt;
	fr->len = req->len;
	if (!fn->direct || a <= 1 || !((req->offset | req->len) & (a - 1)))
		return 0;
	if (req->offset & (a - 1))
		return -EINVAL; /* the core aligns offsets */
	blen = (req->len + a - 1) & ~(a - 1);
	fr->biov.iov_base = bd_io_alloc(blen);
	if (!fr->biov.iov_base)
		return -ENOMEM;
	fr->biov.iov_len = blen;
	if (req->op == BD_OP_WRITE) {
		bd_iov_to_buf(req->iov, req->iovcnt, 0, fr->biov.iov_base, req->len);
		memset((char *)fr->biov.iov_base + req->len, 0, blen - req->len);
	}
	fr->iov = &fr->biov;
	fr->iovcnt = 1;
	fr->len = blen;
	return 0;
}

/* A small buffered write while nothing else of this channel is on the ring: do it here with
 * pwritev().  ext4 and most file systems have no asynchronous buffered-write path, so io_uring
 * hands every such write to an io-wq worker thread: measured on ext4 with Linux 6.18, 8.7 us a
 * 4 KiB write against 2.1 us for pwrite().  A page-cache write returns in microseconds; it can
 * wait in the kernel's dirty-page throttling, and then only this loop waits, which has nothing
 * else in flight on this channel.  Under concurrency the ring is used, where requests overlap.
 * Not for O_DIRECT (truly asynchronous on the ring), FUA (a disk write), or aio=threads.
 * true: done (completion deferred); false: the rest goes to the ring. */
static bool write_inline(struct file_req *fr)
{
	struct bd_req *req = fr->req;
	struct file_node *fn = fr->fn;
	ssize_t r;

	if (fn->direct || fn->threads || (req->flags & BD_REQ_FUA) || fr->fc->rw_inflight ||
	    fr->len > FILE_INLINE_WRITE_MAX || fr->iovcnt > IOV_MAX || fr->iov != req->iov)
		return false;
	r = pwritev(fn->fd, fr->iov, fr->iovcnt, (off_t)req->offset);
	if (r == (ssize_t)fr->len) {
		fr_free(fr);
		bd_req_complete_later(req, 0);
		return true;
	}
	if (r > 0)
		fr->done = (uint64_t)r; /* short: the ring writes the rest */
	return false;            /* errors: the ring tries again and reports */
}

static void rw_continue(struct file_req *fr)
{
	int ret = rw_issue(fr);
	if (ret < 0)
		fr_finish(fr, ret);
}

static void rw_done(struct file_req *fr, int res)
{
	struct bd_req *req = fr->req;
	struct file_node *fn = fr->fn;
	bool is_read = req->op == BD_OP_READ;

	if (res < 0) {
		if ((res == -EAGAIN || res == -EINTR) && fr->eagain++ < FILE_EAGAIN_RETRIES) {
			rw_continue(fr);
			return;
		}
		/* O_DIRECT reads may fail with EINVAL at an unaligned offset after a short read:
		 * the short read was EOF (QEMU assumes the same). */
		if (is_read && res == -EINVAL && fn->direct && fr->done > 0) {
			fr_zero_rest(fr);
			fr_finish(fr, 0);
			return;
		}
		fr_finish(fr, res);
		return;
	}
	if ((uint64_t)res >= fr->len - fr->done) {
		fr_finish(fr, 0);
		return;
	}

	/* A short transfer. */
	fr->done += (uint64_t)res;
	if (is_read && req->offset + fr->done >= fn->size) {
		/* The rest lies past the end of the node (an O_DIRECT read of the unaligned end of
		 * the image, rounded up): it reads as zeroes. */
		fr_zero_rest(fr);
		fr_finish(fr, 0);
		return;
	}
	if (res == 0) {
		/* EOF inside the node (another process truncated the file), or a write that
		 * makes no progress: try once more, then give up. */
		if (fr->zero_tries++ >= 1) {
			bd_log(BD_LOG_WARN, "%s: %s at %llu made no progress (file truncated?)",
			       fn->filename, is_read ? "read" : "write",
			       (unsigned long long)(req->offset + fr->done));
			fr_finish(fr, -EIO);
			return;
		}
	}
	rw_continue(fr);
}

static void fsync_issue(struct file_req *fr, enum file_step step)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(fr->loop);

	io_uring_prep_fsync(sqe, fr->fn->fd, IORING_FSYNC_DATASYNC);
	fr->step = (uint8_t)step;
	fr_attach(fr, sqe);
}

static void fallocate_issue(struct file_req *fr, enum file_step step, int mode, uint64_t off,
			    uint64_t len)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(fr->loop);

	io_uring_prep_fallocate(sqe, fr->fn->fd, mode, (off_t)off, (off_t)len);
	fr->step = (uint8_t)step;
	fr_attach(fr, sqe);
}

static bool is_enotsup(int res)
{
	return res == -EOPNOTSUPP || res == -ENOTSUP || res == -ENOTTY || res == -ENOSYS;
}

/* Write-zeroes: choose the first method the file can do.  false if none is left. */
static bool wz_issue(struct file_req *fr, bool allow_punch)
{
	struct file_node *fn = fr->fn;
	struct bd_req *req = fr->req;

	if (allow_punch && (req->flags & BD_REQ_MAY_UNMAP) && fn->discard_unmap &&
	    !atomic_load_explicit(&fn->no_punch, memory_order_relaxed)) {
		fallocate_issue(fr, STEP_WZ_PUNCH, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				req->offset, req->len);
		return true;
	}
	if (!atomic_load_explicit(&fn->no_zero_range, memory_order_relaxed)) {
		fallocate_issue(fr, STEP_WZ_ZERO_RANGE, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
				req->offset, req->len);
		return true;
	}
	if (!fn->bdev && !atomic_load_explicit(&fn->no_punch, memory_order_relaxed)) {
		fallocate_issue(fr, STEP_WZ_PUNCH_ONLY, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				req->offset, req->len);
		return true;
	}
	return false;
}

static void wz_success(struct file_req *fr)
{
	if ((fr->req->flags & BD_REQ_FUA) && !fr->fn->no_flush)
		fsync_issue(fr, STEP_FUA_SYNC);
	else
		fr_finish(fr, 0);
}

static void wz_done(struct file_req *fr, int res)
{
	struct file_node *fn = fr->fn;
	struct bd_req *req = fr->req;

	switch (fr->step) {
	case STEP_WZ_PUNCH:
		if (is_enotsup(res)) {
			atomic_store(&fn->no_punch, true);
			if (!wz_issue(fr, false))
				fr_finish(fr, -ENOTSUP);
			return;
		}
		break;
	case STEP_WZ_ZERO_RANGE:
		if (is_enotsup(res)) {
			atomic_store(&fn->no_zero_range, true);
			if (!wz_issue(fr, false))
				fr_finish(fr, -ENOTSUP);
			return;
		}
		break;
	case STEP_WZ_PUNCH_ONLY:
		if (is_enotsup(res)) {
			atomic_store(&fn->no_punch, true);
			fr_finish(fr, -ENOTSUP);
			return;
		}
		if (res >= 0) {
			/* Zeroed; allocate again so the write-zeroes did not unmap. */
			fallocate_issue(fr, STEP_WZ_ALLOC, FALLOC_FL_KEEP_SIZE, req->offset,
					req->len);
			return;
		}
		break;
	case STEP_WZ_ALLOC:
		if (is_enotsup(res))
			res = 0; /* the range reads as zeroes already */
		break;
	}
	if (res < 0) {
		fr_finish(fr, res);
		return;
	}
	wz_success(fr);
}

static int wz_start(struct file_node *fn, struct file_req *fr)
{
	struct bd_req *req = fr->req;

	if (fn->bdev) {
		/* The kernel wants logical-block alignment; without offload it would write the
		 * zeroes itself, which is what the core's fallback does too. */
		if ((req->offset | req->len) & (fn->lbs - 1))
			return -ENOTSUP;
		if ((req->flags & BD_REQ_NO_FALLBACK) && !fn->bdev_fast_zero)
			return -ENOTSUP;
	}
	return wz_issue(fr, true) ? 0 : -ENOTSUP;
}

static void discard_punch_issue(struct file_req *fr)
{
	fallocate_issue(fr, STEP_DISCARD_PUNCH, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			fr->doff, fr->dlen);
}

static void discard_cmd_issue(struct file_req *fr)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(fr->loop);

	io_uring_prep_rw(IORING_OP_URING_CMD, sqe, fr->fn->fd, NULL, 0, 0);
	sqe->cmd_op = BLOCK_URING_CMD_DISCARD;
	sqe->addr = fr->doff;
	sqe->addr3 = fr->dlen;
	fr->step = STEP_DISCARD_CMD;
	fr_attach(fr, sqe);
}

static void discard_done(struct file_req *fr, int res)
{
	struct file_node *fn = fr->fn;

	if (fr->step == STEP_DISCARD_CMD && (is_enotsup(res) || res == -EINVAL)) {
		/* Kernel older than 6.12 (no block uring_cmd), or a device without discard. */
		if (!atomic_exchange(&fn->no_discard_cmd, true))
			bd_log(BD_LOG_DEBUG,
			       "%s: io_uring discard command unsupported (%s), using "
			       "fallocate",
			       fn->filename, strerror(-res));
		if (!atomic_load(&fn->no_punch)) {
			discard_punch_issue(fr);
			return;
		}
		res = 0;
	} else if (fr->step == STEP_DISCARD_PUNCH && is_enotsup(res)) {
		/* Discard is advisory (QEMU also treats -ENOTSUP as success): stop trying. */
		atomic_store(&fn->no_punch, true);
		res = 0;
	}
	fr_finish(fr, res < 0 ? res : 0);
}

/* Returns 0 (queued or completed later) or a rejection. */
static int discard_start(struct file_node *fn, struct file_req *fr)
{
	struct bd_req *req = fr->req;

	if (!fn->discard_unmap) {
		bd_req_complete_later(req, 0); /* discard=ignore: the core should not get here */
		return 0;
	}
	fr->doff = req->offset;
	fr->dlen = req->len;
	if (fn->bdev) {
		/* Discard is advisory: shrink to whole logical blocks. */
		uint64_t start = (req->offset + fn->lbs - 1) & ~(uint64_t)(fn->lbs - 1);
		uint64_t end = (req->offset + req->len) & ~(uint64_t)(fn->lbs - 1);
		if (end <= start) {
			bd_req_complete_later(req, 0);
			return 0;
		}
		fr->doff = start;
		fr->dlen = end - start;
		if (!atomic_load(&fn->no_discard_cmd) && fn->bdev_discard) {
			discard_cmd_issue(fr);
			return 0;
		}
	}
	if (atomic_load(&fn->no_punch)) {
		bd_req_complete_later(req, 0); /* advisory, and known not to work here */
		return 0;
	}
	discard_punch_issue(fr);
	return 0;
}

static int64_t seek_fd(void *ctx, uint64_t off, int whence)
{
	off_t r = lseek(*(int *)ctx, (off_t)off, whence);
	return r < 0 ? -errno : (int64_t)r;
}

static void block_status(struct file_node *fn, struct bd_req *req)
{
	unsigned max = (req->flags & BD_REQ_BS_ONE) ? 1 : req->max_extents;
	int n = -ENOTSUP;

	if (max == 0) {
		bd_req_complete_later(req, -EINVAL);
		return;
	}
	if (!fn->bdev)
		n = file_map_extents(seek_fd, &fn->fd, req->offset, req->len, fn->req_align,
				     req->extents, max);
	if (n == -ENOTSUP) {
		req->extents[0].length = req->len;
		req->extents[0].flags = BD_EXT_DATA;
		req->extents[0].depth = 1;
		n = 1;
	}
	if (n < 0) {
		bd_req_complete_later(req, n);
		return;
	}
	req->nr_extents = (unsigned)n;
	bd_req_complete_later(req, 0);
}

static void file_io_done(struct bd_io *io, int res)
{
	struct file_req *fr = container_of(io, struct file_req, io);
	struct file_node *fn = fr->fn;

	switch (fr->step) {
	case STEP_RW:
		rw_done(fr, res);
		return;
	case STEP_FLUSH:
		if (res < 0 && !fn->direct) {
			/* The kernel may have dropped the dirty pages it failed to write: what is
			 * on disk is unknown from now on (QEMU's page_cache_inconsistent). */
			int expected = 0;
			atomic_compare_exchange_strong(&fn->flush_err, &expected, res);
		}
		fr_finish(fr, res < 0 ? res : 0);
		return;
	case STEP_WZ_PUNCH:
	case STEP_WZ_ZERO_RANGE:
	case STEP_WZ_PUNCH_ONLY:
	case STEP_WZ_ALLOC:
		wz_done(fr, res);
		return;
	case STEP_FUA_SYNC:
		fr_finish(fr, res < 0 ? res : 0);
		return;
	case STEP_DISCARD_CMD:
	case STEP_DISCARD_PUNCH:
		discard_done(fr, res);
		return;
	case STEP_CACHE:
		fr_finish(fr, 0); /* advisory */
		return;
	}
	fr_finish(fr, -EIO);
}

static int file_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct file_node *fn = bd_node_priv(node);
	struct file_req *fr = req->priv;
	struct io_uring_sqe *sqe;
	int ret;

	memset(fr, 0, sizeof(*fr));
	fr->io.done = file_io_done;
	fr->req = req;
	fr->fn = fn;
	fr->loop = bd_chan_loop(ch);

	switch (req->op) {
	case BD_OP_READ:
	case BD_OP_WRITE:
		if (req->op == BD_OP_WRITE && !fn->writable)
			return -EROFS;
		if (req->len == 0) {
			bd_req_complete_later(req, 0);
			return 0;
		}
		fr->fc = bd_chan_priv(ch);
		ret = rw_setup(fn, fr);
		if (ret == 0 && req->op == BD_OP_WRITE && write_inline(fr))
			return 0;
		if (ret == 0)
			ret = rw_issue(fr);
		if (ret < 0)
			fr_free(fr);
		return ret;
	case BD_OP_FLUSH: {
		int err = atomic_load(&fn->flush_err);
		if (fn->no_flush || err) {
			bd_req_complete_later(req, err);
			return 0;
		}
		fsync_issue(fr, STEP_FLUSH);
		return 0;
	}
	case BD_OP_WRITE_ZEROES:
		if (!fn->writable)
			return -EROFS;
		ret = wz_start(fn, fr);
		if (ret < 0)
			bd_req_complete_later(req, ret);
		return 0;
	case BD_OP_DISCARD:
		if (!fn->writable)
			return -EROFS;
		return discard_start(fn, fr);
	case BD_OP_BLOCK_STATUS:
		block_status(fn, req);
		return 0;
	case BD_OP_CACHE:
		sqe = bd_loop_sqe(fr->loop);
		io_uring_prep_fadvise(sqe, fn->fd, req->offset,
				      (off_t)(req->len > 0xfffff000u ? 0xfffff000u : req->len),
				      POSIX_FADV_WILLNEED);
		fr->step = STEP_CACHE;
		fr_attach(fr, sqe);
		return 0;
	default:
		return -ENOTSUP;
	}
}

/* ---------------------------------------------------------------------------------------------
 * Control thread side
 */

static long pread_probe(void *ctx, void *buf, size_t len, uint64_t off)
{
	ssize_t r;

	do {
		r = pread(*(int *)ctx, buf, len, (off_t)off);
	} while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : (long)r;
}

/* O_DIRECT alignments: statx(STATX_DIOALIGN) when the kernel knows, else the logical block size
 * of a block device, else trial reads. */
static int probe_direct_align(struct file_node *fn, uint32_t *req_align, uint32_t *buf_align,
			      struct bd_err *err)
{
	struct statx stx;
	struct file_align a = {0, 0};

	if (statx(fn->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN) && stx.stx_dio_offset_align) {
		a.req_align = stx.stx_dio_offset_align;
		a.buf_align = stx.stx_dio_mem_align ? stx.stx_dio_mem_align : 1;
	} else if (fn->bdev) {
		a.req_align = fn->lbs;
		a.buf_align = fn->lbs;
	} else {
		void *buf = bd_io_alloc(2 * FILE_MAX_BLOCKSIZE);
		if (!buf)
			return bd_err_set(err, -ENOMEM, "Out of memory");
		a = file_probe_align_io(pread_probe, &fn->fd, buf);
		free(buf);
	}
	if (!a.req_align || (a.req_align & (a.req_align - 1)) || a.req_align > (1u << 20))
		return bd_err_set(err, -EINVAL,
				  "Could not find working O_DIRECT alignment for '%s'; try "
				  "cache.direct=off",
				  fn->filename);
	if (!a.buf_align || (a.buf_align & (a.buf_align - 1)))
		a.buf_align = FILE_MAX_BLOCKSIZE;
	/* The kernel also wants each iovec's length in whole logical blocks (blkdev_dio_invalid):
	 * never promise a buffer alignment finer than the request alignment. */
	if (a.buf_align < a.req_align)
		a.buf_align = a.req_align;
	*req_align = a.req_align;
	*buf_align = a.buf_align;
	return 0;
}

static uint64_t sysfs_queue_u64(const struct stat *st, const char *attr)
{
	char path[128], buf[64];
	unsigned long long v = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u/queue/%s", major(st->st_rdev),
		 minor(st->st_rdev), attr);
	f = fopen(path, "re");
	if (!f)
		return 0;
	if (fgets(buf, sizeof(buf), f))
		v = strtoull(buf, NULL, 10);
	fclose(f);
	return v;
}

static void file_close(struct bd_node *node)
{
	struct file_node *fn = bd_node_priv(node);

	if (fn->fd >= 0) {
		if (fn->use_lock)
			file_lock_release(fn->fd, &fn->lock);
		close(fn->fd);
		fn->fd = -1;
	}
	free(fn->filename);
	fn->filename = NULL;
}

static int file_open_common(struct bd_node *node, json_t *opts, struct bd_limits *limits,
			    struct bd_err *err, bool device)
{
	const char *drv = device ? "host_device" : "file";
	const struct bd_node_common *common = bd_node_common(node);
	struct file_node *fn = bd_node_priv(node);
	const char *filename = NULL, *prman = NULL;
	int aio = FILE_AIO_IO_URING, locking = FILE_LOCK_AUTO;
	uint64_t u64;
	bool b;
	struct stat st;
	int flags, ret;

	memset(fn, 0, sizeof(*fn));
	fn->fd = -1;

	ret = bd_opts_str(opts, "filename", &filename, err);
	if (ret == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'filename' is missing");
	if (ret < 0)
		return ret;
	ret = bd_opts_enum(opts, "aio", aio_names, &aio, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_enum(opts, "locking", locking_names, &locking, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_u64(opts, "aio-max-batch", &u64, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_bool(opts, "x-check-cache-dropped", &b, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_bool(opts, "drop-cache", &b, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_str(opts, "pr-manager", &prman, err);
	if (ret == 0)
		return bd_err_set(err, -ENOTSUP,
				  "Parameter 'pr-manager' is not supported by blockd (no SCSI "
				  "persistent reservation passthrough)");
	if (ret != -ENOENT)
		return ret;

	fn->filename = strdup(filename);
	if (!fn->filename)
		return bd_err_set(err, -ENOMEM, "Out of memory");
	fn->aio = (enum file_aio)aio;
	fn->threads = aio == FILE_AIO_THREADS;
	fn->direct = common->cache_direct;
	fn->no_flush = common->cache_no_flush;
	fn->discard_unmap = common->discard == BD_DISCARD_UNMAP;
	fn->writable = !common->read_only;

	flags = O_CLOEXEC | (fn->writable ? O_RDWR : O_RDONLY) | (fn->direct ? O_DIRECT : 0);
	fn->fd = open(filename, flags);
	if (fn->fd < 0 && fn->writable && common->auto_read_only &&
	    (errno == EACCES || errno == EROFS || errno == EPERM)) {
		bd_log(BD_LOG_WARN, "'%s' is not writable, opening it read-only (auto-read-only)",
		       filename);
		fn->writable = false;
		fn->fd = open(filename, (flags & ~O_RDWR) | O_RDONLY);
	}
	if (fn->fd < 0) {
		ret = bd_err_set(err, -errno, "Could not open '%s': %s", filename, strerror(errno));
		goto fail;
	}
	if (fstat(fn->fd, &st) < 0) {
		ret = bd_err_set(err, -errno, "Could not stat '%s': %s", filename, strerror(errno));
		goto fail;
	}
	if (!device && !S_ISREG(st.st_mode)) {
		ret = bd_err_set(
		    err, -EINVAL, "'%s' driver requires '%s' to be a regular file%s", drv, filename,
		    S_ISBLK(st.st_mode) ? " (use driver=host_device for block devices)" : "");
		goto fail;
	}
	if (device && !S_ISBLK(st.st_mode)) {
		ret = bd_err_set(err, -EINVAL, "'%s' driver requires '%s' to be a block device%s",
				 drv, filename,
				 S_ISREG(st.st_mode) ? " (use driver=file for regular files)" : "");
		goto fail;
	}
	fn->bdev = device;
	fn->lbs = 512;

	if (fn->bdev) {
		int lbs = 0, ro = 0;
		if (ioctl(fn->fd, BLKGETSIZE64, &fn->size) < 0) {
			ret = bd_err_set(err, -errno, "Could not get the size of '%s': %s",
					 filename, strerror(errno));
			goto fail;
		}
		if (ioctl(fn->fd, BLKSSZGET, &lbs) == 0 && lbs >= 512 && !(lbs & (lbs - 1)))
			fn->lbs = (uint32_t)lbs;
		if (fn->writable && ioctl(fn->fd, BLKROGET, &ro) == 0 && ro) {
			ret = bd_err_set(err, -EACCES,
					 "The device is not writable: '%s' is read-only", filename);
			goto fail;
		}
		fn->bdev_fast_zero = sysfs_queue_u64(&st, "write_zeroes_max_bytes") > 0;
		fn->bdev_discard = sysfs_queue_u64(&st, "discard_max_bytes") > 0;
	} else {
		fn->size = (uint64_t)st.st_size;
	}

	/* Lock before probing: a conflict is the more useful error. */
	if (locking != FILE_LOCK_OFF) {
		if (!file_lock_supported(fn->fd)) {
			if (locking == FILE_LOCK_ON) {
				ret = bd_err_set(err, -ENOTSUP,
						 "locking=on: '%s' does not support OFD locks",
						 filename);
				goto fail;
			}
			bd_log(BD_LOG_DEBUG, "'%s': no OFD locks, image locking disabled",
			       filename);
		} else {
			struct file_perm p =
			    file_lock_perm_for(fn->writable, !fn->bdev, common->force_share);
			ret = file_lock_take(fn->fd, &fn->lock, p, filename, err);
			if (ret < 0)
				goto fail;
			fn->use_lock = true;
		}
	}

	if (fn->direct) {
		ret = probe_direct_align(fn, &limits->req_align, &limits->buf_align, err);
		if (ret < 0)
			goto fail;
	} else {
		limits->req_align = 1;
		limits->buf_align = 1;
	}
	fn->req_align = limits->req_align;

	/* Under O_DIRECT only whole blocks can be transferred: a file whose size is not a multiple
	 * of the alignment shows its last block whole (QEMU rounds to 512 bytes for the same
	 * reason).  The bytes past EOF read as zeroes; writing them grows the file. */
	limits->size = fn->size;
	if (limits->req_align > 1 && fn->size % limits->req_align) {
		limits->size = fn->size + (limits->req_align - fn->size % limits->req_align);
		bd_log(BD_LOG_INFO,
		       "'%s': size %llu is not a multiple of the O_DIRECT alignment %u: the node "
		       "is %llu bytes, the tail reads as zeroes",
		       filename, (unsigned long long)fn->size, limits->req_align,
		       (unsigned long long)limits->size);
	}
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_FLUSH) |
		      BD_OP_BIT(BD_OP_BLOCK_STATUS) | BD_OP_BIT(BD_OP_CACHE);
	if (fn->writable) {
		limits->ops |= BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_WRITE_ZEROES);
		if (fn->discard_unmap)
			limits->ops |= BD_OP_BIT(BD_OP_DISCARD);
	}
	limits->max_transfer = FILE_MAX_TRANSFER;
	limits->max_discard = 0;
	limits->opt_transfer = 0;
	if (st.st_blksize > 0 && !(st.st_blksize & (st.st_blksize - 1)) &&
	    (uint64_t)st.st_blksize <= FILE_MAX_TRANSFER)
		limits->opt_transfer = (uint64_t)st.st_blksize;
	if (limits->opt_transfer < limits->req_align)
		limits->opt_transfer = limits->req_align;
	limits->native_fua = true;
	limits->zeroes_unmap = fn->writable && fn->discard_unmap && (!fn->bdev || fn->bdev_discard);
	limits->can_resize = fn->writable && !fn->bdev;
	return 0;

fail:
	file_close(node);
	return ret;
}

static int file_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		     struct bd_err *err)
{
	return file_open_common(node, opts, limits, err, false);
}

static int hdev_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		     struct bd_err *err)
{
	return file_open_common(node, opts, limits, err, true);
}

static int file_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct file_node *fn = bd_node_priv(node);

	if (fn->bdev)
		return bd_err_set(err, -ENOTSUP, "Cannot resize the block device '%s'",
				  fn->filename);
	if (!fn->writable)
		return bd_err_set(err, -EACCES, "Cannot resize '%s': opened read-only",
				  fn->filename);
	if (new_size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EFBIG, "Cannot resize '%s': size too large", fn->filename);
	if (new_size % fn->req_align)
		return bd_err_set(err, -EINVAL,
				  "Cannot resize '%s' to %llu bytes: with cache.direct=on the size "
				  "must be a multiple of %u",
				  fn->filename, (unsigned long long)new_size, fn->req_align);
	if (ftruncate(fn->fd, (off_t)new_size) < 0)
		return bd_err_set(err, -errno, "Failed to resize '%s': %s", fn->filename,
				  strerror(errno));
	fn->size = new_size;
	return 0;
}

static void file_describe(struct bd_node *node, json_t *out)
{
	struct file_node *fn = bd_node_priv(node);

	json_object_set_new(out, "filename", json_string(fn->filename));
	json_object_set_new(out, "aio", json_string(aio_names[fn->aio]));
	json_object_set_new(out, "locking", json_boolean(fn->use_lock));
}

static const struct bd_opt_desc file_options[] = {
    {"filename", BD_OPT_STR, true, NULL, "path of the image file (or block device)"},
    {"aio", BD_OPT_ENUM, false, aio_names,
     "io_uring (default; 'native' is accepted as io_uring) or threads (io_uring worker "
     "threads)"},
    {"locking", BD_OPT_ENUM, false, locking_names,
     "QEMU-compatible image locking (OFD locks): auto (default), on, off"},
    {"aio-max-batch", BD_OPT_INT, false, NULL, "accepted for compatibility, ignored"},
    {"pr-manager", BD_OPT_STR, false, NULL, "not supported (rejected)"},
    {"x-check-cache-dropped", BD_OPT_BOOL, false, NULL, "accepted for compatibility, ignored"},
    {"drop-cache", BD_OPT_BOOL, false, NULL, "accepted for compatibility, ignored"},
    {NULL},
};

const struct bd_driver bd_drv_file = {
    .name = "file",
    .kind = BD_DRV_PROTOCOL,
    .help = "regular file through io_uring",
    .options = file_options,
    .node_size = sizeof(struct file_node),
    .chan_size = sizeof(struct file_chan),
    .req_size = sizeof(struct file_req),
    .open = file_open,
    .close = file_close,
    .submit = file_submit,
    .resize = file_resize,
    .describe = file_describe,
};

const struct bd_driver bd_drv_host_device = {
    .name = "host_device",
    .kind = BD_DRV_PROTOCOL,
    .help = "block device through io_uring",
    .options = file_options,
    .node_size = sizeof(struct file_node),
    .chan_size = sizeof(struct file_chan),
    .req_size = sizeof(struct file_req),
    .open = hdev_open,
    .close = file_close,
    .submit = file_submit,
    .resize = file_resize,
    .describe = file_describe,
};
