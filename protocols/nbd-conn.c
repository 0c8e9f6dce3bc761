/*
 * nbd-conn.c - the data path of the "nbd" protocol driver: one libnbd connection per node, owned
 * by the node's home I/O loop (the first loop that opened a channel on the node) and driven by a
 * bd_poll readiness watch on libnbd's socket.  Requests submitted on other loops are forwarded to
 * the home loop with bd_loop_send and their completions sent back the same way.  Also here:
 * request timeouts, background reconnection (timers on the home loop, never blocking), the
 * reconnect-delay window during which requests wait for a new connection, and the mapping of
 * base:allocation extents to the core's block status.
 * [submit() on any I/O loop; everything else on the node's home loop]
 *
 * libnbd calls our completion callbacks with its handle lock held, so a callback only moves the
 * request to the "done" queue; a deferred pass completes it outside of any libnbd call.
 */
#include "protocols/nbd-int.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define MS 1000000ull
#define TICK_NS (250 * MS)		   /* granularity of timeouts */
#define BACKOFF_MIN_NS (100 * MS)	   /* first retry after a failed attempt */
#define BACKOFF_MAX_NS (1000 * MS)	   /* retries never further apart than this */
#define ATTEMPT_DEFAULT_NS (30000ull * MS) /* handshake bound when timeout=0 */
#define BS_MAX_LEN (1ull << 30)		   /* block status asked per request at most */
#define GRACE_NS (5000ull * MS) /* first connection went stale: wait this long for another */

static void link_lost(struct nbdc_node *nn, struct nbdc_link *l, const char *why, bool timed_out);
static void issue(struct nbdc_node *nn, struct nbdc_req *r);
static void link_check(struct nbdc_node *nn, struct nbdc_link *l, const char *err);

static struct bd_loop *home_loop(struct nbdc_node *nn)
{
	return atomic_load(&nn->home);
}

/* How long requests may wait for a connection now. */
static uint64_t wait_ns(const struct nbdc_node *nn)
{
	if (nn->grace && nn->reconnect_delay_ns < GRACE_NS)
		return GRACE_NS;
	return nn->reconnect_delay_ns;
}

/* ---- queues ---------------------------------------------------------------------------------- */

static void q_push(struct nbdc_req **head, struct nbdc_req **tail, struct nbdc_req *r)
{
	r->next = NULL;
	if (*tail)
		(*tail)->next = r;
	else
		*head = r;
	*tail = r;
}

static struct nbdc_req *q_pop(struct nbdc_req **head, struct nbdc_req **tail)
{
	struct nbdc_req *r = *head;

	if (r) {
		*head = r->next;
		if (!*head)
			*tail = NULL;
		r->next = NULL;
	}
	return r;
}

static void inflight_add(struct nbdc_node *nn, struct nbdc_req *r)
{
	r->next = NULL;
	r->prev = nn->inflight_tail;
	if (nn->inflight_tail)
		nn->inflight_tail->next = r;
	else
		nn->inflight_head = r;
	nn->inflight_tail = r;
}

static void inflight_del(struct nbdc_node *nn, struct nbdc_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		nn->inflight_head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		nn->inflight_tail = r->prev;
	r->prev = r->next = NULL;
}

/* ---- completion ------------------------------------------------------------------------------ */

/* Queue r for completion with status (completed from deferred work, never inside submit). */
static void req_done(struct nbdc_node *nn, struct nbdc_req *r, int status)
{
	r->status = status;
	q_push(&nn->done_head, &nn->done_tail, r);
	bd_loop_defer(home_loop(nn), &nn->done_defer);
}

static void fwd_complete(void *arg)
{
	struct bd_req *req = arg;
	struct nbdc_req *r = req->priv;

	bd_req_complete(req, r->status);
}

