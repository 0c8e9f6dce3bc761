/*
 * qcow2-alloc.c - qcow2 cluster allocation and refcount ordering: the in-memory refcounts, the
 * metadata overlap check, the metadata lock and the pending-free queue, cluster and refcount
 * block allocation, the metadata program (refcount blocks, new L2 tables, L2/L1 entries) shared
 * by allocating writes, write-zeroes and discard, copy-on-write of partial clusters, and the free
 * program that applies queued refcount decrements.
 *
 * Threading: owner loop (docs/qcow2.md); q2_rc_get(), q2_rc_set(), q2_meta_overlap(),
 * q2_alloc_find() and q2_alloc_take() are also used on the control thread while no request
 * runs (open, resize, snapshots).
 *
 * Crash safety: metadata is written through here (plain allocating writes may instead leave
 * their entries to the write-back of qcow2-writeback.c).  An allocation writes the
 * data and the refcount block updates (and a new L2 table), flushes, then writes the L2 entry
 * (or the L1 entry of a new L2 table).  Refcount decrements are queued and applied only when no
 * request that may still use the old mapping is active, after a flush, so an L2 entry on disk
 * never points at a cluster whose refcount on disk is zero.  One metadata program runs at a
 * time (the metadata lock); reads and in-place writes run beside it.  Plain allocating writes
 * hold the lock as a group (group commit, below): their data, refcounts and new tables are
 * written side by side, flushed once, then all their L2/L1 entries are written.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define Q2_FREE_BARRIER 4096         /* pending frees before new requests wait */


/* ============================================================================================
 * In-memory refcounts
 */
uint64_t q2_rc_get(struct q2 *s, uint64_t ci)
{
	uint64_t r = ci / s->epb;

	if (r >= s->reft_n || !s->rb[r])
		return 0;
	return q2_refcount_get(s->rb[r], s->h.refcount_order, ci % s->epb);
}

static void rbd_mark(struct q2 *s, uint64_t idx, uint32_t lo, uint32_t hi)
{
	for (unsigned i = 0; i < s->rbd_n; i++) {
		if (s->rbd[i].idx == idx) {
			if (lo < s->rbd[i].lo)
				s->rbd[i].lo = lo;
			if (hi > s->rbd[i].hi)
				s->rbd[i].hi = hi;
			return;
		}
	}
	if (s->rbd_n == s->rbd_cap) {
		s->rbd_cap = s->rbd_cap ? 2 * s->rbd_cap : 16;
		s->rbd = realloc(s->rbd, s->rbd_cap * sizeof(*s->rbd));
		if (!s->rbd)
			abort();
	}
	s->rbd[s->rbd_n++] = (struct q2_rbdirty){idx, lo, hi};
}

/* Cluster ci is (or may have been) written: it no longer counts as never written since open
 * (copy-on-write zeroes onto it must be written). */
void q2_zero_mark(struct q2 *s, uint64_t ci)
{
	if (ci >= s->zero_from)
		s->zero_from = ci + 1;
}

/* Set a refcount; the block must exist.  -ERANGE on overflow. */
int q2_rc_set(struct q2 *s, uint64_t ci, uint64_t v)
{
	uint64_t r = ci / s->epb, e = ci % s->epb;
	uint32_t bits = 1u << s->h.refcount_order;
	uint32_t lo = (uint32_t)(e * bits / 8);
	uint32_t hi = lo + (bits >= 8 ? bits / 8 : 1);
	int ret;

	if (r >= s->reft_n || !s->rb[r])
		return -EIO;
	ret = q2_refcount_set(s->rb[r], s->h.refcount_order, e, v);
	if (ret < 0)
		return ret;
	rbd_mark(s, r, lo, hi);
	if (v)
		q2_zero_mark(s, ci);
	if (v == 0 && s->comp_next && ci == s->comp_next >> s->cb)
		s->comp_next = 0; /* freed: compressed clusters are no longer packed there */
	return 0;
}

/* ============================================================================================
 * Metadata overlap check: would writing guest data at [off, off+len) hit metadata?
 */
const char *q2_meta_overlap(struct q2 *s, uint64_t off, uint64_t len)
{
	struct q2_region fixed[] = {
		{0, s->cs, "header"},
		{s->h.l1_table_offset, (uint64_t)s->l1_size * 8, "active L1 table"},
		{s->h.refcount_table_offset, (uint64_t)s->h.refcount_table_clusters * s->cs,
		 "refcount table"},
		{s->h.snapshots_offset, s->h.nb_snapshots ? s->snap_bytes : 0, "snapshot table"},
		{s->h.bitmap_dir_offset, s->h.has_bitmaps ? s->h.bitmap_dir_size : 0,
		 "bitmap directory"},
	};
	int i = q2_overlaps(fixed, 5, off, len);

	if (i >= 0)
		return fixed[i].what;
	for (uint64_t r = 0; r < s->reft_n; r++)
		if (s->reft[r] && s->reft[r] < off + len && off < s->reft[r] + s->cs)
			return "refcount block";
	for (uint32_t k = 0; k < s->l1_size; k++) {
		uint64_t l2 = s->l1[k] & Q2_OFFSET_MASK;
		if (l2 && l2 < off + len && off < l2 + s->cs)
			return "active L2 table";
	}
	return NULL;
}

