/*
 * vol.c - the volume cache of every pool, the refresh scan of the file-based pools (dir, fs;
 * formats from vol-probe.c), lookups, in-use checks, the volume queries and opening a volume
 * as a graph node.  Create and clone are in vol-create.c; delete, resize, wipe, upload and
 * download in vol-ops.c.  [control thread]
 *
 * Refresh is incremental: a file whose inode, size and mtime did not change keeps its probed
 * format and sizes, so a refresh of a large pool costs one readdir and one fstatat per file.
 */
#include "pools/pools-int.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>


/* ---- the cache ---- */

void bd_vol_free(struct vol *v)
{
	if (!v)
		return;
	free(v->name);
	free(v->path);
	free(v->format);
	free(v->type);
	free(v->backing_path);
	free(v->backing_format);
	free(v->compat);
	free(v->dev);
	free(v);
}

void bd_pool_vols_clear(struct pool *p)
{
	for (size_t i = 0; i < p->nvols; i++)
		bd_vol_free(p->vols[i]);
	p->nvols = 0;
	p->vols_sorted = true;
}

static int cmp_vol(const void *a, const void *b)
{
	return strcmp((*(struct vol *const *)a)->name, (*(struct vol *const *)b)->name);
}

void bd_pool_vols_sort(struct pool *p)
{
	if (!p->vols_sorted) {
		if (p->nvols > 1)
			qsort(p->vols, p->nvols, sizeof(*p->vols), cmp_vol);
		p->vols_sorted = true;
	}
}

static size_t vol_index(struct pool *p, const char *name, bool *found)
{
	size_t lo = 0, hi = p->nvols;
	bd_pool_vols_sort(p);
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(p->vols[mid]->name, name);
		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	*found = false;
	return lo;
}

struct vol *bd_pool_vol_find(struct pool *p, const char *name)
{
	bool found;
	size_t i = vol_index(p, name, &found);
	return found ? p->vols[i] : NULL;
}

int bd_vol_append(struct pool *p, struct vol *v)
{
	if (p->nvols == p->capvols) {
		size_t nc = p->capvols ? p->capvols * 2 : 64;
		struct vol **nv = realloc(p->vols, nc * sizeof(*nv));
		if (!nv)
			return -ENOMEM;
		p->vols = nv;
		p->capvols = nc;
	}
	p->vols[p->nvols++] = v;
	p->vols_sorted = false;
	return 0;
}


struct vol *bd_pool_vol_add(struct pool *p, const char *name, const char *path, const char *type,
			    const char *format, uint64_t capacity, uint64_t allocation)
{
	struct vol *v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	v->name = strdup(name);
	v->path = strdup(path);
	v->type = strdup(type);
	v->format = strdup(format);
	v->capacity = v->physical = capacity;
	v->allocation = allocation;
	if (!v->name || !v->path || !v->type || !v->format || bd_vol_append(p, v) < 0) {
		bd_vol_free(v);
		return NULL;
	}
	return v;
}

/* The volume's bytes: an open fd, the offset of byte 0 in it and the byte count. */
int bd_vol_fd(struct vol *v, int flags, uint64_t *base, uint64_t *size, struct bd_err *err)
{
	const char *f = v->dev ? v->dev : v->path;
	int fd = open(f, flags | O_CLOEXEC);
	if (fd < 0)
		return bd_err_set(err, -errno, "cannot open '%s': %s%s", f, strerror(errno),
				  errno == ENOENT && !strncmp(f, "/dev/", 5)
				      ? " (a logical volume needs device-mapper, or a linear "
					"single-segment layout)"
				      : "");
	*base = v->dev ? v->dev_offset : 0;
	*size = v->dev ? v->capacity : v->physical;
	return fd;
}

/* After a change: reread the volume (file pools) or the whole pool (v may be freed). */
void bd_vol_after_change(struct pool *p, struct vol *v)
{
	if (p->be->file_vols)
		bd_vol_stat(v, -1, NULL, true);
	else if (p->be->refresh)
		p->be->refresh(p, NULL);
}

