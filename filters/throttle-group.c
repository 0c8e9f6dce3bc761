/*
 * throttle-group.c - the "throttle-group" object (--object throttle-group,id=tg,x-iops-total=...
 * or limits.iops-total=...) and the scheduling of requests among the members of a group, with
 * the semantics of QEMU's block/throttle-groups.c.  Objects are created, changed and deleted on
 * the control thread; members run on their I/O loops.
 *
 * Scheduling, per direction (reads and writes are independent, as in QEMU):
 *  - At most one member of the group has its timer logically armed (g->armed[dir]); while one is,
 *    every new request of that direction queues.  This is what makes the group fair: when the
 *    timer fires, its member sends one queued request, then the next member in round-robin order
 *    that has queued requests (g->token[dir] remembers where the round is) gets the timer.
 *  - A member's requests queue in a FIFO on its own loop; the group only knows how many
 *    (m->pending), under the group's mutex.
 *  - A member arms its own timers.  When a decision on one loop arms the timer of a member on
 *    another loop, the deadline is left in that member (m->deadline) and a message asks its
 *    loop to arm it.  A message holds a reference on the member; a closed member ignores it.
 *  - A timer firing checks it is still the armed one (a limit change may have fired it early),
 *    then sends a request without looking at the bucket again (the deadline was computed for it).
 *  - Changing the limits empties the buckets and fires the armed timer at once, so queued
 *    requests are re-examined under the new limits.
 */
#include "filters/throttle.h"

#include "filters/throttle-int.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

struct thr_timer {
	struct bd_timer t;
	struct thr_member *m;
	enum thr_dir dir;
};

struct thr_member {
	struct thr_group *g;
	struct bd_loop *loop;
	thr_release_fn *release;
	void *opaque;
	atomic_int refs;
	atomic_bool closed;

	/* Under g->lock. */
	struct thr_member *rr_next, *rr_prev;
	unsigned pending[THR__DIRS];
	uint64_t deadline[THR__DIRS];

	/* The member's loop only (also touched under g->lock, by that loop). */
	struct bd_req *qhead[THR__DIRS], *qtail[THR__DIRS];
	struct thr_timer timer[THR__DIRS];
};

struct thr_group {
	char *id;
	struct thr_group *next; /* registry, under registry_lock */
	unsigned users;		/* throttle nodes naming the group, under registry_lock */

	pthread_mutex_t lock; /* protects everything below */
	struct thr_state ts;
	struct thr_member *members;
	struct thr_member *token[THR__DIRS]; /* round-robin position */
	struct thr_member *armed[THR__DIRS]; /* whose timer is armed, or NULL */
	unsigned disabled; /* drains in progress: the limits do not apply */
};

/* A timer to arm once the group lock is dropped. */
struct thr_kick {
	struct thr_member *m;
	enum thr_dir dir;
	uint64_t deadline;
};

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct thr_group *registry;

/* ---- registry ---- */

static struct thr_group *find_locked(const char *id)
{
	for (struct thr_group *g = registry; g; g = g->next)
		if (strcmp(g->id, id) == 0)
			return g;
	return NULL;
}

bool bd_throttle_group_exists(const char *group_id)
{
	pthread_mutex_lock(&registry_lock);
	bool found = find_locked(group_id) != NULL;
	pthread_mutex_unlock(&registry_lock);
	return found;
}

struct thr_group *thr_group_use(const char *id, struct bd_err *err)
{
	pthread_mutex_lock(&registry_lock);
	struct thr_group *g = find_locked(id);
	if (g)
		g->users++;
	pthread_mutex_unlock(&registry_lock);
	if (!g)
		bd_err_set(err, -ENOENT, "Throttle group '%s' does not exist", id);
	return g;
}

void thr_group_unuse(struct thr_group *g)
{
	pthread_mutex_lock(&registry_lock);
	g->users--;
	pthread_mutex_unlock(&registry_lock);
}

const char *thr_group_id(const struct thr_group *g)
{
	return g->id;
}

/* ---- members and scheduling ---- */

static void member_unref(struct thr_member *m)
{
	if (atomic_fetch_sub(&m->refs, 1) == 1)
		free(m);
}

