/*
 * test-throttle-math.c - unit tests of filters/throttle-math.c: rates, bursts, burst lengths,
 * iops-size, validation with QEMU's messages.  Deterministic: time is a parameter.
 */
#include "filters/throttle-math.h"

#include "blockd/blockd.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MS 1000000ULL
#define SEC 1000000000ULL

static int failures;
static int checks;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		checks++;                                                                          \
		if (!(cond)) {                                                                     \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
				__func__, #cond);                                                  \
		}                                                                                  \
	} while (0)

#define CHECK_EQ_U64(a, b)                                                                         \
	do {                                                                                       \
		unsigned long long a_ = (a), b_ = (b);                                             \
		checks++;                                                                          \
		if (a_ != b_) {                                                                    \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: %s == %llu, expected %llu\n", __FILE__,        \
				__LINE__, __func__, #a, a_, b_);                                   \
		}                                                                                  \
	} while (0)

/* |a - b| <= tol (in ns) */
#define CHECK_NEAR(a, b, tol)                                                                      \
	do {                                                                                       \
		double a_ = (double)(a), b_ = (double)(b);                                         \
		checks++;                                                                          \
		if (fabs(a_ - b_) > (tol)) {                                                       \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: %s == %.1f, expected %.1f +- %.1f\n",          \
				__FILE__, __LINE__, __func__, #a, a_, b_, (double)(tol));          \
		}                                                                                  \
	} while (0)

static int param(const char *name)
{
	for (int i = 0; i < THR__PARAMS; i++)
		if (strcmp(thr_params[i].name, name) == 0)
			return i;
	fprintf(stderr, "no parameter %s\n", name);
	abort();
}

static void set(struct thr_config *cfg, const char *name, uint64_t v)
{
	thr_config_set(cfg, param(name), v);
}

/* Validate cfg, expecting msg (NULL: valid). */
static void expect_check(const struct thr_config *cfg, const char *msg, int line)
{
	struct bd_err err = {0};
	int r = thr_config_check(cfg, &err);

	checks++;
	if (!msg && r != 0) {
		failures++;
		fprintf(stderr, "line %d: unexpected error: %s\n", line, err.msg);
	} else if (msg && (r != -EINVAL || strcmp(err.msg, msg) != 0)) {
		failures++;
		fprintf(stderr, "line %d: got %d '%s', expected '%s'\n", line, r, err.msg, msg);
	}
}
#define EXPECT_CHECK(cfg, msg) expect_check(cfg, msg, __LINE__)

/* A greedy client: from start to end, send requests of bytes in direction dir as soon as the
 * state allows (each wait exactly as long as told).  Returns how many went. */
static uint64_t greedy(struct thr_state *ts, enum thr_dir dir, uint64_t bytes, uint64_t start,
		       uint64_t end)
{
	uint64_t now = start, n = 0;

	while (now < end) {
		uint64_t w = thr_wait_ns(ts, dir, now);
		if (w) {
			now += w;
			continue;
		}
		thr_account(ts, dir, bytes);
		n++;
	}
	return n;
}

static void test_params_table(void)
{
	struct thr_config cfg;

	thr_config_init(&cfg);
	CHECK(!thr_config_enabled(&cfg));
	for (int i = 0; i < THR__BUCKETS; i++) {
		CHECK_EQ_U64(cfg.b[i].avg, 0);
		CHECK_EQ_U64(cfg.b[i].max, 0);
		CHECK_EQ_U64(cfg.b[i].burst_length, 1);
	}
	CHECK_EQ_U64(cfg.iops_size, 0);

	/* Every parameter reads back what was written, and lands in its own field. */
	for (int i = 0; i < THR__PARAMS; i++) {
		thr_config_init(&cfg);
		thr_config_set(&cfg, i, 1000 + i);
		CHECK_EQ_U64(thr_config_get(&cfg, i), 1000 + i);
		for (int j = 0; j < THR__PARAMS; j++) {
			if (j == i)
				continue;
			uint64_t def = thr_params[j].kind == THR_P_BURST_LENGTH ? 1 : 0;
			CHECK_EQ_U64(thr_config_get(&cfg, j), def);
		}
	}
	CHECK(thr_params[param("bps-write-max-length")].bucket == THR_BPS_WRITE);
	CHECK(thr_params[param("iops-read-max")].bucket == THR_OPS_READ);
	CHECK(thr_params[param("iops-size")].kind == THR_P_IOPS_SIZE);

	thr_config_init(&cfg);
	set(&cfg, "bps-write", 1);
	CHECK(thr_config_enabled(&cfg));
}

static void test_validation(void)
{
	struct thr_config cfg;

	thr_config_init(&cfg);
	EXPECT_CHECK(&cfg, NULL);

	static const char *const conflicts[][2] = {
	    {"iops-total", "iops-read"},
	    {"iops-total", "iops-write"},
	    {"bps-total", "bps-read"},
	    {"bps-total", "bps-write"},
	};
	for (size_t i = 0; i < sizeof(conflicts) / sizeof(conflicts[0]); i++) {
		thr_config_init(&cfg);
		set(&cfg, conflicts[i][0], 100);
		set(&cfg, conflicts[i][1], 100);
		EXPECT_CHECK(&cfg, "bps/iops/max total values and read/write values cannot be used "
				   "at the same time");
	}
	/* The max values conflict too (with their averages valid on their own). */
	thr_config_init(&cfg);
	set(&cfg, "bps-total", 100);
	set(&cfg, "bps-total-max", 200);
	set(&cfg, "bps-read-max", 200);
	EXPECT_CHECK(&cfg, "bps/iops/max total values and read/write values cannot be used at "
			   "the same time");
	/* bps total with iops read/write is fine. */
	thr_config_init(&cfg);
	set(&cfg, "bps-total", 100);
	set(&cfg, "iops-read", 10);
	set(&cfg, "iops-write", 20);
	EXPECT_CHECK(&cfg, NULL);

	thr_config_init(&cfg);
	set(&cfg, "iops-size", 4096);
	EXPECT_CHECK(&cfg, "iops size requires an iops value to be set");
	set(&cfg, "bps-total", 100);
	EXPECT_CHECK(&cfg, "iops size requires an iops value to be set");
	set(&cfg, "iops-write", 100);
	EXPECT_CHECK(&cfg, NULL);

	thr_config_init(&cfg);
	set(&cfg, "iops-total", THR_VALUE_MAX);
	EXPECT_CHECK(&cfg, NULL);
	set(&cfg, "iops-total", THR_VALUE_MAX + 1);
	EXPECT_CHECK(&cfg, "bps/iops/max values must be within [0, 1000000000000000]");
	thr_config_init(&cfg);
	set(&cfg, "bps-read", (uint64_t)-1); /* a negative value from limits.* */
	EXPECT_CHECK(&cfg, "bps/iops/max values must be within [0, 1000000000000000]");
	thr_config_init(&cfg);
	set(&cfg, "bps-read", 10);
	set(&cfg, "bps-read-max", THR_VALUE_MAX + 1);
	EXPECT_CHECK(&cfg, "bps/iops/max values must be within [0, 1000000000000000]");

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);
	set(&cfg, "iops-total-max-length", 0);
	EXPECT_CHECK(&cfg, "the burst length cannot be 0");
	/* ... even on a bucket without limits. */
	thr_config_init(&cfg);
	set(&cfg, "bps-write-max-length", 0);
	EXPECT_CHECK(&cfg, "the burst length cannot be 0");

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);
	set(&cfg, "iops-total-max-length", 5);
	EXPECT_CHECK(&cfg, "burst length set without burst rate");
	set(&cfg, "iops-total-max", 1000);
	EXPECT_CHECK(&cfg, NULL);

	thr_config_init(&cfg);
	set(&cfg, "bps-total", 100);
	set(&cfg, "bps-total-max", 1000000000);
	set(&cfg, "bps-total-max-length", 1000000);
	EXPECT_CHECK(&cfg, NULL); /* exactly 1e15 */
	set(&cfg, "bps-total-max-length", 1000001);
	EXPECT_CHECK(&cfg, "burst length too high for this burst rate");

	thr_config_init(&cfg);
	set(&cfg, "iops-total-max", 50);
	EXPECT_CHECK(&cfg, "bps_max/iops_max require corresponding bps/iops values");

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);
	set(&cfg, "iops-total-max", 50);
	EXPECT_CHECK(&cfg, "bps_max/iops_max cannot be lower than bps/iops");
	set(&cfg, "iops-total-max", 100); /* equal is allowed */
	EXPECT_CHECK(&cfg, NULL);

	/* With err NULL the code still comes back. */
	thr_config_init(&cfg);
	set(&cfg, "iops-total-max", 50);
	CHECK(thr_config_check(&cfg, NULL) == -EINVAL);
}

static void test_disabled(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	thr_state_init(&ts, &cfg, 5 * SEC);
	for (int i = 0; i < 100000; i++) {
		CHECK_EQ_U64(thr_wait_ns(&ts, i & 1 ? THR_WRITE : THR_READ, 5 * SEC), 0);
		thr_account(&ts, i & 1 ? THR_WRITE : THR_READ, 1 << 20);
	}
}

static void test_iops_basic(void)
{
	struct thr_config cfg;
	struct thr_state ts;
	uint64_t t0 = 1000 * SEC;

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);
	thr_state_init(&ts, &cfg, t0);

	/* Without a burst, 100 ms worth (10 I/Os) may go at once. */
	for (int i = 0; i < 10; i++) {
		CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, t0), 0);
		thr_account(&ts, THR_READ, 4096);
	}
	/* The level is 10 = the bucket size: one more still goes (QEMU checks before
	 * accounting)... */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_WRITE, t0), 0);
	thr_account(&ts, THR_WRITE, 4096);
	/* ... and then the bucket is 1 over: 1/100 s. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, t0), 10 * MS);
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_WRITE, t0), 10 * MS);
	/* Half way: half the wait. */
	CHECK_NEAR(thr_wait_ns(&ts, THR_READ, t0 + 5 * MS), 5 * MS, 2);
	/* At the deadline it may go. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, t0 + 10 * MS), 0);
	/* The clock going back changes nothing. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, t0), 0);
	/* Leaking empties the bucket, never below 0. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, t0 + 100 * SEC), 0);
	CHECK(ts.level[THR_OPS_TOTAL] == 0);
}

static void test_iops_rate(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 200);
	thr_state_init(&ts, &cfg, 0);
	/* 10 s greedy: 200/s plus the initial 100 ms bucket (20) plus the one over. */
	uint64_t n = greedy(&ts, THR_READ, 4096, 0, 10 * SEC);
	CHECK_NEAR(n, 2000 + 21, 2);

	/* Reads and writes share the total. */
	thr_state_init(&ts, &cfg, 0);
	uint64_t now = 0, r = 0, w = 0;
	while (now < 10 * SEC) {
		enum thr_dir d = (r + w) % 2 ? THR_WRITE : THR_READ;
		uint64_t wait = thr_wait_ns(&ts, d, now);
		if (wait) {
			now += wait;
			continue;
		}
		thr_account(&ts, d, 512);
		if (d == THR_READ)
			r++;
		else
			w++;
	}
	CHECK_NEAR(r + w, 2021, 2);
	CHECK_NEAR(r, w, 1);
}

