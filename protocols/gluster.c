/*
 * gluster.c - the "gluster" protocol driver: an image file on a GlusterFS volume through gfapi's
 * asynchronous calls, with QEMU's options (volume, path, server[], debug, logfile or a
 * gluster:// filename) plus timeout.
 *
 * Threads: open/close/resize/create/describe run on the control thread (create may run on a
 * worker).  submit() runs on the request's I/O loop; gfapi calls our completion on one of its
 * own threads (or inline, inside the submitting call, when a translator answers at once); the
 * completion goes back to the request's loop through the channel's completion queue
 * (blockd/xqueue.c: lock-free, one eventfd write and one CQE per burst), or, inline, through
 * deferred work on the loop.
 *
 * Timeouts: gfapi has no per-call timeout, so every request arms a timer on its loop.  When it
 * fires first, the request completes with -EIO and the operation is abandoned: an atomic state
 * (pending → done | abandoned) decides which of the timer and the completion owns it.  An
 * abandoned operation is freed by its late completion on the gfapi thread and never touches the
 * caller's memory: reads go through a bounce buffer owned by the operation (timeout=0 turns the
 * timer off and reads straight into the caller's buffers), writes are copied by gfapi when they
 * are issued (glfs_pwritev_async copies into its own iobuf before sending).  The open file (and
 * its connection) stays alive while abandoned operations are out: it has a reference count, and
 * the last reference closes it on a detached thread (gl_conn_put_close).
 *
 * Writes go through gfapi's write-behind like QEMU's driver does: a write may be acknowledged
 * before the brick has it, and a flush (fdatasync) is what makes it durable; with
 * resync-failed-syncs-after-fsync a failed flush keeps the data for the next one.
 */
#include "protocols/file-probe.h"
#include "protocols/gluster-int.h"

#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GL_MAX_TRANSFER (1u << 20)
#define GL_DEFAULT_TIMEOUT 30
#define GL_BOUNCE_KEEP (1u << 20)   /* free-list operations keep bounce buffers up to this size */
#define GL_BOUNCE_CACHE (32u << 20) /* ... and at most this much per channel in all */
#define GL_FREE_MAX 256
#define GL_BS_THREADS 4	 /* block-status lookups in flight per node; more are answered "data" */
#define GL_BS_EXTENTS 64 /* extents one block-status answer describes at most */

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* The open image, shared by the node and its abandoned operations. */
struct gl_file {
	struct gl_conn *conn;
	glfs_fd_t *fd;
	atomic_int refs;
	atomic_uint bs_threads; /* block-status helper threads running */
};

struct gl_node {
	struct gl_file *file;
	struct gl_loc loc;
	char *name; /* for messages: gluster://host:port/vol/path */
	uint64_t size;
	uint64_t timeout_ns; /* 0 = no timeout */
	bool writable;
	bool discard_unmap;
	atomic_bool no_zerofill;
	atomic_uint timeouts; /* requests failed by the timer (for describe and the log) */
	atomic_bool no_seek;  /* the volume has no SEEK_DATA: block status says "data" */
};

/* OP_COPYING: a gfapi thread is copying a bounced read into the request's buffers; the timer
 * leaves such an operation alone (its answer came in time), and the copier sets it back to
 * OP_PENDING when done. */
enum op_state { OP_PENDING, OP_DONE, OP_ABANDONED, OP_COPYING };

struct gl_op {
	atomic_int state;
	struct gl_file *file;
	struct gl_node *gn;
	struct gl_chan *gc;
	struct bd_xq *cq;
	struct bd_loop *loop;
	struct bd_req *req; /* NULL once abandoned */
	struct bd_timer timer;
	struct bd_defer defer; /* completion that came inline, on the loop's own thread */
	ssize_t ret;
	int err;
	void *buf; /* read bounce buffer */
	size_t cap;
	bool bounced; /* this read went through buf */
	/* block status: computed on a helper thread into ext (owned by the operation) */
	struct bd_extent *ext;
	unsigned max_ext;
	uint64_t bs_off, bs_len;
	glfs_fd_t *fd;
	struct gl_op *next;  /* channel free list */
	struct bd_xq_item qlink; /* completion queue */
};

