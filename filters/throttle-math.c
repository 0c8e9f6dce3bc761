/*
 * throttle-math.c - leaky buckets with QEMU's throttling semantics.  Pure functions on a
 * struct thr_state the caller owns and locks.  [any thread]
 *
 * A bucket of rate avg fills by the size of each request that goes (bytes for bps buckets,
 * I/Os for iops buckets) and leaks avg units per second.  A request may go while the bucket
 * holds no more than its size: avg/10 when no burst is configured (so 100 ms worth of I/O may
 * go at once), else max * burst_length (the burst).  With a burst longer than one second a
 * second bucket, leaking at max units per second and sized max/10, keeps the burst itself at
 * the max rate.  The wait is the time the bucket needs to leak back to its size.
 */
#include "filters/throttle-math.h"

#include "blockd/blockd.h"

#include <string.h>

#define NS_PER_SEC 1000000000.0

const struct thr_param thr_params[THR__PARAMS] = {
    {"iops-total", THR_OPS_TOTAL, THR_P_AVG},
    {"iops-total-max", THR_OPS_TOTAL, THR_P_MAX},
    {"iops-total-max-length", THR_OPS_TOTAL, THR_P_BURST_LENGTH},
    {"iops-read", THR_OPS_READ, THR_P_AVG},
    {"iops-read-max", THR_OPS_READ, THR_P_MAX},
    {"iops-read-max-length", THR_OPS_READ, THR_P_BURST_LENGTH},
    {"iops-write", THR_OPS_WRITE, THR_P_AVG},
    {"iops-write-max", THR_OPS_WRITE, THR_P_MAX},
    {"iops-write-max-length", THR_OPS_WRITE, THR_P_BURST_LENGTH},
    {"bps-total", THR_BPS_TOTAL, THR_P_AVG},
    {"bps-total-max", THR_BPS_TOTAL, THR_P_MAX},
    {"bps-total-max-length", THR_BPS_TOTAL, THR_P_BURST_LENGTH},
    {"bps-read", THR_BPS_READ, THR_P_AVG},
    {"bps-read-max", THR_BPS_READ, THR_P_MAX},
    {"bps-read-max-length", THR_BPS_READ, THR_P_BURST_LENGTH},
    {"bps-write", THR_BPS_WRITE, THR_P_AVG},
    {"bps-write-max", THR_BPS_WRITE, THR_P_MAX},
    {"bps-write-max-length", THR_BPS_WRITE, THR_P_BURST_LENGTH},
    {"iops-size", THR_OPS_TOTAL, THR_P_IOPS_SIZE},
};

void thr_config_init(struct thr_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	for (int i = 0; i < THR__BUCKETS; i++)
		cfg->b[i].burst_length = 1;
}

bool thr_config_enabled(const struct thr_config *cfg)
{
	for (int i = 0; i < THR__BUCKETS; i++)
		if (cfg->b[i].avg > 0)
			return true;
	return false;
}

uint64_t thr_config_get(const struct thr_config *cfg, unsigned param)
{
	const struct thr_param *p = &thr_params[param];

	switch (p->kind) {
	case THR_P_AVG:
		return cfg->b[p->bucket].avg;
	case THR_P_MAX:
		return cfg->b[p->bucket].max;
	case THR_P_BURST_LENGTH:
		return cfg->b[p->bucket].burst_length;
	case THR_P_IOPS_SIZE:
		return cfg->iops_size;
	}
	return 0;
}

void thr_config_set(struct thr_config *cfg, unsigned param, uint64_t value)
{
	const struct thr_param *p = &thr_params[param];

	switch (p->kind) {
	case THR_P_AVG:
		cfg->b[p->bucket].avg = value;
		break;
	case THR_P_MAX:
		cfg->b[p->bucket].max = value;
		break;
	case THR_P_BURST_LENGTH:
		cfg->b[p->bucket].burst_length = value;
		break;
	case THR_P_IOPS_SIZE:
		cfg->iops_size = value;
		break;
	}
}

/* total together with read or write, for the field selected by max. */
static bool conflicting(const struct thr_config *cfg, enum thr_bucket total, bool max)
{
	const struct thr_bucket_cfg *t = &cfg->b[total], *r = &cfg->b[total + 1],
				    *w = &cfg->b[total + 2];

	if (max)
		return t->max && (r->max || w->max);
	return t->avg && (r->avg || w->avg);
}

int thr_config_check(const struct thr_config *cfg, struct bd_err *err)
{
	if (conflicting(cfg, THR_BPS_TOTAL, false) || conflicting(cfg, THR_OPS_TOTAL, false) ||
	    conflicting(cfg, THR_BPS_TOTAL, true) || conflicting(cfg, THR_OPS_TOTAL, true))
		return bd_err_set(err, -EINVAL,
				  "bps/iops/max total values and read/write values cannot be used "
				  "at the same time");

	if (cfg->iops_size && !cfg->b[THR_OPS_TOTAL].avg && !cfg->b[THR_OPS_READ].avg &&
	    !cfg->b[THR_OPS_WRITE].avg)
		return bd_err_set(err, -EINVAL, "iops size requires an iops value to be set");

	for (int i = 0; i < THR__BUCKETS; i++) {
		const struct thr_bucket_cfg *b = &cfg->b[i];

		if (b->avg > THR_VALUE_MAX || b->max > THR_VALUE_MAX)
			return bd_err_set(err, -EINVAL,
					  "bps/iops/max values must be within [0, %llu]",
					  (unsigned long long)THR_VALUE_MAX);
		if (!b->burst_length)
			return bd_err_set(err, -EINVAL, "the burst length cannot be 0");
		if (b->burst_length > 1 && !b->max)
			return bd_err_set(err, -EINVAL, "burst length set without burst rate");
		if (b->max && b->burst_length > THR_VALUE_MAX / b->max)
			return bd_err_set(err, -EINVAL,
					  "burst length too high for this burst rate");
		if (b->max && !b->avg)
			return bd_err_set(err, -EINVAL,
					  "bps_max/iops_max require corresponding bps/iops values");
		if (b->max && b->max < b->avg)
			return bd_err_set(err, -EINVAL,
					  "bps_max/iops_max cannot be lower than bps/iops");
	}
	return 0;
}

