/*
 * netfs-nfs.c - the "netfs" pool type with <format type='nfs'/> (or no format, or "auto"):
 * a directory exported by an NFSv3 server, reached through libnfs from the control thread,
 * without any kernel mount.  [control thread]
 *
 * libvirt mounts host:/dir on the target path; blockd mounts nothing: the target path is kept
 * in the XML only.  Each operation mounts the export with its own short-lived libnfs context
 * (a few RPCs on a LAN) bounded by NETFS_TIMEOUT seconds per call, so a dead server blocks the
 * control thread at most that long per call.  A volume is a file of the export directory; its
 * path and key are its URL, nfs://HOST/DIR/NAME, and it is opened with the nfs protocol
 * driver ({"driver": "nfs", "filename": URL}).
 *
 * start: the export must mount; refresh: the directory listing (READDIRPLUS gives size and
 * used bytes), the header of new or changed files probed (vol-probe.c: qcow2, qed, vmdk, vdi,
 * vpc or raw; at most three reads of one file); create: raw
 * (sparse: NFSv3 has no ALLOCATE, so <allocation> is not preallocated) or qcow2 (the qcow2
 * driver's create over an nfs node); delete; resize (raw: SETATTR size; qcow2: through the
 * qcow2 driver, growing only); wipe (zero/trim: truncate to 0 and back, which leaves holes;
 * random: written through libnfs; qcow2: an empty image with the same parameters).
 */
#include "pools/pools-int.h"
#include "protocols/nfs-sync.h"

#include <fcntl.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <nfsc/libnfs-raw-mount.h>
#include <nfsc/libnfs-raw.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define NETFS_TIMEOUT 10 /* seconds per NFS call made on the control thread */
#define WIPE_CHUNK (1u << 20)

static void conn_of(struct pool *p, struct bd_nfs_conn *c)
{
	memset(c, 0, sizeof(*c));
	c->uid = c->gid = c->tcp_syncnt = -1;
	c->timeout = NETFS_TIMEOUT;
	c->autoreconnect = 0;
	c->host = p->def->source.hosts[0].name;
	c->export = p->def->source.dir;
	c->nfsport = p->def->source.hosts[0].port;
}

static struct nfs_context *pool_connect(struct pool *p, struct bd_err *err)
{
	struct bd_nfs_conn c;

	conn_of(p, &c);
	return bd_nfs_connect(&c, err);
}

/* nfs://HOST/DIR/NAME (plus the port, when the pool names one): the volume's path and key. */
static char *vol_url(struct pool *p, const char *name)
{
	const struct bd_pool_host *h = &p->def->source.hosts[0];
	const char *dir = p->def->source.dir;
	size_t l = strlen(dir);
	char *u = NULL;
	char port[32] = "";

	while (l > 1 && dir[l - 1] == '/')
		l--;
	if (h->port)
		snprintf(port, sizeof(port), "?nfsport=%d", h->port);
	if (asprintf(&u, "nfs://%s%.*s/%s%s", h->name, (int)(l == 1 ? 0 : l), dir, name, port) < 0)
		return NULL;
	return u;
}

static int nfs_fail(struct pool *p, struct nfs_context *ctx, int r, const char *what,
		    const char *name, struct bd_err *err)
{
	return bd_err_set(err, r, "cannot %s '%s' on NFS export '%s:%s': %s", what, name,
			  p->def->source.hosts[0].name, p->def->source.dir,
			  r == -ETIMEDOUT ? "no answer from the server" : bd_nfs_error(ctx));
}

/* ---- lifecycle ---- */

static int netfs_check(struct pool *p, struct bd_err *err)
{
	const char *f = p->def->source.format;

	if (f && strcmp(f, "nfs") && strcmp(f, "auto"))
		return bd_err_set(err, -EINVAL, "netfs pool '%s': source format '%s' is not nfs",
				  p->def->name, f);
	if (!p->def->source.nhosts || !p->def->source.hosts[0].name ||
	    !*p->def->source.hosts[0].name)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><host name=...>"
				  " for a 'netfs' pool");
	if (!p->def->source.dir || p->def->source.dir[0] != '/' ||
	    strstr(p->def->source.dir, "/.."))
		return bd_err_set(
		    err, -EINVAL,
		    "netfs pool '%s': <source><dir path=...> must be an absolute path "
		    "without '..'",
		    p->def->name);
	return 0;
}