static struct thr_member *rr_next(struct thr_group *g, struct thr_member *m)
{
	return m->rr_next ? m->rr_next : g->members;
}

/* The member whose turn it is in direction dir: the next one after the current token that has
 * queued requests, or m itself if none has.  g->lock held. */
static struct thr_member *next_token(struct thr_group *g, struct thr_member *m, enum thr_dir dir)
{
	struct thr_member *start = g->token[dir] ? g->token[dir] : m;
	struct thr_member *t = rr_next(g, start);

	while (t != start && !t->pending[dir])
		t = rr_next(g, t);
	if (t == start && !t->pending[dir])
		t = m;
	return t;
}

/* Must a request of token in direction dir wait?  If it must and no timer is armed yet, arm
 * token's (through *kick).  g->lock held. */
static bool schedule_timer(struct thr_group *g, struct thr_member *token, enum thr_dir dir,
			   uint64_t now, struct thr_kick *kick)
{
	if (g->disabled)
		return false; /* draining: everything goes */
	if (g->armed[dir])
		return true;
	uint64_t wait = thr_wait_ns(&g->ts, dir, now);
	if (!wait)
		return false;
	g->token[dir] = token;
	g->armed[dir] = token;
	token->deadline[dir] = now + wait;
	*kick = (struct thr_kick){token, dir, now + wait};
	return true;
}

/* After m sent a request: give the next member with queued requests its turn.  Returns true if
 * m itself should send its next queued request right now (QEMU prefers the current member when
 * the bucket allows); otherwise a timer may have been set through *kick.  g->lock held. */
static bool schedule_next(struct thr_group *g, struct thr_member *m, enum thr_dir dir, uint64_t now,
			  struct thr_kick *kick)
{
	struct thr_member *token = next_token(g, m, dir);

	if (!token->pending[dir])
		return false;
	if (schedule_timer(g, token, dir, now, kick))
		return false;
	if (m->pending[dir]) {
		g->token[dir] = m;
		return true;
	}
	/* token may go now, but runs on its own loop: fire its timer at once. */
	g->token[dir] = token;
	g->armed[dir] = token;
	token->deadline[dir] = now;
	*kick = (struct thr_kick){token, dir, now};
	return false;
}

static void kick_msg(struct thr_member *m, enum thr_dir dir)
{
	if (!atomic_load(&m->closed)) {
		struct thr_group *g = m->g;
		pthread_mutex_lock(&g->lock);
		bool mine = g->armed[dir] == m;
		uint64_t deadline = m->deadline[dir];
		pthread_mutex_unlock(&g->lock);
		if (mine)
			bd_timer_arm(m->loop, &m->timer[dir].t, deadline);
	}
	member_unref(m);
}

static void kick_read_msg(void *arg)
{
	kick_msg(arg, THR_READ);
}

static void kick_write_msg(void *arg)
{
	kick_msg(arg, THR_WRITE);
}

/* Arm the timer a locked section decided on: directly on our own loop, else by a message. */
static void do_kick(const struct thr_kick *kick)
{
	struct thr_member *m = kick->m;

	if (!m)
		return;
	if (m->loop == bd_loop_current()) {
		bd_timer_arm(m->loop, &m->timer[kick->dir].t, kick->deadline);
		return;
	}
	atomic_fetch_add(&m->refs, 1);
	if (bd_loop_send(m->loop, kick->dir == THR_READ ? kick_read_msg : kick_write_msg, m) < 0) {
		bd_log(BD_LOG_ERROR, "throttle group '%s': cannot wake a queue: out of memory",
		       m->g->id);
		member_unref(m);
	}
}

static void enqueue(struct thr_member *m, enum thr_dir dir, struct bd_req *req)
{
	req->next = NULL;
	if (m->qtail[dir])
		m->qtail[dir]->next = req;
	else
		m->qhead[dir] = req;
	m->qtail[dir] = req;
}

static struct bd_req *dequeue(struct thr_member *m, enum thr_dir dir)
{
	struct bd_req *req = m->qhead[dir];
	if (req) {
		m->qhead[dir] = req->next;
		if (!m->qhead[dir])
			m->qtail[dir] = NULL;
		req->next = NULL;
	}
	return req;
}

