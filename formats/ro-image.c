/*
 * ro-image.c - the engine shared by the read-only format drivers (vmdk, vdi, vpc, qed): open
 * helpers (control thread: the file child, extra extent files, the backing node, limits) and the
 * request path (any I/O loop: reads and block status become sub-requests on the files' and the
 * backing's channels on the request's own loop).
 *
 * The drivers' maps are immutable after open, so requests need no locks and no owner loop.  A
 * read walks the map once and submits one sub-request per run of contiguous host bytes (zero
 * ranges are filled in place); a compressed grain is read whole into a buffer and inflated in
 * the completion.  Block status walks the map segment by segment, asking the file (data) or the
 * backing node (unallocated) when needed.
 */
#include "formats/ro-image-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* One sub-read. */
struct ro_sub {
	struct ro_req *rr;
	struct iovec *iov;
	int iovcnt;
	uint8_t *cbuf; /* compressed grain as read */
	uint64_t clen;
	struct ro_seg seg;
	uint64_t pos; /* where the bytes go in the parent request */
	struct iovec inl[4];
};

/* ================================================================================================
 * Sources and helpers (control thread unless said otherwise)
 */
int ro_src_read(const struct ro_src *src, uint64_t off, void *buf, size_t len)
{
	if (off > src->size || len > src->size - off)
		return -EIO;
	if (len == 0)
		return 0;
	return src->read(src->ctx, off, buf, len);
}

static int mem_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	struct ro_membuf *m = ctx;
	if (off > m->len || len > m->len - off)
		return -EIO;
	memcpy(buf, m->data + off, len);
	return 0;
}

void ro_src_mem(struct ro_src *src, struct ro_membuf *m, const uint8_t *data, size_t len)
{
	m->data = data;
	m->len = len;
	src->read = mem_read;
	src->ctx = m;
	src->size = len;
}

static int node_read(void *ctx, uint64_t off, void *buf, size_t len)
{
	return bd_node_io_sync(ctx, BD_OP_READ, off, len, buf, 0);
}

void ro_src_file(struct ro_img *ro, unsigned i, struct ro_src *src)
{
	src->read = node_read;
	src->ctx = bd_child_node(ro->files[i]);
	src->size = ro->fsizes[i];
}

const char *ro_file_name(struct bd_node *file)
{
	json_t *o = bd_node_options(file);
	json_t *f = o ? json_object_get(o, "filename") : NULL;
	return f && json_is_string(f) ? json_string_value(f) : NULL;
}

char *ro_resolve(const char *base, const char *name)
{
	const char *slash = base ? strrchr(base, '/') : NULL;
	size_t n;
	char *p;

	if (name[0] == '/' || !slash)
		return strdup(name);
	n = (size_t)(slash - base) + 1 + strlen(name) + 1;
	p = malloc(n);
	if (p)
		snprintf(p, n, "%.*s/%s", (int)(slash - base), base, name);
	return p;
}

int ro_refuse_writable(struct bd_node *node, const char *drv, struct bd_err *err)
{
	if (bd_node_read_only(node) || bd_node_common(node)->auto_read_only)
		return 0;
	return bd_err_set(err, -EROFS, "driver '%s' is read-only in blockd; open with read-only=on",
			  drv);
}

static int push_file(struct ro_img *ro, struct bd_child *c, struct bd_err *err)
{
	struct bd_child **f = realloc(ro->files, (ro->nfiles + 1) * sizeof(*f));
	uint64_t *s;

	if (!f)
		return bd_err_set(err, -ENOMEM, "out of memory");
	ro->files = f;
	s = realloc(ro->fsizes, (ro->nfiles + 1) * sizeof(*s));
	if (!s)
		return bd_err_set(err, -ENOMEM, "out of memory");
	ro->fsizes = s;
	ro->files[ro->nfiles] = c;
	ro->fsizes[ro->nfiles] = bd_node_size(bd_child_node(c));
	return (int)ro->nfiles++;
}

int ro_init(struct ro_img *ro, struct bd_node *node, json_t *opts, const char *drv,
	    struct bd_err *err)
{
	struct bd_child *c;
	int r;

