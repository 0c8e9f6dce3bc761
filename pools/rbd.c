/*
 * rbd.c - the rbd pool backend: a Ceph pool, each RBD image a raw volume, as libvirt's rbd
 * storage backend.  The pool keeps one librados connection while it runs; volumes are opened as
 * rbd nodes ("rbd:POOL/IMAGE" is their path and the node's filename).  [control thread]
 *
 * Refresh does not open the images (libvirt does, which costs several round trips each): names
 * and ids come from rbd_list2() and each size from the "size" key of the image's header object
 * (rbd_header.ID, an omap value), read with asynchronous RADOS operations all in flight at once.
 * Images that are not format 2 (no id) fall back to rbd_open().
 */
#include "pools/pools-int.h"
#include "protocols/rbd-conn.h"

#include <endian.h>
#include <inttypes.h>
#include <rbd/librbd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct rbd_pool_conn {
	struct pool *p;
	rados_t cl;
	rados_ioctx_t io;
	struct rbd_pool_conn *next;
};

static struct rbd_pool_conn *conns;

#define POOL_TIMEOUT 30

static const char *ceph_pool(struct pool *p)
{
	return p->def->source.name;
}

static int rp_check(struct pool *p, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	if (!s->name || !*s->name)
		return bd_err_set(err, -EINVAL,
				  "rbd pool '%s' needs <source><name> (the Ceph pool)",
				  p->def->name);
	if (s->auth_type && strcmp(s->auth_type, "ceph"))
		return bd_err_set(err, -EINVAL, "rbd pool '%s': auth type must be 'ceph', not '%s'",
				  p->def->name, s->auth_type);
	return 0;
}

/* The secret object that holds the cephx key: <secret usage='ID'/> or uuid='ID'. */
static const char *secret_id(struct pool *p)
{
	const struct bd_pool_source *s = &p->def->source;
	if (!s->auth_type)
		return NULL;
	return s->secret_usage ? s->secret_usage : s->secret_uuid;
}

static json_t *servers_json(struct pool *p)
{
	const struct bd_pool_source *s = &p->def->source;
	json_t *a = json_array();
	for (size_t i = 0; i < s->nhosts; i++) {
		json_t *h = json_pack("{s:s}", "host", s->hosts[i].name);
		if (s->hosts[i].port)
			json_object_set_new(h, "port", json_sprintf("%d", s->hosts[i].port));
		json_array_append_new(a, h);
	}
	return a;
}

static struct rbd_pool_conn *conn_find(struct pool *p)
{
	for (struct rbd_pool_conn *c = conns; c; c = c->next)
		if (c->p == p)
			return c;
	return NULL;
}

static int rp_connect(struct pool *p, struct bd_err *err)
{
	struct bd_rbd_conn c = {.timeout = POOL_TIMEOUT, .cache = -1};
	const struct bd_pool_source *s = &p->def->source;
	char *mon = NULL, *key = NULL;
	struct rbd_pool_conn *pc;
	int r;

	if (conn_find(p))
		return 0;
	if (s->nhosts) {
		json_t *sv = servers_json(p);
		mon = bd_rbd_mon_host(sv, err);
		json_decref(sv);
		if (!mon)
			return err->code;
		c.mon_host = mon;
	}
	if (s->auth_type) {
		c.user = s->auth_username;
		if ((r = bd_rbd_secret(secret_id(p), &key, err)) < 0) {
			free(mon);
			return bd_err_prefix(err, "rbd pool '%s': the <auth> secret", p->def->name);
		}
		size_t n = strlen(key);
		while (n && (key[n - 1] == '\n' || key[n - 1] == ' '))
			key[--n] = '\0';
		c.key = key;
	} else {
		c.auth_client_required = "none";
	}
	pc = calloc(1, sizeof(*pc));
	if (!pc)
		abort();
	r = bd_rbd_connect(&c, &pc->cl, err);
	free(mon);
	if (key) {
		memset(key, 0, strlen(key));
		free(key);
	}
	if (r < 0) {
		free(pc);
		return bd_err_prefix(err, "rbd pool '%s'", p->def->name);
	}
	if ((r = rados_ioctx_create(pc->cl, ceph_pool(p), &pc->io)) < 0) {
		rados_shutdown(pc->cl);
		free(pc);
		return bd_err_set(err, r, "rbd pool '%s': cannot open Ceph pool '%s': %s",
				  p->def->name, ceph_pool(p), strerror(-r));
	}
	pc->p = p;
	pc->next = conns;
	conns = pc;
	return 0;
}

