/*
 * qcow2-writeback.c - write-back of L2/L1 table updates.  A plain allocating write (group
 * commit, qcow2-group.c) writes its data and then only sets its entries in the cached L2 table
 * (or, for a new table, the in-memory L1 entry) and marks them dirty; no flush, no metadata
 * write.  The dirty tables are written by the write-back program: at a guest flush (before the
 * flush that acknowledges it), when more than a quarter of the cache is dirty, on a timer, and
 * on the control thread before snapshots, resize, reopen and close.
 *
 * Ordering (docs/qcow2.md "Crash safety"): the program writes every dirty refcount range,
 * flushes (this also makes the data of the entries durable), then writes the dirty L2 ranges
 * and L1 sectors side by side.  A new L2 table was written whole before its group committed,
 * so the same flush orders it before its L1 entry.  So an entry on disk never points at a
 * cluster whose refcount on disk is zero.  A group that frees anything (overwrite of a shared
 * or compressed cluster, a copied table) still writes through, so a refcount decrement never
 * reaches the disk before the entry that dropped the reference.
 *
 * Threading: owner loop; q2_wb_sync() and q2_wb_stop() run on the control thread while the node
 * is frozen (q2_freeze) or closing, when the owner loop does not touch the metadata.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- dirty marking (the lock holder) ---- */

void q2_l2_mark_dirty(struct q2 *s, int slot, uint64_t lo, uint64_t hi)
{
	struct q2_l2slot *sl = &s->slots[slot];

	if (!sl->dhi) {
		s->ndirty++;
		sl->dlo = (uint32_t)lo;
		sl->dhi = (uint32_t)hi;
		return;
	}
	if (lo < sl->dlo)
		sl->dlo = (uint32_t)lo;
	if (hi > sl->dhi)
		sl->dhi = (uint32_t)hi;
}

void q2_l1_mark_dirty(struct q2 *s, uint64_t l1i)
{
	uint64_t lo = l1i * 8, hi = lo + 8;

	if (!s->l1_dhi) {
		s->l1_dlo = lo;
		s->l1_dhi = hi;
		return;
	}
	if (lo < s->l1_dlo)
		s->l1_dlo = lo;
	if (hi > s->l1_dhi)
		s->l1_dhi = hi;
}

bool q2_meta_flush_needed(struct q2 *s, bool incr, bool newl2)
{
	if (!s->lazy)
		return incr || q2_wb_dirty(s);
	/* lazy refcounts: only a new table must be on disk before the L1 entry naming it */
	return newl2 || s->l1_dhi;
}

bool q2_wb_over_limit(struct q2 *s)
{
	/* A cache that holds every table of the image never evicts one to load another: no
	 * limit then (the timer and guest flushes write back).  Else no member joins a group
	 * once a quarter of the slots is dirty, and the group writes back when its last member
	 * leaves: members in flight touch at most half of the slots (grp_fits), so at most three
	 * quarters are dirty or pinned and a member always finds a slot to load its table. */
	if (s->nslots >= s->l1_size)
		return false;
	return s->ndirty > s->nslots / 4;
}

/* ---- the write-back program ---- */

static int wb_fail(struct q2_req *qr, const char *what)
{
	struct q2 *s = qr->s;
	int err = qr->err ? qr->err : -EIO;

	/* What reached the disk is unknown: stop writing (a leak at worst, never a wrong entry). */
	q2_corrupt(s, UINT64_MAX, 0, true, "Metadata write-back failed: %s (%s)", what,
		   strerror(-err));
	return err;
}

