/*
 * vol.c - volumes of the file-based pools (dir, fs): the refresh scan with its cache, volume
 * create / clone / delete / resize / wipe / upload / download, the volume queries and opening a
 * volume as a graph node.  [control thread]
 *
 * Refresh is incremental: a file whose inode, size and mtime did not change keeps its probed
 * format and sizes, so a refresh of a large pool costs one readdir and one fstatat per file.
 */
#include "pools/pools-int.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define COPY_CHUNK (1u << 20)

/* Set at shutdown: worker-thread copies stop at the next chunk (-ECANCELED). */
static atomic_bool tasks_cancel;

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

static int vol_append(struct pool *p, struct vol *v)
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

static int vol_stat(struct vol *v, int dirfd, const char *name, bool force);

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
	if (!v->name || !v->path || !v->type || !v->format || vol_append(p, v) < 0) {
		bd_vol_free(v);
		return NULL;
	}
	return v;
}

/* The volume's bytes: an open fd, the offset of byte 0 in it and the byte count. */
static int vol_fd(struct vol *v, int flags, uint64_t *base, uint64_t *size, struct bd_err *err)
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
static void after_change(struct pool *p, struct vol *v)
{
	if (p->be->file_vols)
		vol_stat(v, -1, NULL, true);
	else if (p->be->refresh)
		p->be->refresh(p, NULL);
}

static void vol_remove(struct pool *p, struct vol *v)
{
	for (size_t i = 0; i < p->nvols; i++)
		if (p->vols[i] == v) {
			memmove(&p->vols[i], &p->vols[i + 1],
				(p->nvols - i - 1) * sizeof(*p->vols));
			p->nvols--;
			break;
		}
	bd_vol_free(v);
}

/* ---- probing ---- */