static void finish(struct nbdc_node *nn, struct nbdc_req *r, int status)
{
	struct bd_req *req = r->req;
	struct bd_loop *origin = bd_chan_loop(req->chan);

	if (r->bounce) {
		if (status == 0 && req->op == BD_OP_READ)
			bd_iov_from_buf(req->iov, req->iovcnt, 0, r->bounce, req->len);
		free(r->bounce);
		r->bounce = NULL;
	}
	if (status == 0 && req->op == BD_OP_BLOCK_STATUS && req->nr_extents == 0) {
		/* nothing usable in the answer: "data" is always a safe claim */
		req->extents[0].length = req->len;
		req->extents[0].flags = BD_EXT_DATA;
		req->extents[0].depth = 1;
		req->nr_extents = 1;
	}
	r->status = status;
	if (origin == home_loop(nn)) {
		bd_req_complete(req, status);
		return;
	}
	while (bd_loop_send(origin, fwd_complete, req) < 0)
		; /* -ENOMEM: the request must complete on its own loop, try again */
}

/* Was r sent on a connection that is gone? */
static bool sent_on_lost_link(struct nbdc_node *nn, struct nbdc_req *r)
{
	return r->gen && (!nn->link || nn->link->gen != r->gen || nn->link->dead);
}

static void issue_pending(struct nbdc_node *nn)
{
	struct nbdc_req *r;

	while (nn->state == NBDC_READY && (r = q_pop(&nn->pending_head, &nn->pending_tail)))
		issue(nn, r);
}

static void done_run(struct bd_defer *d)
{
	struct nbdc_node *nn = nbdc_container_of(d, struct nbdc_node, done_defer);
	struct nbdc_req *r;

	if (nn->done_head && nn->link && !nn->link->dead)
		link_check(nn, nn->link, NULL); /* a failure may mean the connection is gone */
	while ((r = q_pop(&nn->done_head, &nn->done_tail))) {
		int st = r->status;

		if (st < 0 && sent_on_lost_link(nn, r)) {
			/* The server never answered: resend on the next connection if we may wait
			 * for one (writes are idempotent), else it is an I/O error. */
			if (!r->timed_out && !nn->failing && !nn->closing && wait_ns(nn)) {
				r->gen = 0;
				r->status = 0;
				r->got_extents = false;
				r->req->nr_extents = 0;
				if (nn->state == NBDC_READY)
					issue(nn, r);
				else
					q_push(&nn->pending_head, &nn->pending_tail, r);
				continue;
			}
			st = -EIO;
		}
		finish(nn, r, st);
	}
	issue_pending(nn);
}

/* libnbd's completion callback (handle lock held: no nbd_* calls here). */
static int cmd_done(void *opaque, int *error)
{
	struct nbdc_req *r = opaque;
	struct nbdc_node *nn = bd_node_priv(bd_chan_node(r->req->chan));

	inflight_del(nn, r);
	if (!*error && nn->link && nn->link->gen == r->gen)
		nn->link->answered = true;
	req_done(nn, r, *error ? -*error : 0);
	return 1; /* retire the command */
}

/* libnbd's extent callback: base:allocation descriptors into the core's extents. */
static int extent_cb(void *opaque, const char *context, uint64_t offset, uint32_t *entries,
		     size_t nr_entries, int *error)
{
	struct nbdc_req *r = opaque;
	struct bd_req *req = r->req;
	unsigned max = (req->flags & BD_REQ_BS_ONE) ? 1 : req->max_extents;
	uint64_t left = req->len;
	unsigned n = 0;

	(void)error;
	if (strcmp(context, LIBNBD_CONTEXT_BASE_ALLOCATION) != 0 || r->got_extents ||
	    offset != req->offset)
		return 0;
	r->got_extents = true;
	for (size_t i = 0; i + 1 < nr_entries && left > 0; i += 2) {
		uint64_t len = entries[i];
		uint32_t flags = ((entries[i + 1] & LIBNBD_STATE_HOLE) ? 0 : BD_EXT_DATA) |
				 ((entries[i + 1] & LIBNBD_STATE_ZERO) ? BD_EXT_ZERO : 0);

		if (len == 0)
			break; /* a compliant server never sends one */
		if (len > left)
			len = left;
		if (n > 0 && req->extents[n - 1].flags == flags) {
			req->extents[n - 1].length += len;
		} else {
			if (n == max)
				break;
			req->extents[n].length = len;
			req->extents[n].flags = flags;
			req->extents[n].depth = 1;
			n++;
		}
		left -= len;
	}
	req->nr_extents = n;
	return 0;
}

