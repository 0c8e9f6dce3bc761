/*
 * qcow2.c - the qcow2 format driver: the driver table and options, open (header, L1, refcounts,
 * backing file, load-snapshot), close, resize and describe, plus the helpers every part shares
 * (synchronous I/O on the file child, corruption reports).  open/close/resize/describe run on the
 * control thread with synchronous I/O on the file child; q2_corrupt() is also called on the
 * owner loop.
 *
 * The rest of the driver (docs/qcow2.md):
 *   qcow2-io.c        the per-request state machine (owner loop)
 *   qcow2-cache.c     the L2 table cache (owner loop)
 *   qcow2-alloc.c     in-memory refcounts, cluster allocation, metadata programs, pending frees
 *   qcow2-repair.c    open-time metadata walks: refcount repair, COPIED flags, reftable growth
 *   qcow2-snapshot.c  internal snapshots: create and delete
 *   qcow2-meta.c      pure metadata parsing and checks; qcow2-create.c blockdev-create
 *
 * Threading (docs/qcow2.md): the first loop that submits a request becomes the owner; requests
 * submitted on other loops are handed to it with bd_loop_send() and completed back on their own
 * loop.  All metadata (L1, L2 cache, in-memory refcounts) is therefore touched by one thread
 * only, without locks.
 */
#include "formats/qcow2-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define Q2_DEFAULT_L2_CACHE (32u << 20)

/* ============================================================================================
 * Synchronous helpers (control thread)
 */
int q2_sync_read(struct bd_node *file, uint64_t off, void *buf, uint64_t len)
{
	return bd_node_io_sync(file, BD_OP_READ, off, len, buf, 0);
}

int q2_sync_write(struct bd_node *file, uint64_t off, const void *buf, uint64_t len)
{
	return bd_node_io_sync(file, BD_OP_WRITE, off, len, (void *)(uintptr_t)buf, 0);
}

int q2_sync_flush(struct bd_node *file)
{
	return bd_node_io_sync(file, BD_OP_FLUSH, 0, 0, NULL, 0);
}

struct bd_node *q2_fnode(struct q2 *s)
{
	return bd_child_node(s->file);
}

/* ============================================================================================
 * Corruption reports
 */
static void hdr_write_done(struct bd_req *c, int ret)
{
	bd_req_put(c);
}

void q2_corrupt(struct q2 *s, uint64_t off, uint64_t size, bool fatal, const char *fmt,
		...)
{
	char msg[512];
	va_list ap;
	json_t *d;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bd_log(BD_LOG_ERROR, "qcow2 node '%s': image is corrupt: %s%s", bd_node_name(s->node),
	       msg, fatal ? "; further writes refused" : "");
	d = json_pack("{s:s,s:s,s:s,s:b}", "device", "", "node-name", bd_node_name(s->node), "msg",
		      msg, "fatal", fatal);
	if (d && off != UINT64_MAX) {
		json_object_set_new(d, "offset", json_integer((json_int_t)off));
		json_object_set_new(d, "size", json_integer((json_int_t)size));
	}
	bd_event_emit("BLOCK_IMAGE_CORRUPTED", d);
	if (!fatal || s->broken)
		return;
	s->broken = true;
	/* Mark the image corrupt on disk (v3), as QEMU does: best effort, from the owner loop. */
	if (s->writable && s->h.version >= 3 && s->och && bd_loop_current() == s->owner) {
		struct bd_chan *fc = bd_child_chan(s->file, s->och);
		struct bd_req *c = bd_req_get(fc);
		static struct iovec iov;
		struct q2_header h = s->h;

		h.incompatible |= Q2_INCOMPAT_CORRUPT;
		memset(s->hdr_buf, 0, sizeof(s->hdr_buf));
		q2_header_write_fixed(&h, s->hdr_buf);
		iov.iov_base = s->hdr_buf + 72;
		iov.iov_len = 8;
		c->op = BD_OP_WRITE;
		c->offset = 72;
		c->len = 8;
		c->iov = &iov;
		c->iovcnt = 1;
		c->cb = hdr_write_done;
		if (bd_submit(fc, c) < 0)
			bd_req_put(c);
	}
}

/* ---- backing file ---- */

static const char *file_name_of(struct bd_node *file)
{
	json_t *o = bd_node_options(file);
	json_t *f = o ? json_object_get(o, "filename") : NULL;
	return f && json_is_string(f) ? json_string_value(f) : NULL;
}