static uint32_t be32(const unsigned char *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t be64(const unsigned char *b)
{
	return (uint64_t)be32(b) << 32 | be32(b + 4);
}

/* Fill v's format-dependent fields from the open file fd (size bytes). */
static void probe(struct vol *v, int fd, uint64_t size)
{
	unsigned char h[4096];
	ssize_t n = pread(fd, h, sizeof(h), 0);

	free(v->format);
	free(v->backing_path);
	free(v->backing_format);
	free(v->compat);
	v->backing_path = v->backing_format = v->compat = NULL;
	v->cluster_size = 0;
	v->lazy_refcounts = v->extended_l2 = false;
	v->capacity = size;
	if (n >= 72 && !memcmp(h, "QFI\xfb", 4)) {
		uint32_t version = be32(h + 4);
		uint64_t boff = be64(h + 8);
		uint32_t blen = be32(h + 16);
		uint32_t cbits = be32(h + 20);
		v->format = strdup("qcow2");
		v->capacity = be64(h + 24);
		if (cbits >= 9 && cbits <= 21)
			v->cluster_size = 1ull << cbits;
		v->compat = strdup(version >= 3 ? "1.1" : "0.10");
		uint32_t hlen = 72;
		if (version >= 3 && n >= 104) {
			uint64_t incompat = be64(h + 72), compat = be64(h + 80);
			v->lazy_refcounts = compat & 1;
			v->extended_l2 = incompat & (1u << 4);
			hlen = be32(h + 100);
		}
		if (boff && blen && blen < 1024) {
			char *bp = calloc(1, blen + 1);
			if (bp && pread(fd, bp, blen, (off_t)boff) == (ssize_t)blen)
				v->backing_path = bp;
			else
				free(bp);
		}
		/* header extensions: the backing file format */
		for (uint32_t off = hlen; off + 8 <= (uint32_t)n && off < 4096;) {
			uint32_t type = be32(h + off), len = be32(h + off + 4);
			if (type == 0)
				break;
			if (type == 0xE2792ACA && off + 8 + len <= (uint32_t)n && len < 64)
				v->backing_format = strndup((const char *)h + off + 8, len);
			off += 8 + ((len + 7) & ~7u);
		}
	} else {
		v->format = strdup("raw");
	}
}

static struct vol *vol_new(const char *dir, const char *name)
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
static int vol_stat(struct vol *v, int dirfd, const char *name, bool force)
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
	probe(v, fd, size);
	close(fd);
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
			if (vol_stat(v, dfd, de->d_name, false) == 0)
				v->seen = true;
			continue;
		}
		struct vol *v = vol_new(dir, de->d_name);
		if (!v)
			break;
		if (vol_stat(v, dfd, de->d_name, true) < 0 || vol_append(p, v) < 0) {
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

static int check_vol_unused(struct pool *p, struct vol *v, struct bd_err *err)
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

static struct vol *find_vol(const char *pool, const char *name, struct pool **pp,
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

static struct vol *find_vol_idle(const char *pool, const char *name, struct pool **pp,
				 struct bd_err *err);
static int clone_start(struct pool *p, const char *name, const char *path, int in, int out,
		       uint64_t len, uint64_t *job_id, struct bd_err *err);

/* ---- file copying ---- */

/* Copy len bytes (UINT64_MAX: to the end of in) from in at ioff to out at ooff, leaving holes
 * where in has holes (sparse) or zero blocks (zero_holes).  *copied gets the byte count. */
static int copy_range(int in, uint64_t ioff, int out, uint64_t ooff, uint64_t len, bool zero_holes,
		      uint64_t *copied, struct bd_err *err)
{
	char *buf = malloc(COPY_CHUNK);
	uint64_t done = 0;
	int r = 0;
	if (!buf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	while (done < len) {
		size_t want = len - done < COPY_CHUNK ? (size_t)(len - done) : COPY_CHUNK;
		if (atomic_load(&tasks_cancel)) {
			r = bd_err_set(err, -ECANCELED, "cancelled: blockd is shutting down");
			break;
		}
		/* skip holes of the source quickly */
		off_t data = lseek(in, (off_t)(ioff + done), SEEK_DATA);
		if (data < 0 && errno == ENXIO)
			break; /* only a hole up to the end */
		if (data > (off_t)(ioff + done)) {
			uint64_t skip = (uint64_t)data - (ioff + done);
			done += skip < len - done ? skip : len - done;
			continue;
		}
		ssize_t n = pread(in, buf, want, (off_t)(ioff + done));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			r = bd_err_set(err, -errno, "read failed: %s", strerror(errno));
			break;
		}
		if (n == 0)
			break;
		if (!(zero_holes && bd_buf_is_zero(buf, (size_t)n))) {
			size_t off = 0;
			while (off < (size_t)n) {
				ssize_t w = pwrite(out, buf + off, (size_t)n - off,
						   (off_t)(ooff + done + off));
				if (w < 0 && errno == EINTR)
					continue;
				if (w < 0) {
					r = bd_err_set(err, -errno, "write failed: %s",
						       strerror(errno));
					goto out;
				}
				off += (size_t)w;
			}
		}
		done += (uint64_t)n;
	}
out:
	free(buf);
	if (copied)
		*copied = done;
	return r;
}

/* ---- create ---- */

static int create_qcow2(const char *path, struct bd_vol_def *def, bool prealloc, struct bd_err *err)
{
	const struct bd_driver *drv = bd_driver_find("qcow2");
	static unsigned seq;
	char tmp[64];
	struct bd_node *fnode;
	int r;

	if (!drv || !drv->create)
		return bd_err_set(err, -ENOTSUP,
				  "cannot create qcow2 volumes: this blockd has no qcow2 driver "
				  "with image creation");
	snprintf(tmp, sizeof(tmp), "pool-create-%u-%u", (unsigned)getpid(), ++seq);
	json_t *fo =
	    json_pack("{s:s,s:s,s:s}", "driver", "file", "node-name", tmp, "filename", path);
	fnode = bd_node_open(fo, err);
	json_decref(fo);
	if (!fnode)
		return err->code;
	json_t *o = json_pack("{s:s,s:I,s:s}", "file", tmp, "size", (json_int_t)def->capacity,
			      "version", def->compat && !strcmp(def->compat, "0.10") ? "v2" : "v3");
	if (def->cluster_size)
		json_object_set_new(o, "cluster-size", json_integer((json_int_t)def->cluster_size));
	if (def->lazy_refcounts)
		json_object_set_new(o, "lazy-refcounts", json_true());
	if (def->extended_l2)
		json_object_set_new(o, "extended-l2", json_true());
	if (def->backing_path)
		json_object_set_new(o, "backing-file", json_string(def->backing_path));
	if (def->backing_format)
		json_object_set_new(o, "backing-fmt", json_string(def->backing_format));
	if (prealloc)
		json_object_set_new(o, "preallocation", json_string("metadata"));
	r = drv->create(fnode, o, err);
	json_decref(o);
	struct bd_err e2 = {0};
	bd_graph_del(tmp, &e2);
	return r;
}

int bd_pool_dir_vol_create(struct pool *p, struct bd_vol_def *def,
			   const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err)
{
	char *path = NULL;
	const char *fmt = def->format ? def->format : (src ? src->format : "raw");
	mode_t mode = def->perms.mode >= 0 ? (mode_t)def->perms.mode : 0600;
	int fd = -1, r;

	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return bd_err_set(err, -ENOTSUP,
				  "volume format '%s' is not supported yet (supported: raw, qcow2)",
				  fmt);
	if (src && strcmp(fmt, src->format))
		return bd_err_set(err, -ENOTSUP,
				  "converting volume '%s' from %s to %s is not supported yet",
				  src->name, src->format, fmt);
	if (!src && !def->has_capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	if (!strcmp(fmt, "raw") && def->backing_path)
		return bd_err_set(err, -EINVAL, "a raw volume cannot have a backing store");
	if (asprintf(&path, "%s/%s", p->def->target_path, def->name) < 0)
		return bd_err_set(err, -ENOMEM, "out of memory");
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
	if (fd < 0) {
		r = errno == EEXIST
			? bd_err_set(err, -EEXIST, "storage volume '%s' already exists", def->name)
			: bd_err_set(err, -errno, "cannot create '%s': %s", path, strerror(errno));
		free(path);
		return r;
	}
	if (def->perms.mode >= 0)
		fchmod(fd, mode);
	if ((def->perms.owner >= 0 || def->perms.group >= 0) &&
	    fchown(fd, (uid_t)def->perms.owner, (gid_t)def->perms.group) < 0) {
		r = bd_err_set(err, -errno, "cannot set owner of '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (src) {
		int in = open(src->path, O_RDONLY | O_CLOEXEC);
		if (in < 0) {
			r = bd_err_set(err, -errno, "cannot open '%s': %s", src->path,
				       strerror(errno));
			goto fail;
		}
		uint64_t size = src->physical;
		if (!strcmp(fmt, "raw") && def->has_capacity && def->capacity > size)
			size = def->capacity;
		if (ftruncate(fd, (off_t)size) < 0) {
			r = bd_err_set(err, -errno, "cannot size '%s': %s", path, strerror(errno));
			close(in);
			goto fail;
		}
		if (o && o->job_id) {
			/* the copy on a worker thread; the task owns in and fd from here */
			r = clone_start(p, def->name, path, in, fd, src->physical, o->job_id, err);
			fd = -1;
			if (r < 0)
				goto fail;
			free(path);
			return 0;
		}
		r = copy_range(in, 0, fd, 0, src->physical, false, NULL, err);
		close(in);
		if (r < 0)
			goto fail;
	} else if (!strcmp(fmt, "raw")) {
		if (ftruncate(fd, (off_t)def->capacity) < 0) {
			r = bd_err_set(err, -errno, "cannot size '%s': %s", path, strerror(errno));
			goto fail;
		}
		uint64_t alloc = def->has_allocation ? def->allocation : 0;
		if (alloc > def->capacity)
			alloc = def->capacity;
		if (alloc && (r = posix_fallocate(fd, 0, (off_t)alloc)) != 0) {
			r = bd_err_set(err, -r, "cannot allocate '%s': %s", path, strerror(r));
			goto fail;
		}
	} else {
		close(fd);
		fd = -1;
		if ((r = create_qcow2(path, def, o && o->prealloc_metadata, err)) < 0)
			goto fail;
	}
	if (fd >= 0 && fsync(fd) < 0) {
		r = bd_err_set(err, -errno, "cannot sync '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (fd >= 0)
		close(fd);
	struct vol *v = vol_new(p->def->target_path, def->name);
	if (v && vol_stat(v, -1, NULL, true) == 0 && vol_append(p, v) == 0)
		v = NULL;
	bd_vol_free(v);
	free(path);
	return 0;
fail:
	if (fd >= 0)
		close(fd);
	unlink(path);
	free(path);
	return r;
}

int bd_pool_dir_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	if (unlink(v->path) < 0 && errno != ENOENT)
		return bd_err_set(err, -errno, "cannot remove '%s': %s", v->path, strerror(errno));
	return 0;
}

int bd_pool_dir_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			   struct bd_err *err)
{
	int r;
	if (!strcmp(v->format, "raw")) {
		int fd = open(v->path, O_WRONLY | O_CLOEXEC);
		if (fd < 0)
			return bd_err_set(err, -errno, "cannot open '%s': %s", v->path,
					  strerror(errno));
		if (ftruncate(fd, (off_t)cap) < 0) {
			r = bd_err_set(err, -errno, "cannot resize '%s': %s", v->path,
				       strerror(errno));
			close(fd);
			return r;
		}
		if ((flags & BD_RESIZE_ALLOCATE) && cap > v->capacity &&
		    (r = posix_fallocate(fd, (off_t)v->capacity, (off_t)(cap - v->capacity)))) {
			close(fd);
			return bd_err_set(err, -r, "cannot allocate '%s': %s", v->path,
					  strerror(r));
		}
		fsync(fd);
		close(fd);
		return 0;
	}
	if (!strcmp(v->format, "qcow2")) {
		if (cap < v->capacity)
			return bd_err_set(err, -ENOTSUP,
					  "shrinking a qcow2 volume is not supported");
		if (flags & BD_RESIZE_ALLOCATE)
			return bd_err_set(err, -ENOTSUP,
					  "allocate is not supported for qcow2 volumes");
		static unsigned seq;
		char tmp[64];
		snprintf(tmp, sizeof(tmp), "pool-resize-%u", ++seq);
		if ((r = bd_vol_open(p->def->name, v->name, tmp, false, err)) < 0)
			return r;
		r = bd_node_resize(bd_graph_find(tmp), cap, err);
		struct bd_err e2 = {0};
		bd_graph_del(tmp, &e2);
		return r;
	}
	return bd_err_set(err, -ENOTSUP, "resizing %s volumes is not supported", v->format);
}

/* ---- the public volume operations ---- */

int bd_vol_create_def(const char *pool, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
		      struct bd_err *err)
{
	struct pool *p = bd_pool_lookup_running(pool, err), *sp = NULL;
	struct vol *src = NULL;
	int r;

	if (!p) {
		bd_vol_def_free(def);
		return err->code;
	}
	if ((r = bd_pool_check_name("volume", def->name, err)) < 0)
		goto out;
	if (bd_pool_vol_find(p, def->name)) {
		r = bd_err_set(err, -EEXIST, "storage volume '%s' already exists in pool '%s'",
			       def->name, p->def->name);
		goto out;
	}
	if (o && o->from_vol) {
		src = find_vol(o->from_pool ? o->from_pool : pool, o->from_vol, &sp, err);
		if (!src) {
			r = err->code;
			goto out;
		}
	}
	if (!p->be->vol_create) {
		r = bd_err_set(err, -ENOTSUP, "pool '%s' cannot create volumes", p->def->name);
		goto out;
	}
	/* a backing volume named by pool volume name is resolved to its path */
	if (def->backing_path && def->backing_path[0] != '/') {
		struct vol *b = bd_pool_vol_find(p, def->backing_path);
		if (!b) {
			r = bd_err_set(err, -ENOENT, "backing volume '%s' not found in pool '%s'",
				       def->backing_path, p->def->name);
			goto out;
		}
		free(def->backing_path);
		def->backing_path = strdup(b->path);
		if (!def->backing_format)
			def->backing_format = strdup(b->format);
	}
	if (def->backing_path && (!def->has_capacity || !def->capacity)) {
		/* libvirt: no (or zero) capacity with a backing store takes the backing size */
		struct pool *bp;
		struct bd_err e2 = {0};
		struct vol *b = find_vol(NULL, def->backing_path, &bp, &e2);
		if (b) {
			def->capacity = b->capacity;
			def->has_capacity = true;
		}
	}
	if ((r = p->be->vol_create(p, def, o, src, err)) < 0)
		bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, def->name);
out:
	bd_vol_def_free(def);
	return r;
}

int bd_vol_create_xml(const char *pool, const char *xml, const struct bd_vol_create_opts *o,
		      char **name_out, struct bd_err *err)
{
	struct bd_vol_def *def;
	int r = bd_vol_def_parse(xml, strlen(xml), &def, err);
	if (r < 0)
		return r;
	if (name_out)
		*name_out = strdup(def->name);
	r = bd_vol_create_def(pool, def, o, err);
	if (r < 0 && name_out) {
		free(*name_out);
		*name_out = NULL;
	}
	return r;
}

int bd_vol_delete(const char *pool, const char *name, struct bd_err *err)
{
	return bd_vol_delete_flags(pool, name, 0, err);
}

int bd_vol_delete_flags(const char *pool, const char *name, unsigned flags, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	int r;
	if (!v)
		return err->code;
	if ((r = check_vol_unused(p, v, err)) < 0)
		return r;
	if (flags & BD_VOL_DELETE_SNAPSHOTS) {
		if (!p->be->vol_delete_snapshots)
			return bd_err_set(err, -ENOTSUP,
					  "pool '%s' (type %s) does not support delete-snapshots",
					  p->def->name, p->def->type);
		if ((r = p->be->vol_delete_snapshots(p, v, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	}
	if ((r = p->be->vol_delete(p, v, err)) < 0)
		return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	vol_remove(p, v);
	return 0;
}

int bd_vol_resize(const char *pool, const char *name, uint64_t capacity, unsigned flags,
		  struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	uint64_t cap = capacity;
	int r;
	if (!v)
		return err->code;
	if (flags & BD_RESIZE_DELTA) {
		if (flags & BD_RESIZE_SHRINK)
			cap = capacity > v->capacity ? 0 : v->capacity - capacity;
		else if (v->capacity > UINT64_MAX - capacity)
			return bd_err_set(err, -ERANGE, "new capacity is too large");
		else
			cap = v->capacity + capacity;
	}
	if (cap == 0)
		return bd_err_set(err, -EINVAL, "cannot resize volume '%s' to 0 bytes", v->name);
	if (cap < v->capacity && !(flags & BD_RESIZE_SHRINK))
		return bd_err_set(err, -EINVAL,
				  "Can't shrink capacity below current capacity unless shrink "
				  "flag explicitly specified");
	if (cap > v->capacity && (flags & BD_RESIZE_SHRINK) && !(flags & BD_RESIZE_DELTA))
		return bd_err_set(err, -EINVAL, "shrink given but the new capacity is larger");
	if ((r = check_vol_unused(p, v, err)) < 0)
		return r;
	if (!p->be->vol_resize)
		return bd_err_set(err, -ENOTSUP, "pool '%s' cannot resize volumes", p->def->name);
	if ((r = p->be->vol_resize(p, v, cap, flags, err)) < 0)
		return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	after_change(p, v);
	return 0;
}

static int zero_file(int fd, uint64_t base, uint64_t size, bool punch, struct bd_err *err)
{
	if (punch && fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)base,
			       (off_t)size) == 0)
		return 0;
	char *buf = calloc(1, COPY_CHUNK);
	if (!buf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < COPY_CHUNK ? (size_t)(size - off) : COPY_CHUNK;
		if (atomic_load(&tasks_cancel)) {
			free(buf);
			return bd_err_set(err, -ECANCELED, "cancelled: blockd is shutting down");
		}
		ssize_t w = pwrite(fd, buf, n, (off_t)(base + off));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			free(buf);
			return bd_err_set(err, -errno, "write failed: %s", strerror(errno));
		}
		off += (uint64_t)w;
	}
	free(buf);
	return 0;
}

static int random_file(int fd, uint64_t base, uint64_t size, struct bd_err *err)
{
	char *buf = malloc(COPY_CHUNK);
	if (!buf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	for (uint64_t off = 0; off < size;) {
		size_t n = size - off < COPY_CHUNK ? (size_t)(size - off) : COPY_CHUNK;
		if (atomic_load(&tasks_cancel)) {
			free(buf);
			return bd_err_set(err, -ECANCELED, "cancelled: blockd is shutting down");
		}
		for (size_t got = 0; got < n;) {
			ssize_t g = getrandom(buf + got, n - got, 0);
			if (g > 0)
				got += (size_t)g;
		}
		ssize_t w = pwrite(fd, buf, n, (off_t)(base + off));
		if (w <= 0) {
			free(buf);
			return bd_err_set(err, -errno, "write failed: %s", strerror(errno));
		}
		off += (uint64_t)w;
	}
	free(buf);
	return 0;
}

/* ---- the data phase of wipe, upload and download: inline or on a worker thread ---- */

enum task_kind { T_ZERO, T_RANDOM, T_UPLOAD, T_DOWNLOAD, T_CLONE };

struct vol_task {
	enum task_kind kind;
	int in, out; /* T_ZERO/T_RANDOM: out only */
	uint64_t in_off, out_off, len;
	bool punch;  /* T_ZERO: may punch holes */
	bool sparse; /* T_DOWNLOAD: leave zero blocks as holes */
	int result;
	struct bd_err err;
	/* asynchronous tasks */
	uint64_t id;
	char *pool, *vol;
	char *path; /* T_CLONE: the new file (removed if the copy fails) */
	const char *op;
	pthread_t th;
	atomic_bool done;
	struct vol_task *next;
};

static struct vol_task *tasks;
static uint64_t task_seq;
static struct bd_timer reap_timer;
static bool reap_armed;

/* [worker or control] The I/O; closes the fds. */
static void task_run(struct vol_task *t)
{
	int r = 0;
	switch (t->kind) {
	case T_ZERO:
		r = zero_file(t->out, t->out_off, t->len, t->punch, &t->err);
		break;
	case T_RANDOM:
		r = random_file(t->out, t->out_off, t->len, &t->err);
		break;
	case T_UPLOAD:
	case T_CLONE:
		r = copy_range(t->in, t->in_off, t->out, t->out_off, t->len, false, NULL, &t->err);
		break;
	case T_DOWNLOAD:
		r = copy_range(t->in, t->in_off, t->out, 0, t->len, t->sparse, NULL, &t->err);
		if (r == 0 && ftruncate(t->out, (off_t)t->len) < 0)
			r = bd_err_set(&t->err, -errno, "cannot size the file: %s",
				       strerror(errno));
		if (r == 0 && !t->sparse) {
			/* holes of the source were skipped: a non-sparse download allocates them
			 * (file systems without fallocate keep holes: still the right bytes) */
			struct stat st;
			if (fstat(t->out, &st) == 0 && (uint64_t)st.st_blocks * 512 < t->len &&
			    fallocate(t->out, 0, 0, (off_t)t->len) < 0) {
			}
		}
		break;
	}
	if (r == 0 && t->kind != T_DOWNLOAD && fsync(t->out) < 0)
		r = bd_err_set(&t->err, -errno, "fsync failed: %s", strerror(errno));
	if (t->in >= 0)
		close(t->in);
	if (t->out >= 0)
		close(t->out);
	t->in = t->out = -1;
	t->result = r;
}

static void *task_thread(void *arg)
{
	struct vol_task *t = arg;
	task_run(t);
	atomic_store(&t->done, true);
	return NULL;
}

static bool task_busy(const char *pool, const char *vol)
{
	for (struct vol_task *t = tasks; t; t = t->next)
		if (!strcmp(t->pool, pool) && !strcmp(t->vol, vol))
			return true;
	return false;
}

static void task_free(struct vol_task *t)
{
	free(t->path);
	free(t->pool);
	free(t->vol);
	free(t);
}

static void reap(struct bd_timer *tm)
{
	reap_armed = false;
	for (struct vol_task **pp = &tasks; *pp;) {
		struct vol_task *t = *pp;
		if (!atomic_load(&t->done)) {
			pp = &t->next;
			continue;
		}
		pthread_join(t->th, NULL);
		*pp = t->next;
		struct bd_err e = {0};
		struct pool *p = bd_pool_lookup_running(t->pool, &e);
		struct vol *v = p ? bd_pool_vol_find(p, t->vol) : NULL;
		if (t->kind == T_CLONE) {
			/* the new volume appears now, or its partial file goes */
			if (t->result < 0) {
				unlink(t->path);
			} else if (p && !v) {
				v = vol_new(p->def->target_path, t->vol);
				if (v && (vol_stat(v, -1, NULL, true) < 0 || vol_append(p, v) < 0))
					bd_vol_free(v);
			}
		} else if (v && t->kind != T_DOWNLOAD) {
			after_change(p, v);
		}
		json_t *ev = json_pack("{s:I,s:s,s:s,s:s}", "job", (json_int_t)t->id, "pool",
				       t->pool, "vol", t->vol, "operation", t->op);
		if (t->result < 0)
			json_object_set_new(ev, "error", json_string(t->err.msg));
		bd_event_emit("POOL_VOLUME_JOB_COMPLETED", ev);
		task_free(t);
	}
	if (tasks) {
		bd_timer_arm(bd_loop_main(), &reap_timer, bd_now_ns() + 20000000);
		reap_armed = true;
	}
}

/* Run t now (job_id NULL) or on a worker thread (*job_id gets its id).  Consumes t. */
static int task_start(struct vol_task *t, struct pool *p, struct vol *v, const char *op,
		      uint64_t *job_id, struct bd_err *err)
{
	int r;
	if (!job_id) {
		task_run(t);
		r = t->result;
		if (r < 0) {
			bd_err_set(err, r, "%s", t->err.msg);
			bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		} else if (t->kind != T_DOWNLOAD) {
			after_change(p, v);
		}
		free(t);
		return r;
	}
	t->pool = strdup(p->def->name);
	t->vol = strdup(v->name);
	t->op = op;
	t->id = ++task_seq;
	atomic_init(&t->done, false);
	if (!t->pool || !t->vol || (r = -pthread_create(&t->th, NULL, task_thread, t)) != 0) {
		r = bd_err_set(err, -ENOMEM, "cannot start a worker thread");
		if (t->in >= 0)
			close(t->in);
		if (t->out >= 0)
			close(t->out);
		task_free(t);
		return r;
	}
	t->next = tasks;
	tasks = t;
	*job_id = t->id;
	if (!reap_armed) {
		bd_timer_init(&reap_timer, reap);
		bd_timer_arm(bd_loop_main(), &reap_timer, bd_now_ns() + 20000000);
		reap_armed = true;
	}
	return 0;
}

static struct vol_task *task_new(enum task_kind kind)
{
	struct vol_task *t = calloc(1, sizeof(*t));
	if (t) {
		t->kind = kind;
		t->in = t->out = -1;
	}
	return t;
}

static int clone_start(struct pool *p, const char *name, const char *path, int in, int out,
		       uint64_t len, uint64_t *job_id, struct bd_err *err)
{
	struct vol_task *t = task_new(T_CLONE);
	int r;
	if (!t) {
		close(in);
		close(out);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	t->in = in;
	t->out = out;
	t->len = len;
	t->path = strdup(path);
	t->pool = strdup(p->def->name);
	t->vol = strdup(name);
	t->op = "clone";
	t->id = ++task_seq;
	atomic_init(&t->done, false);
	if (!t->path || !t->pool || !t->vol ||
	    (r = -pthread_create(&t->th, NULL, task_thread, t)) != 0) {
		r = bd_err_set(err, -ENOMEM, "cannot start a worker thread");
		close(in);
		close(out);
		task_free(t);
		return r;
	}
	t->next = tasks;
	tasks = t;
	*job_id = t->id;
	if (!reap_armed) {
		bd_timer_init(&reap_timer, reap);
		bd_timer_arm(bd_loop_main(), &reap_timer, bd_now_ns() + 20000000);
		reap_armed = true;
	}
	return 0;
}

bool bd_pool_has_tasks(const char *pool)
{
	for (struct vol_task *t = tasks; t; t = t->next)
		if (!strcmp(t->pool, pool))
			return true;
	return false;
}

void bd_pool_tasks_shutdown(void)
{
	if (reap_armed && bd_loop_main())
		bd_timer_cancel(bd_loop_main(), &reap_timer);
	reap_armed = false;
	atomic_store(&tasks_cancel, true);
	while (tasks) {
		struct vol_task *t = tasks;
		tasks = t->next;
		pthread_join(t->th, NULL);
		task_free(t);
	}
	atomic_store(&tasks_cancel, false);
}

/* find_vol for an operation that changes or reads the volume's bytes */
static struct vol *find_vol_idle(const char *pool, const char *name, struct pool **pp,
				 struct bd_err *err)
{
	struct vol *v = find_vol(pool, name, pp, err);
	if (v && task_busy((*pp)->def->name, v->name)) {
		bd_err_set(err, -EBUSY, "volume '%s' of pool '%s' has an operation in progress",
			   v->name, (*pp)->def->name);
		return NULL;
	}
	return v;
}

int bd_vol_wipe(const char *pool, const char *name, const char *alg, uint64_t *job_id,
		struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	int r, fd;
	if (!v)
		return err->code;
	if (!alg)
		alg = "zero";
	if (strcmp(alg, "zero") && strcmp(alg, "trim") && strcmp(alg, "random"))
		return bd_err_set(err, -ENOTSUP,
				  "wipe algorithm '%s' is not supported (supported: zero, trim, "
				  "random)",
				  alg);
	if ((r = check_vol_unused(p, v, err)) < 0)
		return r;
	if (p->be->vol_wipe) {
		if ((r = p->be->vol_wipe(p, v, alg, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		after_change(p, v);
		if (job_id)
			*job_id = 0; /* done already */
		return 0;
	}
	if (p->be->vol_file_opts)
		return bd_err_set(err, -ENOTSUP, "pool '%s' (type %s) cannot wipe volumes",
				  p->def->name, p->def->type);
	if (!strcmp(v->format, "qcow2")) {
		if (strcmp(alg, "zero"))
			return bd_err_set(err, -ENOTSUP,
					  "only the zero algorithm wipes qcow2 volumes");
		/* libvirt's way: a new empty image with the same parameters (fast: inline) */
		struct bd_vol_def d = {.name = v->name,
				       .capacity = v->capacity,
				       .has_capacity = true,
				       .compat = v->compat,
				       .cluster_size = v->cluster_size,
				       .lazy_refcounts = v->lazy_refcounts,
				       .extended_l2 = v->extended_l2,
				       .backing_path = v->backing_path,
				       .backing_format = v->backing_format,
				       .perms = {-1, -1, -1, NULL}};
		fd = open(v->path, O_WRONLY | O_TRUNC | O_CLOEXEC);
		if (fd < 0)
			return bd_err_set(err, -errno, "cannot open '%s': %s", v->path,
					  strerror(errno));
		close(fd);
		if ((r = create_qcow2(v->path, &d, false, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		after_change(p, v);
		if (job_id)
			*job_id = 0; /* done already */
		return 0;
	}
	struct vol_task *t = task_new(strcmp(alg, "random") ? T_ZERO : T_RANDOM);
	if (!t)
		return bd_err_set(err, -ENOMEM, "out of memory");
	t->out = vol_fd(v, O_WRONLY, &t->out_off, &t->len, err);
	if (t->out < 0) {
		r = t->out;
		free(t);
		return r;
	}
	t->punch = !v->dev;
	return task_start(t, p, v, "wipe", job_id, err);
}

int bd_vol_upload(const char *pool, const char *name, const char *file, uint64_t offset,
		  uint64_t length, uint64_t *job_id, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	struct stat st;
	struct vol_task *t;
	int in, r;
	if (!v)
		return err->code;
	if ((r = check_vol_unused(p, v, err)) < 0)
		return r;
	if (p->be->vol_file_opts)
		return bd_err_set(err, -ENOTSUP,
				  "upload into volumes of a '%s' pool is not supported yet (open "
				  "the volume and write through an export)",
				  p->def->type);
	in = open(file, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		return bd_err_set(err, -errno, "cannot open '%s': %s", file, strerror(errno));
	if (fstat(in, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(in);
		return bd_err_set(err, -EINVAL, "'%s' is not a regular file", file);
	}
	uint64_t len = length ? length : (uint64_t)st.st_size;
	if (len > (uint64_t)st.st_size)
		len = (uint64_t)st.st_size;
	if (!(t = task_new(T_UPLOAD))) {
		close(in);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	t->in = in;
	uint64_t base, vsize;
	t->out = vol_fd(v, O_WRONLY, &base, &vsize, err);
	if (t->out < 0) {
		r = t->out;
		close(in);
		free(t);
		return r;
	}
	if (strcmp(v->format, "qcow2") && (offset > vsize || len > vsize - offset)) {
		close(in);
		close(t->out);
		free(t);
		return bd_err_set(err, -ENOSPC,
				  "upload of %" PRIu64 " bytes at offset %" PRIu64
				  " would go past the end of volume '%s' (%" PRIu64 " bytes)",
				  len, offset, v->name, vsize);
	}
	t->out_off = base + offset;
	t->len = len;
	return task_start(t, p, v, "upload", job_id, err);
}

int bd_vol_download(const char *pool, const char *name, const char *file, uint64_t offset,
		    uint64_t length, bool sparse, uint64_t *job_id, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	struct vol_task *t;
	int in, out, r;
	if (!v)
		return err->code;
	if (p->be->vol_file_opts)
		return bd_err_set(err, -ENOTSUP,
				  "download from volumes of a '%s' pool is not supported yet (open "
				  "the volume and read through an export)",
				  p->def->type);
	uint64_t base, vsize;
	in = vol_fd(v, O_RDONLY, &base, &vsize, err);
	if (in < 0)
		return in;
	if (offset > vsize) {
		close(in);
		return bd_err_set(err, -EINVAL, "offset is past the end of volume '%s'", v->name);
	}
	uint64_t len = length ? length : vsize - offset;
	if (len > vsize - offset)
		len = vsize - offset;
	out = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (out < 0) {
		r = bd_err_set(err, -errno, "cannot create '%s': %s", file, strerror(errno));
		close(in);
		return r;
	}
	if (!(t = task_new(T_DOWNLOAD))) {
		close(in);
		close(out);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	t->in = in;
	t->out = out;
	t->in_off = base + offset;
	t->len = len;
	t->sparse = sparse;
	return task_start(t, p, v, "download", job_id, err);
}

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
	struct vol *v = find_vol(pool, name, &p, err);
	if (!v)
		return NULL;
	json_t *o = vol_json(v);
	json_object_set_new(o, "pool", json_string(p->def->name));
	return o;
}

char *bd_vol_dumpxml(const char *pool, const char *name, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol(pool, name, &p, err);
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

int bd_vol_open(const char *pool, const char *name, const char *node_name, bool read_only,
		struct bd_err *err)
{
	struct pool *p;
	struct vol *v = find_vol_idle(pool, name, &p, err);
	if (!v)
		return err->code;
	const char *fmt = !strcmp(v->format, "none") ? "raw" : v->format;
	if (strcmp(fmt, "raw") && strcmp(fmt, "qcow2"))
		return bd_err_set(err, -ENOTSUP,
				  "volume '%s' has format '%s', which blockd cannot "
				  "open",
				  v->name, v->format);
	if (!strcmp(fmt, "qcow2") && !bd_driver_find("qcow2"))
		return bd_err_set(err, -ENOTSUP, "this blockd has no qcow2 driver");
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