/* ---- the watch ------------------------------------------------------------------------------- */

static void link_watch_update(struct nbdc_node *nn, struct nbdc_link *l)
{
	unsigned dir, ev = 0;
	int fd;

	if (l->dead)
		return;
	fd = nbd_aio_get_fd(l->h);
	if (fd < 0)
		return;
	dir = nbd_aio_get_direction(l->h);
	if (dir & LIBNBD_AIO_DIRECTION_READ)
		ev |= POLLIN;
	if (dir & LIBNBD_AIO_DIRECTION_WRITE)
		ev |= POLLOUT;
	bd_poll_set(home_loop(nn), &l->watch, fd, ev);
}

static void link_stopped(struct bd_poll *p)
{
	struct nbdc_link *l = nbdc_container_of(p, struct nbdc_link, watch);

	struct nbdc_node *owner = l->owner;

	nbd_close(l->h); /* reports nothing more: every command of ours was retired */
	free(l);
	atomic_fetch_sub(&owner->links_alive, 1);
}

static void tick_arm(struct nbdc_node *nn, uint64_t when)
{
	if (nn->closing)
		return;
	if (nn->timer_armed && nn->tick.deadline_ns <= when)
		return;
	bd_timer_arm(home_loop(nn), &nn->tick, when);
	nn->timer_armed = true;
}

/* Something needs watching over time: timeouts, reconnection, the reconnect-delay window. */
static void tick_need(struct nbdc_node *nn)
{
	uint64_t now = bd_now_ns();

	if (nn->state == NBDC_WAITING)
		tick_arm(nn, nn->next_attempt_ns > now ? nn->next_attempt_ns : now);
	else if (nn->state != NBDC_READY || nn->inflight_head || nn->pending_head)
		tick_arm(nn, now + TICK_NS);
}

static void set_failing(struct nbdc_node *nn)
{
	struct nbdc_req *r;

	nn->failing = true;
	while ((r = q_pop(&nn->pending_head, &nn->pending_tail)))
		req_done(nn, r, -EIO);
}

/* The connection (or attempt) is ready: check it is the same export, then send what waits.
 * false when l was retired instead (it may be freed already). */
static bool link_established(struct nbdc_node *nn, struct nbdc_link *l)
{
	int64_t size = nbd_get_size(l->h);

	if (size < 0 || (uint64_t)size != nn->size) {
		bd_log(BD_LOG_WARN, "nbd '%s': %s now has size %lld, not %llu; not using it",
		       bd_node_name(nn->node), nn->desc, (long long)size,
		       (unsigned long long)nn->size);
		link_lost(nn, l, "size changed", false);
		return false;
	}
	if (nn->need_write && nbd_is_read_only(l->h) != 0) {
		bd_log(BD_LOG_WARN, "nbd '%s': %s is read-only now; not using it",
		       bd_node_name(nn->node), nn->desc);
		link_lost(nn, l, "read-only", false);
		return false;
	}
	if (nn->dead_since_ns)
		bd_log(BD_LOG_INFO, "nbd '%s': reconnected to %s after %llu ms",
		       bd_node_name(nn->node), nn->desc,
		       (unsigned long long)((bd_now_ns() - nn->dead_since_ns) / MS));
	nn->state = NBDC_READY;
	nn->dead_since_ns = 0;
	nn->failing = false;
	nn->grace = false;
	nn->backoff_ns = 0;
	nn->reconnects++;
	issue_pending(nn);
	return nn->link == l && !l->dead;
}

/* After any libnbd call on l: notice death or the end of the handshake, re-arm the watch.  err
 * is libnbd's message of a call that just failed, or NULL. */
