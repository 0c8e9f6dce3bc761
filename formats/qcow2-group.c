/*
 * qcow2-group.c - the group of allocating writes that holds the metadata lock together: in
 * write-back mode (the default) each member sets its entries in the cache as soon as its data
 * is written; members that free clusters, and every member with l2-writeback=off, share one
 * refcount write, one flush and one round of L2/L1 writes.  [the node's owner loop]
 */
#include "formats/qcow2-int.h"

#include <stdlib.h>
#include <string.h>


/* ---- groups of allocating writes ----
 *
 * While the metadata lock is held, allocating writes queue (q2_grp_join); when it frees, the
 * queued ones that fit (grp_fits) become the members of one group, woken together.  Each member
 * plans its program (clusters and new L2 tables taken in the in-memory refcounts, COW read, new
 * refcount blocks created on the way with their own write/flush/table ordering) and writes its
 * data (and a new L2 table) at once.
 *
 * Write-back members (nothing freed; qcow2-writeback.c): when the data is written the member
 * sets its entries in the cached table, marks them dirty and leaves the group
 * (q2_grp_wb_done); its request goes on.  The group stays open: new allocating writes join it
 * directly while nobody else waits for the lock, so data writes of many requests overlap and
 * nothing waits for a commit.  The group ends when its last member leaves (after a write-back
 * when too many tables are dirty); a flush, discard or other program waiting for the lock stops
 * new members from joining, so it gets the lock once the members in flight are done.
 *
 * Write-through members (they free clusters: the entry that dropped a reference must be on
 * disk before the refcount decrement; or l2-writeback=off): the first one closes the group to
 * new members; when every member is planned and the write-back ones have left, the group's
 * pseudo request writes the union of the dirty refcount sectors, flushes once, sets every
 * member's entries in the cached tables and writes each changed L2 sector and L1 sector once;
 * then the members complete their program.  So data, refcounts and new tables are durable
 * before any L2/L1 entry points at them.
 *
 * Members never touch the same guest cluster (their claimed ranges are disjoint) and a table
 * that is not ours alone yet (L1 entry empty or shared: a new table or a copy will be made) is
 * claimed by one member only; others wait for the next group.  At most half of the L2 cache's
 * slots are pinned by a group, so a member always finds a slot. */

static void grp_claim(struct q2 *s, struct q2_req *qr)
{
	uint64_t off = qr->req->offset + qr->pos;
	uint64_t rem = qr->end - qr->pos;
	uint64_t tend = ((off >> s->l2shift) + 1) << s->l2shift;
	uint64_t last = off + rem < tend ? off + rem : tend;
	uint64_t maxb = (uint64_t)Q2_MAX_RUN_CLUSTERS << s->cb;

	qr->g_l1i = off >> s->l2shift;
	qr->g_c0 = off >> s->cb;
	qr->g_c1 = (last - 1) >> s->cb;
	qr->g_bytes = last - off < maxb ? last - off : maxb;
}

/* May qr join the group?  *new_l1: its L1 index is not a member's yet. */
static bool grp_fits(struct q2 *s, struct q2_req *qr, bool *new_l1)
{
	unsigned max_l1 = s->nslots / 2 ? s->nslots / 2 : 1;
	bool own = qr->g_l1i < s->l1_size && (s->l1[qr->g_l1i] & Q2_OFLAG_COPIED);

	*new_l1 = true;
	for (unsigned i = 0; i < s->gm_n; i++) {
		struct q2_req *m = s->gm[i];
		if (m->g_c0 <= qr->g_c1 && qr->g_c0 <= m->g_c1)
			return false; /* the same guest cluster: serialized */
		if (m->g_l1i == qr->g_l1i) {
			if (!own)
				return false; /* one member makes the new table */
			*new_l1 = false;
		}
	}
	if (s->gm_n == 0)
		return true;
	if (s->gm_n >= Q2_GRP_MAX || s->g_bytes + qr->g_bytes > Q2_GRP_BYTES)
		return false;
	if (s->l2wb && q2_wb_over_limit(s))
		return false; /* the slots a member may need are dirty: write back first */
	return !*new_l1 || s->g_nl1 < max_l1;
}

