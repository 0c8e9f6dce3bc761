/*
 * loop.c - I/O loops: one thread, one io_uring.  [the loop's own thread, except where noted]
 *
 * An iteration runs, in order: messages from other threads, deferred work, expired timers; then it
 * submits every SQE queued during the iteration in one io_uring_enter() and waits for at least one
 * completion (or the next timer, or nothing when deferred work is pending), and dispatches the
 * completions.  Batching falls out of this: a loop serving 32 requests submits them together.
 *
 * Messages (bd_loop_send) travel through a mutex-protected list and an eventfd read by the ring.
 */
#include "blockd/internal.h"

#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define RING_ENTRIES 1024
#define CQ_ENTRIES 8192
#define CQE_BATCH 256

struct bd_msg {
	void (*fn)(void *arg);
	void *arg;
	struct bd_msg *next;
};

struct bd_loop {
	char name[64];
	unsigned index;
	bool is_main;
	pthread_t thread;
	struct io_uring ring;

	/* messages from other threads */
	pthread_mutex_t mq_lock;
	struct bd_msg *mq_head, *mq_tail;
	int efd;
	uint64_t efd_value;
	struct bd_io efd_io;

	atomic_bool quit;
	atomic_bool handed_out; /* given to an export, connection or channel: never deleted */

	struct bd_defer *defer_head, *defer_tail;

	struct bd_timer **heap;
	unsigned heap_len, heap_cap;

	/* start-up handshake for loop threads */
	pthread_mutex_t start_lock;
	pthread_cond_t start_cond;
	int start_result; /* 1 = running, <0 = failed */
	struct bd_err start_err;
};

static _Thread_local struct bd_loop *current_loop;
static struct bd_loop *main_loop;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct bd_loop *all_loops[BD_MAX_LOOPS];

/* The I/O loops exports spread work over (control thread only). */
static struct bd_loop *io_loops[BD_MAX_LOOPS];
static unsigned io_loop_count;
static unsigned io_loop_rr;

uint64_t bd_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct bd_loop *bd_loop_current(void)
{
	return current_loop;
}

struct bd_loop *bd_loop_main(void)
{
	return main_loop;
}

unsigned bd_loop_index(const struct bd_loop *loop)
{
	return loop->index;
}

const char *bd_loop_name(const struct bd_loop *loop)
{
	return loop->name;
}

/* ---- timers: a binary min-heap on deadline ---- */

static void heap_swap(struct bd_loop *l, unsigned a, unsigned b)
{
	struct bd_timer *t = l->heap[a];
	l->heap[a] = l->heap[b];
	l->heap[b] = t;
	l->heap[a]->heap_index = (int)a;
	l->heap[b]->heap_index = (int)b;
}

static void heap_up(struct bd_loop *l, unsigned i)
{
	while (i > 0) {
		unsigned p = (i - 1) / 2;
		if (l->heap[p]->deadline_ns <= l->heap[i]->deadline_ns)
			break;
		heap_swap(l, i, p);
		i = p;
	}
}

static void heap_down(struct bd_loop *l, unsigned i)
{
	for (;;) {
		unsigned c = 2 * i + 1, m = i;
		if (c < l->heap_len && l->heap[c]->deadline_ns < l->heap[m]->deadline_ns)
			m = c;
		if (c + 1 < l->heap_len && l->heap[c + 1]->deadline_ns < l->heap[m]->deadline_ns)
			m = c + 1;
		if (m == i)
			break;
		heap_swap(l, i, m);
		i = m;
	}
}

void bd_timer_cancel(struct bd_loop *loop, struct bd_timer *t)
{
	if (t->heap_index < 0)
		return;
	unsigned i = (unsigned)t->heap_index;
	t->heap_index = -1;
	loop->heap_len--;
	if (i != loop->heap_len) {
		loop->heap[i] = loop->heap[loop->heap_len];
		loop->heap[i]->heap_index = (int)i;
		heap_up(loop, i);
		heap_down(loop, (unsigned)loop->heap[i]->heap_index);
	}
}

