/*
 * file.c - the "file" (regular files) and "host_device" (block devices) protocol drivers: open
 * (options, O_DIRECT alignment, block device limits, image locking from file-lock.c), close,
 * resize, describe and the driver tables.  [control thread]
 *
 * The request path (io_uring on the request's I/O loop) is file-io.c; the structures both share
 * are in file-int.h.
 */
#include "protocols/file-int.h"
#include "protocols/file-probe.h"

#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

static const char *const aio_names[] = {"threads", "native", "io_uring", NULL};
static const char *const locking_names[] = {"auto", "on", "off", NULL};

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