static void grp_add(struct q2 *s, struct q2_req *qr, bool new_l1)
{
	s->gm[s->gm_n++] = qr;
	s->g_wait++;
	s->g_bytes += qr->g_bytes;
	if (new_l1)
		s->g_nl1++;
	qr->in_grp = true;
	qr->g_ready = false;
	qr->batch = false;
	qr->waiting_lock = false;
}

static void grp_begin(struct q2 *s)
{
	if (!s->grpq) {
		s->grpq = calloc(1, sizeof(*s->grpq));
		if (!s->grpq)
			abort();
		s->grpq->s = s;
		s->grpq->slot = -1;
		s->grpq->is_grp = true;
	}
	s->lock_owner = s->grpq;
	s->gm_n = s->g_wait = s->g_nl1 = s->g_data = 0;
	s->g_bytes = 0;
	s->g_commit = false;
}

/* The lock is free and the first waiter is an allocating write: form a group of the queued
 * allocating writes that fit (up to the first other waiter) and wake them. */
void q2_grp_form(struct q2 *s)
{
	struct q2_req **pp = &s->lock_head, *w, *prev = NULL;

	grp_begin(s);
	while ((w = *pp) && w->batch) {
		bool new_l1;
		if (grp_fits(s, w, &new_l1)) {
			*pp = w->next;
			if (s->lock_tail == w)
				s->lock_tail = prev;
			grp_add(s, w, new_l1);
		} else {
			prev = w;
			pp = &w->next;
		}
	}
	for (unsigned i = 0; i < s->gm_n; i++)
		q2_wake(s->gm[i]);
}

bool q2_grp_join(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	bool new_l1;

	if (qr->in_grp)
		return true;
	grp_claim(s, qr);
	if (!s->lock_head && !atomic_load(&s->free_running)) {
		if (!s->lock_owner) {
			grp_begin(s);
			grp_fits(s, qr, &new_l1);
			grp_add(s, qr, new_l1);
			return true;
		}
		/* a group still planning (or writing back) takes more members */
		if (s->lock_owner == s->grpq && !s->g_commit && !s->g_closing &&
		    !q2_wb_over_limit(s) && grp_fits(s, qr, &new_l1)) {
			grp_add(s, qr, new_l1);
			return true;
		}
	}
	qr->next = NULL;
	if (s->lock_tail)
		s->lock_tail->next = qr;
	else
		s->lock_head = qr;
	s->lock_tail = qr;
	qr->waiting_lock = true;
	qr->batch = true;
	return false;
}

static void grp_end(struct q2 *s)
{
	struct q2_req *w, *next;

	s->gm_n = s->g_wait = s->g_nl1 = s->g_data = 0;
	s->g_bytes = 0;
	s->g_commit = false;
	s->g_closing = false;
	/* pinned slots are free again for anyone waiting for a slot */
	for (w = s->slot_waiters, s->slot_waiters = NULL; w; w = next) {
		next = w->next;
		q2_wake(w);
	}
	q2_lock_release(s);
}

/* Every member is ready (or gone): commit the write-through members once the write-back ones
 * have left, or end an empty group (writing the tables back first when too many are dirty). */
void q2_grp_check(struct q2 *s)
{
	if (s->lock_owner != s->grpq || s->g_commit)
		return;
	if (s->gm_n == 0) {
		if (s->l2wb && q2_wb_over_limit(s)) {
			s->g_commit = true;
			s->grpq->err = 0;
			s->grpq->wb_ret = ST_G_WB_DONE;
			s->grpq->st = ST_WB_START;
			q2_wake(s->grpq);
			return;
		}
		grp_end(s);
		return;
	}
	if (s->g_wait)
		return;
	for (unsigned i = 0; i < s->gm_n; i++)
		if (s->gm[i]->g_wbm)
			return; /* it leaves when its data is written */
	s->g_commit = true;
	s->grpq->st = ST_G_START;
	s->grpq->err = 0;
	q2_wake(s->grpq);
}

/* Take qr out of the member list (and out of the group's budget). */
static void grp_remove(struct q2 *s, struct q2_req *qr)
{
	bool l1_shared = false;

	qr->in_grp = false;
	for (unsigned i = 0; i < s->gm_n; i++) {
		if (s->gm[i] == qr) {
			s->gm[i] = s->gm[--s->gm_n];
			break;
		}
	}
	for (unsigned i = 0; i < s->gm_n; i++)
		l1_shared |= s->gm[i]->g_l1i == qr->g_l1i;
	if (!l1_shared && s->g_nl1)
		s->g_nl1--;
	s->g_bytes -= qr->g_bytes < s->g_bytes ? qr->g_bytes : s->g_bytes;
	if (!qr->g_ready)
		s->g_wait--;
	qr->g_ready = false;
	qr->g_wbm = false;
}