/* ---- probing ---- */

static long probe_read(void *opaque, uint64_t off, void *buf, size_t len)
{
	ssize_t n = off > (uint64_t)INT64_MAX ? -1 : pread(*(int *)opaque, buf, len, (off_t)off);
	return n < 0 ? -errno : (long)n;
}

/* Fill v's format-dependent fields from the open file fd (size bytes).  Formats are known by
 * their signatures, as libvirt's storage driver knows them (vol-probe.c); blockd opens a volume
 * with the format found here (never guessing for a node opened by hand). */
static int probe(struct vol *v, int fd, uint64_t size)
{
	unsigned char h[BD_VOL_PROBE_HEADER];
	struct bd_vol_probe r;
	ssize_t n = pread(fd, h, sizeof(h), 0);

	bd_vol_probe(h, n > 0 ? (size_t)n : 0, size, probe_read, &fd, &r);
	return bd_vol_probe_set(v, &r);
}

struct vol *bd_vol_new(const char *dir, const char *name)
{
	struct vol *v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	v->name = strdup(name);
	if (asprintf(&v->path, "%s/%s", dir, name) < 0)
		v->path = NULL;
	if (!v->name || !v->path) {
		bd_vol_free(v);
		return NULL;
	}
	return v;
}

/* (Re)read v from its file; dirfd/name or the path.  0, or -errno. */
int bd_vol_stat(struct vol *v, int dirfd, const char *name, bool force)
{
	struct stat st;
	int r = dirfd >= 0 ? fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) : lstat(v->path, &st);
	if (r < 0)
		return -errno;
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
		return -EINVAL;
	int64_t mt = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
	bool blk = S_ISBLK(st.st_mode);
	if (!force && v->format && v->ino == st.st_ino && v->mtime_ns == mt &&
	    v->size == (uint64_t)st.st_size)
		return 0;
	uint64_t size = (uint64_t)st.st_size;
	int fd = dirfd >= 0 ? openat(dirfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
			    : open(v->path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (blk) {
		off_t e = lseek(fd, 0, SEEK_END);
		size = e > 0 ? (uint64_t)e : 0;
	}
	r = probe(v, fd, size);
	close(fd);
	if (r < 0)
		return r;
	free(v->type);
	v->type = strdup(blk ? "block" : "file");
	v->ino = st.st_ino;
	v->mtime_ns = mt;
	v->size = (uint64_t)st.st_size;
	v->physical = size;
	v->allocation = blk ? size : (uint64_t)st.st_blocks * 512;
	return 0;
}

int bd_pool_dir_refresh(struct pool *p, struct bd_err *err)
{
	const char *dir = p->def->target_path;
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d;
	struct dirent *de;

	if (dfd < 0)
		return bd_err_set(err, -errno, "cannot open directory '%s': %s", dir,
				  strerror(errno));
	d = fdopendir(dfd);
	if (!d) {
		close(dfd);
		return bd_err_set(err, -errno, "cannot read '%s': %s", dir, strerror(errno));
	}
	bd_pool_vols_sort(p);
	for (size_t i = 0; i < p->nvols; i++)
		p->vols[i]->seen = false;
	size_t old = p->nvols;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue; /* ".", "..", and hidden files (blockd's temporary files) */
		if (de->d_type != DT_REG && de->d_type != DT_BLK && de->d_type != DT_UNKNOWN)
			continue;
		bool found = false;
		size_t lo = 0, hi = old;
		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			int c = strcmp(p->vols[mid]->name, de->d_name);
			if (c == 0) {
				found = true;
				lo = mid;
				break;
			}
			if (c < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
		if (found) {
			struct vol *v = p->vols[lo];
			if (bd_vol_stat(v, dfd, de->d_name, false) == 0)
				v->seen = true;
			continue;
		}
		struct vol *v = bd_vol_new(dir, de->d_name);
		if (!v)
			break;
		if (bd_vol_stat(v, dfd, de->d_name, true) < 0 || bd_vol_append(p, v) < 0) {
			bd_vol_free(v);
			continue;
		}
		v->seen = true;
	}
	closedir(d);
	/* drop what disappeared */
	size_t k = 0;
	for (size_t i = 0; i < p->nvols; i++) {
		if (p->vols[i]->seen)
			p->vols[k++] = p->vols[i];
		else
			bd_vol_free(p->vols[i]);
	}
	if (k != p->nvols) {
		p->nvols = k;
		p->vols_sorted = false;
	}
	p->vols_sorted = false;
	bd_pool_vols_sort(p);
	return 0;
}

/* ---- in use? ---- */

static bool opts_use(json_t *o, const char *want, size_t wlen, bool prefix)
{
	const char *k;
	json_t *v;
	if (!json_is_object(o))
		return false;
	json_object_foreach(o, k, v)
	{
		if (json_is_object(v) && opts_use(v, want, wlen, prefix))
			return true;
		if (strcmp(k, "filename") || !json_is_string(v))
			continue;
		char *rp = realpath(json_string_value(v), NULL);
		const char *f = rp ? rp : json_string_value(v);
		bool hit = prefix ? !strncmp(f, want, wlen) && (f[wlen] == '/' || !f[wlen])
				  : !strcmp(f, want);
		free(rp);
		if (hit)
			return true;
	}
	return false;
}

bool bd_pool_path_in_use(const char *path, bool prefix, const char **node)
{
	char *rp = realpath(path, NULL);
	const char *want = rp ? rp : path;
	size_t wlen = strlen(want);
	bool hit = false;
	/* prefer a node the user named over an automatic child name ("#block000") */
	for (struct bd_node *n = bd_graph_next(NULL); n; n = bd_graph_next(n)) {
		if (opts_use(bd_node_options(n), want, wlen, prefix)) {
			if (!hit || (*node)[0] == '#')
				*node = bd_node_name(n);
			hit = true;
		}
	}
	free(rp);
	return hit;
}

int bd_vol_check_unused(struct pool *p, struct vol *v, struct bd_err *err)
{
	const char *node;
	if (bd_pool_path_in_use(v->path, false, &node) ||
	    (v->dev && bd_pool_path_in_use(v->dev, false, &node)))
		return bd_err_set(err, -EBUSY,
				  "volume '%s' of pool '%s' is in use by node '%s' (delete the "
				  "node and its exports first)",
				  v->name, p->def->name, node);
	return 0;
}

/* ---- lookups ---- */

struct vol *bd_vol_lookup(const char *pool, const char *name, struct pool **pp,
			    struct bd_err *err)
{
	if (pool) {
		struct pool *p = bd_pool_lookup_running(pool, err);
		struct vol *v;
		if (!p)
			return NULL;
		v = bd_pool_vol_find(p, name);
		if (!v) {
			bd_err_set(
			    err, -ENOENT,
			    "Storage volume not found: no storage vol with matching name '%s' "
			    "in pool '%s'",
			    name, p->def->name);
			return NULL;
		}
		*pp = p;
		return v;
	}
	for (struct pool *p = bd_pool_first(); p; p = p->next) {
		if (p->state != POOL_RUNNING)
			continue;
		for (size_t i = 0; i < p->nvols; i++)
			if (!strcmp(p->vols[i]->path, name)) {
				*pp = p;
				return p->vols[i];
			}
	}
	bd_err_set(err, -ENOENT,
		   "Storage volume not found: no storage vol with matching path or key '%s'", name);
	return NULL;
}

/* find_vol for an operation that changes or reads the volume's bytes */
struct vol *bd_vol_find_idle(const char *pool, const char *name, struct pool **pp,
			     struct bd_err *err)
{
	struct vol *v = bd_vol_lookup(pool, name, pp, err);
	if (v && bd_vol_task_busy((*pp)->def->name, v->name)) {
		bd_err_set(err, -EBUSY, "volume '%s' of pool '%s' has an operation in progress",
			   v->name, (*pp)->def->name);
		return NULL;
	}
	return v;
}

/* ---- queries ---- */

static json_t *vol_json(struct vol *v)
{
	json_t *o =
	    json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "name", v->name, "path", v->path, "key",
		      v->path, "type", v->type ? v->type : "file", "format",
		      v->format ? v->format : "raw", "capacity", (json_int_t)v->capacity,
		      "allocation", (json_int_t)v->allocation, "physical", (json_int_t)v->physical);
	if (v->backing_path)
		json_object_set_new(o, "backing-store", json_string(v->backing_path));
	return o;
}