/* Write the dirty L2 ranges (slots pinned until written) and the dirty L1 sectors. */
static int wb_write_tables(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t l1cap = ((uint64_t)s->l1_size * 8 + 511) & ~511ull;
	struct iovec *v = q2_miov_need(qr, (int)s->ndirty + 1);
	int nv = 0;

	free(qr->wb_slots);
	qr->wb_n = 0;
	qr->wb_slots = malloc((s->ndirty + 1) * sizeof(*qr->wb_slots));
	if (!qr->wb_slots)
		return -ENOMEM;
	for (unsigned i = 0; i < s->nslots && s->ndirty; i++) {
		struct q2_l2slot *sl = &s->slots[i];
		if (!sl->dhi)
			continue;
		uint64_t lo = sl->dlo & ~511u, hi = ((uint64_t)sl->dhi + 511) & ~511ull;
		if (hi > s->cs)
			hi = s->cs;
		sl->pins++;
		qr->wb_slots[qr->wb_n++] = (int)i;
		sl->dlo = sl->dhi = 0;
		s->ndirty--;
		v[nv] = (struct iovec){sl->tab + lo, hi - lo};
		q2_sub_io(qr, s->file, BD_OP_WRITE, sl->off + lo, hi - lo, &v[nv], 1, 0);
		nv++;
	}
	s->ndirty = 0;
	if (s->l1_dhi) {
		uint64_t lo = s->l1_dlo & ~511ull, hi = (s->l1_dhi + 511) & ~511ull;
		if (hi > l1cap)
			hi = l1cap;
		free(qr->mbuf);
		qr->mbuf = calloc(1, hi - lo);
		if (!qr->mbuf)
			return -ENOMEM;
		for (uint64_t k = lo / 8; k < hi / 8 && k < s->l1_size; k++)
			q2_put_be64(qr->mbuf + 8 * k - lo, s->l1[k]);
		s->l1_dlo = s->l1_dhi = 0;
		v[nv] = (struct iovec){qr->mbuf, hi - lo};
		q2_sub_io(qr, s->file, BD_OP_WRITE, s->h.l1_table_offset + lo, hi - lo, &v[nv], 1,
			  0);
	}
	return 0;
}

int q2_wb_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct q2_req *w, *next;
	int r;

	for (;;) {
		switch (qr->st) {
		case ST_WB_START:
			if (s->broken)
				return -EIO;
			if (!q2_wb_dirty(s)) {
				qr->st = qr->wb_ret;
				return 3;
			}
			qr->st = ST_WB_RB_DONE;
			q2_write_rb_dirty(qr);
			if (qr->pending)
				return 1;
			continue;
		case ST_WB_RB_DONE:
			if (qr->err)
				return wb_fail(qr, "refcount blocks");
			qr->st = ST_WB_FLUSHED;
			if (!s->lazy || s->l1_dhi)
				q2_sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
			if (qr->pending)
				return 1;
			continue;
		case ST_WB_FLUSHED:
			if (qr->err)
				return wb_fail(qr, "flush");
			qr->st = ST_WB_WRITTEN;
			/* the tables look clean from now on: a guest flush must still wait for
			 * these writes (q2_l2_written restarts it) */
			s->l2_writing++;
			r = wb_write_tables(qr);
			if (r < 0 && !qr->err)
				qr->err = r;
			if (qr->pending)
				return 1;
			continue;
		case ST_WB_WRITTEN:
			q2_l2_written(s);
			for (unsigned i = 0; i < qr->wb_n; i++)
				s->slots[qr->wb_slots[i]].pins--;
			qr->wb_n = 0;
			free(qr->wb_slots);
			qr->wb_slots = NULL;
			free(qr->mbuf);
			qr->mbuf = NULL;
			/* clean slots can be evicted again */
			for (w = s->slot_waiters, s->slot_waiters = NULL; w; w = next) {
				next = w->next;
				q2_wake(w);
			}
			if (qr->err)
				return wb_fail(qr, "L2/L1 tables");
			qr->st = qr->wb_ret;
			return 3;
		default:
			return -EIO;
		}
	}
}

/* ---- the timer ---- */

static void wb_timer_fire(struct bd_timer *t)
{
	struct q2 *s = (struct q2 *)(void *)((char *)t - offsetof(struct q2, wb_timer));

	s->wb_armed = false;
	if (s->frozen || s->broken || !q2_wb_dirty(s))
		return;
	if (s->wbq->st != ST_START) {
		q2_wb_arm(s); /* still busy with the last round: try again later */
		return;
	}
	s->wbq->st = ST_WT_LOCK;
	s->wbq->err = 0;
	q2_wake(s->wbq);
}

void q2_wb_arm(struct q2 *s)
{
	if (!s->wb_interval_ns || s->wb_armed || !s->wbq)
		return;
	if (!s->wb_timer.fire)
		bd_timer_init(&s->wb_timer, wb_timer_fire);
	s->wb_armed = true;
	bd_timer_arm(s->owner, &s->wb_timer, bd_now_ns() + s->wb_interval_ns);
}

static void wbt_end(struct q2_req *wq)
{
	struct q2 *s = wq->s;

	wq->st = ST_START; /* idle */
	if (s->lock_owner == wq)
		q2_lock_release(s);
}

