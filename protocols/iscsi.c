/*
 * iscsi.c - the "iscsi" protocol driver: a LUN of an iSCSI target through libiscsi (no kernel
 * initiator).  QEMU's BlockdevOptionsIscsi plus an iscsi:// URL in "filename".
 *
 * Threads.  open() and close() run on the control thread: open() connects and logs in
 * synchronously (bounded by "timeout"), probes the LUN and keeps the session.  The session then
 * lives on one I/O loop, its *home*: the first loop that opens a channel of the node claims it
 * and from then on only that loop touches libiscsi (a readiness watch through bd_poll and a
 * 250 ms tick timer).  Requests submitted on other loops are forwarded to the home loop with
 * bd_loop_send and their completion is sent back the same way.  One TCP session per node keeps
 * the target's view simple (one I_T nexus, in-order CmdSN) at the price of a message hop for
 * the other loops.
 *
 * Faults.  libiscsi's own auto-reconnect is off: with Debian's libiscsi 1.19 it re-queues the
 * old session's commands behind new ones and a command cannot be cancelled while a reconnect
 * is pending, so a timed-out write could land after a newer one.  Instead the driver drops a
 * broken session itself (socket error, hang-up, a command past its deadline, a login that does
 * not finish in time): destroying the context cancels every command in it, and each request
 * is then either failed (-EIO, once its deadline of "timeout" seconds from submission has
 * passed) or queued to be issued again on the next session.  A new session is connected
 * asynchronously from the home loop (to the numeric address found at open(), so no DNS lookup
 * runs on the loop), with a back-off of 1, 2, 4 s (at most 4 s) between attempts.  Success is
 * only ever reported for a GOOD status from the target.
 */
#include "protocols/iscsi-util.h"
#include "qmp-like/qmp.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

_Static_assert(sizeof(struct iovec) == sizeof(struct scsi_iovec) &&
		   offsetof(struct iovec, iov_base) == offsetof(struct scsi_iovec, iov_base) &&
		   offsetof(struct iovec, iov_len) == offsetof(struct scsi_iovec, iov_len),
	       "struct iovec and libiscsi's struct scsi_iovec differ");

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define TICK_NS 250000000ull
#define SEC_NS 1000000000ull
#define MAX_REISSUE 8
#define MAX_BACKOFF_NS (4 * SEC_NS)

struct isc_req;
struct isc_node;

/* One iSCSI session (a libiscsi context) and its readiness watch. */
struct isc_sess {
	struct bd_poll poll;
	struct isc_node *n;
	struct iscsi_context *ctx;
	uint64_t started_ns;
	bool logged_in;
	bool broken;
};

struct isc_node {
	struct bd_node *node;
	struct bd_iscsi_target t;
	char connect_portal[BD_ISCSI_STR]; /* numeric address of the portal, for reconnects */
	struct bd_iscsi_lun_info info;
	_Atomic(struct bd_loop *) home;
	atomic_int sess_alive; /* sessions whose watch has not stopped yet */
	bool closing;
	/* home loop only (the control thread before the first channel and after the last) */
	struct isc_sess *s; /* NULL while down */
	struct bd_timer tick;
	uint64_t next_attempt_ns, backoff_ns;
	bool down_logged;
	char why[128];		   /* why the session is being dropped, "" = libiscsi's error */
	struct isc_req *inflight;  /* commands in the session */
	struct isc_req *wait_head; /* requests waiting for a session, FIFO */
	struct isc_req **wait_tail;
	unsigned char *zero_block;
	bool ws_unmap; /* WRITE SAME(16) with UNMAP allowed */
};

struct isc_req {
	struct bd_req *req;
	struct isc_node *n;
	struct bd_loop *origin;
	struct scsi_task *task;
	struct isc_req *prev, *next;
	uint64_t deadline_ns;
	struct unmap_list ul;
	int ret;
	int tries;
	bool in_submit;
	bool expired;
	bool flush_after; /* write-zeroes with FUA: SYNCHRONIZE CACHE follows */
	bool flushing;	  /* ... and that is the step in flight now */
};