void bd_timer_arm(struct bd_loop *loop, struct bd_timer *t, uint64_t deadline_ns)
{
	bd_timer_cancel(loop, t);
	if (loop->heap_len == loop->heap_cap) {
		unsigned cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
		struct bd_timer **h = realloc(loop->heap, cap * sizeof(*h));
		if (!h)
			abort();
		loop->heap = h;
		loop->heap_cap = cap;
	}
	t->deadline_ns = deadline_ns;
	t->heap_index = (int)loop->heap_len;
	loop->heap[loop->heap_len++] = t;
	heap_up(loop, (unsigned)t->heap_index);
}

static void run_timers(struct bd_loop *loop)
{
	if (!loop->heap_len)
		return;
	uint64_t now = bd_now_ns();
	while (loop->heap_len && loop->heap[0]->deadline_ns <= now) {
		struct bd_timer *t = loop->heap[0];
		bd_timer_cancel(loop, t);
		t->fire(t);
	}
}

/* ---- deferred work ---- */

void bd_loop_defer(struct bd_loop *loop, struct bd_defer *d)
{
	if (d->queued)
		return;
	d->queued = true;
	d->next = NULL;
	if (loop->defer_tail)
		loop->defer_tail->next = d;
	else
		loop->defer_head = d;
	loop->defer_tail = d;
}

static void run_defers(struct bd_loop *loop)
{
	/* Run what is queued now; work queued while running waits for the next round, so a
	 * callback that re-queues itself cannot starve the ring. */
	struct bd_defer *d = loop->defer_head;
	loop->defer_head = loop->defer_tail = NULL;
	while (d) {
		struct bd_defer *next = d->next;
		d->queued = false;
		d->next = NULL;
		d->fn(d);
		d = next;
	}
}

/* ---- messages ---- */

int bd_loop_send(struct bd_loop *loop, void (*fn)(void *arg), void *arg)
{
	struct bd_msg *m = malloc(sizeof(*m));
	bool wake;

	if (!m)
		return -ENOMEM;
	m->fn = fn;
	m->arg = arg;
	m->next = NULL;
	pthread_mutex_lock(&loop->mq_lock);
	wake = loop->mq_head == NULL;
	if (loop->mq_tail)
		loop->mq_tail->next = m;
	else
		loop->mq_head = m;
	loop->mq_tail = m;
	pthread_mutex_unlock(&loop->mq_lock);
	if (wake) {
		uint64_t one = 1;
		ssize_t r = write(loop->efd, &one, sizeof(one));
		(void)r; /* EAGAIN means the counter is already non-zero: the loop wakes anyway */
	}
	return 0;
}