static rados_ioctx_t io_of(struct pool *p, struct bd_err *err)
{
	struct rbd_pool_conn *c;
	if (rp_connect(p, err) < 0)
		return NULL;
	c = conn_find(p);
	return c->io;
}

static int rp_start(struct pool *p, struct bd_err *err)
{
	return rp_connect(p, err);
}

static int rp_stop(struct pool *p, struct bd_err *err)
{
	(void)err;
	for (struct rbd_pool_conn **pp = &conns; *pp; pp = &(*pp)->next) {
		struct rbd_pool_conn *c = *pp;
		if (c->p != p)
			continue;
		*pp = c->next;
		rados_ioctx_destroy(c->io);
		rados_shutdown(c->cl);
		free(c);
		break;
	}
	return 0;
}

/* "rbd:POOL/IMAGE" with ':', '@', '/', '\' escaped: the volume's path and its node's filename. */
static char *vol_path(struct pool *p, const char *image)
{
	char *res = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&res, &len);
	if (!f)
		abort();
	fputs("rbd:", f);
	for (int k = 0; k < 2; k++) {
		for (const char *c = k ? image : ceph_pool(p); *c; c++) {
			if (strchr(":@/\\", *c))
				fputc('\\', f);
			fputc(*c, f);
		}
		if (!k)
			fputc('/', f);
	}
	fclose(f);
	return res;
}

static int add_vol(struct pool *p, const char *name, uint64_t size)
{
	char *path = vol_path(p, name);
	struct vol *v = bd_pool_vol_add(p, name, path, "network", "raw", size, size);
	free(path);
	return v ? 0 : -ENOMEM;
}

static int open_image(struct pool *p, const char *name, rbd_image_t *img, bool ro,
		      struct bd_err *err)
{
	rados_ioctx_t io = io_of(p, err);
	int r;
	if (!io)
		return err->code;
	r = ro ? rbd_open_read_only(io, name, img, NULL) : rbd_open(io, name, img, NULL);
	if (r < 0)
		return bd_err_set(err, r, "cannot open rbd image '%s/%s': %s", ceph_pool(p), name,
				  strerror(-r));
	return 0;
}

/* Sizes from the header objects: one omap read per image, all in flight at once. */
struct size_op {
	rados_read_op_t op;
	rados_completion_t comp;
	rados_omap_iter_t iter;
	int rval;
};