static void issue(struct isc_req *ir);
static void sess_check(struct isc_node *n);

/* ---- completion ---- */

static void complete_msg(void *arg)
{
	struct isc_req *ir = arg;
	bd_req_complete(ir->req, ir->ret);
}

static void finish(struct isc_req *ir, int ret)
{
	ir->ret = ret;
	if (ir->origin != bd_loop_current()) {
		if (bd_loop_send(ir->origin, complete_msg, ir) < 0)
			abort(); /* out of memory in the hot path, as bd_req_get() */
	} else if (ir->in_submit) {
		bd_req_complete_later(ir->req, ret);
	} else {
		bd_req_complete(ir->req, ret);
	}
}

static void list_del(struct isc_req *ir)
{
	struct isc_node *n = ir->n;
	if (ir->prev)
		ir->prev->next = ir->next;
	else if (n->inflight == ir)
		n->inflight = ir->next;
	if (ir->next)
		ir->next->prev = ir->prev;
	ir->prev = ir->next = NULL;
}

static void list_add(struct isc_req *ir)
{
	struct isc_node *n = ir->n;
	ir->prev = NULL;
	ir->next = n->inflight;
	if (n->inflight)
		n->inflight->prev = ir;
	n->inflight = ir;
}

static void wait_add(struct isc_req *ir)
{
	struct isc_node *n = ir->n;
	ir->next = NULL;
	*n->wait_tail = ir;
	n->wait_tail = &ir->next;
}

/* ---- sessions ---- */

static void sess_update(struct isc_sess *s)
{
	int fd = iscsi_get_fd(s->ctx);
	unsigned ev = fd >= 0 ? (unsigned)iscsi_which_events(s->ctx) : 0;
	/* POLLRDHUP: a target that closes the connection in an orderly way leaves the socket
	 * readable forever, and libiscsi (auto-reconnect off) does not report it */
	if (fd >= 0)
		bd_poll_set(bd_loop_current(), &s->poll, fd, ev ? ev | POLLRDHUP : 0);
}

static void sess_ready(struct bd_poll *p, int revents)
{
	struct isc_sess *s = container_of(p, struct isc_sess, poll);
	struct isc_node *n = s->n;
	int r = iscsi_service(s->ctx, revents & ~POLLRDHUP);
	if (r < 0 || (revents & (POLLERR | POLLHUP | POLLNVAL | POLLRDHUP))) {
		if (!s->broken && n->s == s && !n->why[0])
			snprintf(n->why, sizeof(n->why), "%s",
				 revents & (POLLHUP | POLLRDHUP)
				     ? "the target closed the connection"
				 : revents & POLLERR ? "socket error"
						     : "the connection failed");
		s->broken = true;
	}
	if (n->s == s && !s->broken)
		sess_update(s);
	sess_check(n);
}

static void sess_stopped(struct bd_poll *p)
{
	struct isc_sess *s = container_of(p, struct isc_sess, poll);
	struct isc_node *n = s->n;
	if (s->ctx)
		iscsi_destroy_context(s->ctx);
	free(s);
	atomic_fetch_sub(&n->sess_alive, 1);
}

/* Drop the current session: every command in it is cancelled (task_cb fails or re-queues). */
static void sess_drop(struct isc_node *n)
{
	struct isc_sess *s = n->s;
	struct iscsi_context *ctx = s->ctx;
	n->s = NULL;
	s->ctx = NULL;
	if (!n->down_logged) {
		n->down_logged = true;
		bd_log(BD_LOG_WARN, "iscsi '%s': session with %s at %s lost: %s; reconnecting",
		       bd_node_name(n->node), n->t.target, n->t.portal,
		       n->why[0] ? n->why : "the connection failed");
	}
	n->why[0] = 0;
	iscsi_destroy_context(ctx); /* runs task_cb with SCSI_STATUS_CANCELLED */
	bd_poll_stop(&s->poll, sess_stopped);
	uint64_t now = bd_now_ns();
	if (n->next_attempt_ns < now)
		n->next_attempt_ns = now + n->backoff_ns;
	n->backoff_ns = n->backoff_ns * 2 > MAX_BACKOFF_NS ? MAX_BACKOFF_NS : n->backoff_ns * 2;
}