/* Per channel (per loop): completions pushed by gfapi's threads (blockd/xqueue.c). */
struct gl_chan {
	struct bd_xq *cq;
	struct gl_op *free_ops;
	unsigned nfree;
	size_t cached; /* bytes of bounce buffers held by free_ops */
};

/* ---------------------------------------------------------------------------------------------
 * I/O loop side
 */

static void file_unref(struct gl_file *f)
{
	if (atomic_fetch_sub(&f->refs, 1) == 1) {
		gl_conn_put_close(f->conn, f->fd);
		free(f);
	}
}

static struct gl_op *op_get(struct gl_chan *gc)
{
	struct gl_op *op = gc->free_ops;
	if (op) {
		gc->free_ops = op->next;
		gc->nfree--;
		gc->cached -= op->cap;
		return op;
	}
	return calloc(1, sizeof(*op));
}

static void op_free(struct gl_op *op)
{
	free(op->ext);
	free(op->buf);
	free(op);
}

static void op_put(struct gl_chan *gc, struct gl_op *op)
{
	if (gc->nfree >= GL_FREE_MAX) {
		op_free(op);
		return;
	}
	if (op->cap > GL_BOUNCE_KEEP || gc->cached + op->cap > GL_BOUNCE_CACHE) {
		free(op->buf);
		op->buf = NULL;
		op->cap = 0;
	}
	op->next = gc->free_ops;
	gc->free_ops = op;
	gc->nfree++;
	gc->cached += op->cap;
}

/* Errors of the transport mean "the volume is unreachable": the caller sees EIO. */
static int map_err(int e)
{
	switch (e) {
	case 0:
		return -EIO;
	case ENOTCONN:
	case ECONNREFUSED:
	case ECONNRESET:
	case ECONNABORTED:
	case EPIPE:
	case ETIMEDOUT:
	case EHOSTUNREACH:
	case ENETUNREACH:
	case EBADFD:
	case EBADF:
	case ESTALE:
	case ENODATA:
		return -EIO;
	default:
		return -e;
	}
}

/* [loop] The completion, back on the request's loop. */
static void op_done_msg(void *arg)
{
	struct gl_op *op = arg;
	struct bd_req *req = op->req;
	struct gl_node *gn = op->gn;
	int ret = 0;

	if (gn->timeout_ns)
		bd_timer_cancel(op->loop, &op->timer);
	if (op->ret < 0 && req->op == BD_OP_BLOCK_STATUS) {
		if (op->err == ENOTSUP || op->err == EOPNOTSUPP || op->err == EINVAL ||
		    op->err == ENOSYS)
			atomic_store(&gn->no_seek, true);
		ret = 0; /* advisory: say "data" */
		req->extents[0] =
		    (struct bd_extent){.length = req->len, .flags = BD_EXT_DATA, .depth = 1};
		req->nr_extents = 1;
	} else if (op->ret < 0) {
		ret = map_err(op->err);
		if (req->op == BD_OP_WRITE_ZEROES && (ret == -EOPNOTSUPP || ret == -ENOSYS)) {
			atomic_store(&gn->no_zerofill, true);
			ret = -ENOTSUP; /* the core writes zero buffers instead */
		} else if (req->op == BD_OP_DISCARD && (ret == -EOPNOTSUPP || ret == -ENOSYS)) {
			ret = 0; /* advisory */
		}
	} else if (req->op == BD_OP_BLOCK_STATUS) {
		memcpy(req->extents, op->ext, (size_t)op->ret * sizeof(*op->ext));
		req->nr_extents = (unsigned)op->ret;
	} else if (req->op == BD_OP_READ) {
		size_t got = (size_t)op->ret;
		if (got > req->len)
			got = req->len;
		if (op->bounced)
			bd_iov_from_buf(req->iov, req->iovcnt, 0, op->buf, got);
		if (got < req->len) /* past the end of the file: zeroes */
			bd_iov_memset(req->iov, req->iovcnt, got, 0, req->len - got);
	} else if (req->op == BD_OP_WRITE && (uint64_t)op->ret != req->len) {
		ret = -EIO; /* gfapi writes all or fails */
	}
	op->req = NULL;
	op_put(op->gc, op);
	bd_req_complete(req, ret);
}