/* ---- the metadata lock and pending frees ---- */

static void fp_start(struct q2 *s);

void q2_wake_stalled(struct q2 *s)
{
	struct q2_req *w = s->stalled, *next;

	s->stalled = NULL;
	for (; w; w = next) {
		next = w->next;
		q2_wake(w);
	}
}

bool q2_lock_take(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	if (s->lock_owner == qr)
		return true;
	if (!s->lock_owner && !atomic_load(&s->free_running)) {
		s->lock_owner = qr;
		return true;
	}
	qr->next = NULL;
	if (s->lock_tail)
		s->lock_tail->next = qr;
	else
		s->lock_head = qr;
	s->lock_tail = qr;
	qr->waiting_lock = true;
	return false;
}

void q2_maybe_free(struct q2 *s)
{
	if (s->nfrees && s->active == 0 && !s->lock_owner && !atomic_load(&s->free_running))
		fp_start(s);
}

void q2_lock_release(struct q2 *s)
{
	struct q2_req *w;

	s->lock_owner = NULL;
	q2_maybe_free(s);
	if (s->lock_owner || atomic_load(&s->free_running))
		return;
	w = s->lock_head;
	if (w && w->batch) {
		q2_grp_form(s);
		return;
	}
	if (w) {
		s->lock_head = w->next;
		if (!s->lock_head)
			s->lock_tail = NULL;
		w->waiting_lock = false;
		s->lock_owner = w;
		q2_wake(w);
	}
}

static void queue_frees(struct q2 *s, struct q2_free *f, unsigned n)
{
	if (!n)
		return;
	if (s->nfrees + n > s->frees_cap) {
		s->frees_cap = (s->nfrees + n) * 2;
		s->frees = realloc(s->frees, s->frees_cap * sizeof(*s->frees));
		if (!s->frees)
			abort();
	}
	memcpy(s->frees + s->nfrees, f, n * sizeof(*f));
	s->nfrees += n;
	if (s->nfrees > Q2_FREE_BARRIER)
		s->barrier = true;
}

/* ---- allocation ---- */

/* May the data cluster of e be written in place?  The COPIED flag says its refcount is one;
 * the in-memory refcount must agree (a hostile flag on a shared cluster would otherwise let a
 * guest write reach a snapshot's data). */
bool q2_in_place(struct q2 *s, const struct q2_l2e *e)
{
	if (e->type != Q2_C_NORMAL || !e->copied)
		return false;
	uint64_t rc = q2_rc_get(s, e->host >> s->cb);
	if (rc == 1)
		return true;
	q2_corrupt(s, e->host, s->cs, false,
		   "OFLAG_COPIED data cluster 0x%" PRIx64 " has refcount %" PRIu64
		   "; copying it on write",
		   e->host, rc);
	return false;
}

/* Find up to want contiguous free clusters.  Returns 1 with first and got set, 0 when refcount block
 * need_rb must be created first, -ENOSPC when the image file is full. */
int q2_alloc_find(struct q2 *s, uint64_t want, uint64_t *first, uint64_t *got,
		  uint64_t *need_rb)
{
	uint64_t fclusters = bd_node_size(q2_fnode(s)) >> s->cb;
	uint64_t c = s->free_hint ? s->free_hint : 1;

	for (; c < fclusters; c++) {
		uint64_t r = c / s->epb;
		if (r >= s->reft_n)
			break;
		if (!s->rb[r]) {
			*need_rb = r;
			return 0;
		}
		if (q2_rc_get(s, c) == 0)
			break;
	}
	if (c >= fclusters || c / s->epb >= s->reft_n) {
		bd_log(BD_LOG_ERROR,
		       "qcow2 '%s': no free cluster left in the image file (%" PRIu64 " clusters)",
		       bd_node_name(s->node), fclusters);
		return -ENOSPC;
	}
	s->free_hint = c;
	uint64_t n = 1;
	while (n < want && c + n < fclusters) {
		uint64_t r = (c + n) / s->epb;
		if (r >= s->reft_n || !s->rb[r] || q2_rc_get(s, c + n) != 0)
			break;
		n++;
	}
	*first = c;
	*got = n;
	return 1;
}

