/*
 * nfs.c - the "nfs" protocol driver: an image file on an NFSv3 server, through libnfs, without
 * any kernel NFS client.  QEMU's BlockdevOptionsNfs (server.host, path, user, group,
 * tcp-syn-count, readahead-size, page-cache-size, debug) or filename=nfs://HOST/EXPORT/FILE,
 * plus timeout (seconds per RPC, default 30).
 *
 * Threads.  open/close/resize/describe run on the control thread, create() on a job's worker
 * thread.  A libnfs context is single-threaded, so a node has one context (one TCP connection)
 * and one *home loop* that owns it: the loop that opened the node's first channel.  Requests
 * submitted on the home loop go to libnfs directly; requests from other loops are forwarded to
 * the home loop with bd_loop_send() and their completions sent back to their own loop the same
 * way.  The home loop drives the context with a bd_poll readiness watch on its socket, and,
 * while requests are in flight, a 200 ms tick that lets libnfs expire RPCs older than the
 * timeout (they fail with EIO).  The control thread mounts the export and opens the file
 * synchronously in open() (bounded by the timeout) and owns the context until a loop claims it;
 * later control-thread operations (resize, close) are sent to the home loop.
 *
 * Operations: read, write (FUA as a FILE_SYNC write through a second handle opened O_SYNC; with
 * libnfs's page cache or read-ahead on, as a write and a COMMIT by the core), flush (COMMIT),
 * resize (SETATTR size), create (blockdev-create).  NFSv3 has no deallocation and no zeroing:
 * discard is completed by the core as the advisory no-op it is, write-zeroes is emulated by the
 * core with zero buffers, block status reports everything as data.
 *
 * A lost connection: libnfs reconnects and resends (NFSv3 is stateless); when the server cannot
 * be reached, the requests fail with EIO at once (connection refused) or after the timeout (no
 * answer).  The socket is then left alone until a request needs it again, so that a dead server
 * costs no CPU.
 */
#include "protocols/nfs-sync.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

#define NFS_TICK_NS 200000000ull
#define NFS_RETRY_NS 200000000ull /* at most 5 connection attempts a second */

/* libnfs exports it but its header does not declare it (4.0 to 6.x): fail every queued call.
 * Weak: without it, the queued calls wait for their timeout instead. */
struct rpc_context;
extern void rpc_error_all_pdus(struct rpc_context *rpc, const char *error) __attribute__((weak));
extern struct rpc_context *nfs_get_rpc_context(struct nfs_context *nfs);
#define NFS_MAX_TRANSFER (1u << 20)

struct nfs_node {
	struct nfs_context *ctx;
	struct nfsfh *fh;      /* UNSTABLE writes, reads, COMMIT */
	struct nfsfh *fh_sync; /* opened O_SYNC: FILE_SYNC writes for FUA; NULL without */
	char *host, *dir, *file;
	char name[64];
	uint64_t size;
	int timeout;
	bool writable;

	/* The home loop: set once, under lock (the control thread uses ctx under the same lock
	 * while no loop has claimed it). */
	pthread_mutex_t lock;
	struct bd_loop *_Atomic home;

	/* Home loop only. */
	struct bd_poll watch;
	struct bd_timer tick;
	struct bd_defer retry;
	bool tick_armed;
	bool broken; /* nfs_service() failed: the socket is left alone until a request comes */
	bool down;   /* the server is unreachable (logged once) */
	unsigned inflight;
	uint64_t last_log_ns;
	uint64_t last_retry_ns;

	/* close(): the watch has stopped */
	pthread_mutex_t stop_lock;
	pthread_cond_t stop_cond;
	bool stopped;
};

struct nfs_req {
	struct nfs_node *nn;
	struct bd_req *req;
	struct bd_loop *origin;
	char *buf; /* WRITE: the data (req's single iovec, or a copy) */
	bool own_buf;
	uint64_t done;
	int ret;
};

/* ---------------------------------------------------------------------------------------------
 * Home loop
 */

static void kick(struct nfs_node *nn);

static int map_err(int status)
{
	switch (status) {
	case -ENOSPC:
	case -EDQUOT:
		return -ENOSPC;
	case -ENOMEM:
		return -ENOMEM;
	default:
		return -EIO;
	}
}

