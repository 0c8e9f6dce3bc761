/*
 * qcow2-cache.c - the L2 table cache of a qcow2 node: a fixed set of cluster-size slots (struct
 * q2_l2slot), loaded asynchronously and evicted LRU; requests that need a table being loaded, or
 * a free slot, wait and are woken.  Tables are written by the metadata programs
 * (qcow2-alloc.c) and the write-back program (qcow2-writeback.c); a dirty slot is not evicted.
 *
 * Threading: owner loop only (docs/qcow2.md).
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>

/* ---- the L2 cache ---- */

struct q2_load {
	struct q2 *s;
	int slot;
	struct iovec iov;
};

static void l2_loaded(struct bd_req *c, int ret)
{
	struct q2_load *ld = c->opaque;
	struct q2 *s = ld->s;
	struct q2_l2slot *sl = &s->slots[ld->slot];
	struct q2_req *w = sl->waiters, *next;

	bd_req_put(c);
	sl->loading = false;
	sl->waiters = NULL;
	if (ret < 0)
		sl->off = 0;
	free(ld);
	for (; w; w = next) {
		next = w->next;
		if (ret < 0 && !w->err)
			w->err = ret;
		q2_wake(w);
	}
	/* A slot may have become evictable for someone waiting for any slot. */
	for (w = s->slot_waiters, s->slot_waiters = NULL; w; w = next) {
		next = w->next;
		q2_wake(w);
	}
}

/* The L2 table for guest offset off.  Returns 1 when ready (*slot >= 0, or -1 when the L1 entry
 * is empty; *l1e gets the L1 entry), 0 when qr must wait (it is woken later), <0 on error. */
int q2_l2_get(struct q2_req *qr, uint64_t off, int *slot, uint64_t *l1e)
{
	struct q2 *s = qr->s;
	uint64_t l1i = off >> s->l2shift;
	uint64_t l2off;
	int victim = -1;

	*slot = -1;
	*l1e = l1i < s->l1_size ? s->l1[l1i] : 0;
	l2off = *l1e & Q2_OFFSET_MASK;
	if (!l2off)
		return 1;
	for (unsigned i = 0; i < s->nslots; i++) {
		struct q2_l2slot *sl = &s->slots[i];
		if (sl->off == l2off) {
			if (sl->loading) {
				qr->next = sl->waiters;
				sl->waiters = qr;
				return 0;
			}
			sl->lru = ++s->lru_clock;
			*slot = (int)i;
			return 1;
		}
		if (sl->pins || sl->loading || sl->dhi)
			continue; /* in use, or dirty (written back first, qcow2-writeback.c) */
		if (victim < 0 || sl->off == 0 ||
		    (s->slots[victim].off != 0 && sl->lru < s->slots[victim].lru))
			victim = (int)i;
	}
	if (victim < 0) {
		qr->next = s->slot_waiters;
		s->slot_waiters = qr;
		return 0;
	}
	/* Load into the victim slot. */
	struct q2_l2slot *sl = &s->slots[victim];
	struct q2_load *ld = malloc(sizeof(*ld));
	struct bd_chan *fc = bd_child_chan(s->file, s->och);
	struct bd_req *c;
	int r;

	if (!ld)
		return -ENOMEM;
	if (l2off + s->cs > bd_node_size(q2_fnode(s))) {
		free(ld);
		q2_corrupt(s, l2off, s->cs, true, "L2 table offset 0x%" PRIx64 " past the end",
			   l2off);
		return -EIO;
	}
	sl->off = l2off;
	sl->loading = true;
	sl->lru = ++s->lru_clock;
	sl->waiters = qr;
	qr->next = NULL;
	ld->s = s;
	ld->slot = victim;
	ld->iov.iov_base = sl->tab;
	ld->iov.iov_len = s->cs;
	c = bd_req_get(fc);
	c->op = BD_OP_READ;
	c->offset = l2off;
	c->len = s->cs;
	c->iov = &ld->iov;
	c->iovcnt = 1;
	c->cb = l2_loaded;
	c->opaque = ld;
	r = bd_submit(fc, c);
	if (r < 0) {
		bd_req_put(c);
		free(ld);
		sl->off = 0;
		sl->loading = false;
		sl->waiters = NULL;
		return r;
	}
	return 0;
}

uint64_t q2_l2_raw(struct q2 *s, int slot, uint64_t l2i)
{
	return q2_be64(s->slots[slot].tab + s->esz * l2i);
}

/* Decode an entry, reporting corruption. */
int q2_l2_entry(struct q2 *s, int slot, uint64_t l2i, struct q2_l2e *e)
{
	uint64_t raw = slot < 0 ? 0 : q2_l2_raw(s, slot, l2i);

	if ((s->h.extl2 ? q2_l2e_decode_ext(raw, s->cb, e) : q2_l2e_decode(raw, s->cb, e)) < 0) {
		q2_corrupt(s, slot < 0 ? UINT64_MAX : s->slots[slot].off + s->esz * l2i, s->esz, true,
			   "Invalid L2 entry 0x%016" PRIx64, raw);
		return -EIO;
	}
	return 0;
}