static void test_read_write_separate(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	set(&cfg, "iops-read", 10);
	set(&cfg, "bps-write", 1 << 20);
	thr_state_init(&ts, &cfg, 0);

	/* Writes do not fill the read buckets. */
	for (int i = 0; i < 1000; i++)
		thr_account(&ts, THR_WRITE, 512);
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 0), 0);
	/* Reads do not fill the write buckets. */
	thr_state_init(&ts, &cfg, 0);
	for (int i = 0; i < 1000; i++)
		thr_account(&ts, THR_READ, 1 << 20);
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_WRITE, 0), 0);
	CHECK(thr_wait_ns(&ts, THR_READ, 0) > 0);

	/* iops-read: 10/s for reads; writes at 1 MiB/s of 64 KiB = 16/s. */
	thr_state_init(&ts, &cfg, 0);
	CHECK_NEAR(greedy(&ts, THR_READ, 65536, 0, 10 * SEC), 100 + 2, 1);
	thr_state_init(&ts, &cfg, 0);
	uint64_t n = greedy(&ts, THR_WRITE, 65536, 0, 10 * SEC);
	/* 10 MiB in 10 s + 100 ms bucket (1.6 I/Os) + one over */
	CHECK_NEAR(n, 160 + 2, 1.5);
}

static void test_bps(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	set(&cfg, "bps-total", 1000000);
	thr_state_init(&ts, &cfg, 0);
	/* A request goes while the bucket holds <= 100000 bytes, whatever its own size. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_WRITE, 0), 0);
	thr_account(&ts, THR_WRITE, 10000000); /* 10 MB */
	/* 9.9 MB over the bucket at 1 MB/s */
	CHECK_NEAR(thr_wait_ns(&ts, THR_READ, 0), 9.9 * SEC, 10);
	CHECK_NEAR(thr_wait_ns(&ts, THR_READ, 9 * SEC), 0.9 * SEC, 10);

	/* Throughput with 4 KiB reads over 10 s. */
	thr_state_init(&ts, &cfg, 0);
	uint64_t n = greedy(&ts, THR_READ, 4096, 0, 10 * SEC);
	CHECK_NEAR(n * 4096.0, 10.1e6, 2 * 4096);

	/* bps-read only holds reads. */
	thr_config_init(&cfg);
	set(&cfg, "bps-read", 1000000);
	thr_state_init(&ts, &cfg, 0);
	thr_account(&ts, THR_READ, 10000000);
	CHECK(thr_wait_ns(&ts, THR_READ, 0) > 0);
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_WRITE, 0), 0);
}

