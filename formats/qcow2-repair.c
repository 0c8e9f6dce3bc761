/*
 * qcow2-repair.c - open-time qcow2 metadata walks: loading the refcount blocks, counting every
 * reference (L1/L2 tables, snapshots, bitmaps) to rebuild the refcounts of a dirty image with
 * lazy refcounts, fixing OFLAG_COPIED flags, and growing the refcount table so that the file
 * can hold the worst case for the virtual size.
 *
 * Threading: control thread, synchronous I/O on the file child (bd_node_io_sync); called at open,
 * resize and snapshot create/delete, while no request runs.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ============================================================================================
 * Open-time metadata (control thread, synchronous I/O)
 */

/* Read all refcount blocks named by the refcount table. */
int q2_load_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err)
{
	uint64_t tbytes = (uint64_t)s->h.refcount_table_clusters << s->cb;
	uint8_t *raw = malloc(tbytes);
	int r;

	if (!raw)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(q2_fnode(s), s->h.refcount_table_offset, raw, tbytes);
	if (r < 0) {
		free(raw);
		return bd_err_set(err, r, "Could not read the refcount table: %s", strerror(-r));
	}
	s->reft_n = tbytes / 8;
	s->reft = calloc(s->reft_n, sizeof(*s->reft));
	s->rb = calloc(s->reft_n, sizeof(*s->rb));
	if (!s->reft || !s->rb) {
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	for (uint64_t i = 0; i < s->reft_n; i++) {
		uint64_t off;
		if (q2_reftable_check(q2_be64(raw + 8 * i), s->cb, fsize, &off) < 0) {
			uint64_t bad = q2_be64(raw + 8 * i);
			free(raw);
			q2_corrupt(s, s->h.refcount_table_offset + 8 * i, 8, true,
				   "Refcount table entry %" PRIu64 " is invalid (0x%016" PRIx64 ")", i,
				   bad);
			return bd_err_set(err, -EIO,
					  "Image is corrupt: refcount table entry %" PRIu64
					  " is invalid",
					  i);
		}
		s->reft[i] = off;
		if (!off)
			continue;
		s->rb[i] = malloc(s->cs);
		if (!s->rb[i]) {
			free(raw);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		r = q2_sync_read(q2_fnode(s), off, s->rb[i], s->cs);
		if (r < 0) {
			free(raw);
			return bd_err_set(err, r, "Could not read a refcount block: %s",
					  strerror(-r));
		}
	}
	free(raw);
	return 0;
}

int q2_write_header_fixed(struct q2 *s, struct bd_err *err)
{
	uint8_t buf[Q2_HEADER_LEN_WITH_CTYPE];
	uint32_t len = s->h.version == 2 ? Q2_V2_HEADER_LEN : s->h.header_length;
	int r;

	if (len > sizeof(buf))
		len = Q2_V3_HEADER_LEN; /* longer headers: only the known fields are rewritten */
	q2_header_write_fixed(&s->h, buf);
	r = q2_sync_write(q2_fnode(s), 0, buf, len);
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not update the qcow2 header: %s", strerror(-r));
	return 0;
}

/* Refcount accounting for repair: count references into an array. */
struct q2_refs {
	uint64_t *ref;
	uint64_t n;
};

static int refs_add_c(struct q2 *s, struct q2_refs *rf, uint64_t off, uint64_t len)
{
	uint64_t c0 = off >> s->cb, c1 = (off + len + s->cs - 1) >> s->cb;

	if (len == 0)
		return 0;
	if (c1 > rf->n) {
		uint64_t nn = c1 + 1024;
		uint64_t *p = realloc(rf->ref, nn * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + rf->n, 0, (nn - rf->n) * sizeof(*p));
		rf->ref = p;
		rf->n = nn;
	}
	for (uint64_t c = c0; c < c1; c++)
		rf->ref[c]++;
	return 0;
}

/* Count the references of one L1 table (its clusters, its L2 tables, their data). */
static int refs_l1(struct q2 *s, struct q2_refs *rf, uint64_t l1_off, uint32_t l1_size,
		   uint64_t fsize, struct bd_err *err)
{
	uint64_t bytes = (uint64_t)l1_size * 8;
	uint8_t *l1 = NULL, *l2 = malloc(s->cs);
	int r = 0;

	if (!l2)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (bytes) {
		l1 = malloc(bytes);
		if (!l1) {
			free(l2);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		r = q2_sync_read(q2_fnode(s), l1_off, l1, bytes);
		if (r < 0)
			goto out;
		r = refs_add_c(s, rf, l1_off, bytes);
	}
	for (uint32_t i = 0; r == 0 && i < l1_size; i++) {
		uint64_t l2off;
		if (q2_l1e_check(q2_be64(l1 + 8 * i), s->cb, fsize, &l2off) < 0) {
			r = bd_err_set(err, -EIO, "Invalid L1 entry %" PRIu32 " at 0x%" PRIx64, i,
				       l1_off);
			goto out;
		}
		if (!l2off)
			continue;
		r = refs_add_c(s, rf, l2off, s->cs);
		if (r == 0)
			r = q2_sync_read(q2_fnode(s), l2off, l2, s->cs);
		for (uint64_t k = 0; r == 0 && k < s->l2n; k++) {
			struct q2_l2e e;
			if (q2_l2e_decode(q2_be64(l2 + s->esz * k), s->cb, &e) < 0) {
				r = bd_err_set(err, -EIO, "Invalid L2 entry in the table at 0x%" PRIx64,
					       l2off);
				goto out;
			}
			if (e.type == Q2_C_NORMAL || e.type == Q2_C_ZERO_ALLOC)
				r = refs_add_c(s, rf, e.host, s->cs);
			else if (e.type == Q2_C_COMPRESSED)
				r = refs_add_c(s, rf, e.host & ~511ull, e.csize + (e.host & 511));
		}
	}
out:
	free(l1);
	free(l2);
	if (r < 0 && err && !err->code)
		bd_err_set(err, r, "Could not read metadata: %s", strerror(-r));
	return r;
}

struct snap_cb_ctx {
	struct q2 *s;
	struct q2_refs *rf;
	uint64_t fsize;
	struct bd_err *err;
	int r;
};

static void snap_cb(void *opaque, const struct q2_snapinfo *sn)
{
	struct snap_cb_ctx *c = opaque;
	if (c->r == 0)
		c->r = refs_l1(c->s, c->rf, sn->l1_off, sn->l1_size, c->fsize, c->err);
}

/* Keep the snapshot list (describe, load-snapshot). */
static void snap_keep(void *opaque, const struct q2_snapinfo *sn)
{
	struct q2 *s = opaque;
	struct q2_snapinfo *n = realloc(s->snaps, (s->nsnaps + 1) * sizeof(*n));
	if (!n)
		return;
	s->snaps = n;
	s->snaps[s->nsnaps++] = *sn;
}

/* Read the snapshot table (validating it); with rf, count its references too. */
int q2_load_snapshots(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err)
{
	uint64_t avail = fsize - s->h.snapshots_offset;
	uint64_t len = 64u << 10;
	char msg[256];
	int r;

	if (!s->h.nb_snapshots)
		return 0;
	/* The table's size is not stored: read more until it parses (at most 64 MiB). */
	for (;;) {
		if (len > avail)
			len = avail;
		uint8_t *buf = malloc(len ? len : 1);
		if (!buf)
			return bd_err_set(err, -ENOMEM, "out of memory");
		r = q2_sync_read(q2_fnode(s), s->h.snapshots_offset, buf, len);
		if (r < 0) {
			free(buf);
			return bd_err_set(err, r, "Could not read the snapshot table: %s",
					  strerror(-r));
		}
		struct snap_cb_ctx c = {s, rf, fsize, err, 0};
		free(s->snaps);
		s->snaps = NULL;
		s->nsnaps = 0;
		r = q2_snapshots_parse(buf, len, s->h.nb_snapshots, s->cb, fsize, &s->snap_bytes,
				       rf ? NULL : snap_keep, s, msg, sizeof(msg));
		if (r == 0 && rf)
			r = q2_snapshots_parse(buf, len, s->h.nb_snapshots, s->cb, fsize,
					       &s->snap_bytes, snap_cb, &c, msg, sizeof(msg));
		free(buf);
		if (r == -ENODATA && len < avail && len < (64u << 20)) {
			len *= 4;
			continue;
		}
		if (r < 0) {
			q2_corrupt(s, s->h.snapshots_offset, len, true, "%s", msg);
			return bd_err_set(err, -EIO, "Image is corrupt: %s", msg);
		}
		if (c.r < 0)
			return c.r;
		break;
	}
	if (rf)
		return refs_add_c(s, rf, s->h.snapshots_offset, s->snap_bytes);
	return 0;
}

/* Set the COPIED flag of every active L1 and L2 entry to (refcount == 1), with refcounts from
 * ref[] (cluster index -> refcount; NULL: the in-memory refcounts).  Writes the changed L2
 * tables, then the L1 table, then flushes.  Sync (control thread). */
int q2_fix_copied_flags(struct q2 *s, const uint64_t *ref, uint64_t nref, uint64_t *fixed,
			struct bd_err *err)
{
	uint8_t *l2 = malloc(s->cs);
	bool l1_dirty = false;
	int r = 0;

	if (!l2)
		return bd_err_set(err, -ENOMEM, "out of memory");
#define REFC(c) (ref ? ((c) < nref ? ref[c] : 0) : q2_rc_get(s, (c)))
	for (uint32_t i = 0; r == 0 && i < s->l1_size; i++) {
		uint64_t l2off = s->l1[i] & Q2_OFFSET_MASK;
		if (!l2off)
			continue;
		bool want = REFC(l2off >> s->cb) == 1;
		if (want != !!(s->l1[i] & Q2_OFLAG_COPIED)) {
			s->l1[i] = want ? s->l1[i] | Q2_OFLAG_COPIED : s->l1[i] & ~Q2_OFLAG_COPIED;
			l1_dirty = true;
			(*fixed)++;
		}
		r = q2_sync_read(q2_fnode(s), l2off, l2, s->cs);
		if (r < 0)
			break;
		bool dirty = false;
		for (uint64_t k = 0; k < s->l2n; k++) {
			uint64_t e = q2_be64(l2 + s->esz * k);
			struct q2_l2e d;
			if (q2_l2e_decode(e, s->cb, &d) < 0)
				continue;
			if (d.type != Q2_C_NORMAL && d.type != Q2_C_ZERO_ALLOC)
				continue;
			bool w = REFC(d.host >> s->cb) == 1;
			if (w != d.copied) {
				q2_put_be64(l2 + s->esz * k,
					    w ? e | Q2_OFLAG_COPIED : e & ~Q2_OFLAG_COPIED);
				dirty = true;
				(*fixed)++;
			}
		}
		if (dirty)
			r = q2_sync_write(q2_fnode(s), l2off, l2, s->cs);
	}
#undef REFC
	free(l2);
	if (r == 0 && l1_dirty) {
		uint8_t *be = malloc((size_t)s->l1_size * 8);
		if (!be)
			return bd_err_set(err, -ENOMEM, "out of memory");
		for (uint32_t i = 0; i < s->l1_size; i++)
			q2_put_be64(be + 8 * i, s->l1[i]);
		r = q2_sync_write(q2_fnode(s), s->h.l1_table_offset, be, (uint64_t)s->l1_size * 8);
		free(be);
	}
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not repair the COPIED flags: %s", strerror(-r));
	/* the L2 cache may hold old copies */
	for (unsigned i = 0; s->slots && i < s->nslots; i++)
		if (!s->slots[i].loading)
			s->slots[i].off = 0; /* never dirty here: q2_freeze wrote them back */
	return 0;
}

/* ---- persistent bitmaps ---- */

struct bm_ctx {
	struct q2 *s;
	uint8_t *dir;
	struct q2_refs *rf; /* repair: count the bitmap's clusters */
	uint64_t fsize;
	int r;
	unsigned marked;
};

static int refs_add_c(struct q2 *s, struct q2_refs *rf, uint64_t off, uint64_t len);

static void bm_cb(void *opaque, const struct q2_bitmap *bm)
{
	struct bm_ctx *c = opaque;
	struct q2 *s = c->s;

	if (c->r < 0)
		return;
	if (!c->rf) {
		/* blockd does not track writes in bitmaps: mark them not synced */
		if (!(bm->flags & Q2_BITMAP_IN_USE)) {
			q2_put_be32(c->dir + bm->entry_off + 12, bm->flags | Q2_BITMAP_IN_USE);
			c->marked++;
		}
		return;
	}
	uint64_t bytes = (uint64_t)bm->table_size * 8;
	if (!bytes)
		return;
	uint8_t *t = malloc(bytes);
	if (!t) {
		c->r = -ENOMEM;
		return;
	}
	c->r = q2_sync_read(q2_fnode(s), bm->table_off, t, bytes);
	if (c->r == 0)
		c->r = refs_add_c(s, c->rf, bm->table_off, bytes);
	for (uint32_t i = 0; c->r == 0 && i < bm->table_size; i++) {
		uint64_t e = q2_be64(t + 8 * i), off = e & Q2_OFFSET_MASK;
		if (!off)
			continue;
		if (off & (s->cs - 1) || off + s->cs > c->fsize) {
			c->r = -EIO;
			break;
		}
		c->r = refs_add_c(s, c->rf, off, s->cs);
	}
	free(t);
}

/* Read the bitmap directory; with rf count every bitmap cluster, else set in_use on every
 * bitmap and write the directory back.  The extension must be consistent (autoclear bit). */
int q2_bitmaps_walk(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err)
{
	struct bm_ctx c = {s, NULL, rf, fsize, 0, 0};
	char msg[256];
	int r;

	c.dir = malloc(s->h.bitmap_dir_size);
	if (!c.dir)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(q2_fnode(s), s->h.bitmap_dir_offset, c.dir, s->h.bitmap_dir_size);
	if (r < 0) {
		free(c.dir);
		return bd_err_set(err, r, "Could not read the bitmap directory: %s", strerror(-r));
	}
	r = q2_bitmap_dir_parse(c.dir, s->h.bitmap_dir_size, s->h.nb_bitmaps, s->cb, fsize, bm_cb,
				&c, msg, sizeof(msg));
	if (r < 0) {
		free(c.dir);
		return bd_err_set(err, -EIO, "Image is corrupt: %s", msg);
	}
	if (c.r < 0) {
		free(c.dir);
		return bd_err_set(err, c.r, "Could not read a bitmap table: %s", strerror(-c.r));
	}
	if (rf)
		r = refs_add_c(s, rf, s->h.bitmap_dir_offset, s->h.bitmap_dir_size);
	else if (c.marked) {
		r = q2_sync_write(q2_fnode(s), s->h.bitmap_dir_offset, c.dir, s->h.bitmap_dir_size);
		if (r == 0)
			r = q2_sync_flush(q2_fnode(s));
		if (r < 0)
			bd_err_set(err, r, "Could not mark the bitmaps in use: %s", strerror(-r));
		else
			bd_log(BD_LOG_INFO,
			       "qcow2 '%s': %u persistent bitmap(s) marked in-use (blockd does not "
			       "track writes in them)",
			       bd_node_name(s->node), c.marked);
	}
	free(c.dir);
	return r;
}

/* Rebuild every refcount from the metadata (dirty image with lazy refcounts). */
int q2_repair_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err)
{
	struct q2_refs rf = {0};
	uint64_t fixed = 0;
	int r;

	r = refs_add_c(s, &rf, 0, s->cs);
	/* bitmaps count only while the extension is consistent (else QEMU drops it) */
	if (r == 0 && s->h.has_bitmaps && (s->h.autoclear & Q2_AUTOCLEAR_BITMAPS))
		r = q2_bitmaps_walk(s, fsize, &rf, err);
	if (r == 0)
		r = refs_l1(s, &rf, s->h.l1_table_offset, s->l1_size, fsize, err);
	if (r == 0)
		r = q2_load_snapshots(s, fsize, &rf, err);
	if (r == 0)
		r = refs_add_c(s, &rf, s->h.refcount_table_offset,
			       (uint64_t)s->h.refcount_table_clusters << s->cb);
	for (uint64_t i = 0; r == 0 && i < s->reft_n; i++)
		if (s->reft[i])
			r = refs_add_c(s, &rf, s->reft[i], s->cs);
	if (r < 0)
		goto out;
	/* Every cluster with references needs a refcount block. */
	for (uint64_t c = 0; c < rf.n; c++) {
		uint64_t idx = c / s->epb;
		if (!rf.ref[c])
			continue;
		if (idx >= s->reft_n) {
			r = bd_err_set(err, -ENOTSUP,
				       "Cannot repair the dirty image: refcount table too small; "
				       "use 'qemu-img check -r all'");
			goto out;
		}
		if (!s->rb[idx]) {
			r = bd_err_set(err, -ENOTSUP,
				       "Cannot repair the dirty image: refcount block missing; use "
				       "'qemu-img check -r all'");
			goto out;
		}
		if (rf.ref[c] > q2_refcount_max(s->h.refcount_order)) {
			r = bd_err_set(err, -EIO, "Cannot repair: refcount overflow at 0x%" PRIx64,
				       c << s->cb);
			goto out;
		}
	}
	/* Apply the differences. */
	for (uint64_t idx = 0; idx < s->reft_n; idx++) {
		if (!s->rb[idx])
			continue;
		bool dirty = false;
		for (uint64_t e = 0; e < s->epb; e++) {
			uint64_t c = idx * s->epb + e;
			uint64_t want = c < rf.n ? rf.ref[c] : 0;
			if (q2_refcount_get(s->rb[idx], s->h.refcount_order, e) != want) {
				q2_refcount_set(s->rb[idx], s->h.refcount_order, e, want);
				dirty = true;
				fixed++;
			}
		}
		if (dirty) {
			r = q2_sync_write(q2_fnode(s), s->reft[idx], s->rb[idx], s->cs);
			if (r < 0) {
				bd_err_set(err, r, "Could not write a refcount block: %s",
					   strerror(-r));
				goto out;
			}
		}
	}
	r = q2_sync_flush(q2_fnode(s));
	if (r < 0) {
		bd_err_set(err, r, "flush failed: %s", strerror(-r));
		goto out;
	}
	/* The active tables' COPIED flags must say "refcount is one" exactly. */
	r = q2_fix_copied_flags(s, rf.ref, rf.n, &fixed, err);
	if (r < 0)
		goto out;
	if (fixed)
		bd_log(BD_LOG_INFO, "qcow2 '%s': repaired %" PRIu64 " refcounts of a dirty image",
		       bd_node_name(s->node), fixed);
out:
	free(rf.ref);
	return r;
}

/* The highest cluster in use + 1 (by refcount). */
uint64_t q2_alloc_end_cluster(struct q2 *s)
{
	for (uint64_t idx = s->reft_n; idx-- > 0;) {
		if (!s->rb[idx])
			continue;
		for (uint64_t e = s->epb; e-- > 0;)
			if (q2_refcount_get(s->rb[idx], s->h.refcount_order, e))
				return idx * s->epb + e + 1;
	}
	return 1;
}

/* An upper bound of the image file's size for the virtual size: every cluster allocated,
 * every L2 table, refcount blocks, some slack for leaks and compressed COW. */
uint64_t q2_max_file_bytes(struct q2 *s, uint64_t used_end)
{
	uint64_t data = (s->size + s->cs - 1) & ~(s->cs - 1);
	uint64_t l2 = q2_l1_needed_ext(s->size, s->cb, s->h.extl2) * s->cs;
	uint64_t total = used_end + data + l2 + (64ull << 20) + 64 * s->cs;
	uint64_t rbs = (total / s->cs / s->epb + 2) * s->cs;

	return total + rbs;
}

/* Grow the refcount table so that it can describe max_bytes of file (sync, at open/resize).
 * The new table and the refcount blocks it needs for itself go at the end of the file. */
int q2_grow_reftable(struct q2 *s, uint64_t max_bytes, struct bd_err *err)
{
	uint64_t need = (max_bytes >> s->cb) / s->epb + 1;
	uint64_t end, T, k, newn;
	uint64_t *nreft;
	uint8_t **nrb;
	int r;

	if (need <= s->reft_n)
		return 0;
	newn = need + need / 4 + 8;
	T = (newn * 8 + s->cs - 1) >> s->cb;
	newn = (T << s->cb) / 8;
	if ((T << s->cb) > Q2_MAX_REFTABLE_BYTES)
		return bd_err_set(err, -EFBIG, "The image would need a refcount table larger "
					       "than 8 MiB");
	end = q2_alloc_end_cluster(s);
	if (end < (bd_node_size(q2_fnode(s)) + s->cs - 1) >> s->cb &&
	    s->orig_file_size > (end << s->cb))
		end = (s->orig_file_size + s->cs - 1) >> s->cb;
	nreft = calloc(newn, sizeof(*nreft));
	nrb = calloc(newn, sizeof(*nrb));
	if (!nreft || !nrb) {
		free(nreft);
		free(nrb);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	memcpy(nreft, s->reft, s->reft_n * sizeof(*nreft));
	memcpy(nrb, s->rb, s->reft_n * sizeof(*nrb));
	/* k new refcount blocks at [end, end+k), then the table at [end+k, end+k+T). */
	k = 0;
	for (;;) {
		uint64_t m = 0;
		for (uint64_t c = end; c < end + k + T; c++) {
			uint64_t idx = c / s->epb;
			if (!nrb[idx] && (c == end || (c - 1) / s->epb != idx))
				m++;
		}
		if (m <= k)
			break;
		k = m;
	}
	uint64_t nb = 0;
	for (uint64_t c = end; c < end + k + T; c++) {
		uint64_t idx = c / s->epb;
		if (!nrb[idx]) {
			nrb[idx] = calloc(1, s->cs);
			if (!nrb[idx])
				abort();
			nreft[idx] = (end + nb) << s->cb;
			nb++;
		}
	}
	k = nb;
	/* Refcounts of the new blocks and the table. */
	for (uint64_t c = end; c < end + k + T; c++)
		q2_refcount_set(nrb[c / s->epb], s->h.refcount_order, c % s->epb, 1);
	q2_zero_mark(s, end + k + T - 1); /* written below */
	/* Write: the file must be long enough first. */
	uint64_t need_file = (end + k + T) << s->cb;
	if (bd_node_size(q2_fnode(s)) < need_file) {
		r = bd_node_resize(q2_fnode(s), need_file, err);
		if (r < 0)
			goto fail;
	}
	for (uint64_t idx = 0; idx < newn; idx++) {
		bool is_new = idx >= s->reft_n || !s->rb[idx];
		if (!nrb[idx])
			continue;
		uint64_t lastc = (end + k + T - 1) / s->epb;
		if (is_new || (idx >= end / s->epb && idx <= lastc)) {
			r = q2_sync_write(q2_fnode(s), nreft[idx], nrb[idx], s->cs);
			if (r < 0)
				goto io_fail;
		}
	}
	uint8_t *tab = calloc(1, T << s->cb);
	if (!tab)
		abort();
	for (uint64_t i = 0; i < newn; i++)
		q2_put_be64(tab + 8 * i, nreft[i]);
	r = q2_sync_write(q2_fnode(s), (end + k) << s->cb, tab, T << s->cb);
	free(tab);
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		goto io_fail;
	/* Switch the header to the new table. */
	uint64_t old_off = s->h.refcount_table_offset;
	uint32_t old_clusters = s->h.refcount_table_clusters;
	uint8_t hb[12];
	q2_put_be64(hb, (end + k) << s->cb);
	q2_put_be32(hb + 8, (uint32_t)T);
	r = q2_sync_write(q2_fnode(s), 48, hb, 12);
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		goto io_fail;
	s->h.refcount_table_offset = (end + k) << s->cb;
	s->h.refcount_table_clusters = (uint32_t)T;
	free(s->reft);
	free(s->rb);
	s->reft = nreft;
	s->rb = nrb;
	s->reft_n = newn;
	/* Free the old table's clusters. */
	for (uint64_t c = old_off >> s->cb; c < (old_off >> s->cb) + old_clusters; c++) {
		uint64_t v = q2_rc_get(s, c);
		if (v)
			q2_rc_set(s, c, v - 1);
	}
	for (unsigned i = 0; i < s->rbd_n; i++) {
		struct q2_rbdirty *d = &s->rbd[i];
		r = q2_sync_write(q2_fnode(s), s->reft[d->idx], s->rb[d->idx], s->cs);
		if (r < 0)
			break;
	}
	s->rbd_n = 0;
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not free the old refcount table: %s",
				  strerror(-r));
	s->free_hint = 1;
	return 0;
io_fail:
	bd_err_set(err, r, "Could not grow the refcount table: %s", strerror(-r));
fail:
	for (uint64_t idx = 0; idx < newn; idx++)
		if (nrb[idx] && (idx >= s->reft_n || nrb[idx] != s->rb[idx]))
			free(nrb[idx]);
	free(nreft);
	free(nrb);
	return r;
}

/* Make sure the file can hold the worst case for the virtual size, sparse (see
 * docs/qcow2.md: the core does not let a format write past its child's end). */
int q2_prepare_growth(struct q2 *s, struct bd_err *err)
{
	uint64_t used = q2_alloc_end_cluster(s) << s->cb;
	uint64_t fsz = bd_node_size(q2_fnode(s));
	uint64_t want = q2_max_file_bytes(s, used > fsz ? used : fsz);
	uint64_t reft_max = ((uint64_t)Q2_MAX_REFTABLE_BYTES / 8 - 64) * s->epb << s->cb;
	const struct bd_limits *fl = bd_node_limits(q2_fnode(s));
	struct bd_err e2 = {0};
	int r;

	if (want > reft_max)
		want = reft_max;
	r = q2_grow_reftable(s, want, err);
	if (r < 0)
		return r;
	fsz = bd_node_size(q2_fnode(s));
	if (fsz < want && fl->can_resize) {
		r = bd_node_resize(q2_fnode(s), want, &e2);
		if (r < 0) {
			/* A file system that cannot hold the worst case: reserve less. */
			bd_err_clear(&e2);
			uint64_t less = fsz + (1ull << 30);
			if (less < want)
				r = bd_node_resize(q2_fnode(s), less, &e2);
			if (r < 0)
				bd_log(BD_LOG_WARN,
				       "qcow2 '%s': could not reserve room in the image file (%s); "
				       "allocations may fail with ENOSPC",
				       bd_node_name(s->node), e2.msg);
		}
	}
	return 0;
}
