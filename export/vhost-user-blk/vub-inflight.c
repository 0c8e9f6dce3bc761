/*
 * vub-inflight.c - in-flight I/O tracking of the vhost-user-blk export (INFLIGHT_SHMFD): the
 * shared region QEMU keeps across back-end restarts, in the layouts of QEMU's
 * docs/interop/vhost-user.rst "Inflight I/O tracking" for split rings (one entry per head
 * descriptor) and packed rings (a copy of every descriptor taken from the ring, in a free list),
 * and the restart: rolling back a half-done update, finding what was in flight, resubmitting it in
 * the order it was taken, and where the ring resumes.
 *
 * Threads: everything here runs on the queue's I/O loop [loop] between start and stop (the
 * restore at start, the marks per request and per completion), except vub_inflight_queue_size
 * [any].  Updates are ordered with compiler fences only: what must survive is a SIGKILL of this
 * process, and stores it executed reach the shared mapping in program order.
 *
 * The region is writable by the front end too: every index read back from it is checked, and an
 * inconsistent region breaks the queue instead of being trusted.
 */
#include "export/vhost-user-blk/vub-int.h"

#include <stdlib.h>
#include <string.h>

size_t vub_inflight_queue_size(bool packed, uint16_t qsize)
{
	size_t sz =
	    packed ? sizeof(struct vub_inflight_pqueue) + sizeof(struct vub_inflight_pdesc) * qsize
		   : sizeof(struct vub_inflight_queue) + sizeof(struct vub_inflight_desc) * qsize;

	return (sz + VUB_INFLIGHT_ALIGN - 1) & ~(size_t)(VUB_INFLIGHT_ALIGN - 1);
}

static int cmp_split(const void *a, const void *b, void *arg)
{
	const struct vub_inflight_queue *f = arg;
	uint64_t ca = f->desc[*(const uint16_t *)a].counter,
		 cb = f->desc[*(const uint16_t *)b].counter;
	return ca < cb ? -1 : ca > cb;
}

static void log_resubmit(struct vub_queue *q, unsigned n)
{
	bd_log(BD_LOG_INFO,
	       "vhost-user-blk export '%s': queue %u: resubmitting %u in-flight request(s)",
	       q->c->exp->id, q->idx, n);
}

/* ---------------------------------------------------------------------------------------------
 * Split rings
 */
void vub_ifs_restore(struct vub_queue *q)
{
	struct vub_inflight_queue *f = q->ifq;
	uint16_t used = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	uint16_t *heads, n = 0;

	if (f->version == 0 || f->desc_num != q->num) {
		memset(f->desc, 0, sizeof(f->desc[0]) * q->num);
		f->desc_num = (uint16_t)q->num;
		f->used_idx = used;
		f->last_batch_head = 0;
		f->version = 1;
		return;
	}
	if (f->used_idx != used) {
		/* We died between publishing a used entry and clearing its in-flight mark. */
		if (f->last_batch_head < q->num)
			f->desc[f->last_batch_head].inflight = 0;
		f->used_idx = used;
	}
	heads = malloc(sizeof(*heads) * q->num);
	if (!heads)
		abort();
	q->if_counter = 0;
	for (uint32_t i = 0; i < q->num; i++) {
		if (f->desc[i].inflight == 1) {
			heads[n++] = (uint16_t)i;
			if (f->desc[i].counter > q->if_counter)
				q->if_counter = f->desc[i].counter;
		} else {
			f->desc[i].inflight = 0;
		}
	}
	q->used_idx = used;
	q->last_avail = (uint16_t)(used + n);
	if (n) {
		qsort_r(heads, n, sizeof(*heads), cmp_split, f);
		log_resubmit(q, n);
		for (uint16_t i = 0; i < n && !q->broken && q->free; i++)
			vub_q_pop_split(q, heads[i]);
	}
	free(heads);
}

/* ---------------------------------------------------------------------------------------------
 * Packed rings
 */
static void ifp_init(struct vub_queue *q)
{
	struct vub_inflight_pqueue *f = q->ifp;

	memset(f->desc, 0, sizeof(f->desc[0]) * q->num);
	for (uint32_t i = 0; i < q->num; i++)
		f->desc[i].next = (uint16_t)(i + 1 < q->num ? i + 1 : VUB_IFP_END);
	f->features = 0;
	f->desc_num = (uint16_t)q->num;
	f->free_head = f->old_free_head = 0;
	f->used_idx = f->old_used_idx = q->used_idx;
	f->used_wrap_counter = f->old_used_wrap_counter = q->used_wrap;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	f->version = 1;
}

/* Resubmit the chain recorded at entry head (tmp: room for num descriptors).  false if the
 * recorded chain does not walk (the queue is then broken). */
