/*
 * file-io.c - the request path of the "file" and "host_device" drivers.  [I/O loop of the
 * request's channel: submit() and every completion]
 *
 * All I/O goes through that loop's io_uring: reads and writes (readv/writev, FUA as RWF_DSYNC),
 * flush (fdatasync), write-zeroes and discard (fallocate, or the block layer's discard command
 * on block devices), cache (fadvise WILLNEED).  Block status is answered synchronously with
 * SEEK_DATA/SEEK_HOLE.  aio=threads asks io_uring to run each operation on its worker threads
 * (IOSQE_ASYNC).  State learnt at run time (fallocate modes the file system lacks, a failed
 * fdatasync) is kept in atomics in the node, whose fd every loop shares.
 */
#include "protocols/file-int.h"
#include "protocols/file-probe.h"

#include <fcntl.h>
#include <liburing.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

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

int file_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
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