static int rp_refresh(struct pool *p, struct bd_err *err)
{
	rados_ioctx_t io = io_of(p, err);
	rbd_image_spec_t *specs = NULL;
	size_t n = 256;
	struct size_op *ops = NULL;
	int r;

	if (!io)
		return err->code;
	for (;;) {
		specs = calloc(n, sizeof(*specs));
		if (!specs)
			abort();
		r = rbd_list2(io, specs, &n);
		if (r != -ERANGE)
			break;
		free(specs);
	}
	if (r < 0) {
		free(specs);
		return bd_err_set(err, r, "rbd pool '%s': cannot list images of Ceph pool '%s': %s",
				  p->def->name, ceph_pool(p), strerror(-r));
	}
	ops = calloc(n ? n : 1, sizeof(*ops));
	if (!ops)
		abort();
	const char *keys[] = {"size"};
	size_t key_lens[] = {4};
	for (size_t i = 0; i < n; i++) {
		char oid[300];
		ops[i].rval = -1;
		if (!specs[i].id || !*specs[i].id)
			continue;
		snprintf(oid, sizeof(oid), "rbd_header.%s", specs[i].id);
		ops[i].op = rados_create_read_op();
		rados_read_op_omap_get_vals_by_keys2(ops[i].op, keys, 1, key_lens, &ops[i].iter,
						     &ops[i].rval);
		if (rados_aio_create_completion2(NULL, NULL, &ops[i].comp) < 0 ||
		    rados_aio_read_op_operate(ops[i].op, io, ops[i].comp, oid, 0) < 0) {
			ops[i].rval = -EIO;
			if (ops[i].comp) {
				rados_aio_release(ops[i].comp);
				ops[i].comp = NULL;
			}
		}
	}
	bd_pool_vols_clear(p);
	r = 0;
	for (size_t i = 0; i < n; i++) {
		uint64_t size = 0;
		bool have = false;
		if (ops[i].comp) {
			rados_aio_wait_for_complete(ops[i].comp);
			if (rados_aio_get_return_value(ops[i].comp) >= 0 && ops[i].rval >= 0) {
				char *k, *v;
				size_t kl, vl;
				while (rados_omap_get_next2(ops[i].iter, &k, &v, &kl, &vl) == 0 &&
				       k) {
					if (kl == 4 && !memcmp(k, "size", 4) && vl == 8) {
						uint64_t le;
						memcpy(&le, v, 8);
						size = le64toh(le);
						have = true;
					}
				}
			}
			rados_aio_release(ops[i].comp);
		}
		if (ops[i].iter) /* allocated with the op, whatever its result */
			rados_omap_get_end(ops[i].iter);
		if (ops[i].op)
			rados_release_read_op(ops[i].op);
		if (!have) { /* format 1, or an unexpected header: ask librbd */
			rbd_image_t img;
			if (open_image(p, specs[i].name, &img, true, NULL) == 0) {
				rbd_get_size(img, &size);
				rbd_close(img);
				have = true;
			}
		}
		if (have && add_vol(p, specs[i].name, size) < 0)
			r = bd_err_set(err, -ENOMEM, "out of memory");
	}
	free(ops);
	rbd_image_spec_list_cleanup(specs, n);
	free(specs);

	struct rados_cluster_stat_t cs;
	struct rados_pool_stat_t ps;
	struct rbd_pool_conn *c = conn_find(p);
	if (rados_cluster_stat(c->cl, &cs) == 0) {
		p->def->capacity = cs.kb * 1024;
		p->def->available = cs.kb_avail * 1024;
	}
	if (rados_ioctx_pool_stat(io, &ps) == 0)
		p->def->allocation = ps.num_bytes;
	return r;
}

/* A snapshot of src to clone from: libvirt's way, a new protected snapshot. */
static int clone_vol(struct pool *p, const char *dst, struct vol *src, uint64_t cap,
		     struct bd_err *err)
{
	rados_ioctx_t io = io_of(p, err);
	rbd_image_t img;
	char snap[64];
	uint64_t features = 0;
	int r, order = 0;

	if (!io)
		return err->code;
	if ((r = open_image(p, src->name, &img, false, err)) < 0)
		return r;
	rbd_get_features(img, &features);
	{
		rbd_image_info_t info;
		if (rbd_stat(img, &info, sizeof(info)) == 0)
			order = info.order;
	}
	if (!(features & RBD_FEATURE_LAYERING)) {
		rbd_close(img);
		return bd_err_set(err, -ENOTSUP,
				  "cannot clone '%s': the image lacks the layering feature",
				  src->name);
	}
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	snprintf(snap, sizeof(snap), "libvirt-%lld%03ld", (long long)ts.tv_sec,
		 ts.tv_nsec / 1000000);
	if ((r = rbd_snap_create(img, snap)) < 0) {
		bd_err_set(err, r, "cannot snapshot '%s': %s", src->name, strerror(-r));
		goto out;
	}
	if ((r = rbd_snap_protect(img, snap)) < 0) {
		bd_err_set(err, r, "cannot protect snapshot '%s@%s': %s", src->name, snap,
			   strerror(-r));
		rbd_snap_remove(img, snap);
		goto out;
	}
	r = rbd_clone2(io, src->name, snap, io, dst, features, &order, 0, 0);
	if (r < 0) {
		bd_err_set(err, r, "cannot clone '%s@%s' to '%s': %s", src->name, snap, dst,
			   strerror(-r));
		rbd_snap_unprotect(img, snap);
		rbd_snap_remove(img, snap);
		goto out;
	}
	if (cap > src->capacity) {
		rbd_image_t ni;
		if (open_image(p, dst, &ni, false, NULL) == 0) {
			rbd_resize(ni, cap);
			rbd_close(ni);
		}
	}
out:
	rbd_close(img);
	return r;
}