static bool ifp_resubmit(struct vub_queue *q, uint16_t head, struct vring_packed_desc *tmp)
{
	uint16_t n = vub_ifp_chain(q->ifp, q->num, head, tmp);
	struct vub_req *r = q->free;
	struct vub_chain ch;

	if (!r || !n)
		return false;
	ch = (struct vub_chain){.iov = r->iov, .max = VUB_MAX_IOV};
	if (vub_packed_walk(&q->c->mem, tmp, n, 0, q->indirect, &ch) < 0 || ch.ndesc != n)
		return false;
	q->free = r->next_free;
	r->id = ch.id;
	r->ndesc = n;
	r->if_head = head;
	vub_q_start_chain(q, r, &ch);
	return true;
}

void vub_ifp_restore(struct vub_queue *q)
{
	struct vub_inflight_pqueue *f = q->ifp;
	uint32_t num = q->num, taken = 0;
	uint16_t *heads;
	uint8_t *owned;
	struct vring_packed_desc *tmp;
	const char *bad = NULL;
	int n;

	if (f->version != 1 || f->desc_num != num) {
		ifp_init(q);
		return;
	}
	heads = malloc(sizeof(*heads) * num);
	owned = malloc(num);
	tmp = malloc(sizeof(*tmp) * num);
	if (!heads || !owned || !tmp)
		abort();
	n = vub_ifp_scan(f, num, q->pdesc, heads, owned, &taken, &q->if_counter, &bad);
	if (n < 0) {
		vub_q_set_broken(q, bad);
		goto out;
	}
	/* The ring resumes after everything taken: what was used, then what is in flight. */
	q->used_idx = f->used_idx;
	q->used_wrap = f->used_wrap_counter != 0;
	q->last_avail = q->used_idx;
	q->avail_wrap = q->used_wrap;
	if ((uint32_t)q->last_avail + taken >= num) {
		q->last_avail = (uint16_t)(q->last_avail + taken - num);
		q->avail_wrap = !q->avail_wrap;
	} else {
		q->last_avail = (uint16_t)(q->last_avail + taken);
	}
	if (n) {
		log_resubmit(q, (unsigned)n);
		for (int i = 0; i < n && !q->broken; i++)
			if (!ifp_resubmit(q, heads[i], tmp)) {
				vub_q_set_broken(q,
						 "in-flight region: recorded chain is malformed");
				break;
			}
	}
out:
	free(tmp);
	free(owned);
	free(heads);
}

bool vub_ifp_take(struct vub_queue *q, struct vub_req *r, uint16_t idx)
{
	struct vub_inflight_pqueue *f = q->ifp;
	uint16_t head = f->old_free_head;
	struct vub_inflight_pdesc *h;

	if (head >= q->num || f->free_head != head)
		return false;
	h = &f->desc[head];
	h->num = 0;
	h->counter = ++q->if_counter;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	h->inflight = 1;
	for (uint16_t k = 0; k < r->ndesc; k++) {
		uint16_t fh = f->free_head;
		uint32_t slot = (uint32_t)idx + k;
		struct vring_packed_desc d;
		struct vub_inflight_pdesc *e;

		if (fh >= q->num)
			return false;
		if (slot >= q->num)
			slot -= q->num;
		memcpy(&d, &q->pdesc[slot], sizeof(d));
		e = &f->desc[fh];
		if (k + 1 == r->ndesc)
			h->last = fh;
		h->num++;
		e->addr = d.addr;
		e->len = d.len;
		e->flags = d.flags;
		e->id = d.id;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		f->free_head = e->next;
	}
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	f->old_free_head = f->free_head;
	r->if_head = head;
	return true;
}

void vub_ifp_push_begin(struct vub_queue *q, struct vub_req *r, uint16_t used_idx, bool wrap)
{
	struct vub_inflight_pqueue *f = q->ifp;
	uint16_t e = r->if_head;

	if (e < q->num && f->desc[e].last < q->num) {
		f->desc[f->desc[e].last].next = f->free_head;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		f->free_head = e;
	}
	f->used_idx = used_idx;
	f->used_wrap_counter = wrap;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

void vub_ifp_push_end(struct vub_queue *q, struct vub_req *r)
{
	struct vub_inflight_pqueue *f = q->ifp;

	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	if (r->if_head < q->num)
		f->desc[r->if_head].inflight = 0;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	/* Commit.  The order matters for ifp_recover: head, wrap counter, index. */
	f->old_free_head = f->free_head;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	f->old_used_wrap_counter = f->used_wrap_counter;
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
	f->old_used_idx = f->used_idx;
}