static int open_backing(struct bd_node *node, struct q2 *s, json_t *opts, struct bd_err *err)
{
	json_t *b = json_object_get(opts, "backing");
	char path[PATH_MAX + Q2_MAX_BACKING_NAME + 2];
	const char *fmt = NULL;

	if (b && (json_is_null(b) || (json_is_string(b) && !json_string_value(b)[0]))) {
		bd_opts_mark_used(opts, "backing");
		return 0; /* explicitly none */
	}
	if (b) {
		s->backing = bd_node_open_child(node, opts, "backing", false, err);
		if (!s->backing)
			return err && err->code ? err->code : -EINVAL;
		return 0;
	}
	if (!s->h.backing_file_offset)
		return 0;
	const char *bf = s->h.backing_file;
	if (!strncmp(bf, "json:", 5) || strstr(bf, "://") ||
	    (strchr(bf, ':') && bf[0] != '/' && strncmp(bf, "file:", 5)))
		return bd_err_set(err, -ENOTSUP,
				  "Backing file '%s' is not a plain file name: give the 'backing' "
				  "option explicitly",
				  bf);
	if (!strncmp(bf, "file:", 5))
		bf += 5;
	if (bf[0] == '/') {
		snprintf(path, sizeof(path), "%s", bf);
	} else {
		const char *img = file_name_of(q2_fnode(s));
		const char *slash = img ? strrchr(img, '/') : NULL;
		if (slash)
			snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - img), img, bf);
		else
			snprintf(path, sizeof(path), "%s", bf);
	}
	if (s->h.has_backing_fmt) {
		fmt = s->h.backing_fmt;
	} else {
		/* Probe: qcow2 or raw. */
		unsigned char magic[4] = {0};
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return bd_err_set(err, -errno, "Could not open backing file '%s': %s", path,
					  strerror(errno));
		ssize_t n = pread(fd, magic, 4, 0);
		close(fd);
		fmt = (n == 4 && q2_be32(magic) == Q2_MAGIC) ? "qcow2" : "raw";
	}
	if (!bd_driver_find(fmt))
		return bd_err_set(err, -ENOTSUP, "Unknown backing file format '%s'", fmt);
	json_t *tmp = json_pack("{s:{s:s,s:b,s:{s:s,s:s}}}", "backing", "driver", fmt, "read-only",
				1, "file", "driver", "file", "filename", path);
	if (!tmp)
		return bd_err_set(err, -ENOMEM, "out of memory");
	s->backing = bd_node_open_child(node, tmp, "backing", true, err);
	json_decref(tmp);
	if (!s->backing)
		return err && err->code ? err->code : -EINVAL;
	return 0;
}

/* ---- open ---- */

/* Read-only view of an internal snapshot: its L1 table and disk size replace the active
 * ones. */
static int load_snapshot(struct q2 *s, const char *want, uint64_t fsize, struct bd_err *err)
{
	int k = -1;

	for (unsigned i = 0; i < s->nsnaps && k < 0; i++)
		if (!strcmp(s->snaps[i].id, want))
			k = (int)i;
	for (unsigned i = 0; i < s->nsnaps && k < 0; i++)
		if (!strcmp(s->snaps[i].name, want))
			k = (int)i;
	if (k < 0)
		return bd_err_set(err, -ENOENT, "Can't find snapshot '%s'", want);
	struct q2_snapinfo *sn = &s->snaps[k];
	uint64_t size = sn->disk_size ? sn->disk_size : s->h.size;
	if (q2_l1_needed_ext(size, s->cb, s->h.extl2) > sn->l1_size)
		return bd_err_set(err, -EIO, "Image is corrupt: snapshot '%s' has a short L1 table",
				  want);
	uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof(*l1));
	uint8_t *raw = malloc(sn->l1_size ? (size_t)sn->l1_size * 8 : 1);
	int r = 0;
	if (!l1 || !raw) {
		free(l1);
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	if (sn->l1_size)
		r = q2_sync_read(q2_fnode(s), sn->l1_off, raw, (uint64_t)sn->l1_size * 8);
	for (uint32_t i = 0; r == 0 && i < sn->l1_size; i++) {
		uint64_t l2off;
		l1[i] = q2_be64(raw + 8 * i);
		if (q2_l1e_check(l1[i], s->cb, fsize, &l2off) < 0)
			r = -EIO;
	}
	free(raw);
	if (r < 0) {
		free(l1);
		return bd_err_set(err, r, "Could not load snapshot '%s': %s", want,
				  r == -EIO ? "invalid L1 table" : strerror(-r));
	}
	free(s->l1);
	s->l1 = l1;
	s->l1_size = sn->l1_size;
	s->size = size;
	s->loaded_snap = k;
	return 0;
}

/* The fixed metadata regions, the refcount blocks and the active L2 tables must not overlap
 * one another (refcount loops, a table inside the header, ...). */