/* libnfs's last error text, or what status means when it has none */
static const char *err_text(struct nfs_node *nn, int status)
{
	const char *e = nfs_get_error(nn->ctx);
	return e && *e ? e : strerror(-map_err(status));
}

static void log_err(struct nfs_node *nn, const char *what, int status)
{
	uint64_t now = bd_now_ns();

	if (now - nn->last_log_ns < 1000000000ull)
		return; /* at most one line a second per node */
	nn->last_log_ns = now;
	bd_log(BD_LOG_WARN, "nfs '%s': %s on %s:%s/%s failed: %s", nn->name, what, nn->host,
	       nn->dir, nn->file, err_text(nn, status));
}

static void origin_complete(void *arg)
{
	struct nfs_req *nr = arg;

	bd_req_complete(nr->req, nr->ret);
}

/* Complete nr on its own loop (no accounting). */
static void deliver(struct nfs_req *nr, int ret)
{
	if (nr->own_buf)
		free(nr->buf);
	nr->buf = NULL;
	nr->own_buf = false;
	if (nr->origin == atomic_load_explicit(&nr->nn->home, memory_order_relaxed)) {
		/* always deferred: a completion may submit again at once, and libnfs must not
		 * get new calls while it fails its queues (rpc_purge_all_pdus asserts that) */
		bd_req_complete_later(nr->req, ret);
		return;
	}
	nr->ret = ret;
	if (bd_loop_send(nr->origin, origin_complete, nr) < 0) {
		bd_log(BD_LOG_ERROR, "nfs '%s': out of memory completing a request", nr->nn->name);
		abort();
	}
}

static void finish(struct nfs_req *nr, int ret)
{
	nr->nn->inflight--;
	deliver(nr, ret);
}

static int issue(struct nfs_req *nr);

/* The rest of a short transfer: the same request, counted once in inflight. */
static void reissue(struct nfs_req *nr)
{
	nr->nn->inflight--;
	int r = issue(nr);
	if (r < 0)
		deliver(nr, r);
}

static void read_cb(int status, struct nfs_context *ctx, void *data, void *priv)
{
	struct nfs_req *nr = priv;
	struct bd_req *req = nr->req;

	(void)ctx;
	if (status < 0) {
		log_err(nr->nn, "read", status);
		finish(nr, map_err(status));
		return;
	}
	if ((uint64_t)status > req->len - nr->done)
		status = (int)(req->len - nr->done);
	bd_iov_from_buf(req->iov, req->iovcnt, nr->done, data, (size_t)status);
	nr->done += (uint64_t)status;
	if (nr->done < req->len && status == 0) {
		/* EOF: the file is shorter than the node (truncated by someone else) */
		bd_iov_memset(req->iov, req->iovcnt, nr->done, 0, req->len - nr->done);
		nr->done = req->len;
	}
	if (nr->done < req->len)
		reissue(nr);
	else
		finish(nr, 0);
}

static void write_cb(int status, struct nfs_context *ctx, void *data, void *priv)
{
	struct nfs_req *nr = priv;

	(void)ctx;
	(void)data;
	if (status <= 0) {
		if (status == 0)
			status = -EIO;
		log_err(nr->nn, "write", status);
		finish(nr, map_err(status));
		return;
	}
	nr->done += (uint64_t)status;
	if (nr->done < nr->req->len)
		reissue(nr);
	else
		finish(nr, 0);
}

static void flush_cb(int status, struct nfs_context *ctx, void *data, void *priv)
{
	struct nfs_req *nr = priv;

	(void)ctx;
	(void)data;
	if (status < 0)
		log_err(nr->nn, "commit", status);
	finish(nr, status < 0 ? map_err(status) : 0);
}

/* Hand the (rest of the) request to libnfs.  Counted in inflight when 0 is returned; its
 * callback may already have run (libnfs's page cache answers reads at once). */
