/*
 * gluster.c - the gluster pool backend: the files of a directory of a GlusterFS volume, reached
 * through gfapi (libvirt's <pool type='gluster'>: <source><host name= port=/><dir path=/>
 * <name>VOLUME</name></source>).  [control thread]
 *
 * start connects (the connection is shared with gluster nodes of the same volume, see
 * protocols/gluster-conn.c) and stop releases it; glfs_fini runs on a detached thread.  Volumes
 * are the regular files of <dir> (names starting with '.' are skipped), probed from their
 * header (vol-probe.c: qcow2, qed, vmdk, vdi, vpc or raw); their path and key is gluster://HOST:PORT/VOLUME/DIR/NAME, which is also
 * the filename of the gluster node that vol-open puts under the format node, so the pools'
 * in-use checks see it.  libvirt cannot create volumes in gluster pools; blockd does: raw
 * (sparse, or allocated with glfs_fallocate) and qcow2 (the qcow2 driver's create through a
 * temporary gluster node).  Resize truncates raw files and grows qcow2 images through their
 * node; wipe zeroes (glfs_zerofill), trims (glfs_discard) or writes random bytes.
 */
#include "pools/pools-int.h"
#include "protocols/gluster-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* Running pools and their connections. */
struct gp {
	char *pool;
	struct gl_conn *conn;
	struct gl_loc loc; /* path = the pool's directory */
	struct gp *next;
};
static struct gp *gps;

static struct gp *gp_find(struct pool *p)
{
	for (struct gp *g = gps; g; g = g->next)
		if (!strcmp(g->pool, p->def->name))
			return g;
	return NULL;
}

static const char *dir_of(struct pool *p)
{
	const char *d = p->def->source.dir;
	return d && *d ? d : "/";
}

static int gp_check(struct pool *p, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	if (!s->name || !*s->name || strchr(s->name, '/'))
		return bd_err_set(err, -EINVAL,
				  "missing or invalid <source><name> (the gluster volume) for a "
				  "'gluster' pool");
	if (!s->nhosts)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><host> for a 'gluster' pool");
	if (s->nhosts > GL_MAX_SERVERS)
		return bd_err_set(err, -EINVAL, "at most %d <source><host> for a 'gluster' pool",
				  GL_MAX_SERVERS);
	for (size_t i = 0; i < s->nhosts; i++)
		if (!s->hosts[i].name[0] || s->hosts[i].name[0] == '-' ||
		    strpbrk(s->hosts[i].name, "/?#@ "))
			return bd_err_set(err, -EINVAL, "invalid <source><host name='%s'>",
					  s->hosts[i].name);
	if (strstr(dir_of(p), "/../") || strstr(dir_of(p), "?"))
		return bd_err_set(err, -EINVAL, "invalid <source><dir path='%s'>", dir_of(p));
	return 0;
}