static int check_layout(struct q2 *s, char *what, size_t len)
{
	struct q2_region fixed[] = {
		{0, s->cs, "header"},
		{s->h.l1_table_offset, (uint64_t)s->l1_size * 8, "active L1 table"},
		{s->h.refcount_table_offset, (uint64_t)s->h.refcount_table_clusters << s->cb,
		 "refcount table"},
		{s->h.snapshots_offset, s->h.nb_snapshots ? s->snap_bytes : 0, "snapshot table"},
		{s->h.bitmap_dir_offset, s->h.has_bitmaps ? s->h.bitmap_dir_size : 0,
		 "bitmap directory"},
	};
	unsigned nf = 5;
	int i;

	for (unsigned a = 1; a < nf; a++) {
		i = q2_overlaps(fixed, a, fixed[a].start, fixed[a].len);
		if (i >= 0 && fixed[a].len) {
			snprintf(what, len, "the %s overlaps the %s", fixed[a].what, fixed[i].what);
			return -EIO;
		}
	}
	for (uint64_t r = 0; r < s->reft_n; r++) {
		if (!s->reft[r])
			continue;
		i = q2_overlaps(fixed, nf, s->reft[r], s->cs);
		if (i >= 0) {
			snprintf(what, len, "refcount block %" PRIu64 " overlaps the %s", r,
				 fixed[i].what);
			return -EIO;
		}
	}
	for (uint32_t k = 0; k < s->l1_size; k++) {
		uint64_t l2 = s->l1[k] & Q2_OFFSET_MASK;
		if (!l2)
			continue;
		i = q2_overlaps(fixed, nf, l2, s->cs);
		if (i >= 0) {
			snprintf(what, len, "L2 table %" PRIu32 " overlaps the %s", k, fixed[i].what);
			return -EIO;
		}
		/* A refcount block used as an L2 table would make guest data refcounts. */
		for (uint64_t r = 0; r < s->reft_n; r++) {
			if (s->reft[r] == l2) {
				snprintf(what, len, "L2 table %" PRIu32 " is refcount block %" PRIu64,
					 k, r);
				return -EIO;
			}
		}
	}
	return 0;
}

static void q2_free_mem(struct q2 *s)
{
	if (s->slots) {
		for (unsigned i = 0; i < s->nslots; i++)
			free(s->slots[i].tab);
		free(s->slots);
	}
	if (s->rb) {
		for (uint64_t i = 0; i < s->reft_n; i++)
			free(s->rb[i]);
		free(s->rb);
	}
	free(s->reft);
	free(s->l1);
	free(s->rbd);
	free(s->frees);
	free(s->dc_buf);
	free(s->snaps);
	s->snaps = NULL;
	s->nsnaps = 0;
	if (s->freeq) {
		free(s->freeq->iov);
		free(s->freeq->miov);
		free(s->freeq);
	}
	if (s->wbq) {
		free(s->wbq->miov);
		free(s->wbq->mbuf);
		free(s->wbq->wb_slots);
		free(s->wbq);
		s->wbq = NULL;
	}
	if (s->grpq) {
		free(s->grpq->wb_slots);
		free(s->grpq->iov);
		free(s->grpq->miov);
		free(s->grpq->mbuf);
		free(s->grpq);
	}
	s->slots = NULL;
	s->rb = NULL;
	s->reft = NULL;
	s->l1 = NULL;
	s->rbd = NULL;
	s->frees = NULL;
	s->dc_buf = NULL;
	s->freeq = NULL;
	s->grpq = NULL;
}

/* [control] What a writable open (or a reopen to read-write) does: repair a dirty image, keep
 * the bitmaps (marked in use), clear unknown autoclear bits, set the dirty bit for lazy
 * refcounts, reserve room in the file.  s->writable is already true. */
int q2_make_writable(struct q2 *s, bool has_lazy_opt, bool lazy_opt, uint64_t fsize,
		     struct bd_err *err)
{
	int r;

	/* Everything up to the file's end may hold old bytes (also a crash's leaks). */
	if (fsize)
		q2_zero_mark(s, (fsize - 1) >> s->cb);
	bool hdr_dirty = false;
	if (s->h.incompatible & Q2_INCOMPAT_DIRTY) {
		r = q2_repair_refcounts(s, fsize, err);
		if (r < 0)
			return r;
		s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
		hdr_dirty = true;
	}
	/* Persistent bitmaps stay (consistent extension, every bitmap marked in_use:
	 * "not synced", as QEMU marks them while it has the image open); unknown
	 * autoclear features are cleared, the spec's rule for writers that do not
	 * know them. */
	uint64_t keep = 0;
	if (s->h.has_bitmaps && (s->h.autoclear & Q2_AUTOCLEAR_BITMAPS)) {
		r = q2_bitmaps_walk(s, fsize, NULL, err);
		if (r < 0)
			return r;
		keep = Q2_AUTOCLEAR_BITMAPS;
	}
	if (s->h.autoclear != keep) {
		s->h.autoclear = keep;
		hdr_dirty = true;
	}
	bool want_lazy = has_lazy_opt ? lazy_opt
				      : !!(s->h.compatible & Q2_COMPAT_LAZY_REFCOUNTS);
	if (want_lazy && s->h.version >= 3) {
		s->lazy = true;
		s->h.incompatible |= Q2_INCOMPAT_DIRTY;
		hdr_dirty = true;
	}
	if (hdr_dirty) {
		r = q2_write_header_fixed(s, err);
		if (r < 0)
			return r;
	}
	r = q2_prepare_growth(s, err);
	if (r < 0)
		return r;
	q2_zero_mark(s, q2_alloc_end_cluster(s) - 1);
	return 0;
}

