/*
 * vol-task.c - the data phase of volume operations: wipe (zero, trim, random and the scrub(1)
 * pattern sequences), upload, download and clone copies.  A task runs inline on the control
 * thread, or on a worker thread with a job number, progress counters (query-volume-jobs) and a
 * POOL_VOLUME_JOB_COMPLETED event when the main loop reaps it.
 * [control thread, except task_run() and what it calls: the worker thread]
 *
 * Sources and destinations are file descriptors: regular files and block devices are read and
 * written at offsets (holes of a sparse source are skipped); pipes and sockets (a client's fd
 * passed over the control socket) are streamed in order.
 */
#include "pools/pools-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#define COPY_CHUNK (1u << 20)

/* Set at shutdown: worker-thread loops stop at the next chunk (-ECANCELED). */
static atomic_bool tasks_cancel;

static struct vol_task *tasks;
static uint64_t task_seq;
static struct bd_timer reap_timer;
static bool reap_armed;

/* ---- wipe algorithms: passes of a repeated pattern (len 0 = random bytes) ---- */

struct wipe_pass {
	unsigned char len;
	unsigned char bytes[3];
};

#define R                                                                                          \
	{                                                                                          \
		0,                                                                                 \
		{                                                                                  \
			0                                                                          \
		}                                                                                  \
	}
#define B(x)                                                                                       \
	{                                                                                          \
		1,                                                                                 \
		{                                                                                  \
			x                                                                          \
		}                                                                                  \
	}
#define P3(a, b, c)                                                                                \
	{                                                                                          \
		3,                                                                                 \
		{                                                                                  \
			a, b, c                                                                    \
		}                                                                                  \
	}

static const struct wipe_pass pass_zero[] = {B(0x00)};
static const struct wipe_pass pass_random[] = {R};
/* US NNSA Policy Letter NAP-14.1-C: two random passes, then zeroes */
static const struct wipe_pass pass_nnsa[] = {R, R, B(0x00)};
/* US DoD 5220.22-M: a character, its complement, a random character */
static const struct wipe_pass pass_dod[] = {B(0x00), B(0xff), R};
/* German BSI: 0xff, then every byte with one bit cleared */
static const struct wipe_pass pass_bsi[] = {B(0xff), B(0xfe), B(0xfd), B(0xfb), B(0xf7),
					    B(0xef), B(0xdf), B(0xbf), B(0x7f)};
/* Peter Gutmann's 35 passes (1996): 4 random, 27 patterns for MFM/RLL encodings, 4 random */
static const struct wipe_pass pass_gutmann[] = {
    R,
    R,
    R,
    R,
    B(0x55),
    B(0xaa),
    P3(0x92, 0x49, 0x24),
    P3(0x49, 0x24, 0x92),
    P3(0x24, 0x92, 0x49),
    B(0x00),
    B(0x11),
    B(0x22),
    B(0x33),
    B(0x44),
    B(0x55),
    B(0x66),
    B(0x77),
    B(0x88),
    B(0x99),
    B(0xaa),
    B(0xbb),
    B(0xcc),
    B(0xdd),
    B(0xee),
    B(0xff),
    P3(0x92, 0x49, 0x24),
    P3(0x49, 0x24, 0x92),
    P3(0x24, 0x92, 0x49),
    P3(0x6d, 0xb6, 0xdb),
    P3(0xb6, 0xdb, 0x6d),
    P3(0xdb, 0x6d, 0xb6),
    R,
    R,
    R,
    R,
};
/* Bruce Schneier's: zeroes, ones, five random passes */
static const struct wipe_pass pass_schneier[] = {B(0x00), B(0xff), R, R, R, R, R};
/* Roy Pfitzner's: 7 or 33 random passes */
static const struct wipe_pass pass_pfitzner7[] = {R, R, R, R, R, R, R};
static const struct wipe_pass pass_pfitzner33[] = {R, R, R, R, R, R, R, R, R, R, R,
						   R, R, R, R, R, R, R, R, R, R, R,
						   R, R, R, R, R, R, R, R, R, R, R};