static int loc_from_def(struct pool *p, struct gl_loc *loc, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	memset(loc, 0, sizeof(*loc));
	loc->debug = GL_DEFAULT_DEBUG;
	loc->volume = strdup(s->name);
	loc->path = strdup(dir_of(p));
	for (size_t i = 0; i < s->nhosts && i < GL_MAX_SERVERS; i++) {
		loc->servers[i].host = strdup(s->hosts[i].name);
		loc->servers[i].port = s->hosts[i].port ? s->hosts[i].port : GL_DEFAULT_PORT;
		if (!loc->servers[i].host)
			break;
		loc->nservers++;
	}
	if (!loc->volume || !loc->path || loc->nservers != (int)s->nhosts) {
		gl_loc_free(loc);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	return 0;
}

static int gp_start(struct pool *p, struct bd_err *err)
{
	struct gp *g;
	int r;

	if ((r = gp_check(p, err)) < 0)
		return r;
	if (gp_find(p))
		return 0;
	g = calloc(1, sizeof(*g));
	if (!g)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if ((r = loc_from_def(p, &g->loc, err)) < 0) {
		free(g);
		return r;
	}
	g->conn = gl_conn_get(&g->loc, err);
	if (!g->conn) {
		r = err->code;
		gl_loc_free(&g->loc);
		free(g);
		return r;
	}
	struct stat st;
	if (glfs_stat(gl_conn_fs(g->conn), g->loc.path, &st) < 0 || !S_ISDIR(st.st_mode)) {
		int e = errno ? errno : ENOTDIR;
		r = bd_err_set(err, -e, "cannot use directory '%s' of gluster volume '%s': %s",
			       g->loc.path, g->loc.volume,
			       S_ISDIR(st.st_mode) ? strerror(e) : "not a directory");
		gl_conn_put(g->conn);
		gl_loc_free(&g->loc);
		free(g);
		return r;
	}
	g->pool = strdup(p->def->name);
	g->next = gps;
	gps = g;
	return 0;
}

static int gp_stop(struct pool *p, struct bd_err *err)
{
	(void)err;
	for (struct gp **pp = &gps; *pp; pp = &(*pp)->next) {
		struct gp *g = *pp;
		if (strcmp(g->pool, p->def->name))
			continue;
		*pp = g->next;
		gl_conn_put(g->conn);
		gl_loc_free(&g->loc);
		free(g->pool);
		free(g);
		break;
	}
	return 0;
}

static struct gp *running(struct pool *p, struct bd_err *err)
{
	struct gp *g = gp_find(p);
	if (!g)
		bd_err_set(err, -EINVAL, "gluster pool '%s' is not connected", p->def->name);
	return g;
}

/* DIR/NAME inside the volume. */
static char *file_path(struct gp *g, const char *name)
{
	char *s;
	size_t l = strlen(g->loc.path);
	if (asprintf(&s, "%s%s%s", g->loc.path, l && g->loc.path[l - 1] == '/' ? "" : "/", name) <
	    0)
		return NULL;
	return s;
}

/* The volume's path and key: gluster://HOST:PORT/VOLUME/DIR/NAME */
static char *vol_uri(struct gp *g, const char *name)
{
	char *fp = file_path(g, name), *s = NULL;
	const struct gl_server *sv = &g->loc.servers[0];
	if (fp &&
	    asprintf(&s, "gluster://%s%s%s:%d/%s%s", strchr(sv->host, ':') ? "[" : "", sv->host,
		     strchr(sv->host, ':') ? "]" : "", sv->port, g->loc.volume, fp) < 0)
		s = NULL;
	free(fp);
	return s;
}

static long probe_read(void *opaque, uint64_t off, void *buf, size_t len)
{
	ssize_t n =
	    off > (uint64_t)INT64_MAX ? -1 : glfs_pread(opaque, buf, len, (off_t)off, 0, NULL);
	return n < 0 ? -(errno ? errno : EIO) : (long)n;
}

static void add_vol(struct pool *p, struct gp *g, const char *name, const struct stat *st)
{
	unsigned char h[BD_VOL_PROBE_HEADER];
	struct bd_vol_probe r;
	char *fp = file_path(g, name), *uri = vol_uri(g, name);

	bd_vol_probe(h, 0, (uint64_t)st->st_size, NULL, NULL, &r); /* raw, unless read below */
	if (fp && uri) {
		glfs_fd_t *fd = glfs_open(gl_conn_fs(g->conn), fp, O_RDONLY);
		if (fd) {
			ssize_t n = glfs_pread(fd, h, sizeof(h), 0, 0, NULL);
			if (n > 0)
				bd_vol_probe(h, (size_t)n, (uint64_t)st->st_size, probe_read, fd,
					     &r);
			glfs_close(fd);
		}
		struct vol *v = bd_pool_vol_add(p, name, uri, "file", r.format, r.capacity,
						(uint64_t)st->st_blocks * 512);
		if (v) {
			bd_vol_probe_set(v, &r);
			v->physical = (uint64_t)st->st_size;
			v->size = (uint64_t)st->st_size;
		}
	}
	free(fp);
	free(uri);
}

static int gp_refresh(struct pool *p, struct bd_err *err)
{
	struct gp *g = running(p, err);
	glfs_fd_t *d;
	struct statvfs sv;
	if (!g)
		return err ? err->code : -EINVAL;
	d = glfs_opendir(gl_conn_fs(g->conn), g->loc.path);
	if (!d) {
		int e = errno ? errno : EIO;
		return bd_err_set(err, -e, "cannot list '%s' of gluster volume '%s': %s",
				  g->loc.path, g->loc.volume, strerror(e));
	}
	bd_pool_vols_clear(p);
	for (;;) {
		struct stat st;
		struct dirent *de = glfs_readdirplus(d, &st);
		if (!de)
			break;
		if (de->d_name[0] == '.' || !S_ISREG(st.st_mode))
			continue;
		add_vol(p, g, de->d_name, &st);
	}
	glfs_closedir(d);
	p->vols_sorted = false;
	bd_pool_vols_sort(p);
	if (glfs_statvfs(gl_conn_fs(g->conn), g->loc.path, &sv) == 0) {
		p->def->capacity = (uint64_t)sv.f_blocks * sv.f_frsize;
		p->def->available = (uint64_t)sv.f_bavail * sv.f_frsize;
		p->def->allocation = ((uint64_t)sv.f_blocks - sv.f_bfree) * sv.f_frsize;
	}
	return 0;
}

/* A temporary gluster node on file path fp (for qcow2 create and resize). */
static int temp_node(struct gp *g, const char *name, char *node, size_t len, struct bd_err *err)
{
	static unsigned seq;
	char *uri = vol_uri(g, name);
	json_t *o;
	struct bd_node *n;
	if (!uri)
		return bd_err_set(err, -ENOMEM, "out of memory");
	snprintf(node, len, "gluster-pool-%u-%u", (unsigned)getpid(), ++seq);
	o = json_pack("{s:s,s:s,s:s}", "driver", "gluster", "node-name", node, "filename", uri);
	free(uri);
	n = bd_node_open(o, err);
	json_decref(o);
	return n ? 0 : err->code;
}

static void temp_node_del(const char *node)
{
	struct bd_err e = {0};
	bd_graph_del(node, &e);
}

static int gp_vol_create(struct pool *p, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
			 struct vol *src, struct bd_err *err)
{
	struct gp *g = running(p, err);
	const char *fmt = def->format ? def->format : "raw";
	glfs_fd_t *fd;
	char *fp;
	int r = 0;

	if (!g)
		return err->code;
	if (src)
		return bd_err_set(err, -ENOTSUP,
				  "cloning into a gluster pool is not supported yet (open both "
				  "volumes and copy through exports)");
	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return bd_err_set(err, -ENOTSUP,
				  "volume format '%s' is not supported yet (supported: raw, qcow2)",
				  fmt);
	if (!def->has_capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	if (!strcmp(fmt, "raw") && def->backing_path)
		return bd_err_set(err, -EINVAL, "a raw volume cannot have a backing store");
	if (!(fp = file_path(g, def->name)))
		return bd_err_set(err, -ENOMEM, "out of memory");
	mode_t mode = def->perms.mode >= 0 ? (mode_t)def->perms.mode : 0600;
	fd = glfs_creat(gl_conn_fs(g->conn), fp, O_RDWR | O_CREAT | O_EXCL, mode);
	if (!fd) {
		int e = errno ? errno : EIO;
		r = e == EEXIST
			? bd_err_set(err, -EEXIST, "storage volume '%s' already exists", def->name)
			: bd_err_set(err, -e, "cannot create '%s' in gluster volume '%s': %s", fp,
				     g->loc.volume, strerror(e));
		free(fp);
		return r;
	}
	if (!strcmp(fmt, "raw")) {
		uint64_t alloc = def->has_allocation ? def->allocation : 0;
		if (alloc > def->capacity)
			alloc = def->capacity;
		if (glfs_ftruncate(fd, (off_t)def->capacity, NULL, NULL) < 0)
			r = bd_err_set(err, -errno, "cannot size '%s': %s", fp, strerror(errno));
		else if (alloc && glfs_fallocate(fd, 0, 0, (size_t)alloc) < 0)
			r = bd_err_set(err, -errno, "cannot allocate '%s': %s", fp,
				       strerror(errno));
		else if (glfs_fsync(fd, NULL, NULL) < 0)
			r = bd_err_set(err, -errno, "cannot sync '%s': %s", fp, strerror(errno));
		glfs_close(fd);
	} else {
		const struct bd_driver *drv = bd_driver_find("qcow2");
		char node[64];
		glfs_close(fd);
		if (!drv || !drv->create)
			r = bd_err_set(err, -ENOTSUP,
				       "cannot create qcow2 volumes: this blockd has no qcow2 "
				       "driver with image creation");
		else if ((r = temp_node(g, def->name, node, sizeof(node), err)) == 0) {
			json_t *q = json_pack(
			    "{s:s,s:I,s:s}", "file", node, "size", (json_int_t)def->capacity,
			    "version", def->compat && !strcmp(def->compat, "0.10") ? "v2" : "v3");
			if (def->cluster_size)
				json_object_set_new(q, "cluster-size",
						    json_integer((json_int_t)def->cluster_size));
			if (def->lazy_refcounts)
				json_object_set_new(q, "lazy-refcounts", json_true());
			if (def->backing_path)
				json_object_set_new(q, "backing-file",
						    json_string(def->backing_path));
			if (def->backing_format)
				json_object_set_new(q, "backing-fmt",
						    json_string(def->backing_format));
			if (o && o->prealloc_metadata)
				json_object_set_new(q, "preallocation", json_string("metadata"));
			r = drv->create(bd_graph_find(node), q, err);
			json_decref(q);
			temp_node_del(node);
		}
	}
	if (r < 0)
		glfs_unlink(gl_conn_fs(g->conn), fp);
	free(fp);
	if (r == 0)
		gp_refresh(p, NULL);
	return r;
}

static int gp_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	struct gp *g = running(p, err);
	char *fp;
	int r = 0;
	if (!g)
		return err->code;
	if (!(fp = file_path(g, v->name)))
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (glfs_unlink(gl_conn_fs(g->conn), fp) < 0 && errno != ENOENT)
		r = bd_err_set(err, -errno, "cannot remove '%s' from gluster volume '%s': %s", fp,
			       g->loc.volume, strerror(errno));
	free(fp);
	return r;
}

static int gp_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			 struct bd_err *err)
{
	struct gp *g = running(p, err);
	char *fp;
	int r = 0;
	if (!g)
		return err->code;
	if (!strcmp(v->format, "qcow2")) {
		char node[64];
		if (cap < v->capacity)
			return bd_err_set(err, -ENOTSUP,
					  "shrinking a qcow2 volume is not supported");
		if (flags & BD_RESIZE_ALLOCATE)
			return bd_err_set(err, -ENOTSUP,
					  "allocate is not supported for qcow2 volumes");
		if ((r = bd_vol_open(p->def->name, v->name, "gluster-pool-resize", "qcow2", false, err)) < 0)
			return r;
		snprintf(node, sizeof(node), "gluster-pool-resize");
		r = bd_node_resize(bd_graph_find(node), cap, err);
		temp_node_del(node);
		return r;
	}
	if (!(fp = file_path(g, v->name)))
		return bd_err_set(err, -ENOMEM, "out of memory");
	glfs_fd_t *fd = glfs_open(gl_conn_fs(g->conn), fp, O_RDWR);
	if (!fd) {
		r = bd_err_set(err, -errno, "cannot open '%s': %s", fp, strerror(errno));
	} else {
		if (glfs_ftruncate(fd, (off_t)cap, NULL, NULL) < 0)
			r = bd_err_set(err, -errno, "cannot resize '%s': %s", fp, strerror(errno));
		else if ((flags & BD_RESIZE_ALLOCATE) && cap > v->capacity &&
			 glfs_fallocate(fd, 0, (off_t)v->capacity, (size_t)(cap - v->capacity)) < 0)
			r = bd_err_set(err, -errno, "cannot allocate '%s': %s", fp,
				       strerror(errno));
		glfs_fsync(fd, NULL, NULL);
		glfs_close(fd);
	}
	free(fp);
	return r;
}

