/*
 * rbd.c - the "rbd" protocol driver: a Ceph RBD image through librbd's asynchronous API.
 *
 * Threads: open/close/resize/describe/create on the control thread (create on a job's worker
 * thread); submit() on the request's I/O loop.  librbd completes requests on its own threads:
 * the completion callback only pushes the request onto its channel's completion queue
 * (blockd/xqueue.c: lock-free, one eventfd write and one CQE per burst of completions).
 *
 * Options are QEMU's BlockdevOptionsRbd plus "timeout" (seconds, default 30) that bounds every
 * mon/OSD operation, so a dead cluster yields EIO instead of a hang; "filename=rbd:..." is the
 * legacy spelling.  Connection handling is in rbd-conn.c.
 */
#include "protocols/rbd-conn.h"

#include <liburing.h>
#include <pthread.h>
#include <rbd/librbd.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct rbd_node {
	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t image;
	char *pool, *ns, *name, *snap, *user, *conf;
	uint64_t timeout;
	uint64_t features;
	uint64_t obj_size;
	atomic_bool warned;
};

struct rbd_req;

/* Per channel (per loop): the queue librbd's threads push completions onto (blockd/xqueue.c). */
struct rbd_chan {
	struct bd_xq *cq;
};

struct rbd_req {
	struct bd_req *req;
	struct bd_xq *cq;
	struct rbd_node *rn;
	rbd_completion_t comp;
	ssize_t ret;
	struct bd_xq_item qlink;
};

/* ---- completions ---- */

/* [a librbd thread] */
static void rbd_aio_done(rbd_completion_t c, void *arg)
{
	struct rbd_req *rr = arg;

	rr->ret = rbd_aio_get_return_value(c);
	rbd_aio_release(c);
	bd_xq_push(rr->cq, &rr->qlink);
}

static int map_error(struct rbd_node *rn, ssize_t ret)
{
	int e = (int)-ret;
	if (e == ENOSPC || e == EDQUOT || e == EROFS || e == ENOTSUP || e == EINVAL)
		return (int)ret;
	if (!atomic_exchange(&rn->warned, true))
		bd_log(BD_LOG_WARN, "rbd image '%s/%s': I/O failed: %s%s", rn->pool, rn->name,
		       strerror(e), e == ETIMEDOUT ? " (the cluster did not answer in time)" : "");
	return -EIO;
}

static void finish(struct rbd_req *rr)
{
	struct bd_req *req = rr->req;
	ssize_t ret = rr->ret;

	if (ret >= 0 && req->op == BD_OP_READ && (uint64_t)ret < req->len)
		bd_iov_memset(req->iov, req->iovcnt, (size_t)ret, 0, req->len - (size_t)ret);
	bd_req_complete(req, ret < 0 ? map_error(rr->rn, ret) : 0);
}

/* [loop] A completion from the queue. */
static void cq_deliver(struct bd_xq_item *it)
{
	finish(container_of(it, struct rbd_req, qlink));
}

static int rbd_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct rbd_chan *rc = bd_chan_priv(ch);

	(void)node;
	return bd_xq_new(bd_chan_loop(ch), "rbd", cq_deliver, &rc->cq);
}

/* Every request has completed (the core closes a channel only then): the queue goes. */
static void rbd_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct rbd_chan *rc = bd_chan_priv(ch);

	(void)node;
	if (rc->cq)
		bd_xq_close(rc->cq);
	rc->cq = NULL;
}

/* ---- I/O ---- */