static const struct {
	const char *name;
	const struct wipe_pass *passes;
	size_t npasses;
} wipe_algs[] = {
    {"zero", pass_zero, 1},
    {"trim", pass_zero, 1}, /* discard; zeroes where the storage cannot */
    {"random", pass_random, 1},
    {"nnsa", pass_nnsa, ARRAY_LEN(pass_nnsa)},
    {"dod", pass_dod, ARRAY_LEN(pass_dod)},
    {"bsi", pass_bsi, ARRAY_LEN(pass_bsi)},
    {"gutmann", pass_gutmann, ARRAY_LEN(pass_gutmann)},
    {"schneier", pass_schneier, ARRAY_LEN(pass_schneier)},
    {"pfitzner7", pass_pfitzner7, ARRAY_LEN(pass_pfitzner7)},
    {"pfitzner33", pass_pfitzner33, ARRAY_LEN(pass_pfitzner33)},
};

int bd_vol_wipe_alg_find(const char *name)
{
	for (size_t i = 0; i < ARRAY_LEN(wipe_algs); i++)
		if (!strcmp(wipe_algs[i].name, name))
			return (int)i;
	return -1;
}

const char *bd_vol_wipe_alg_names(void)
{
	return "zero, trim, random, nnsa, dod, bsi, gutmann, schneier, pfitzner7, pfitzner33";
}

unsigned bd_vol_wipe_alg_passes(int alg)
{
	return wipe_algs[alg].npasses;
}

/* ---- the I/O helpers ---- */

static int cancelled(struct bd_err *err)
{
	if (!atomic_load(&tasks_cancel))
		return 0;
	return bd_err_set(err, -ECANCELED, "cancelled: blockd is shutting down");
}

