/*
 * vub-poll.c - one-shot polls for input on a loop's ring that can be abandoned, for the
 * vhost-user-blk export: the listening socket and the connection (on the main loop) and each
 * queue's kick eventfd (on the queue's I/O loop).
 *
 * Threads: a poll is armed and cancelled on the loop it polls on (the calling thread's loop);
 * its callback runs on that loop.  The list of abandoned polls is shared by all loops and
 * guarded by a mutex.
 */
#include "export/vhost-user-blk/vub-int.h"

#include <liburing.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>

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
struct vub_poll *vub_poll_arm(struct bd_loop *loop, int fd, void (*cb)(void *, int), void *arg)
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
void vub_poll_cancel(struct bd_loop *loop, struct vub_poll *p)
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
