/*
 * iscsi.c - the "iscsi" protocol driver: a LUN of an iSCSI target through libiscsi (no kernel
 * initiator).  QEMU's BlockdevOptionsIscsi plus an iscsi:// URL in "filename".
 *
 * Threads.  open() and close() run on the control thread: open() connects and logs in
 * synchronously (bounded by "timeout"), probes the LUN and keeps the session.  The session then
 * lives on one I/O loop, its *home*: the first loop that opens a channel of the node claims it
 * and from then on only that loop touches the libiscsi context (readiness watch through
 * bd_poll, a 250 ms tick timer for libiscsi's reconnect back-off and our request deadlines).
 * Requests submitted on other loops are forwarded to the home loop with bd_loop_send and their
 * completion is sent back the same way.  One TCP session per node keeps the target's view
 * simple (one I_T nexus, in-order CmdSN) at the price of a message hop for the other loops.
 *
 * Faults.  libiscsi's auto-reconnect is on while serving I/O: a dropped connection is
 * re-established from the home loop (non-blocking connect and login, with libiscsi's back-off)
 * and the commands that were in flight are reissued on the new session.  Every request has a
 * deadline of "timeout" seconds from submission; the tick cancels any command past it and the
 * request fails with -EIO.  Success is only ever reported for a GOOD status from the target.
 */
#include "protocols/iscsi-util.h"
#include "qmp-like/qmp.h"

#include <poll.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))
#define TICK_NS 250000000ull
#define MAX_REISSUE 8

struct isc_req;

struct isc_node {
	struct bd_node *node;
	struct bd_iscsi_target t;
	struct bd_iscsi_lun_info info;
	struct iscsi_context *ctx;
	_Atomic(struct bd_loop *) home;
	atomic_bool watch_stopped;
	/* home loop only */
	struct bd_poll poll;
	struct bd_timer tick;
	ino_t watched_ino;
	bool down; /* not logged in (for the log) */
	struct isc_req *inflight;
	unsigned char *zero_block;
	bool ws_unmap; /* WRITE SAME(16) with UNMAP allowed */
	uint64_t max_ws_blocks;
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
	bool timed_out;
	bool flush_after; /* write-zeroes with FUA: SYNCHRONIZE CACHE follows */
	bool flushing;	  /* ... and that is the step in flight now */
};

static void issue(struct isc_req *ir);

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

/* ---- the readiness watch ---- */

static void update_events(struct isc_node *n)
{
	int fd = iscsi_get_fd(n->ctx);
	unsigned ev = fd >= 0 ? (unsigned)iscsi_which_events(n->ctx) : 0;
	struct stat st;
	bool logged_in = iscsi_is_logged_in(n->ctx);

	if (logged_in == n->down) {
		n->down = !logged_in;
		bd_log(n->down ? BD_LOG_WARN : BD_LOG_INFO, "iscsi '%s': %s %s at %s",
		       bd_node_name(n->node), n->down ? "session lost to" : "session back with",
		       n->t.target, n->t.portal);
	}
	if (fd < 0)
		return;
	/* libiscsi keeps the fd number across a reconnect (dup2 of the new socket onto it): a
	 * poll armed on the old socket would never fire, so re-arm when the socket changed */
	if (fstat(fd, &st) == 0 && st.st_ino != n->watched_ino) {
		n->watched_ino = st.st_ino;
		bd_poll_set(bd_loop_current(), &n->poll, -1, 0);
	}
	bd_poll_set(bd_loop_current(), &n->poll, fd, ev);
}

static void poll_ready(struct bd_poll *p, int revents)
{
	struct isc_node *n = container_of(p, struct isc_node, poll);
	if (iscsi_service(n->ctx, revents) < 0)
		bd_log(BD_LOG_DEBUG, "iscsi '%s': %s", bd_node_name(n->node),
		       iscsi_get_error(n->ctx));
	update_events(n);
}

