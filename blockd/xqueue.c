/*
 * xqueue.c - a completion queue from foreign threads to a loop (struct bd_xq): threads that are
 * not loops (librbd's, gfapi's) push finished items with a lock-free push, newest first; the
 * first push into an empty queue writes an eventfd; the loop keeps an io_uring read pending on
 * that eventfd (no poll, no read syscall: the read is re-queued with the loop's next
 * submission) and delivers the items oldest first.  Used by the rbd and gluster protocols.
 *
 * Threading: bd_xq_push() on any thread; everything else on the queue's loop.
 */
#include "blockd/blockd.h"

#include <errno.h>
#include <liburing.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

/* Allocated on its own: the pending read outlives bd_xq_close() until it completes. */
struct bd_xq {
	_Atomic(struct bd_xq_item *) head;
	atomic_int pushing; /* threads inside bd_xq_push(): the queue must outlive them */
	int efd;
	bool stopping;
	uint64_t val;
	struct bd_io io;
	struct bd_loop *loop;
	const char *what;
	void (*deliver)(struct bd_xq_item *it);
};

static void xq_arm(struct bd_xq *q)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(q->loop);
	io_uring_prep_read(sqe, q->efd, &q->val, sizeof(q->val), 0);
	bd_io_attach(sqe, &q->io);
}

/* [loop] The eventfd read completed: deliver every queued item, oldest first. */
static void xq_done(struct bd_io *io, int res)
{
	struct bd_xq *q = (struct bd_xq *)(void *)((char *)io - offsetof(struct bd_xq, io));
	struct bd_xq_item *list, *rev = NULL;

	if (q->stopping) {
		/* The last push may still be between its link and its eventfd write. */
		while (atomic_load_explicit(&q->pushing, memory_order_acquire))
			sched_yield();
		close(q->efd);
		free(q);
		return;
	}
	if (res < 0 && res != -EAGAIN && res != -EINTR && res != -ECANCELED)
		bd_log(BD_LOG_WARN, "%s: reading the completion eventfd: %s", q->what,
		       strerror(-res));
	list = atomic_exchange_explicit(&q->head, NULL, memory_order_acquire);
	while (list) {
		struct bd_xq_item *next = list->next;
		list->next = rev;
		rev = list;
		list = next;
	}
	xq_arm(q); /* before delivering: an item pushed meanwhile writes the eventfd again */
	while (rev) {
		struct bd_xq_item *next = rev->next;
		q->deliver(rev);
		rev = next;
	}
}

int bd_xq_new(struct bd_loop *loop, const char *what, void (*deliver)(struct bd_xq_item *it),
	      struct bd_xq **out)
{
	struct bd_xq *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (q->efd < 0) {
		int e = -errno;
		free(q);
		return e;
	}
	atomic_init(&q->head, NULL);
	atomic_init(&q->pushing, 0);
	q->io.done = xq_done;
	q->loop = loop;
	q->what = what;
	q->deliver = deliver;
	xq_arm(q);
	*out = q;
	return 0;
}

void bd_xq_push(struct bd_xq *q, struct bd_xq_item *it)
{
	struct bd_xq_item *old;
	uint64_t one = 1;

	atomic_fetch_add_explicit(&q->pushing, 1, memory_order_acquire);
	old = atomic_load_explicit(&q->head, memory_order_relaxed);
	do {
		it->next = old;
	} while (!atomic_compare_exchange_weak_explicit(&q->head, &old, it, memory_order_release,
							memory_order_relaxed));
	if (!old) {
		ssize_t w = write(q->efd, &one, sizeof(one));
		(void)w; /* the counter cannot overflow: the loop reads it on every wake-up */
	}
	atomic_fetch_sub_explicit(&q->pushing, 1, memory_order_release);
}

void bd_xq_close(struct bd_xq *q)
{
	uint64_t one = 1;

	q->stopping = true;
	if (write(q->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		abort(); /* cannot happen with a valid eventfd; a leak would hide it */
}