static void op_done_defer(struct bd_defer *d)
{
	op_done_msg(container_of(d, struct gl_op, defer));
}

/* [loop] A finished operation from the queue. */
static void cq_deliver(struct bd_xq_item *it)
{
	op_done_msg(container_of(it, struct gl_op, qlink));
}

/* [gfapi thread, or inline in the submitting call] */
static void op_finish(struct gl_op *op);

static void op_cbk(glfs_fd_t *fd, ssize_t ret, struct glfs_stat *pre, struct glfs_stat *post,
		   void *data)
{
	struct gl_op *op = data;

	(void)fd;
	(void)pre;
	(void)post;
	op->err = ret < 0 ? errno : 0;
	op->ret = ret;
	if (ret > 0 && op->bounced) {
		/* Copy out of the bounce buffer here, where gfapi has just written it (cache-hot),
		 * not on the loop, which also runs the export.  Only while the operation is
		 * pending: the request is then alive and the timer cannot complete it meanwhile. */
		int expected = OP_PENDING;
		if (atomic_compare_exchange_strong(&op->state, &expected, OP_COPYING)) {
			struct bd_req *req = op->req;
			size_t got = (size_t)ret < req->len ? (size_t)ret : req->len;
			bd_iov_from_buf(req->iov, req->iovcnt, 0, op->buf, got);
			op->bounced = false;
			atomic_store(&op->state, OP_PENDING);
		}
	}
	op_finish(op);
}

/* [any] The result is in op: hand it to the loop, or free an abandoned operation. */
static void op_finish(struct gl_op *op)
{
	int expected = OP_PENDING;

	if (atomic_compare_exchange_strong(&op->state, &expected, OP_DONE)) {
		if (bd_loop_current() == op->loop) {
			/* inline (write-behind acknowledged at once): no message, no wake-up */
			op->defer.fn = op_done_defer;
			bd_loop_defer(op->loop, &op->defer);
			return;
		}
		bd_xq_push(op->cq, &op->qlink);
		return;
	}
	/* Abandoned by the timer: the request is long gone; only the operation remains. */
	struct gl_file *f = op->file;
	op_free(op);
	file_unref(f);
}

static int64_t bs_seek(void *ctx, uint64_t off, int whence)
{
	off_t r = glfs_lseek(ctx, (off_t)off, whence);
	return r < 0 ? -(errno ? errno : EIO) : (int64_t)r;
}

/* [helper thread] glfs_lseek is synchronous: never on the loop. */
static void *bs_thread(void *arg)
{
	struct gl_op *op = arg;
	struct gl_file *f = op->file; /* alive: by the node, or by the abandoned operation */
	int n = file_map_extents(bs_seek, op->fd, op->bs_off, op->bs_len, 1, op->ext, op->max_ext);

	atomic_fetch_sub(&f->bs_threads, 1);
	op->ret = n;
	op->err = n < 0 ? -n : 0;
	op_finish(op);
	return NULL;
}

/* Start a block-status lookup; false when none can run (the caller answers "data"). */
static bool bs_start(struct gl_node *gn, struct gl_op *op, struct bd_req *req)
{
	pthread_attr_t a;
	pthread_t th;
	int r;

	if (atomic_load(&gn->no_seek) ||
	    atomic_fetch_add(&gn->file->bs_threads, 1) >= GL_BS_THREADS) {
		if (!atomic_load(&gn->no_seek))
			atomic_fetch_sub(&gn->file->bs_threads, 1);
		return false;
	}
	op->max_ext = (req->flags & BD_REQ_BS_ONE) ? 1 : req->max_extents;
	if (op->max_ext > GL_BS_EXTENTS)
		op->max_ext = GL_BS_EXTENTS;
	free(op->ext);
	op->ext = calloc(op->max_ext, sizeof(*op->ext));
	if (!op->ext) {
		atomic_fetch_sub(&gn->file->bs_threads, 1);
		return false;
	}
	op->fd = gn->file->fd;
	op->bs_off = req->offset;
	op->bs_len = req->len;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	r = pthread_create(&th, &a, bs_thread, op);
	pthread_attr_destroy(&a);
	if (r != 0) {
		atomic_fetch_sub(&gn->file->bs_threads, 1);
		return false;
	}
	return true;
}

