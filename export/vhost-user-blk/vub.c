/*
 * vub.c - the vhost-user-blk export (--export type=vhost-user-blk, block-export-add).
 *
 * Threads:
 *  - The vhost-user socket (listener, the one connected front end, its messages and replies)
 *    lives on the main loop [control].  Messages are handled one at a time; a message that
 *    changes state a running queue reads (memory table, ring addresses, features) first stops
 *    the affected queues: bd_loop_call() to the queue's loop, then wait until its in-flight
 *    requests have completed, change, restart.
 *  - Each virtqueue runs on one I/O loop [loop]: its kick eventfd is polled by that loop's ring,
 *    requests go from descriptors straight to iovecs on guest memory and to bd_submit() on the
 *    node's channel of that loop; completions fill the used ring, and the call eventfd is
 *    signalled once per loop iteration (a struct bd_defer).
 * Between "start" and "stop" of a queue only its loop touches the queue's ring state; outside
 * that window only the control thread does.  bd_loop_call() orders the two.
 *
 * In-flight tracking (GET/SET_INFLIGHT_FD) follows QEMU's docs/interop/vhost-user.rst for split
 * rings, so blockd can be killed and restarted under a running guest (chardev reconnect=1).
 */
#include "blockd/blockd.h"
#include "export/vhost-user-blk/vub-ring.h"

#include <fcntl.h>
#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define VUB_MAX_QUEUES 64u
#define VUB_MAX_RING 32768u
#define VUB_SEG_MAX 254u
#define VUB_MAX_IOV (VUB_SEG_MAX + 6u)
/* Largest segment.  Kept small enough that size_max * seg_max fits in 32 bits: SeaBIOS multiplies
 * them in 32 bits and loops forever on zero-length reads when the product wraps. */
#define VUB_SIZE_MAX (1u << 16)
#define VUB_MAX_DISCARD_SECTORS ((1u << 30) >> 9)
#define VUB_INFLIGHT_ALIGN 64u

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---------------------------------------------------------------------------------------------
 * One-shot polls on a loop's ring that can be abandoned: a cancelled poll's completion may come
 * much later (or, for the main loop at exit, never); the poll object then lives on a global list
 * so it stays reachable, and frees itself when its completion arrives.
 */
struct vub_poll {
	struct bd_io io;
	void (*cb)(void *arg, int res);
	void *arg;
	bool orphan;
	struct vub_poll *prev, *next;
};

static pthread_mutex_t orphan_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vub_poll *orphans;

static void poll_done(struct bd_io *io, int res)
{
	struct vub_poll *p = container_of(io, struct vub_poll, io);

	if (p->orphan) {
		pthread_mutex_lock(&orphan_lock);
		if (p->prev)
			p->prev->next = p->next;
		else
			orphans = p->next;
		if (p->next)
			p->next->prev = p->prev;
		pthread_mutex_unlock(&orphan_lock);
		free(p);
		return;
	}
	void (*cb)(void *, int) = p->cb;
	void *arg = p->arg;
	free(p);
	cb(arg, res);
}

/* [loop] Poll fd for input once on loop; cb(arg, res) runs on loop unless cancelled. */
static struct vub_poll *poll_arm(struct bd_loop *loop, int fd, void (*cb)(void *, int), void *arg)
{
	struct vub_poll *p = calloc(1, sizeof(*p));
	struct io_uring_sqe *sqe;

	if (!p)
		abort();
	p->io.done = poll_done;
	p->cb = cb;
	p->arg = arg;
	sqe = bd_loop_sqe(loop);
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	bd_io_attach(sqe, &p->io);
	return p;
}