static void set_space(struct pool *p, struct nfs_context *ctx)
{
	struct nfs_statvfs_64 sv;

	if (bd_nfs_statvfs(ctx, "/", &sv, NETFS_TIMEOUT) < 0)
		return;
	uint64_t fr = sv.f_frsize ? sv.f_frsize : sv.f_bsize;
	p->def->capacity = sv.f_blocks * fr;
	p->def->available = sv.f_bavail * fr;
	p->def->allocation = (sv.f_blocks - sv.f_bfree) * fr;
}

static int netfs_start(struct pool *p, struct bd_err *err)
{
	int r = netfs_check(p, err);
	if (r < 0)
		return r;
	struct nfs_context *ctx = pool_connect(p, err);
	if (!ctx)
		return err->code;
	set_space(p, ctx);
	nfs_destroy_context(ctx);
	return 0;
}

/* ---- refresh ---- */

struct probe_file {
	struct nfs_context *ctx;
	struct nfsfh *fh;
};

static long probe_read(void *opaque, uint64_t off, void *buf, size_t len)
{
	struct probe_file *f = opaque;
	return bd_nfs_pread(f->ctx, f->fh, off, len, buf, NETFS_TIMEOUT);
}

/* The format fields of v (vol-probe.c) from its header, read over NFS (a file that cannot be
 * opened or read is listed as raw). */
static void probe_vol(struct nfs_context *ctx, struct vol *v, uint64_t size)
{
	unsigned char h[BD_VOL_PROBE_HEADER];
	struct probe_file f = {.ctx = ctx};
	struct bd_vol_probe r;
	char path[4096];
	long n = 0;

	snprintf(path, sizeof(path), "/%s", v->name);
	if (size && bd_nfs_open(ctx, path, O_RDONLY, 0, &f.fh, NETFS_TIMEOUT) == 0) {
		n = bd_nfs_pread(ctx, f.fh, 0, sizeof(h), h, NETFS_TIMEOUT);
		bd_vol_probe(h, n > 0 ? (size_t)n : 0, size, n > 0 ? probe_read : NULL, &f, &r);
		bd_nfs_close(ctx, f.fh, NETFS_TIMEOUT);
	} else {
		bd_vol_probe(h, 0, size, NULL, NULL, &r);
	}
	bd_vol_probe_set(v, &r);
}

static int netfs_refresh(struct pool *p, struct bd_err *err)
{
	struct nfs_context *ctx = pool_connect(p, err);
	struct nfsdir *dir = NULL;
	struct nfsdirent *de;
	int r;

	if (!ctx)
		return err ? err->code : -EIO;
	set_space(p, ctx);
	if ((r = bd_nfs_opendir(ctx, "/", &dir, NETFS_TIMEOUT)) < 0) {
		r = nfs_fail(p, ctx, r, "list", p->def->source.dir, err);
		nfs_destroy_context(ctx);
		return r;
	}
	for (size_t i = 0; i < p->nvols; i++)
		p->vols[i]->seen = false;
	while ((de = nfs_readdir(ctx, dir))) {
		if (de->name[0] == '.' || de->type != 1 /* NF3REG: regular files only */)
			continue;
		if (bd_pool_check_name("volume", de->name, NULL) < 0)
			continue;
		int64_t mt = (int64_t)de->mtime.tv_sec * 1000000000 + de->mtime_nsec;
		struct vol *v = bd_pool_vol_find(p, de->name);
		if (v && v->ino == de->inode && v->mtime_ns == mt && v->size == de->size) {
			v->allocation = de->used;
			v->seen = true;
			continue;
		}
		if (!v) {
			char *url = vol_url(p, de->name);
			v = url ? bd_pool_vol_add(p, de->name, url, "file", "raw", de->size,
						  de->used)
				: NULL;
			free(url);
			if (!v)
				continue;
		}
		probe_vol(ctx, v, de->size);
		v->ino = de->inode;
		v->mtime_ns = mt;
		v->size = de->size;
		v->physical = de->size;
		v->allocation = de->used;
		v->seen = true;
	}
	nfs_closedir(ctx, dir);
	nfs_destroy_context(ctx);
	size_t k = 0;
	for (size_t i = 0; i < p->nvols; i++) {
		if (p->vols[i]->seen)
			p->vols[k++] = p->vols[i];
		else
			bd_vol_free(p->vols[i]);
	}
	p->nvols = k;
	p->vols_sorted = false;
	bd_pool_vols_sort(p);
	return 0;
}