static int issue(struct nfs_req *nr)
{
	struct nfs_node *nn = nr->nn;
	struct bd_req *req = nr->req;
	int r;

	nn->inflight++;
	switch (req->op) {
	case BD_OP_READ:
		r = nfs_pread_async(nn->ctx, nn->fh, req->offset + nr->done, req->len - nr->done,
				    read_cb, nr);
		break;
	case BD_OP_WRITE: {
		struct nfsfh *fh = (req->flags & BD_REQ_FUA) && nn->fh_sync ? nn->fh_sync : nn->fh;
		r = nfs_pwrite_async(nn->ctx, fh, req->offset + nr->done, req->len - nr->done,
				     nr->buf + nr->done, write_cb, nr);
		break;
	}
	case BD_OP_FLUSH:
		r = nfs_fsync_async(nn->ctx, nn->fh, flush_cb, nr);
		break;
	default:
		r = -1;
	}
	if (r < 0) {
		nn->inflight--;
		log_err(nn, "queueing a request", -EIO);
		return -EIO;
	}
	kick(nn);
	return 0;
}

static void tick_fire(struct bd_timer *t)
{
	struct nfs_node *nn = container_of(t, struct nfs_node, tick);

	nn->tick_armed = false;
	/* revents 0: only the expiry of RPCs past the timeout */
	if (nfs_service(nn->ctx, 0) < 0)
		nn->broken = true;
	kick(nn);
}

/* Is the context connected?  libnfs asks for POLLIN only then. */
static bool connected(struct nfs_node *nn)
{
	return nfs_which_events(nn->ctx) & POLLIN;
}

/* Watch the socket for what libnfs wants; keep the tick while requests are in flight.  Never
 * calls into libnfs's service function: kick() runs inside libnfs callbacks too. */
static void kick(struct nfs_node *nn)
{
	struct bd_loop *home = atomic_load_explicit(&nn->home, memory_order_relaxed);
	int fd = nfs_get_fd(nn->ctx);
	unsigned ev = 0;

	if (nn->broken && nn->inflight && bd_now_ns() - nn->last_retry_ns >= NFS_RETRY_NS)
		bd_loop_defer(home, &nn->retry); /* requests wait: connect again (the tick
						  * comes back here while they wait) */
	if (!nn->broken && fd >= 0)
		ev = (unsigned)nfs_which_events(nn->ctx);
	bd_poll_set(home, &nn->watch, fd, ev);
	if (nn->inflight && !nn->tick_armed) {
		bd_timer_arm(home, &nn->tick, bd_now_ns() + NFS_TICK_NS);
		nn->tick_armed = true;
	}
}

/* The server could not be reached: fail every waiting request now rather than at its timeout
 * (libnfs would otherwise try to connect again at every wake-up until then). */
static void fail_waiting(struct nfs_node *nn, int revents)
{
	if (!nn->down)
		bd_log(BD_LOG_WARN, "nfs '%s': cannot reach %s: the connection failed (%s)",
		       nn->name, nn->host, err_text(nn, -EIO));
	nn->down = true;
	(void)revents;
	nn->broken = true;
	nn->last_retry_ns = bd_now_ns();
	if (rpc_error_all_pdus)
		rpc_error_all_pdus(nfs_get_rpc_context(nn->ctx),
				   "the NFS server cannot be reached");
}

static void retry_defer(struct bd_defer *d)
{
	struct nfs_node *nn = container_of(d, struct nfs_node, retry);

	if (!nn->broken || !nn->inflight)
		return;
	nn->broken = false;
	nn->last_retry_ns = bd_now_ns();
	/* a POLLHUP makes libnfs reconnect and queue the requests again */
	if (!connected(nn) && nfs_service(nn->ctx, POLLHUP) < 0)
		nn->broken = true; /* the connect failed at once: the requests have failed */
	kick(nn);
}

static void watch_ready(struct bd_poll *p, int revents)
{
	struct nfs_node *nn = container_of(p, struct nfs_node, watch);

	if ((revents & (POLLERR | POLLHUP)) && !connected(nn)) {
		fail_waiting(nn, revents); /* a connection attempt failed */
	} else if (nfs_service(nn->ctx, revents) < 0) {
		if (!nn->down)
			bd_log(BD_LOG_WARN, "nfs '%s': connection to %s lost: %s", nn->name,
			       nn->host, bd_nfs_error(nn->ctx));
		nn->down = true;
		nn->broken = true;
	} else if (nn->down && connected(nn)) {
		bd_log(BD_LOG_INFO, "nfs '%s': connected to %s again", nn->name, nn->host);
		nn->down = false;
	}
	kick(nn);
}

/* The server was found unreachable less than NFS_RETRY_NS ago: fail at once rather than wait
 * for the next connection attempt. */