/* [loop] Abandon p (armed on loop, which is the calling thread's loop): its callback never runs. */
static void poll_cancel(struct bd_loop *loop, struct vub_poll *p)
{
	struct io_uring_sqe *sqe;

	if (!p)
		return;
	p->orphan = true;
	pthread_mutex_lock(&orphan_lock);
	p->prev = NULL;
	p->next = orphans;
	if (orphans)
		orphans->prev = p;
	orphans = p;
	pthread_mutex_unlock(&orphan_lock);
	sqe = bd_loop_sqe(loop);
	io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&p->io);
	bd_io_attach(sqe, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * Data structures
 */
struct vub_export;
struct vub_conn;
struct vub_queue;

struct vub_req {
	struct vub_queue *q;
	struct vub_req *next_free;
	uint16_t id;	/* split: head index; packed: buffer id */
	uint16_t ndesc; /* packed: ring slots the chain took */
	uint32_t in_len;
	struct vub_blk_req blk;
	struct iovec iov[VUB_MAX_IOV];
};

struct vub_queue {
	struct vub_conn *c;
	unsigned idx;
	struct bd_loop *loop;

	/* Configuration from the front end [control; read by the loop while running]. */
	uint32_t num;
	uint64_t desc_ua, avail_ua, used_ua;
	bool addr_set;
	bool enabled;
	uint32_t base; /* SET_VRING_BASE value */
	int kick_fd, call_fd, err_fd;
	int new_call_fd; /* handed to the loop by SET_VRING_CALL on a running queue */

	/* Ring state [loop while running, control while stopped]. */
	bool running;
	bool broken;
	bool packed, event_idx, indirect;
	struct bd_chan *ch;
	struct vring_desc *desc;
	struct vring_avail *avail;
	struct vring_used *used;
	struct vring_packed_desc *pdesc;
	struct vring_packed_event *driver_ev, *device_ev;
	uint16_t last_avail, used_idx, signalled_used;
	bool signalled_valid;
	bool avail_wrap, used_wrap;
	uint32_t inflight;
	bool want_process; /* ran out of request slots */
	struct vub_req *reqs, *free;
	uint32_t nreqs;
	struct vub_inflight_queue *ifq;
	uint64_t if_counter;
	struct vub_poll *kick_poll;
	struct bd_defer notify_defer;
	bool need_notify;
	bool busy; /* answer of q_check */

	/* statistics (loop) */
	uint64_t nr_requests, nr_kicks, nr_calls;
};

struct vub_conn {
	struct vub_export *exp;
	int fd;
	struct vub_poll *poll;
	bool closing;

	/* message being received */
	struct vhost_user_hdr hdr;
	uint8_t payload[VHOST_USER_MAX_PAYLOAD];
	size_t got;
	int fds[VHOST_USER_MAX_FDS];
	unsigned nfds;

	uint64_t features;
	uint64_t pfeatures;
	bool features_set;
	struct vub_mem mem;
	int backend_fd;
	atomic_bool wce;

	void *if_map;
	size_t if_size;
	uint16_t if_nq, if_qsize;

	struct vub_queue *q[VUB_MAX_QUEUES];
};

struct vub_export {
	char id[128];
	struct bd_node *node;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	bool unlink_path;
	bool writable;
	bool writethrough;
	unsigned nq;
	uint32_t lbs;
	char serial[VIRTIO_BLK_ID_BYTES + 1];
	struct bd_loop *loops[VUB_MAX_QUEUES];
	int listen_fd;
	struct vub_poll *listen_poll;
	struct vub_conn *conn;
	struct bd_node_watch watch;
	_Atomic uint64_t size;
	uint64_t offered;
	struct vub_export *next;
};

static struct vub_export *exports;

static uint64_t offered_protocol_features(void)
{
	return (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
	       (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ) |
	       (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |
	       (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
	       (1ull << VHOST_USER_PROTOCOL_F_RESET_DEVICE) |
	       (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
}

static bool has_feature(const struct vub_conn *c, unsigned bit)
{
	return c->features & (1ull << bit);
}

/* ---------------------------------------------------------------------------------------------
 * The data path [loop]
 */
static void q_process(struct vub_queue *q);

static void q_set_broken(struct vub_queue *q, const char *why)
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

static void q_notify_defer(struct bd_defer *d)
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
		__atomic_store_n(&d->id, r->id, __ATOMIC_RELAXED);
		__atomic_store_n(&d->len, len, __ATOMIC_RELAXED);
		__atomic_store_n(&d->flags, fl, __ATOMIC_RELEASE);
		q->used_idx = (uint16_t)(q->used_idx + r->ndesc);
		if (q->used_idx >= q->num) {
			q->used_idx = (uint16_t)(q->used_idx - q->num);
			q->used_wrap = !q->used_wrap;
		}
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

static void blk_done(struct bd_req *br, int ret)
{
	struct vub_req *r = br->opaque;

	bd_req_put(br);
	blk_finish(r, ret);
}

static void blk_submit(struct vub_req *r, enum bd_op op, uint64_t off, uint64_t len, uint32_t flags,
		       struct iovec *iov, int iovcnt)
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
		blk_finish(r, e);
	}
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

/* DISCARD, WRITE_ZEROES, SECURE_ERASE: one segment. */
static void blk_range_op(struct vub_req *r)
{
	struct vub_export *x = r->q->c->exp;
	struct vub_conn *c = r->q->c;
	struct virtio_blk_discard_wz seg;
	uint32_t t = r->blk.type, flags = 0;
	unsigned feat = t == VIRTIO_BLK_T_DISCARD	 ? VIRTIO_BLK_F_DISCARD
			: t == VIRTIO_BLK_T_WRITE_ZEROES ? VIRTIO_BLK_F_WRITE_ZEROES
							 : VIRTIO_BLK_F_SECURE_ERASE;
	enum bd_op op = t == VIRTIO_BLK_T_DISCARD ? BD_OP_DISCARD : BD_OP_WRITE_ZEROES;

	if (!has_feature(c, feat)) {
		blk_finish(r, -ENOTSUP);
		return;
	}
	if (!x->writable || r->blk.data_len != sizeof(seg)) {
		/* several segments: we announce max_*_seg = 1 */
		blk_finish(r, x->writable ? -ENOTSUP : -EROFS);
		return;
	}
	bd_iov_to_buf(r->blk.data, r->blk.ndata, 0, &seg, sizeof(seg));
	if (t == VIRTIO_BLK_T_WRITE_ZEROES) {
		if (seg.flags & ~VIRTIO_BLK_WZ_F_UNMAP) {
			blk_finish(r, -ENOTSUP);
			return;
		}
		if (seg.flags & VIRTIO_BLK_WZ_F_UNMAP)
			flags |= BD_REQ_MAY_UNMAP;
	} else if (seg.flags) {
		blk_finish(r, -ENOTSUP);
		return;
	}
	if (seg.num_sectors > VUB_MAX_DISCARD_SECTORS ||
	    !range_ok(x, seg.sector, (uint64_t)seg.num_sectors * VIRTIO_BLK_SECTOR_SIZE)) {
		blk_finish(r, -EIO);
		return;
	}
	if (seg.num_sectors == 0) {
		blk_finish(r, 0);
		return;
	}
	if (!atomic_load_explicit(&c->wce, memory_order_relaxed) && op == BD_OP_WRITE_ZEROES)
		flags |= BD_REQ_FUA;
	blk_submit(r, op, seg.sector * VIRTIO_BLK_SECTOR_SIZE,
		   (uint64_t)seg.num_sectors * VIRTIO_BLK_SECTOR_SIZE, flags, NULL, 0);
}

static void blk_start(struct vub_req *r, struct vub_chain *ch)
{
	struct vub_queue *q = r->q;
	struct vub_export *x = q->c->exp;
	struct vub_blk_req *b = &r->blk;

	if (vub_blk_parse(ch, b) < 0) {
		/* no header or no status byte: nothing to answer with */
		q_set_broken(q, "request without header or status byte");
		r->next_free = q->free;
		q->free = r;
		q->inflight--;
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
static void q_start_chain(struct vub_queue *q, struct vub_req *r, struct vub_chain *ch)
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

static bool q_pop_split(struct vub_queue *q, uint16_t head)
{
	struct vub_req *r = q->free;
	struct vub_chain ch = {.iov = r->iov, .max = VUB_MAX_IOV};
	int e;

	e = vub_split_walk(&q->c->mem, q->desc, q->num, head, q->indirect, &ch);
	if (e < 0) {
		q_set_broken(q, e == -E2BIG    ? "descriptor chain too long"
				: e == -EFAULT ? "descriptor outside guest memory"
					       : "malformed descriptor chain");
		return false;
	}
	q->free = r->next_free;
	r->id = head;
	r->ndesc = 1;
	q_start_chain(q, r, &ch);
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
				q_set_broken(q, "available index out of range");
				return;
			}
			head = __atomic_load_n(&q->avail->ring[q->last_avail % q->num],
					       __ATOMIC_RELAXED);
			q->last_avail++;
			if (!q_pop_split(q, head))
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
			q_set_broken(q, "malformed packed descriptor chain");
			return;
		}
		q->free = r->next_free;
		r->id = ch.id;
		r->ndesc = (uint16_t)ch.ndesc;
		q->last_avail = (uint16_t)(q->last_avail + ch.ndesc);
		if (q->last_avail >= q->num) {
			q->last_avail = (uint16_t)(q->last_avail - q->num);
			q->avail_wrap = !q->avail_wrap;
		}
		q_start_chain(q, r, &ch);
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
	q->kick_poll = poll_arm(q->loop, q->kick_fd, q_kick, q);
}

static void q_kick(void *arg, int res)
{
	struct vub_queue *q = arg;
	uint64_t v;

	q->kick_poll = NULL;
	if (!q->running)
		return;
	if (res < 0) {
		q_set_broken(q, "kick eventfd poll failed");
		return;
	}
	q->nr_kicks++;
	if (read(q->kick_fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		bd_log(BD_LOG_WARN, "vhost-user-blk: kick read: %s", strerror(errno));
	q_arm_kick(q);
	q_process(q);
}

static int cmp_counter(const void *a, const void *b, void *arg)
{
	const struct vub_inflight_queue *f = arg;
	uint64_t ca = f->desc[*(const uint16_t *)a].counter,
		 cb = f->desc[*(const uint16_t *)b].counter;
	return ca < cb ? -1 : ca > cb;
}

/* Split rings with in-flight tracking: pick up what a previous back end left in flight. */
static void q_inflight_restore(struct vub_queue *q)
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
		qsort_r(heads, n, sizeof(*heads), cmp_counter, f);
		bd_log(BD_LOG_INFO,
		       "vhost-user-blk export '%s': queue %u: resubmitting %u "
		       "in-flight request(s)",
		       q->c->exp->id, q->idx, n);
		for (uint16_t i = 0; i < n && !q->broken; i++) {
			if (!q->free)
				break; /* cannot happen: n <= num slots */
			q_pop_split(q, heads[i]);
		}
	}
	free(heads);
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
		q_inflight_restore(q);
	q_arm_kick(q);
	q_process(q);
	/* Whatever the driver queued before we started: look at it, and signal once. */
	q->need_notify = true;
	bd_loop_defer(q->loop, &q->notify_defer);
}

static void q_stop_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->running = false;
	poll_cancel(q->loop, q->kick_poll);
	q->kick_poll = NULL;
}

static void q_check_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->busy = q->inflight > 0;
	if (!q->busy)
		q_notify_now(q);
}

static void q_noop_fn(void *arg)
{
	(void)arg;
}

static void q_swap_call_fn(void *arg)
{
	struct vub_queue *q = arg;

	q->call_fd = q->new_call_fd;
	q->need_notify = true;
	q_notify_now(q);
}

/* ---------------------------------------------------------------------------------------------
 * Queue control [control]
 */
/* Wait until a stopped queue has no request in flight and no notification pending. */
static void queue_wait_idle(struct vub_queue *q)
{
	for (;;) {
		struct timespec ts = {0, 200000};
		bd_loop_call(q->loop, q_check_fn, q);
		if (!q->busy)
			break;
		nanosleep(&ts, NULL);
	}
	/* A notify deferred earlier in that iteration has run once this returns. */
	bd_loop_call(q->loop, q_noop_fn, q);
	/* Everything taken from the ring has completed: a restart (or GET_VRING_BASE) resumes
	 * from here, in SET_VRING_BASE's encoding. */
	if (q->packed)
		q->base = (uint32_t)(q->last_avail & 0x7fff) | ((uint32_t)q->avail_wrap << 15);
	else
		q->base = q->last_avail;
}

static void queue_stop(struct vub_queue *q)
{
	if (!q->running)
		return;
	bd_loop_call(q->loop, q_stop_fn, q);
	queue_wait_idle(q);
}

/* Stop every running queue (all at once, then wait for each); was[] says which ran. */
static void conn_stop_all(struct vub_conn *c, bool *was)
{
	unsigned nq = c->exp->nq;

	for (unsigned i = 0; i < nq; i++) {
		was[i] = c->q[i]->running;
		if (was[i])
			bd_loop_call(c->q[i]->loop, q_stop_fn, c->q[i]);
	}
	for (unsigned i = 0; i < nq; i++)
		if (was[i])
			queue_wait_idle(c->q[i]);
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
	if (c->if_map && !q->packed && q->idx < c->if_nq && n == c->if_qsize) {
		size_t qsz =
		    (sizeof(struct vub_inflight_queue) +
		     sizeof(struct vub_inflight_desc) * c->if_qsize + VUB_INFLIGHT_ALIGN - 1) &
		    ~(size_t)(VUB_INFLIGHT_ALIGN - 1);
		if ((size_t)(q->idx + 1) * qsz <= c->if_size)
			q->ifq = (void *)((uint8_t *)c->if_map + q->idx * qsz);
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
static void queue_try_start(struct vub_queue *q)
{
	struct vub_conn *c = q->c;
	int e;

	if (q->running || q->broken || !q->enabled || q->kick_fd < 0 || !q->addr_set || !q->num ||
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
	bd_loop_call(q->loop, q_start_fn, q);
}

static void close_fd(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

static void queue_reset(struct vub_queue *q)
{
	queue_stop(q);
	close_fd(&q->kick_fd);
	close_fd(&q->call_fd);
	close_fd(&q->err_fd);
	q->num = 0;
	q->addr_set = false;
	q->enabled = true;
	q->broken = false;
	q->base = 0;
}

/* ---------------------------------------------------------------------------------------------
 * Guest memory [control]
 */
static void region_unmap(struct vub_region *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	memset(r, 0, sizeof(*r));
}

/* A mapping past the end of a file faults (SIGBUS) on access: refuse regions that the front end's
 * file does not cover.  (A front end that shrinks the file later can still do that; QEMU never
 * does.) */
static bool fd_covers(int fd, uint64_t len)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return false;
	return !S_ISREG(st.st_mode) || (uint64_t)st.st_size >= len;
}

static int region_map(struct vub_region *r, const struct vhost_user_mem_region *m, int fd)
{
	void *p;
	uint64_t len;

	if (m->memory_size == 0 || m->mmap_offset > UINT64_MAX - m->memory_size ||
	    m->guest_phys_addr > UINT64_MAX - m->memory_size ||
	    m->userspace_addr > UINT64_MAX - m->memory_size)
		return -EINVAL;
	len = m->mmap_offset + m->memory_size;
	if (len > SIZE_MAX || !fd_covers(fd, len))
		return -EINVAL;
	p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	r->gpa = m->guest_phys_addr;
	r->size = m->memory_size;
	r->uva = m->userspace_addr;
	r->mmap_offset = m->mmap_offset;
	r->map = p;
	r->map_len = (size_t)len;
	r->host = (uint8_t *)p + m->mmap_offset;
	return 0;
}

static void mem_clear(struct vub_mem *m)
{
	for (unsigned i = 0; i < m->n; i++)
		region_unmap(&m->r[i]);
	m->n = 0;
}

static bool region_overlaps(const struct vub_mem *m, const struct vhost_user_mem_region *nr)
{
	for (unsigned i = 0; i < m->n; i++) {
		const struct vub_region *r = &m->r[i];
		if (nr->guest_phys_addr < r->gpa + r->size &&
		    r->gpa < nr->guest_phys_addr + nr->memory_size)
			return true;
	}
	return false;
}

/* ---------------------------------------------------------------------------------------------
 * The connection: messages [control]
 */
#define VUB_REPLIED 1
#define VUB_FATAL 2

static int conn_send(int fd, uint32_t req, uint32_t flags, const void *payload, uint32_t size,
		     int pass_fd)
{
	struct vhost_user_hdr h = {.request = req, .flags = flags, .size = size};
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, size}};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
	ssize_t n;

	if (pass_fd >= 0) {
		struct cmsghdr *cm;
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)(sizeof(h) + size))
		return n < 0 ? -errno : -EIO;
	return 0;
}

static int reply(struct vub_conn *c, const void *payload, uint32_t size, int pass_fd)
{
	int e = conn_send(c->fd, c->hdr.request, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK,
			  payload, size, pass_fd);
	return e < 0 ? VUB_FATAL : VUB_REPLIED;
}

static int reply_u64(struct vub_conn *c, uint64_t v)
{
	return reply(c, &v, sizeof(v), -1);
}

static int take_fd(struct vub_conn *c, unsigned i)
{
	int fd;

	if (i >= c->nfds)
		return -1;
	fd = c->fds[i];
	c->fds[i] = -1;
	return fd;
}

static struct vub_queue *msg_queue(struct vub_conn *c, uint32_t index)
{
	if (index >= c->exp->nq)
		return NULL;
	return c->q[index];
}

static int h_set_mem_table(struct vub_conn *c)
{
	struct vhost_user_mem_table t;
	bool was[VUB_MAX_QUEUES];
	struct vub_mem nm = {0};
	int e = 0;

	memset(&t, 0, sizeof(t));
	memcpy(&t, c->payload, c->hdr.size < sizeof(t) ? c->hdr.size : sizeof(t));
	if (t.nregions > VHOST_MEMORY_BASELINE_NREGIONS || t.nregions != c->nfds ||
	    c->hdr.size < 8 + t.nregions * sizeof(struct vhost_user_mem_region))
		return -EINVAL;
	for (unsigned i = 0; i < t.nregions; i++) {
		if (region_overlaps(&nm, &t.regions[i])) {
			e = -EINVAL;
			break;
		}
		e = region_map(&nm.r[nm.n], &t.regions[i], c->fds[i]);
		if (e < 0)
			break;
		nm.n++;
	}
	if (e < 0) {
		mem_clear(&nm);
		return e;
	}
	conn_stop_all(c, was);
	mem_clear(&c->mem);
	c->mem = nm;
	for (unsigned i = 0; i < c->exp->nq; i++)
		if (was[i])
			queue_try_start(c->q[i]);
	return 0;
}

static int h_add_mem_reg(struct vub_conn *c)
{
	struct vhost_user_mem_single s;
	bool was[VUB_MAX_QUEUES];
	struct vub_region r;
	int e;

	memcpy(&s, c->payload, sizeof(s));
	if (c->mem.n >= VUB_MAX_MEM_SLOTS || region_overlaps(&c->mem, &s.region))
		return -EINVAL;
	e = region_map(&r, &s.region, c->fds[0]);
	if (e < 0)
		return e;
	conn_stop_all(c, was);
	c->mem.r[c->mem.n++] = r;
	for (unsigned i = 0; i < c->exp->nq; i++)
		if (was[i])
			queue_try_start(c->q[i]);
	return 0;
}

static int h_rem_mem_reg(struct vub_conn *c)
{
	struct vhost_user_mem_single s;
	bool was[VUB_MAX_QUEUES];
	unsigned i;

	memcpy(&s, c->payload, sizeof(s));
	for (i = 0; i < c->mem.n; i++)
		if (c->mem.r[i].gpa == s.region.guest_phys_addr &&
		    c->mem.r[i].size == s.region.memory_size)
			break;
	if (i == c->mem.n)
		return -ENOENT;
	conn_stop_all(c, was);
	region_unmap(&c->mem.r[i]);
	c->mem.r[i] = c->mem.r[c->mem.n - 1];
	memset(&c->mem.r[c->mem.n - 1], 0, sizeof(c->mem.r[0]));
	c->mem.n--;
	for (unsigned k = 0; k < c->exp->nq; k++)
		if (was[k])
			queue_try_start(c->q[k]);
	return 0;
}

static void fill_config(struct vub_export *x, uint8_t *buf, bool wce)
{
	struct virtio_blk_config cfg;
	const struct bd_limits *l = bd_node_limits(x->node);
	uint32_t phys = l->req_align > x->lbs ? l->req_align : x->lbs;
	uint32_t exp = 0;

	memset(&cfg, 0, sizeof(cfg));
	cfg.capacity = atomic_load(&x->size) / VIRTIO_BLK_SECTOR_SIZE;
	cfg.size_max = VUB_SIZE_MAX;
	cfg.seg_max = VUB_SEG_MAX;
	cfg.blk_size = x->lbs;
	while ((x->lbs << exp) < phys && exp < 16)
		exp++;
	cfg.physical_block_exp = (uint8_t)exp;
	cfg.min_io_size = (uint16_t)(phys / x->lbs);
	if (l->opt_transfer && l->opt_transfer / x->lbs <= UINT32_MAX)
		cfg.opt_io_size = (uint32_t)(l->opt_transfer / x->lbs);
	cfg.wce = wce;
	cfg.num_queues = (uint16_t)x->nq;
	cfg.max_discard_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_discard_seg = 1;
	cfg.discard_sector_alignment = phys / VIRTIO_BLK_SECTOR_SIZE;
	cfg.max_write_zeroes_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_write_zeroes_seg = 1;
	cfg.write_zeroes_may_unmap = 1;
	cfg.max_secure_erase_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_secure_erase_seg = 1;
	cfg.secure_erase_sector_alignment = phys / VIRTIO_BLK_SECTOR_SIZE;
	memset(buf, 0, VHOST_USER_MAX_CONFIG_SIZE);
	memcpy(buf, &cfg, sizeof(cfg));
}

static int h_get_config(struct vub_conn *c)
{
	struct vhost_user_config cfg;
	uint8_t space[VHOST_USER_MAX_CONFIG_SIZE];

	memcpy(&cfg, c->payload, VHOST_USER_CONFIG_HDR_SIZE);
	if (cfg.size > VHOST_USER_MAX_CONFIG_SIZE ||
	    cfg.offset > VHOST_USER_MAX_CONFIG_SIZE - cfg.size)
		return VUB_FATAL; /* the front end waits for a reply we cannot give */
	fill_config(c->exp, space, atomic_load(&c->wce));
	memcpy(cfg.region, space + cfg.offset, cfg.size);
	return reply(c, &cfg, VHOST_USER_CONFIG_HDR_SIZE + cfg.size, -1);
}

static int h_set_config(struct vub_conn *c)
{
	struct vhost_user_config cfg;

	memcpy(&cfg, c->payload, VHOST_USER_CONFIG_HDR_SIZE);
	if (cfg.size != 1 || cfg.offset != VUB_CONFIG_WCE_OFFSET ||
	    c->hdr.size != VHOST_USER_CONFIG_HDR_SIZE + 1 ||
	    !has_feature(c, VIRTIO_BLK_F_CONFIG_WCE))
		return -EINVAL;
	atomic_store(&c->wce, c->payload[VHOST_USER_CONFIG_HDR_SIZE] != 0);
	return 0;
}

static size_t inflight_queue_size(uint16_t qsize)
{
	return (sizeof(struct vub_inflight_queue) + sizeof(struct vub_inflight_desc) * qsize +
		VUB_INFLIGHT_ALIGN - 1) &
	       ~(size_t)(VUB_INFLIGHT_ALIGN - 1);
}

static void inflight_unmap(struct vub_conn *c)
{
	if (c->if_map)
		munmap(c->if_map, c->if_size);
	c->if_map = NULL;
	c->if_size = 0;
}

static int h_get_inflight_fd(struct vub_conn *c)
{
	struct vhost_user_inflight in;
	size_t size;
	int fd, r;
	void *p;

	memcpy(&in, c->payload, sizeof(in));
	if (in.num_queues == 0 || in.num_queues > c->exp->nq || in.queue_size == 0 ||
	    in.queue_size > VUB_MAX_RING)
		return VUB_FATAL;
	size = inflight_queue_size(in.queue_size) * in.num_queues;
	fd = memfd_create("blockd-vub-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return VUB_FATAL;
	if (ftruncate(fd, (off_t)size) < 0) {
		close(fd);
		return VUB_FATAL;
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		close(fd);
		return VUB_FATAL;
	}
	memset(p, 0, size);
	inflight_unmap(c);
	c->if_map = p;
	c->if_size = size;
	c->if_nq = in.num_queues;
	c->if_qsize = in.queue_size;
	in.mmap_size = size;
	in.mmap_offset = 0;
	r = reply(c, &in, sizeof(in), fd);
	close(fd);
	return r;
}

static int h_set_inflight_fd(struct vub_conn *c)
{
	struct vhost_user_inflight in;
	void *p;

	memcpy(&in, c->payload, sizeof(in));
	if (in.num_queues == 0 || in.queue_size == 0 || in.queue_size > VUB_MAX_RING ||
	    in.mmap_size < inflight_queue_size(in.queue_size) * in.num_queues ||
	    in.mmap_size > SIZE_MAX || in.mmap_offset > INT64_MAX || (in.mmap_offset & 4095) ||
	    in.mmap_offset > UINT64_MAX - in.mmap_size ||
	    !fd_covers(c->fds[0], in.mmap_offset + in.mmap_size))
		return -EINVAL;
	p = mmap(NULL, (size_t)in.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fds[0],
		 (off_t)in.mmap_offset);
	if (p == MAP_FAILED)
		return -errno;
	inflight_unmap(c);
	c->if_map = p;
	c->if_size = (size_t)in.mmap_size;
	c->if_nq = in.num_queues;
	c->if_qsize = in.queue_size;
	return 0;
}

static void conn_reset(struct vub_conn *c)
{
	for (unsigned i = 0; i < c->exp->nq; i++)
		queue_reset(c->q[i]);
	c->features = 0;
	c->features_set = false;
}

static int handle_msg(struct vub_conn *c)
{
	struct vub_export *x = c->exp;
	struct vhost_vring_state st = {0};
	struct vub_queue *q;
	uint64_t u64 = 0;
	const char *why;

	if (vub_msg_check(&c->hdr, c->nfds, &why) < 0) {
		bd_log(BD_LOG_ERROR, "vhost-user-blk export '%s': %s message: %s", x->id,
		       vub_req_name(c->hdr.request), why);
		return VUB_FATAL;
	}
	if (c->hdr.size >= 8)
		memcpy(&u64, c->payload, 8);
	if (c->hdr.size >= sizeof(st))
		memcpy(&st, c->payload, sizeof(st));
	bd_log(BD_LOG_DEBUG, "vhost-user-blk '%s': %s", x->id, vub_req_name(c->hdr.request));

	switch (c->hdr.request) {
	case VHOST_USER_GET_FEATURES:
		return reply_u64(c, x->offered);
	case VHOST_USER_SET_FEATURES: {
		bool was[VUB_MAX_QUEUES];
		if (u64 & ~x->offered)
			return -EINVAL;
		conn_stop_all(c, was);
		c->features = u64;
		c->features_set = true;
		for (unsigned i = 0; i < x->nq; i++)
			if (was[i])
				queue_try_start(c->q[i]);
		return 0;
	}
	case VHOST_USER_GET_PROTOCOL_FEATURES:
		return reply_u64(c, offered_protocol_features());
	case VHOST_USER_SET_PROTOCOL_FEATURES:
		c->pfeatures = u64 & offered_protocol_features();
		return 0;
	case VHOST_USER_SET_OWNER:
		return 0;
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
		conn_reset(c);
		return 0;
	case VHOST_USER_GET_QUEUE_NUM:
		return reply_u64(c, x->nq);
	case VHOST_USER_GET_MAX_MEM_SLOTS:
		return reply_u64(c, VUB_MAX_MEM_SLOTS);
	case VHOST_USER_SET_MEM_TABLE:
		return h_set_mem_table(c);
	case VHOST_USER_ADD_MEM_REG:
		return h_add_mem_reg(c);
	case VHOST_USER_REM_MEM_REG:
		return h_rem_mem_reg(c);
	case VHOST_USER_SET_VRING_NUM:
		if (!(q = msg_queue(c, st.index)) || st.num == 0 || st.num > VUB_MAX_RING)
			return -EINVAL;
		if (!has_feature(c, VIRTIO_F_RING_PACKED) && (st.num & (st.num - 1)))
			return -EINVAL;
		queue_stop(q);
		q->num = st.num;
		q->broken = false;
		return 0;
	case VHOST_USER_SET_VRING_ADDR: {
		struct vhost_vring_addr a;
		bool was;
		memcpy(&a, c->payload, sizeof(a));
		if (!(q = msg_queue(c, a.index)))
			return -EINVAL;
		was = q->running;
		queue_stop(q);
		q->desc_ua = a.desc_user_addr;
		q->avail_ua = a.avail_user_addr;
		q->used_ua = a.used_user_addr;
		q->addr_set = true;
		q->broken = false;
		if (was)
			queue_try_start(q);
		return 0;
	}
	case VHOST_USER_SET_VRING_BASE:
		if (!(q = msg_queue(c, st.index)))
			return -EINVAL;
		queue_stop(q);
		q->base = st.num;
		return 0;
	case VHOST_USER_GET_VRING_BASE:
		if (!(q = msg_queue(c, st.index)))
			return VUB_FATAL;
		queue_stop(q); /* updates q->base if the queue ran */
		st.num = q->base;
		close_fd(&q->kick_fd);
		q->broken = false;
		return reply(c, &st, sizeof(st), -1);
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR: {
		int fd = (u64 & VHOST_USER_VRING_NOFD_MASK) ? -1 : take_fd(c, 0);
		if (!(q = msg_queue(c, (uint32_t)(u64 & VHOST_USER_VRING_IDX_MASK))) ||
		    (!(u64 & VHOST_USER_VRING_NOFD_MASK) && fd < 0)) {
			if (fd >= 0)
				close(fd);
			return -EINVAL;
		}
		if (c->hdr.request == VHOST_USER_SET_VRING_KICK) {
			if (fd < 0)
				return -EINVAL; /* polling mode: not supported */
			queue_stop(q);
			close_fd(&q->kick_fd);
			q->kick_fd = fd;
			if (!has_feature(c, VHOST_USER_F_PROTOCOL_FEATURES))
				q->enabled = true;
			queue_try_start(q);
		} else if (c->hdr.request == VHOST_USER_SET_VRING_CALL) {
			int old = q->call_fd;
			if (q->running) {
				/* swap on the loop, then signal the new fd once so that no
				 * completion is lost between the two */
				q->new_call_fd = fd;
				bd_loop_call(q->loop, q_swap_call_fn, q);
			} else {
				q->call_fd = fd;
			}
			if (old >= 0)
				close(old);
		} else {
			close_fd(&q->err_fd);
			q->err_fd = fd;
		}
		return 0;
	}
	case VHOST_USER_SET_VRING_ENABLE:
		if (!(q = msg_queue(c, st.index)))
			return -EINVAL;
		q->enabled = st.num != 0;
		if (q->enabled)
			queue_try_start(q);
		else
			queue_stop(q);
		return 0;
	case VHOST_USER_GET_CONFIG:
		return h_get_config(c);
	case VHOST_USER_SET_CONFIG:
		return h_set_config(c);
	case VHOST_USER_SET_BACKEND_REQ_FD:
		close_fd(&c->backend_fd);
		c->backend_fd = take_fd(c, 0);
		return 0;
	case VHOST_USER_GET_INFLIGHT_FD:
		return h_get_inflight_fd(c);
	case VHOST_USER_SET_INFLIGHT_FD:
		return h_set_inflight_fd(c);
	case VHOST_USER_GET_STATUS:
		return reply_u64(c, 0);
	default:
		bd_log(BD_LOG_WARN, "vhost-user-blk export '%s': unsupported message %u (%s)",
		       x->id, c->hdr.request, vub_req_name(c->hdr.request));
		return -ENOTSUP;
	}
}

static void conn_close_fds(struct vub_conn *c)
{
	for (unsigned i = 0; i < c->nfds; i++)
		close_fd(&c->fds[i]);
	c->nfds = 0;
}

/* Receive more of the current message.  1: complete; 0: wait for input; <0: close. */
static int conn_recv(struct vub_conn *c)
{
	for (;;) {
		size_t want = VHOST_USER_HDR_SIZE;
		uint8_t *dst;
		union {
			char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS)];
			struct cmsghdr align;
		} u;
		struct iovec iov;
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n;

		if (c->got >= VHOST_USER_HDR_SIZE) {
			if (c->hdr.size > VHOST_USER_MAX_PAYLOAD)
				return -EMSGSIZE;
			want += c->hdr.size;
		}
		if (c->got == want) {
			if (want == VHOST_USER_HDR_SIZE && c->hdr.size)
				continue; /* now read the payload */
			return 1;
		}
		if (c->got < VHOST_USER_HDR_SIZE) {
			dst = (uint8_t *)&c->hdr + c->got;
			iov.iov_len = VHOST_USER_HDR_SIZE - c->got;
		} else {
			dst = c->payload + (c->got - VHOST_USER_HDR_SIZE);
			iov.iov_len = want - c->got;
		}
		iov.iov_base = dst;
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			unsigned k = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (unsigned i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (c->nfds < VHOST_USER_MAX_FDS)
					c->fds[c->nfds++] = fd;
				else
					close(fd);
			}
		}
		if (mh.msg_flags & MSG_CTRUNC)
			return -EMSGSIZE;
		c->got += (size_t)n;
	}
}