static void tick_fire(struct bd_timer *t)
{
	struct isc_node *n = container_of(t, struct isc_node, tick);
	uint64_t now = bd_now_ns();

	/* libiscsi's own timeouts and reconnect back-off are driven by service(0) */
	iscsi_service(n->ctx, 0);
	/* requests past their deadline: cancel (the callback completes them with -EIO) */
	for (struct isc_req *ir = n->inflight, *next; ir; ir = next) {
		next = ir->next;
		if (now < ir->deadline_ns)
			continue;
		ir->timed_out = true;
		if (iscsi_scsi_cancel_task(n->ctx, ir->task) < 0) {
			/* libiscsi no longer knows the task: fail it ourselves */
			list_del(ir);
			scsi_free_scsi_task(ir->task);
			ir->task = NULL;
			finish(ir, -EIO);
		}
	}
	update_events(n);
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
	if (ir->timed_out) {
		r = -EIO;
	} else if (status == SCSI_STATUS_CANCELLED || status == SCSI_STATUS_ERROR) {
		r = -EIO;
	} else {
		r = bd_iscsi_status_errno(status, task);
		if (r == 0 && ir->req->op == BD_OP_READ &&
		    task->residual_status == SCSI_RESIDUAL_UNDERFLOW && task->residual)
			r = -EIO; /* a short read never leaves the driver */
		if (r < 0 && r != -EAGAIN && r != -ENOTSUP) {
			char s[128];
			bd_iscsi_status_str(status, task, s, sizeof(s));
			bd_log(BD_LOG_DEBUG, "iscsi '%s': op %d at %llu: %s", bd_node_name(n->node),
			       ir->req->op, (unsigned long long)ir->req->offset, s);
		}
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

	switch (ir->flushing ? BD_OP_FLUSH : req->op) {
	case BD_OP_READ:
		t = iscsi_read16_iov_task(n->ctx, lun, lba, (uint32_t)req->len, (int)bs, 0, 0, 0, 0,
					  0, task_cb, ir, (struct scsi_iovec *)req->iov,
					  req->iovcnt);
		break;
	case BD_OP_WRITE:
		t = iscsi_write16_iov_task(n->ctx, lun, lba, NULL, (uint32_t)req->len, (int)bs, 0,
					   0, fua, 0, 0, task_cb, ir, (struct scsi_iovec *)req->iov,
					   req->iovcnt);
		break;
	case BD_OP_FLUSH:
		t = iscsi_synchronizecache16_task(n->ctx, lun, 0, 0, 0, 0, task_cb, ir);
		break;
	case BD_OP_DISCARD:
		ir->ul.lba = lba;
		ir->ul.num = (uint32_t)nb;
		t = iscsi_unmap_task(n->ctx, lun, 0, 0, &ir->ul, 1, task_cb, ir);
		break;
	case BD_OP_WRITE_ZEROES:
		/* WRITE SAME has no FUA bit: SYNCHRONIZE CACHE follows (task_cb) */
		ir->flush_after = fua;
		t = iscsi_writesame16_task(n->ctx, lun, lba, n->zero_block, bs, (uint32_t)nb, 0,
					   (req->flags & BD_REQ_MAY_UNMAP) && n->ws_unmap, 0, 0,
					   task_cb, ir);
		break;
	default:
		finish(ir, -ENOTSUP);
		return;
	}
	if (!t) {
		bd_log(BD_LOG_WARN, "iscsi '%s': cannot queue a command: %s", bd_node_name(n->node),
		       iscsi_get_error(n->ctx));
		finish(ir, -EIO);
		return;
	}
	ir->task = t;
	list_add(ir);
	update_events(n);
}

static void issue_msg(void *arg)
{
	issue(arg);
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
	ir->deadline_ns = bd_now_ns() + (uint64_t)n->t.timeout * 1000000000ull;
	if (!home)
		return -EIO; /* chan_open failed to set up a home */
	if (home != ir->origin)
		return bd_loop_send(home, issue_msg, ir);
	ir->in_submit = true;
	issue(ir);
	ir->in_submit = false;
	return 0;
}

static int isc_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct isc_node *n = bd_node_priv(node);
	struct bd_loop *expected = NULL;
	if (!atomic_compare_exchange_strong(&n->home, &expected, bd_chan_loop(ch)))
		return 0; /* another loop is home */
	/* from now on this loop owns the context */
	iscsi_set_noautoreconnect(n->ctx, 0);
	bd_poll_init(&n->poll, poll_ready);
	bd_timer_init(&n->tick, tick_fire);
	n->watched_ino = 0;
	update_events(n);
	bd_timer_arm(bd_chan_loop(ch), &n->tick, bd_now_ns() + TICK_NS);
	return 0;
}