struct call_ctx {
	void (*fn)(void *arg);
	void *arg;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

static void call_trampoline(void *opaque)
{
	struct call_ctx *c = opaque;
	c->fn(c->arg);
	pthread_mutex_lock(&c->lock);
	c->done = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

int bd_loop_call(struct bd_loop *loop, void (*fn)(void *arg), void *arg)
{
	struct call_ctx c = {.fn = fn, .arg = arg, .done = false};
	int r;

	if (loop == current_loop) {
		fn(arg);
		return 0;
	}
	pthread_mutex_init(&c.lock, NULL);
	pthread_cond_init(&c.cond, NULL);
	r = bd_loop_send(loop, call_trampoline, &c);
	if (r == 0) {
		pthread_mutex_lock(&c.lock);
		while (!c.done)
			pthread_cond_wait(&c.cond, &c.lock);
		pthread_mutex_unlock(&c.lock);
	}
	pthread_cond_destroy(&c.cond);
	pthread_mutex_destroy(&c.lock);
	return r;
}

static void run_messages(struct bd_loop *loop)
{
	struct bd_msg *m;

	pthread_mutex_lock(&loop->mq_lock);
	m = loop->mq_head;
	loop->mq_head = loop->mq_tail = NULL;
	pthread_mutex_unlock(&loop->mq_lock);
	while (m) {
		struct bd_msg *next = m->next;
		m->fn(m->arg);
		free(m);
		m = next;
	}
}

static void efd_arm(struct bd_loop *loop);

static void efd_done(struct bd_io *io, int res)
{
	struct bd_loop *loop = bd_container_of(io, struct bd_loop, efd_io);
	(void)res;
	/* The messages themselves run at the top of the next iteration. */
	efd_arm(loop);
}

static void efd_arm(struct bd_loop *loop)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(loop);
	io_uring_prep_read(sqe, loop->efd, &loop->efd_value, sizeof(loop->efd_value), 0);
	bd_io_attach(sqe, &loop->efd_io);
}

/* ---- the ring ---- */

struct io_uring_sqe *bd_loop_sqe(struct bd_loop *loop)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(&loop->ring))) {
		int r = io_uring_submit(&loop->ring);
		if (r < 0 && r != -EAGAIN && r != -EBUSY && r != -EINTR) {
			bd_log(BD_LOG_ERROR, "loop %s: io_uring_submit: %s", loop->name,
			       strerror(-r));
			abort();
		}
	}
	return sqe;
}

void bd_io_attach(struct io_uring_sqe *sqe, struct bd_io *io)
{
	io_uring_sqe_set_data(sqe, io);
}

static int ring_init(struct bd_loop *loop, struct bd_err *err)
{
	struct io_uring_params p;
	static const unsigned flag_sets[] = {
		IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
			IORING_SETUP_DEFER_TASKRUN,
		IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
		IORING_SETUP_CQSIZE,
		0,
	};
	int r = -EINVAL;

	for (unsigned i = 0; i < BD_ARRAY_SIZE(flag_sets); i++) {
		memset(&p, 0, sizeof(p));
		p.flags = flag_sets[i];
		p.cq_entries = CQ_ENTRIES;
		r = io_uring_queue_init_params(RING_ENTRIES, &loop->ring, &p);
		if (r == 0)
			break;
	}
	if (r < 0)
		return bd_err_set(err, r, "io_uring_queue_init: %s", strerror(-r));
	loop->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (loop->efd < 0) {
		r = -errno;
		io_uring_queue_exit(&loop->ring);
		return bd_err_set(err, r, "eventfd: %s", strerror(-r));
	}
	loop->efd_io.done = efd_done;
	current_loop = loop;
	efd_arm(loop);
	return 0;
}

static void loop_iterate(struct bd_loop *loop)
{
	struct io_uring_cqe *cqe;
	struct __kernel_timespec ts, *tsp = NULL;
	unsigned wait_nr;
	int r;

	run_messages(loop);
	run_defers(loop);
	run_timers(loop);

	if (atomic_load_explicit(&loop->quit, memory_order_relaxed))
		wait_nr = 0;
	else if (loop->defer_head)
		wait_nr = 0;
	else
		wait_nr = 1;
	if (wait_nr && loop->heap_len) {
		uint64_t now = bd_now_ns(), dl = loop->heap[0]->deadline_ns;
		uint64_t d = dl > now ? dl - now : 0;
		ts.tv_sec = (long long)(d / 1000000000ull);
		ts.tv_nsec = (long long)(d % 1000000000ull);
		tsp = &ts;
		if (d == 0)
			wait_nr = 0;
	}
	/* Not waiting still has to enter with GETEVENTS: with DEFER_TASKRUN the kernel posts
	 * completions only then, and a plain submit would leave them for the next sleep (or,
	 * while quitting, forever). */
	if (wait_nr)
		r = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, wait_nr, tsp, NULL);
	else
		r = io_uring_submit_and_get_events(&loop->ring);
	if (r < 0 && r != -ETIME && r != -EINTR && r != -EAGAIN && r != -EBUSY) {
		bd_log(BD_LOG_ERROR, "loop %s: io_uring wait: %s", loop->name, strerror(-r));
		abort();
	}

	/* Copy completions out before dispatching: a callback may queue new SQEs and even
	 * submit, and must never see a half-advanced completion ring. */
	for (;;) {
		struct bd_io *ios[CQE_BATCH];
		int res[CQE_BATCH];
		unsigned n = 0, head;

		io_uring_for_each_cqe(&loop->ring, head, cqe)
		{
			ios[n] = io_uring_cqe_get_data(cqe);
			res[n] = cqe->res;
			if (++n == CQE_BATCH)
				break;
		}
		if (!n)
			break;
		io_uring_cq_advance(&loop->ring, n);
		for (unsigned i = 0; i < n; i++)
			if (ios[i])
				ios[i]->done(ios[i], res[i]);
		if (n < CQE_BATCH)
			break;
	}
}