static void conn_free(struct vub_conn *c);
static void export_listen_arm(struct vub_export *x);

static void conn_readable(void *arg, int res)
{
	struct vub_conn *c = arg;
	int r;

	c->poll = NULL;
	if (res < 0) {
		conn_free(c);
		return;
	}
	for (;;) {
		r = conn_recv(c);
		if (r <= 0)
			break;
		uint32_t flags = c->hdr.flags;
		int h = handle_msg(c);
		bool need_ack = (c->pfeatures & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)) &&
				(flags & VHOST_USER_NEED_REPLY_MASK);
		conn_close_fds(c);
		c->got = 0;
		if (h == VUB_FATAL) {
			r = -EPROTO;
			break;
		}
		if (h != VUB_REPLIED && need_ack) {
			if (reply_u64(c, h < 0 ? 1 : 0) == VUB_FATAL) {
				r = -EPIPE;
				break;
			}
		} else if (h < 0) {
			bd_log(BD_LOG_WARN, "vhost-user-blk export '%s': %s failed: %s", c->exp->id,
			       vub_req_name(c->hdr.request), strerror(-h));
		}
	}
	if (r < 0) {
		if (r != -ECONNRESET)
			bd_log(BD_LOG_WARN,
			       "vhost-user-blk export '%s': closing the connection: %s", c->exp->id,
			       strerror(-r));
		else
			bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': front end disconnected",
			       c->exp->id);
		conn_free(c);
		return;
	}
	c->poll = poll_arm(bd_loop_main(), c->fd, conn_readable, c);
}

