/*
 * vub-queue.c - the virtqueues of the vhost-user-blk export: the data path (kicks, descriptor
 * chains to virtio-blk requests on guest memory, bd_submit(), completions on the used ring,
 * in-flight tracking, call eventfd notifications) and starting / stopping queues.
 *
 * Threads:
 *  - The data path runs on the queue's I/O loop [loop]: its kick eventfd is polled by that loop's
 *    ring, requests go to bd_submit() on the node's channel of that loop, and the call eventfd is
 *    signalled once per loop iteration (a struct bd_defer).
 *  - Queue control (vub_queue_*, vub_conn_stop_all) runs on the main loop [control], called from
 *    the message handlers in vub-msg.c: it starts and stops a queue with bd_loop_call() to the
 *    queue's loop and waits until its in-flight requests have completed.
 * Between "start" and "stop" of a queue only its loop touches the queue's ring state; outside
 * that window only the control thread does.  bd_loop_call() orders the two.
 */
#include "export/vhost-user-blk/vub-int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------------------------------------
 * The data path [loop]
 */
static void q_process(struct vub_queue *q);
static void q_stop_check(struct vub_queue *q);

void vub_q_set_broken(struct vub_queue *q, const char *why)
{
	if (!q->broken)
		bd_log(BD_LOG_ERROR, "vhost-user-blk export '%s': queue %u: %s; queue stopped",
		       q->c->exp->id, q->idx, why);
	q->broken = true;
	if (q->err_fd >= 0)
		eventfd_write(q->err_fd, 1);
}

static void q_notify_now(struct vub_queue *q)
{
	bool need = true;

	if (!q->need_notify)
		return;
	q->need_notify = false;
	if (q->call_fd < 0)
		return;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	if (!q->packed) {
		if (q->event_idx) {
			uint16_t ev = __atomic_load_n(&q->avail->ring[q->num], __ATOMIC_RELAXED);
			need = !q->signalled_valid ||
			       vub_need_event(ev, q->used_idx, q->signalled_used);
		} else {
			need = !(__atomic_load_n(&q->avail->flags, __ATOMIC_RELAXED) &
				 VRING_AVAIL_F_NO_INTERRUPT);
		}
	} else {
		uint16_t fl = __atomic_load_n(&q->driver_ev->flags, __ATOMIC_RELAXED);
		if (fl == VRING_PACKED_EVENT_FLAG_DISABLE)
			need = false;
		else if (fl == VRING_PACKED_EVENT_FLAG_DESC && q->event_idx && q->signalled_valid) {
			uint16_t ow = __atomic_load_n(&q->driver_ev->off_wrap, __ATOMIC_RELAXED);
			uint16_t off = ow & 0x7fff, old = q->signalled_used, new_idx = q->used_idx;
			if (new_idx <= old)
				old = (uint16_t)(old - q->num);
			if ((ow >> 15) != q->used_wrap)
				off = (uint16_t)(off - q->num);
			need = vub_need_event(off, new_idx, old);
		}
	}
	q->signalled_used = q->used_idx;
	q->signalled_valid = true;
	if (need) {
		q->nr_calls++;
		eventfd_write(q->call_fd, 1);
	}
}

void vub_q_notify_defer(struct bd_defer *d)
{
	q_notify_now(container_of(d, struct vub_queue, notify_defer));
}

