/*
 * test-poll.c - unit test of readiness watches (blockd/poll.c) on a real I/O loop: a pipe's read
 * end wakes POLLIN only when written to, the write end wakes POLLOUT at once, a changed event set
 * re-arms, a paused watch stays quiet, and stopped() runs once the ring has let go of the watch.
 */
#include "blockd/internal.h"

#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static int failures;
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

struct ctx {
	struct bd_poll w;
	int fds[2];
	int ready_calls, last_revents, stopped_calls;
	bool drain; /* read the pipe when ready */
};

static struct ctx c;

static void on_ready(struct bd_poll *p, int revents)
{
	c.ready_calls++;
	c.last_revents = revents;
	if (c.drain && (revents & POLLIN)) {
		char b[64];
		(void)!read(c.fds[0], b, sizeof(b));
	}
	(void)p;
}

static void on_stopped(struct bd_poll *p)
{
	(void)p;
	c.stopped_calls++;
}

static void watch_read(void *arg)
{
	(void)arg;
	bd_poll_set(bd_loop_current(), &c.w, c.fds[0], POLLIN);
}

static void watch_write(void *arg)
{
	(void)arg;
	bd_poll_set(bd_loop_current(), &c.w, c.fds[1], POLLOUT);
}

static void pause_watch(void *arg)
{
	(void)arg;
	bd_poll_set(bd_loop_current(), &c.w, c.fds[0], 0);
}

static void stop_watch(void *arg)
{
	(void)arg;
	bd_poll_stop(&c.w, on_stopped);
}

static void nothing(void *arg)
{
	(void)arg;
}

/* Let the loop run a few iterations: three round trips of an empty message. */
static void settle(struct bd_loop *l)
{
	for (int i = 0; i < 3; i++)
		bd_loop_call(l, nothing, NULL);
	usleep(20000);
	bd_loop_call(l, nothing, NULL);
}

int main(void)
{
	struct bd_err err = {0};
	if (!bd_loop_main_init(&err) || bd_default_io_loop_create(&err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	struct bd_loop *l = bd_io_loop_get(0);
	CHECK(pipe(c.fds) == 0);
	bd_poll_init(&c.w, on_ready);
	c.drain = true;

	/* an empty pipe: no POLLIN */
	bd_loop_call(l, watch_read, NULL);
	settle(l);
	CHECK(c.ready_calls == 0);
	/* a byte: one wake-up, the reader drains it, the watch re-arms and stays quiet */
	CHECK(write(c.fds[1], "x", 1) == 1);
	settle(l);
	CHECK(c.ready_calls == 1 && (c.last_revents & POLLIN));
	CHECK(write(c.fds[1], "y", 1) == 1);
	settle(l);
	CHECK(c.ready_calls == 2);

	/* another fd and event set: the armed poll is cancelled and POLLOUT comes at once */
	c.ready_calls = 0;
	c.drain = false;
	bd_loop_call(l, watch_write, NULL);
	settle(l);
	CHECK(c.ready_calls >= 1 && (c.last_revents & POLLOUT));

	/* paused: a readable pipe wakes nobody */
	bd_loop_call(l, pause_watch, NULL);
	settle(l);
	c.ready_calls = 0;
	CHECK(write(c.fds[1], "z", 1) == 1);
	settle(l);
	CHECK(c.ready_calls == 0);

	/* watching again with data waiting, then stop: stopped() runs exactly once */
	bd_loop_call(l, watch_read, NULL);
	settle(l);
	CHECK(c.ready_calls >= 1);
	bd_loop_call(l, stop_watch, NULL);
	settle(l);
	CHECK(c.stopped_calls == 1);
	int before = c.ready_calls;
	CHECK(write(c.fds[1], "w", 1) == 1);
	settle(l);
	CHECK(c.ready_calls == before);

	bd_iothreads_destroy_all();
	close(c.fds[0]);
	close(c.fds[1]);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all poll-watch checks passed\n");
	return 0;
}