static int q2_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		   struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	uint64_t l2cache = 0, fsize, hlen;
	bool lazy_opt = false, has_lazy_opt = false, b;
	const char *str, *load_snap = NULL;
	uint8_t *hbuf = NULL;
	char msg[512];
	int r;

	memset(s, 0, sizeof(*s));
	s->node = node;
	s->writable = !bd_node_read_only(node);

	r = bd_opts_size(opts, "l2-cache-size", &l2cache, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == -ENOENT) {
		uint64_t cache;
		r = bd_opts_size(opts, "cache-size", &cache, err);
		if (r < 0 && r != -ENOENT)
			return r;
		if (r == 0)
			l2cache = cache;
	}
	uint64_t ignored;
	r = bd_opts_size(opts, "refcount-cache-size", &ignored, err); /* all refcounts in memory */
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_u64(opts, "cache-clean-interval", &ignored, err);
	if (r < 0 && r != -ENOENT)
		return r;
	s->l2wb = true;
	r = bd_opts_bool(opts, "l2-writeback", &s->l2wb, err);
	if (r < 0 && r != -ENOENT)
		return r;
	uint64_t wb_secs = 5;
	r = bd_opts_u64(opts, "l2-writeback-interval", &wb_secs, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (wb_secs > 3600)
		return bd_err_set(err, -EINVAL,
				  "l2-writeback-interval must be 0 to 3600 seconds (got %" PRIu64 ")",
				  wb_secs);
	s->wb_interval_ns = wb_secs * 1000000000ull;
	r = bd_opts_bool(opts, "lazy-refcounts", &lazy_opt, err);
	if (r < 0 && r != -ENOENT)
		return r;
	has_lazy_opt = r == 0;
	s->pass_discard_request = bd_node_common(node)->discard == BD_DISCARD_UNMAP;
	r = bd_opts_bool(opts, "pass-discard-request", &s->pass_discard_request, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(opts, "pass-discard-other", &s->pass_discard_other, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(opts, "pass-discard-snapshot", &b, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_str(opts, "overlap-check", &str, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == 0 && strcmp(str, "none") && strcmp(str, "constant") && strcmp(str, "cached") &&
	    strcmp(str, "all"))
		return bd_err_set(err, -EINVAL, "Unsupported value '%s' for qcow2 option "
						"'overlap-check'", str);
	r = bd_opts_str(opts, "load-snapshot", &load_snap, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (load_snap && !bd_node_read_only(node))
		return bd_err_set(err, -EINVAL, "load-snapshot requires read-only=on");
	r = bd_opts_bool(opts, "discard-no-unref", &b, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == 0 && b)
		return bd_err_set(err, -ENOTSUP, "discard-no-unref is not supported");

	s->file = bd_node_open_child(node, opts, "file", true, err);
	if (!s->file)
		return err && err->code ? err->code : -EINVAL;
	fsize = bd_node_size(q2_fnode(s));
	s->orig_file_size = fsize;

	/* Header: the first cluster (at most 2 MiB). */
	hlen = fsize < (1u << Q2_MAX_CLUSTER_BITS) ? fsize : (1u << Q2_MAX_CLUSTER_BITS);
	if (hlen < Q2_V2_HEADER_LEN)
		return bd_err_set(err, -EINVAL, "Image is not in qcow2 format");
	hbuf = malloc(hlen);
	if (!hbuf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(q2_fnode(s), 0, hbuf, hlen);
	if (r < 0) {
		free(hbuf);
		return bd_err_set(err, r, "Could not read the qcow2 header: %s", strerror(-r));
	}
	r = q2_header_parse(hbuf, hlen, fsize, &s->h, msg, sizeof(msg));
	free(hbuf);
	if (r < 0) {
		if (r == -EINVAL && strcmp(msg, "Image is not in qcow2 format"))
			q2_corrupt(s, UINT64_MAX, 0, true, "%s", msg);
		return bd_err_set(err, r, "%s", msg);
	}
	s->cb = s->h.cluster_bits;
	s->cs = 1ull << s->cb;
	s->esz = s->h.extl2 ? 16 : 8;
	s->l2n = s->cs / s->esz;
	s->l2shift = s->cb + (uint32_t)__builtin_ctzll(s->l2n);
	s->epb = q2_rb_entries(s->cb, s->h.refcount_order);
	s->size = s->h.size;
	s->l1_size = s->h.l1_size;

	if (s->writable && (s->h.incompatible & Q2_INCOMPAT_CORRUPT))
		return bd_err_set(err, -EACCES,
				  "qcow2: Image is corrupt; cannot be opened read/write");
	if (s->writable && has_lazy_opt && lazy_opt && s->h.version < 3)
		return bd_err_set(err, -EINVAL,
				  "Lazy refcounts require a qcow2 image with at least qemu 1.1 "
				  "compatibility level");

	/* L1 table. */
	s->l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(*s->l1));
	if (!s->l1)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (s->l1_size) {
		uint8_t *raw = malloc((size_t)s->l1_size * 8);
		if (!raw)
			return bd_err_set(err, -ENOMEM, "out of memory");
		r = q2_sync_read(q2_fnode(s), s->h.l1_table_offset, raw, (uint64_t)s->l1_size * 8);
		if (r < 0) {
			free(raw);
			r = bd_err_set(err, r, "Could not read the L1 table: %s", strerror(-r));
			goto fail;
		}
		for (uint32_t i = 0; i < s->l1_size; i++) {
			uint64_t e = q2_be64(raw + 8 * i), l2off;
			if (q2_l1e_check(e, s->cb, fsize, &l2off) < 0) {
				free(raw);
				q2_corrupt(s, s->h.l1_table_offset + 8ull * i, 8, true,
					   "L1 entry %" PRIu32 " is invalid (0x%016" PRIx64 ")", i, e);
				r = bd_err_set(err, -EIO,
					       "Image is corrupt: L1 entry %" PRIu32
					       " is invalid (0x%016" PRIx64 ")",
					       i, e);
				goto fail;
			}
			s->l1[i] = e;
		}
		free(raw);
	}

	r = q2_load_refcounts(s, fsize, err);
	if (r < 0)
		goto fail;
	r = q2_load_snapshots(s, fsize, NULL, err);
	if (r < 0)
		goto fail;
	/* Metadata that overlaps other metadata: refuse (a hostile image). */
	{
		char what[160];
		if (check_layout(s, what, sizeof(what)) < 0) {
			q2_corrupt(s, UINT64_MAX, 0, true, "%s", what);
			r = bd_err_set(err, -EIO, "Image is corrupt: %s", what);
			goto fail;
		}
	}
	s->loaded_snap = -1;
	if (load_snap) {
		r = load_snapshot(s, load_snap, fsize, err);
		if (r < 0)
			goto fail;
	}

	if (s->writable) {
		r = q2_make_writable(s, has_lazy_opt, lazy_opt, fsize, err);
		if (r < 0)
			goto fail;
	}

	r = open_backing(node, s, opts, err);
	if (r < 0)
		goto fail;

	/* L2 cache: QEMU's default covers the whole disk up to 32 MiB of tables. */
	if (!l2cache) {
		l2cache = q2_l1_needed_ext(s->size, s->cb, s->h.extl2) * s->cs;
		if (l2cache > Q2_DEFAULT_L2_CACHE)
			l2cache = Q2_DEFAULT_L2_CACHE;
	}
	s->nslots = (unsigned)(l2cache / s->cs);
	if (s->nslots < Q2_MIN_SLOTS)
		s->nslots = Q2_MIN_SLOTS;
	s->slots = calloc(s->nslots, sizeof(*s->slots));
	if (!s->slots) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < s->nslots; i++) {
		s->slots[i].tab = bd_io_alloc(s->cs);
		if (!s->slots[i].tab) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	s->dc_buf = malloc(s->cs);
	s->freeq = calloc(1, sizeof(*s->freeq));
	if (!s->dc_buf || !s->freeq) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	s->freeq->s = s;
	s->freeq->slot = -1;
	s->wbq = calloc(1, sizeof(*s->wbq));
	if (!s->wbq) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	s->wbq->s = s;
	s->wbq->slot = -1;
	s->wbq->is_wbt = true;
	s->wbq->st = ST_START; /* idle */
	s->free_hint = 1;

	memset(limits, 0, sizeof(*limits));
	limits->size = s->size;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_FLUSH) |
		      BD_OP_BIT(BD_OP_BLOCK_STATUS) | BD_OP_BIT(BD_OP_DISCARD);
	/* Write-zeroes sets zero flags (v3; subcluster zero bits with extended L2 entries). */
	if (s->h.version >= 3)
		limits->ops |= BD_OP_BIT(BD_OP_WRITE_ZEROES);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = 16u << 20;
	limits->max_discard = 1u << 30;
	limits->opt_transfer = s->cs;
	limits->native_fua = false;
	limits->zeroes_unmap = true;
	limits->can_resize = s->writable;
	/* Compressed writes (the compress filter): whole clusters, not with extended L2 entries. */
	limits->compress_cluster = s->writable && s->esz == 8 ? (uint32_t)s->cs : 0;
	return 0;
fail:
	q2_free_mem(s);
	return r;
}

/* Wait on the control thread until the free program is idle. */
static void owner_idle_check(void *arg)
{
	(void)arg;
}

void q2_quiesce(struct q2 *s)
{
	struct bd_loop *owner = atomic_load(&s->owner);

	while (owner && atomic_load(&s->free_running)) {
		bd_loop_call(owner, owner_idle_check, NULL);
		usleep(1000);
	}
}

struct freeze_ctx {
	struct q2 *s;
	bool on, idle;
};

static void freeze_msg(void *arg)
{
	struct freeze_ctx *c = arg;
	struct q2 *s = c->s;

	if (c->on) {
		s->frozen = true;
		c->idle = s->active == 0 && !s->lock_owner && !atomic_load(&s->free_running);
		return;
	}
	s->frozen = false;
	if (!s->barrier)
		q2_wake_stalled(s);
}

static void freeze_call(struct q2 *s, struct freeze_ctx *c)
{
	struct bd_loop *owner = atomic_load(&s->owner);

	if (owner && owner != bd_loop_current())
		bd_loop_call(owner, freeze_msg, c);
	else
		freeze_msg(c);
}

void q2_freeze(struct q2 *s)
{
	struct freeze_ctx c = {.s = s, .on = true};

	/* Without an owner yet, make the default I/O loop the owner, so that a request that
	 * arrives now meets the frozen flag there. */
	if (!atomic_load(&s->owner) && bd_io_loop_count() > 0) {
		struct bd_loop *expected = NULL;
		atomic_compare_exchange_strong(&s->owner, &expected, bd_io_loop_get(0));
	}
	for (;;) {
		freeze_call(s, &c);
		if (c.idle)
			break;
		usleep(200);
	}
	/* The control thread's metadata work reads and writes tables on disk: write the dirty
	 * ones first (on failure the node is broken and refuses writes). */
	q2_wb_sync(s);
}

void q2_thaw(struct q2 *s)
{
	struct freeze_ctx c = {.s = s, .on = false};
	freeze_call(s, &c);
}

/* Apply pending frees synchronously (close). */
void q2_apply_frees_sync(struct q2 *s)
{
	if (!s->nfrees)
		return;
	if (q2_sync_flush(q2_fnode(s)) < 0)
		return;
	for (unsigned i = 0; i < s->nfrees; i++) {
		struct q2_free *f = &s->frees[i];
		for (uint64_t c = f->off >> s->cb; c < (f->off + f->len + s->cs - 1) >> s->cb; c++) {
			uint64_t v = q2_rc_get(s, c);
			if (v)
				q2_rc_set(s, c, v - 1);
		}
	}
	s->nfrees = 0;
	for (unsigned i = 0; i < s->rbd_n; i++)
		q2_sync_write(q2_fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx], s->cs);
	s->rbd_n = 0;
	q2_sync_flush(q2_fnode(s));
}

/* [control] Give back the room reserved at open (never below the original size). */
void q2_give_back_room(struct q2 *s)
{
	struct bd_err err = {0};
	uint64_t end = q2_alloc_end_cluster(s) << s->cb;

	if (end < s->orig_file_size)
		end = s->orig_file_size;
	if (end < bd_node_size(q2_fnode(s)) && bd_node_limits(q2_fnode(s))->can_resize &&
	    bd_node_resize(q2_fnode(s), end, &err) < 0)
		bd_log(BD_LOG_WARN, "qcow2 '%s': %s", bd_node_name(s->node), err.msg);
}

static void q2_close(struct bd_node *node)
{
	struct q2 *s = bd_node_priv(node);

	q2_wb_stop(s);
	q2_quiesce(s);
	if (s->writable && !s->broken) {
		struct bd_err err = {0};
		q2_wb_sync(s);
		q2_apply_frees_sync(s);
		if (s->lazy) {
			s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
			if (q2_write_header_fixed(s, &err) < 0)
				bd_log(BD_LOG_WARN, "qcow2 '%s': %s", bd_node_name(node), err.msg);
		}
		q2_give_back_room(s);
	}
	q2_free_mem(s);
}

/* ---- blockdev-snapshot: the node an external snapshot puts under this one (control) ---- */

static int q2_attach_backing(struct bd_node *node, struct bd_child *child, struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);

	if (s->backing)
		return bd_err_set(err, -EEXIST, "The overlay already has a backing image");
	if (s->loaded_snap >= 0)
		return bd_err_set(err, -EINVAL, "Node '%s' shows an internal snapshot",
				  bd_node_name(node));
	q2_freeze(s);
	s->backing = child;
	q2_thaw(s);
	return 0;
}

/* ---- resize (control thread; requests held back by q2_freeze) ---- */

static int resize_frozen(struct q2 *s, uint64_t new_size, uint64_t need, struct bd_err *err);

static int q2_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	uint64_t need = q2_l1_needed_ext(new_size, s->cb, s->h.extl2);
	int r;

	q2_freeze(s);
	r = resize_frozen(s, new_size, need, err);
	q2_thaw(s);
	return r;
}