static int rp_vol_create(struct pool *p, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
			 struct vol *src, struct bd_err *err)
{
	rados_ioctx_t io;
	int r, order = 0;

	(void)o;
	if (def->format && strcmp(def->format, "raw"))
		return bd_err_set(err, -ENOTSUP, "rbd volumes are raw, not '%s'", def->format);
	if (def->backing_path)
		return bd_err_set(err, -ENOTSUP,
				  "rbd volumes have no backing store (clone instead)");
	if (src) {
		if (!strcmp(src->type, "network") && !strncmp(src->path, "rbd:", 4) &&
		    bd_pool_vol_find(p, src->name) == src) {
			if ((r = clone_vol(p, def->name, src, def->has_capacity ? def->capacity : 0,
					   err)) < 0)
				return r;
			return rp_refresh(p, err);
		}
		return bd_err_set(
		    err, -ENOTSUP,
		    "an rbd volume can only be cloned from an image of the same pool");
	}
	if (!def->has_capacity || !def->capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	if (!(io = io_of(p, err)))
		return err->code;
	r = rbd_create(io, def->name, def->capacity, &order);
	if (r < 0)
		return bd_err_set(err, r, "cannot create rbd image '%s/%s': %s", ceph_pool(p),
				  def->name, strerror(-r));
	return add_vol(p, def->name, def->capacity);
}

static int rp_vol_delete_snapshots(struct pool *p, struct vol *v, struct bd_err *err)
{
	rbd_image_t img;
	rbd_snap_info_t *snaps = NULL;
	int max = 16, n, r;

	if ((r = open_image(p, v->name, &img, false, err)) < 0)
		return r;
	for (;;) {
		snaps = calloc((size_t)max, sizeof(*snaps));
		if (!snaps)
			abort();
		n = rbd_snap_list(img, snaps, &max);
		if (n != -ERANGE)
			break;
		free(snaps);
	}
	if (n < 0) {
		r = bd_err_set(err, n, "cannot list snapshots of '%s': %s", v->name, strerror(-n));
		goto out;
	}
	for (int i = 0; i < n; i++) {
		int prot = 0;
		rbd_snap_is_protected(img, snaps[i].name, &prot);
		if (prot && (r = rbd_snap_unprotect(img, snaps[i].name)) < 0) {
			bd_err_set(err, r, "cannot unprotect snapshot '%s@%s': %s%s", v->name,
				   snaps[i].name, strerror(-r),
				   r == -EBUSY ? " (clones of it exist)" : "");
			goto list_out;
		}
		if ((r = rbd_snap_remove(img, snaps[i].name)) < 0) {
			bd_err_set(err, r, "cannot remove snapshot '%s@%s': %s", v->name,
				   snaps[i].name, strerror(-r));
			goto list_out;
		}
	}
	r = 0;
list_out:
	rbd_snap_list_end(snaps);
out:
	free(snaps);
	rbd_close(img);
	return r;
}

static int rp_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	rados_ioctx_t io = io_of(p, err);
	int r;
	if (!io)
		return err->code;
	r = rbd_remove(io, v->name);
	if (r == -ENOTEMPTY)
		return bd_err_set(err, r,
				  "rbd image '%s' has snapshots (delete them with the volume: "
				  "delete-snapshots)",
				  v->name);
	if (r == -EBUSY)
		return bd_err_set(err, r, "rbd image '%s' is still in use (watched by a client)",
				  v->name);
	if (r < 0)
		return bd_err_set(err, r, "cannot remove rbd image '%s': %s", v->name,
				  strerror(-r));
	return 0;
}