static int rbd_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct rbd_node *rn = bd_node_priv(node);
	struct rbd_chan *rc = bd_chan_priv(ch);
	struct rbd_req *rr = req->priv;
	int r;

	if (req->op == BD_OP_CACHE) {
		bd_req_complete_later(req, 0);
		return 0;
	}
	if (!rc->cq)
		return -EIO;
	rr->req = req;
	rr->cq = rc->cq;
	rr->rn = rn;
	r = rbd_aio_create_completion(rr, rbd_aio_done, &rr->comp);
	if (r < 0)
		return r;
	switch (req->op) {
	case BD_OP_READ:
		r = rbd_aio_readv(rn->image, req->iov, req->iovcnt, req->offset, rr->comp);
		break;
	case BD_OP_WRITE:
		r = rbd_aio_writev(rn->image, req->iov, req->iovcnt, req->offset, rr->comp);
		break;
	case BD_OP_FLUSH:
		r = rbd_aio_flush(rn->image, rr->comp);
		break;
	case BD_OP_DISCARD:
		r = rbd_aio_discard(rn->image, req->offset, req->len, rr->comp);
		break;
	case BD_OP_WRITE_ZEROES:
		r = rbd_aio_write_zeroes(
		    rn->image, req->offset, req->len, rr->comp,
		    (req->flags & BD_REQ_MAY_UNMAP) ? 0 : RBD_WRITE_ZEROES_FLAG_THICK_PROVISION, 0);
		break;
	default:
		r = -ENOTSUP;
		break;
	}
	if (r < 0)
		rbd_aio_release(rr->comp);
	return r;
}

/* ---- teardown, bounded ---- */

struct teardown {
	rados_t cluster;
	rados_ioctx_t io;
	rbd_image_t image;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done, abandoned;
	char what[300];
};

static void teardown_free(struct teardown *t)
{
	pthread_mutex_destroy(&t->lock);
	pthread_cond_destroy(&t->cond);
	free(t);
}

static void *teardown_thread(void *arg)
{
	struct teardown *t = arg;
	bool abandoned;

	if (t->image)
		rbd_close(t->image);
	if (t->io)
		rados_ioctx_destroy(t->io);
	if (t->cluster)
		rados_shutdown(t->cluster);
	pthread_mutex_lock(&t->lock);
	t->done = true;
	abandoned = t->abandoned;
	pthread_cond_signal(&t->cond);
	pthread_mutex_unlock(&t->lock);
	if (abandoned) {
		bd_log(BD_LOG_INFO, "%s: the close left behind has finished", t->what);
		teardown_free(t);
	}
	return NULL;
}

/* Close image, ioctx and cluster handle, waiting at most wait_s seconds: librbd's close flushes
 * and releases the exclusive lock, which never ends when the cluster is gone. */
static void rbd_teardown(rados_t cl, rados_ioctx_t io, rbd_image_t img, uint64_t wait_s,
			 const char *what)
{
	struct teardown *t = calloc(1, sizeof(*t));
	pthread_condattr_t ca;
	pthread_t th;
	struct timespec ts;
	bool done;

	if (!t)
		abort();
	t->cluster = cl;
	t->io = io;
	t->image = img;
	snprintf(t->what, sizeof(t->what), "%s", what);
	pthread_mutex_init(&t->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&t->cond, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&th, NULL, teardown_thread, t) != 0) {
		teardown_thread(t);
		teardown_free(t);
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += (time_t)wait_s;
	pthread_mutex_lock(&t->lock);
	while (!t->done)
		if (pthread_cond_timedwait(&t->cond, &t->lock, &ts) != 0)
			break;
	done = t->done;
	if (!done)
		t->abandoned = true;
	pthread_mutex_unlock(&t->lock);
	if (done) {
		pthread_join(th, NULL);
		teardown_free(t);
	} else {
		pthread_detach(th);
		bd_log(BD_LOG_WARN,
		       "%s: closing did not finish within %llu s (cluster unreachable?); left "
		       "behind",
		       what, (unsigned long long)wait_s);
	}
}

/* ---- options ---- */

static const char *const auth_values[] = {"cephx", "none", NULL};

/* Read the connection options shared by open() and create(). */
static int read_conn(json_t *opts, struct bd_rbd_conn *c, char **mon, char **key, json_t **extra,
		     struct bd_err *err)
{
	const char *ks = NULL;
	json_t *servers;
	int idx, r;