/* Allocate (refcount 1) clusters [c, c+n) found by q2_alloc_find. */
int q2_alloc_take(struct q2 *s, uint64_t c, uint64_t n)
{
	const char *what = q2_meta_overlap(s, c << s->cb, n << s->cb);

	if (what) {
		q2_corrupt(s, c << s->cb, n << s->cb, true,
			   "Preventing invalid allocation of %s at 0x%" PRIx64
			   " (its refcount is zero)",
			   what, c << s->cb);
		return -EIO;
	}
	for (uint64_t i = 0; i < n; i++) {
		int r = q2_rc_set(s, c + i, 1);
		if (r < 0)
			return r;
	}
	s->free_hint = c + n;
	return 0;
}

/* Start creating refcount block qr->rb_idx; the program returns to qr->rb_ret. */
int q2_rb_create(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t r = qr->rb_idx;
	uint64_t c = r * s->epb; /* the first cluster of the range it covers: always free */
	uint64_t off = c << s->cb;
	struct iovec *v;

	if (off + s->cs > bd_node_size(q2_fnode(s)))
		return -ENOSPC;
	if (q2_meta_overlap(s, off, s->cs)) {
		q2_corrupt(s, off, s->cs, true,
			   "New refcount block at 0x%" PRIx64 " would overlap metadata", off);
		return -EIO;
	}
	s->rb[r] = calloc(1, s->cs);
	if (!s->rb[r])
		return -ENOMEM;
	q2_refcount_set(s->rb[r], s->h.refcount_order, 0, 1);
	q2_zero_mark(s, c);
	s->reft[r] = off;
	v = q2_miov_need(qr, 1);
	v[0].iov_base = s->rb[r];
	v[0].iov_len = s->cs;
	qr->st = ST_RB_WRITTEN;
	q2_sub_io(qr, s->file, BD_OP_WRITE, off, s->cs, v, 1, 0);
	if (!qr->pending)
		return qr->err ? qr->err : -EIO;
	return 0;
}

/* Write the dirty ranges of refcount blocks (rounded to 512 bytes). */
void q2_write_rb_dirty(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct iovec *v = q2_miov_need(qr, (int)s->rbd_n + 1);

	for (unsigned i = 0; i < s->rbd_n; i++) {
		struct q2_rbdirty *d = &s->rbd[i];
		uint64_t lo = d->lo & ~511u, hi = ((uint64_t)d->hi + 511) & ~511ull;
		if (hi > s->cs)
			hi = s->cs;
		v[i].iov_base = s->rb[d->idx] + lo;
		v[i].iov_len = hi - lo;
		q2_sub_io(qr, s->file, BD_OP_WRITE, s->reft[d->idx] + lo, hi - lo, &v[i], 1, 0);
	}
	s->rbd_n = 0;
}

/* ---- the metadata program (lock held, qr->slot pinned or qr->newl2 set) ---- */

/* Install a program's new L2 table in the cache (the pinned copy source's slot, or any free
 * slot) and point the in-memory L1 entry at it. */
void q2_mp_install_l2(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	int slot = qr->slot;

	if (slot < 0) {
		for (unsigned i = 0; i < s->nslots; i++)
			if (!s->slots[i].pins && !s->slots[i].loading && !s->slots[i].dhi &&
			    (slot < 0 || s->slots[i].off == 0 ||
			     s->slots[i].lru < s->slots[slot].lru))
				slot = (int)i;
		if (slot >= 0) {
			s->slots[slot].pins++;
			qr->slot = slot;
		}
	}
	if (slot >= 0) {
		memcpy(s->slots[slot].tab, qr->newtab, s->cs);
		s->slots[slot].off = qr->newl2;
		s->slots[slot].lru = ++s->lru_clock;
	}
	s->l1[qr->l1i] = qr->newl2 | Q2_OFLAG_COPIED;
}

/* A program's L2/L1 entries are on disk: queue its frees, unpin, reset. */
void q2_mp_done(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	if (qr->oldl2)
		q2_add_free(qr, qr->oldl2, s->cs, false);
	queue_frees(s, qr->fr, qr->nfr);
	qr->nfr = 0;
	if (qr->slot >= 0) {
		s->slots[qr->slot].pins--;
		qr->slot = -1;
	}
	free(qr->newtab);
	qr->newtab = NULL;
	q2_cow_free(qr);
	qr->newl2 = qr->oldl2 = 0;
	qr->nent = 0;
	qr->dwrite = false;
	qr->incr = false;
}