/* ---- volumes ---- */

/* An empty qcow2 image in the (existing) file name, by the qcow2 driver over an nfs node. */
static int create_qcow2(struct pool *p, const char *name, uint64_t capacity, const char *compat,
			uint64_t cluster_size, bool lazy, bool extl2, const char *backing,
			const char *backing_fmt, bool prealloc, struct bd_err *err)
{
	const struct bd_driver *drv = bd_driver_find("qcow2");
	static unsigned seq;
	char tmp[64];
	struct bd_node *fnode;
	char *url = vol_url(p, name);
	int r;

	if (!url)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (!drv || !drv->create) {
		free(url);
		return bd_err_set(err, -ENOTSUP,
				  "cannot create qcow2 volumes: this blockd has no qcow2 driver "
				  "with image creation");
	}
	snprintf(tmp, sizeof(tmp), "netfs-create-%u-%u", (unsigned)getpid(), ++seq);
	json_t *fo = json_pack("{s:s,s:s,s:s,s:i}", "driver", "nfs", "node-name", tmp, "filename",
			       url, "timeout", NETFS_TIMEOUT);
	free(url);
	fnode = bd_node_open(fo, err);
	json_decref(fo);
	if (!fnode)
		return err->code;
	json_t *o = json_pack("{s:s,s:I,s:s}", "file", tmp, "size", (json_int_t)capacity, "version",
			      compat && !strcmp(compat, "0.10") ? "v2" : "v3");
	if (cluster_size)
		json_object_set_new(o, "cluster-size", json_integer((json_int_t)cluster_size));
	if (lazy)
		json_object_set_new(o, "lazy-refcounts", json_true());
	if (extl2)
		json_object_set_new(o, "extended-l2", json_true());
	if (backing)
		json_object_set_new(o, "backing-file", json_string(backing));
	if (backing_fmt)
		json_object_set_new(o, "backing-fmt", json_string(backing_fmt));
	if (prealloc)
		json_object_set_new(o, "preallocation", json_string("metadata"));
	r = drv->create(fnode, o, err);
	json_decref(o);
	struct bd_err e2 = {0};
	bd_graph_del(tmp, &e2);
	return r;
}

/* Open /name and set its size (0 first when zero is set: the server then has holes only). */
static int set_size(struct pool *p, struct nfs_context *ctx, const char *name, int flags, int mode,
		    uint64_t size, bool zero, struct bd_err *err)
{
	struct nfsfh *fh;
	char path[4096];
	int r;

	snprintf(path, sizeof(path), "/%s", name);
	if ((r = bd_nfs_open(ctx, path, flags | O_RDWR, mode, &fh, NETFS_TIMEOUT)) < 0) {
		if (r == -EEXIST)
			return bd_err_set(err, r, "storage volume '%s' already exists", name);
		return nfs_fail(p, ctx, r, (flags & O_CREAT) ? "create" : "open", name, err);
	}
	if (zero && (r = bd_nfs_ftruncate(ctx, fh, 0, NETFS_TIMEOUT)) < 0)
		r = nfs_fail(p, ctx, r, "truncate", name, err);
	if (r >= 0 && (r = bd_nfs_ftruncate(ctx, fh, size, NETFS_TIMEOUT)) < 0)
		r = nfs_fail(p, ctx, r, "resize", name, err);
	if (r >= 0 && (r = bd_nfs_fsync(ctx, fh, NETFS_TIMEOUT)) < 0)
		r = nfs_fail(p, ctx, r, "commit", name, err);
	bd_nfs_close(ctx, fh, NETFS_TIMEOUT);
	return r < 0 ? r : 0;
}