void thr_state_init(struct thr_state *ts, const struct thr_config *cfg, uint64_t now_ns)
{
	memset(ts, 0, sizeof(*ts));
	ts->cfg = *cfg;
	ts->previous_leak = now_ns;
}

void thr_leak(struct thr_state *ts, uint64_t now_ns)
{
	if (now_ns <= ts->previous_leak) {
		/* QEMU moves previous_leak to now even when time went back; with a monotonic
		 * clock that only happens for equal stamps, where it makes no difference. */
		return;
	}
	double delta = (double)(now_ns - ts->previous_leak);
	ts->previous_leak = now_ns;

	for (int i = 0; i < THR__BUCKETS; i++) {
		const struct thr_bucket_cfg *b = &ts->cfg.b[i];
		double leak = (double)b->avg * delta / NS_PER_SEC;

		ts->level[i] = ts->level[i] > leak ? ts->level[i] - leak : 0;
		if (b->burst_length > 1) {
			leak = (double)b->max * delta / NS_PER_SEC;
			ts->burst_level[i] =
			    ts->burst_level[i] > leak ? ts->burst_level[i] - leak : 0;
		}
	}
}

static uint64_t wait_for(double extra, uint64_t rate)
{
	double ns = extra * NS_PER_SEC / (double)rate;

	/* Truncated like QEMU's conversion to int64_t; clamp absurd values (the rates are
	 * bounded by THR_VALUE_MAX, the levels by what was accounted). */
	if (ns >= 9.2e18)
		return INT64_MAX;
	return (uint64_t)ns;
}

uint64_t thr_bucket_wait_ns(const struct thr_state *ts, enum thr_bucket i)
{
	const struct thr_bucket_cfg *b = &ts->cfg.b[i];
	double bucket_size, burst_bucket_size, extra;

	if (!b->avg)
		return 0;
	if (!b->max) {
		/* No burst configured: still let 100 ms worth of I/O go at once, or every
		 * other request would wait. */
		bucket_size = (double)b->avg / 10;
		burst_bucket_size = 0;
	} else {
		/* A burst: the bucket holds the whole burst; the burst bucket keeps the burst
		 * at the max rate. */
		bucket_size = (double)b->max * (double)b->burst_length;
		burst_bucket_size = (double)b->max / 10;
	}

	extra = ts->level[i] - bucket_size;
	if (extra > 0)
		return wait_for(extra, b->avg);

	if (b->burst_length > 1) {
		extra = ts->burst_level[i] - burst_bucket_size;
		if (extra > 0)
			return wait_for(extra, b->max);
	}
	return 0;
}

uint64_t thr_wait_ns(struct thr_state *ts, enum thr_dir dir, uint64_t now_ns)
{
	static const enum thr_bucket check[THR__DIRS][4] = {
	    [THR_READ] = {THR_BPS_TOTAL, THR_OPS_TOTAL, THR_BPS_READ, THR_OPS_READ},
	    [THR_WRITE] = {THR_BPS_TOTAL, THR_OPS_TOTAL, THR_BPS_WRITE, THR_OPS_WRITE},
	};
	uint64_t max_wait = 0;

	thr_leak(ts, now_ns);
	for (int i = 0; i < 4; i++) {
		uint64_t w = thr_bucket_wait_ns(ts, check[dir][i]);
		if (w > max_wait)
			max_wait = w;
	}
	return max_wait;
}

static void fill(struct thr_state *ts, enum thr_bucket i, double units)
{
	/* A bucket without a limit never makes anyone wait, and any change of the limits
	 * empties all buckets: leave it empty rather than let it grow without end. */
	if (!ts->cfg.b[i].avg)
		return;
	ts->level[i] += units;
	if (ts->cfg.b[i].burst_length > 1)
		ts->burst_level[i] += units;
}

void thr_account(struct thr_state *ts, enum thr_dir dir, uint64_t bytes)
{
	double units = 1.0;

	/* An I/O larger than iops-size counts as bytes / iops-size I/Os (fractional). */
	if (ts->cfg.iops_size && bytes > ts->cfg.iops_size)
		units = (double)bytes / (double)ts->cfg.iops_size;

	fill(ts, THR_BPS_TOTAL, (double)bytes);
	fill(ts, THR_OPS_TOTAL, units);
	if (dir == THR_WRITE) {
		fill(ts, THR_BPS_WRITE, (double)bytes);
		fill(ts, THR_OPS_WRITE, units);
	} else {
		fill(ts, THR_BPS_READ, (double)bytes);
		fill(ts, THR_OPS_READ, units);
	}
}