json_t *bd_vol_list(const char *pool, struct bd_err *err)
{
	struct pool *p = bd_pool_lookup_running(pool, err);
	if (!p)
		return NULL;
	bd_pool_vols_sort(p);
	json_t *list = json_array();
	for (size_t i = 0; i < p->nvols; i++)
		json_array_append_new(list, vol_json(p->vols[i]));
	return list;
}

json_t *bd_vol_info(const char *pool, const char *name, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_lookup(pool, name, &p, err);
	if (!v)
		return NULL;
	json_t *o = vol_json(v);
	json_object_set_new(o, "pool", json_string(p->def->name));
	return o;
}

char *bd_vol_dumpxml(const char *pool, const char *name, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_lookup(pool, name, &p, err);
	if (!v)
		return NULL;
	struct stat st;
	struct bd_vol_def d = {.type = v->type,
			       .name = v->name,
			       .key = v->path,
			       .capacity = v->capacity,
			       .allocation = v->allocation,
			       .physical = v->physical,
			       .has_capacity = true,
			       .has_allocation = true,
			       .has_physical = true,
			       .path = v->path,
			       .format = v->format,
			       .perms = {-1, -1, -1, NULL},
			       .compat = v->compat,
			       .lazy_refcounts = v->lazy_refcounts,
			       .extended_l2 = v->extended_l2,
			       .cluster_size = v->cluster_size,
			       .backing_path = v->backing_path,
			       .backing_format = v->backing_format};
	if (stat(v->path, &st) == 0) {
		d.perms.mode = (long)(st.st_mode & 07777);
		d.perms.owner = (long)st.st_uid;
		d.perms.group = (long)st.st_gid;
	}
	char *x = bd_vol_def_format(&d);
	if (!x)
		bd_err_set(err, -ENOMEM, "out of memory");
	return x;
}