void q2_grp_leave(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	if (!qr->in_grp)
		return;
	grp_remove(s, qr);
	q2_grp_check(s);
}

/* A write-back member's data is written (the group holds the lock, so no write-back program
 * runs now): its entries go into the cached table, or its new table into the cache and L1,
 * marked dirty; then it leaves the group and its request goes on. */
void q2_grp_wb_done(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	if (qr->newl2) {
		/* the table (with these entries) was written in the data phase */
		q2_mp_install_l2(qr);
		q2_l1_mark_dirty(s, qr->l1i);
	} else {
		q2_mp_set_entries(s, s->slots[qr->slot].tab, qr);
		q2_l2_mark_dirty(s, qr->slot, qr->l2i * s->esz, (qr->l2i + qr->nent) * s->esz);
	}
	q2_mp_done(qr);
	grp_remove(s, qr);
	q2_wb_arm(s);
	q2_grp_check(s);
}

/* Hand every member back to its request (err: the program failed), end the group. */
static void grp_finish(struct q2_req *gq, int err)
{
	struct q2 *s = gq->s;

	for (unsigned i = 0; i < s->gm_n; i++) {
		struct q2_req *m = s->gm[i];
		if (!err)
			q2_mp_done(m);
		else if (!m->err)
			m->err = err;
		m->in_grp = false;
		m->g_ready = false;
		m->st = ST_G_DONE;
		q2_wake(m);
	}
	s->gm_n = s->g_wait = s->g_nl1 = s->g_data = 0;
	s->g_bytes = 0;
	if (!err && s->l2wb && !s->broken && q2_wb_over_limit(s)) {
		/* write-back members left dirty tables before this commit: write them back
		 * before the lock is free, or the next group's members may find no slot */
		s->g_commit = true;
		gq->err = 0;
		gq->wb_ret = ST_G_WB_DONE;
		gq->st = ST_WB_START;
		q2_wake(gq);
		return;
	}
	grp_end(s);
}

struct q2_span {
	uint64_t file; /* file offset */
	uint8_t *mem;  /* bytes to write (NULL: an L1 sector, filled later) */
	uint64_t len;
};

static int span_cmp(const void *a, const void *b)
{
	const struct q2_span *x = a, *y = b;
	return x->file < y->file ? -1 : x->file > y->file;
}

/* Set every member's entries (and new tables' L1 entries) and write each changed L2/L1 sector
 * once. */