static int resize_frozen(struct q2 *s, uint64_t new_size, uint64_t need, struct bd_err *err)
{
	int r;

	if (s->broken)
		return bd_err_set(err, -EIO, "Image is corrupt; cannot be resized");
	if (new_size % 512)
		return bd_err_set(err, -EINVAL, "The new size must be a multiple of 512");
	if (new_size < s->size) {
		/* Shrink only when nothing is allocated beyond the new end. */
		uint8_t *l2 = malloc(s->cs);
		if (!l2)
			return bd_err_set(err, -ENOMEM, "out of memory");
		uint64_t first_c = (new_size + s->cs - 1) >> s->cb;
		for (uint64_t c = first_c; c < (s->size + s->cs - 1) >> s->cb;) {
			uint64_t l1i = c / s->l2n, l2off = s->l1[l1i] & Q2_OFFSET_MASK;
			if (!l2off) {
				c = (l1i + 1) * s->l2n;
				continue;
			}
			r = q2_sync_read(q2_fnode(s), l2off, l2, s->cs);
			if (r < 0) {
				free(l2);
				return bd_err_set(err, r, "Could not read an L2 table: %s",
						  strerror(-r));
			}
			for (; c < (l1i + 1) * s->l2n && c < (s->size + s->cs - 1) >> s->cb; c++) {
				const uint8_t *ent = l2 + s->esz * (c % s->l2n);
				if (q2_be64(ent) || (s->esz == 16 && q2_be64(ent + 8))) {
					free(l2);
					return bd_err_set(err, -ENOTSUP,
							  "Cannot shrink: data is allocated beyond the "
							  "new size (at guest offset 0x%" PRIx64 ")",
							  c << s->cb);
				}
			}
		}
		free(l2);
		if (new_size & (s->cs - 1) && first_c > 0) {
			/* The last cluster stays; a later grow must read zeroes there: refuse
			 * unless that cluster is unallocated too. */
			uint64_t c = first_c - 1;
			uint64_t l2off = s->l1[c / s->l2n] & Q2_OFFSET_MASK;
			if (l2off) {
				uint8_t e[16] = {0};
				r = q2_sync_read(q2_fnode(s), l2off + s->esz * (c % s->l2n), e, s->esz);
				if (r < 0 || q2_be64(e) || q2_be64(e + 8))
					return bd_err_set(err, -ENOTSUP,
							  "Cannot shrink to a size inside an allocated "
							  "cluster");
			}
		}
	}
	if (need > s->l1_size) {
		/* A bigger L1 table at the end of the file. */
		uint64_t bytes = need * 8, nclusters = (bytes + s->cs - 1) >> s->cb;
		uint64_t want =
			q2_max_file_bytes(s, (q2_alloc_end_cluster(s) + nclusters + 1) << s->cb);
		s->size = new_size; /* for the bound */
		r = q2_grow_reftable(s, want, err);
		if (r < 0)
			return r;
		if (bd_node_size(q2_fnode(s)) < want && bd_node_limits(q2_fnode(s))->can_resize) {
			r = bd_node_resize(q2_fnode(s), want, err);
			if (r < 0)
				return r;
		}
		uint64_t c = q2_alloc_end_cluster(s);
		for (uint64_t i = 0; i < nclusters; i++) {
			if ((c + i) / s->epb >= s->reft_n || !s->rb[(c + i) / s->epb])
				return bd_err_set(err, -ENOSPC,
						  "No refcount block for the new L1 table");
		}
		uint8_t *nl1 = calloc(1, nclusters << s->cb);
		uint64_t *ml1 = calloc(need, sizeof(*ml1));
		if (!nl1 || !ml1) {
			free(nl1);
			free(ml1);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		memcpy(ml1, s->l1, (size_t)s->l1_size * 8);
		for (uint64_t i = 0; i < need; i++)
			q2_put_be64(nl1 + 8 * i, ml1[i]);
		for (uint64_t i = 0; i < nclusters; i++)
			q2_rc_set(s, c + i, 1);
		for (unsigned i = 0; i < s->rbd_n; i++)
			q2_sync_write(q2_fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx],
				      s->cs);
		s->rbd_n = 0;
		r = q2_sync_write(q2_fnode(s), c << s->cb, nl1, nclusters << s->cb);
		free(nl1);
		if (r == 0)
			r = q2_sync_flush(q2_fnode(s));
		if (r < 0) {
			free(ml1);
			return bd_err_set(err, r, "Could not write the new L1 table: %s",
					  strerror(-r));
		}
		uint64_t old_off = s->h.l1_table_offset, old_bytes = (uint64_t)s->l1_size * 8;
		s->h.l1_table_offset = c << s->cb;
		s->h.l1_size = (uint32_t)need;
		s->h.size = new_size;
		r = q2_write_header_fixed(s, err);
		if (r < 0) {
			free(ml1);
			return r;
		}
		free(s->l1);
		s->l1 = ml1;
		s->l1_size = (uint32_t)need;
		if (old_bytes) {
			for (uint64_t cc = old_off >> s->cb;
			     cc < (old_off + old_bytes + s->cs - 1) >> s->cb; cc++) {
				uint64_t v = q2_rc_get(s, cc);
				if (v)
					q2_rc_set(s, cc, v - 1);
			}
			for (unsigned i = 0; i < s->rbd_n; i++)
				q2_sync_write(q2_fnode(s), s->reft[s->rbd[i].idx],
					      s->rb[s->rbd[i].idx], s->cs);
			s->rbd_n = 0;
			q2_sync_flush(q2_fnode(s));
		}
		s->free_hint = 1;
		return 0;
	}
	s->h.size = new_size;
	r = q2_write_header_fixed(s, err);
	if (r < 0)
		return r;
	s->size = new_size;
	if (new_size > s->size || 1) {
		uint64_t want = q2_max_file_bytes(s, q2_alloc_end_cluster(s) << s->cb);
		r = q2_grow_reftable(s, want, err);
		if (r < 0)
			return r;
		if (bd_node_size(q2_fnode(s)) < want && bd_node_limits(q2_fnode(s))->can_resize)
			return bd_node_resize(q2_fnode(s), want, err);
	}
	return 0;
}