static void test_iops_size(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);
	set(&cfg, "iops-size", 4096);
	thr_state_init(&ts, &cfg, 0);

	thr_account(&ts, THR_READ, 16384); /* 4 I/Os */
	CHECK_NEAR(ts.level[THR_OPS_TOTAL], 4.0, 1e-9);
	CHECK_NEAR(ts.level[THR_OPS_READ], 0, 1e-9); /* no limit there: not counted */
	thr_account(&ts, THR_WRITE, 1024);	     /* smaller: 1 I/O */
	CHECK_NEAR(ts.level[THR_OPS_TOTAL], 5.0, 1e-9);
	thr_account(&ts, THR_WRITE, 4096); /* equal: 1 I/O */
	CHECK_NEAR(ts.level[THR_OPS_TOTAL], 6.0, 1e-9);
	thr_account(&ts, THR_WRITE, 6144); /* fractional: 1.5 */
	CHECK_NEAR(ts.level[THR_OPS_TOTAL], 7.5, 1e-9);

	/* 64 KiB requests at 100 iops of 4 KiB: 100*4096/65536 = 6.25 requests/s. */
	thr_state_init(&ts, &cfg, 0);
	uint64_t n = greedy(&ts, THR_READ, 65536, 0, 16 * SEC);
	CHECK_NEAR(n, 100 + 1, 1.5);

	/* Without iops-size, the same requests go at 100/s. */
	set(&cfg, "iops-size", 0);
	thr_state_init(&ts, &cfg, 0);
	CHECK_NEAR(greedy(&ts, THR_READ, 65536, 0, 16 * SEC), 1600 + 11, 1);
}