static void link_check(struct nbdc_node *nn, struct nbdc_link *l, const char *err)
{
	char why[256];

	if (l->dead)
		return;
	snprintf(why, sizeof(why), "%s",
		 err ? err
		     : (nn->state == NBDC_CONNECTING ? "the connection failed"
						     : "the server closed the connection"));
	if (nbd_aio_is_dead(l->h) || nbd_aio_is_closed(l->h)) {
		link_lost(nn, l, why, false);
		return;
	}
	if (nn->state == NBDC_CONNECTING && nn->link == l) {
		if (nbd_aio_is_ready(l->h)) {
			if (!link_established(nn, l))
				return;
		} else if (!nbd_aio_is_connecting(l->h) && !nbd_aio_is_created(l->h)) {
			link_lost(nn, l, why, false);
			return;
		}
	} else if (!nbd_aio_is_ready(l->h) && !nbd_aio_is_processing(l->h)) {
		link_lost(nn, l, why, false);
		return;
	}
	link_watch_update(nn, l);
}

static void link_ready(struct bd_poll *p, int revents)
{
	struct nbdc_link *l = nbdc_container_of(p, struct nbdc_link, watch);
	struct nbdc_node *nn = l->nn;
	unsigned dir;
	int rc = 0;

	if (!nn || l->dead)
		return;
	dir = nbd_aio_get_direction(l->h);
	if ((revents & (POLLIN | POLLHUP | POLLERR)) && (dir & LIBNBD_AIO_DIRECTION_READ))
		rc = nbd_aio_notify_read(l->h);
	if (rc == 0 && (revents & (POLLOUT | POLLHUP | POLLERR)) &&
	    (nbd_aio_get_direction(l->h) & LIBNBD_AIO_DIRECTION_WRITE))
		rc = nbd_aio_notify_write(l->h);
	link_check(nn, l, rc == -1 ? nbd_get_error() : NULL);
	tick_need(nn);
}

static struct nbdc_link *link_new(struct nbdc_node *nn, struct nbd_handle *h)
{
	struct nbdc_link *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->h = h;
	l->nn = nn;
	l->owner = nn;
	atomic_fetch_add(&nn->links_alive, 1);
	l->gen = ++nn->gen;
	bd_poll_init(&l->watch, link_ready);
	return l;
}

/* Retire l: every request sent on it fails (or waits for the next connection, see done_run). */
static void link_lost(struct nbdc_node *nn, struct nbdc_link *l, const char *why, bool timed_out)
{
	bool was_ready = nn->state == NBDC_READY && nn->link == l;
	uint64_t now = bd_now_ns();
	struct nbdc_req *r, *next;

	if (l->dead)
		return;
	if (was_ready && !l->answered && l->gen == 1) {
		/* The connection made at open went stale before it was used (the server restarted
		 * meanwhile): not a failure the client should see, if a reconnection works. */
		nn->grace = true;
	}
	for (r = nn->inflight_head; r; r = r->next)
		if (r->gen == l->gen && timed_out)
			r->timed_out = true;
	if (!nbd_aio_is_dead(l->h) && !nbd_aio_is_closed(l->h)) {
		/* make libnbd give up on the socket: it then fails every command it holds */
		int fd = nbd_aio_get_fd(l->h);
		if (fd >= 0)
			shutdown(fd, SHUT_RDWR);
		if (nbd_aio_notify_read(l->h) == 0 && !nbd_aio_is_dead(l->h))
			nbd_aio_notify_write(l->h);
	}
	l->dead = true;
	for (r = nn->inflight_head; r; r = next) {
		next = r->next;
		if (r->gen != l->gen)
			continue;
		inflight_del(nn, r);
		req_done(nn, r, -EIO);
	}
	if (nn->link == l)
		nn->link = NULL;
	l->nn = NULL;
	bd_poll_stop(&l->watch, link_stopped); /* may free l at once */
	l = NULL;

	nn->state = NBDC_WAITING;
	if (was_ready) {
		bd_log(BD_LOG_WARN, "nbd '%s': lost the connection to %s: %s; reconnecting",
		       bd_node_name(nn->node), nn->desc, why);
		nn->dead_since_ns = now;
		nn->backoff_ns = 0;
		nn->next_attempt_ns = timed_out ? now + BACKOFF_MIN_NS : now;
	} else {
		bd_log(BD_LOG_DEBUG, "nbd '%s': connecting to %s failed: %s",
		       bd_node_name(nn->node), nn->desc, why);
		nn->backoff_ns = nn->backoff_ns ? nn->backoff_ns * 2 : BACKOFF_MIN_NS;
		if (nn->backoff_ns > BACKOFF_MAX_NS)
			nn->backoff_ns = BACKOFF_MAX_NS;
		nn->next_attempt_ns = now + nn->backoff_ns;
	}
	if (!nn->dead_since_ns)
		nn->dead_since_ns = now;
	if (!wait_ns(nn) && !nn->failing)
		set_failing(nn);
	tick_need(nn);
}