static int netfs_vol_create(struct pool *p, struct bd_vol_def *def,
			    const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err)
{
	const char *fmt = def->format ? def->format : "raw";
	struct nfs_context *ctx;
	int mode = def->perms.mode >= 0 ? (int)def->perms.mode : 0600;
	int r;

	if (src)
		return bd_err_set(err, -ENOTSUP,
				  "cloning into a netfs pool over NFS is not supported yet (open "
				  "both volumes and copy through exports)");
	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return bd_err_set(err, -ENOTSUP,
				  "volume format '%s' is not supported yet (supported: raw, qcow2)",
				  fmt);
	if (!def->has_capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	if (!strcmp(fmt, "raw") && def->backing_path)
		return bd_err_set(err, -EINVAL, "a raw volume cannot have a backing store");
	if (!(ctx = pool_connect(p, err)))
		return err->code;
	r = set_size(p, ctx, def->name, O_CREAT | O_EXCL, mode,
		     strcmp(fmt, "raw") ? 0 : def->capacity, false, err);
	if (r == 0 && !strcmp(fmt, "qcow2"))
		r = create_qcow2(p, def->name, def->capacity, def->compat, def->cluster_size,
				 def->lazy_refcounts, def->extended_l2, def->backing_path,
				 def->backing_format, o && o->prealloc_metadata, err);
	if (r < 0 && r != -EEXIST) {
		char path[4096];
		snprintf(path, sizeof(path), "/%s", def->name);
		bd_nfs_unlink(ctx, path, NETFS_TIMEOUT);
	}
	nfs_destroy_context(ctx);
	if (r == 0)
		netfs_refresh(p, NULL);
	return r;
}

static int netfs_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	struct nfs_context *ctx = pool_connect(p, err);
	char path[4096];
	int r;

	if (!ctx)
		return err->code;
	snprintf(path, sizeof(path), "/%s", v->name);
	r = bd_nfs_unlink(ctx, path, NETFS_TIMEOUT);
	if (r < 0 && r != -ENOENT)
		r = nfs_fail(p, ctx, r, "remove", v->name, err);
	nfs_destroy_context(ctx);
	return r < 0 && r != -ENOENT ? r : 0;
}

static int netfs_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			    struct bd_err *err)
{
	int r;

	if (flags & BD_RESIZE_ALLOCATE)
		return bd_err_set(err, -ENOTSUP,
				  "allocate is not supported on NFS (NFSv3 cannot preallocate)");
	if (!strcmp(v->format, "raw")) {
		struct nfs_context *ctx = pool_connect(p, err);
		if (!ctx)
			return err->code;
		r = set_size(p, ctx, v->name, 0, 0, cap, false, err);
		nfs_destroy_context(ctx);
		return r;
	}
	if (!strcmp(v->format, "qcow2")) {
		static unsigned seq;
		char tmp[64];
		if (cap < v->capacity)
			return bd_err_set(err, -ENOTSUP,
					  "shrinking a qcow2 volume is not supported");
		snprintf(tmp, sizeof(tmp), "netfs-resize-%u", ++seq);
		if ((r = bd_vol_open(p->def->name, v->name, tmp, "qcow2", false, err)) < 0)
			return r;
		r = bd_node_resize(bd_graph_find(tmp), cap, err);
		struct bd_err e2 = {0};
		bd_graph_del(tmp, &e2);
		return r;
	}
	return bd_err_set(err, -ENOTSUP, "resizing %s volumes is not supported", v->format);
}