static void test_burst(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	/* iops 10/s, burst 100 for 1 s (the default length): the bucket holds 100. */
	thr_config_init(&cfg);
	set(&cfg, "iops-total", 10);
	set(&cfg, "iops-total-max", 100);
	thr_state_init(&ts, &cfg, 0);
	for (int i = 0; i < 101; i++) {
		CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 0), 0);
		thr_account(&ts, THR_READ, 512);
	}
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 0), 100 * MS); /* 1 over at 10/s */
	/* The burst bucket is not used for a length of 1. */
	CHECK(ts.burst_level[THR_OPS_TOTAL] == 0);
	/* Then the average rate: 10 s -> 100 + 101 */
	thr_state_init(&ts, &cfg, 0);
	CHECK_NEAR(greedy(&ts, THR_READ, 512, 0, 10 * SEC), 201, 1);
	/* After a quiet period the burst is back. */
	uint64_t t = 100 * SEC;
	uint64_t n = 0;
	while (thr_wait_ns(&ts, THR_WRITE, t) == 0) {
		thr_account(&ts, THR_WRITE, 512);
		n++;
	}
	CHECK_EQ_U64(n, 101);
}

static void test_burst_length(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	/* iops 10/s, bursts at 100/s for up to 5 s. */
	thr_config_init(&cfg);
	set(&cfg, "iops-total", 10);
	set(&cfg, "iops-total-max", 100);
	set(&cfg, "iops-total-max-length", 5);
	EXPECT_CHECK(&cfg, NULL);
	thr_state_init(&ts, &cfg, 0);

	/* At once: the burst bucket (max/10 = 10) limits, not the 500 of the main bucket. */
	int n = 0;
	while (thr_wait_ns(&ts, THR_READ, 0) == 0) {
		thr_account(&ts, THR_READ, 512);
		n++;
	}
	CHECK_EQ_U64(n, 11);
	/* One over the burst bucket at 100/s: 10 ms */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 0), 10 * MS);

	/* During the burst: about 100/s.  The main bucket (500) fills at 100 - 10 = 90/s, so the
	 * burst lasts about 500/90 = 5.5 s. */
	thr_state_init(&ts, &cfg, 0);
	uint64_t one = greedy(&ts, THR_READ, 512, 0, 1 * SEC);
	CHECK_NEAR(one, 100 + 11, 2);
	uint64_t four = greedy(&ts, THR_READ, 512, 1 * SEC, 5 * SEC);
	CHECK_NEAR(four, 400, 2);
	/* Long after: back to 10/s. */
	greedy(&ts, THR_READ, 512, 5 * SEC, 20 * SEC);
	uint64_t ten = greedy(&ts, THR_READ, 512, 20 * SEC, 30 * SEC);
	CHECK_NEAR(ten, 100, 2);

	/* A total over the whole burst: 500 + 10 s * 10/s = about 600 in the first 10 s. */
	thr_state_init(&ts, &cfg, 0);
	CHECK_NEAR(greedy(&ts, THR_WRITE, 512, 0, 10 * SEC), 500 + 100 + 2, 3);
}