static void attempt_failed(struct nbdc_node *nn)
{
	uint64_t now = bd_now_ns();

	nn->state = NBDC_WAITING;
	nn->backoff_ns = nn->backoff_ns ? nn->backoff_ns * 2 : BACKOFF_MIN_NS;
	if (nn->backoff_ns > BACKOFF_MAX_NS)
		nn->backoff_ns = BACKOFF_MAX_NS;
	nn->next_attempt_ns = now + nn->backoff_ns;
	tick_need(nn);
}

/* A new connection attempt, without blocking: the address was resolved at open. */
static void attempt_start(struct nbdc_node *nn)
{
	struct nbd_handle *h = nbdc_handle_new(nn);
	struct nbdc_link *l;

	if (!h) {
		attempt_failed(nn);
		return;
	}
	if (nbd_aio_connect(h, (const struct sockaddr *)&nn->addr, nn->addrlen) == -1) {
		bd_log(BD_LOG_DEBUG, "nbd '%s': connecting to %s failed: %s",
		       bd_node_name(nn->node), nn->desc, nbd_get_error());
		nbd_close(h);
		attempt_failed(nn);
		return;
	}
	l = link_new(nn, h);
	if (!l) {
		nbd_close(h);
		attempt_failed(nn);
		return;
	}
	nn->link = l;
	nn->state = NBDC_CONNECTING;
	nn->attempt_deadline_ns =
	    bd_now_ns() + (nn->timeout_ns ? nn->timeout_ns : ATTEMPT_DEFAULT_NS);
	link_check(nn, l, NULL);
	tick_need(nn);
}

static void tick_fire(struct bd_timer *t)
{
	struct nbdc_node *nn = nbdc_container_of(t, struct nbdc_node, tick);
	uint64_t now = bd_now_ns();

	nn->timer_armed = false;
	if (nn->closing)
		return;
	if (nn->state == NBDC_READY && nn->timeout_ns && nn->inflight_head &&
	    now - nn->inflight_head->issue_ns >= nn->timeout_ns) {
		bd_log(BD_LOG_WARN,
		       "nbd '%s': no answer from %s for %llu s; dropping the connection",
		       bd_node_name(nn->node), nn->desc,
		       (unsigned long long)(nn->timeout_ns / 1000000000ull));
		link_lost(nn, nn->link, "request timed out", true);
	}
	if (nn->state == NBDC_CONNECTING && now >= nn->attempt_deadline_ns && nn->link)
		link_lost(nn, nn->link, "no answer to the handshake", false);
	if (nn->state == NBDC_WAITING && now >= nn->next_attempt_ns)
		attempt_start(nn);
	if (nn->state != NBDC_READY && nn->dead_since_ns && !nn->failing &&
	    now - nn->dead_since_ns >= wait_ns(nn)) {
		bd_log(BD_LOG_WARN,
		       "nbd '%s': %s is still unreachable after reconnect-delay; "
		       "requests fail until it is back",
		       bd_node_name(nn->node), nn->desc);
		set_failing(nn);
	}
	tick_need(nn);
}

/* ---- issuing requests ------------------------------------------------------------------------ */