static bool fail_fast(struct nfs_node *nn)
{
	return nn->broken && bd_now_ns() - nn->last_retry_ns < NFS_RETRY_NS;
}

static void home_start(void *arg)
{
	struct nfs_req *nr = arg;
	int r = fail_fast(nr->nn) ? -EIO : issue(nr);

	if (r < 0)
		deliver(nr, r);
}

static int drv_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct nfs_node *nn = bd_node_priv(node);
	struct nfs_req *nr = req->priv;
	struct bd_loop *home = atomic_load_explicit(&nn->home, memory_order_acquire);
	int r;

	if (!home)
		return -EIO; /* chan_open could not claim a loop: cannot happen */
	switch (req->op) {
	case BD_OP_READ:
	case BD_OP_FLUSH:
		break;
	case BD_OP_WRITE:
		if (!nn->writable)
			return -EROFS;
		break;
	default:
		return -ENOTSUP;
	}
	nr->nn = nn;
	nr->req = req;
	nr->origin = bd_chan_loop(ch);
	nr->done = 0;
	nr->buf = NULL;
	nr->own_buf = false;
	if (req->op != BD_OP_FLUSH && req->len == 0) {
		bd_req_complete_later(req, 0);
		return 0;
	}
	if (req->op == BD_OP_WRITE) {
		if (req->iovcnt == 1) {
			nr->buf = req->iov[0].iov_base;
		} else {
			nr->buf = malloc(req->len);
			if (!nr->buf)
				return -ENOMEM;
			nr->own_buf = true;
			bd_iov_to_buf(req->iov, req->iovcnt, 0, nr->buf, req->len);
		}
	}
	if (nr->origin == home && fail_fast(nn)) {
		deliver(nr, -EIO); /* deferred: never inside submit() */
		return 0;
	} else if (nr->origin == home) {
		r = issue(nr); /* a completion, even at once, is deferred by deliver() */
	} else {
		r = bd_loop_send(home, home_start, nr);
	}
	if (r < 0 && nr->own_buf)
		free(nr->buf);
	return r;
}

static int drv_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct nfs_node *nn = bd_node_priv(node);

	if (atomic_load_explicit(&nn->home, memory_order_acquire))
		return 0;
	pthread_mutex_lock(&nn->lock);
	if (!atomic_load_explicit(&nn->home, memory_order_relaxed)) {
		atomic_store_explicit(&nn->home, bd_chan_loop(ch), memory_order_release);
		bd_log(BD_LOG_DEBUG, "nfs '%s': served by loop %s", nn->name,
		       bd_loop_name(bd_chan_loop(ch)));
	}
	pthread_mutex_unlock(&nn->lock);
	return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Control thread: operations on a claimed context go to the home loop.
 */

struct ctl_op {
	struct nfs_node *nn;
	uint64_t size;
	int ret;
	bool done;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void ctl_signal(struct ctl_op *op, int ret)
{
	pthread_mutex_lock(&op->lock);
	op->ret = ret;
	op->done = true;
	pthread_cond_signal(&op->cond);
	pthread_mutex_unlock(&op->lock);
}

static void ctl_truncate_cb(int status, struct nfs_context *ctx, void *data, void *priv)
{
	struct ctl_op *op = priv;

	(void)ctx;
	(void)data;
	op->nn->inflight--;
	ctl_signal(op, status < 0 ? status : 0);
}

static void ctl_truncate_start(void *arg)
{
	struct ctl_op *op = arg;
	struct nfs_node *nn = op->nn;

	nn->inflight++;
	if (nfs_ftruncate_async(nn->ctx, nn->fh, op->size, ctl_truncate_cb, op) < 0) {
		nn->inflight--;
		ctl_signal(op, -EIO);
		return;
	}
	kick(nn);
}

/* Run start(op) on the home loop and wait for ctl_signal(). */
static int ctl_run(struct nfs_node *nn, struct bd_loop *home, void (*start)(void *),
		   struct ctl_op *op)
{
	bool done;