/* Release everything of a connection and accept the next one. */
static void conn_free(struct vub_conn *c)
{
	struct vub_export *x = c->exp;

	poll_cancel(bd_loop_main(), c->poll);
	c->poll = NULL;
	for (unsigned i = 0; i < x->nq; i++) {
		struct vub_queue *q = c->q[i];
		queue_reset(q);
		free(q->reqs);
		free(q);
	}
	conn_close_fds(c);
	mem_clear(&c->mem);
	inflight_unmap(c);
	close_fd(&c->backend_fd);
	close_fd(&c->fd);
	x->conn = NULL;
	free(c);
	if (x->listen_fd >= 0)
		export_listen_arm(x);
}

static struct vub_conn *conn_new(struct vub_export *x, int fd)
{
	struct vub_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->exp = x;
	c->fd = fd;
	c->backend_fd = -1;
	atomic_init(&c->wce, !x->writethrough);
	for (unsigned i = 0; i < VHOST_USER_MAX_FDS; i++)
		c->fds[i] = -1;
	for (unsigned i = 0; i < x->nq; i++) {
		struct vub_queue *q = calloc(1, sizeof(*q));
		if (!q) {
			for (unsigned k = 0; k < i; k++)
				free(c->q[k]);
			free(c);
			return NULL;
		}
		q->c = c;
		q->idx = i;
		q->loop = x->loops[i];
		q->kick_fd = q->call_fd = q->err_fd = -1;
		q->enabled = true;
		q->notify_defer.fn = q_notify_defer;
		c->q[i] = q;
	}
	return c;
}

