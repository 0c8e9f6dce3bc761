/*
 * throttle-math.h - the leaky-bucket arithmetic of the throttle filter, with QEMU's semantics
 * (util/throttle.c): six buckets (bps and iops, each total/read/write), each with an average
 * rate, an optional burst rate (-max) and a burst length in seconds (-max-length), plus
 * iops-size.  Pure: no I/O, no clock, no locking; time is a parameter.  [any thread, caller locks]
 *
 * Private to filters/ (throttle-group.c, throttle.c) and the unit test.
 */
#ifndef BLOCKD_THROTTLE_MATH_H
#define BLOCKD_THROTTLE_MATH_H

#include <stdbool.h>
#include <stdint.h>

struct bd_err;

/* QEMU's THROTTLE_VALUE_MAX: the largest rate or burst a bucket accepts. */
#define THR_VALUE_MAX 1000000000000000ULL
/* The largest -max-length (QEMU: UINT_MAX). */
#define THR_BURST_LENGTH_MAX 4294967295ULL

enum thr_bucket {
	THR_BPS_TOTAL,
	THR_BPS_READ,
	THR_BPS_WRITE,
	THR_OPS_TOTAL,
	THR_OPS_READ,
	THR_OPS_WRITE,
	THR__BUCKETS
};

/* Direction of a request: what QEMU calls is_write. */
enum thr_dir { THR_READ, THR_WRITE, THR__DIRS };

struct thr_bucket_cfg {
	uint64_t avg;	       /* units per second; 0 = no limit */
	uint64_t max;	       /* burst rate, units per second; 0 = no burst configured */
	uint64_t burst_length; /* seconds the burst may last, >= 1 (1 by default) */
};

struct thr_config {
	struct thr_bucket_cfg b[THR__BUCKETS];
	uint64_t iops_size; /* 0 = every request is one I/O */
};

struct thr_state {
	struct thr_config cfg;
	double level[THR__BUCKETS];	  /* units in the bucket */
	double burst_level[THR__BUCKETS]; /* units in the burst bucket (burst_length > 1) */
	uint64_t previous_leak;		  /* ns timestamp of the last leak */
};

/* The parameters by their QAPI ThrottleLimits names ("iops-total-max", ...): the x- object
 * properties are the same names with "x-" in front. */
enum thr_param_kind { THR_P_AVG, THR_P_MAX, THR_P_BURST_LENGTH, THR_P_IOPS_SIZE };
struct thr_param {
	const char *name; /* without prefix */
	enum thr_bucket bucket;
	enum thr_param_kind kind;
};
#define THR__PARAMS 19
extern const struct thr_param thr_params[THR__PARAMS];

/* Every rate 0, every burst length 1: throttling disabled. */
void thr_config_init(struct thr_config *cfg);
/* Is any limit set? */
bool thr_config_enabled(const struct thr_config *cfg);
/* Read or write one parameter (by index in thr_params) without validation. */
uint64_t thr_config_get(const struct thr_config *cfg, unsigned param);
void thr_config_set(struct thr_config *cfg, unsigned param, uint64_t value);
/* Validate a whole configuration like QEMU's throttle_is_valid(): 0, or -EINVAL with QEMU's
 * message in err. */
int thr_config_check(const struct thr_config *cfg, struct bd_err *err);

/* Install cfg (copied) and empty the buckets, as of now_ns. */
void thr_state_init(struct thr_state *ts, const struct thr_config *cfg, uint64_t now_ns);
/* Let the buckets leak for the time since the last leak (a clock going back is ignored). */
void thr_leak(struct thr_state *ts, uint64_t now_ns);
/* Leak up to now_ns, then: 0 if a request of direction dir may go now, else the ns to wait.
 * The size of the request does not matter (as in QEMU: a request goes while the bucket is not
 * over full, then its whole size is accounted). */
uint64_t thr_wait_ns(struct thr_state *ts, enum thr_dir dir, uint64_t now_ns);
/* Account a request of bytes that goes now. */
void thr_account(struct thr_state *ts, enum thr_dir dir, uint64_t bytes);
/* The wait of one bucket at its current level (no leak); exposed for tests. */
uint64_t thr_bucket_wait_ns(const struct thr_state *ts, enum thr_bucket b);

#endif /* BLOCKD_THROTTLE_MATH_H */