	memset(ro, 0, sizeof(*ro));
	ro->node = node;
	ro->drv = drv;
	r = ro_refuse_writable(node, drv, err);
	if (r < 0)
		return r;
	if (!bd_node_read_only(node)) {
		/* auto-read-only=on: this node falls back to read-only, and so does an inline
		 * file child that does not say otherwise. */
		json_t *f = json_object_get(opts, "file");
		ro->fallback = true;
		if (json_is_object(f) && !json_object_get(f, "read-only"))
			json_object_set_new(f, "read-only", json_true());
	}
	c = bd_node_open_child(node, opts, "file", true, err);
	if (!c)
		return err && err->code ? err->code : -EINVAL;
	r = push_file(ro, c, err);
	return r < 0 ? r : 0;
}

int ro_add_file(struct ro_img *ro, const char *path, struct bd_err *err)
{
	json_t *tmp = json_pack("{s:{s:s,s:s,s:b}}", "extent", "driver", "file", "filename", path,
				"read-only", 1);
	struct bd_child *c;

	if (!tmp)
		return bd_err_set(err, -ENOMEM, "out of memory");
	c = bd_node_open_child(ro->node, tmp, "extent", true, err);
	json_decref(tmp);
	if (!c)
		return err && err->code ? err->code : -EINVAL;
	return push_file(ro, c, err);
}

/* The format a backing file's first bytes name; raw otherwise (never promoted further). */
static const char *probe_backing(const char *path, struct bd_err *err, int *ret)
{
	unsigned char m[72] = {0};
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	*ret = 0;
	if (fd < 0) {
		*ret = bd_err_set(err, -errno, "Could not open backing file '%s': %s", path,
				  strerror(errno));
		return NULL;
	}
	n = pread(fd, m, sizeof(m), 0);
	close(fd);
	if (n >= 4 && !memcmp(m, "QFI\xfb", 4))
		return "qcow2";
	if (n >= 4 && !memcmp(m, "QED\0", 4))
		return "qed";
	if (n >= 4 && !memcmp(m, "KDMV", 4))
		return "vmdk";
	if (n >= 0x44 && ro_le32(m + 0x40) == 0xbeda107f)
		return "vdi";
	return "raw";
}

static int backing_depth; /* control thread only: nesting of ro_open_backing() */

int ro_open_backing(struct ro_img *ro, json_t *opts, const char *name, const char *fmt,
		    struct bd_err *err)
{
	json_t *b = json_object_get(opts, "backing");
	char *path;
	json_t *tmp;
	int r = 0;

	if (b && (json_is_null(b) || (json_is_string(b) && !json_string_value(b)[0]))) {
		bd_opts_mark_used(opts, "backing");
		return 0;
	}
	if (b) {
		ro->backing = bd_node_open_child(ro->node, opts, "backing", false, err);
		return ro->backing ? 0 : (err && err->code ? err->code : -EINVAL);
	}
	if (!name || !name[0])
		return 0;
	ro->backing_name = strdup(name);
	if (!ro->backing_name)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (!strncmp(name, "json:", 5) || strstr(name, "://") ||
	    (strchr(name, ':') && name[0] != '/' && strncmp(name, "file:", 5)))
		return bd_err_set(err, -ENOTSUP,
				  "Backing file '%s' is not a plain file name: give the 'backing' "
				  "option explicitly",
				  name);
	if (!strncmp(name, "file:", 5))
		name += 5;
	path = ro_resolve(ro_file_name(bd_child_node(ro->files[0])), name);
	if (!path)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (!fmt)
		fmt = probe_backing(path, err, &r);
	if (r < 0 || !fmt) {
		free(path);
		return r < 0 ? r : -EINVAL;
	}
	if (!bd_driver_find(fmt)) {
		free(path);
		return bd_err_set(err, -ENOTSUP, "Unknown backing file format '%s'", fmt);
	}
	if (backing_depth >= RO_MAX_BACKING_DEPTH) {
		r = bd_err_set(err, -ELOOP, "Backing chain deeper than %d images at '%s' (a loop?)",
			       RO_MAX_BACKING_DEPTH, path);
		free(path);
		return r;
	}
	tmp = json_pack("{s:{s:s,s:b,s:{s:s,s:s}}}", "backing", "driver", fmt, "read-only", 1,
			"file", "driver", "file", "filename", path);
	free(path);
	if (!tmp)
		return bd_err_set(err, -ENOMEM, "out of memory");
	backing_depth++;
	ro->backing = bd_node_open_child(ro->node, tmp, "backing", true, err);
	backing_depth--;
	json_decref(tmp);
	if (!ro->backing)
		return err && err->code ? err->code : -EINVAL;
	return 0;
}