	pthread_mutex_init(&op->lock, NULL);
	pthread_cond_init(&op->cond, NULL);
	if (home == bd_loop_current()) {
		start(op);
		for (;;) {
			pthread_mutex_lock(&op->lock);
			done = op->done;
			pthread_mutex_unlock(&op->lock);
			if (done)
				break;
			bd_loop_poll_once();
		}
	} else if (bd_loop_send(home, start, op) < 0) {
		op->ret = -ENOMEM;
	} else {
		pthread_mutex_lock(&op->lock);
		while (!op->done)
			pthread_cond_wait(&op->cond, &op->lock);
		pthread_mutex_unlock(&op->lock);
	}
	pthread_cond_destroy(&op->cond);
	pthread_mutex_destroy(&op->lock);
	(void)nn;
	return op->ret;
}

static int drv_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct nfs_node *nn = bd_node_priv(node);
	struct bd_loop *home;
	int r;

	if (!nn->writable)
		return bd_err_set(err, -EACCES, "Cannot resize '%s:%s/%s': opened read-only",
				  nn->host, nn->dir, nn->file);
	if (new_size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EFBIG, "Cannot resize '%s:%s/%s': size too large", nn->host,
				  nn->dir, nn->file);
	pthread_mutex_lock(&nn->lock);
	home = atomic_load(&nn->home);
	if (!home)
		r = bd_nfs_ftruncate(nn->ctx, nn->fh, new_size, nn->timeout);
	pthread_mutex_unlock(&nn->lock);
	if (home) {
		struct ctl_op op = {.nn = nn, .size = new_size};
		r = ctl_run(nn, home, ctl_truncate_start, &op);
	}
	if (r < 0)
		return bd_err_set(err, r, "Failed to resize '%s:%s/%s' to %llu bytes: %s", nn->host,
				  nn->dir, nn->file, (unsigned long long)new_size,
				  r == -ETIMEDOUT || r == -EINTR
				      ? "no answer from the server"
				      : strerror(-r == EFAULT ? EIO : -r));
	nn->size = new_size;
	return 0;
}

static void watch_stopped(struct bd_poll *p)
{
	struct nfs_node *nn = container_of(p, struct nfs_node, watch);

	pthread_mutex_lock(&nn->stop_lock);
	nn->stopped = true;
	pthread_cond_signal(&nn->stop_cond);
	pthread_mutex_unlock(&nn->stop_lock);
}

static void home_stop(void *arg)
{
	struct nfs_node *nn = arg;
	struct bd_loop *home = atomic_load(&nn->home);

	if (nn->tick_armed)
		bd_timer_cancel(home, &nn->tick);
	nn->tick_armed = false;
	bd_poll_stop(&nn->watch, watch_stopped);
}