static void connect_cb(struct iscsi_context *c, int status, void *data, void *opaque)
{
	struct isc_sess *s = opaque;
	struct isc_node *n = s->n;
	(void)c;
	(void)data;
	if (status != SCSI_STATUS_GOOD || n->s != s) {
		s->broken = true;
		return;
	}
	s->logged_in = true;
	n->backoff_ns = SEC_NS;
	if (n->down_logged) {
		n->down_logged = false;
		bd_log(BD_LOG_INFO, "iscsi '%s': session with %s at %s re-established",
		       bd_node_name(n->node), n->t.target, n->t.portal);
	}
	/* issue what waited, in order */
	struct isc_req *q = n->wait_head;
	n->wait_head = NULL;
	n->wait_tail = &n->wait_head;
	while (q) {
		struct isc_req *next = q->next;
		q->next = NULL;
		issue(q);
		q = next;
	}
}

static struct isc_sess *sess_new(struct isc_node *n, struct iscsi_context *ctx)
{
	struct isc_sess *s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->n = n;
	s->ctx = ctx;
	s->started_ns = bd_now_ns();
	bd_poll_init(&s->poll, sess_ready);
	atomic_fetch_add(&n->sess_alive, 1);
	return s;
}

/* Start connecting a new session (home loop, non-blocking). */
static void sess_connect(struct isc_node *n)
{
	struct bd_iscsi_target *t = &n->t;
	struct iscsi_context *c = iscsi_create_context(t->initiator);
	struct isc_sess *s = c ? sess_new(n, c) : NULL;
	n->next_attempt_ns = bd_now_ns() + n->backoff_ns;
	if (!s) {
		if (c)
			iscsi_destroy_context(c);
		return;
	}
	iscsi_set_noautoreconnect(c, 1);
	if (getenv("BD_ISCSI_DEBUG")) {
		iscsi_set_log_level(c, atoi(getenv("BD_ISCSI_DEBUG")));
		iscsi_set_log_fn(c, iscsi_log_to_stderr);
	}
	iscsi_set_session_type(c, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(c, t->header_digest);
	iscsi_set_targetname(c, t->target);
	if (t->user[0])
		iscsi_set_initiator_username_pwd(c, t->user, t->password);
	n->s = s;
	if (iscsi_full_connect_async(c, n->connect_portal, t->lun, connect_cb, s) < 0) {
		s->broken = true;
		return;
	}
	sess_update(s);
}

/* After libiscsi ran: drop a broken session, start a new one when it is time. */
static void sess_check(struct isc_node *n)
{
	if (n->closing)
		return;
	if (n->s && n->s->broken)
		sess_drop(n);
	if (!n->s && bd_now_ns() >= n->next_attempt_ns)
		sess_connect(n);
}

static void tick_fire(struct bd_timer *t)
{
	struct isc_node *n = container_of(t, struct isc_node, tick);
	uint64_t now = bd_now_ns();
	struct isc_sess *s = n->s;

	if (s) {
		iscsi_service(s->ctx, 0); /* libiscsi's own housekeeping */
		if (!s->logged_in && now - s->started_ns > (uint64_t)n->t.timeout * SEC_NS) {
			snprintf(n->why, sizeof(n->why), "no login within %u s", n->t.timeout);
			s->broken = true;
		}
		/* a command past its deadline: the session is hung; drop it (the command fails,
		 * the others are issued again on the next session) */
		for (struct isc_req *ir = n->inflight; ir; ir = ir->next)
			if (now >= ir->deadline_ns) {
				ir->expired = true;
				if (!s->broken)
					snprintf(n->why, sizeof(n->why),
						 "a command got no answer within %u s",
						 n->t.timeout);
				s->broken = true;
			}
	}
	/* requests that waited for a session too long */
	struct isc_req **pp = &n->wait_head;
	while (*pp) {
		struct isc_req *ir = *pp;
		if (now >= ir->deadline_ns) {
			*pp = ir->next;
			ir->next = NULL;
			finish(ir, -EIO);
		} else {
			pp = &ir->next;
		}
	}
	n->wait_tail = pp;
	sess_check(n);
	if (n->s && !n->s->broken)
		sess_update(n->s);
	bd_timer_arm(bd_loop_current(), &n->tick, bd_now_ns() + TICK_NS);
}

/* ---- commands ---- */

static void task_cb(struct iscsi_context *c, int status, void *command_data, void *opaque)
{
	struct isc_req *ir = opaque;
	struct isc_node *n = ir->n;
	struct scsi_task *task = ir->task;
	int r;
	(void)c;
	(void)command_data;

	list_del(ir);
	ir->task = NULL;
	if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR ||
	    status == SCSI_STATUS_TIMEOUT) {
		/* the session broke (or is being dropped): again on the next one, unless the
		 * request is out of time */
		scsi_free_scsi_task(task);
		if (n->s && !n->s->broken) {
			if (!n->why[0])
				snprintf(n->why, sizeof(n->why), "the connection failed");
			n->s->broken = true;
		}
		if (ir->expired || bd_now_ns() >= ir->deadline_ns || n->closing)
			finish(ir, -EIO);
		else
			wait_add(ir);
		return;
	}
	r = bd_iscsi_status_errno(status, task);
	if (r == 0 && (ir->req->op == BD_OP_READ || ir->req->op == BD_OP_WRITE) && !ir->flushing &&
	    task->residual_status == SCSI_RESIDUAL_UNDERFLOW && task->residual)
		r = -EIO; /* a short transfer never leaves the driver, nor a partial write */
	if (r < 0 && r != -EAGAIN && r != -ENOTSUP) {
		char s[128];
		bd_iscsi_status_str(status, task, s, sizeof(s));
		bd_log(BD_LOG_DEBUG, "iscsi '%s': op %d at %llu: %s", bd_node_name(n->node),
		       ir->req->op, (unsigned long long)ir->req->offset, s);
	}
	scsi_free_scsi_task(task);
	if (r == -EAGAIN && ++ir->tries <= MAX_REISSUE && bd_now_ns() < ir->deadline_ns) {
		issue(ir); /* unit attention after a reconnect, busy: the same command again */
		return;
	}
	if (r == -EAGAIN || r == -ETIMEDOUT)
		r = -EIO;
	if (r == 0 && ir->flush_after && !ir->flushing) {
		ir->flushing = true;
		ir->tries = 0;
		issue(ir);
		return;
	}
	finish(ir, r);
}