static void watch_stopped(struct bd_poll *p)
{
	struct isc_node *n = container_of(p, struct isc_node, poll);
	atomic_store(&n->watch_stopped, true);
}

static void isc_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct isc_node *n = bd_node_priv(node);
	if (atomic_load(&n->home) != bd_chan_loop(ch))
		return;
	bd_timer_cancel(bd_chan_loop(ch), &n->tick);
	bd_poll_stop(&n->poll, watch_stopped);
}

static void noop(void *arg)
{
	(void)arg;
}

static void isc_close(struct bd_node *node)
{
	struct isc_node *n = bd_node_priv(node);
	struct bd_loop *home = atomic_load(&n->home);
	/* the home channel is closed: wait until the ring no longer refers to the watch */
	for (int i = 0; home && !atomic_load(&n->watch_stopped) && i < 10000; i++) {
		bd_loop_call(home, noop, NULL);
		if (!atomic_load(&n->watch_stopped))
			usleep(1000);
	}
	if (n->ctx) {
		iscsi_set_noautoreconnect(n->ctx, 1);
		bd_iscsi_close(n->ctx, n->t.timeout);
	}
	n->ctx = NULL;
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

static int isc_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct isc_node *n = bd_node_priv(node);
	int r;

	memset(n, 0, sizeof(*n));
	n->node = node;
	if ((r = read_options(n, opts, err)) < 0)
		goto fail;
	n->ctx = bd_iscsi_connect(&n->t, err);
	if (!n->ctx) {
		r = err->code;
		goto fail;
	}
	if ((r = bd_iscsi_probe_lun(n->ctx, n->t.lun, n->t.timeout, &n->info, err)) < 0)
		goto fail;
	if (n->info.device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS) {
		r = bd_err_set(err, -ENOTBLK,
			       "LUN %d of %s is not a disk (SCSI peripheral device type 0x%02x)",
			       n->t.lun, n->t.target, n->info.device_type);
		goto fail;
	}
	n->zero_block = calloc(1, n->info.block_size);
	if (!n->zero_block) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}

	const struct bd_iscsi_lun_info *in = &n->info;
	uint64_t bs = in->block_size;
	memset(limits, 0, sizeof(*limits));
	limits->size = in->size;
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
	/* one UNMAP descriptor / one WRITE SAME per request */
	uint64_t md = 1ull << 30;
	if (in->max_unmap_blocks && in->max_unmap_blocks != 0xffffffffu &&
	    in->max_unmap_blocks * bs < md && in->lbpu)
		md = in->max_unmap_blocks * bs;
	if (in->max_ws_blocks && in->max_ws_blocks * bs < md)
		md = in->max_ws_blocks * bs;
	if (in->unmap_gran_blocks > 1 && in->unmap_gran_blocks * bs <= md)
		md -= md % (in->unmap_gran_blocks * bs);
	limits->max_discard = md;
	return 0;

fail:
	if (n->ctx)
		bd_iscsi_close(n->ctx, 1);
	n->ctx = NULL;
	bd_err_prefix(err, "iscsi '%s'", bd_node_name(node));
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