void ro_limits(struct ro_img *ro, struct bd_limits *limits)
{
	memset(limits, 0, sizeof(*limits));
	limits->size = ro->size;
	limits->read_only = ro->fallback;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_BLOCK_STATUS);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = 4u << 20;
	limits->opt_transfer = 64u << 10; /* larger preferred sizes slow NBD clients (nbdcopy) */
}

void ro_free(struct ro_img *ro)
{
	free(ro->files);
	free(ro->fsizes);
	free(ro->backing_name);
	ro->files = NULL;
	ro->fsizes = NULL;
	ro->backing_name = NULL;
	ro->nfiles = 0;
}

void ro_describe(struct ro_img *ro, json_t *out)
{
	if (ro->backing_name)
		json_object_set_new(out, "backing_file", json_string(ro->backing_name));
}

/* ================================================================================================
 * Requests (the request's loop)
 */

static void rr_finish(struct ro_req *rr)
{
	if (rr->in_submit)
		bd_req_complete_later(rr->req, rr->err);
	else
		bd_req_complete(rr->req, rr->err);
}

static void sub_read_done(struct bd_req *c, int ret)
{
	struct ro_sub *sub = c->opaque;
	struct ro_req *rr = sub->rr;

	bd_req_put(c);
	if (ret == 0 && sub->cbuf) {
		uint8_t *out = malloc(sub->seg.grain_size);
		if (!out)
			ret = -ENOMEM;
		else if (rr->ro->ops->inflate(rr->ro->fmt, &sub->seg, sub->cbuf, sub->clen, out) <
			 0)
			ret = -EIO;
		else
			bd_iov_from_buf(rr->req->iov, rr->req->iovcnt, sub->pos,
					out + sub->seg.grain_off, sub->seg.len);
		free(out);
	}
	if (ret < 0) {
		if (!rr->err)
			rr->err = ret;
		if (ret == -EIO && sub->cbuf)
			bd_log(BD_LOG_ERROR, "%s node '%s': corrupt compressed grain at 0x%" PRIx64,
			       rr->ro->drv, bd_node_name(rr->ro->node), sub->seg.host);
	}
	free(sub->cbuf);
	if (sub->iov != sub->inl)
		free(sub->iov);
	free(sub);
	if (--rr->pending == 0)
		rr_finish(rr);
}

/* Read [off, off+len) of child into the request at pos (or the compressed buffer). */
static int sub_read(struct ro_req *rr, struct bd_child *child, uint64_t off, uint64_t len,
		    uint64_t pos, const struct ro_seg *cseg)
{
	struct bd_req *req = rr->req;
	struct bd_chan *cc = bd_child_chan(child, rr->ch);
	struct ro_sub *sub = calloc(1, sizeof(*sub));
	struct bd_req *c;
	int r;

	if (!sub)
		return -ENOMEM;
	sub->rr = rr;
	sub->pos = pos;
	if (cseg) {
		sub->seg = *cseg;
		sub->cbuf = malloc(len);
		sub->clen = len;
		if (!sub->cbuf) {
			free(sub);
			return -ENOMEM;
		}
		sub->inl[0].iov_base = sub->cbuf;
		sub->inl[0].iov_len = len;
		sub->iov = sub->inl;
		sub->iovcnt = 1;
	} else {
		int n = req->iovcnt;
		if (n <= 4) {
			sub->iov = sub->inl;
		} else {
			sub->iov = calloc((size_t)n, sizeof(*sub->iov));
			if (!sub->iov) {
				free(sub);
				return -ENOMEM;
			}
		}
		n = bd_iov_slice(req->iov, req->iovcnt, pos, len, sub->iov);
		sub->iovcnt = n;
	}
	c = bd_req_get(cc);
	c->op = BD_OP_READ;
	c->offset = off;
	c->len = len;
	c->iov = sub->iov;
	c->iovcnt = sub->iovcnt;
	c->cb = sub_read_done;
	c->opaque = sub;
	rr->pending++;
	r = bd_submit(cc, c);
	if (r < 0) {
		rr->pending--;
		bd_req_put(c);
		free(sub->cbuf);
		if (sub->iov != sub->inl)
			free(sub->iov);
		free(sub);
	}
	return r;
}