static void issue(struct isc_req *ir)
{
	struct isc_node *n = ir->n;
	struct bd_req *req = ir->req;
	uint32_t bs = n->info.block_size;
	uint64_t lba = req->offset / bs;
	uint64_t nb = req->len / bs;
	int lun = n->t.lun;
	int fua = !!(req->flags & BD_REQ_FUA);
	struct scsi_task *t = NULL;

	if (!n->s || !n->s->logged_in || n->s->broken) {
		wait_add(ir);
		return;
	}
	struct iscsi_context *ctx = n->s->ctx;
	switch (ir->flushing ? BD_OP_FLUSH : req->op) {
	case BD_OP_READ:
		t = iscsi_read16_iov_task(ctx, lun, lba, (uint32_t)req->len, (int)bs, 0, 0, 0, 0, 0,
					  task_cb, ir, (struct scsi_iovec *)req->iov, req->iovcnt);
		break;
	case BD_OP_WRITE:
		t = iscsi_write16_iov_task(ctx, lun, lba, NULL, (uint32_t)req->len, (int)bs, 0, 0,
					   fua, 0, 0, task_cb, ir, (struct scsi_iovec *)req->iov,
					   req->iovcnt);
		break;
	case BD_OP_FLUSH:
		t = iscsi_synchronizecache16_task(ctx, lun, 0, 0, 0, 0, task_cb, ir);
		break;
	case BD_OP_DISCARD:
		ir->ul.lba = lba;
		ir->ul.num = (uint32_t)nb;
		t = iscsi_unmap_task(ctx, lun, 0, 0, &ir->ul, 1, task_cb, ir);
		break;
	case BD_OP_WRITE_ZEROES:
		/* WRITE SAME has no FUA bit: SYNCHRONIZE CACHE follows (task_cb) */
		ir->flush_after = fua;
		t = iscsi_writesame16_task(ctx, lun, lba, n->zero_block, bs, (uint32_t)nb, 0,
					   (req->flags & BD_REQ_MAY_UNMAP) && n->ws_unmap, 0, 0,
					   task_cb, ir);
		break;
	default:
		finish(ir, -ENOTSUP);
		return;
	}
	if (!t) {
		/* libiscsi could not queue it: treat the session as broken, retry later */
		n->s->broken = true;
		wait_add(ir);
		return;
	}
	ir->task = t;
	list_add(ir);
	sess_update(n->s);
}

