/*
 * test-throttle-group.c - the scheduling of filters/throttle-group.c on real I/O loops, without
 * nodes: clients on two loops keep requests outstanding against one group; the group's rate,
 * its fairness between members, FIFO order within a member, a limit change waking queued
 * requests at once, the limits API and deletion while in use.  Timing based, with wide margins
 * (about 3 s in all).
 */
#include "filters/throttle-int.h"
#include "filters/throttle.h"

#include "blockd/blockd.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEPTH 8

static int failures;

#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);   \
			fprintf(stderr, __VA_ARGS__);                                              \
			fprintf(stderr, "\n");                                                     \
		}                                                                                  \
	} while (0)

struct client;

struct creq {
	struct bd_req req;
	struct bd_defer resubmit;
	struct client *c;
	uint64_t seq;
};

struct client {
	const char *name;
	struct bd_loop *loop;
	struct thr_group *g;
	struct thr_member *m;
	enum thr_dir dir;
	uint64_t len;
	struct creq reqs[DEPTH];
	uint64_t next_seq; /* loop only */
	uint64_t last_seq; /* loop only */
	atomic_bool stop;
	atomic_uint_fast64_t went;
	atomic_uint_fast64_t order_errors;
	atomic_uint_fast64_t failed;
};

static void submit_one(struct creq *r);

static void went(struct creq *r)
{
	struct client *c = r->c;

	if (r->seq <= c->last_seq)
		atomic_fetch_add(&c->order_errors, 1);
	c->last_seq = r->seq;
	atomic_fetch_add(&c->went, 1);
	if (!atomic_load(&c->stop))
		bd_loop_defer(c->loop, &r->resubmit); /* the request "completed": send another */
}

static void resubmit_fn(struct bd_defer *d)
{
	struct creq *r = (struct creq *)((char *)d - offsetof(struct creq, resubmit));

	if (!atomic_load(&r->c->stop))
		submit_one(r);
}

static void submit_one(struct creq *r)
{
	struct client *c = r->c;

	r->seq = ++c->next_seq;
	memset(&r->req, 0, sizeof(r->req));
	r->req.op = c->dir == THR_READ ? BD_OP_READ : BD_OP_WRITE;
	r->req.len = c->len;
	if (thr_member_submit(c->m, &r->req, c->dir))
		went(r);
}

static void release_cb(void *opaque, struct bd_req *req)
{
	went((struct creq *)req);
}

static void fail_cb(void *opaque, struct bd_req *req)
{
	struct client *c = opaque;
	atomic_fetch_add(&c->failed, 1);
}

static void start_on_loop(void *arg)
{
	struct client *c = arg;

	c->m = thr_member_new(c->g, c->loop, release_cb, c);
	for (int i = 0; i < DEPTH; i++) {
		c->reqs[i].c = c;
		c->reqs[i].resubmit.fn = resubmit_fn;
		submit_one(&c->reqs[i]);
	}
}

static void close_on_loop(void *arg)
{
	struct client *c = arg;
	thr_member_close(c->m, fail_cb);
	c->m = NULL;
}

static void client_init(struct client *c, const char *name, struct bd_loop *loop,
			struct thr_group *g, enum thr_dir dir, uint64_t len)
{
	memset(c, 0, sizeof(*c));
	c->name = name;
	c->loop = loop;
	c->g = g;
	c->dir = dir;
	c->len = len;
	atomic_init(&c->stop, false);
	atomic_init(&c->went, 0);
	atomic_init(&c->order_errors, 0);
	atomic_init(&c->failed, 0);
}

static void client_start(struct client *c)
{
	bd_loop_call(c->loop, start_on_loop, c);
}

static void barrier_on_loop(void *arg)
{
	(void)arg;
}

static void client_stop(struct client *c)
{
	atomic_store(&c->stop, true);
	bd_loop_call(c->loop, close_on_loop, c);
	/* A resubmit deferred before the close may still be queued on the loop (it sees stop
	 * and does nothing): one more message runs after that iteration's deferred work, so the
	 * client (on the caller's stack) is no longer referenced once this returns. */
	bd_loop_call(c->loop, barrier_on_loop, NULL);
}