static int wipe_random(struct pool *p, struct nfs_context *ctx, struct vol *v, struct bd_err *err)
{
	char *buf = malloc(WIPE_CHUNK);
	char path[4096];
	struct nfsfh *fh;
	int r;

	if (!buf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	snprintf(path, sizeof(path), "/%s", v->name);
	if ((r = bd_nfs_open(ctx, path, O_RDWR, 0, &fh, NETFS_TIMEOUT)) < 0) {
		free(buf);
		return nfs_fail(p, ctx, r, "open", v->name, err);
	}
	for (uint64_t off = 0; off < v->physical && r >= 0;) {
		size_t n =
		    v->physical - off < WIPE_CHUNK ? (size_t)(v->physical - off) : WIPE_CHUNK;
		for (size_t got = 0; got < n;) {
			ssize_t g = getrandom(buf + got, n - got, 0);
			if (g > 0)
				got += (size_t)g;
		}
		long w = bd_nfs_pwrite(ctx, fh, off, n, buf, NETFS_TIMEOUT);
		if (w < 0)
			r = nfs_fail(p, ctx, (int)w, "write", v->name, err);
		off += n;
	}
	if (r >= 0 && (r = bd_nfs_fsync(ctx, fh, NETFS_TIMEOUT)) < 0)
		r = nfs_fail(p, ctx, r, "commit", v->name, err);
	bd_nfs_close(ctx, fh, NETFS_TIMEOUT);
	free(buf);
	return r < 0 ? r : 0;
}

static int netfs_vol_wipe(struct pool *p, struct vol *v, const char *alg, struct bd_err *err)
{
	struct nfs_context *ctx;
	int r;

	if (!strcmp(v->format, "qcow2") && strcmp(alg, "zero"))
		return bd_err_set(err, -ENOTSUP, "only the zero algorithm wipes qcow2 volumes");
	if (!(ctx = pool_connect(p, err)))
		return err->code;
	if (!strcmp(alg, "random")) {
		r = wipe_random(p, ctx, v, err);
	} else {
		r = set_size(p, ctx, v->name, 0, 0, strcmp(v->format, "qcow2") ? v->physical : 0,
			     true, err);
	}
	nfs_destroy_context(ctx);
	if (r == 0 && !strcmp(v->format, "qcow2")) /* libvirt's way: a new empty image */
		r = create_qcow2(p, v->name, v->capacity, v->compat, v->cluster_size,
				 v->lazy_refcounts, v->extended_l2, v->backing_path,
				 v->backing_format, false, err);
	return r;
}

static json_t *netfs_vol_file_opts(struct pool *p, struct vol *v, struct bd_err *err)
{
	(void)p;
	json_t *o = json_pack("{s:s,s:s}", "driver", "nfs", "filename", v->path);
	if (!o)
		bd_err_set(err, -ENOMEM, "out of memory");
	return o;
}

/* ---- find-storage-pool-sources: the server's export list (MOUNT EXPORT) ---- */

struct exports_call {
	bool done;
	int status;
	char **dirs;
	size_t n;
};

static void exports_cb(struct rpc_context *rpc, int status, void *data, void *priv)
{
	struct exports_call *c = priv;

	(void)rpc;
	c->done = true;
	c->status = status == RPC_STATUS_SUCCESS ? 0 : -EIO;
	if (status != RPC_STATUS_SUCCESS || !data)
		return;
	/* libnfs 4.0's XDR decoder places the nodes at 4-byte aligned addresses: copy each one
	 * out instead of reading it in place (UBSan reports the misaligned access) */
	exports e;
	memcpy(&e, data, sizeof(e));
	while (e && c->n < 4096) {
		struct exportnode node;
		memcpy(&node, e, sizeof(node));
		char **d = realloc(c->dirs, (c->n + 1) * sizeof(*d));
		if (!d)
			return;
		c->dirs = d;
		if ((c->dirs[c->n] = strdup(node.ex_dir ? node.ex_dir : "")))
			c->n++;
		e = node.ex_next;
	}
}

static void xml_escape(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '\'' || *s == '"' || *s == '&' || *s == '<' || *s == '>')
			fprintf(f, "&#%d;", *s);
		else if ((unsigned char)*s >= 0x20)
			fputc(*s, f);
	}
}

