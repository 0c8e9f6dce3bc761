/*
 * qcow2-sub.c - the allocation programs that work one cluster at a time: compressed writes
 * (BD_REQ_WRITE_COMPRESSED, from the compress filter) and writes to images with extended L2
 * entries (subclusters).  Each plans the metadata program of qcow2-alloc.c (data and
 * refcounts, flush, then the L2 entry), so the crash-safety ordering is the allocating write's.
 *
 * Threading: owner loop (docs/qcow2.md), metadata lock held.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- compressed writes (BD_REQ_WRITE_COMPRESSED): one cluster per program ----
 *
 * The cluster is compressed at the first call; the compressed bytes (rounded up to 512) are
 * packed behind the previous compressed cluster when its host cluster has room (one more
 * reference on it), else they start a new host cluster.  The program is the allocating
 * write's: data and refcounts, flush, then the L2 entry; the old entry loses a reference. */
int q2_comp_plan(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t off = qr->req->offset + qr->pos;
	uint64_t rem = qr->end - qr->pos;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t chunk = rem < s->cs ? rem : s->cs;
	struct q2_cow *cw = &qr->cow[0];
	uint64_t host = 0, alen;
	struct q2_l2e e;
	int r;

	if (off & (s->cs - 1))
		return -EINVAL;
	if (!cw->cbuf) {
		cw->buf = calloc(1, s->cs); /* a short last cluster is padded with zeroes */
		cw->cbuf = malloc(s->cs);
		if (!cw->buf || !cw->cbuf) {
			q2_cow_free(qr);
			return -ENOMEM;
		}
		bd_iov_to_buf(qr->src, qr->srccnt, qr->pos - qr->src_base, cw->buf, chunk);
		long n = s->cs > 512 ? q2_compress((enum q2_compression)s->h.compression_type,
						   cw->buf, s->cs, cw->cbuf, s->cs - 512)
				     : -ENOSPC;
		if (n < 0) {
			q2_cow_free(qr);
			return n == -ENOSPC ? -ENOSPC : -EIO;
		}
		cw->csize = (uint64_t)n;
		memset(cw->cbuf + n, 0, ((n + 511) & ~511l) - n);
	}
	if (qr->slot < 0 && !qr->newl2) {
		r = q2_mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = q2_mp_tab(qr);
	if (q2_l2e_decode(q2_be64(tab + 8 * l2i), s->cb, &e) < 0) {
		q2_corrupt(s, UINT64_MAX, 0, true, "Invalid L2 entry");
		return -EIO;
	}
	alen = (cw->csize + 511) & ~511ull;
	if (s->comp_next && (s->comp_next & (s->cs - 1)) + alen <= s->cs) {
		uint64_t ci = s->comp_next >> s->cb, v = q2_rc_get(s, ci);
		if (v > 0 && v < q2_refcount_max(s->h.refcount_order)) {
			r = q2_rc_set(s, ci, v + 1);
			if (r < 0)
				return r;
			host = s->comp_next;
		}
	}
	if (!host) {
		uint64_t c, got, need;
		r = q2_alloc_find(s, 1, &c, &got, &need);
		if (r < 0)
			return r;
		if (r == 0) {
			qr->rb_idx = need;
			qr->rb_ret = ST_A_PLAN;
			r = q2_rb_create(qr);
			return r < 0 ? r : 0;
		}
		r = q2_alloc_take(s, c, 1);
		if (r < 0)
			return r;
		host = c << s->cb;
	}
	s->comp_next = (host + alen) & (s->cs - 1) ? host + alen : 0;
	qr->incr = true;
	q2_ents_need(qr, 1);
	qr->l2i = l2i;
	qr->nent = 1;
	qr->ents[0] = Q2_OFLAG_COMPRESSED | ((alen / 512 - 1) << (62 - (s->cb - 8))) | host;
	q2_free_entry(qr, &e, s->pass_discard_other);
	qr->chunk = chunk;
	struct iovec *v = q2_iov_need(qr, 1);
	v[0] = (struct iovec){cw->cbuf, alen};
	qr->diovcnt = 1;
	qr->dwrite = true;
	qr->dhost = host;
	qr->dlen = alen;
	qr->st = ST_A_COW_READ_DONE;
	return 1;
}


/* ---- extended L2 entries: writes subcluster by subcluster ----
 *
 * A write covers subclusters sc0..sc1 of one cluster.  In place (the cluster is ours, COPIED,
 * refcount one) when all of them are allocated; otherwise one program:
 *   - the cluster is ours: the touched subclusters are written in place (a partial first/last
 *     subcluster completed from what it shows now: zeroes, the backing file), then the bitmap
 *     marks them allocated;
 *   - no host cluster yet: a new one, where only the touched subclusters are written; the
 *     others stay unallocated or zero;
 *   - a shared (snapshot) or compressed cluster: a new one with every allocated subcluster
 *     copied (decompressed), the old one loses a reference.
 * The L2 entry and its bitmap change after the data is flushed, so a crash leaves either the
 * old view of the subclusters or the new one. */

static uint32_t sub_mask(unsigned sc0, unsigned sc1)
{
	uint32_t hi = sc1 == 31 ? UINT32_MAX : (1u << (sc1 + 1)) - 1;
	return hi & ~((1u << sc0) - 1);
}

/* Is the bitmap valid for the entry? */
static bool sub_valid(const struct q2_l2e *e, uint64_t bm)
{
	uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);

	if (e->type == Q2_C_COMPRESSED)
		return true; /* the bitmap is ignored */
	if (alloc & zero)
		return false;
	return !alloc || e->type == Q2_C_NORMAL;
}