static void loop_register(struct bd_loop *loop)
{
	pthread_mutex_lock(&registry_lock);
	all_loops[loop->index] = loop;
	pthread_mutex_unlock(&registry_lock);
}

static int loop_alloc_index(void)
{
	int idx = -1;
	pthread_mutex_lock(&registry_lock);
	for (unsigned i = 1; i < BD_MAX_LOOPS; i++) {
		if (!all_loops[i]) {
			all_loops[i] = (struct bd_loop *)1; /* reserved */
			idx = (int)i;
			break;
		}
	}
	pthread_mutex_unlock(&registry_lock);
	return idx;
}

static struct bd_loop *loop_new(const char *name)
{
	struct bd_loop *loop = calloc(1, sizeof(*loop));
	if (!loop)
		return NULL;
	snprintf(loop->name, sizeof(loop->name), "%s", name);
	pthread_mutex_init(&loop->mq_lock, NULL);
	pthread_mutex_init(&loop->start_lock, NULL);
	pthread_cond_init(&loop->start_cond, NULL);
	loop->efd = -1;
	return loop;
}

static void loop_free(struct bd_loop *loop)
{
	struct bd_msg *m = loop->mq_head;
	while (m) {
		struct bd_msg *next = m->next;
		free(m);
		m = next;
	}
	if (loop->efd >= 0) {
		io_uring_queue_exit(&loop->ring);
		close(loop->efd);
	}
	free(loop->heap);
	pthread_mutex_destroy(&loop->mq_lock);
	pthread_mutex_destroy(&loop->start_lock);
	pthread_cond_destroy(&loop->start_cond);
	free(loop);
}

static void *loop_thread(void *opaque)
{
	struct bd_loop *loop = opaque;
	int r;

	r = ring_init(loop, &loop->start_err);
	pthread_mutex_lock(&loop->start_lock);
	loop->start_result = r < 0 ? r : 1;
	pthread_cond_signal(&loop->start_cond);
	pthread_mutex_unlock(&loop->start_lock);
	if (r < 0)
		return NULL;
	while (!atomic_load(&loop->quit))
		loop_iterate(loop);
	/* Run what was sent before the quit request, then one more round of completions. */
	run_messages(loop);
	run_defers(loop);
	return NULL;
}

struct bd_loop *bd_loop_create(const char *name, struct bd_err *err)
{
	struct bd_loop *loop;
	sigset_t all, old;
	int idx, r;

	idx = loop_alloc_index();
	if (idx < 0) {
		bd_err_set(err, -ENOSPC, "too many I/O loops (at most %d)", BD_MAX_LOOPS - 1);
		return NULL;
	}
	loop = loop_new(name);
	if (!loop) {
		bd_err_set(err, -ENOMEM, "out of memory");
		goto fail_idx;
	}
	loop->index = (unsigned)idx;