/* Put a finished request on the used ring, recycle its slot. */
static void q_push(struct vub_queue *q, struct vub_req *r, uint32_t len)
{
	if (!q->packed) {
		struct vring_used_elem *e = &q->used->ring[q->used_idx % q->num];
		if (q->ifq)
			q->ifq->last_batch_head = r->id;
		__atomic_store_n(&e->id, (uint32_t)r->id, __ATOMIC_RELAXED);
		__atomic_store_n(&e->len, len, __ATOMIC_RELAXED);
		q->used_idx++;
		__atomic_store_n(&q->used->idx, q->used_idx, __ATOMIC_RELEASE);
		if (q->ifq) {
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			q->ifq->desc[r->id].inflight = 0;
			__atomic_signal_fence(__ATOMIC_SEQ_CST);
			q->ifq->used_idx = q->used_idx;
		}
	} else {
		struct vring_packed_desc *d = &q->pdesc[q->used_idx];
		uint16_t fl =
		    q->used_wrap ? (VRING_PACKED_DESC_F_AVAIL | VRING_PACKED_DESC_F_USED) : 0;
		uint32_t next = (uint32_t)q->used_idx + r->ndesc;
		bool wrap = q->used_wrap;
		if (next >= q->num) {
			next -= q->num;
			wrap = !wrap;
		}
		if (q->ifp)
			vub_ifp_push_begin(q, r, (uint16_t)next, wrap);
		__atomic_store_n(&d->id, r->id, __ATOMIC_RELAXED);
		__atomic_store_n(&d->len, len, __ATOMIC_RELAXED);
		__atomic_store_n(&d->flags, fl, __ATOMIC_RELEASE);
		if (q->ifp)
			vub_ifp_push_end(q, r);
		q->used_idx = (uint16_t)next;
		q->used_wrap = wrap;
	}
	r->next_free = q->free;
	q->free = r;
	q->inflight--;
	q->need_notify = true;
	bd_loop_defer(q->loop, &q->notify_defer);
	if (q->want_process && q->running) {
		q->want_process = false;
		q_process(q);
	}
	q_stop_check(q);
}

static void blk_finish(struct vub_req *r, int ret)
{
	uint8_t st = VIRTIO_BLK_S_OK;

	if (ret == -ENOTSUP || ret == -EOPNOTSUPP)
		st = VIRTIO_BLK_S_UNSUPP;
	else if (ret < 0)
		st = VIRTIO_BLK_S_IOERR;
	*(volatile uint8_t *)r->blk.status = st;
	q_push(r->q, r, (ret == 0 ? r->in_len : 0) + 1);
}

/* A request may be several node requests (the segments of a discard / write-zeroes): the
 * first error wins, the status is written when the last one is done. */
static void blk_part_done(struct vub_req *r, int ret)
{
	if (ret < 0 && r->part_err == 0)
		r->part_err = ret;
	if (--r->parts == 0)
		blk_finish(r, r->part_err);
}

static void blk_done(struct bd_req *br, int ret)
{
	struct vub_req *r = br->opaque;

	bd_req_put(br);
	blk_part_done(r, ret);
}

/* Submit one node request as a part of r (r->parts counts it already). */
static void blk_submit_part(struct vub_req *r, enum bd_op op, uint64_t off, uint64_t len,
			    uint32_t flags, struct iovec *iov, int iovcnt)
{
	struct vub_queue *q = r->q;
	struct bd_req *br = bd_req_get(q->ch);
	int e;

	br->op = op;
	br->offset = off;
	br->len = len;
	br->flags = flags;
	br->iov = iov;
	br->iovcnt = iovcnt;
	br->cb = blk_done;
	br->opaque = r;
	e = bd_submit(q->ch, br);
	if (e < 0) {
		bd_req_put(br);
		blk_part_done(r, e);
	}
}

static void blk_submit(struct vub_req *r, enum bd_op op, uint64_t off, uint64_t len, uint32_t flags,
		       struct iovec *iov, int iovcnt)
{
	r->parts = 1;
	r->part_err = 0;
	blk_submit_part(r, op, off, len, flags, iov, iovcnt);
}

/* ---- large reads split over two loops ---- */
struct vub_part {
	struct vub_req *r;
	struct bd_loop *loop; /* the helper */
	uint64_t off, len;
	int ret;
	int iovcnt;
	struct iovec iov[VUB_MAX_IOV];
};

/* [queue's loop] The helper's half is done. */
static void part_back(void *arg)
{
	struct vub_part *p = arg;
	struct vub_req *r = p->r;
	int ret = p->ret;

	free(p);
	blk_part_done(r, ret);
}