static void issue_msg(void *arg)
{
	struct isc_req *ir = arg;
	issue(ir);
	sess_check(ir->n);
}

static int isc_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct isc_node *n = bd_node_priv(node);
	struct isc_req *ir = req->priv;
	struct bd_loop *home = atomic_load(&n->home);

	memset(ir, 0, sizeof(*ir));
	ir->req = req;
	ir->n = n;
	ir->origin = bd_chan_loop(ch);
	ir->deadline_ns = bd_now_ns() + (uint64_t)n->t.timeout * SEC_NS;
	if (!home)
		return -EIO;
	if (home != ir->origin)
		return bd_loop_send(home, issue_msg, ir);
	ir->in_submit = true;
	issue(ir);
	ir->in_submit = false;
	/* a session found broken while queueing is dropped from the tick, not inside submit */
	return 0;
}

static int isc_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct isc_node *n = bd_node_priv(node);
	struct bd_loop *expected = NULL;
	if (!atomic_compare_exchange_strong(&n->home, &expected, bd_chan_loop(ch)))
		return 0; /* another loop is home */
	/* from now on this loop owns the session */
	bd_timer_init(&n->tick, tick_fire);
	if (n->s)
		sess_update(n->s);
	bd_timer_arm(bd_chan_loop(ch), &n->tick, bd_now_ns() + TICK_NS);
	return 0;
}

static void isc_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct isc_node *n = bd_node_priv(node);
	if (atomic_load(&n->home) != bd_chan_loop(ch))
		return;
	n->closing = true;
	bd_timer_cancel(bd_chan_loop(ch), &n->tick);
	if (n->s) {
		struct isc_sess *s = n->s;
		n->s = NULL;
		/* a logged-in session is logged out from close(); the watch stops first */
		if (s->logged_in && !s->broken) {
			n->s = s;
			bd_poll_stop(&s->poll, NULL);
		} else {
			iscsi_destroy_context(s->ctx);
			s->ctx = NULL;
			bd_poll_stop(&s->poll, sess_stopped);
		}
	}
}

static void noop(void *arg)
{
	(void)arg;
}

static void isc_close(struct bd_node *node)
{
	struct isc_node *n = bd_node_priv(node);
	struct bd_loop *home = atomic_load(&n->home);
	struct isc_sess *s = n->s;
	int keep = s ? 1 : 0;

	/* wait until the ring no longer refers to any of our watches */
	for (int i = 0; home && i < 10000; i++) {
		if (atomic_load(&n->sess_alive) <= keep && (!s || !s->poll.loop))
			break;
		if (home == bd_loop_current()) {
			bd_loop_poll_once(); /* the main loop was home: the cancel completes here */
		} else {
			bd_loop_call(home, noop, NULL);
			if (atomic_load(&n->sess_alive) <= keep && (!s || !s->poll.loop))
				break;
			usleep(1000);
		}
	}
	if (s) {
		bd_iscsi_close(s->ctx, n->t.timeout);
		free(s);
	}
	n->s = NULL;
	free(n->zero_block);
	n->zero_block = NULL;
}