/* qr->ents holds esz / 8 words per entry (extended L2 entries: the entry, then the bitmap). */
void q2_mp_set_entries(struct q2 *s, uint8_t *tab, struct q2_req *qr)
{
	uint32_t w = s->esz / 8;
	for (uint64_t k = 0; k < qr->nent; k++)
		for (uint32_t j = 0; j < w; j++)
			q2_put_be64(tab + s->esz * (qr->l2i + k) + 8 * j, qr->ents[k * w + j]);
}

int q2_mp_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	switch (qr->st) {
	case ST_MP_P1: {
		/* Data (with copy-on-write), refcount blocks, a new L2 table: in parallel. */
		qr->st = ST_MP_P1_DONE;
		if (qr->in_grp) {
			/* planned: the group may write the refcounts while the data is written */
			qr->g_ready = true;
			s->g_wait--;
			s->g_data++;
			/* write-back unless it frees something (qcow2-writeback.c) */
			qr->g_wbm = s->l2wb && !qr->nfr && !qr->oldl2;
			if (s->l2wb && !qr->g_wbm)
				s->g_closing = true;
		}
		if (qr->dwrite)
			q2_sub_io(qr, s->file, BD_OP_WRITE, qr->dhost, qr->dlen, qr->iov,
				  qr->diovcnt, 0);
		unsigned nrb = qr->in_grp ? 0 : s->rbd_n;
		struct iovec *mv = q2_miov_need(qr, (int)nrb + 1);
		if (!qr->in_grp)
			q2_write_rb_dirty(qr); /* uses mv[0 .. nrb); a group writes its own */
		if (qr->newl2) {
			q2_mp_set_entries(s, qr->newtab, qr);
			mv[nrb].iov_base = qr->newtab;
			mv[nrb].iov_len = s->cs;
			q2_sub_io(qr, s->file, BD_OP_WRITE, qr->newl2, s->cs, &mv[nrb], 1, 0);
		}
		if (qr->in_grp)
			q2_grp_check(s);
		return qr->pending ? 1 : 2;
	}
	case ST_MP_P1_DONE:
		if (qr->in_grp) {
			/* data written: the group flushes once every member's data is written */
			s->g_data--;
			if (!s->g_data && s->g_commit && s->grpq->st == ST_G_RB_DONE &&
			    !s->grpq->pending)
				q2_wake(s->grpq);
			if (qr->err)
				return qr->err; /* leaves the group: its entries are not written */
			if (qr->g_wbm) {
				q2_grp_wb_done(qr);
				return 3; /* program done */
			}
			qr->st = ST_G_WAIT;
			return 1;
		}
		if (qr->err)
			return qr->err;
		qr->st = ST_MP_P2_DONE;
		/* (the L2/L1 sectors written next may hold write-back entries too) */
		if (q2_meta_flush_needed(s, qr->incr, qr->newl2 != 0))
			q2_sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		return qr->pending ? 1 : 2;
	case ST_MP_P2_DONE: {
		if (qr->err)
			return qr->err;
		qr->st = ST_MP_P3_DONE;
		s->l2_writing++; /* until ST_MP_P3_DONE: guest flushes wait */
		struct iovec *v = q2_miov_need(qr, 1);
		if (qr->newl2) {
			q2_mp_install_l2(qr);
			uint64_t lo = (qr->l1i * 8) & ~511ull;
			uint64_t hi = lo + 512;
			if (hi > (uint64_t)s->l1_size * 8)
				hi = ((uint64_t)s->l1_size * 8 + 511) & ~511ull;
			/* The L1 array is host order: write from a big-endian copy. */
			uint8_t *be = malloc(hi - lo);
			if (!be) {
				q2_l2_written(s);
				return -ENOMEM;
			}
			memset(be, 0, hi - lo);
			for (uint64_t k = lo / 8; k < hi / 8 && k < s->l1_size; k++)
				q2_put_be64(be + 8 * k - lo, s->l1[k]);
			free(qr->mbuf);
			qr->mbuf = be; /* freed with the request */
			v[0].iov_base = be;
			v[0].iov_len = hi - lo;
			q2_sub_io(qr, s->file, BD_OP_WRITE, s->h.l1_table_offset + lo, hi - lo,
				  v, 1, 0);
		} else {
			uint8_t *tab = s->slots[qr->slot].tab;
			uint64_t lo = (qr->l2i * s->esz) & ~511ull;
			uint64_t hi = ((qr->l2i + qr->nent) * s->esz + 511) & ~511ull;
			q2_mp_set_entries(s, tab, qr);
			v[0].iov_base = tab + lo;
			v[0].iov_len = hi - lo;
			q2_sub_io(qr, s->file, BD_OP_WRITE, s->slots[qr->slot].off + lo, hi - lo,
				  v, 1, 0);
		}
		return qr->pending ? 1 : 2;
	}
	case ST_MP_P3_DONE:
		q2_l2_written(s);
		if (qr->err) {
			/* The L2/L1 entry on disk is unknown: stop writing. */
			q2_corrupt(s, UINT64_MAX, 0, true, "L2/L1 update failed (%s)",
				   strerror(-qr->err));
			return qr->err;
		}
		q2_mp_done(qr);
		return 3; /* program done */
	default:
		return -EIO;
	}
}