static void test_bps_burst(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	/* bps-write 1 MB/s with 10 MB bursts: a 10 MB burst goes at once, then 1 MB/s. */
	thr_config_init(&cfg);
	set(&cfg, "bps-write", 1000000);
	set(&cfg, "bps-write-max", 10000000);
	thr_state_init(&ts, &cfg, 0);
	uint64_t n = 0;
	while (thr_wait_ns(&ts, THR_WRITE, 0) == 0) {
		thr_account(&ts, THR_WRITE, 100000);
		n++;
	}
	CHECK_EQ_U64(n, 101);
	CHECK_NEAR(thr_wait_ns(&ts, THR_WRITE, 0), 100 * MS, 10);
	/* Reads are not limited. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 0), 0);
}

static void test_max_of_buckets(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	/* The wait is the longest of the buckets concerned. */
	thr_config_init(&cfg);
	set(&cfg, "iops-total", 100);  /* 11 I/Os -> 10 ms */
	set(&cfg, "bps-read", 100000); /* 11 x 1000 B = 11000 B, 1000 over -> 10 ms */
	set(&cfg, "bps-write", 10000); /* 11000 B, 10000 over the 1000 B bucket -> 1 s */
	thr_state_init(&ts, &cfg, 0);
	for (int i = 0; i < 11; i++)
		thr_account(&ts, THR_WRITE, 1000);
	CHECK_NEAR(thr_wait_ns(&ts, THR_WRITE, 0), 1 * SEC, 10);
	CHECK_NEAR(thr_wait_ns(&ts, THR_READ, 0), 10 * MS, 10);
}

static void test_reconfigure(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	thr_config_init(&cfg);
	set(&cfg, "iops-total", 1);
	thr_state_init(&ts, &cfg, 0);
	for (int i = 0; i < 100; i++)
		thr_account(&ts, THR_READ, 512);
	CHECK(thr_wait_ns(&ts, THR_READ, 0) > 90 * SEC);
	/* New limits: empty buckets, time restarts at the given stamp. */
	set(&cfg, "iops-total", 1000);
	thr_state_init(&ts, &cfg, 7 * SEC);
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, 7 * SEC), 0);
	CHECK_EQ_U64(ts.previous_leak, 7 * SEC);
	CHECK_EQ_U64(ts.cfg.b[THR_OPS_TOTAL].avg, 1000);
}

static void test_extremes(void)
{
	struct thr_config cfg;
	struct thr_state ts;

	/* The largest values do not overflow. */
	thr_config_init(&cfg);
	set(&cfg, "bps-total", THR_VALUE_MAX);
	set(&cfg, "bps-total-max", THR_VALUE_MAX);
	set(&cfg, "iops-total", 1);
	EXPECT_CHECK(&cfg, NULL);
	thr_state_init(&ts, &cfg, 0);
	for (int i = 0; i < 10; i++)
		thr_account(&ts, THR_READ, UINT64_MAX / 16);
	uint64_t w = thr_wait_ns(&ts, THR_READ, 0);
	CHECK(w > 0 && w <= (uint64_t)INT64_MAX);
	/* Leaking over a huge delta. */
	CHECK_EQ_U64(thr_wait_ns(&ts, THR_READ, UINT64_MAX / 2), 0);
}

int main(void)
{
	test_params_table();
	test_validation();
	test_disabled();
	test_iops_basic();
	test_iops_rate();
	test_read_write_separate();
	test_bps();
	test_iops_size();
	test_burst();
	test_burst_length();
	test_bps_burst();
	test_max_of_buckets();
	test_reconfigure();
	test_extremes();

	if (failures) {
		fprintf(stderr, "test-throttle-math: %d of %d checks failed\n", failures, checks);
		return 1;
	}
	printf("test-throttle-math: %d checks passed\n", checks);
	return 0;
}