/* [loop] The timeout. */
static void op_timeout(struct bd_timer *t)
{
	struct gl_op *op = container_of(t, struct gl_op, timer);
	struct gl_node *gn = op->gn;
	struct bd_req *req = op->req;
	int expected = OP_PENDING;

	atomic_fetch_add(&op->file->refs, 1); /* for the late completion */
	if (!atomic_compare_exchange_strong(&op->state, &expected, OP_ABANDONED)) {
		atomic_fetch_sub(&op->file->refs, 1); /* completion on its way: let it finish */
		return;
	}
	if (atomic_fetch_add(&gn->timeouts, 1) == 0)
		bd_log(BD_LOG_WARN,
		       "gluster %s: no answer within %llu s, failing requests with EIO (the "
		       "server may be down)",
		       gn->name, (unsigned long long)(gn->timeout_ns / 1000000000ull));
	op->req = NULL;
	bd_req_complete(req, -EIO);
}

static int gl_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct gl_node *gn = bd_node_priv(node);
	struct gl_chan *gc = bd_chan_priv(ch);
	glfs_fd_t *fd = gn->file->fd;
	struct gl_op *op;
	int r;

	switch (req->op) {
	case BD_OP_READ:
	case BD_OP_FLUSH:
		break;
	case BD_OP_BLOCK_STATUS:
		if (req->max_extents == 0)
			return -EINVAL;
		if (atomic_load(&gn->no_seek)) {
			req->extents[0] = (struct bd_extent){
			    .length = req->len, .flags = BD_EXT_DATA, .depth = 1};
			req->nr_extents = 1;
			bd_req_complete_later(req, 0);
			return 0;
		}
		break;
	case BD_OP_WRITE:
	case BD_OP_DISCARD:
	case BD_OP_WRITE_ZEROES:
		if (!gn->writable)
			return -EROFS;
		if (req->op == BD_OP_WRITE_ZEROES && atomic_load(&gn->no_zerofill))
			return -ENOTSUP;
		if (req->op == BD_OP_DISCARD && !gn->discard_unmap) {
			bd_req_complete_later(req, 0);
			return 0;
		}
		break;
	default:
		return -ENOTSUP;
	}
	if (req->len == 0 && req->op != BD_OP_FLUSH) {
		bd_req_complete_later(req, 0);
		return 0;
	}
	if (!gc->cq)
		return -EIO;
	op = op_get(gc);
	if (!op)
		return -ENOMEM;
	atomic_init(&op->state, OP_PENDING);
	op->file = gn->file;
	op->gn = gn;
	op->gc = gc;
	op->cq = gc->cq;
	op->loop = bd_chan_loop(ch);
	op->req = req;
	op->ret = 0;
	op->err = 0;
	op->bounced = false;

	errno = 0;
	switch (req->op) {
	case BD_OP_BLOCK_STATUS:
		if (bs_start(gn, op, req)) {
			r = 0;
			break;
		}
		op->req = NULL;
		op_put(gc, op);
		req->extents[0] =
		    (struct bd_extent){.length = req->len, .flags = BD_EXT_DATA, .depth = 1};
		req->nr_extents = 1;
		bd_req_complete_later(req, 0);
		return 0;
	case BD_OP_READ:
		if (!gn->timeout_ns) {
			r = glfs_preadv_async(fd, req->iov, req->iovcnt, (off_t)req->offset, 0,
					      op_cbk, op);
			break;
		}
		if (op->cap < req->len) {
			free(op->buf);
			op->cap = 0;
			op->buf = malloc(req->len);
			if (!op->buf) {
				op_put(gc, op);
				return -ENOMEM;
			}
			op->cap = req->len;
		}
		op->bounced = true;
		r = glfs_pread_async(fd, op->buf, req->len, (off_t)req->offset, 0, op_cbk, op);
		break;
	case BD_OP_WRITE:
		r = glfs_pwritev_async(fd, req->iov, req->iovcnt, (off_t)req->offset, 0, op_cbk,
				       op);
		break;
	case BD_OP_FLUSH:
		r = glfs_fdatasync_async(fd, op_cbk, op);
		break;
	case BD_OP_DISCARD:
		r = glfs_discard_async(fd, (off_t)req->offset, req->len, op_cbk, op);
		break;
	default: /* BD_OP_WRITE_ZEROES */
		r = glfs_zerofill_async(fd, (off_t)req->offset, (off_t)req->len, op_cbk, op);
		break;
	}
	if (r < 0) {
		/* Not issued: no completion will come. */
		int e = errno;
		op->req = NULL;
		op_put(gc, op);
		r = map_err(e);
		if (req->op == BD_OP_WRITE_ZEROES && (r == -EOPNOTSUPP || r == -ENOSYS))
			r = -ENOTSUP;
		bd_req_complete_later(req, r);
		return 0;
	}
	if (gn->timeout_ns) {
		bd_timer_init(&op->timer, op_timeout);
		bd_timer_arm(op->loop, &op->timer, bd_now_ns() + gn->timeout_ns);
	}
	return 0;
}

