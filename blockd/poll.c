/*
 * poll.c - readiness watches on file descriptors, for libraries that do their own socket I/O
 * (libiscsi, libnfs, libnbd): one-shot io_uring polls, re-armed after each wake-up.
 * [the watch's loop thread]
 *
 * A watch has at most one poll SQE and one cancel SQE in the ring.  Changing the wanted events
 * to a set the armed poll does not cover cancels it; its completion (-ECANCELED or a real
 * readiness) then re-arms with the current set.  Stopping cancels too, and the owner's stopped()
 * runs from deferred work once neither SQE is in flight, so the owner may free the watch there.
 */
#include "blockd/internal.h"

#include <liburing.h>
#include <poll.h>
#include <stddef.h>
#include <string.h>

static void watch_rearm(struct bd_poll *p);

static void watch_maybe_stopped(struct bd_poll *p)
{
	if (p->stopping && !p->in_flight && !p->cancel_in_flight)
		bd_loop_defer(p->loop, &p->stop_defer);
}

static void watch_stop_defer(struct bd_defer *d)
{
	struct bd_poll *p = (struct bd_poll *)((char *)d - offsetof(struct bd_poll, stop_defer));
	p->stopping = false;
	p->loop = NULL;
	if (p->stopped)
		p->stopped(p);
}

static void watch_cancel_done(struct bd_io *io, int res)
{
	struct bd_poll *p = (struct bd_poll *)((char *)io - offsetof(struct bd_poll, cancel_io));
	(void)res; /* -ENOENT: the poll completed first, which is fine */
	p->cancel_in_flight = false;
	watch_maybe_stopped(p);
}

static void watch_cancel(struct bd_poll *p)
{
	if (!p->in_flight || p->cancel_in_flight)
		return;
	struct io_uring_sqe *sqe = bd_loop_sqe(p->loop);
	io_uring_prep_poll_remove(sqe, (__u64)(uintptr_t)&p->io);
	bd_io_attach(sqe, &p->cancel_io);
	p->cancel_in_flight = true;
}

static void watch_done(struct bd_io *io, int res)
{
	struct bd_poll *p = (struct bd_poll *)((char *)io - offsetof(struct bd_poll, io));
	p->in_flight = false;
	p->armed = 0;
	if (p->stopping) {
		watch_maybe_stopped(p);
		return;
	}
	if (res == -ECANCELED) {
		watch_rearm(p);
		return;
	}
	int revents = res < 0 ? POLLERR : res;
	revents &= (int)p->want | POLLERR | POLLHUP | POLLNVAL;
	if (revents)
		p->ready(p, revents); /* may change the events or stop the watch */
	if (!p->stopping)
		watch_rearm(p);
}

static void watch_rearm(struct bd_poll *p)
{
	if (p->stopping || !p->want)
		return;
	if (p->in_flight) {
		if ((p->armed & p->want) != p->want)
			watch_cancel(p); /* its completion re-arms with the new set */
		return;
	}
	struct io_uring_sqe *sqe = bd_loop_sqe(p->loop);
	io_uring_prep_poll_add(sqe, p->fd, p->want);
	bd_io_attach(sqe, &p->io);
	p->in_flight = true;
	p->armed = p->want;
}

void bd_poll_init(struct bd_poll *p, void (*ready)(struct bd_poll *p, int revents))
{
	memset(p, 0, sizeof(*p));
	p->ready = ready;
	p->fd = -1;
	p->io.done = watch_done;
	p->cancel_io.done = watch_cancel_done;
	p->stop_defer.fn = watch_stop_defer;
}

void bd_poll_set(struct bd_loop *loop, struct bd_poll *p, int fd, unsigned events)
{
	if (p->stopping)
		return;
	if (p->loop && p->fd != fd && p->in_flight)
		watch_cancel(p); /* a new fd: the old poll must not stay armed */
	p->loop = loop;
	p->fd = fd;
	p->want = events;
	watch_rearm(p);
}

void bd_poll_stop(struct bd_poll *p, void (*stopped)(struct bd_poll *p))
{
	p->stopped = stopped;
	if (!p->loop) {
		if (stopped)
			stopped(p);
		return;
	}
	p->stopping = true;
	p->want = 0;
	watch_cancel(p);
	watch_maybe_stopped(p);
}