/* [helper loop] */
static void part_send_back(struct vub_part *p)
{
	while (bd_loop_send(p->r->q->loop, part_back, p) < 0) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL); /* -ENOMEM: the request must complete */
	}
}

static void part_done(struct bd_req *br, int ret)
{
	struct vub_part *p = br->opaque;

	bd_req_put(br);
	p->ret = ret;
	part_send_back(p);
}

static void part_submit(void *arg)
{
	struct vub_part *p = arg;
	struct bd_chan *ch = bd_node_chan(p->r->q->c->exp->node, p->loop);
	struct bd_req *br = bd_req_get(ch);
	int e;

	br->op = BD_OP_READ;
	br->offset = p->off;
	br->len = p->len;
	br->flags = 0;
	br->iov = p->iov;
	br->iovcnt = p->iovcnt;
	br->cb = part_done;
	br->opaque = p;
	e = bd_submit(ch, br);
	if (e < 0) {
		bd_req_put(br);
		p->ret = e;
		part_send_back(p);
	}
}

/* A large read on a queue with a helper loop: the first half here, the second on the helper.
 * false: not split (the caller reads it whole). */
static bool blk_split_read(struct vub_req *r, uint64_t off)
{
	struct vub_blk_req *b = &r->blk;
	uint64_t half = (b->data_len / 2) & ~(uint64_t)(VUB_SPLIT_ALIGN - 1), acc = 0;
	struct vub_part *p;
	size_t in;
	int i = 0;

	if (!r->q->helper || b->data_len < VUB_SPLIT_MIN || half == 0)
		return false;
	p = malloc(sizeof(*p));
	if (!p)
		return false;
	while (acc + b->data[i].iov_len <= half)
		acc += b->data[i++].iov_len; /* stops inside the data: half < data_len */
	in = (size_t)(half - acc);
	p->r = r;
	p->loop = r->q->helper;
	p->off = off + half;
	p->len = b->data_len - half;
	p->ret = 0;
	p->iovcnt = 0;
	p->iov[p->iovcnt++] =
	    (struct iovec){(uint8_t *)b->data[i].iov_base + in, b->data[i].iov_len - in};
	for (int k = i + 1; k < b->ndata; k++)
		p->iov[p->iovcnt++] = b->data[k];
	r->parts = 2;
	r->part_err = 0;
	if (bd_loop_send(p->loop, part_submit, p) < 0) {
		free(p);
		return false;
	}
	/* the first half: the pieces before the split point */
	b->data[i].iov_len = in;
	blk_submit_part(r, BD_OP_READ, off, half, 0, b->data, in ? i + 1 : i);
	return true;
}

/* Check a byte range against the disk and the logical block size. */
static bool range_ok(struct vub_export *x, uint64_t sector, uint64_t len)
{
	uint64_t size = atomic_load_explicit(&x->size, memory_order_relaxed), off;

	if (sector > UINT64_MAX / VIRTIO_BLK_SECTOR_SIZE)
		return false;
	off = sector * VIRTIO_BLK_SECTOR_SIZE;
	if ((off | len) & (x->lbs - 1))
		return false;
	return off <= size && len <= size - off;
}

/* DISCARD, WRITE_ZEROES, SECURE_ERASE: 1..VUB_MAX_DWZ_SEG segments, all checked before any is
 * submitted; they run in parallel. */