/* The host named by <source><host name=.../></source> (malloc'd), or NULL with err set. */
static char *spec_host(const char *spec, struct bd_err *err)
{
	xmlDocPtr doc;
	char *host = NULL;

	if (!spec || !*spec) {
		bd_err_set(err, -EINVAL,
			   "find-storage-pool-sources for netfs needs a source spec naming the "
			   "server: <source><host name='HOST'/></source>");
		return NULL;
	}
	doc = xmlReadMemory(spec, (int)strlen(spec), "spec.xml", NULL,
			    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	xmlNodePtr root = doc ? xmlDocGetRootElement(doc) : NULL;
	if (!root || xmlStrcmp(root->name, (const xmlChar *)"source")) {
		bd_err_set(err, -EINVAL,
			   "invalid source spec: expected <source><host name='HOST'/>"
			   "</source>");
		goto out;
	}
	for (xmlNodePtr n = root->children; n; n = n->next) {
		if (n->type != XML_ELEMENT_NODE)
			continue;
		xmlChar *v = NULL;
		if (!xmlStrcmp(n->name, (const xmlChar *)"format") &&
		    (v = xmlGetProp(n, (const xmlChar *)"type")) &&
		    xmlStrcmp(v, (const xmlChar *)"nfs") && xmlStrcmp(v, (const xmlChar *)"auto")) {
			bd_err_set(err, -ENOTSUP,
				   "find-storage-pool-sources: source format '%s' is not nfs",
				   (const char *)v);
			xmlFree(v);
			free(host);
			host = NULL;
			goto out;
		}
		if (!xmlStrcmp(n->name, (const xmlChar *)"host") && !host &&
		    (v = xmlGetProp(n, (const xmlChar *)"name")) && *v)
			host = strdup((const char *)v);
		xmlFree(v);
	}
	if (!host)
		bd_err_set(err, -EINVAL, "the source spec names no <host name='HOST'/>");
out:
	xmlFreeDoc(doc);
	return host;
}

static char *netfs_find_sources(const char *spec, struct bd_err *err)
{
	struct exports_call c = {0};
	struct rpc_context *rpc;
	char *host = spec_host(spec, err), *res = NULL;
	size_t len = 0;

	if (!host)
		return NULL;
	if (!(rpc = rpc_init_context())) {
		bd_err_set(err, -ENOMEM, "cannot create an RPC context");
		goto out;
	}
	if (mount_getexports_async(rpc, host, exports_cb, &c) < 0) {
		bd_err_set(err, -EIO, "cannot ask '%s' for its exports: %s", host,
			   rpc_get_error(rpc));
		goto out_rpc;
	}
	uint64_t deadline = bd_now_ns() + NETFS_TIMEOUT * 1000000000ull;
	while (!c.done && bd_now_ns() < deadline) {
		struct pollfd p = {.fd = rpc_get_fd(rpc), .events = (short)rpc_which_events(rpc)};
		int n = p.fd >= 0 ? poll(&p, 1, 100) : 0;
		if (n < 0 && errno != EINTR)
			break;
		if (rpc_service(rpc, n > 0 ? p.revents : 0) < 0 && !c.done)
			break;
	}
	if (!c.done || c.status < 0) {
		bd_err_set(err, -EIO, "cannot get the export list of '%s': %s", host,
			   c.done ? rpc_get_error(rpc) : "no answer");
		goto out_rpc;
	}
	FILE *f = open_memstream(&res, &len);
	fprintf(f, "<sources>\n");
	for (size_t i = 0; i < c.n; i++) {
		fprintf(f, "  <source>\n    <host name='");
		xml_escape(f, host);
		fprintf(f, "'/>\n    <dir path='");
		xml_escape(f, c.dirs[i]);
		fprintf(f, "'/>\n    <format type='nfs'/>\n  </source>\n");
	}
	fprintf(f, "</sources>\n");
	fclose(f);
out_rpc:
	rpc_destroy_context(rpc); /* may run exports_cb (c is still valid) */
out:
	for (size_t i = 0; i < c.n; i++)
		free(c.dirs[i]);
	free(c.dirs);
	free(host);
	return res;
}

const struct pool_backend bd_pool_backend_netfs_nfs = {
    .type = "netfs",
    .buildable = false,
    .file_vols = false,
    .check = netfs_check,
    .start = netfs_start,
    .refresh = netfs_refresh,
    .vol_create = netfs_vol_create,
    .vol_delete = netfs_vol_delete,
    .vol_resize = netfs_vol_resize,
    .vol_file_opts = netfs_vol_file_opts,
    .vol_wipe = netfs_vol_wipe,
    .find_sources = netfs_find_sources,
    .netfs_format = "nfs",
};