static int no_progress(uint64_t done, uint64_t total, void *arg)
{
	(void)done;
	(void)total;
	(void)arg;
	return 0;
}

static int rp_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			 struct bd_err *err)
{
	rbd_image_t img;
	int r;
	if ((r = open_image(p, v->name, &img, false, err)) < 0)
		return r;
	r = rbd_resize2(img, cap, (flags & BD_RESIZE_SHRINK) != 0, no_progress, NULL);
	rbd_close(img);
	if (r < 0)
		return bd_err_set(err, r, "cannot resize rbd image '%s': %s", v->name,
				  strerror(-r));
	return 0;
}

static int rp_vol_wipe(struct pool *p, struct vol *v, const char *alg, struct bd_err *err)
{
	rbd_image_t img;
	uint64_t size = 0, chunk = 4u << 20;
	int r;
	if ((r = open_image(p, v->name, &img, false, err)) < 0)
		return r;
	rbd_get_size(img, &size);
	if (!strcmp(alg, "trim")) {
		for (uint64_t off = 0; off < size && r >= 0; off += 1ull << 30) {
			uint64_t n = size - off < (1ull << 30) ? size - off : 1ull << 30;
			r = rbd_discard(img, off, n);
		}
	} else if (!strcmp(alg, "zero")) {
		for (uint64_t off = 0; off < size && r >= 0; off += 1ull << 30) {
			uint64_t n = size - off < (1ull << 30) ? size - off : 1ull << 30;
			ssize_t w = rbd_write_zeroes(img, off, n, 0, 0);
			r = w < 0 ? (int)w : 0;
		}
	} else { /* random */
		char *buf = malloc(chunk);
		if (!buf)
			abort();
		for (uint64_t off = 0; off < size && r >= 0; off += chunk) {
			size_t n = size - off < chunk ? (size_t)(size - off) : (size_t)chunk;
			for (size_t i = 0; i < n; i += sizeof(long))
				*(long *)(buf + i) = random();
			ssize_t w = rbd_write(img, off, n, buf);
			r = w < 0 ? (int)w : 0;
		}
		free(buf);
	}
	if (r >= 0)
		r = rbd_flush(img);
	rbd_close(img);
	if (r < 0)
		return bd_err_set(err, r, "wiping rbd image '%s' (%s) failed: %s", v->name, alg,
				  strerror(-r));
	return 0;
}

static json_t *rp_vol_file_opts(struct pool *p, struct vol *v, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	json_t *o = json_pack("{s:s,s:s}", "driver", "rbd", "filename", v->path);
	(void)err;
	if (s->nhosts)
		json_object_set_new(o, "server", servers_json(p));
	if (s->auth_type) {
		json_object_set_new(o, "user", json_string(s->auth_username));
		json_object_set_new(o, "key-secret", json_string(secret_id(p)));
	} else {
		json_object_set_new(o, "auth-client-required", json_string("none"));
	}
	return o;
}

const struct pool_backend bd_pool_backend_rbd = {
    .type = "rbd",
    .check = rp_check,
    .start = rp_start,
    .stop = rp_stop,
    .refresh = rp_refresh,
    .vol_create = rp_vol_create,
    .vol_delete = rp_vol_delete,
    .vol_delete_snapshots = rp_vol_delete_snapshots,
    .vol_resize = rp_vol_resize,
    .vol_file_opts = rp_vol_file_opts,
    .vol_wipe = rp_vol_wipe,
};