static void drv_close(struct bd_node *node)
{
	struct nfs_node *nn = bd_node_priv(node);
	struct bd_loop *home = atomic_load(&nn->home);
	bool stopped;

	if (home && nn->ctx) {
		/* take the context back from the home loop */
		if (home == bd_loop_current()) {
			home_stop(nn);
			for (;;) {
				pthread_mutex_lock(&nn->stop_lock);
				stopped = nn->stopped;
				pthread_mutex_unlock(&nn->stop_lock);
				if (stopped)
					break;
				bd_loop_poll_once();
			}
		} else if (bd_loop_send(home, home_stop, nn) == 0) {
			pthread_mutex_lock(&nn->stop_lock);
			while (!nn->stopped)
				pthread_cond_wait(&nn->stop_cond, &nn->stop_lock);
			pthread_mutex_unlock(&nn->stop_lock);
		}
	}
	if (nn->ctx) {
		if (nn->fh_sync)
			bd_nfs_close(nn->ctx, nn->fh_sync, nn->timeout);
		if (nn->fh && bd_nfs_close(nn->ctx, nn->fh, nn->timeout) < 0)
			bd_log(BD_LOG_WARN, "nfs '%s': closing %s:%s/%s: %s", nn->name, nn->host,
			       nn->dir, nn->file, bd_nfs_error(nn->ctx));
		nfs_destroy_context(nn->ctx);
		pthread_mutex_destroy(&nn->lock);
		pthread_mutex_destroy(&nn->stop_lock);
		pthread_cond_destroy(&nn->stop_cond);
	}
	nn->ctx = NULL;
	nn->fh = nn->fh_sync = NULL;
	free(nn->host);
	free(nn->dir);
	free(nn->file);
	nn->host = nn->dir = nn->file = NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Options
 */

static const char *const server_types[] = {"inet", NULL};

static int opt_int(json_t *opts, const char *key, long lo, long hi, long *out, struct bd_err *err)
{
	uint64_t v;
	int r = bd_opts_u64(opts, key, &v, err);

	if (r < 0)
		return r;
	if (v < (uint64_t)lo || v > (uint64_t)hi)
		return bd_err_set(err, -EINVAL, "Parameter '%s' must be between %ld and %ld", key,
				  lo, hi);
	*out = (long)v;
	return 0;
}

/* Where the image is and how to reach it: the connection settings c, the mount directory and
 * the file name.  Used by open() and create(). */
static int parse_location(json_t *opts, struct bd_nfs_conn *c, char **host, char **dir, char **file,
			  struct bd_err *err)
{
	const char *filename = NULL, *path = NULL, *h = NULL;
	json_t *server = NULL;
	long v = 0;
	int r, type = 0;

	memset(c, 0, sizeof(*c));
	c->uid = c->gid = c->tcp_syncnt = -1;
	c->timeout = BD_NFS_DEFAULT_TIMEOUT;
	*host = *dir = *file = NULL;

	r = bd_opts_str(opts, "filename", &filename, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_obj(opts, "server", &server, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_str(opts, "path", &path, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (filename && (server || path))
		return bd_err_set(err, -EINVAL,
				  "Cannot combine 'filename' with 'server' or 'path': give one "
				  "or the other");
	if (filename) {
		if ((r = bd_nfs_url_split(filename, c, host, dir, file, err)) < 0)
			return r;
	} else {
		if (!server)
			return bd_err_set(err, -EINVAL, "Parameter 'server' is missing");
		if (!path)
			return bd_err_set(err, -EINVAL, "Parameter 'path' is missing");
		r = bd_opts_enum(server, "type", server_types, &type, err);
		if (r < 0 && r != -ENOENT)
			return bd_err_prefix(err, "server");
		r = bd_opts_str(server, "host", &h, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'server.host' is missing");
		if (r < 0)
			return r;
		if (!*h)
			return bd_err_set(err, -EINVAL, "Parameter 'server.host' is empty");
		const char *slash = strrchr(path, '/');
		if (path[0] != '/' || !slash[1] || !strcmp(slash + 1, "..") ||
		    !strcmp(slash + 1, ".") || strstr(path, "/../"))
			return bd_err_set(err, -EINVAL,
					  "Parameter 'path' must be an absolute path to a file "
					  "(/EXPORT/FILE), not '%s'",
					  path);
		*host = strdup(h);
		*dir = slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
		*file = strdup(slash + 1);
		if (!*host || !*dir || !*file) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}

	/* QEMU's keys (they win over the same setting in a URL) and blockd's timeout */
	if ((r = opt_int(opts, "user", 0, INT32_MAX, &v, err)) == 0)
		c->uid = (int)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "group", 0, INT32_MAX, &v, err)) == 0)
		c->gid = (int)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "tcp-syn-count", 1, 255, &v, err)) == 0)
		c->tcp_syncnt = (int)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "readahead-size", 0, BD_NFS_MAX_READAHEAD, &v, err)) == 0)
		c->readahead = (uint32_t)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "page-cache-size", 0, BD_NFS_MAX_PAGECACHE, &v, err)) == 0)
		c->pagecache = (uint32_t)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "debug", 0, 10, &v, err)) == 0)
		c->debug = (int)v;
	else if (r != -ENOENT)
		goto fail;
	if ((r = opt_int(opts, "timeout", 1, 3600, &v, err)) == 0)
		c->timeout = (int)v;
	else if (r != -ENOENT)
		goto fail;
	c->host = *host;
	c->export = *dir;
	return 0;
fail:
	free(*host);
	free(*dir);
	free(*file);
	*host = *dir = *file = NULL;
	return r;
}