/* Prepare the L2 side of a program for guest offset off: pin the cached table, or allocate a
 * new one (empty, or a copy of a shared one).  Returns 1 ready, 0 waiting (state unchanged),
 * <0 error. */
int q2_mp_prepare_l2(struct q2_req *qr, uint64_t off)
{
	struct q2 *s = qr->s;
	uint64_t l1e;
	int slot, r;

	r = q2_l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	qr->l1i = off >> s->l2shift;
	if (slot >= 0 && (l1e & Q2_OFLAG_COPIED)) {
		qr->slot = slot;
		s->slots[slot].pins++;
		return 1;
	}
	/* A new table: allocate one cluster. */
	uint64_t c, got, need;
	r = q2_alloc_find(s, 1, &c, &got, &need);
	if (r < 0)
		return r;
	if (r == 0) {
		qr->rb_idx = need;
		qr->rb_ret = qr->st;
		r = q2_rb_create(qr);
		return r < 0 ? r : 0;
	}
	r = q2_alloc_take(s, c, 1);
	if (r < 0)
		return r;
	qr->incr = true;
	qr->newl2 = c << s->cb;
	qr->newtab = malloc(s->cs);
	if (!qr->newtab)
		return -ENOMEM;
	if (slot >= 0) {
		memcpy(qr->newtab, s->slots[slot].tab, s->cs);
		qr->oldl2 = l1e & Q2_OFFSET_MASK;
		qr->slot = slot;
		s->slots[slot].pins++;
	} else {
		memset(qr->newtab, 0, s->cs);
	}
	return 1;
}

/* The table the program changes: the new one, or the cached one. */
uint8_t *q2_mp_tab(struct q2_req *qr)
{
	return qr->newl2 ? qr->newtab : qr->s->slots[qr->slot].tab;
}

void q2_ents_need(struct q2_req *qr, uint64_t n)
{
	if (n > qr->entcap) {
		qr->entcap = n;
		qr->ents = realloc(qr->ents, n * sizeof(*qr->ents));
		if (!qr->ents)
			abort();
	}
}

/* The clusters an entry references lose a reference when it is replaced. */
void q2_free_entry(struct q2_req *qr, const struct q2_l2e *e, bool discard)
{
	if (e->type == Q2_C_NORMAL || e->type == Q2_C_ZERO_ALLOC)
		q2_add_free(qr, e->host, qr->s->cs, discard);
	else if (e->type == Q2_C_COMPRESSED)
		q2_add_free(qr, e->host & ~511ull, e->csize + (e->host & 511), discard);
}

/* ---- writes ---- */

bool q2_reads_zero_unalloc(struct q2 *s, uint64_t guest)
{
	return !s->backing || guest >= bd_node_size(bd_child_node(s->backing));
}

void q2_cow_free(struct q2_req *qr)
{
	for (int i = 0; i < 2; i++) {
		free(qr->cow[i].buf);
		free(qr->cow[i].cbuf);
	}
	memset(qr->cow, 0, sizeof(qr->cow));
}

