/*
 * vol-ops.c - the volume operations that remove a volume or change or move its bytes: delete,
 * resize, wipe, upload and download (their data phase runs in vol-task.c; volumes reached
 * through a protocol driver move their bytes through a temporary graph node).  [control thread]
 */
#include "pools/pools-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

int bd_vol_delete(const char *pool, const char *name, struct bd_err *err)
{
	return bd_vol_delete_flags(pool, name, 0, err);
}

int bd_vol_delete_flags(const char *pool, const char *name, unsigned flags, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
	int r;
	if (!v)
		return err->code;
	if ((r = bd_vol_check_unused(p, v, err)) < 0)
		return r;
	if (flags & BD_VOL_DELETE_SNAPSHOTS) {
		if (!p->be->vol_delete_snapshots)
			return bd_err_set(err, -ENOTSUP,
					  "pool '%s' (type %s) does not support delete-snapshots",
					  p->def->name, p->def->type);
		if ((r = p->be->vol_delete_snapshots(p, v, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	}
	if (!p->be->vol_delete)
		return bd_err_set(err, -ENOTSUP, "pool '%s' (type %s) cannot delete volumes",
				  p->def->name, p->def->type);
	if ((r = p->be->vol_delete(p, v, err)) < 0)
		return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	vol_remove(p, v);
	return 0;
}

int bd_vol_resize(const char *pool, const char *name, uint64_t capacity, unsigned flags,
		  struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
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
	if ((r = bd_vol_check_unused(p, v, err)) < 0)
		return r;
	if (!p->be->vol_resize)
		return bd_err_set(err, -ENOTSUP, "pool '%s' cannot resize volumes", p->def->name);
	if ((r = p->be->vol_resize(p, v, cap, flags, err)) < 0)
		return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	bd_vol_after_change(p, v);
	return 0;
}

int bd_vol_wipe(const char *pool, const char *name, const char *alg, uint64_t *job_id,
		struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
	int r, fd;
	if (!v)
		return err->code;
	if (!alg)
		alg = "zero";
	int a = bd_vol_wipe_alg_find(alg);
	if (a < 0)
		return bd_err_set(err, -ENOTSUP, "wipe algorithm '%s' is not supported (supported: %s)",
				  alg, bd_vol_wipe_alg_names());
	if ((r = bd_vol_check_unused(p, v, err)) < 0)
		return r;
	if (p->be->vol_wipe) {
		if ((r = p->be->vol_wipe(p, v, alg, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		bd_vol_after_change(p, v);
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
					  "only the zero algorithm wipes qcow2 volumes (their "
					  "clusters move: overwrite a raw volume instead)");
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
		if ((r = bd_vol_create_qcow2(v->path, &d, false, err)) < 0)
			return bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
		bd_vol_after_change(p, v);
		if (job_id)
			*job_id = 0; /* done already */
		return 0;
	}
	struct vol_task *t = bd_vol_task_new(VT_WIPE, "wipe");
	if (!t)
		return bd_err_set(err, -ENOMEM, "out of memory");
	t->out = bd_vol_fd(v, O_WRONLY, &t->out_off, &t->len, err);
	if (t->out < 0) {
		r = t->out;
		t->out = -1;
		bd_vol_task_free(t);
		return r;
	}
	t->alg = a;
	t->punch = !v->dev;
	t->finish = bd_vol_task_finished;
	if ((r = bd_vol_task_start(t, p->def->name, v->name, job_id, err)) < 0)
		bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	return r;
}

/* The source or destination of an upload/download: the caller's fd (consumed) or a file. */
static int user_fd(const char *file, int fd, int flags, struct bd_err *err)
{
	if (fd >= 0)
		return fd;
	if (!file)
		return bd_err_set(err, -EINVAL, "need a file or a file descriptor");
	fd = open(file, flags | O_CLOEXEC, 0600);
	if (fd < 0)
		return bd_err_set(err, -errno, "cannot open '%s': %s", file, strerror(errno));
	return fd;
}

/* Volumes reached through a protocol driver (rbd, gluster, nfs, iscsi): their bytes are a
 * temporary graph node of that protocol, which the task's finish hook closes. */
static struct bd_node *open_vol_bytes(struct pool *p, struct vol *v, bool ro, char *name,
				      size_t namelen, struct bd_err *err)
{
	static unsigned seq;
	json_t *o = p->be->vol_file_opts(p, v, err);
	if (!o)
		return NULL;
	snprintf(name, namelen, "pool-data-%u", ++seq);
	json_object_set_new(o, "node-name", json_string(name));
	json_object_set_new(o, "read-only", json_boolean(ro));
	struct bd_node *n = bd_node_open(o, err);
	json_decref(o);
	return n;
}

int bd_vol_upload(const char *pool, const char *name, const char *file, int fd, uint64_t offset,
		  uint64_t length, uint64_t *job_id, struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
	struct stat st;
	int r;
	if (!v || (r = bd_vol_check_unused(p, v, err)) < 0) {
		if (fd >= 0)
			close(fd);
		return err->code;
	}
	int in = user_fd(file, fd, O_RDONLY, err);
	if (in < 0)
		return in;
	if (fstat(in, &st) < 0 || S_ISDIR(st.st_mode)) {
		close(in);
		return bd_err_set(err, -EINVAL, "the upload source is not a file, pipe or socket");
	}
	uint64_t len = length ? length : UINT64_MAX;
	if (!bd_vol_fd_is_stream(in)) {
		if (!S_ISREG(st.st_mode)) {
			close(in);
			return bd_err_set(err, -EINVAL, "the upload source is not a regular file");
		}
		if (len > (uint64_t)st.st_size)
			len = (uint64_t)st.st_size;
	}
	struct vol_task *t = bd_vol_task_new(VT_UPLOAD, "upload");
	if (!t) {
		close(in);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	t->in = in;
	uint64_t base = 0, vsize;
	if (p->be->vol_file_opts) {
		t->dst = open_vol_bytes(p, v, false, t->dst_node, sizeof(t->dst_node), err);
		if (!t->dst) {
			bd_vol_task_free(t);
			return err->code;
		}
		vsize = bd_node_size(t->dst);
		t->limit = vsize; /* a protocol node does not grow: qcow2 too */
		t->finish = bd_vol_node_task_finished;
	} else if ((t->out = bd_vol_fd(v, O_WRONLY, &base, &vsize, err)) < 0) {
		r = t->out;
		t->out = -1;
		bd_vol_task_free(t);
		return r;
	}
	if (!t->finish)
		t->finish = bd_vol_task_finished;
	if (t->limit || strcmp(v->format, "qcow2")) {
		/* raw bytes stay inside the volume; a qcow2 volume takes a whole image file */
		if (offset > vsize || (len != UINT64_MAX && len > vsize - offset)) {
			bd_vol_task_free(t);
			return bd_err_set(err, -ENOSPC,
					  "upload of %" PRIu64 " bytes at offset %" PRIu64
					  " would go past the end of volume '%s' (%" PRIu64 " bytes)",
					  len, offset, v->name, vsize);
		}
		t->limit = base + vsize;
	}
	t->out_base = base;
	t->out_off = base + offset;
	t->len = len;
	if ((r = bd_vol_task_start(t, p->def->name, v->name, job_id, err)) < 0)
		bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	return r;
}

int bd_vol_download(const char *pool, const char *name, const char *file, int fd,
		    uint64_t offset, uint64_t length, bool sparse, uint64_t *job_id,
		    struct bd_err *err)
{
	struct pool *p;
	struct vol *v = bd_vol_find_idle(pool, name, &p, err);
	int r;
	if (!v) {
		if (fd >= 0)
			close(fd);
		return err->code;
	}
	uint64_t base = 0, vsize = 0;
	int in = -1;
	struct bd_node *src = NULL;
	char src_name[48] = "";
	if (p->be->vol_file_opts) {
		src = open_vol_bytes(p, v, true, src_name, sizeof(src_name), err);
		if (src)
			vsize = bd_node_size(src);
	} else {
		in = bd_vol_fd(v, O_RDONLY, &base, &vsize, err);
	}
	if (in < 0 && !src) {
		if (fd >= 0)
			close(fd);
		return err->code;
	}
	if (offset > vsize) {
		struct bd_err e = {0};
		if (src)
			bd_graph_del(src_name, &e);
		if (in >= 0)
			close(in);
		if (fd >= 0)
			close(fd);
		return bd_err_set(err, -EINVAL, "offset is past the end of volume '%s'", v->name);
	}
	uint64_t len = length ? length : vsize - offset;
	if (len > vsize - offset)
		len = vsize - offset;
	int out = user_fd(file, fd, O_WRONLY | O_CREAT | O_TRUNC, err);
	struct vol_task *t = out >= 0 ? bd_vol_task_new(VT_DOWNLOAD, "download") : NULL;
	if (!t) {
		struct bd_err e = {0};
		if (src)
			bd_graph_del(src_name, &e);
		if (in >= 0)
			close(in);
		if (out >= 0)
			close(out);
		return out < 0 ? out : bd_err_set(err, -ENOMEM, "out of memory");
	}
	t->in = in;
	t->src = src;
	memcpy(t->src_node, src_name, sizeof(t->src_node));
	t->out = out;
	t->in_off = base + offset;
	t->len = len;
	t->sparse = sparse;
	t->finish = src ? bd_vol_node_task_finished : bd_vol_task_finished;
	if ((r = bd_vol_task_start(t, p->def->name, v->name, job_id, err)) < 0)
		bd_err_prefix(err, "pool '%s': volume '%s'", p->def->name, v->name);
	return r;
}