static void issue(struct nbdc_node *nn, struct nbdc_req *r)
{
	struct bd_req *req = r->req;
	struct nbdc_link *l = nn->link;
	struct nbd_handle *h = l->h;
	nbd_completion_callback cb = {.callback = cmd_done, .user_data = r};
	uint32_t fl = 0;
	void *buf = NULL;
	int64_t c;

	if (req->op == BD_OP_READ || req->op == BD_OP_WRITE) {
		if (req->iovcnt == 1) {
			buf = req->iov[0].iov_base;
		} else {
			if (!r->bounce) {
				r->bounce = malloc(req->len ? req->len : 1);
				if (!r->bounce) {
					req_done(nn, r, -ENOMEM);
					return;
				}
				if (req->op == BD_OP_WRITE)
					bd_iov_to_buf(req->iov, req->iovcnt, 0, r->bounce,
						      req->len);
			}
			buf = r->bounce;
		}
	}
	if ((req->flags & BD_REQ_FUA) && nbd_can_fua(h) == 1 &&
	    (req->op == BD_OP_WRITE || req->op == BD_OP_WRITE_ZEROES))
		fl |= LIBNBD_CMD_FLAG_FUA;

	r->gen = l->gen;
	r->issue_ns = bd_now_ns();
	inflight_add(nn, r); /* before the call: the callback may run inside it */
	switch (req->op) {
	case BD_OP_READ:
		c = nbd_aio_pread(h, buf, req->len, req->offset, cb, 0);
		break;
	case BD_OP_WRITE:
		c = nbd_aio_pwrite(h, buf, req->len, req->offset, cb, fl);
		break;
	case BD_OP_FLUSH:
		c = nbd_aio_flush(h, cb, 0);
		break;
	case BD_OP_DISCARD:
		c = nbd_aio_trim(h, req->len, req->offset, cb, 0);
		break;
	case BD_OP_WRITE_ZEROES:
		if (!(req->flags & BD_REQ_MAY_UNMAP))
			fl |= LIBNBD_CMD_FLAG_NO_HOLE;
		if (req->flags & BD_REQ_NO_FALLBACK) {
			if (nbd_can_fast_zero(h) != 1) {
				inflight_del(nn, r);
				r->gen = 0;
				req_done(nn, r, -ENOTSUP);
				return;
			}
			fl |= LIBNBD_CMD_FLAG_FAST_ZERO;
		}
		c = nbd_aio_zero(h, req->len, req->offset, cb, fl);
		break;
	case BD_OP_BLOCK_STATUS:
		if (nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) != 1) {
			inflight_del(nn, r);
			r->gen = 0;
			req_done(nn, r, 0); /* finish() answers "data" */
			return;
		}
		if (req->flags & BD_REQ_BS_ONE)
			fl |= LIBNBD_CMD_FLAG_REQ_ONE;
		req->nr_extents = 0;
		c = nbd_aio_block_status(
		    h, req->len > BS_MAX_LEN ? BS_MAX_LEN : req->len, req->offset,
		    (nbd_extent_callback){.callback = extent_cb, .user_data = r}, cb, fl);
		break;
	case BD_OP_CACHE:
		c = nbd_aio_cache(h, req->len, req->offset, cb, 0);
		break;
	default:
		c = -2;
		break;
	}
	if (c == -2 || c == -1) {
		int e = c == -2 ? ENOTSUP : nbd_get_errno();
		bool dead = !nbd_aio_is_ready(h) && !nbd_aio_is_processing(h);

		inflight_del(nn, r);
		if (!dead)
			r->gen = 0; /* refused by libnbd: a plain error */
		req_done(nn, r, -(e ? e : EIO));
		if (dead)
			link_check(nn, l, nbd_get_error());
		return;
	}
	link_check(nn, l, NULL); /* the call may have found the connection dead */
	tick_need(nn);
}