/* Read the old contents of a cluster for copy-on-write into cow->buf. */
int q2_cow_read(struct q2_req *qr, struct q2_cow *cw)
{
	struct q2 *s = qr->s;
	struct iovec *v = malloc(sizeof(*v));

	if (!v)
		return -ENOMEM;
	cw->buf = malloc(s->cs);
	if (!cw->buf) {
		free(v);
		return -ENOMEM;
	}
	/* the iovec is freed with the request through cbuf when not compressed */
	switch (cw->type) {
	case Q2_C_UNALLOC: {
		uint64_t bsz = s->backing ? bd_node_size(bd_child_node(s->backing)) : 0;
		uint64_t avail = cw->guest >= bsz ? 0 : bsz - cw->guest;
		uint64_t rd = avail < s->cs ? avail : s->cs;
		memset(cw->buf + rd, 0, s->cs - rd);
		if (rd) {
			v->iov_base = cw->buf;
			v->iov_len = rd;
			q2_sub_io(qr, s->backing, BD_OP_READ, cw->guest, rd, v, 1, 0);
		}
		cw->cbuf = (uint8_t *)v;
		return 0;
	}
	case Q2_C_ZERO_PLAIN:
	case Q2_C_ZERO_ALLOC:
		memset(cw->buf, 0, s->cs);
		cw->cbuf = (uint8_t *)v;
		return 0;
	case Q2_C_NORMAL: {
		uint64_t fsz = bd_node_size(q2_fnode(s));
		uint64_t avail = cw->host >= fsz ? 0 : fsz - cw->host;
		uint64_t rd = avail < s->cs ? avail : s->cs;
		memset(cw->buf + rd, 0, s->cs - rd);
		if (rd) {
			v->iov_base = cw->buf;
			v->iov_len = rd;
			q2_sub_io(qr, s->file, BD_OP_READ, cw->host, rd, v, 1, 0);
		}
		cw->cbuf = (uint8_t *)v;
		return 0;
	}
	case Q2_C_COMPRESSED: {
		uint64_t fsz = bd_node_size(q2_fnode(s));
		uint64_t clen = cw->csize;
		if (cw->host >= fsz) {
			free(v);
			return -EIO;
		}
		if (clen > fsz - cw->host)
			clen = fsz - cw->host;
		cw->csize = clen;
		/* cbuf holds [iovec][compressed bytes] */
		free(v);
		cw->cbuf = malloc(sizeof(struct iovec) + clen);
		if (!cw->cbuf)
			return -ENOMEM;
		v = (struct iovec *)(void *)cw->cbuf;
		v->iov_base = cw->cbuf + sizeof(struct iovec);
		v->iov_len = clen;
		q2_sub_io(qr, s->file, BD_OP_READ, cw->host, clen, v, 1, 0);
		return 0;
	}
	}
	free(v);
	return -EIO;
}

int q2_cow_finish(struct q2_req *qr, struct q2_cow *cw)
{
	struct q2 *s = qr->s;

	if (!cw->needed || cw->type != Q2_C_COMPRESSED)
		return 0;
	int r = q2_decompress((enum q2_compression)s->h.compression_type,
			      cw->cbuf + sizeof(struct iovec), cw->csize, cw->buf, s->cs);
	if (r < 0) {
		q2_corrupt(s, cw->host, cw->csize, false,
			   "Cannot decompress the cluster at 0x%" PRIx64 " for copy-on-write",
			   cw->host);
		return -EIO;
	}
	return 0;
}

