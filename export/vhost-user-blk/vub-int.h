/*
 * vub-int.h - private to the vhost-user-blk export (export/vhost-user-blk/): limits, the export,
 * connection, queue and request structures, and the functions one file of the export calls in
 * another.  Which thread owns which field is written next to it: [control] is the main loop,
 * [loop] the I/O loop a queue runs on (see vub-queue.c for the hand-over between the two).
 *
 * Files: vub-export.c (the export type: add, del, query, shutdown, options) [control];
 * vub-msg.c (the vhost-user socket, its messages, guest memory, the back-end channel) [control];
 * vub-queue.c (virtqueue processing [loop] and starting / stopping queues [control]);
 * vub-inflight.c (in-flight tracking for split and packed rings) [loop];
 * vub-poll.c (abandonable one-shot polls) [any loop]; vub-ring.c (pure functions).
 */
#ifndef BLOCKD_EXPORT_VUB_INT_H
#define BLOCKD_EXPORT_VUB_INT_H

#include "blockd/blockd.h"
#include "export/vhost-user-blk/vub-ring.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>

#define VUB_MAX_QUEUES 64u
#define VUB_MAX_RING 32768u
#define VUB_SEG_MAX 254u
#define VUB_MAX_IOV (VUB_SEG_MAX + 6u)
/* Largest segment.  Kept small enough that size_max * seg_max fits in 32 bits: SeaBIOS multiplies
 * them in 32 bits and loops forever on zero-length reads when the product wraps. */
#define VUB_SIZE_MAX (1u << 16)
#define VUB_MAX_DISCARD_SECTORS ((1u << 30) >> 9)
/* Segments per DISCARD / WRITE_ZEROES / SECURE_ERASE request (max_*_seg in the config space). */
#define VUB_MAX_DWZ_SEG 32u
#define VUB_INFLIGHT_ALIGN 64u
/* Reads at least this large are split in two when the queue has a helper loop: the second half
 * runs on the helper, so that two threads copy (a 1 MiB read is bound by one thread's copy). */
#define VUB_SPLIT_MIN (256u << 10)
#define VUB_SPLIT_ALIGN (64u << 10)

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---------------------------------------------------------------------------------------------
 * One-shot polls that can be abandoned (vub-poll.c)
 */
struct vub_poll;

/* [loop] Poll fd for input once on loop; cb(arg, res) runs on loop unless cancelled. */
struct vub_poll *vub_poll_arm(struct bd_loop *loop, int fd, void (*cb)(void *, int), void *arg);
/* [loop] Abandon p (armed on loop, which is the calling thread's loop): its callback never runs. */
void vub_poll_cancel(struct bd_loop *loop, struct vub_poll *p);

/* ---------------------------------------------------------------------------------------------
 * Data structures
 */
struct vub_export;
struct vub_conn;
struct vub_queue;

struct vub_req {
	struct vub_queue *q;
	struct vub_req *next_free;
	uint16_t id;	  /* split: head index; packed: buffer id */
	uint16_t ndesc;	  /* packed: ring slots the chain took */
	uint16_t if_head; /* packed with in-flight tracking: the chain's head entry */
	uint16_t parts;	  /* node requests not yet completed (segments) */
	int part_err;	  /* the first error of a part */
	uint32_t in_len;
	struct vub_blk_req blk;
	struct iovec iov[VUB_MAX_IOV];
};

struct vub_queue {
	struct vub_conn *c;
	unsigned idx;
	struct bd_loop *loop;
	struct bd_loop *helper; /* a spare iothread that reads half of large reads, or NULL */

	/* Configuration from the front end [control; read by the loop while running]. */
	uint32_t num;
	uint64_t desc_ua, avail_ua, used_ua;
	bool addr_set;
	bool enabled;
	uint32_t base; /* SET_VRING_BASE value */
	int kick_fd, call_fd, err_fd;
	int new_call_fd; /* handed to the loop by SET_VRING_CALL on a running queue */

	/* Control state [control]: started by vub_queue_try_start until its stop has completed;
	 * stopping while an asynchronous stop is under way. */
	bool started, stopping;
	atomic_bool stop_acked; /* [loop -> control] the loop is done with the queue */
	atomic_bool
	    answer_claimed; /* [both] the stop's answer is taken care of (see q_stop_done) */

	/* Ring state [loop while running, control while stopped]. */
	bool running;
	bool stop_pending; /* [loop] stop once nothing is in flight */
	struct bd_defer stop_defer;
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
	struct vub_inflight_queue *ifq;	 /* split rings with in-flight tracking */
	struct vub_inflight_pqueue *ifp; /* packed rings with in-flight tracking */
	uint64_t if_counter;
	struct vub_poll *kick_poll;
	struct bd_defer notify_defer;
	bool need_notify;