/* Write all of buf at off (or, on a stream, in order). */
static int write_all(int fd, bool stream, const char *buf, size_t n, uint64_t off,
		     struct bd_err *err)
{
	size_t done = 0;
	while (done < n) {
		ssize_t w = stream ? write(fd, buf + done, n - done)
				   : pwrite(fd, buf + done, n - done, (off_t)(off + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return bd_err_set(err, w < 0 ? -errno : -EIO, "write failed: %s",
					  w < 0 ? strerror(errno) : "no progress");
		done += (size_t)w;
	}
	return 0;
}

/* Read up to n bytes at off (or, on a stream, the next ones): 0 at the end. */
static ssize_t read_some(int fd, bool stream, char *buf, size_t n, uint64_t off)
{
	size_t got = 0;
	while (got < n) {
		ssize_t r = stream ? read(fd, buf + got, n - got)
				   : pread(fd, buf + got, n - got, (off_t)(off + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			break;
		got += (size_t)r;
		break; /* what a pipe has now is enough: progress shows it, the caller loops */
	}
	return (ssize_t)got;
}

bool bd_vol_fd_is_stream(int fd)
{
	struct stat st;
	if (fstat(fd, &st) < 0)
		return true;
	return !S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode);
}

/* Copy t->len bytes (UINT64_MAX: to the end of the source) from in to out.  Holes of a regular
 * source are skipped (the destination keeps its own bytes there: callers give a fresh or
 * truncated destination), and with zero_holes so are blocks of zeroes. */
static int copy_range(struct vol_task *t, uint64_t ooff, bool zero_holes)
{
	/* endpoints: fds, or graph nodes (volumes reached through a protocol driver) */
	bool in_node = t->src, out_node = t->dst;
	bool in_stream = !in_node && bd_vol_fd_is_stream(t->in);
	bool out_stream = !out_node && bd_vol_fd_is_stream(t->out);
	char *buf = malloc(COPY_CHUNK);
	uint64_t done = 0, len = t->len;
	int r = 0;
	if (!buf)
		return bd_err_set(&t->err, -ENOMEM, "out of memory");
	while (done < len) {
		size_t want = len - done < COPY_CHUNK ? (size_t)(len - done) : COPY_CHUNK;
		if ((r = cancelled(&t->err)) < 0)
			break;
		if (!in_node && !out_node && !in_stream && !out_stream && !t->dense) {
			off_t data = lseek(t->in, (off_t)(t->in_off + done), SEEK_DATA);
			if (data < 0 && errno == ENXIO) {
				/* only a hole up to the end */
				if (len != UINT64_MAX)
					done = len;
				break;
			}
			if (data > (off_t)(t->in_off + done)) {
				uint64_t skip = (uint64_t)data - (t->in_off + done);
				done += skip < len - done ? skip : len - done;
				atomic_store(&t->progress, done);
				continue;
			}
		}
		ssize_t n;
		if (in_node) {
			n = (ssize_t)want;
			int e = bd_node_io_sync(t->src, BD_OP_READ, t->in_off + done, want, buf, 0);
			if (e < 0)
				n = e;
		} else {
			n = read_some(t->in, in_stream, buf, want, t->in_off + done);
		}
		if (n < 0) {
			r = bd_err_set(&t->err, (int)n, "read failed: %s", strerror((int)-n));
			break;
		}
		if (n == 0)
			break;
		if (t->limit && ooff + done + (uint64_t)n > t->limit) {
			r = bd_err_set(&t->err, -ENOSPC,
				       "the data goes past the end of the volume (%" PRIu64
				       " bytes)",
				       t->limit - t->out_base);
			break;
		}
		if (out_node) {
			if ((r = bd_node_io_sync(t->dst, BD_OP_WRITE, ooff + done, (uint64_t)n, buf,
						 0)) < 0) {
				bd_err_set(&t->err, r, "write failed at %" PRIu64 ": %s", ooff + done,
					   strerror(-r));
				break;
			}
		} else if (out_stream || !(zero_holes && bd_buf_is_zero(buf, (size_t)n))) {
			if ((r = write_all(t->out, out_stream, buf, (size_t)n, ooff + done,
					   &t->err)) < 0)
				break;
		}
		done += (uint64_t)n;
		atomic_store(&t->progress, done);
	}
	free(buf);
	t->copied = done;
	return r;
}

static void fill_pattern(char *buf, size_t n, const struct wipe_pass *p)
{
	if (p->len == 0) {
		for (size_t got = 0; got < n;) {
			ssize_t g = getrandom(buf + got, n - got, 0);
			if (g > 0)
				got += (size_t)g;
		}
		return;
	}
	for (size_t i = 0; i < n; i++)
		buf[i] = (char)p->bytes[i % p->len];
}

static int wipe(struct vol_task *t)
{
	const struct wipe_pass *passes = wipe_algs[t->alg].passes;
	unsigned npasses = wipe_algs[t->alg].npasses;
	bool trim = !strcmp(wipe_algs[t->alg].name, "trim");
	if ((trim || !strcmp(wipe_algs[t->alg].name, "zero")) && t->punch &&
	    fallocate(t->out, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)t->out_off,
		      (off_t)t->len) == 0) {
		atomic_store(&t->progress, t->len);
		return 0;
	}
	char *buf = malloc(COPY_CHUNK);
	if (!buf)
		return bd_err_set(&t->err, -ENOMEM, "out of memory");
	int r = 0;
	for (unsigned pass = 0; pass < npasses && r == 0; pass++) {
		bool random = passes[pass].len == 0;
		if (!random) /* a chunk length that is a multiple of 3 keeps 3-byte patterns aligned
			      */
			fill_pattern(buf, COPY_CHUNK - COPY_CHUNK % 3, &passes[pass]);
		for (uint64_t off = 0; off < t->len && r == 0;) {
			size_t n = COPY_CHUNK - COPY_CHUNK % 3;
			if (t->len - off < n)
				n = (size_t)(t->len - off);
			if ((r = cancelled(&t->err)) < 0)
				break;
			if (random)
				fill_pattern(buf, n, &passes[pass]);
			r = write_all(t->out, false, buf, n, t->out_off + off, &t->err);
			off += n;
			atomic_store(&t->progress, (uint64_t)pass * t->len + off);
		}
		/* each pass reaches the storage before the next overwrites it */
		if (r == 0 && npasses > 1 && fdatasync(t->out) < 0)
			r = bd_err_set(&t->err, -errno, "fdatasync failed: %s", strerror(errno));
	}
	free(buf);
	return r;
}

/* Copy through graph nodes (format conversion): zero blocks are not written, the new image
 * reads them as zeroes already. */
static int convert(struct vol_task *t)
{
	char *buf = malloc(COPY_CHUNK);
	int r = 0;
	if (!buf)
		return bd_err_set(&t->err, -ENOMEM, "out of memory");
	for (uint64_t off = 0; off < t->len;) {
		size_t n = t->len - off < COPY_CHUNK ? (size_t)(t->len - off) : COPY_CHUNK;
		if ((r = cancelled(&t->err)) < 0)
			break;
		if ((r = bd_node_io_sync(t->src, BD_OP_READ, off, n, buf, 0)) < 0) {
			bd_err_set(&t->err, r, "read failed at %" PRIu64 ": %s", off, strerror(-r));
			break;
		}
		if (!bd_buf_is_zero(buf, n) &&
		    (r = bd_node_io_sync(t->dst, BD_OP_WRITE, off, n, buf, 0)) < 0) {
			bd_err_set(&t->err, r, "write failed at %" PRIu64 ": %s", off,
				   strerror(-r));
			break;
		}
		off += n;
		atomic_store(&t->progress, off);
	}
	if (r == 0 && (r = bd_node_io_sync(t->dst, BD_OP_FLUSH, 0, 0, NULL, 0)) < 0)
		bd_err_set(&t->err, r, "flush failed: %s", strerror(-r));
	free(buf);
	return r;
}

/* [worker or control] The I/O; closes the fds. */
static void task_run(struct vol_task *t)
{
	int r = 0;
	switch (t->kind) {
	case VT_WIPE:
		r = wipe(t);
		break;
	case VT_UPLOAD:
	case VT_CLONE:
		r = copy_range(t, t->out_off, false);
		break;
	case VT_CONVERT:
		r = convert(t);
		break;
	case VT_DOWNLOAD: {
		bool stream = bd_vol_fd_is_stream(t->out);
		r = copy_range(t, 0, t->sparse);
		if (r == 0 && !stream && ftruncate(t->out, (off_t)t->copied) < 0)
			r = bd_err_set(&t->err, -errno, "cannot size the file: %s",
				       strerror(errno));
		if (r == 0 && !stream && !t->sparse) {
			/* holes of the source were skipped: a non-sparse download allocates them
			 * (file systems without fallocate keep holes: still the right bytes) */
			struct stat st;
			if (fstat(t->out, &st) == 0 && (uint64_t)st.st_blocks * 512 < t->copied &&
			    fallocate(t->out, 0, 0, (off_t)t->copied) < 0) {
			}
		}
		break;
	}
	}
	if (r == 0 && t->dst && t->kind != VT_CONVERT &&
	    (r = bd_node_io_sync(t->dst, BD_OP_FLUSH, 0, 0, NULL, 0)) < 0)
		bd_err_set(&t->err, r, "flush failed: %s", strerror(-r));
	if (r == 0 && t->out >= 0 && !bd_vol_fd_is_stream(t->out) && fsync(t->out) < 0)
		r = bd_err_set(&t->err, -errno, "fsync failed: %s", strerror(errno));
	if (t->in >= 0)
		close(t->in);
	if (t->out >= 0)
		close(t->out);
	t->in = t->out = -1;
	t->result = r;
}

static void *task_thread(void *arg)
{
	struct vol_task *t = arg;
	task_run(t);
	atomic_store(&t->done, true);
	return NULL;
}

/* ---- the task list ---- */

struct vol_task *bd_vol_task_new(enum vol_task_kind kind, const char *op)
{
	struct vol_task *t = calloc(1, sizeof(*t));
	if (t) {
		t->kind = kind;
		t->op = op;
		t->in = t->out = -1;
		t->len = UINT64_MAX;
		atomic_init(&t->done, false);
		atomic_init(&t->progress, 0);
	}
	return t;
}

void bd_vol_task_free(struct vol_task *t)
{
	if (!t)
		return;
	if (t->in >= 0)
		close(t->in);
	if (t->out >= 0)
		close(t->out);
	free(t->path);
	free(t->pool);
	free(t->vol);
	free(t);
}

bool bd_vol_task_busy(const char *pool, const char *vol)
{
	for (struct vol_task *t = tasks; t; t = t->next)
		if (!strcmp(t->pool, pool) && !strcmp(t->vol, vol))
			return true;
	return false;
}

bool bd_pool_has_tasks(const char *pool)
{
	for (struct vol_task *t = tasks; t; t = t->next)
		if (!strcmp(t->pool, pool))
			return true;
	return false;
}

static void reap(struct bd_timer *tm)
{
	(void)tm;
	reap_armed = false;
	for (struct vol_task **pp = &tasks; *pp;) {
		struct vol_task *t = *pp;
		if (!atomic_load(&t->done)) {
			pp = &t->next;
			continue;
		}
		pthread_join(t->th, NULL);
		*pp = t->next;
		if (t->finish)
			t->finish(t);
		json_t *ev = json_pack("{s:I,s:s,s:s,s:s,s:I}", "job", (json_int_t)t->id, "pool",
				       t->pool, "vol", t->vol, "operation", t->op, "bytes",
				       (json_int_t)atomic_load(&t->progress));
		if (t->result < 0)
			json_object_set_new(ev, "error", json_string(t->err.msg));
		bd_event_emit("POOL_VOLUME_JOB_COMPLETED", ev);
		bd_vol_task_free(t);
	}
	if (tasks) {
		bd_timer_arm(bd_loop_main(), &reap_timer, bd_now_ns() + 20000000);
		reap_armed = true;
	}
}

int bd_vol_task_start(struct vol_task *t, const char *pool, const char *vol, uint64_t *job_id,
		      struct bd_err *err)
{
	int r;
	t->pool = strdup(pool);
	t->vol = strdup(vol);
	if (!t->pool || !t->vol) {
		bd_vol_task_free(t);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	if (!job_id) {
		task_run(t);
		r = t->result;
		if (r < 0)
			bd_err_set(err, r, "%s", t->err.msg);
		if (t->finish)
			t->finish(t);
		bd_vol_task_free(t);
		return r;
	}
	t->id = ++task_seq;
	if ((r = -pthread_create(&t->th, NULL, task_thread, t)) != 0) {
		r = bd_err_set(err, r, "cannot start a worker thread: %s", strerror(-r));
		t->result = r;
		if (t->finish)
			t->finish(t);
		bd_vol_task_free(t);
		return r;
	}
	t->next = tasks;
	tasks = t;
	*job_id = t->id;
	if (!reap_armed) {
		bd_timer_init(&reap_timer, reap);
		bd_timer_arm(bd_loop_main(), &reap_timer, bd_now_ns() + 20000000);
		reap_armed = true;
	}
	return 0;
}

json_t *bd_vol_jobs(void)
{
	json_t *a = json_array();
	for (struct vol_task *t = tasks; t; t = t->next) {
		uint64_t total = t->len == UINT64_MAX ? 0 : t->len;
		if (t->kind == VT_WIPE)
			total *= wipe_algs[t->alg].npasses;
		json_array_append_new(a, json_pack("{s:I,s:s,s:s,s:s,s:I,s:I}", "job",
						   (json_int_t)t->id, "pool", t->pool, "vol",
						   t->vol, "operation", t->op, "done",
						   (json_int_t)atomic_load(&t->progress), "total",
						   (json_int_t)total));
	}
	return a;
}

void bd_pool_tasks_shutdown(void)
{
	if (reap_armed && bd_loop_main())
		bd_timer_cancel(bd_loop_main(), &reap_timer);
	reap_armed = false;
	atomic_store(&tasks_cancel, true);
	while (tasks) {
		struct vol_task *t = tasks;
		tasks = t->next;
		pthread_join(t->th, NULL);
		bd_vol_task_free(t);
	}
	atomic_store(&tasks_cancel, false);
}