static int gl_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct gl_chan *gc = bd_chan_priv(ch);

	(void)node;
	return bd_xq_new(bd_chan_loop(ch), "gluster", cq_deliver, &gc->cq);
}

/* Every request has completed (the core closes a channel only then; abandoned operations never
 * use the queue): the queue goes. */
static void gl_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct gl_chan *gc = bd_chan_priv(ch);

	(void)node;
	if (gc->cq) {
		bd_xq_close(gc->cq);
		gc->cq = NULL;
	}
	while (gc->free_ops) {
		struct gl_op *op = gc->free_ops;
		gc->free_ops = op->next;
		op_free(op);
	}
	gc->nfree = 0;
	gc->cached = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Control thread side
 */

static void gl_close(struct bd_node *node)
{
	struct gl_node *gn = bd_node_priv(node);

	if (gn->file)
		file_unref(gn->file); /* glfs_close and maybe glfs_fini on a detached thread */
	gn->file = NULL;
	gl_loc_free(&gn->loc);
	free(gn->name);
	gn->name = NULL;
}

static int read_timeout(json_t *opts, uint64_t *ns, struct bd_err *err)
{
	uint64_t t = GL_DEFAULT_TIMEOUT;
	int r = bd_opts_u64(opts, "timeout", &t, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (t > 86400)
		return bd_err_set(err, -EINVAL, "timeout: at most 86400 seconds, not %llu",
				  (unsigned long long)t);
	*ns = t * 1000000000ull;
	return 0;
}

static int gl_open(struct bd_node *node, json_t *opts, struct bd_limits *limits, struct bd_err *err)
{
	const struct bd_node_common *common = bd_node_common(node);
	struct gl_node *gn = bd_node_priv(node);
	struct gl_conn *conn;
	glfs_fd_t *fd;
	struct stat st;
	char where[1024];
	bool block_status = false;
	int r;

	memset(gn, 0, sizeof(*gn));
	if ((r = gl_loc_parse(opts, &gn->loc, true, err)) < 0)
		return r;
	if ((r = read_timeout(opts, &gn->timeout_ns, err)) < 0)
		goto fail;
	r = bd_opts_bool(opts, "block-status", &block_status, err);
	if (r < 0 && r != -ENOENT)
		goto fail;
	gn->name = strdup(gl_loc_str(&gn->loc, where, sizeof(where)));
	gn->writable = !common->read_only;
	gn->discard_unmap = common->discard == BD_DISCARD_UNMAP;

	conn = gl_conn_get(&gn->loc, err);
	if (!conn) {
		r = err->code;
		goto fail;
	}
	fd = glfs_open(gl_conn_fs(conn), gn->loc.path, gn->writable ? O_RDWR : O_RDONLY);
	if (!fd && gn->writable && common->auto_read_only &&
	    (errno == EACCES || errno == EROFS || errno == EPERM)) {
		bd_log(BD_LOG_WARN, "'%s' is not writable, opening it read-only (auto-read-only)",
		       where);
		gn->writable = false;
		fd = glfs_open(gl_conn_fs(conn), gn->loc.path, O_RDONLY);
	}
	if (!fd) {
		int e = errno ? errno : EIO;
		r = bd_err_set(err, -e, "Could not open '%s': %s", where, strerror(e));
		gl_conn_put(conn);
		goto fail;
	}
	if (glfs_fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		int e = errno ? errno : EINVAL;
		r = S_ISREG(st.st_mode) || e != EINVAL
			? bd_err_set(err, -e, "Could not stat '%s': %s", where, strerror(e))
			: bd_err_set(err, -EINVAL, "'%s' is not a regular file", where);
		gl_conn_put_close(conn, fd);
		goto fail;
	}
	gn->file = calloc(1, sizeof(*gn->file));
	if (!gn->file) {
		gl_conn_put_close(conn, fd);
		r = bd_err_set(err, -ENOMEM, "Out of memory");
		goto fail;
	}
	gn->file->conn = conn;
	gn->file->fd = fd;
	atomic_init(&gn->file->refs, 1);
	gn->size = (uint64_t)st.st_size;

	limits->size = gn->size;
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = GL_MAX_TRANSFER;
	limits->max_discard = 1u << 30;
	limits->opt_transfer = 0;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_FLUSH);
	if (block_status)
		limits->ops |= BD_OP_BIT(BD_OP_BLOCK_STATUS);
	limits->block_status_costly = true; /* a seek round trip to the brick */
	if (gn->writable) {
		limits->ops |= BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_WRITE_ZEROES);
		if (gn->discard_unmap)
			limits->ops |= BD_OP_BIT(BD_OP_DISCARD);
	}
	limits->native_fua = false;
	limits->zeroes_unmap = false;
	limits->can_resize = gn->writable;
	return 0;