static void blk_range_op(struct vub_req *r)
{
	struct vub_export *x = r->q->c->exp;
	struct vub_conn *c = r->q->c;
	struct virtio_blk_discard_wz seg[VUB_MAX_DWZ_SEG];
	uint32_t t = r->blk.type, flags = 0;
	unsigned feat = t == VIRTIO_BLK_T_DISCARD	 ? VIRTIO_BLK_F_DISCARD
			: t == VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_F_WRITE_ZEROES
							 : VIRTIO_BLK_F_SECURE_ERASE;
	enum bd_op op = t == VIRTIO_BLK_T_DISCARD ? BD_OP_DISCARD : BD_OP_WRITE_ZEROES;
	unsigned n;

	if (!has_feature(c, feat)) {
		blk_finish(r, -ENOTSUP);
		return;
	}
	if (!x->writable) {
		blk_finish(r, -EROFS);
		return;
	}
	if (r->blk.data_len == 0 || r->blk.data_len % sizeof(seg[0]) ||
	    r->blk.data_len > sizeof(seg)) {
		/* no segment, a partial one, or more than max_*_seg */
		blk_finish(r, r->blk.data_len > sizeof(seg) ? -ENOTSUP : -EIO);
		return;
	}
	n = (unsigned)(r->blk.data_len / sizeof(seg[0]));
	bd_iov_to_buf(r->blk.data, r->blk.ndata, 0, seg, n * sizeof(seg[0]));
	for (unsigned i = 0; i < n; i++) {
		uint32_t allowed = t == VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_WZ_F_UNMAP : 0;
		if (seg[i].flags & ~allowed) {
			blk_finish(r, -ENOTSUP);
			return;
		}
		if (seg[i].num_sectors > VUB_MAX_DISCARD_SECTORS ||
		    !range_ok(x, seg[i].sector,
			      (uint64_t)seg[i].num_sectors * VIRTIO_BLK_SECTOR_SIZE)) {
			blk_finish(r, -EIO);
			return;
		}
	}
	if (!atomic_load_explicit(&c->wce, memory_order_relaxed) && op == BD_OP_WRITE_ZEROES)
		flags |= BD_REQ_FUA;
	r->parts = 1; /* held until every segment is submitted */
	r->part_err = 0;
	for (unsigned i = 0; i < n; i++) {
		uint32_t f = flags;
		if (seg[i].num_sectors == 0)
			continue;
		if (seg[i].flags & VIRTIO_BLK_WZ_F_UNMAP)
			f |= BD_REQ_MAY_UNMAP;
		r->parts++;
		blk_submit_part(r, op, seg[i].sector * VIRTIO_BLK_SECTOR_SIZE,
				(uint64_t)seg[i].num_sectors * VIRTIO_BLK_SECTOR_SIZE, f, NULL, 0);
	}
	blk_part_done(r, 0);
}

static void blk_start(struct vub_req *r, struct vub_chain *ch)
{
	struct vub_queue *q = r->q;
	struct vub_export *x = q->c->exp;
	struct vub_blk_req *b = &r->blk;

	if (vub_blk_parse(ch, b) < 0) {
		/* no header or no status byte: nothing to answer with */
		vub_q_set_broken(q, "request without header or status byte");
		r->next_free = q->free;
		q->free = r;
		q->inflight--;
		q_stop_check(q);
		return;
	}
	r->in_len = 0;
	switch (b->type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_OUT: {
		bool out = b->type == VIRTIO_BLK_T_OUT;
		if (out && !x->writable) {
			blk_finish(r, -EROFS);
			return;
		}
		if (!range_ok(x, b->sector, b->data_len)) {
			blk_finish(r, -EIO);
			return;
		}
		if (b->data_len == 0) {
			blk_finish(r, 0);
			return;
		}
		if (!out)
			r->in_len = (uint32_t)b->data_len;
		if (!out && blk_split_read(r, b->sector * VIRTIO_BLK_SECTOR_SIZE))
			return;
		blk_submit(
		    r, out ? BD_OP_WRITE : BD_OP_READ, b->sector * VIRTIO_BLK_SECTOR_SIZE,
		    b->data_len,
		    out && !atomic_load_explicit(&q->c->wce, memory_order_relaxed) ? BD_REQ_FUA : 0,
		    b->data, b->ndata);
		return;
	}
	case VIRTIO_BLK_T_FLUSH:
		if (!x->writable) {
			blk_finish(r, 0);
			return;
		}
		blk_submit(r, BD_OP_FLUSH, 0, 0, 0, NULL, 0);
		return;
	case VIRTIO_BLK_T_GET_ID: {
		char id[VIRTIO_BLK_ID_BYTES];
		size_t n = b->data_len < sizeof(id) ? b->data_len : sizeof(id);
		memset(id, 0, sizeof(id));
		memcpy(id, x->serial, strnlen(x->serial, sizeof(id)));
		r->in_len = (uint32_t)bd_iov_from_buf(b->data, b->ndata, 0, id, n);
		blk_finish(r, 0);
		return;
	}
	case VIRTIO_BLK_T_DISCARD:
	case VIRTIO_BLK_T_WRITE_ZEROES:
	case VIRTIO_BLK_T_SECURE_ERASE:
		blk_range_op(r);
		return;
	default:
		blk_finish(r, -ENOTSUP);
		return;
	}
}