static void listen_ready(void *arg, int res)
{
	struct vub_export *x = arg;
	int fd;

	x->listen_poll = NULL;
	if (res < 0) {
		bd_log(BD_LOG_ERROR, "vhost-user-blk export '%s': listener: %s", x->id,
		       strerror(-res));
		return;
	}
	fd = accept4(x->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		export_listen_arm(x);
		return;
	}
	x->conn = conn_new(x, fd);
	if (!x->conn) {
		close(fd);
		export_listen_arm(x);
		return;
	}
	bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': front end connected", x->id);
	x->conn->poll = poll_arm(bd_loop_main(), fd, conn_readable, x->conn);
}

static void export_listen_arm(struct vub_export *x)
{
	x->listen_poll = poll_arm(bd_loop_main(), x->listen_fd, listen_ready, x);
}

/* ---------------------------------------------------------------------------------------------
 * Resize notice [control]
 */
static void export_resized(struct bd_node_watch *w, uint64_t new_size)
{
	struct vub_export *x = container_of(w, struct vub_export, watch);
	struct vub_conn *c = x->conn;

	atomic_store(&x->size, new_size);
	bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': node resized to %llu bytes", x->id,
	       (unsigned long long)new_size);
	if (!c || c->backend_fd < 0 || !(c->pfeatures & (1ull << VHOST_USER_PROTOCOL_F_CONFIG)))
		return;
	if (conn_send(c->backend_fd, VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, VHOST_USER_VERSION, NULL,
		      0, -1) < 0) {
		bd_log(BD_LOG_WARN,
		       "vhost-user-blk export '%s': cannot send the config change "
		       "notice: %s",
		       x->id, strerror(errno));
		close_fd(&c->backend_fd);
	}
}