	/* Loop threads never take signals: the main loop reads them from a signalfd. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	r = pthread_create(&loop->thread, NULL, loop_thread, loop);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r) {
		bd_err_set(err, -r, "pthread_create: %s", strerror(r));
		loop_free(loop);
		goto fail_idx;
	}
	{
		char tname[16];
		snprintf(tname, sizeof(tname), "bd-%s", name);
		pthread_setname_np(loop->thread, tname);
	}
	pthread_mutex_lock(&loop->start_lock);
	while (loop->start_result == 0)
		pthread_cond_wait(&loop->start_cond, &loop->start_lock);
	pthread_mutex_unlock(&loop->start_lock);
	if (loop->start_result < 0) {
		if (err && err->code == 0)
			*err = loop->start_err;
		pthread_join(loop->thread, NULL);
		loop_free(loop);
		goto fail_idx;
	}
	loop_register(loop);
	return loop;

fail_idx:
	pthread_mutex_lock(&registry_lock);
	all_loops[idx] = NULL;
	pthread_mutex_unlock(&registry_lock);
	return NULL;
}

static void quit_noop(void *arg)
{
	(void)arg;
}

void bd_loop_quit(struct bd_loop *loop)
{
	atomic_store(&loop->quit, true);
	if (loop != current_loop)
		bd_loop_send(loop, quit_noop, NULL);
}

void bd_loop_destroy(struct bd_loop *loop)
{
	if (!loop || loop->is_main)
		return;
	bd_loop_quit(loop);
	pthread_join(loop->thread, NULL);
	pthread_mutex_lock(&registry_lock);
	all_loops[loop->index] = NULL;
	pthread_mutex_unlock(&registry_lock);
	loop_free(loop);
}

struct bd_loop *bd_loop_main_init(struct bd_err *err)
{
	struct bd_loop *loop;

	if (main_loop)
		return main_loop;
	loop = loop_new("main");
	if (!loop) {
		bd_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	loop->is_main = true;
	loop->index = 0;
	loop->thread = pthread_self();
	if (ring_init(loop, err) < 0) {
		loop_free(loop);
		return NULL;
	}
	main_loop = loop;
	loop_register(loop);
	return loop;
}

void bd_loop_run(struct bd_loop *loop)
{
	atomic_store(&loop->quit, false);
	while (!atomic_load(&loop->quit))
		loop_iterate(loop);
}

/* Run one iteration of the calling thread's loop: used by the control thread while it waits
 * for other loops (drain), never from inside a completion callback. */
void bd_loop_poll_once(void)
{
	if (current_loop)
		loop_iterate(current_loop);
}

/* ---- the I/O loops exports spread over ---- */

void bd_io_loop_register(struct bd_loop *loop)
{
	if (io_loop_count < BD_MAX_LOOPS)
		io_loops[io_loop_count++] = loop;
}

void bd_io_loop_unregister(struct bd_loop *loop)
{
	for (unsigned i = 0; i < io_loop_count; i++) {
		if (io_loops[i] == loop) {
			memmove(&io_loops[i], &io_loops[i + 1],
				(io_loop_count - i - 1) * sizeof(io_loops[0]));
			io_loop_count--;
			return;
		}
	}
}

unsigned bd_io_loop_count(void)
{
	return io_loop_count;
}

void bd_loop_mark_used(struct bd_loop *loop)
{
	if (loop)
		atomic_store(&loop->handed_out, true);
}

bool bd_loop_was_used(const struct bd_loop *loop)
{
	return atomic_load(&loop->handed_out);
}

struct bd_loop *bd_io_loop_get(unsigned i)
{
	struct bd_loop *loop = i < io_loop_count ? io_loops[i] : NULL;
	bd_loop_mark_used(loop);
	return loop;
}

struct bd_loop *bd_io_loop_next(void)
{
	if (!io_loop_count)
		return main_loop;
	struct bd_loop *loop = io_loops[io_loop_rr++ % io_loop_count];
	bd_loop_mark_used(loop);
	return loop;
}