/* Take a request slot and start the chain at head (split) / slot (packed). */
void vub_q_start_chain(struct vub_queue *q, struct vub_req *r, struct vub_chain *ch)
{
	q->inflight++;
	q->nr_requests++;
	if (q->ifq && !q->packed) {
		q->ifq->desc[r->id].counter = ++q->if_counter;
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		q->ifq->desc[r->id].inflight = 1;
	}
	blk_start(r, ch);
}

bool vub_q_pop_split(struct vub_queue *q, uint16_t head)
{
	struct vub_req *r = q->free;
	struct vub_chain ch = {.iov = r->iov, .max = VUB_MAX_IOV};
	int e;

	e = vub_split_walk(&q->c->mem, q->desc, q->num, head, q->indirect, &ch);
	if (e < 0) {
		vub_q_set_broken(q, e == -E2BIG	   ? "descriptor chain too long"
				    : e == -EFAULT ? "descriptor outside guest memory"
						   : "malformed descriptor chain");
		return false;
	}
	q->free = r->next_free;
	r->id = head;
	r->ndesc = 1;
	vub_q_start_chain(q, r, &ch);
	return true;
}

static void q_process_split(struct vub_queue *q)
{
	for (;;) {
		while (q->free && q->running && !q->broken) {
			uint16_t aidx = __atomic_load_n(&q->avail->idx, __ATOMIC_ACQUIRE), head;
			if (aidx == q->last_avail)
				break;
			if ((uint16_t)(aidx - q->last_avail) > q->num) {
				vub_q_set_broken(q, "available index out of range");
				return;
			}
			head = __atomic_load_n(&q->avail->ring[q->last_avail % q->num],
					       __ATOMIC_RELAXED);
			q->last_avail++;
			if (!vub_q_pop_split(q, head))
				return;
		}
		if (!q->running || q->broken)
			return;
		if (!q->free) {
			q->want_process = true;
			return;
		}
		if (!q->event_idx)
			return;
		__atomic_store_n((uint16_t *)&q->used->ring[q->num], q->last_avail,
				 __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		if (__atomic_load_n(&q->avail->idx, __ATOMIC_ACQUIRE) == q->last_avail)
			return;
	}
}

static void q_process_packed(struct vub_queue *q)
{
	while (q->running && !q->broken) {
		struct vring_packed_desc *d = &q->pdesc[q->last_avail];
		uint16_t fl = __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
		bool avail = fl & VRING_PACKED_DESC_F_AVAIL, used = fl & VRING_PACKED_DESC_F_USED;
		struct vub_req *r;
		struct vub_chain ch;
		int e;

		if (avail != q->avail_wrap || used == q->avail_wrap) {
			/* Empty.  With EVENT_IDX, ask for a kick only when the driver makes the
			 * next descriptor available, then look once more (it may have raced). */
			uint16_t ow = (uint16_t)(q->last_avail | (q->avail_wrap ? 0x8000 : 0));
			if (!q->event_idx ||
			    __atomic_load_n(&q->device_ev->off_wrap, __ATOMIC_RELAXED) == ow)
				return;
			__atomic_store_n(&q->device_ev->off_wrap, ow, __ATOMIC_RELAXED);
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			continue;
		}
		if (!q->free) {
			q->want_process = true;
			return;
		}
		r = q->free;
		ch = (struct vub_chain){.iov = r->iov, .max = VUB_MAX_IOV};
		e = vub_packed_walk(&q->c->mem, q->pdesc, q->num, q->last_avail, q->indirect, &ch);
		if (e < 0) {
			vub_q_set_broken(q, "malformed packed descriptor chain");
			return;
		}
		r->id = ch.id;
		r->ndesc = (uint16_t)ch.ndesc;
		if (q->ifp && !vub_ifp_take(q, r, q->last_avail)) {
			vub_q_set_broken(q, "in-flight region inconsistent");
			return;
		}
		q->free = r->next_free;
		q->last_avail = (uint16_t)(q->last_avail + ch.ndesc);
		if (q->last_avail >= q->num) {
			q->last_avail = (uint16_t)(q->last_avail - q->num);
			q->avail_wrap = !q->avail_wrap;
		}
		vub_q_start_chain(q, r, &ch);
	}
}

static void q_process(struct vub_queue *q)
{
	if (!q->running || q->broken)
		return;
	if (q->packed)
		q_process_packed(q);
	else
		q_process_split(q);
}

static void q_kick(void *arg, int res);

static void q_arm_kick(struct vub_queue *q)
{
	q->kick_poll = vub_poll_arm(q->loop, q->kick_fd, q_kick, q);
}

static void q_kick(void *arg, int res)
{
	struct vub_queue *q = arg;
	uint64_t v;

	q->kick_poll = NULL;
	if (!q->running)
		return;
	if (res < 0) {
		vub_q_set_broken(q, "kick eventfd poll failed");
		return;
	}
	q->nr_kicks++;
	if (read(q->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		bd_log(BD_LOG_WARN, "vhost-user-blk: kick read: %s", strerror(errno));
	q_arm_kick(q);
	q_process(q);
}

/* [loop] Start serving the queue; its configuration was set by the control thread. */
static void q_start_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->ch = bd_node_chan(q->c->exp->node, q->loop);
	bd_log(BD_LOG_DEBUG,
	       "vhost-user-blk queue %u: start num=%u last_avail=%u used=%u packed=%d "
	       "event_idx=%d",
	       q->idx, q->num, q->last_avail, q->used_idx, q->packed, q->event_idx);
	q->running = true;
	q->want_process = false;
	q->signalled_valid = false;
	q->need_notify = false;
	if (q->ifq)
		vub_ifs_restore(q);
	else if (q->ifp)
		vub_ifp_restore(q);
	q_arm_kick(q);
	q_process(q);
	/* Whatever the driver queued before we started: look at it, and signal once. */
	q->need_notify = true;
	bd_loop_defer(q->loop, &q->notify_defer);
}

/* [loop] The queue has stopped and nothing is in flight: flush the notification (a notify_defer
 * queued before this defer has run: defers run in order), note where the ring resumes, and tell
 * the control thread.  After the release store the loop no longer touches q. */
void vub_q_stop_done(struct bd_defer *d)
{
	struct vub_queue *q = container_of(d, struct vub_queue, stop_defer);

	q_notify_now(q);
	/* Everything taken from the ring has completed: a restart (or GET_VRING_BASE) resumes from
	 * here, in SET_VRING_BASE's encoding. */
	if (q->packed)
		q->base = (uint32_t)(q->last_avail & 0x7fff) | ((uint32_t)q->avail_wrap << 15);
	else
		q->base = q->last_avail;
	/* Claim the answer before the release store: a control thread stopping the queue
	 * synchronously (teardown) claims it too, and whoever gets it first decides whether the
	 * message is sent (after the store the loop may no longer read q). */
	bool send = !atomic_exchange_explicit(&q->answer_claimed, true, memory_order_acq_rel);
	atomic_store_explicit(&q->stop_acked, true, memory_order_release);
	while (send && bd_loop_send(bd_loop_main(), vub_q_stopped, q) < 0) {
		struct timespec ts = {0, 1000000};
		nanosleep(&ts, NULL); /* -ENOMEM: the control thread must hear of it */
	}
}

/* [loop] A stop was asked for: finish it once the last request in flight has completed. */
static void q_stop_check(struct vub_queue *q)
{
	if (q->stop_pending && q->inflight == 0) {
		q->stop_pending = false;
		bd_loop_defer(q->loop, &q->stop_defer);
	}
}

/* [loop] Stop taking requests; the stop completes when those in flight have. */
static void q_stop_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->running = false;
	vub_poll_cancel(q->loop, q->kick_poll);
	q->kick_poll = NULL;
	q->stop_pending = true;
	q_stop_check(q);
}

void vub_q_swap_call_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->call_fd = q->new_call_fd;
	q->need_notify = true;
	q_notify_now(q);
}