/* m's turn in direction dir has come: send its queued requests while the bucket allows, then
 * pass the turn on.  Called with g->lock held; drops it. */
static void release_unlock(struct thr_member *m, enum thr_dir dir)
{
	struct thr_group *g = m->g;
	struct bd_req *head = NULL, **tail = &head;
	struct thr_kick kick = {0};
	uint64_t now = bd_now_ns();
	bool again;

	do {
		struct bd_req *req = dequeue(m, dir);
		if (req) {
			m->pending[dir]--;
			thr_account(&g->ts, dir, req->len);
			*tail = req;
			tail = &req->next;
		}
		again = schedule_next(g, m, dir, now, &kick);
	} while (again);
	pthread_mutex_unlock(&g->lock);

	do_kick(&kick);
	while (head) {
		struct bd_req *req = head;
		head = req->next;
		req->next = NULL;
		m->release(m->opaque, req);
	}
}

static void timer_fire(struct bd_timer *t)
{
	struct thr_timer *tt = container_of(t, struct thr_timer, t);
	struct thr_member *m = tt->m;
	struct thr_group *g = m->g;

	pthread_mutex_lock(&g->lock);
	if (g->armed[tt->dir] != m) {
		/* Stale: a limit change already fired this turn. */
		pthread_mutex_unlock(&g->lock);
		return;
	}
	g->armed[tt->dir] = NULL;
	release_unlock(m, tt->dir);
}

struct thr_member *thr_member_new(struct thr_group *g, struct bd_loop *loop,
				  thr_release_fn *release, void *opaque)
{
	struct thr_member *m = calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->g = g;
	m->loop = loop;
	m->release = release;
	m->opaque = opaque;
	atomic_init(&m->refs, 1);
	atomic_init(&m->closed, false);
	for (int d = 0; d < THR__DIRS; d++) {
		bd_timer_init(&m->timer[d].t, timer_fire);
		m->timer[d].m = m;
		m->timer[d].dir = d;
	}

	pthread_mutex_lock(&g->lock);
	m->rr_next = g->members;
	if (g->members)
		g->members->rr_prev = m;
	g->members = m;
	for (int d = 0; d < THR__DIRS; d++)
		if (!g->token[d])
			g->token[d] = m;
	pthread_mutex_unlock(&g->lock);
	return m;
}

void thr_member_close(struct thr_member *m, thr_release_fn *fail)
{
	struct thr_group *g = m->g;
	struct thr_kick kick[THR__DIRS] = {{0}};
	struct bd_req *left[THR__DIRS];
	uint64_t now = bd_now_ns();

	pthread_mutex_lock(&g->lock);
	for (int d = 0; d < THR__DIRS; d++) {
		left[d] = m->qhead[d];
		m->qhead[d] = m->qtail[d] = NULL;
		m->pending[d] = 0;
		if (g->armed[d] == m) {
			/* Pass the turn on, as QEMU does when a member leaves its context. */
			g->armed[d] = NULL;
			schedule_next(g, m, d, now, &kick[d]);
		}
		if (g->token[d] == m) {
			struct thr_member *t = rr_next(g, m);
			g->token[d] = t == m ? NULL : t;
		}
	}
	if (m->rr_prev)
		m->rr_prev->rr_next = m->rr_next;
	else
		g->members = m->rr_next;
	if (m->rr_next)
		m->rr_next->rr_prev = m->rr_prev;
	pthread_mutex_unlock(&g->lock);

	atomic_store(&m->closed, true);
	for (int d = 0; d < THR__DIRS; d++) {
		bd_timer_cancel(m->loop, &m->timer[d].t);
		do_kick(&kick[d]);
	}
	for (int d = 0; d < THR__DIRS; d++) {
		while (left[d]) {
			struct bd_req *req = left[d];
			left[d] = req->next;
			req->next = NULL;
			fail(m->opaque, req);
		}
	}
	member_unref(m);
}