static void home_submit(struct nbdc_node *nn, struct nbdc_req *r)
{
	if (nn->state == NBDC_READY) {
		issue(nn, r);
		return;
	}
	if (nn->failing || nn->closing) {
		req_done(nn, r, -EIO);
		return;
	}
	q_push(&nn->pending_head, &nn->pending_tail, r);
	tick_need(nn);
}

static void fwd_submit(void *arg)
{
	struct bd_req *req = arg;

	home_submit(bd_node_priv(bd_chan_node(req->chan)), req->priv);
}

int nbdc_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct nbdc_node *nn = bd_node_priv(node);
	struct nbdc_req *r = req->priv;
	struct bd_loop *home = home_loop(nn);

	memset(r, 0, sizeof(*r));
	r->req = req;
	if (!home)
		return -EIO; /* chan_open failed to claim a loop: cannot happen */
	if (bd_chan_loop(ch) == home) {
		home_submit(nn, r);
		return 0;
	}
	return bd_loop_send(home, fwd_submit, req);
}

/* ---- channels and life cycle ----------------------------------------------------------------- */

void nbdc_link_adopt(struct nbdc_node *nn, struct nbd_handle *h)
{
	bd_timer_init(&nn->tick, tick_fire);
	nn->done_defer.fn = done_run;
	nn->link = link_new(nn, h);
	if (!nn->link) {
		nbd_close(h);
		nn->state = NBDC_WAITING;
		return;
	}
	nn->state = NBDC_READY;
}

static void nop(void *arg)
{
	(void)arg;
}

void nbdc_links_release(struct nbdc_node *nn)
{
	struct bd_loop *home = home_loop(nn);

	if (!home) {
		if (nn->link) {
			nbd_close(nn->link->h);
			free(nn->link);
			nn->link = NULL;
			atomic_fetch_sub(&nn->links_alive, 1);
		}
		return;
	}
	/* chan_close() stopped the last watch: let the home loop run until the ring has let go of
	 * every watch and link_stopped() has freed the links (a few iterations). */
	for (int i = 0; atomic_load(&nn->links_alive) > 0 && i < 5000; i++) {
		if (home == bd_loop_current()) {
			bd_loop_poll_once();
			continue;
		}
		bd_loop_call(home, nop, NULL);
		if (i > 10)
			nanosleep(&(struct timespec){.tv_nsec = 1000000}, NULL);
	}
	if (atomic_load(&nn->links_alive) > 0)
		bd_log(BD_LOG_ERROR, "nbd '%s': %d connection(s) not released at close",
		       bd_node_name(nn->node), atomic_load(&nn->links_alive));
}

/* Has the peer closed l's socket (EOF or an error waiting)?  Never blocks. */
static bool link_peer_closed(struct nbdc_link *l)
{
	int fd = nbd_aio_get_fd(l->h);
	char c;
	ssize_t n;

	if (fd < 0)
		return true;
	n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
	return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

int nbdc_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct nbdc_node *nn = bd_node_priv(node);
	struct bd_loop *expected = NULL;

	if (atomic_compare_exchange_strong(&nn->home, &expected, bd_chan_loop(ch))) {
		/* this loop owns the connection from now on; the server may have gone away since
		 * open() (nothing watched the socket until now) */
		if (nn->link && link_peer_closed(nn->link))
			link_lost(nn, nn->link,
				  "the server closed the connection before it was used", false);
		else if (nn->link)
			link_check(nn, nn->link, NULL);
		tick_need(nn);
	}
	return 0;
}

void nbdc_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct nbdc_node *nn = bd_node_priv(node);
	struct nbdc_link *l = nn->link;

	if (bd_chan_loop(ch) != home_loop(nn))
		return;
	nn->closing = true;
	bd_timer_cancel(home_loop(nn), &nn->tick);
	nn->timer_armed = false;
	if (l) {
		if (!l->dead && nbd_aio_is_ready(l->h))
			nbd_aio_disconnect(l->h, 0); /* polite NBD_CMD_DISC, best effort */
		l->dead = true;
		l->nn = NULL;
		nn->link = NULL;
		bd_poll_stop(&l->watch, link_stopped);
	}
}