/* ---------------------------------------------------------------------------------------------
 * Queue control [control]
 *
 * A queue is "started" from vub_queue_try_start() until its stop has completed.  Stops are
 * asynchronous: vub_queue_stop_begin() asks the loop, which answers with vub_q_stopped() on the
 * control thread once the requests in flight have completed (c->pending_stops counts the answers
 * still to come).  Only teardown waits for them (vub_queue_stop).
 */
void vub_queue_stop_begin(struct vub_queue *q)
{
	if (!q->started || q->stopping)
		return;
	q->stopping = true;
	atomic_store_explicit(&q->stop_acked, false, memory_order_relaxed);
	atomic_store_explicit(&q->answer_claimed, false, memory_order_relaxed);
	q->c->pending_stops++;
	if (bd_loop_send(q->loop, q_stop_fn, q) < 0)
		bd_loop_call(q->loop, q_stop_fn, q);
}

void vub_q_stopped(void *arg)
{
	struct vub_queue *q = arg;
	struct vub_conn *c = q->c;

	if (q->stopping) {
		q->stopping = false;
		q->started = false;
	}
	c->pending_stops--;
	vub_conn_stop_answered(c);
}

void vub_queue_stop(struct vub_queue *q)
{
	if (q->started && !q->stopping) {
		/* no answer message: we wait for the acknowledgement ourselves */
		q->stopping = true;
		atomic_store_explicit(&q->stop_acked, false, memory_order_relaxed);
		atomic_store_explicit(&q->answer_claimed, true, memory_order_relaxed);
		bd_loop_call(q->loop, q_stop_fn, q);
	} else if (q->stopping &&
		   !atomic_exchange_explicit(&q->answer_claimed, true, memory_order_acq_rel)) {
		q->c->pending_stops--; /* an asynchronous stop whose answer will now not come */
	}
	if (!q->stopping)
		return;
	while (!atomic_load_explicit(&q->stop_acked, memory_order_acquire)) {
		struct timespec ts = {0, 200000};
		nanosleep(&ts, NULL);
	}
	/* if the loop had claimed the answer, vub_q_stopped() still comes, and finds the queue
	 * stopped already (the connection waits for it as a zombie) */
	q->stopping = false;
	q->started = false;
}