bool thr_member_submit(struct thr_member *m, struct bd_req *req, enum thr_dir dir)
{
	struct thr_group *g = m->g;
	struct thr_kick kick = {0};
	uint64_t now = bd_now_ns();
	bool go;

	pthread_mutex_lock(&g->lock);
	struct thr_member *token = next_token(g, m, dir);
	bool must_wait = schedule_timer(g, token, dir, now, &kick);
	if (must_wait || m->pending[dir]) {
		m->pending[dir]++;
		enqueue(m, dir, req);
		go = false;
	} else {
		thr_account(&g->ts, dir, req->len);
		schedule_next(g, m, dir, now, &kick);
		go = true;
	}
	pthread_mutex_unlock(&g->lock);
	do_kick(&kick);
	return go;
}

/* ---- properties ---- */

static int param_find(const char *name)
{
	for (int i = 0; i < THR__PARAMS; i++)
		if (strcmp(thr_params[i].name, name) == 0)
			return i;
	return -1;
}

/* An integer option: a JSON integer or a decimal (or 0x) string, as QEMU's keyval accepts. */
static int get_int(json_t *v, const char *what, int64_t *out, struct bd_err *err)
{
	if (json_is_integer(v)) {
		*out = json_integer_value(v);
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;
		errno = 0;
		long long x = strtoll(s, &end, 0);
		if (*s && !*end && errno == 0) {
			*out = x;
			return 0;
		}
		return bd_err_set(err, -EINVAL, "Parameter '%s' expects integer", what);
	}
	return bd_err_set(err, -EINVAL, "Invalid parameter type for '%s', expected: integer", what);
}

/* Apply a ThrottleLimits object over cfg (QEMU's throttle_limits_to_config(), without the final
 * validation).  prefix names the object in messages ("limits."); mark: leave the core's
 * "read" marks (an --object tree), or not (a caller's object). */
static int apply_limits(struct thr_config *cfg, json_t *limits, const char *prefix, bool mark,
			struct bd_err *err)
{
	const char *key;
	json_t *v;

	if (!json_is_object(limits))
		return bd_err_set(err, -EINVAL,
				  "Invalid parameter type for '%.*s', expected: object",
				  (int)strlen(prefix) - 1, prefix);
	json_object_foreach(limits, key, v)
	{
		char what[128];
		int64_t x;

		if (bd_opts_is_mark(key))
			continue;
		snprintf(what, sizeof(what), "%s%s", prefix, key);
		int p = param_find(key);
		if (p < 0)
			return bd_err_set(err, -EINVAL, "Parameter '%s' is unexpected", what);
		if (get_int(v, what, &x, err) < 0)
			return err ? err->code : -EINVAL;
		switch (thr_params[p].kind) {
		case THR_P_BURST_LENGTH:
			if (x < 0 || (uint64_t)x > THR_BURST_LENGTH_MAX)
				return bd_err_set(err, -EINVAL,
						  "%s value must be in the range [0, %llu]", key,
						  (unsigned long long)THR_BURST_LENGTH_MAX);
			break;
		case THR_P_IOPS_SIZE:
			if (x < 0)
				return bd_err_set(err, -EINVAL, "%s value cannot be negative", key);
			break;
		default:
			/* Negative rates wrap to huge values: "must be within [0, ...]" later,
			 * QEMU's message for this case. */
			break;
		}
		thr_config_set(cfg, p, (uint64_t)x);
	}
	/* Marks are keys of the same object: add them after the iteration. */
	for (int i = 0; mark && i < THR__PARAMS; i++)
		if (json_object_get(limits, thr_params[i].name))
			bd_opts_mark_used(limits, thr_params[i].name);
	return 0;
}

static struct thr_group *group_get(const char *id, struct bd_err *err)
{
	pthread_mutex_lock(&registry_lock);
	struct thr_group *g = find_locked(id);
	pthread_mutex_unlock(&registry_lock);
	if (!g)
		bd_err_set(err, -ENOENT, "Throttle group '%s' does not exist", id);
	return g;
}