/* ---- options ---- */

static const char *const transports[] = {"tcp", "iser", NULL};
static const char *const digests[] = {"crc32c", "none", "crc32c-none", "none-crc32c", NULL};

static int opt_str(json_t *opts, const char *key, char *out, bool *given, struct bd_err *err)
{
	const char *s;
	int r = bd_opts_str(opts, key, &s, err);
	if (r == -ENOENT) {
		*given = false;
		return 0;
	}
	if (r < 0)
		return r;
	if (strlen(s) >= BD_ISCSI_STR)
		return bd_err_set(err, -EINVAL, "Parameter '%s' is too long", key);
	snprintf(out, BD_ISCSI_STR, "%s", s);
	*given = true;
	return 0;
}

static int read_options(struct isc_node *n, json_t *opts, struct bd_err *err)
{
	struct bd_iscsi_target *t = &n->t;
	const char *filename = NULL, *secret = NULL;
	bool g_portal, g_target, g_user, g_init;
	uint64_t lun = 0, timeout = BD_ISCSI_DEFAULT_TIMEOUT;
	int transport = 0, digest = 3;
	bool lun_given;
	int r;

	if ((r = bd_opts_str(opts, "filename", &filename, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = opt_str(opts, "portal", t->portal, &g_portal, err)) < 0 ||
	    (r = opt_str(opts, "target", t->target, &g_target, err)) < 0 ||
	    (r = opt_str(opts, "user", t->user, &g_user, err)) < 0 ||
	    (r = opt_str(opts, "initiator-name", t->initiator, &g_init, err)) < 0)
		return r;
	r = bd_opts_u64(opts, "lun", &lun, err);
	if (r < 0 && r != -ENOENT)
		return r;
	lun_given = r == 0;
	if ((r = bd_opts_str(opts, "password-secret", &secret, err)) < 0 && r != -ENOENT)
		return r;
	r = bd_opts_enum(opts, "transport", transports, &transport, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_enum(opts, "header-digest", digests, &digest, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_u64(opts, "timeout", &timeout, err);
	if (r < 0 && r != -ENOENT)
		return r;

	if (filename) {
		if (g_portal || g_target || lun_given)
			return bd_err_set(err, -EINVAL,
					  "'filename' cannot be combined with 'portal', 'target' "
					  "or 'lun'");
		char user[BD_ISCSI_STR];
		snprintf(user, sizeof(user), "%s", t->user);
		if ((r = bd_iscsi_parse_url(filename, t, err)) < 0)
			return r;
		if (g_user) {
			if (t->user[0] && strcmp(t->user, user))
				return bd_err_set(err, -EINVAL,
						  "'user' differs from the user in 'filename'");
			snprintf(t->user, sizeof(t->user), "%s", user);
		}
	} else {
		if (!g_portal)
			return bd_err_set(err, -EINVAL, "Parameter 'portal' is missing");
		if (!g_target)
			return bd_err_set(err, -EINVAL, "Parameter 'target' is missing");
		if (lun > 16383)
			return bd_err_set(err, -EINVAL, "Parameter 'lun' must be at most 16383");
		t->lun = (int)lun;
	}
	if (transport != 0)
		return bd_err_set(err, -ENOTSUP, "transport 'iser' is not supported (only tcp)");
	if (timeout == 0 || timeout > 3600)
		return bd_err_set(err, -EINVAL,
				  "Parameter 'timeout' must be between 1 and 3600 seconds");
	t->timeout = (unsigned)timeout;
	static const enum iscsi_header_digest dmap[] = {
	    ISCSI_HEADER_DIGEST_CRC32C, ISCSI_HEADER_DIGEST_NONE, ISCSI_HEADER_DIGEST_CRC32C_NONE,
	    ISCSI_HEADER_DIGEST_NONE_CRC32C};
	t->header_digest = dmap[digest];
	if (!g_init)
		snprintf(t->initiator, sizeof(t->initiator), "%s", BD_ISCSI_DEFAULT_INITIATOR);
	if (secret) {
		char *pw = NULL;
		if ((r = bd_secret_lookup(secret, &pw, err)) < 0)
			return r;
		bool fits = strlen(pw) < BD_ISCSI_STR;
		if (fits)
			snprintf(t->password, sizeof(t->password), "%s", pw);
		free(pw);
		if (!fits)
			return bd_err_set(err, -EINVAL, "the CHAP secret '%s' is too long", secret);
		if (!t->user[0])
			return bd_err_set(err, -EINVAL, "'password-secret' needs 'user'");
	} else if (t->user[0] && !t->password[0]) {
		return bd_err_set(err, -EINVAL,
				  "CHAP user '%s' given without a password ('password-secret')",
				  t->user);
	}
	return 0;
}

/* The portal's numeric address (from the open session), so that reconnecting on the home loop
 * never waits for a DNS lookup. */
static void numeric_portal(struct isc_node *n, struct iscsi_context *ctx)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	char ip[INET6_ADDRSTRLEN];
	snprintf(n->connect_portal, sizeof(n->connect_portal), "%s", n->t.portal);
	if (getpeername(iscsi_get_fd(ctx), (struct sockaddr *)&ss, &len) < 0)
		return;
	if (ss.ss_family == AF_INET) {
		struct sockaddr_in *a = (struct sockaddr_in *)&ss;
		if (inet_ntop(AF_INET, &a->sin_addr, ip, sizeof(ip)))
			snprintf(n->connect_portal, sizeof(n->connect_portal), "%s:%u", ip,
				 ntohs(a->sin_port));
	} else if (ss.ss_family == AF_INET6) {
		struct sockaddr_in6 a6;
		memcpy(&a6, &ss, sizeof(a6));
		if (inet_ntop(AF_INET6, &a6.sin6_addr, ip, sizeof(ip)))
			snprintf(n->connect_portal, sizeof(n->connect_portal), "[%s]:%u", ip,
				 ntohs(a6.sin6_port));
	}
}

static int isc_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct isc_node *n = bd_node_priv(node);
	int r;

	struct iscsi_context *ctx = NULL;

	memset(n, 0, sizeof(*n));
	n->node = node;
	n->wait_tail = &n->wait_head;
	n->backoff_ns = SEC_NS;
	if ((r = read_options(n, opts, err)) < 0)
		goto fail;
	ctx = bd_iscsi_connect(&n->t, err);
	if (!ctx) {
		r = err->code;
		goto fail;
	}
	if ((r = bd_iscsi_probe_lun(ctx, n->t.lun, n->t.timeout, &n->info, err)) < 0)
		goto fail;
	numeric_portal(n, ctx);
	if (n->info.device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
		r = bd_err_set(err, -ENOTBLK,
			       "LUN %d of %s is not a disk (SCSI peripheral device type 0x%02x)",
			       n->t.lun, n->t.target, n->info.device_type);
		goto fail;
	}
	const struct bd_node_common *common = bd_node_common(node);
	bool ro_fallback = false;
	if (n->info.write_protected && !common->read_only) {
		if (!common->auto_read_only) {
			r = bd_err_set(err, -EACCES,
				       "LUN %d of %s is write protected (use read-only=on or "
				       "auto-read-only=on)",
				       n->t.lun, n->t.target);
			goto fail;
		}
		ro_fallback = true;
	}
	n->zero_block = calloc(1, n->info.block_size);
	if (!n->zero_block || !(n->s = sess_new(n, ctx))) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	n->s->logged_in = true;

	const struct bd_iscsi_lun_info *in = &n->info;
	uint64_t bs = in->block_size;
	memset(limits, 0, sizeof(*limits));
	limits->size = in->size;
	limits->read_only = ro_fallback;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_FLUSH) |
		      BD_OP_BIT(BD_OP_WRITE_ZEROES);
	if (in->lbpu)
		limits->ops |= BD_OP_BIT(BD_OP_DISCARD);
	n->ws_unmap = in->lbpws;
	limits->zeroes_unmap = in->lbpws && in->lbprz;
	limits->req_align = (uint32_t)bs;
	limits->buf_align = 1;
	limits->native_fua = true;
	/* libiscsi's data lengths are 32 bit: never above 1 GiB per command */
	uint64_t max = 1ull << 30;
	if (in->max_xfer_blocks && in->max_xfer_blocks * bs < max)
		max = in->max_xfer_blocks * bs;
	limits->max_transfer = max;
	if (in->opt_xfer_blocks && in->opt_xfer_blocks * bs <= max)
		limits->opt_transfer = in->opt_xfer_blocks * bs;
	/* one UNMAP descriptor / one WRITE SAME per request, at most 64 MiB so that a target
	 * writing the zeroes itself answers well within the timeout */
	uint64_t md = 64ull << 20;
	if (in->max_unmap_blocks && in->max_unmap_blocks != 0xffffffffu &&
	    in->max_unmap_blocks * bs < md && in->lbpu)
		md = in->max_unmap_blocks * bs;
	if (in->max_ws_blocks && in->max_ws_blocks < md / bs)
		md = in->max_ws_blocks * bs;
	if (in->unmap_gran_blocks > 1 && in->unmap_gran_blocks * bs <= md)
		md -= md % (in->unmap_gran_blocks * bs);
	limits->max_discard = md;
	return 0;

fail:
	if (ctx)
		bd_iscsi_close(ctx, 1);
	free(n->zero_block);
	n->zero_block = NULL;
	return r < 0 ? r : -EIO;
}