/* Is the backing file of v (relative to v's directory) inside a running pool's directory? */
static bool backing_in_a_pool(struct vol *v)
{
	char *dir = strdup(v->path), *full = NULL, *real = NULL;
	bool ok = false;
	if (!dir)
		return false;
	char *slash = strrchr(dir, '/');
	if (slash)
		*slash = 0;
	if (v->backing_path[0] == '/' ? !!(full = strdup(v->backing_path))
				      : asprintf(&full, "%s/%s", dir, v->backing_path) >= 0)
		real = realpath(full, NULL);
	for (struct pool *p = bd_pool_first(); real && p && !ok; p = p->next) {
		if (p->state != POOL_RUNNING || !p->be->file_vols || !p->def->target_path)
			continue;
		char *t = realpath(p->def->target_path, NULL);
		size_t tl = t ? strlen(t) : 0;
		ok = t && !strncmp(real, t, tl) && real[tl] == '/';
		free(t);
	}
	free(real);
	free(full);
	free(dir);
	return ok;
}

/* The format to open v with.  A probed format is what a guest may have written into a raw
 * volume (QEMU's safety rule: never promote a raw image by its signature), so without an
 * explicit format the probe is trusted only where a forged header cannot reach other files:
 * vdi and vpc, and qcow2/qed whose backing file lies inside a pool.  vmdk (its descriptor
 * names extent files anywhere) and the rest need format= from the caller. */