/* Plan one allocation program for the write range at qr->pos (lock held). */
int q2_alloc_plan(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t off = qr->req->offset + qr->pos;
	uint64_t inoff = off & (s->cs - 1);
	uint64_t rem = qr->end - qr->pos;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t want, c, got, need, n;
	int r;

	if (qr->slot < 0 && !qr->newl2) {
		r = q2_mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = q2_mp_tab(qr);
	/* Clusters to allocate: from l2i on, while they cannot be written in place. */
	want = (inoff + rem + s->cs - 1) >> s->cb;
	if (want > s->l2n - l2i)
		want = s->l2n - l2i;
	if (want > Q2_MAX_RUN_CLUSTERS)
		want = Q2_MAX_RUN_CLUSTERS;
	if (qr->comp_skip == qr->pos + 1)
		want = 1; /* a compressed write's cluster that did not compress: only that one */
	for (n = 0; n < want; n++) {
		struct q2_l2e e;
		if (q2_l2e_decode(q2_be64(tab + 8 * (l2i + n)), s->cb, &e) < 0) {
			if (n == 0) {
				q2_corrupt(s, UINT64_MAX, 0, true, "Invalid L2 entry");
				return -EIO;
			}
			break;
		}
		if (q2_in_place(s, &e))
			break;
	}
	if (n == 0 && qr->newl2) {
		q2_corrupt(s, UINT64_MAX, 0, true,
			   "L2 table shared by a snapshot holds an exclusively owned cluster");
		return -EIO;
	}
	if (n == 0) {
		/* The first cluster became writable in place (another request allocated it):
		 * drop the program and write in place. */
		return 2;
	}
	r = q2_alloc_find(s, n, &c, &got, &need);
	if (r < 0)
		return r;
	if (r == 0) {
		qr->rb_idx = need;
		qr->rb_ret = ST_A_PLAN;
		r = q2_rb_create(qr);
		return r < 0 ? r : 0;
	}
	/* Clusters from zero_from on were never written since open and read as zeroes (see
	 * q2_zero_mark()); read it before the allocation moves it. */
	uint64_t zero_from = s->zero_from;
	r = q2_alloc_take(s, c, got);
	if (r < 0)
		return r;
	n = got;
	qr->incr = true;

	/* Entries and frees. */
	q2_ents_need(qr, n);
	qr->l2i = l2i;
	qr->nent = n;
	for (uint64_t k = 0; k < n; k++) {
		struct q2_l2e e;
		q2_l2e_decode(q2_be64(tab + 8 * (l2i + k)), s->cb, &e);
		qr->ents[k] = ((c + k) << s->cb) | Q2_OFLAG_COPIED;
		q2_free_entry(qr, &e, s->pass_discard_other);
	}

	/* The guest range written: [off, off+chunk). */
	uint64_t chunk = (n << s->cb) - inoff;
	if (chunk > rem)
		chunk = rem;
	qr->chunk = chunk;
	uint64_t tail = (n << s->cb) - inoff - chunk;

	/* Copy-on-write of the head of the first and the tail of the last cluster. */
	q2_cow_free(qr);
	/* head/tail: bytes written before/after the guest data; zhead/ztail: they are zeroes onto
	 * a never-written cluster, so only the padding to the file's alignment is written. */
	uint64_t head = inoff;
	bool zhead = false, ztail = false;
	uint64_t fa = bd_node_limits(q2_fnode(s))->req_align;
	if (fa < 1 || fa > s->cs)
		fa = s->cs;
	for (int i = 0; i < 2; i++) {
		uint64_t k = i == 0 ? 0 : n - 1;
		struct q2_cow *cw = &qr->cow[i];
		struct q2_l2e e;
		if ((i == 0 && inoff == 0) || (i == 1 && tail == 0))
			continue;
		if (i == 1 && n == 1 && qr->cow[0].needed) {
			/* head and tail in the same cluster: one copy serves both */
			continue;
		}
		q2_l2e_decode(q2_be64(tab + 8 * (l2i + k)), s->cb, &e);
		uint64_t guest = (off & ~(s->cs - 1)) + (k << s->cb);
		bool zero = e.type == Q2_C_ZERO_PLAIN || e.type == Q2_C_ZERO_ALLOC ||
			    (e.type == Q2_C_UNALLOC && q2_reads_zero_unalloc(s, guest));
		if (zero && c + k >= zero_from) {
			if (i == 0) {
				head = inoff & (fa - 1);
				zhead = true;
			} else {
				tail = tail & (fa - 1);
				ztail = true;
			}
			continue;
		}
		cw->needed = true;
		cw->type = e.type;
		cw->host = e.host;
		cw->csize = e.csize;
		cw->guest = guest;
		if (e.type == Q2_C_UNALLOC && q2_reads_zero_unalloc(s, cw->guest))
			cw->type = Q2_C_ZERO_PLAIN;
		r = q2_cow_read(qr, cw);
		if (r < 0)
			return r;
	}

	/* The data write: [cow head][guest data][cow tail] at the new clusters. */
	struct q2_cow *tsrc = qr->cow[1].needed ? &qr->cow[1] : &qr->cow[0];
	struct iovec *v = q2_iov_need(qr, qr->srccnt + 2);
	int nv = 0;
	if (head)
		v[nv++] = (struct iovec){zhead ? q2_zero_buf() : qr->cow[0].buf, head};
	nv += bd_iov_slice(qr->src, qr->srccnt, qr->pos - qr->src_base, chunk, v + nv);
	if (tail)
		v[nv++] = (struct iovec){ztail ? q2_zero_buf() : tsrc->buf + (s->cs - tail), tail};
	qr->diovcnt = nv;
	qr->dwrite = true;
	qr->dhost = (c << s->cb) + (inoff - head);
	qr->dlen = head + chunk + tail;
	qr->st = ST_A_COW_READ_DONE;
	return 1;
}

/* ---- write-zeroes and discard: the metadata program for whole clusters ---- */

/* Plan the metadata program for whole clusters [off, off + n clusters) (one L2 table).
 * zero: write-zeroes (else discard).  Returns 1 program planned, 2 nothing to change,
 * 0 waiting, <0 error. */
int q2_zd_plan(struct q2_req *qr, uint64_t off, uint64_t n, bool zero, bool unmap)
{
	struct q2 *s = qr->s;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t l1e;
	int slot, r;

	/* Without an L2 table: nothing to do unless zeroes must hide a backing file. */
	r = q2_l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	if (slot < 0 && (!zero || q2_reads_zero_unalloc(s, off)))
		return 2;
	if (qr->slot < 0 && !qr->newl2) {
		r = q2_mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = q2_mp_tab(qr);
	bool has_backing = s->backing != NULL;
	bool changed = false;

	q2_ents_need(qr, n);
	qr->l2i = l2i;
	qr->nent = n;
	for (uint64_t k = 0; k < n; k++) {
		uint64_t raw = q2_be64(tab + 8 * (l2i + k));
		struct q2_l2e e;
		uint64_t ne;

		if (q2_l2e_decode(raw, s->cb, &e) < 0) {
			q2_corrupt(s, UINT64_MAX, 0, true, "Invalid L2 entry 0x%016" PRIx64, raw);
			return -EIO;
		}
		if (zero) {
			if (!unmap && q2_in_place(s, &e)) {
				ne = e.host | Q2_OFLAG_COPIED | Q2_OFLAG_ZERO;
			} else if (!unmap && e.type == Q2_C_ZERO_ALLOC && e.copied &&
				   q2_rc_get(s, e.host >> s->cb) == 1) {
				ne = raw;
			} else {
				ne = Q2_OFLAG_ZERO;
				q2_free_entry(qr, &e, s->pass_discard_request);
			}
		} else {
			if (e.type == Q2_C_UNALLOC || e.type == Q2_C_ZERO_PLAIN) {
				ne = raw;
			} else {
				ne = (has_backing && s->h.version >= 3) ? Q2_OFLAG_ZERO : 0;
				q2_free_entry(qr, &e, s->pass_discard_request);
			}
		}
		qr->ents[k] = ne;
		if (ne != raw)
			changed = true;
	}
	if (!changed && !qr->newl2) {
		qr->nfr = 0;
		return 2;
	}
	qr->st = ST_MP_P1;
	return 1;
}

/* ---- the free program: apply queued refcount decrements ---- */

void q2_fp_run(struct q2_req *fq)
{
	struct q2 *s = fq->s;

	switch (fq->st) {
	case ST_FP_START:
		fq->st = ST_FP_FLUSHED;
		fq->err = 0;
		/* The L2 updates that dropped these references must be durable first. */
		q2_sub_io(fq, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		if (fq->pending)
			return;
		/* fall through */
	case ST_FP_FLUSHED: {
		if (fq->err) {
			/* keep the references: a leak, never a dangling entry */
			bd_log(BD_LOG_WARN, "qcow2 '%s': flush failed; %u cluster ranges leaked",
			       bd_node_name(s->node), fq->nfp);
			fq->nfp = 0;
			goto done;
		}
		struct iovec *dv = q2_iov_need(fq, (int)fq->nfp + 1);
		int ndv = 0;
		for (unsigned i = 0; i < fq->nfp; i++) {
			struct q2_free *f = &fq->fp[i];
			uint64_t c0 = f->off >> s->cb;
			uint64_t c1 = (f->off + f->len + s->cs - 1) >> s->cb;
			for (uint64_t c = c0; c < c1; c++) {
				uint64_t v = q2_rc_get(s, c);
				if (v == 0) {
					q2_corrupt(s, c << s->cb, s->cs, false,
						   "Refcount underflow at cluster 0x%" PRIx64,
						   c << s->cb);
					continue;
				}
				if (q2_rc_set(s, c, v - 1) < 0)
					continue;
				if (v == 1) {
					if (c < s->free_hint)
						s->free_hint = c;
					if (s->dc_off && (s->dc_off >> s->cb) <= c &&
					    c <= ((s->dc_off + s->cs) >> s->cb))
						s->dc_off = 0;
					if (f->discard && ndv < (int)fq->nfp)
						dv[ndv++] = (struct iovec){NULL, c};
				}
			}
		}
		fq->st = ST_FP_DONE;
		for (int i = 0; i < ndv; i++) {
			uint64_t c = dv[i].iov_len;
			q2_sub_io(fq, s->file, BD_OP_DISCARD, c << s->cb, s->cs, NULL, 0, 0);
		}
		q2_write_rb_dirty(fq);
		if (fq->pending)
			return;
	}
		/* fall through */
	case ST_FP_DONE:
		if (fq->err)
			bd_log(BD_LOG_WARN, "qcow2 '%s': writing refcount decrements failed: %s",
			       bd_node_name(s->node), strerror(-fq->err));
	done:
		free(fq->fp);
		fq->fp = NULL;
		fq->nfp = 0;
		atomic_store(&s->free_running, false);
		s->lock_owner = NULL;
		if (s->nfrees <= Q2_FREE_BARRIER && s->barrier) {
			s->barrier = false;
			if (!s->frozen)
				q2_wake_stalled(s);
		}
		q2_lock_release(s);
		return;
	default:
		return;
	}
}

static void fp_start(struct q2 *s)
{
	struct q2_req *fq = s->freeq;

	atomic_store(&s->free_running, true);
	s->lock_owner = fq;
	fq->fp = s->frees;
	fq->nfp = s->nfrees;
	s->frees = NULL;
	s->nfrees = s->frees_cap = 0;
	fq->st = ST_FP_START;
	fq->pending = 0;
	fq->err = 0;
	q2_wake(fq);
}