static void q2_describe(struct bd_node *node, json_t *out)
{
	struct q2 *s = bd_node_priv(node);
	json_t *f = json_pack("{s:s,s:i,s:b,s:i,s:s}", "compat", s->h.version == 2 ? "0.10" : "1.1",
			      "cluster-size", (json_int_t)s->cs, "lazy-refcounts", s->lazy,
			      "refcount-bits", (json_int_t)(1u << s->h.refcount_order),
			      "compression-type", s->h.compression_type ? "zstd" : "zlib");
	if (f) {
		json_object_set_new(f, "corrupt", json_boolean(s->broken ||
							       (s->h.incompatible &
								Q2_INCOMPAT_CORRUPT)));
		json_object_set_new(out, "format-specific",
				    json_pack("{s:s,s:o}", "type", "qcow2", "data", f));
	}
	if (s->nsnaps) {
		json_t *list = json_array();
		for (unsigned i = 0; i < s->nsnaps; i++) {
			struct q2_snapinfo *sn = &s->snaps[i];
			json_array_append_new(
				list, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "id", sn->id, "name",
						sn->name, "vm-state-size", (json_int_t)sn->vm_state_size,
						"date-sec", (json_int_t)sn->date_sec, "date-nsec",
						(json_int_t)sn->date_nsec, "vm-clock-nsec",
						(json_int_t)sn->vm_clock_nsec, "disk-size",
						(json_int_t)(sn->disk_size ? sn->disk_size : s->h.size)));
		}
		json_object_set_new(out, "snapshots", list);
		if (s->loaded_snap >= 0)
			json_object_set_new(out, "loaded-snapshot",
					    json_string(s->snaps[s->loaded_snap].name));
	}
	if (s->h.backing_file_offset) {
		json_object_set_new(out, "backing_file", json_string(s->h.backing_file));
		if (s->h.has_backing_fmt)
			json_object_set_new(out, "backing_file_format",
					    json_string(s->h.backing_fmt));
	}
}