	c->cache = -1;
	c->timeout = 30;
	if ((r = bd_opts_str(opts, "conf", &c->conf, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_str(opts, "user", &c->user, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_u64(opts, "timeout", &c->timeout, err)) < 0 && r != -ENOENT)
		return r;
	if (c->timeout > 86400)
		return bd_err_set(err, -EINVAL,
				  "Parameter 'timeout' must be at most 86400 seconds");
	if ((r = bd_opts_enum(opts, "auth-client-required", auth_values, &idx, err)) == 0)
		c->auth_client_required = auth_values[idx];
	else if (r != -ENOENT)
		return r;
	servers = json_object_get(opts, "server");
	if (servers) {
		bd_opts_mark_used(opts, "server");
		if (!(*mon = bd_rbd_mon_host(servers, err)))
			return err->code;
		c->mon_host = *mon;
	}
	if ((r = bd_opts_str(opts, "key-secret", &ks, err)) < 0 && r != -ENOENT)
		return r;
	if (ks) {
		if ((r = bd_rbd_secret(ks, key, err)) < 0)
			return r;
		size_t n = strlen(*key);
		while (n && ((*key)[n - 1] == '\n' || (*key)[n - 1] == ' '))
			(*key)[--n] = '\0';
		c->key = *key;
	}
	if (*extra)
		c->extra = *extra;
	return 0;
}

static int get_target(json_t *opts, const char **pool, const char **ns, const char **image,
		      struct bd_err *err)
{
	int r;
	if ((r = bd_opts_str(opts, "pool", pool, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'pool' is missing") : r;
	if ((r = bd_opts_str(opts, "image", image, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'image' is missing") : r;
	if ((r = bd_opts_str(opts, "namespace", ns, err)) < 0 && r != -ENOENT)
		return r;
	if (!**pool || !**image)
		return bd_err_set(err, -EINVAL, "Parameters 'pool' and 'image' must not be empty");
	return 0;
}

static int rbd_open_node(struct bd_node *node, json_t *opts, struct bd_limits *limits,
			 struct bd_err *err)
{
	struct rbd_node *rn = bd_node_priv(node);
	struct bd_rbd_conn c = {0};
	const char *pool, *ns = NULL, *image, *snap = NULL, *fn = NULL;
	char *mon = NULL, *key = NULL;
	json_t *extra = NULL;
	bool ro = bd_node_common(node)->read_only;
	rbd_image_info_t info;
	int r;

	memset(rn, 0, sizeof(*rn));
	if ((r = bd_opts_str(opts, "filename", &fn, err)) == 0) {
		extra = json_object();
		if ((r = bd_rbd_parse_filename(fn, opts, extra, err)) < 0)
			goto out;
		if (!json_object_size(extra)) {
			json_decref(extra);
			extra = NULL;
		}
	} else if (r != -ENOENT) {
		return r;
	}
	if ((r = get_target(opts, &pool, &ns, &image, err)) < 0)
		goto out;
	if ((r = bd_opts_str(opts, "snapshot", &snap, err)) < 0 && r != -ENOENT)
		goto out;
	if ((r = read_conn(opts, &c, &mon, &key, &extra, err)) < 0)
		goto out;
	if (snap && !ro) {
		if (!bd_node_common(node)->auto_read_only) {
			r = bd_err_set(err, -EINVAL,
				       "rbd snapshot '%s' is read-only: open it with read-only=on",
				       snap);
			goto out;
		}
		limits->read_only = true;
		ro = true;
	}
	c.cache = bd_node_common(node)->cache_direct ? 0 : 1;
	rn->timeout = c.timeout;
	rn->pool = strdup(pool);
	rn->ns = ns ? strdup(ns) : NULL;
	rn->name = strdup(image);
	rn->snap = snap ? strdup(snap) : NULL;
	rn->user = strdup(c.user ? c.user : "admin");
	if ((r = bd_rbd_connect(&c, &rn->cluster, err)) < 0)
		goto fail;
	if ((r = rados_ioctx_create(rn->cluster, pool, &rn->io)) < 0) {
		bd_err_set(err, r, "cannot open Ceph pool '%s': %s", pool, strerror(-r));
		goto fail;
	}
	if (ns)
		rados_ioctx_set_namespace(rn->io, ns);
	r = ro ? rbd_open_read_only(rn->io, image, &rn->image, snap)
	       : rbd_open(rn->io, image, &rn->image, snap);
	if (r < 0) {
		bd_err_set(err, r, "cannot open rbd image '%s/%s%s%s%s%s': %s", pool, ns ? ns : "",
			   ns ? "/" : "", image, snap ? "@" : "", snap ? snap : "", strerror(-r));
		goto fail;
	}
	if ((r = rbd_stat(rn->image, &info, sizeof(info))) < 0) {
		bd_err_set(err, r, "cannot stat rbd image '%s/%s': %s", pool, image, strerror(-r));
		goto fail;
	}
	rbd_get_features(rn->image, &rn->features);
	rn->obj_size = info.obj_size;

	limits->size = info.size;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_FLUSH) |
		      BD_OP_BIT(BD_OP_DISCARD) | BD_OP_BIT(BD_OP_WRITE_ZEROES);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = 0;
	limits->max_discard = 1u << 30;
	limits->opt_transfer = info.obj_size;
	limits->native_fua = false;
	limits->zeroes_unmap = true;
	limits->can_resize = !snap;
	r = 0;
	goto out;
fail:
	rbd_teardown(rn->cluster, rn->io, rn->image, rn->timeout ? rn->timeout + 5 : 30,
		     "rbd node");
	rn->cluster = NULL;
	rn->io = NULL;
	rn->image = NULL;
	free(rn->pool);
	free(rn->ns);
	free(rn->name);
	free(rn->snap);
	free(rn->user);
out:
	json_decref(extra);
	free(mon);
	if (key) {
		memset(key, 0, strlen(key));
		free(key);
	}
	return r;
}

static void rbd_close_node(struct bd_node *node)
{
	struct rbd_node *rn = bd_node_priv(node);
	char what[300];

	snprintf(what, sizeof(what), "rbd node '%s'", bd_node_name(node));
	rbd_teardown(rn->cluster, rn->io, rn->image, rn->timeout ? rn->timeout + 5 : 60, what);
	free(rn->pool);
	free(rn->ns);
	free(rn->name);
	free(rn->snap);
	free(rn->user);
}

static int rbd_resize_node(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct rbd_node *rn = bd_node_priv(node);
	int r;

	if (rn->snap)
		return bd_err_set(err, -EROFS, "cannot resize a snapshot");
	r = rbd_resize(rn->image, new_size);
	if (r < 0)
		return bd_err_set(err, r, "cannot resize rbd image '%s/%s': %s", rn->pool, rn->name,
				  strerror(-r));
	return 0;
}

static const struct {
	uint64_t bit;
	const char *name;
} feature_names[] = {
    {RBD_FEATURE_LAYERING, "layering"},
    {RBD_FEATURE_STRIPINGV2, "striping"},
    {RBD_FEATURE_EXCLUSIVE_LOCK, "exclusive-lock"},
    {RBD_FEATURE_OBJECT_MAP, "object-map"},
    {RBD_FEATURE_FAST_DIFF, "fast-diff"},
    {RBD_FEATURE_DEEP_FLATTEN, "deep-flatten"},
    {RBD_FEATURE_JOURNALING, "journaling"},
    {RBD_FEATURE_DATA_POOL, "data-pool"},
    {RBD_FEATURE_OPERATIONS, "operations"},
};

static void rbd_describe(struct bd_node *node, json_t *out)
{
	struct rbd_node *rn = bd_node_priv(node);
	json_t *f = json_array();

	for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++)
		if (rn->features & feature_names[i].bit)
			json_array_append_new(f, json_string(feature_names[i].name));
	json_object_set_new(out, "pool", json_string(rn->pool));
	if (rn->ns)
		json_object_set_new(out, "namespace", json_string(rn->ns));
	json_object_set_new(out, "image", json_string(rn->name));
	if (rn->snap)
		json_object_set_new(out, "snapshot", json_string(rn->snap));
	json_object_set_new(out, "user", json_string(rn->user));
	json_object_set_new(out, "features", f);
	json_object_set_new(out, "object-size", json_integer((json_int_t)rn->obj_size));
	json_object_set_new(out, "timeout", json_integer((json_int_t)rn->timeout));
}

/* blockdev-create: {location: BlockdevOptionsRbd, size, cluster-size (object size)}. */
static int rbd_create_image(struct bd_node *file, json_t *opts, struct bd_err *err)
{
	struct bd_rbd_conn c = {0};
	const char *pool, *ns = NULL, *image;
	char *mon = NULL, *key = NULL;
	json_t *loc = NULL, *extra = NULL;
	uint64_t size = 0, cs = 0;
	rados_t cl = NULL;
	rados_ioctx_t io = NULL;
	int r, order = 0;

	(void)file;
	if ((r = bd_opts_obj(opts, "location", &loc, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'location' is missing")
				    : r;
	if ((r = bd_opts_size(opts, "size", &size, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'size' is missing") : r;
	if ((r = bd_opts_size(opts, "cluster-size", &cs, err)) < 0 && r != -ENOENT)
		return r;
	if (cs) {
		if (cs & (cs - 1) || cs < 4096 || cs > (32u << 20))
			return bd_err_set(err, -EINVAL,
					  "cluster-size must be a power of two in 4 KiB..32 MiB");
		order = __builtin_ctzll(cs);
	}
	if ((r = get_target(loc, &pool, &ns, &image, err)) < 0)
		return r;
	if (json_object_get(loc, "snapshot"))
		return bd_err_set(err, -EINVAL, "Can't use snapshot name for image creation");
	if ((r = read_conn(loc, &c, &mon, &key, &extra, err)) < 0)
		goto out;
	if ((r = bd_opts_check_unused(loc, "location", err)) < 0)
		goto out;
	if ((r = bd_opts_check_unused(opts, NULL, err)) < 0)
		goto out;
	if ((r = bd_rbd_connect(&c, &cl, err)) < 0)
		goto out;
	if ((r = rados_ioctx_create(cl, pool, &io)) < 0) {
		bd_err_set(err, r, "cannot open Ceph pool '%s': %s", pool, strerror(-r));
		goto out;
	}
	if (ns)
		rados_ioctx_set_namespace(io, ns);
	r = rbd_create(io, image, size, &order);
	if (r < 0)
		bd_err_set(err, r, "cannot create rbd image '%s/%s': %s", pool, image,
			   strerror(-r));
out:
	if (cl)
		rbd_teardown(cl, io, NULL, c.timeout ? c.timeout + 5 : 60, "rbd create");
	free(mon);
	if (key) {
		memset(key, 0, strlen(key));
		free(key);
	}
	return r;
}

static const struct bd_opt_desc rbd_options[] = {
    {"pool", BD_OPT_STR, false, NULL, "Ceph pool name"},
    {"namespace", BD_OPT_STR, false, NULL, "RADOS namespace in the pool"},
    {"image", BD_OPT_STR, false, NULL, "image name"},
    {"snapshot", BD_OPT_STR, false, NULL, "open this snapshot (read-only)"},
    {"conf", BD_OPT_STR, false, NULL, "ceph.conf path (default: librados' search, optional)"},
    {"user", BD_OPT_STR, false, NULL, "cephx user without 'client.' (default admin)"},
    {"key-secret", BD_OPT_STR, false, NULL, "id of a secret object holding the base64 cephx key"},
    {"auth-client-required", BD_OPT_ENUM, false, auth_values, "cephx or none"},
    {"server", BD_OPT_LIST, false, NULL, "monitors: list of {host, port}"},
    {"timeout", BD_OPT_INT, false, NULL,
     "seconds before a mon/OSD operation fails with EIO (default 30, 0 = wait forever)"},
    {"filename", BD_OPT_STR, false, NULL, "legacy rbd:pool/image[@snap][:opt=val...]"},
    {NULL},
};

const struct bd_driver bd_drv_rbd = {
    .name = "rbd",
    .kind = BD_DRV_PROTOCOL,
    .help = "Ceph RBD image through librbd",
    .options = rbd_options,
    .node_size = sizeof(struct rbd_node),
    .chan_size = sizeof(struct rbd_chan),
    .req_size = sizeof(struct rbd_req),
    .open = rbd_open_node,
    .close = rbd_close_node,
    .chan_open = rbd_chan_open,
    .chan_close = rbd_chan_close,
    .submit = rbd_submit,
    .resize = rbd_resize_node,
    .describe = rbd_describe,
    .create = rbd_create_image,
};