/* ---------------------------------------------------------------------------------------------
 * The export type [control]
 */
static struct vub_export *export_find(const char *id)
{
	for (struct vub_export *x = exports; x; x = x->next)
		if (!strcmp(x->id, id))
			return x;
	return NULL;
}

static void export_free(struct vub_export *x)
{
	if (x->conn)
		conn_free(x->conn);
	poll_cancel(bd_loop_main(), x->listen_poll);
	x->listen_poll = NULL;
	if (x->listen_fd >= 0) {
		close(x->listen_fd);
		x->listen_fd = -1;
		if (x->unlink_path)
			unlink(x->path);
	}
	if (x->node) {
		bd_node_watch_del(x->node, &x->watch);
		bd_node_unref(x->node);
	}
	free(x);
}

static int parse_addr(struct vub_export *x, json_t *opts, struct bd_err *err)
{
	static const char *const types[] = {"unix", "fd", NULL};
	json_t *addr;
	int type, r;
	const char *s;

	r = bd_opts_obj(opts, "addr", &addr, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr' is missing");
	if (r < 0)
		return r;
	r = bd_opts_enum(addr, "type", types, &type, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.type' is missing");
	if (r < 0)
		return r;
	if (type == 0) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		r = bd_opts_str(addr, "path", &s, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'addr.path' is missing");
		if (r < 0)
			return r;
		if (strlen(s) >= sizeof(sa.sun_path))
			return bd_err_set(err, -ENAMETOOLONG, "socket path '%s' is too long", s);
		strcpy(x->path, s);
		strcpy(sa.sun_path, s);
		x->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (x->listen_fd < 0)
			return bd_err_set(err, -errno, "socket: %s", strerror(errno));
		unlink(s);
		if (bind(x->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    listen(x->listen_fd, 1) < 0)
			return bd_err_set(err, -errno, "Failed to bind socket to %s: %s", s,
					  strerror(errno));
		x->unlink_path = true;
	} else {
		char *end;
		long fd;
		r = bd_opts_str(addr, "str", &s, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'addr.str' is missing");
		if (r < 0)
			return r;
		fd = strtol(s, &end, 10);
		if (*end || fd < 0 || fd > INT32_MAX || fcntl((int)fd, F_GETFD) < 0)
			return bd_err_set(err, -EINVAL, "'%s' is not a valid file descriptor", s);
		x->listen_fd = (int)fd;
		fcntl(x->listen_fd, F_SETFL, fcntl(x->listen_fd, F_GETFL) | O_NONBLOCK);
		fcntl(x->listen_fd, F_SETFD, FD_CLOEXEC);
	}
	return 0;
}

static int parse_loops(struct vub_export *x, json_t *opts, struct bd_err *err)
{
	const char *one = NULL;
	json_t *list = json_object_get(opts, "iothreads");
	struct bd_loop *loops[VUB_MAX_QUEUES];
	unsigned n = 0;
	int r;

	r = bd_opts_str(opts, "iothread", &one, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (one) {
		loops[n] = bd_iothread_find(one);
		if (!loops[n])
			return bd_err_set(err, -ENOENT, "IOThread '%s' not found", one);
		n++;
	}
	if (list) {
		size_t i;
		json_t *v;
		bd_opts_mark_used(opts, "iothreads");
		if (one)
			return bd_err_set(err, -EINVAL, "'iothread' and 'iothreads' are exclusive");
		if (!json_is_array(list) || json_array_size(list) == 0)
			return bd_err_set(err, -EINVAL, "Parameter 'iothreads' expects a list");
		json_array_foreach(list, i, v)
		{
			if (!json_is_string(v))
				return bd_err_set(err, -EINVAL,
						  "Parameter 'iothreads.%zu' expects a "
						  "string",
						  i);
			if (n == VUB_MAX_QUEUES)
				return bd_err_set(err, -EINVAL, "too many iothreads");
			loops[n] = bd_iothread_find(json_string_value(v));
			if (!loops[n])
				return bd_err_set(err, -ENOENT, "IOThread '%s' not found",
						  json_string_value(v));
			n++;
		}
	}
	for (unsigned i = 0; i < x->nq; i++) {
		if (n)
			x->loops[i] = loops[i % n];
		else
			x->loops[i] = bd_io_loop_get(i % bd_io_loop_count());
	}
	return 0;
}

static int vub_add(json_t *opts, struct bd_err *err)
{
	struct vub_export *x;
	const char *id, *node_name, *serial = NULL;
	uint64_t nq = 1, lbs = VIRTIO_BLK_SECTOR_SIZE;
	bool b;
	int r;

	if (bd_opts_str(opts, "id", &id, err) == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'id' is missing");
	if (err->code)
		return err->code;
	if (bd_opts_str(opts, "node-name", &node_name, err) == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'node-name' is missing");
	if (err->code)
		return err->code;
	if (strlen(id) >= sizeof(x->id))
		return bd_err_set(err, -EINVAL, "export id '%s' is too long", id);
	if (export_find(id))
		return bd_err_set(err, -EEXIST, "Block export id '%s' is already in use", id);
	x = calloc(1, sizeof(*x));
	if (!x)
		return bd_err_set(err, -ENOMEM, "out of memory");
	x->listen_fd = -1;
	strcpy(x->id, id);
	x->watch.resized = export_resized;

	if ((r = bd_opts_bool(opts, "writable", &b, err)) == 0)
		x->writable = b;
	else if (r != -ENOENT)
		goto fail;
	if ((r = bd_opts_bool(opts, "writethrough", &b, err)) == 0)
		x->writethrough = b;
	else if (r != -ENOENT)
		goto fail;
	if ((r = bd_opts_bool(opts, "fixed-iothread", &b, err)) < 0 && r != -ENOENT)
		goto fail;
	if ((r = bd_opts_u64(opts, "num-queues", &nq, err)) < 0 && r != -ENOENT)
		goto fail;
	if (nq == 0 || nq > VUB_MAX_QUEUES) {
		r = bd_err_set(err, -EINVAL, "num-queues must be between 1 and %u", VUB_MAX_QUEUES);
		goto fail;
	}
	x->nq = (unsigned)nq;
	if ((r = bd_opts_size(opts, "logical-block-size", &lbs, err)) < 0 && r != -ENOENT)
		goto fail;
	if (lbs < 512 || lbs > 32768 || (lbs & (lbs - 1))) {
		r = bd_err_set(err, -EINVAL,
			       "logical-block-size must be a power of 2 between 512 "
			       "and 32768");
		goto fail;
	}
	x->lbs = (uint32_t)lbs;
	if ((r = bd_opts_str(opts, "serial", &serial, err)) < 0 && r != -ENOENT)
		goto fail;
	snprintf(x->serial, sizeof(x->serial), "%s", serial ? serial : id);
	if ((r = parse_loops(x, opts, err)) < 0)
		goto fail;

	x->node = bd_graph_find(node_name);
	if (!x->node) {
		r = bd_err_set(err, -ENOENT, "Cannot find device='%s' nor node-name='%s'",
			       node_name, node_name);
		goto fail;
	}
	if (x->writable && bd_node_read_only(x->node)) {
		x->node = NULL;
		r = bd_err_set(err, -EPERM, "Cannot export read-only node '%s' as writable",
			       node_name);
		goto fail;
	}
	if ((r = parse_addr(x, opts, err)) < 0) {
		x->node = NULL;
		goto fail;
	}
	if ((r = bd_opts_check_unused(opts, "", err)) < 0) {
		x->node = NULL;
		goto fail;
	}
	bd_node_ref(x->node);
	bd_node_watch_add(x->node, &x->watch);
	atomic_init(&x->size, bd_node_size(x->node));

	x->offered = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
		     (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_F_RING_PACKED) |
		     (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_F_NOTIFY_ON_EMPTY) |
		     (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
		     (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH) |
		     (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_CONFIG_WCE) |
		     (1ull << VIRTIO_BLK_F_MQ);
	if (x->writable) {
		x->offered |= (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
		if (bd_node_fast_zero(x->node))
			x->offered |= 1ull << VIRTIO_BLK_F_SECURE_ERASE;
	} else {
		x->offered |= 1ull << VIRTIO_BLK_F_RO;
	}

	x->next = exports;
	exports = x;
	export_listen_arm(x);
	return 0;

fail:
	export_free(x);
	return r < 0 ? r : -EINVAL;
}

static int vub_del(const char *id, bool hard, struct bd_err *err)
{
	struct vub_export *x = export_find(id), **pp;

	if (!x)
		return bd_err_set(err, -ENOENT, "Export '%s' is not found", id);
	if (x->conn && !hard)
		return bd_err_set(err, -EBUSY,
				  "export '%s' still in use (a front end is "
				  "connected)",
				  id);
	for (pp = &exports; *pp != x; pp = &(*pp)->next)
		;
	*pp = x->next;
	export_free(x);
	bd_event_emit("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", id));
	return 0;
}

static void vub_shutdown(void)
{
	while (exports) {
		struct vub_export *x = exports;
		exports = x->next;
		export_free(x);
	}
}

static void vub_query(json_t *list)
{
	for (struct vub_export *x = exports; x; x = x->next)
		json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:b}", "type", "vhost-user-blk",
						      "id", x->id, "node-name",
						      bd_node_name(x->node), "shutting-down", 0));
}

static const struct bd_opt_desc vub_export_options[] = {
	{"addr", BD_OPT_OBJ, true, NULL, "the vhost-user socket (SocketAddress, type unix)"},
	{"logical-block-size", BD_OPT_SIZE, false, NULL, "logical block size (default 512)"},
	{"num-queues", BD_OPT_INT, false, NULL, "number of virtqueues (default 1)"},
	{"serial", BD_OPT_STR, false, NULL, "the serial the guest reads with GET_ID"},
	{"iothreads", BD_OPT_STR_LIST, false, NULL,
	 "iothreads the queues are spread over (a blockd extension)"},
	{NULL},
};

const struct bd_export_type bd_export_vhost_user_blk = {
    .name = "vhost-user-blk",
    .options = vub_export_options,
    .add = vub_add,
    .del = vub_del,
    .shutdown = vub_shutdown,
    .query = vub_query,
};