static int grp_write_l2(struct q2_req *gq)
{
	struct q2 *s = gq->s;
	struct q2_span *sp = malloc(s->gm_n * sizeof(*sp));
	unsigned n = 0, m, nl1 = 0;

	if (!sp)
		return -ENOMEM;
	for (unsigned i = 0; i < s->gm_n; i++) {
		struct q2_req *qr = s->gm[i];
		if (qr->newl2) {
			q2_mp_install_l2(qr);
			sp[n++] = (struct q2_span){s->h.l1_table_offset + ((qr->l1i * 8) & ~511ull),
						   NULL, 512};
		} else {
			uint8_t *tab = s->slots[qr->slot].tab;
			uint64_t lo = (qr->l2i * s->esz) & ~511ull;
			uint64_t hi = ((qr->l2i + qr->nent) * s->esz + 511) & ~511ull;
			q2_mp_set_entries(s, tab, qr);
			sp[n++] = (struct q2_span){s->slots[qr->slot].off + lo, tab + lo, hi - lo};
		}
	}
	/* Merge overlapping and adjacent ranges of the same table (or of the L1 table). */
	qsort(sp, n, sizeof(*sp), span_cmp);
	m = 0;
	for (unsigned i = 0; i < n; i++) {
		struct q2_span *p = m ? &sp[m - 1] : NULL;
		if (p && !p->mem == !sp[i].mem && sp[i].file <= p->file + p->len &&
		    (!p->mem || (uintptr_t)sp[i].mem - sp[i].file == (uintptr_t)p->mem - p->file)) {
			uint64_t end = sp[i].file + sp[i].len;
			if (end > p->file + p->len)
				p->len = end - p->file;
			continue;
		}
		sp[m++] = sp[i];
	}
	/* L1 sectors: big-endian copies of the in-memory table. */
	uint64_t l1bytes = (uint64_t)s->l1_size * 8;
	uint64_t l1total = 0;
	for (unsigned i = 0; i < m; i++) {
		if (sp[i].mem)
			continue;
		uint64_t lo = sp[i].file - s->h.l1_table_offset;
		uint64_t hi = lo + sp[i].len;
		if (hi > ((l1bytes + 511) & ~511ull))
			hi = (l1bytes + 511) & ~511ull;
		sp[i].len = hi - lo;
		l1total += sp[i].len;
		nl1++;
	}
	free(gq->mbuf);
	gq->mbuf = NULL;
	if (nl1) {
		gq->mbuf = calloc(1, l1total);
		if (!gq->mbuf) {
			free(sp);
			return -ENOMEM;
		}
	}
	struct iovec *v = q2_miov_need(gq, (int)m);
	uint8_t *be = gq->mbuf;
	for (unsigned i = 0; i < m; i++) {
		if (!sp[i].mem) {
			uint64_t lo = sp[i].file - s->h.l1_table_offset;
			for (uint64_t k = lo / 8; k < (lo + sp[i].len) / 8 && k < s->l1_size; k++)
				q2_put_be64(be + 8 * k - lo, s->l1[k]);
			sp[i].mem = be;
			be += sp[i].len;
		}
		v[i] = (struct iovec){sp[i].mem, sp[i].len};
	}
	for (unsigned i = 0; i < m; i++)
		q2_sub_io(gq, s->file, BD_OP_WRITE, sp[i].file, sp[i].len, &v[i], 1, 0);
	free(sp);
	return 0;
}

void q2_grp_run(struct q2_req *gq)
{
	struct q2 *s = gq->s;
	int r;

	switch (gq->st) {
	case ST_G_START:
		/* The refcounts of every member's clusters (and new tables, refcount blocks). */
		gq->st = ST_G_RB_DONE;
		q2_write_rb_dirty(gq);
		if (gq->pending)
			return;
		/* fall through */
	case ST_G_RB_DONE:
		if (s->g_data)
			return; /* woken by the last member whose data is written */
		if (gq->err) {
			grp_finish(gq, gq->err);
			return;
		}
		gq->st = ST_G_FLUSHED;
		bool newl2 = false;
		for (unsigned i = 0; i < s->gm_n; i++)
			newl2 |= s->gm[i]->newl2 != 0;
		if (q2_meta_flush_needed(s, true, newl2))
			q2_sub_io(gq, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		if (gq->pending)
			return;
		/* fall through */
	case ST_G_FLUSHED:
		if (gq->err) {
			grp_finish(gq, gq->err);
			return;
		}
		gq->st = ST_G_L2_DONE;
		s->l2_writing++; /* until ST_G_L2_DONE: guest flushes wait */
		r = grp_write_l2(gq);
		if (r < 0 && !gq->err)
			gq->err = r;
		if (gq->pending)
			return;
		/* fall through */
	case ST_G_L2_DONE:
		q2_l2_written(s);
		free(gq->mbuf);
		gq->mbuf = NULL;
		if (gq->err) {
			/* The L2/L1 entries on disk are unknown: stop writing. */
			q2_corrupt(s, UINT64_MAX, 0, true, "L2/L1 update failed (%s)",
				   strerror(-gq->err));
			grp_finish(gq, gq->err);
			return;
		}
		grp_finish(gq, 0);
		return;
	case ST_WB_START:
	case ST_WB_RB_DONE:
	case ST_WB_FLUSHED:
	case ST_WB_WRITTEN:
		/* an empty group writing the tables back (q2_grp_check) */
		r = q2_wb_step(gq);
		if (r == 1)
			return;
		if (r < 0) {
			grp_finish(gq, r);
			return;
		}
		/* r == 3: ST_G_WB_DONE */
		/* fall through */
	case ST_G_WB_DONE:
		grp_finish(gq, gq->err);
		return;
	default:
		return;
	}
}

