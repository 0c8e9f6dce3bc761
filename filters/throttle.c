/*
 * throttle.c - the "throttle" filter driver (QEMU's block/throttle.c): passes every request to
 * its child "file", holding reads and writes back to the limits of a throttle-group object that
 * several throttle nodes may share.  open/close on the control thread, channels and submit on
 * the I/O loops.
 *
 *   --blockdev driver=throttle,node-name=t,throttle-group=tg,file=n
 *
 * What counts (as in QEMU): reads (and cache/prefetch, which QEMU reads) count as reads; writes,
 * write-zeroes and discards count as writes, each with its length in bytes.  Flush and
 * block-status pass untouched.  Each channel of the node is one member of the group: see
 * throttle-group.c for the scheduling.
 */
#include "filters/throttle.h"

#include "filters/throttle-int.h"

struct thr_node {
	struct bd_child *file;
	struct thr_group *g;
};

struct thr_chan {
	struct bd_node *node;
	struct bd_chan *ch;
	struct thr_member *m;
};

static int thr_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct thr_node *tn = bd_node_priv(node);
	const char *group_id;
	int r;

	r = bd_opts_str(opts, "throttle-group", &group_id, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'throttle-group' is missing");
	if (r < 0)
		return r;
	tn->g = thr_group_use(group_id, err);
	if (!tn->g)
		return -EINVAL;

	tn->file = bd_node_open_child(node, opts, "file", true, err);
	if (!tn->file) {
		thr_group_unuse(tn->g);
		tn->g = NULL;
		return err && err->code ? err->code : -EINVAL;
	}

	/* A filter: the child's limits, and every op the child can take (with the core's
	 * emulation below us), so that write-zeroes are throttled as what they are. */
	struct bd_node *child = bd_child_node(tn->file);
	*limits = *bd_node_limits(child);
	limits->ops = 0;
	for (int op = 0; op < BD_OP__COUNT; op++)
		if (bd_node_can(child, op))
			limits->ops |= BD_OP_BIT(op);
	return 0;
}

static void thr_close(struct bd_node *node)
{
	struct thr_node *tn = bd_node_priv(node);

	if (tn->g)
		thr_group_unuse(tn->g);
	tn->g = NULL;
}

static void child_done(struct bd_req *creq, int ret)
{
	struct bd_req *req = creq->opaque;

	req->nr_extents = creq->nr_extents;
	bd_req_put(creq);
	bd_req_complete(req, ret);
}

/* Send req to the child on the same loop.  0, or -errno (req not taken). */
static int forward(struct thr_chan *tc, struct bd_req *req)
{
	struct thr_node *tn = bd_node_priv(tc->node);
	struct bd_chan *cch = bd_child_chan(tn->file, tc->ch);
	struct bd_req *creq = bd_req_get(cch);

	creq->op = req->op;
	creq->flags = req->flags;
	creq->offset = req->offset;
	creq->len = req->len;
	creq->iov = req->iov;
	creq->iovcnt = req->iovcnt;
	creq->extents = req->extents;
	creq->max_extents = req->max_extents;
	creq->cb = child_done;
	creq->opaque = req;
	int r = bd_submit(cch, creq);
	if (r < 0)
		bd_req_put(creq);
	return r;
}

/* The group lets a queued request go (a timer or message on this loop, not inside submit). */
static void release(void *opaque, struct bd_req *req)
{
	int r = forward(opaque, req);
	if (r < 0)
		bd_req_complete(req, r);
}

static void fail(void *opaque, struct bd_req *req)
{
	bd_req_complete(req, -ECANCELED);
}

static int thr_chan_open(struct bd_node *node, struct bd_chan *ch)
{
	struct thr_node *tn = bd_node_priv(node);
	struct thr_chan *tc = bd_chan_priv(ch);

	tc->node = node;
	tc->ch = ch;
	tc->m = thr_member_new(tn->g, bd_chan_loop(ch), release, tc);
	return tc->m ? 0 : -ENOMEM;
}

static void thr_chan_close(struct bd_node *node, struct bd_chan *ch)
{
	struct thr_chan *tc = bd_chan_priv(ch);

	if (tc->m)
		thr_member_close(tc->m, fail);
	tc->m = NULL;
}

static int thr_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct thr_chan *tc = bd_chan_priv(ch);
	enum thr_dir dir;

	if (!tc->m)
		return -ENOMEM; /* chan_open failed */
	switch (req->op) {
	case BD_OP_READ:
	case BD_OP_CACHE:
		dir = THR_READ;
		break;
	case BD_OP_WRITE:
	case BD_OP_WRITE_ZEROES:
	case BD_OP_DISCARD:
		dir = THR_WRITE;
		break;
	default:
		return forward(tc, req);
	}
	if (!thr_member_submit(tc->m, req, dir))
		return 0; /* queued: release() sends it later */
	return forward(tc, req);
}

static int thr_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct thr_node *tn = bd_node_priv(node);

	return bd_node_resize(bd_child_node(tn->file), new_size, err);
}

static void thr_describe(struct bd_node *node, json_t *out)
{
	struct thr_node *tn = bd_node_priv(node);

	if (tn->g)
		json_object_set_new(out, "throttle-group", json_string(thr_group_id(tn->g)));
}

static const struct bd_opt_desc thr_options[] = {
    {"throttle-group", BD_OPT_STR, true, NULL, "id of the throttle-group object to obey"},
    {"file", BD_OPT_CHILD, true, NULL, "the node to throttle"},
    {0},
};

static void thr_drain_begin(struct bd_node *node)
{
	struct thr_node *tn = bd_node_priv(node);
	thr_group_drain(tn->g, true);
}

static void thr_drain_end(struct bd_node *node)
{
	struct thr_node *tn = bd_node_priv(node);
	thr_group_drain(tn->g, false);
}

const struct bd_driver bd_drv_throttle = {
    .name = "throttle",
    .kind = BD_DRV_FILTER,
    .help = "Throttle I/O to the limits of a throttle-group (shared by several nodes)",
    .options = thr_options,
    .node_size = sizeof(struct thr_node),
    .chan_size = sizeof(struct thr_chan),
    .req_size = 0,
    .open = thr_open,
    .close = thr_close,
    .chan_open = thr_chan_open,
    .chan_close = thr_chan_close,
    .submit = thr_submit,
    .drain_begin = thr_drain_begin,
    .drain_end = thr_drain_end,
    .resize = thr_resize,
    .describe = thr_describe,
};