static const char *open_format(struct vol *v, const char *format, struct bd_err *err)
{
	const char *probed = !strcmp(v->format, "none") ? "raw" : v->format;
	if (format)
		return format;
	if (!strcmp(probed, "vmdk")) {
		bd_err_set(err, -EPERM,
			   "volume '%s' looks like a vmdk image, whose descriptor can name any file "
			   "on this host: pass format=vmdk (blockctl --format vmdk) to open it as "
			   "such, or format=raw",
			   v->name);
		return NULL;
	}
	if ((!strcmp(probed, "qcow2") || !strcmp(probed, "qed")) && v->backing_odd) {
		bd_err_set(err, -EPERM,
			   "volume '%s' looks like a %s image whose backing file name cannot be "
			   "read or is not printable: pass format=%s to open it as such, or "
			   "format=raw",
			   v->name, probed, probed);
		return NULL;
	}
	if ((!strcmp(probed, "qcow2") || !strcmp(probed, "qed")) && v->backing_path &&
	    !backing_in_a_pool(v)) {
		bd_err_set(err, -EPERM,
			   "volume '%s' looks like a %s image backed by '%s', which is not in a "
			   "running pool: pass format=%s to open it as such (and trust that "
			   "backing file), or format=raw",
			   v->name, probed, v->backing_path, probed);
		return NULL;
	}
	return probed;
}

int bd_vol_open(const char *pool, const char *name, const char *node_name, const char *format,
		bool read_only, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
	if (!v)
		return err->code;
	const char *fmt = open_format(v, format, err);
	if (!fmt)
		return err->code;
	static const char *const ro_formats[] = {"vmdk", "vdi", "vpc", "qed", NULL};
	bool ro_format = false;
	for (const char *const *f = ro_formats; *f; f++)
		ro_format |= !strcmp(fmt, *f);
	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2") && !ro_format)
		return bd_err_set(err, -ENOTSUP,
				  "volume '%s' has format '%s', which blockd cannot "
				  "open",
				  v->name, v->format);
	if (!bd_driver_find(fmt))
		return bd_err_set(err, -ENOTSUP, "this blockd has no %s driver", fmt);
	if (ro_format && !read_only)
		return bd_err_set(err, -EROFS,
				  "volume '%s' is a %s image, which blockd reads only: open it "
				  "read-only",
				  v->name, fmt);
	json_t *o;
	if (p->be->vol_file_opts) {
		json_t *file = p->be->vol_file_opts(p, v, err);
		if (!file)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		o = json_pack("{s:s,s:s,s:b,s:o}", "driver", fmt, "node-name", node_name,
			      "read-only", read_only, "file", file);
	} else if (v->dev) {
		/* an LV without device-mapper: a raw window of its physical volume */
		struct stat st;
		bool blk = stat(v->dev, &st) == 0 && S_ISBLK(st.st_mode);
		o = json_pack("{s:s,s:s,s:b,s:I,s:I,s:{s:s,s:s}}", "driver", "raw", "node-name",
			      node_name, "read-only", read_only, "offset",
			      (json_int_t)v->dev_offset, "size", (json_int_t)v->capacity, "file",
			      "driver", blk ? "host_device" : "file", "filename", v->dev);
	} else {
		o = json_pack("{s:s,s:s,s:b,s:{s:s,s:s}}", "driver", fmt, "node-name", node_name,
			      "read-only", read_only, "file", "driver",
			      !strcmp(v->type, "block") ? "host_device" : "file", "filename",
			      v->path);
	}
	struct bd_node *n = bd_node_open(o, err);
	json_decref(o);
	if (!n)
		return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	return 0;
}