static int drv_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	const struct bd_node_common *common = bd_node_common(node);
	struct nfs_node *nn = bd_node_priv(node);
	struct bd_nfs_conn c;
	struct nfs_stat_64 st;
	char path[4096];
	int r;

	memset(nn, 0, sizeof(*nn));
	snprintf(nn->name, sizeof(nn->name), "%s", bd_node_name(node));
	if ((r = parse_location(opts, &c, &nn->host, &nn->dir, &nn->file, err)) < 0)
		return r;
	nn->timeout = c.timeout;
	nn->writable = !common->read_only;
	c.autoreconnect = -1; /* reconnect as often as requests need it */
	snprintf(path, sizeof(path), "/%s", nn->file);

	nn->ctx = bd_nfs_connect(&c, err);
	if (!nn->ctx) {
		r = err->code;
		goto fail;
	}
	r = bd_nfs_open(nn->ctx, path, nn->writable ? O_RDWR : O_RDONLY, 0, &nn->fh, nn->timeout);
	if (r < 0 && nn->writable && common->auto_read_only &&
	    (r == -EACCES || r == -EROFS || r == -EPERM)) {
		bd_log(BD_LOG_WARN,
		       "'%s:%s/%s' is not writable, opening it read-only (auto-read-only)",
		       nn->host, nn->dir, nn->file);
		nn->writable = false;
		limits->read_only = true;
		r = bd_nfs_open(nn->ctx, path, O_RDONLY, 0, &nn->fh, nn->timeout);
	}
	if (r < 0) {
		r = bd_err_set(err, r, "Could not open '%s' on NFS export '%s:%s': %s", nn->file,
			       nn->host, nn->dir, bd_nfs_error(nn->ctx));
		goto fail;
	}
	if ((r = bd_nfs_fstat(nn->ctx, nn->fh, &st, nn->timeout)) < 0) {
		r = bd_err_set(err, r, "Could not stat '%s:%s/%s': %s", nn->host, nn->dir, nn->file,
			       bd_nfs_error(nn->ctx));
		goto fail;
	}
	if ((st.nfs_mode & S_IFMT) != S_IFREG) {
		r = bd_err_set(err, -EINVAL, "'%s:%s/%s' is not a regular file", nn->host, nn->dir,
			       nn->file);
		goto fail;
	}
	nn->size = st.nfs_size;
	/* FUA as stable writes, unless libnfs caches data per handle (a second handle's writes
	 * would leave the first one's cache stale) */
	if (nn->writable && !c.pagecache && !c.readahead &&
	    bd_nfs_open(nn->ctx, path, O_RDWR | O_SYNC, 0, &nn->fh_sync, nn->timeout) < 0) {
		bd_log(BD_LOG_INFO, "nfs '%s': no O_SYNC handle (%s): FUA is a write and a COMMIT",
		       nn->name, bd_nfs_error(nn->ctx));
		nn->fh_sync = NULL;
	}

	uint64_t mt = nfs_get_readmax(nn->ctx);
	if (nfs_get_writemax(nn->ctx) < mt)
		mt = nfs_get_writemax(nn->ctx);
	if (mt > NFS_MAX_TRANSFER || mt < 4096)
		mt = NFS_MAX_TRANSFER;
	mt &= ~(uint64_t)4095;
	limits->size = nn->size;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_FLUSH);
	if (nn->writable)
		limits->ops |= BD_OP_BIT(BD_OP_WRITE);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = mt;
	limits->opt_transfer = mt;
	limits->native_fua = nn->fh_sync != NULL;
	limits->can_resize = nn->writable;

	pthread_mutex_init(&nn->lock, NULL);
	pthread_mutex_init(&nn->stop_lock, NULL);
	pthread_cond_init(&nn->stop_cond, NULL);
	atomic_init(&nn->home, NULL);
	bd_poll_init(&nn->watch, watch_ready);
	bd_timer_init(&nn->tick, tick_fire);
	nn->retry.fn = retry_defer;
	return 0;

fail:
	if (nn->ctx) {
		if (nn->fh)
			bd_nfs_close(nn->ctx, nn->fh, nn->timeout);
		nfs_destroy_context(nn->ctx);
	}
	nn->ctx = NULL;
	nn->fh = NULL;
	free(nn->host);
	free(nn->dir);
	free(nn->file);
	nn->host = nn->dir = nn->file = NULL;
	return r;
}

static void drv_describe(struct bd_node *node, json_t *out)
{
	struct nfs_node *nn = bd_node_priv(node);
	struct bd_loop *home = atomic_load(&nn->home);
	char path[4096];

	snprintf(path, sizeof(path), "%s%s%s", nn->dir, strcmp(nn->dir, "/") ? "/" : "", nn->file);
	json_object_set_new(out, "server", json_string(nn->host));
	json_object_set_new(out, "path", json_string(path));
	json_object_set_new(out, "timeout", json_integer(nn->timeout));
	json_object_set_new(out, "stable-fua", json_boolean(nn->fh_sync != NULL));
	if (home)
		json_object_set_new(out, "home-loop", json_string(bd_loop_name(home)));
}