static int map_seg(struct ro_img *ro, uint64_t off, uint64_t len, struct ro_seg *seg)
{
	memset(seg, 0, sizeof(*seg));
	if (ro->ops->map(ro->fmt, off, len, seg) < 0 || seg->len == 0 || seg->len > len ||
	    ((seg->kind == RO_DATA || seg->kind == RO_COMPRESSED) && seg->child >= ro->nfiles))
		return -EIO;
	if (seg->kind == RO_COMPRESSED && (!ro->ops->inflate || seg->grain_size > (64u << 20) ||
					   seg->grain_off + seg->len > seg->grain_size))
		return -EIO;
	return 0;
}

static void ro_read(struct ro_req *rr)
{
	struct bd_req *req = rr->req;
	struct ro_img *ro = rr->ro;
	uint64_t pos = 0;

	rr->pending = 1;
	while (pos < req->len && !rr->err) {
		uint64_t off = req->offset + pos, rem = req->len - pos, part = 0;
		struct ro_seg seg, nx;
		int r = 0;

		if (map_seg(ro, off, rem, &seg) < 0) {
			rr->err = -EIO;
			break;
		}
		switch (seg.kind) {
		case RO_ZERO:
			bd_iov_memset(req->iov, req->iovcnt, pos, 0, seg.len);
			break;
		case RO_UNALLOC: {
			uint64_t bsz = ro->backing ? bd_node_size(bd_child_node(ro->backing)) : 0;
			if (off < bsz)
				part = seg.len < bsz - off ? seg.len : bsz - off;
			if (part)
				r = sub_read(rr, ro->backing, off, part, pos, NULL);
			if (part < seg.len)
				bd_iov_memset(req->iov, req->iovcnt, pos + part, 0, seg.len - part);
			break;
		}
		case RO_DATA: {
			/* Merge the following segments that continue in the same file. */
			while (seg.len < rem &&
			       map_seg(ro, off + seg.len, rem - seg.len, &nx) == 0 &&
			       nx.kind == RO_DATA && nx.child == seg.child &&
			       nx.host == seg.host + seg.len && seg.len < (16u << 20))
				seg.len += nx.len;
			uint64_t fsz = ro->fsizes[seg.child];
			if (seg.host < fsz)
				part = seg.len < fsz - seg.host ? seg.len : fsz - seg.host;
			if (part)
				r = sub_read(rr, ro->files[seg.child], seg.host, part, pos, NULL);
			if (part < seg.len)
				bd_iov_memset(req->iov, req->iovcnt, pos + part, 0, seg.len - part);
			break;
		}
		case RO_COMPRESSED: {
			uint64_t fsz = ro->fsizes[seg.child];
			if (seg.host >= fsz) {
				r = -EIO;
				break;
			}
			part = fsz - seg.host < ro->comp_read ? fsz - seg.host : ro->comp_read;
			r = sub_read(rr, ro->files[seg.child], seg.host, part, pos, &seg);
			break;
		}
		}
		if (r < 0)
			rr->err = r;
		pos += seg.len;
	}
	if (--rr->pending == 0)
		rr_finish(rr);
}

/* ---- block status ---- */


static void bs_run(struct ro_req *rr);

static void bs_sub_done(struct bd_req *c, int ret)
{
	struct ro_req *rr = c->opaque;
	struct bd_req *req = rr->req;
	uint64_t got = 0;

	rr->sub_n = ret == 0 ? c->nr_extents : 0;
	bd_req_put(c);
	rr->pending--;
	if (ret < 0) {
		rr->err = ret;
		rr_finish(rr);
		return;
	}
	for (unsigned i = 0; i < rr->sub_n && got < rr->sub_len; i++) {
		uint64_t l = rr->sub_ext[i].length;
		uint32_t flags = rr->sub_ext[i].flags, depth;
		if (l > rr->sub_len - got)
			l = rr->sub_len - got;
		if (rr->sub_backing) {
			depth = rr->sub_ext[i].depth ? rr->sub_ext[i].depth + 1 : 0;
		} else {
			/* Flat data of this image: allocated here whatever the file says; the
			 * file only adds "reads as zeroes". */
			depth = 1;
			flags = BD_EXT_DATA | (flags & BD_EXT_ZERO);
		}
		if (!bd_req_add_extent(req, l, flags, depth))
			break;
		got += l;
	}
	if (got == 0) {
		rr->err = req->nr_extents ? 0 : -EIO;
		rr_finish(rr);
		return;
	}
	rr->pos += got;
	if (got < rr->sub_len) {
		rr_finish(rr);
		return;
	}
	bs_run(rr);
}