static int gp_vol_wipe(struct pool *p, struct vol *v, const char *alg, struct bd_err *err)
{
	struct gp *g = running(p, err);
	struct stat st;
	glfs_fd_t *fd;
	char *fp;
	int r = 0;
	if (!g)
		return err->code;
	if (strcmp(v->format, "raw"))
		return bd_err_set(
		    err, -ENOTSUP,
		    "wiping %s volumes of a gluster pool is not supported (delete and "
		    "create it again)",
		    v->format);
	if (!(fp = file_path(g, v->name)))
		return bd_err_set(err, -ENOMEM, "out of memory");
	fd = glfs_open(gl_conn_fs(g->conn), fp, O_RDWR);
	if (!fd || glfs_fstat(fd, &st) < 0) {
		r = bd_err_set(err, -errno, "cannot open '%s': %s", fp, strerror(errno));
		goto out;
	}
	uint64_t size = (uint64_t)st.st_size;
	if (!strcmp(alg, "trim")) {
		if (size && glfs_discard(fd, 0, (size_t)size) < 0)
			r = bd_err_set(err, -errno, "cannot trim '%s': %s", fp, strerror(errno));
	} else {
		bool random = !strcmp(alg, "random");
		size_t chunk = 1u << 20;
		char *buf = calloc(1, chunk);
		if (!random && size && glfs_zerofill(fd, 0, (off_t)size) == 0)
			goto done;
		if (!buf) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto done;
		}
		for (uint64_t off = 0; r == 0 && off < size; off += chunk) {
			size_t n = size - off < chunk ? (size_t)(size - off) : chunk;
			if (random)
				for (size_t got = 0; got < n;) {
					ssize_t x = getrandom(buf + got, n - got, 0);
					if (x > 0)
						got += (size_t)x;
				}
			if (glfs_pwrite(fd, buf, n, (off_t)off, 0, NULL, NULL) != (ssize_t)n)
				r = bd_err_set(err, -(errno ? errno : EIO), "cannot write '%s': %s",
					       fp, strerror(errno ? errno : EIO));
		}
	done:
		free(buf);
	}
	if (r == 0 && glfs_fsync(fd, NULL, NULL) < 0)
		r = bd_err_set(err, -errno, "cannot sync '%s': %s", fp, strerror(errno));
out:
	if (fd)
		glfs_close(fd);
	free(fp);
	return r;
}

/* The gluster node for v: its URI is v->path (so the in-use checks find it). */
static json_t *gp_vol_file_opts(struct pool *p, struct vol *v, struct bd_err *err)
{
	(void)p;
	(void)err;
	return json_pack("{s:s,s:s}", "driver", "gluster", "filename", v->path);
}

const struct pool_backend bd_pool_backend_gluster = {
    .type = "gluster",
    .buildable = false,
    .file_vols = false,
    .check = gp_check,
    .start = gp_start,
    .stop = gp_stop,
    .refresh = gp_refresh,
    .vol_create = gp_vol_create,
    .vol_delete = gp_vol_delete,
    .vol_resize = gp_vol_resize,
    .vol_file_opts = gp_vol_file_opts,
    .vol_wipe = gp_vol_wipe,
};