static const char *const q2_overlap_values[] = {"none", "constant", "cached", "all", NULL};

static const struct bd_opt_desc q2_options[] = {
	{"file", BD_OPT_CHILD, true, NULL, "the node holding the image"},
	{"backing", BD_OPT_CHILD, false, NULL,
	 "the backing node (null: none; default: the file named in the image)"},
	{"l2-cache-size", BD_OPT_SIZE, false, NULL,
	 "L2 table cache size in bytes (default: enough for the whole disk, at most 32 MiB)"},
	{"cache-size", BD_OPT_SIZE, false, NULL, "same as l2-cache-size here"},
	{"refcount-cache-size", BD_OPT_SIZE, false, NULL,
	 "accepted for compatibility: refcounts are kept in memory whole"},
	{"cache-clean-interval", BD_OPT_INT, false, NULL, "accepted, ignored"},
	{"l2-writeback", BD_OPT_BOOL, false, NULL,
	 "allocating writes leave their L2/L1 updates in the cache, written at flush (default on)"},
	{"l2-writeback-interval", BD_OPT_INT, false, NULL,
	 "seconds after which dirty L2/L1 tables are written without a flush (default 5, 0 off)"},
	{"lazy-refcounts", BD_OPT_BOOL, false, NULL,
	 "postpone refcount ordering (image marked dirty while open; v3 only)"},
	{"pass-discard-request", BD_OPT_BOOL, false, NULL,
	 "discard freed clusters in the file on guest discard (default: discard=unmap)"},
	{"pass-discard-snapshot", BD_OPT_BOOL, false, NULL, "accepted, ignored"},
	{"pass-discard-other", BD_OPT_BOOL, false, NULL,
	 "discard clusters freed for other reasons (default off)"},
	{"overlap-check", BD_OPT_ENUM, false, q2_overlap_values,
	 "accepted; blockd always checks the active metadata"},
	{"discard-no-unref", BD_OPT_BOOL, false, NULL, "not supported (false only)"},
	{"load-snapshot", BD_OPT_STR, false, NULL,
	 "read-only: show the internal snapshot with this id or name instead of the active image"},
	{NULL},
};

const struct bd_driver bd_drv_qcow2 = {
	.name = "qcow2",
	.kind = BD_DRV_FORMAT,
	.help = "QEMU copy-on-write image, versions 2 and 3",
	.options = q2_options,
	.node_size = sizeof(struct q2),
	.req_size = sizeof(struct q2_req),
	.open = q2_open,
	.close = q2_close,
	.submit = q2_submit,
	.resize = q2_resize,
	.describe = q2_describe,
	.create = q2_create,
	.snapshot_create = q2_snapshot_create,
	.snapshot_delete = q2_snapshot_delete,
	.attach_backing = q2_attach_backing,
	.reopen = q2_reopen,
};
