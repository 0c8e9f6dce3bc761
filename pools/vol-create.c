/*
 * vol-create.c - creating volumes in the pools: the file pools' create (raw, qcow2 through the
 * qcow2 driver's creator), clone and format conversion, delete and resize; clones into disk
 * and logical pools; the public bd_vol_create_def / bd_vol_create_xml.  [control thread; the
 * data of clones moves in vol-task.c]
 */
#include "pools/pools-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- create ---- */

int bd_vol_create_qcow2(const char *path, struct bd_vol_def *def, bool prealloc, struct bd_err *err)
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

/* [control] The end of a volume task: list a cloned volume or remove its partial file; reread
 * a changed volume. */
void bd_vol_task_finished(struct vol_task *t)
{
	struct bd_err e = {0};
	struct pool *p = bd_pool_lookup_running(t->pool, &e);
	struct vol *v = p ? bd_pool_vol_find(p, t->vol) : NULL;
	if (t->kind == VT_CLONE || t->kind == VT_CONVERT) {
		if (t->result < 0) {
			unlink(t->path);
		} else if (p && !v) {
			v = bd_vol_new(p->def->target_path, t->vol);
			if (v && (bd_vol_stat(v, -1, NULL, true) < 0 || bd_vol_append(p, v) < 0))
				bd_vol_free(v);
		}
		return;
	}
	if (p && v && t->kind != VT_DOWNLOAD && t->result == 0)
		bd_vol_after_change(p, v);
}

/* [control] The end of a task whose bytes moved through graph nodes (a conversion, an upload
 * or download of a volume reached through a protocol driver): close them, then as above. */
void bd_vol_node_task_finished(struct vol_task *t)
{
	struct bd_err e = {0};
	if (t->src)
		bd_graph_del(t->src_node, &e);
	if (t->dst)
		bd_graph_del(t->dst_node, &e);
	bd_vol_task_finished(t);
}

/* A clone with another format (raw <-> qcow2): the new image is created empty at path, both
 * are opened as graph nodes and the source's data is copied through them (zero blocks
 * skipped), inline or on a worker thread. */