fail:
	gl_close(node);
	return r;
}

static int gl_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct gl_node *gn = bd_node_priv(node);

	if (!gn->writable)
		return bd_err_set(err, -EACCES, "Cannot resize '%s': opened read-only", gn->name);
	if (new_size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EFBIG, "Cannot resize '%s': size too large", gn->name);
	if (glfs_ftruncate(gn->file->fd, (off_t)new_size, NULL, NULL) < 0) {
		int e = errno ? errno : EIO;
		return bd_err_set(err, -e, "Failed to resize '%s': %s", gn->name, strerror(e));
	}
	gn->size = new_size;
	return 0;
}

static void gl_describe(struct bd_node *node, json_t *out)
{
	struct gl_node *gn = bd_node_priv(node);

	json_object_set_new(out, "filename", json_string(gn->name));
	json_object_set_new(out, "volume", json_string(gn->loc.volume));
	json_object_set_new(out, "path", json_string(gn->loc.path));
	json_object_set_new(out, "timeout",
			    json_integer((json_int_t)(gn->timeout_ns / 1000000000)));
	json_object_set_new(out, "timed-out-requests",
			    json_integer((json_int_t)atomic_load(&gn->timeouts)));
}

/* blockdev-create: BlockdevCreateOptionsGluster {location, size, preallocation}. */
static int gl_create(struct bd_node *file, json_t *opts, struct bd_err *err)
{
	static const char *const prealloc_names[] = {"off", "full", "falloc", NULL};
	struct gl_loc loc;
	struct gl_conn *conn;
	json_t *lo;
	glfs_fd_t *fd;
	uint64_t size;
	int prealloc = 0, r;
	char where[1024];
	const char *drv;

	(void)file;
	r = bd_opts_obj(opts, "location", &lo, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'location' is missing");
	if (r < 0)
		return r;
	if (!json_is_object(lo))
		return bd_err_set(err, -EINVAL, "Parameter 'location' expects an object");
	if (bd_opts_str(lo, "driver", &drv, NULL) == 0 && strcmp(drv, "gluster"))
		return bd_err_set(err, -EINVAL, "location.driver must be 'gluster'");
	if ((r = gl_loc_parse(lo, &loc, false, err)) < 0)
		return bd_err_prefix(err, "location");
	if (json_object_get(lo, "timeout")) /* a node's option, meaningless here */
		bd_opts_mark_used(lo, "timeout");
	if ((r = bd_opts_check_unused(lo, "location", err)) < 0)
		goto out_loc;
	r = bd_opts_size(opts, "size", &size, err);
	if (r == -ENOENT)
		r = bd_err_set(err, -EINVAL, "Parameter 'size' is missing");
	if (r < 0)
		goto out_loc;
	r = bd_opts_enum(opts, "preallocation", prealloc_names, &prealloc, err);
	if (r < 0 && r != -ENOENT)
		goto out_loc;
	gl_loc_str(&loc, where, sizeof(where));
	conn = gl_conn_get(&loc, err);
	if (!conn) {
		r = err->code;
		goto out_loc;
	}
	fd = glfs_creat(gl_conn_fs(conn), loc.path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (!fd) {
		int e = errno ? errno : EIO;
		r = bd_err_set(err, -e, "Could not create '%s': %s", where, strerror(e));
		gl_conn_put(conn);
		goto out_loc;
	}
	r = 0;
	if (glfs_ftruncate(fd, (off_t)size, NULL, NULL) < 0) {
		int e = errno ? errno : EIO;
		r = bd_err_set(err, -e, "Could not resize '%s': %s", where, strerror(e));
	} else if (prealloc == 2 && size && glfs_fallocate(fd, 0, 0, (size_t)size) < 0) {
		int e = errno ? errno : EIO;
		r = bd_err_set(err, -e, "Could not preallocate '%s': %s", where, strerror(e));
	} else if (prealloc == 1 && size) {
		/* full: allocated zeroes (zerofill allocates; otherwise write them) */
		if (glfs_zerofill(fd, 0, (off_t)size) < 0) {
			size_t chunk = 1u << 20;
			char *zero = calloc(1, chunk);
			if (!zero)
				r = bd_err_set(err, -ENOMEM, "Out of memory");
			for (uint64_t off = 0; r == 0 && off < size; off += chunk) {
				size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
				if (glfs_pwrite(fd, zero, n, (off_t)off, 0, NULL, NULL) !=
				    (ssize_t)n) {
					int e = errno ? errno : EIO;
					r = bd_err_set(err, -e, "Could not write '%s': %s", where,
						       strerror(e));
				}
			}
			free(zero);
		}
	}
	if (r == 0 && glfs_fsync(fd, NULL, NULL) < 0) {
		int e = errno ? errno : EIO;
		r = bd_err_set(err, -e, "Could not sync '%s': %s", where, strerror(e));
	}
	gl_conn_put_close(conn, fd);
out_loc:
	gl_loc_free(&loc);
	return r;
}

static const struct bd_opt_desc gl_options[] = {
    {"filename", BD_OPT_STR, false, NULL,
     "gluster[+tcp|+unix]://[host[:port]]/VOLUME/PATH[?socket=SOCKET] (instead of volume, "
     "path and server)"},
    {"volume", BD_OPT_STR, false, NULL, "name of the gluster volume"},
    {"path", BD_OPT_STR, false, NULL, "path of the image file in the volume"},
    {"server", BD_OPT_LIST, false, NULL,
     "list of volfile servers: {type: inet, host, port (default 24007)} or {type: unix, "
     "path}"},
    {"debug", BD_OPT_INT, false, NULL, "gfapi log level 0..9 (default 4: warnings)"},
    {"logfile", BD_OPT_STR, false, NULL, "gfapi's log file ('-' or absent: stderr)"},
    {"block-status", BD_OPT_BOOL, false, NULL,
     "answer block status with SEEK_DATA/SEEK_HOLE (default off: every answer costs a "
     "synchronous request to the server, and NBD exports ask before each read)"},
    {"timeout", BD_OPT_INT, false, NULL,
     "seconds a request may take before it fails with EIO (default 30, 0 = wait forever)"},
    {NULL},
};

const struct bd_driver bd_drv_gluster = {
    .name = "gluster",
    .kind = BD_DRV_PROTOCOL,
    .help = "image file on a GlusterFS volume through gfapi",
    .options = gl_options,
    .node_size = sizeof(struct gl_node),
    .chan_size = sizeof(struct gl_chan),
    .req_size = 0,
    .open = gl_open,
    .close = gl_close,
    .chan_open = gl_chan_open,
    .chan_close = gl_chan_close,
    .submit = gl_submit,
    .resize = gl_resize,
    .describe = gl_describe,
    .create = gl_create,
};