static int bs_sub(struct ro_req *rr, struct bd_child *child, uint64_t off, uint64_t len)
{
	struct bd_chan *cc = bd_child_chan(child, rr->ch);
	struct bd_req *c = bd_req_get(cc);
	int r;

	c->op = BD_OP_BLOCK_STATUS;
	c->offset = off;
	c->len = len;
	c->extents = rr->sub_ext;
	c->max_extents = RO_SUB_EXTENTS;
	c->cb = bs_sub_done;
	c->opaque = rr;
	rr->sub_len = len;
	rr->pending++;
	r = bd_submit(cc, c);
	if (r < 0) {
		rr->pending--;
		bd_req_put(c);
	}
	return r;
}

static void bs_run(struct ro_req *rr)
{
	struct bd_req *req = rr->req;
	struct ro_img *ro = rr->ro;

	for (;;) {
		uint64_t off = req->offset + rr->pos, rem = req->len - rr->pos;
		struct ro_seg seg;
		bool ok = true;
		int r;

		if (rr->pos == req->len || req->nr_extents >= req->max_extents ||
		    (req->nr_extents && (req->flags & BD_REQ_BS_ONE))) {
			rr_finish(rr);
			return;
		}
		if (map_seg(ro, off, rem, &seg) < 0) {
			rr->err = -EIO;
			rr_finish(rr);
			return;
		}
		switch (seg.kind) {
		case RO_ZERO:
			ok = bd_req_add_extent(req, seg.len, BD_EXT_ZERO, 1);
			break;
		case RO_COMPRESSED:
			ok = bd_req_add_extent(req, seg.len, BD_EXT_DATA, 1);
			break;
		case RO_UNALLOC: {
			uint64_t bsz = ro->backing ? bd_node_size(bd_child_node(ro->backing)) : 0;
			if (off >= bsz) {
				/* Zeroes past a short backing file belong to that layer (as
				 * QEMU counts them); without a backing nothing has them. */
				ok = bd_req_add_extent(req, seg.len, BD_EXT_ZERO, ro->backing ? 2 : 0);
				break;
			}
			rr->sub_backing = true;
			r = bs_sub(rr, ro->backing, off, seg.len < bsz - off ? seg.len : bsz - off);
			if (r < 0) {
				rr->err = r;
				rr_finish(rr);
			}
			return;
		}
		case RO_DATA: {
			uint64_t fsz = ro->fsizes[seg.child];
			if (seg.host >= fsz) {
				ok = bd_req_add_extent(req, seg.len, BD_EXT_DATA | BD_EXT_ZERO, 1);
				break;
			}
			if (!seg.recurse) {
				/* QEMU's rule: only flat data asks the file about zeroes. */
				ok = bd_req_add_extent(req, seg.len, BD_EXT_DATA, 1);
				break;
			}
			rr->sub_backing = false;
			r = bs_sub(rr, ro->files[seg.child], seg.host,
				   seg.len < fsz - seg.host ? seg.len : fsz - seg.host);
			if (r < 0) {
				rr->err = r;
				rr_finish(rr);
			}
			return;
		}
		}
		if (!ok) {
			rr_finish(rr);
			return;
		}
		rr->pos += seg.len;
	}
}

int ro_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct ro_img *ro = bd_node_priv(node);
	struct ro_req *rr = req->priv;

	memset(rr, 0, offsetof(struct ro_req, sub_ext));
	rr->req = req;
	rr->ro = ro;
	rr->ch = ch;
	rr->in_submit = true;
	switch (req->op) {
	case BD_OP_READ:
		ro_read(rr);
		break;
	case BD_OP_BLOCK_STATUS:
		req->nr_extents = 0;
		bs_run(rr);
		break;
	case BD_OP_FLUSH:
		bd_req_complete_later(req, 0);
		break;
	default:
		return -ENOTSUP;
	}
	rr->in_submit = false;
	return 0;
}