	/* statistics (loop) */
	uint64_t nr_requests, nr_kicks, nr_calls;
};

struct vub_conn {
	struct vub_export *exp;
	unsigned nq;
	int fd;
	struct vub_poll *poll;
	bool closing;		/* disconnecting: freed once its queues have stopped */
	bool waiting;		/* the current message waits for queues to stop */
	bool zombie;		/* freed, but stop answers are still to come */
	unsigned pending_stops; /* stop answers still to come */
	uint64_t msg_ran;	/* queues the current message stopped (to restart them) */

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
	struct bd_loop *spare[VUB_MAX_QUEUES]; /* iothreads listed beyond the queues: helpers */
	unsigned nspare;
	int listen_fd;
	struct vub_poll *listen_poll;
	struct vub_conn *conn;
	struct bd_node_watch watch;
	_Atomic uint64_t size;
	uint64_t offered;
	struct vub_export *next;
};

static inline bool has_feature(const struct vub_conn *c, unsigned bit)
{
	return c->features & (1ull << bit);
}

/* ---------------------------------------------------------------------------------------------
 * Queues (vub-queue.c)
 */
/* [loop] The queue's notify_defer callback: signal the call eventfd if the driver wants it. */
void vub_q_notify_defer(struct bd_defer *d);
/* [loop] The queue's stop_defer callback: the stop is complete, tell the control thread. */
void vub_q_stop_done(struct bd_defer *d);
/* [loop] Run by bd_loop_call() for SET_VRING_CALL on a running queue: switch to new_call_fd. */
void vub_q_swap_call_fn(void *arg);
/* [control] Ask q's loop to stop it (if started); vub_q_stopped() comes when it has. */
void vub_queue_stop_begin(struct vub_queue *q);
/* [control] Message from the loop: q has stopped; calls vub_conn_stop_answered(). */
void vub_q_stopped(void *arg);
/* [control] Stop q and wait for it (teardown only: blocks until its in-flight requests have
 * completed). */
void vub_queue_stop(struct vub_queue *q);
/* [control] Start q if it has everything it needs. */
void vub_queue_try_start(struct vub_queue *q);
/* [control] Stop q and forget its configuration (fds closed). */
void vub_queue_reset(struct vub_queue *q);
/* Close *fd if open, and set it to -1. */
void vub_close_fd(int *fd);

/* [loop] Mark q broken (stops serving it), log why once, signal its error eventfd. */
void vub_q_set_broken(struct vub_queue *q, const char *why);
/* [loop] Take request slot r for the walked chain ch and start it (in-flight marks included). */
void vub_q_start_chain(struct vub_queue *q, struct vub_req *r, struct vub_chain *ch);
/* [loop] Split ring: walk the chain at head into a free request slot and start it.  false if the
 * chain is malformed (the queue is then broken). */
bool vub_q_pop_split(struct vub_queue *q, uint16_t head);

/* ---------------------------------------------------------------------------------------------
 * In-flight tracking (vub-inflight.c) [loop, except vub_inflight_queue_size]
 */
/* Bytes of one queue's area in the shared region (64-byte aligned), for a ring of qsize. */
size_t vub_inflight_queue_size(bool packed, uint16_t qsize);
/* Queue start, split ring: adopt or initialise q->ifq, resubmit what a previous back end left in
 * flight; sets q->last_avail and q->used_idx. */
void vub_ifs_restore(struct vub_queue *q);
/* Queue start, packed ring: the same for q->ifp (rolls back a half-done update first). */
void vub_ifp_restore(struct vub_queue *q);
/* Packed: record the chain of r (r->ndesc ring slots from slot idx) as in flight; sets r->if_head.
 * false if the region is inconsistent (the queue is then broken). */
bool vub_ifp_take(struct vub_queue *q, struct vub_req *r, uint16_t idx);
/* Packed: around writing r's used descriptor: before (free its entries, new used index and wrap
 * counter) and after (clear its in-flight mark, commit). */
void vub_ifp_push_begin(struct vub_queue *q, struct vub_req *r, uint16_t used_idx, bool wrap);
void vub_ifp_push_end(struct vub_queue *q, struct vub_req *r);

/* ---------------------------------------------------------------------------------------------
 * The connection (vub-msg.c) [control]
 */
/* Release everything of a connection and accept the next one (waits for queues still running:
 * for teardown; a disconnect stops them asynchronously first). */
void vub_conn_free(struct vub_conn *c);
/* A queue's stop has been answered (c->pending_stops is updated): go on with what waited. */
void vub_conn_stop_answered(struct vub_conn *c);
/* Wait for the next front end on the export's listening socket. */
void vub_export_listen_arm(struct vub_export *x);
/* The node watch's resized callback: update the size, tell the front end (back-end channel). */
void vub_export_resized(struct bd_node_watch *w, uint64_t new_size);

#endif