void q2_wbt_run(struct q2_req *wq)
{
	struct q2 *s = wq->s;
	int r;

	for (;;) {
		switch (wq->st) {
		case ST_WT_LOCK:
			/* frozen: the control thread writes back (q2_freeze) */
			if (s->frozen && s->lock_owner != wq) {
				wq->st = ST_START;
				return;
			}
			if (!q2_lock_take(wq))
				return; /* woken as the owner */
			if (s->frozen) {
				wbt_end(wq);
				return;
			}
			wq->wb_ret = ST_WT_DONE;
			wq->st = ST_WB_START;
			wq->err = 0;
			continue;
		case ST_WB_START:
		case ST_WB_RB_DONE:
		case ST_WB_FLUSHED:
		case ST_WB_WRITTEN:
			r = q2_wb_step(wq);
			if (r == 1)
				return;
			if (r < 0) {
				wbt_end(wq);
				return;
			}
			continue;
		case ST_WT_DONE:
			wbt_end(wq);
			return;
		default:
			return;
		}
	}
}

/* ---- control thread ---- */

int q2_wb_sync(struct q2 *s)
{
	struct bd_node *f = q2_fnode(s);
	int r = 0;

	if (!q2_wb_dirty(s) || s->broken || !s->writable)
		return 0;
	for (unsigned i = 0; i < s->rbd_n && r == 0; i++) {
		struct q2_rbdirty *d = &s->rbd[i];
		uint64_t lo = d->lo & ~511u, hi = ((uint64_t)d->hi + 511) & ~511ull;
		if (hi > s->cs)
			hi = s->cs;
		r = q2_sync_write(f, s->reft[d->idx] + lo, s->rb[d->idx] + lo, hi - lo);
	}
	s->rbd_n = 0;
	if (r == 0 && (!s->lazy || s->l1_dhi))
		r = q2_sync_flush(f);
	for (unsigned i = 0; i < s->nslots && r == 0; i++) {
		struct q2_l2slot *sl = &s->slots[i];
		if (!sl->dhi)
			continue;
		uint64_t lo = sl->dlo & ~511u, hi = ((uint64_t)sl->dhi + 511) & ~511ull;
		if (hi > s->cs)
			hi = s->cs;
		r = q2_sync_write(f, sl->off + lo, sl->tab + lo, hi - lo);
		sl->dlo = sl->dhi = 0;
	}
	if (r == 0 && s->l1_dhi) {
		uint64_t lo = s->l1_dlo & ~511ull, hi = (s->l1_dhi + 511) & ~511ull;
		uint64_t cap = ((uint64_t)s->l1_size * 8 + 511) & ~511ull;
		if (hi > cap)
			hi = cap;
		uint8_t *be = calloc(1, hi - lo);
		if (!be) {
			r = -ENOMEM;
		} else {
			for (uint64_t k = lo / 8; k < hi / 8 && k < s->l1_size; k++)
				q2_put_be64(be + 8 * k - lo, s->l1[k]);
			r = q2_sync_write(f, s->h.l1_table_offset + lo, be, hi - lo);
			free(be);
		}
	}
	if (r == 0)
		r = q2_sync_flush(f);
	if (r < 0) {
		q2_corrupt(s, UINT64_MAX, 0, true, "Metadata write-back failed (%s)", strerror(-r));
		return r;
	}
	s->ndirty = 0;
	s->l1_dlo = s->l1_dhi = 0;
	return 0;
}

struct wb_stop_ctx {
	struct q2 *s;
	bool idle;
};

static void wb_stop_msg(void *arg)
{
	struct wb_stop_ctx *c = arg;
	struct q2 *s = c->s;

	s->wb_interval_ns = 0; /* never armed again */
	if (s->wb_armed) {
		bd_timer_cancel(s->owner, &s->wb_timer);
		s->wb_armed = false;
	}
	/* nothing on the owner loop may still touch the tables: no timer round, no lock holder
	 * (a group writing back after its last member left), no free program */
	c->idle = (!s->wbq || s->wbq->st == ST_START) && !s->lock_owner &&
		  !atomic_load(&s->free_running);
}

void q2_wb_stop(struct q2 *s)
{
	struct wb_stop_ctx c = {.s = s};
	struct bd_loop *owner = atomic_load(&s->owner);

	for (;;) {
		if (owner && owner != bd_loop_current())
			bd_loop_call(owner, wb_stop_msg, &c);
		else
			wb_stop_msg(&c);
		if (c.idle)
			return;
		usleep(1000);
	}
}