static int convert_start(struct pool *p, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
			 struct vol *src, const char *fmt, const char *path, struct bd_err *err)
{
	static unsigned seq;
	int r;
	if (!def->has_capacity || def->capacity < src->capacity) {
		def->capacity = src->capacity;
		def->has_capacity = true;
	}
	if (!strcmp(fmt, "qcow2")) {
		if ((r = bd_vol_create_qcow2(path, def, o && o->prealloc_metadata, err)) < 0)
			return r;
	} else if (truncate(path, (off_t)def->capacity) < 0) {
		return bd_err_set(err, -errno, "cannot size '%s': %s", path, strerror(errno));
	}
	struct vol_task *t = bd_vol_task_new(VT_CONVERT, "clone");
	if (!t || !(t->path = strdup(path))) {
		bd_vol_task_free(t);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	snprintf(t->src_node, sizeof(t->src_node), "pool-convert-src-%u", ++seq);
	snprintf(t->dst_node, sizeof(t->dst_node), "pool-convert-dst-%u", seq);
	json_t *so =
	    json_pack("{s:s,s:s,s:b,s:{s:s,s:s}}", "driver", src->format, "node-name", t->src_node,
		      "read-only", true, "file", "driver", "file", "filename", src->path);
	json_t *dopt = json_pack("{s:s,s:s,s:{s:s,s:s}}", "driver", fmt, "node-name", t->dst_node,
				 "file", "driver", "file", "filename", path);
	struct bd_node *sn = bd_node_open(so, err);
	struct bd_node *dn = sn ? bd_node_open(dopt, err) : NULL;
	json_decref(so);
	json_decref(dopt);
	if (!sn || !dn) {
		struct bd_err e = {0};
		if (sn)
			bd_graph_del(t->src_node, &e);
		r = err->code;
		bd_vol_task_free(t);
		return r;
	}
	t->src = sn;
	t->dst = dn;
	t->len = src->capacity;
	t->finish = bd_vol_node_task_finished;
	return bd_vol_task_start(t, p->def->name, def->name, o ? o->job_id : NULL, err);
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
	bool convert = src && strcmp(fmt, src->format);
	if (convert && (src->dev || (strcmp(src->format, "raw") && strcmp(src->format, "qcow2"))))
		return bd_err_set(err, -ENOTSUP,
				  "converting volume '%s' from %s to %s is not supported (only raw "
				  "and qcow2 files convert)",
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
	if (convert) {
		close(fd);
		fd = -1;
		if ((r = convert_start(p, def, o, src, fmt, path, err)) < 0)
			goto fail;
		free(path);
		return 0;
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
		/* the copy: inline, or on a worker thread with o->job_id; the task owns in and fd
		 * from here, and its finish hook lists the new volume or removes the file */
		struct vol_task *t = bd_vol_task_new(VT_CLONE, "clone");
		char *tpath = strdup(path);
		if (!t || !tpath) {
			bd_vol_task_free(t);
			free(tpath);
			close(in);
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		t->in = in;
		t->out = fd;
		t->len = src->physical;
		t->path = tpath;
		t->finish = bd_vol_task_finished;
		free(path);
		return bd_vol_task_start(t, p->def->name, def->name, o ? o->job_id : NULL, err);
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
		if ((r = bd_vol_create_qcow2(path, def, o && o->prealloc_metadata, err)) < 0)
			goto fail;
	}
	if (fd >= 0 && fsync(fd) < 0) {
		r = bd_err_set(err, -errno, "cannot sync '%s': %s", path, strerror(errno));
		goto fail;
	}
	if (fd >= 0)
		close(fd);
	struct vol *v = bd_vol_new(p->def->target_path, def->name);
	if (v && bd_vol_stat(v, -1, NULL, true) == 0 && bd_vol_append(p, v) == 0)
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
		if ((r = bd_vol_open(p->def->name, v->name, tmp, NULL, false, err)) < 0)
			return r;
		r = bd_node_resize(bd_graph_find(tmp), cap, err);
		struct bd_err e2 = {0};
		bd_graph_del(tmp, &e2);
		return r;
	}
	return bd_err_set(err, -ENOTSUP, "resizing %s volumes is not supported", v->format);
}

/* ---- the public volume operations ---- */

/* [control] The end of a clone into a partition or LV: a failed copy removes the volume. */
static void device_clone_finished(struct vol_task *t)
{
	struct bd_err e = {0};
	struct pool *p = bd_pool_lookup_running(t->pool, &e);
	struct vol *v = p ? bd_pool_vol_find(p, t->vol) : NULL;
	if (t->result < 0 && p && v && p->be->vol_delete && p->be->vol_delete(p, v, &e) < 0)
		bd_log(BD_LOG_WARN, "pool '%s': cannot remove the partial clone '%s': %s", t->pool,
		       t->vol, e.msg);
	if (p && p->be->refresh)
		p->be->refresh(p, NULL);
}

/* Clone (vol-clone, vol-create-from) into a pool whose volumes are partitions or LVs: the
 * backend makes a volume at least as large as the source's bytes, then they are copied into
 * it.  Only sources whose bytes are the disk (raw) are accepted: a qcow2 file copied into a
 * partition would be a qcow2 image there, which a "none"-format volume cannot say. */
static int clone_into_device(struct pool *p, struct bd_vol_def *def,
			     const struct bd_vol_create_opts *o, struct vol *src,
			     struct bd_err *err)
{
	int r;
	if (strcmp(src->format, "raw") && strcmp(src->format, "none"))
		return bd_err_set(err, -ENOTSUP,
				  "cannot clone the %s volume '%s' into a %s pool: only raw "
				  "volumes can become partitions or logical volumes",
				  src->format, src->name, p->def->type);
	uint64_t sbase, ssize;
	int in = bd_vol_fd(src, O_RDONLY, &sbase, &ssize, err);
	if (in < 0)
		return in;
	if (!def->has_capacity || def->capacity < ssize) {
		def->capacity = ssize;
		def->has_capacity = true;
	}
	if ((r = p->be->vol_create(p, def, o, NULL, err)) < 0) {
		close(in);
		return r;
	}
	struct vol *v = bd_pool_vol_find(p, def->name);
	struct vol_task *t = bd_vol_task_new(VT_CLONE, "clone");
	uint64_t dbase, dsize;
	int out = v ? bd_vol_fd(v, O_WRONLY, &dbase, &dsize, err)
		    : bd_err_set(err, -ENOENT, "the new volume did not appear");
	if (out >= 0 && dsize < ssize) {
		close(out);
		out = bd_err_set(err, -ENOSPC,
				 "the new volume has %" PRIu64 " bytes, the source %" PRIu64, dsize,
				 ssize);
	}
	if (out < 0 || !t) {
		r = out < 0 ? out : bd_err_set(err, -ENOMEM, "out of memory");
		close(in);
		bd_vol_task_free(t);
		struct bd_err e = {0};
		if (v && p->be->vol_delete)
			p->be->vol_delete(p, v, &e);
		if (p->be->refresh)
			p->be->refresh(p, NULL);
		return r;
	}
	t->in = in;
	t->in_off = sbase;
	t->out = out;
	t->out_off = dbase;
	t->len = ssize;
	t->dense = true; /* a partition or LV keeps old bytes where the source has holes */
	t->finish = device_clone_finished;
	return bd_vol_task_start(t, p->def->name, def->name, o ? o->job_id : NULL, err);
}

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
		src = bd_vol_lookup(o->from_pool ? o->from_pool : pool, o->from_vol, &sp, err);
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
		struct vol *b = bd_vol_lookup(NULL, def->backing_path, &bp, &e2);
		if (b) {
			def->capacity = b->capacity;
			def->has_capacity = true;
		}
	}
	if (src && !p->be->file_vols && !p->be->vol_file_opts)
		r = clone_into_device(p, def, o, src, err);
	else
		r = p->be->vol_create(p, def, o, src, err);
	if (r < 0)
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