/* [worker thread] blockdev-create: {location: BlockdevOptionsNfs, size}. */
static int drv_create(struct bd_node *file, json_t *opts, struct bd_err *err)
{
	struct bd_nfs_conn c;
	struct nfs_context *ctx;
	struct nfsfh *fh = NULL;
	json_t *loc = NULL;
	char *host, *dir, *name, path[4096];
	uint64_t size = 0;
	int r;

	(void)file;
	r = bd_opts_obj(opts, "location", &loc, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'location' is missing");
	if (r < 0)
		return r;
	r = bd_opts_size(opts, "size", &size, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'size' is missing");
	if (r < 0)
		return r;
	if (size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EFBIG, "Parameter 'size' is too large");
	if ((r = parse_location(loc, &c, &host, &dir, &name, err)) < 0)
		return r;
	if ((r = bd_opts_check_unused(opts, NULL, err)) < 0)
		goto out;
	c.autoreconnect = 0;
	snprintf(path, sizeof(path), "/%s", name);
	ctx = bd_nfs_connect(&c, err);
	if (!ctx) {
		r = err->code;
		goto out;
	}
	r = bd_nfs_open(ctx, path, O_CREAT | O_RDWR, 0600, &fh, c.timeout);
	if (r < 0) {
		r = bd_err_set(err, r, "Could not create '%s' on NFS export '%s:%s': %s", name,
			       host, dir, bd_nfs_error(ctx));
	} else {
		r = bd_nfs_ftruncate(ctx, fh, size, c.timeout);
		if (r < 0)
			r = bd_err_set(err, r, "Could not set the size of '%s:%s/%s': %s", host,
				       dir, name, bd_nfs_error(ctx));
		bd_nfs_close(ctx, fh, c.timeout);
	}
	nfs_destroy_context(ctx);
out:
	free(host);
	free(dir);
	free(name);
	return r;
}

static const struct bd_opt_desc nfs_options[] = {
    {"filename", BD_OPT_STR, false, NULL,
     "nfs://HOST/EXPORT/FILE[?uid=N&gid=N&tcp-syncnt=N&readahead=N&pagecache=N&debug=N&"
     "nfsport=N&mountport=N&timeout=N] (instead of server and path)"},
    {"server", BD_OPT_OBJ, false, NULL, "{type: inet, host: HOST}: the NFS server"},
    {"path", BD_OPT_STR, false, NULL,
     "/EXPORT/FILE: the directory part is mounted (MOUNT protocol), the file opened in it"},
    {"user", BD_OPT_INT, false, NULL, "UID in the RPC credentials (default: blockd's own)"},
    {"group", BD_OPT_INT, false, NULL, "GID in the RPC credentials (default: blockd's own)"},
    {"tcp-syn-count", BD_OPT_INT, false, NULL, "SYN retries when connecting (1-255)"},
    {"readahead-size", BD_OPT_INT, false, NULL, "libnfs read-ahead in bytes (0-1 MiB, 0 = off)"},
    {"page-cache-size", BD_OPT_INT, false, NULL,
     "libnfs page cache in 4 KiB pages (0-1024, 0 = off)"},
    {"debug", BD_OPT_INT, false, NULL, "libnfs debug level (0-10), printed to stderr"},
    {"timeout", BD_OPT_INT, false, NULL,
     "seconds without an answer before a request fails with EIO (1-3600, default 30)"},
    {NULL},
};

const struct bd_driver bd_drv_nfs = {
    .name = "nfs",
    .kind = BD_DRV_PROTOCOL,
    .help = "image file on an NFSv3 server through libnfs (no kernel mount)",
    .options = nfs_options,
    .node_size = sizeof(struct nfs_node),
    .req_size = sizeof(struct nfs_req),
    .open = drv_open,
    .close = drv_close,
    .chan_open = drv_chan_open,
    .submit = drv_submit,
    .resize = drv_resize,
    .describe = drv_describe,
    .create = drv_create,
};