int bd_throttle_group_set_limits(const char *group_id, json_t *limits, struct bd_err *err)
{
	struct thr_group *g = group_get(group_id, err);
	struct thr_config cfg;
	struct thr_kick kick[THR__DIRS] = {{0}};
	int r;

	if (!g)
		return -ENOENT;
	/* Groups change only on the control thread: the config read here stays current. */
	pthread_mutex_lock(&g->lock);
	cfg = g->ts.cfg;
	pthread_mutex_unlock(&g->lock);

	r = apply_limits(&cfg, limits, "limits.", false, err);
	if (r < 0)
		return r;
	r = thr_config_check(&cfg, err);
	if (r < 0)
		return r;

	uint64_t now = bd_now_ns();
	pthread_mutex_lock(&g->lock);
	thr_state_init(&g->ts, &cfg, now);
	for (int d = 0; d < THR__DIRS; d++) {
		struct thr_member *m = g->armed[d];
		if (m) {
			m->deadline[d] = now;
			kick[d] = (struct thr_kick){m, d, now};
		}
	}
	pthread_mutex_unlock(&g->lock);
	for (int d = 0; d < THR__DIRS; d++)
		do_kick(&kick[d]);
	return 0;
}

void thr_group_drain(struct thr_group *g, bool begin)
{
	struct thr_kick kick[THR__DIRS] = {{0}};
	uint64_t now = bd_now_ns();

	pthread_mutex_lock(&g->lock);
	if (begin) {
		g->disabled++;
		/* fire the armed turn now: release_unlock() then sends every queued request,
		 * and passes the turn on round-robin to the other members at once */
		for (int d = 0; d < THR__DIRS; d++) {
			struct thr_member *m = g->armed[d];
			if (m) {
				m->deadline[d] = now;
				kick[d] = (struct thr_kick){m, d, now};
			}
		}
	} else if (g->disabled) {
		g->disabled--;
	}
	pthread_mutex_unlock(&g->lock);
	for (int d = 0; d < THR__DIRS; d++)
		do_kick(&kick[d]);
}

json_t *bd_throttle_group_get_limits(const char *group_id, struct bd_err *err)
{
	struct thr_group *g = group_get(group_id, err);
	struct thr_config cfg;

	if (!g)
		return NULL;
	pthread_mutex_lock(&g->lock);
	cfg = g->ts.cfg;
	pthread_mutex_unlock(&g->lock);

	json_t *o = json_object();
	if (!o) {
		bd_err_set(err, -ENOMEM, "Out of memory");
		return NULL;
	}
	for (int i = 0; i < THR__PARAMS; i++)
		json_object_set_new(o, thr_params[i].name,
				    json_integer((json_int_t)thr_config_get(&cfg, i)));
	return o;
}

int bd_throttle_group_get_prop(const char *group_id, const char *prop, int64_t *value,
			       struct bd_err *err)
{
	struct thr_group *g = group_get(group_id, err);
	int p = strncmp(prop, "x-", 2) == 0 ? param_find(prop + 2) : -1;