static void isc_describe(struct bd_node *node, json_t *out)
{
	struct isc_node *n = bd_node_priv(node);
	char url[BD_ISCSI_STR * 2 + 32];
	bd_iscsi_format_url(&n->t, url, sizeof(url));
	json_object_set_new(out, "url", json_string(url));
	json_object_set_new(out, "block-size", json_integer(n->info.block_size));
	json_object_set_new(out, "unmap", json_boolean(n->info.lbpu));
	json_object_set_new(out, "write-same-unmap", json_boolean(n->info.lbpws));
	json_object_set_new(out, "write-protected", json_boolean(n->info.write_protected));
	json_object_set_new(out, "vendor", json_string(n->info.vendor));
	json_object_set_new(out, "product", json_string(n->info.product));
}

static const struct bd_opt_desc isc_options[] = {
    {"filename", BD_OPT_STR, false, NULL,
     "iscsi://[user[%password]@]host[:port]/target-iqn/lun (instead of portal/target/lun)"},
    {"transport", BD_OPT_ENUM, false, transports, "tcp (default; iser is not supported)"},
    {"portal", BD_OPT_STR, false, NULL, "host[:port] of the target (port 3260 by default)"},
    {"target", BD_OPT_STR, false, NULL, "target IQN"},
    {"lun", BD_OPT_INT, false, NULL, "LUN number (default 0)"},
    {"user", BD_OPT_STR, false, NULL, "CHAP user name"},
    {"password-secret", BD_OPT_STR, false, NULL, "id of the secret object with the CHAP password"},
    {"initiator-name", BD_OPT_STR, false, NULL,
     "initiator IQN (default " BD_ISCSI_DEFAULT_INITIATOR ")"},
    {"header-digest", BD_OPT_ENUM, false, digests,
     "crc32c, none, crc32c-none, none-crc32c (default: none-crc32c)"},
    {"timeout", BD_OPT_INT, false, NULL,
     "seconds for login and for each request before it fails with EIO (default 30)"},
    {NULL},
};

const struct bd_driver bd_drv_iscsi = {
    .name = "iscsi",
    .kind = BD_DRV_PROTOCOL,
    .help = "a LUN of an iSCSI target (libiscsi)",
    .options = isc_options,
    .node_size = sizeof(struct isc_node),
    .req_size = sizeof(struct isc_req),
    .open = isc_open,
    .close = isc_close,
    .chan_open = isc_chan_open,
    .chan_close = isc_chan_close,
    .submit = isc_submit,
    .describe = isc_describe,
};