bool q2_sub_in_place(struct q2 *s, int slot, uint64_t l2i, uint64_t inoff, uint64_t len,
		     uint64_t *host)
{
	uint32_t ub = s->cb - 5;
	const uint8_t *ent = s->slots[slot].tab + 16 * l2i;
	uint64_t raw = q2_be64(ent), bm = q2_be64(ent + 8);
	struct q2_l2e e;

	if (q2_l2e_decode_ext(raw, s->cb, &e) < 0 || e.type != Q2_C_NORMAL || !sub_valid(&e, bm) ||
	    !q2_in_place(s, &e))
		return false;
	uint32_t m = sub_mask((unsigned)(inoff >> ub), (unsigned)((inoff + len - 1) >> ub));
	if (((uint32_t)bm & m) != m)
		return false;
	*host = e.host;
	return true;
}

/* Read what subcluster sc of the cluster at guest offset gc shows now into buf (the cluster's
 * buffer), using v for the I/O vector. */
static void sub_view_read(struct q2_req *qr, uint8_t *buf, struct iovec *v, uint64_t gc,
			  const struct q2_l2e *e, uint64_t bm, unsigned sc)
{
	struct q2 *s = qr->s;
	uint32_t ub = s->cb - 5;
	uint64_t usz = 1ull << ub, g = gc + ((uint64_t)sc << ub);
	uint8_t *dst = buf + ((uint64_t)sc << ub);
	enum q2_ctype t;
	uint64_t h;

	q2_subcluster(e, bm, sc, s->cb, &t, &h); /* validated by the caller */
	if (t == Q2_C_NORMAL) {
		*v = (struct iovec){dst, usz};
		q2_sub_io(qr, s->file, BD_OP_READ, h, usz, v, 1, 0);
		return;
	}
	uint64_t avail = 0;
	if (t == Q2_C_UNALLOC && s->backing) {
		uint64_t bsz = bd_node_size(bd_child_node(s->backing));
		avail = g >= bsz ? 0 : bsz - g;
	}
	uint64_t rd = avail < usz ? avail : usz;
	memset(dst + rd, 0, usz - rd);
	if (rd) {
		*v = (struct iovec){dst, rd};
		q2_sub_io(qr, s->backing, BD_OP_READ, g, rd, v, 1, 0);
	}
}