	if (!g)
		return -ENOENT;
	if (p < 0)
		return bd_err_set(err, -EINVAL, "Property '%s' not found", prop);
	pthread_mutex_lock(&g->lock);
	*value = (int64_t)thr_config_get(&g->ts.cfg, p);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

/* ---- the object type ---- */

static int tg_add(const char *id, json_t *props, struct bd_err *err)
{
	struct thr_config cfg;
	json_t *limits = NULL;
	const char *key;
	json_t *v;
	int r;

	thr_config_init(&cfg);

	/* The x- properties first (QEMU sets them one by one, validating only at the end). */
	json_object_foreach(props, key, v)
	{
		int64_t x;
		int p = -1;

		if (bd_opts_is_mark(key) || strcmp(key, "limits") == 0)
			continue;
		if (strncmp(key, "x-", 2) == 0)
			p = param_find(key + 2);
		if (p < 0)
			return bd_err_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
		r = get_int(v, key, &x, err);
		if (r < 0)
			return r;
		if (x < 0)
			return bd_err_set(err, -EINVAL, "Property values cannot be negative");
		if (thr_params[p].kind == THR_P_BURST_LENGTH && (uint64_t)x > THR_BURST_LENGTH_MAX)
			return bd_err_set(err, -EINVAL, "%s value must be in the range [0, %llu]",
					  key, (unsigned long long)THR_BURST_LENGTH_MAX);
		thr_config_set(&cfg, p, (uint64_t)x);
	}
	for (int i = 0; i < THR__PARAMS; i++) {
		char key_x[64];
		snprintf(key_x, sizeof(key_x), "x-%s", thr_params[i].name);
		if (json_object_get(props, key_x))
			bd_opts_mark_used(props, key_x);
	}

	r = bd_opts_obj(props, "limits", &limits, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (limits) {
		r = apply_limits(&cfg, limits, "limits.", true, err);
		if (r < 0)
			return r;
	}

	r = thr_config_check(&cfg, err);
	if (r < 0)
		return r;

	struct thr_group *g = calloc(1, sizeof(*g));
	if (!g || !(g->id = strdup(id))) {
		free(g);
		return bd_err_set(err, -ENOMEM, "Out of memory");
	}
	pthread_mutex_init(&g->lock, NULL);
	thr_state_init(&g->ts, &cfg, bd_now_ns());

	pthread_mutex_lock(&registry_lock);
	if (find_locked(id)) {
		pthread_mutex_unlock(&registry_lock);
		pthread_mutex_destroy(&g->lock);
		free(g->id);
		free(g);
		return bd_err_set(err, -EEXIST, "A group with this name already exists");
	}
	g->next = registry;
	registry = g;
	pthread_mutex_unlock(&registry_lock);
	return 0;
}

static int tg_del(const char *id, struct bd_err *err)
{
	struct thr_group **pp, *g;

	pthread_mutex_lock(&registry_lock);
	for (pp = &registry; (g = *pp); pp = &g->next)
		if (strcmp(g->id, id) == 0)
			break;
	if (!g) {
		pthread_mutex_unlock(&registry_lock);
		return bd_err_set(err, -ENOENT, "Throttle group '%s' does not exist", id);
	}
	if (g->users) {
		pthread_mutex_unlock(&registry_lock);
		return bd_err_set(err, -EBUSY, "object '%s' is in use, can not be deleted", id);
	}
	*pp = g->next;
	pthread_mutex_unlock(&registry_lock);

	pthread_mutex_destroy(&g->lock);
	free(g->id);
	free(g);
	return 0;
}

#define TG_OPT(n, h)                                                                               \
	{                                                                                          \
		"x-" n, BD_OPT_INT, false, NULL, h                                                 \
	}
static const struct bd_opt_desc tg_options[] = {
    TG_OPT("iops-total", "total I/O operations per second"),
    TG_OPT("iops-total-max", "total I/O operations per second during bursts"),
    TG_OPT("iops-total-max-length", "seconds a total iops burst may last (default 1)"),
    TG_OPT("iops-read", "read operations per second"),
    TG_OPT("iops-read-max", "read operations per second during bursts"),
    TG_OPT("iops-read-max-length", "seconds a read iops burst may last (default 1)"),
    TG_OPT("iops-write", "write operations per second"),
    TG_OPT("iops-write-max", "write operations per second during bursts"),
    TG_OPT("iops-write-max-length", "seconds a write iops burst may last (default 1)"),
    TG_OPT("bps-total", "total bytes per second"),
    TG_OPT("bps-total-max", "total bytes per second during bursts"),
    TG_OPT("bps-total-max-length", "seconds a total bps burst may last (default 1)"),
    TG_OPT("bps-read", "bytes read per second"),
    TG_OPT("bps-read-max", "bytes read per second during bursts"),
    TG_OPT("bps-read-max-length", "seconds a read bps burst may last (default 1)"),
    TG_OPT("bps-write", "bytes written per second"),
    TG_OPT("bps-write-max", "bytes written per second during bursts"),
    TG_OPT("bps-write-max-length", "seconds a write bps burst may last (default 1)"),
    TG_OPT("iops-size", "an I/O of n bytes counts as n/iops-size operations if larger"),
    {"limits", BD_OPT_OBJ, false, NULL,
     "ThrottleLimits: the same keys without x- (limits.iops-total=...)"},
    {0},
};

const struct bd_object_type bd_objtype_throttle_group = {
    .name = "throttle-group",
    .options = tg_options,
    .add = tg_add,
    .del = tg_del,
};