static void sleep_ms(unsigned ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

static void add_group(const char *id, const char *json)
{
	struct bd_err err = {0};
	json_error_t jerr;
	json_t *props = json_loads(json, 0, &jerr);
	int r = bd_objtype_throttle_group.add(id, props, &err);
	CHECK(r == 0, "add %s: %s", id, err.msg);
	json_decref(props);
}

/* Two members on two loops share iops-total=200: the sum obeys it, each gets about half. */
static void test_shared_rate(struct bd_loop *l1, struct bd_loop *l2)
{
	struct bd_err err = {0};
	struct client a, b;

	add_group("shared", "{\"x-iops-total\": 200}");
	struct thr_group *g = thr_group_use("shared", &err);
	CHECK(g, "use: %s", err.msg);
	if (!g)
		return;

	client_init(&a, "a", l1, g, THR_READ, 4096);
	client_init(&b, "b", l2, g, THR_WRITE, 65536);
	uint64_t t0 = bd_now_ns();
	client_start(&a);
	client_start(&b);
	sleep_ms(1500);
	uint64_t na = atomic_load(&a.went), nb = atomic_load(&b.went);
	double secs = (double)(bd_now_ns() - t0) / 1e9;
	client_stop(&a);
	client_stop(&b);

	/* 200/s plus the 100 ms bucket (20) plus one. */
	double expected = 200 * secs + 21;
	printf("shared iops-total=200 over %.2f s: a=%llu b=%llu sum=%llu (expected %.0f)\n", secs,
	       (unsigned long long)na, (unsigned long long)nb, (unsigned long long)(na + nb),
	       expected);
	CHECK(na + nb >= expected * 0.9 && na + nb <= expected * 1.1, "sum %llu",
	      (unsigned long long)(na + nb));
	CHECK(na >= (na + nb) * 0.35 && nb >= (na + nb) * 0.35, "unfair: a=%llu b=%llu",
	      (unsigned long long)na, (unsigned long long)nb);
	CHECK(atomic_load(&a.order_errors) == 0 && atomic_load(&b.order_errors) == 0,
	      "requests overtook each other in a member");
	/* What was still queued at close came back through fail(). */
	CHECK(atomic_load(&a.failed) + atomic_load(&b.failed) <= 2 * DEPTH, "failed");

	/* In use: del refuses. */
	bd_err_clear(&err);
	CHECK(bd_objtype_throttle_group.del("shared", &err) == -EBUSY, "del while used: %s",
	      err.msg);
	thr_group_unuse(g);
	bd_err_clear(&err);
	CHECK(bd_objtype_throttle_group.del("shared", &err) == 0, "del: %s", err.msg);
	CHECK(!bd_throttle_group_exists("shared"), "still exists");
}

/* Requests queued under a very low limit go as soon as the limit is raised. */
static void test_limit_change(struct bd_loop *l1, struct bd_loop *l2)
{
	struct bd_err err = {0};
	struct client a, b;

	add_group("slow", "{\"limits\": {\"iops-total\": 1}}");
	struct thr_group *g = thr_group_use("slow", &err);
	if (!g)
		return;
	client_init(&a, "a", l1, g, THR_READ, 512);
	client_init(&b, "b", l2, g, THR_READ, 512);
	client_start(&a);
	client_start(&b);
	sleep_ms(300);
	uint64_t before = atomic_load(&a.went) + atomic_load(&b.went);
	/* 1/s with a 0.1 bucket: the first goes, the second waits 1 s. */
	CHECK(before <= 2, "went %llu under iops-total=1", (unsigned long long)before);

	json_t *lim = json_pack("{s:i}", "iops-total", 1000);
	CHECK(bd_throttle_group_set_limits("slow", lim, &err) == 0, "set: %s", err.msg);
	json_decref(lim);
	sleep_ms(200);
	uint64_t after = atomic_load(&a.went) + atomic_load(&b.went);
	printf("limit change 1 -> 1000 iops: %llu went in 300 ms before, %llu in 200 ms after\n",
	       (unsigned long long)before, (unsigned long long)(after - before));
	CHECK(after - before >= 150, "only %llu went after raising the limit",
	      (unsigned long long)(after - before));

	/* Lowered again: the rate drops. */
	lim = json_pack("{s:i}", "iops-total", 10);
	CHECK(bd_throttle_group_set_limits("slow", lim, &err) == 0, "set: %s", err.msg);
	json_decref(lim);
	sleep_ms(100);
	uint64_t t1 = atomic_load(&a.went) + atomic_load(&b.went);
	sleep_ms(500);
	uint64_t t2 = atomic_load(&a.went) + atomic_load(&b.went);
	CHECK(t2 - t1 <= 8, "%llu went in 500 ms at 10/s", (unsigned long long)(t2 - t1));

	/* Limits off: everything flows. */
	lim = json_pack("{s:i}", "iops-total", 0);
	CHECK(bd_throttle_group_set_limits("slow", lim, &err) == 0, "set: %s", err.msg);
	json_decref(lim);
	sleep_ms(100);
	t1 = atomic_load(&a.went) + atomic_load(&b.went);
	sleep_ms(100);
	t2 = atomic_load(&a.went) + atomic_load(&b.went);
	CHECK(t2 - t1 > 1000, "only %llu went in 100 ms without limits",
	      (unsigned long long)(t2 - t1));

	client_stop(&a);
	client_stop(&b);
	CHECK(atomic_load(&a.order_errors) == 0 && atomic_load(&b.order_errors) == 0,
	      "requests overtook each other in a member");
	thr_group_unuse(g);
	CHECK(bd_objtype_throttle_group.del("slow", &err) == 0, "del: %s", err.msg);
}

static void test_limits_api(void)
{
	struct bd_err err = {0};
	json_t *lim;
	int64_t v;

	add_group("api", "{\"x-bps-read\": \"1000\", \"limits\": {\"iops-write\": 5}}");
	lim = bd_throttle_group_get_limits("api", &err);
	CHECK(lim && json_object_size(lim) == 19, "get_limits");
	CHECK(json_integer_value(json_object_get(lim, "bps-read")) == 1000, "bps-read");
	CHECK(json_integer_value(json_object_get(lim, "iops-write")) == 5, "iops-write");
	CHECK(json_integer_value(json_object_get(lim, "iops-total-max-length")) == 1, "length");
	json_decref(lim);
	CHECK(bd_throttle_group_get_prop("api", "x-iops-write", &v, &err) == 0 && v == 5, "prop");
	CHECK(bd_throttle_group_get_prop("api", "x-nope", &v, &err) == -EINVAL, "bad prop");

	/* Merge: keys not given keep their value. */
	lim = json_pack("{s:s}", "bps-read-max", "2000");
	bd_err_clear(&err);
	CHECK(bd_throttle_group_set_limits("api", lim, &err) == 0, "set: %s", err.msg);
	json_decref(lim);
	lim = bd_throttle_group_get_limits("api", &err);
	CHECK(json_integer_value(json_object_get(lim, "bps-read")) == 1000 &&
		  json_integer_value(json_object_get(lim, "bps-read-max")) == 2000,
	      "merged");
	json_decref(lim);

	/* Invalid: nothing changes. */
	static const struct {
		const char *json, *msg;
	} bad[] = {
	    {"{\"bps-total\": 5}",
	     "bps/iops/max total values and read/write values cannot be used at the same "
	     "time"},
	    {"{\"iops-write\": -7}", "bps/iops/max values must be within [0, 1000000000000000]"},
	    {"{\"foo\": 1}", "Parameter 'limits.foo' is unexpected"},
	    {"{\"iops-write\": \"x\"}", "Parameter 'limits.iops-write' expects integer"},
	    {"{\"iops-write\": 1.5}",
	     "Invalid parameter type for 'limits.iops-write', expected: integer"},
	    {"{\"bps-read-max-length\": 4294967296}",
	     "bps-read-max-length value must be in the range [0, 4294967295]"},
	    {"{\"bps-read-max\": 10}", "bps_max/iops_max cannot be lower than bps/iops"},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		json_error_t jerr;
		lim = json_loads(bad[i].json, 0, &jerr);
		bd_err_clear(&err);
		int r = bd_throttle_group_set_limits("api", lim, &err);
		CHECK(r == -EINVAL && strcmp(err.msg, bad[i].msg) == 0, "%s: %d '%s'", bad[i].json,
		      r, err.msg);
		json_decref(lim);
	}
	lim = bd_throttle_group_get_limits("api", &err);
	CHECK(json_integer_value(json_object_get(lim, "bps-read-max")) == 2000 &&
		  json_integer_value(json_object_get(lim, "bps-total")) == 0,
	      "changed by a failed set");
	json_decref(lim);

	bd_err_clear(&err);
	lim = json_object();
	CHECK(bd_throttle_group_set_limits("nope", lim, &err) == -ENOENT, "set unknown");
	json_decref(lim);
	bd_err_clear(&err);
	CHECK(bd_throttle_group_get_limits("nope", &err) == NULL && err.code == -ENOENT,
	      "get unknown");

	/* Creation errors. */
	static const struct {
		const char *json, *msg;
	} bad_add[] = {
	    {"{\"x-iops-total\": -1}", "Property values cannot be negative"},
	    {"{\"x-iops-total\": \"1k\"}", "Parameter 'x-iops-total' expects integer"},
	    {"{\"x-iops-totalx\": 1}", "Parameter 'x-iops-totalx' is unexpected"},
	    {"{\"iops-total\": 1}", "Parameter 'iops-total' is unexpected"},
	    {"{\"x-iops-size\": 512}", "iops size requires an iops value to be set"},
	    {"{\"x-iops-total\": 10, \"x-iops-total-max-length\": 4294967296}",
	     "x-iops-total-max-length value must be in the range [0, 4294967295]"},
	    {"{\"limits\": 5}", "Invalid parameter type for 'limits', expected: object"},
	    {"{\"x-bps-read\": 10}", "A group with this name already exists"},
	};
	for (size_t i = 0; i < sizeof(bad_add) / sizeof(bad_add[0]); i++) {
		json_error_t jerr;
		json_t *props = json_loads(bad_add[i].json, 0, &jerr);
		bd_err_clear(&err);
		int r = bd_objtype_throttle_group.add(
		    i + 1 == sizeof(bad_add) / sizeof(bad_add[0]) ? "api" : "bad", props, &err);
		CHECK(r < 0 && strcmp(err.msg, bad_add[i].msg) == 0, "%s: %d '%s'", bad_add[i].json,
		      r, err.msg);
		json_decref(props);
	}
	CHECK(!bd_throttle_group_exists("bad"), "a failed add left a group");
	bd_err_clear(&err);
	CHECK(bd_objtype_throttle_group.del("api", &err) == 0, "del: %s", err.msg);
	CHECK(bd_objtype_throttle_group.del("api", &err) == -ENOENT, "del twice");
}

int main(void)
{
	struct bd_err err = {0};
	struct bd_loop *l1 = bd_loop_create("t1", &err);
	struct bd_loop *l2 = l1 ? bd_loop_create("t2", &err) : NULL;

	if (!l1 || !l2) {
		printf("SKIP: cannot create I/O loops: %s\n", err.msg);
		return 77;
	}
	test_limits_api();
	test_shared_rate(l1, l2);
	test_limit_change(l1, l2);
	bd_loop_destroy(l1);
	bd_loop_destroy(l2);

	if (failures) {
		fprintf(stderr, "test-throttle-group: %d checks failed\n", failures);
		return 1;
	}
	printf("test-throttle-group: all checks passed\n");
	return 0;
}