int q2_sub_plan(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t off = qr->req->offset + qr->pos;
	uint64_t inoff = off & (s->cs - 1), gc = off - inoff;
	uint64_t rem = qr->end - qr->pos;
	uint64_t chunk = rem < s->cs - inoff ? rem : s->cs - inoff;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint32_t ub = s->cb - 5;
	unsigned sc0 = (unsigned)(inoff >> ub), sc1 = (unsigned)((inoff + chunk - 1) >> ub);
	uint32_t mask = sub_mask(sc0, sc1), nalloc, nzero;
	struct q2_cow *cw = &qr->cow[0];
	struct q2_l2e e;
	uint64_t host;
	int r;

	if (qr->slot < 0 && !qr->newl2) {
		r = q2_mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *ent = q2_mp_tab(qr) + 16 * l2i;
	uint64_t raw = q2_be64(ent), bm = q2_be64(ent + 8);
	if (q2_l2e_decode_ext(raw, s->cb, &e) < 0 || !sub_valid(&e, bm)) {
		q2_corrupt(s, UINT64_MAX, 0, true,
			   "Invalid extended L2 entry 0x%016" PRIx64 " bitmap 0x%016" PRIx64, raw, bm);
		return -EIO;
	}
	uint32_t alloc = (uint32_t)bm, zero = (uint32_t)(bm >> 32);
	bool inplace = e.type == Q2_C_NORMAL && q2_in_place(s, &e);
	if (inplace && (alloc & mask) == mask) {
		if (qr->newl2) {
			q2_corrupt(s, UINT64_MAX, 0, true,
				   "L2 table shared by a snapshot holds an exclusively owned cluster");
			return -EIO;
		}
		return 2;
	}
	bool whole = !inplace && e.type != Q2_C_UNALLOC; /* shared or compressed: copy it all */
	uint64_t ws = whole ? 0 : (uint64_t)sc0 << ub, we = whole ? s->cs : (uint64_t)(sc1 + 1)
									  << ub;
	if (inplace) {
		host = e.host;
		const char *what = q2_meta_overlap(s, host + ws, we - ws);
		if (what) {
			q2_corrupt(s, host + ws, we - ws, true,
				   "Preventing a guest write over the %s at 0x%" PRIx64, what,
				   host + ws);
			return -EIO;
		}
		if (host + s->cs > bd_node_size(q2_fnode(s))) {
			q2_corrupt(s, host, s->cs, true,
				   "Data cluster at 0x%" PRIx64 " lies past the end of the file", host);
			return -EIO;
		}
	} else {
		uint64_t c, got, need;
		r = q2_alloc_find(s, 1, &c, &got, &need);
		if (r < 0)
			return r;
		if (r == 0) {
			qr->rb_idx = need;
			qr->rb_ret = ST_A_PLAN;
			r = q2_rb_create(qr);
			return r < 0 ? r : 0;
		}
		r = q2_alloc_take(s, c, 1);
		if (r < 0)
			return r;
		host = c << s->cb;
	}
	qr->incr = true; /* the data is flushed before the L2 entry changes */

	/* What the written range must hold besides the guest data. */
	q2_cow_free(qr);
	if (whole && e.type == Q2_C_COMPRESSED) {
		cw->needed = true;
		cw->type = Q2_C_COMPRESSED;
		cw->host = e.host;
		cw->csize = e.csize;
		cw->guest = gc;
		r = q2_cow_read(qr, cw);
		if (r < 0)
			return r;
		nalloc = UINT32_MAX;
		nzero = 0;
	} else {
		cw->buf = calloc(1, s->cs);
		if (!cw->buf)
			return -ENOMEM;
		struct iovec *mv = q2_miov_need(qr, 32);
		for (unsigned sc = 0; sc < 32; sc++) {
			uint64_t s0 = (uint64_t)sc << ub, s1 = s0 + (1ull << ub);
			bool touched = sc >= sc0 && sc <= sc1;
			bool covered = touched && inoff <= s0 && inoff + chunk >= s1;
			bool need = whole ? !covered && (touched || ((alloc >> sc) & 1))
					  : touched && !covered;
			if (need)
				sub_view_read(qr, cw->buf, &mv[sc], gc, &e, bm, sc);
		}
		nalloc = alloc | mask;
		nzero = zero & ~mask;
	}

	q2_ents_need(qr, 2);
	qr->l2i = l2i;
	qr->nent = 1;
	qr->ents[0] = inplace ? raw : host | Q2_OFLAG_COPIED;
	qr->ents[1] = ((uint64_t)nzero << 32) | nalloc;
	if (!inplace)
		q2_free_entry(qr, &e, s->pass_discard_other);

	/* The data write: [view before][guest data][view after] over [ws, we) of the cluster. */
	struct iovec *v = q2_iov_need(qr, qr->srccnt + 2);
	int nv = 0;
	if (inoff > ws)
		v[nv++] = (struct iovec){cw->buf + ws, inoff - ws};
	nv += bd_iov_slice(qr->src, qr->srccnt, qr->pos - qr->src_base, chunk, v + nv);
	if (inoff + chunk < we)
		v[nv++] = (struct iovec){cw->buf + inoff + chunk, we - inoff - chunk};
	qr->chunk = chunk;
	qr->diovcnt = nv;
	qr->dwrite = true;
	qr->dhost = host + ws;
	qr->dlen = we - ws;
	qr->st = ST_A_COW_READ_DONE;
	return 1;
}

/* ---- extended L2 entries: write-zeroes and discard ----
 *
 * Write-zeroes works on whole subclusters: their allocation bits are cleared and their zero
 * bits set.  A cluster that ends up all zero loses its host cluster (entry 0, every zero bit
 * set) when the request may unmap or the cluster is shared or compressed; otherwise an
 * allocated cluster keeps its host offset with the subclusters marked zero.  A compressed
 * cluster cannot be zeroed in part: those subclusters are written as zero bytes (the caller
 * does it through the write path, which copies the cluster).  Discard works on whole clusters:
 * the entry becomes unallocated (0, bitmap 0) where that reads as zeroes (no backing file, or
 * past its end), else every subcluster becomes zero, so a discarded cluster never shows the
 * backing file.  The old host cluster goes to the free program.  The program is the metadata
 * program of qcow2-alloc.c (refcounts of a new L2 table, flush, L2 entries, frees queued). */

#define Q2_BM_ALL_ZERO 0xffffffff00000000ull

/* Plan the program for clusters [gc, gc + n clusters) of one L2 table (gc cluster aligned);
 * mask: the subclusters of each cluster to zero (all 32 for discard; a partial mask only with
 * n == 1).  Returns 1 planned, 2 nothing to change, 3 a compressed cluster is zeroed in part
 * (write zero bytes instead; nothing planned), 0 waiting, <0 error. */
int q2_zd_plan_sub(struct q2_req *qr, uint64_t gc, uint64_t n, uint32_t mask, bool zero, bool unmap)
{
	struct q2 *s = qr->s;
	uint64_t l2i = (gc >> s->cb) & (s->l2n - 1);
	uint64_t l1e;
	int slot, r;

	if (qr->slot < 0 && !qr->newl2) {
		r = q2_l2_get(qr, gc, &slot, &l1e);
		if (r <= 0)
			return r;
		/* Without an L2 table every cluster is unallocated: nothing to do where that
		 * reads as zeroes. */
		if (slot < 0 && q2_reads_zero_unalloc(s, gc))
			return 2;
		if (slot >= 0 && mask != UINT32_MAX) {
			/* checked before a new table may be allocated for the program */
			struct q2_l2e e;
			if (q2_l2e_decode_ext(q2_l2_raw(s, slot, l2i), s->cb, &e) == 0 &&
			    e.type == Q2_C_COMPRESSED)
				return 3;
		}
		r = q2_mp_prepare_l2(qr, gc);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = q2_mp_tab(qr);
	bool changed = false;

	q2_ents_need(qr, 2 * n);
	qr->l2i = l2i;
	qr->nent = n;
	for (uint64_t k = 0; k < n; k++) {
		uint8_t *ent = tab + 16 * (l2i + k);
		uint64_t raw = q2_be64(ent), bm = q2_be64(ent + 8), ne, nbm;
		uint64_t guest = gc + (k << s->cb);
		struct q2_l2e e;

		if (q2_l2e_decode_ext(raw, s->cb, &e) < 0 || !sub_valid(&e, bm)) {
			q2_corrupt(s, UINT64_MAX, 0, true,
				   "Invalid extended L2 entry 0x%016" PRIx64
				   " bitmap 0x%016" PRIx64,
				   raw, bm);
			return -EIO;
		}
		if (!zero) {
			/* discard */
			ne = 0;
			nbm = q2_reads_zero_unalloc(s, guest) ? 0 : Q2_BM_ALL_ZERO;
			q2_free_entry(qr, &e, s->pass_discard_request);
		} else if (e.type == Q2_C_COMPRESSED) {
			if (mask != UINT32_MAX) {
				/* only with a new L2 table copied from a shared one: cannot happen
				 * after the check above, refuse rather than leak it */
				q2_corrupt(s, UINT64_MAX, 0, true,
					   "Compressed cluster changed under the metadata lock");
				return -EIO;
			}
			ne = 0;
			nbm = Q2_BM_ALL_ZERO;
			q2_free_entry(qr, &e, s->pass_discard_other);
		} else {
			uint32_t nalloc = (uint32_t)bm & ~mask;
			uint32_t nzero = (uint32_t)(bm >> 32) | mask;
			ne = raw;
			nbm = ((uint64_t)nzero << 32) | nalloc;
			if (e.type == Q2_C_NORMAL && nzero == UINT32_MAX) {
				bool own = q2_in_place(s, &e);
				if (unmap || !own) {
					/* every subcluster reads zero: the host cluster goes */
					ne = 0;
					q2_free_entry(qr, &e,
						      unmap ? s->pass_discard_request
							    : s->pass_discard_other);
				}
			}
		}
		qr->ents[2 * k] = ne;
		qr->ents[2 * k + 1] = nbm;
		if (ne != raw || nbm != bm)
			changed = true;
	}
	if (!changed && !qr->newl2) {
		qr->nfr = 0;
		qr->nent = 0;
		return 2;
	}
	qr->st = ST_MP_P1;
	return 1;
}