static int queue_ring_setup(struct vub_queue *q)
{
	struct vub_conn *c = q->c;
	uint32_t n = q->num;

	q->packed = has_feature(c, VIRTIO_F_RING_PACKED);
	q->event_idx = has_feature(c, VIRTIO_RING_F_EVENT_IDX);
	q->indirect = has_feature(c, VIRTIO_RING_F_INDIRECT_DESC);
	if (!q->packed) {
		q->desc = vub_uva_to_host(&c->mem, q->desc_ua, 16ull * n);
		q->avail = vub_uva_to_host(&c->mem, q->avail_ua, 6ull + 2ull * n);
		q->used = vub_uva_to_host(&c->mem, q->used_ua, 6ull + 8ull * n);
		if (!q->desc || !q->avail || !q->used)
			return -EFAULT;
		if (((uintptr_t)q->desc & 15) || ((uintptr_t)q->avail & 1) ||
		    ((uintptr_t)q->used & 3))
			return -EINVAL;
		q->last_avail = (uint16_t)q->base;
		q->used_idx = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
	} else {
		q->pdesc = vub_uva_to_host(&c->mem, q->desc_ua, 16ull * n);
		q->driver_ev = vub_uva_to_host(&c->mem, q->avail_ua, 4);
		q->device_ev = vub_uva_to_host(&c->mem, q->used_ua, 4);
		if (!q->pdesc || !q->driver_ev || !q->device_ev)
			return -EFAULT;
		if (((uintptr_t)q->pdesc & 15) || ((uintptr_t)q->driver_ev & 3) ||
		    ((uintptr_t)q->device_ev & 3))
			return -EINVAL;
		q->last_avail = q->base & 0x7fff;
		q->avail_wrap = q->base & 0x8000;
		q->used_idx = q->last_avail;
		q->used_wrap = q->avail_wrap;
		if (q->last_avail >= n)
			return -EINVAL;
		/* Kicks: always without EVENT_IDX; with it, at the descriptor named in off_wrap
		 * (set when the ring runs empty, see q_process_packed). */
		__atomic_store_n(&q->device_ev->off_wrap, (uint16_t)0xffff, __ATOMIC_RELAXED);
		__atomic_store_n(&q->device_ev->flags,
				 q->event_idx ? VRING_PACKED_EVENT_FLAG_DESC
					      : VRING_PACKED_EVENT_FLAG_ENABLE,
				 __ATOMIC_RELAXED);
	}
	q->ifq = NULL;
	q->ifp = NULL;
	if (c->if_map && q->idx < c->if_nq && n == c->if_qsize) {
		size_t qsz = vub_inflight_queue_size(q->packed, c->if_qsize);
		if ((size_t)(q->idx + 1) * qsz <= c->if_size) {
			void *area = (uint8_t *)c->if_map + q->idx * qsz;
			if (q->packed)
				q->ifp = area;
			else
				q->ifq = area;
		} else {
			bd_log(BD_LOG_WARN,
			       "vhost-user-blk export '%s': queue %u: the in-flight region is too "
			       "small for %s rings (asked for before the features were set?); "
			       "requests in flight will not survive a restart",
			       c->exp->id, q->idx, q->packed ? "packed" : "split");
		}
	}
	if (q->nreqs != n) {
		free(q->reqs);
		q->reqs = calloc(n, sizeof(*q->reqs));
		if (!q->reqs) {
			q->nreqs = 0;
			return -ENOMEM;
		}
		q->nreqs = n;
	}
	q->free = NULL;
	for (uint32_t i = 0; i < n; i++) {
		q->reqs[i].q = q;
		q->reqs[i].next_free = q->free;
		q->free = &q->reqs[i];
	}
	q->inflight = 0;
	return 0;
}

/* Start q if it has everything it needs. */
void vub_queue_try_start(struct vub_queue *q)
{
	struct vub_conn *c = q->c;
	int e;

	if (q->started || q->broken || !q->enabled || q->kick_fd < 0 || !q->addr_set || !q->num ||
	    !c->mem.n)
		return;
	e = queue_ring_setup(q);
	if (e < 0) {
		bd_log(BD_LOG_ERROR,
		       "vhost-user-blk export '%s': queue %u: rings not in guest "
		       "memory or misaligned; not started",
		       c->exp->id, q->idx);
		q->broken = true;
		return;
	}
	q->started = true;
	bd_loop_call(q->loop, q_start_fn, q);
}

void vub_close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

void vub_queue_reset(struct vub_queue *q)
{
	vub_queue_stop(q);
	vub_close_fd(&q->kick_fd);
	vub_close_fd(&q->call_fd);
	vub_close_fd(&q->err_fd);
	q->num = 0;
	q->addr_set = false;
	q->enabled = true;
	q->broken = false;
	q->base = 0;
}
