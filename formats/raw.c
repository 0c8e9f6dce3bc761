/*
 * raw.c - the "raw" format driver: the child's bytes as they are, optionally a window
 * [offset, offset + size) of them.  open/close/resize on the control thread, submit and the
 * child's completions on the request's I/O loop.
 *
 * Every request becomes exactly one request on the child's channel on the same loop (no other
 * allocation), shifted by offset; the parent completes from the child's callback.  The child's
 * core does any emulation, so raw declares every op the child can do.
 */
#include "blockd/blockd.h"

#include <inttypes.h>
#include <string.h>

struct raw_node {
	struct bd_child *child;
	uint64_t offset;
	uint64_t size;
	bool has_size;
	bool window; /* offset or size given */
};

static void raw_child_done(struct bd_req *c, int ret)
{
	struct bd_req *req = c->opaque;

	if (ret == 0 && req->op == BD_OP_BLOCK_STATUS) {
		uint64_t left = req->len;
		unsigned n = 0;

		/* The child answers within its request; clamp anyway so the window never leaks. */
		while (n < c->nr_extents && n < req->max_extents && left > 0) {
			if (req->extents[n].length > left)
				req->extents[n].length = left;
			left -= req->extents[n].length;
			n++;
		}
		req->nr_extents = n;
		if (n == 0)
			ret = -EIO;
	}
	bd_req_put(c);
	bd_req_complete(req, ret);
}

static int raw_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct raw_node *rn = bd_node_priv(node);
	struct bd_chan *cch = bd_child_chan(rn->child, ch);
	struct bd_req *c = bd_req_get(cch);
	int ret;

	c->op = req->op;
	c->flags = req->flags;
	c->offset = req->op == BD_OP_FLUSH ? req->offset : req->offset + rn->offset;
	c->len = req->len;
	c->iov = req->iov;
	c->iovcnt = req->iovcnt;
	c->extents = req->extents;
	c->max_extents = req->max_extents;
	c->cb = raw_child_done;
	c->opaque = req;
	ret = bd_submit(cch, c);
	if (ret < 0)
		bd_req_put(c);
	return ret;
}

static int raw_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct raw_node *rn = bd_node_priv(node);
	struct bd_node *cnode;
	const struct bd_limits *cl;
	uint64_t csize;
	int ret;

	memset(rn, 0, sizeof(*rn));
	ret = bd_opts_size(opts, "offset", &rn->offset, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_size(opts, "size", &rn->size, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	rn->has_size = ret == 0;
	rn->window = rn->has_size || rn->offset != 0;

	rn->child = bd_node_open_child(node, opts, "file", true, err);
	if (!rn->child)
		return err && err->code ? err->code : -EINVAL;
	cnode = bd_child_node(rn->child);
	cl = bd_node_limits(cnode);
	csize = bd_node_size(cnode);

	if (rn->offset > csize)
		return bd_err_set(err, -EINVAL,
				  "Offset (%" PRIu64 ") cannot be greater than size of the "
				  "containing file (%" PRIu64 ")",
				  rn->offset, csize);
	if (rn->has_size && csize - rn->offset < rn->size)
		return bd_err_set(
		    err, -EINVAL,
		    "The sum of offset (%" PRIu64 ") and size (%" PRIu64 ") has to be "
		    "smaller or equal to the actual size of the containing file (%" PRIu64 ")",
		    rn->offset, rn->size, csize);
	if (rn->has_size && rn->size % 512)
		return bd_err_set(err, -EINVAL, "Specified size is not multiple of 512");
	if (!rn->has_size)
		rn->size = csize - rn->offset;

	*limits = *cl;
	limits->size = rn->size;
	/* Everything the child's core accepts (it emulates what the child's driver lacks), except
	 * write-zeroes: declared only when the child does it fast, so that bd_node_fast_zero() and
	 * BD_REQ_NO_FALLBACK stay truthful through this node. */
	limits->ops = 0;
	for (int op = 0; op < BD_OP__COUNT; op++)
		if (bd_node_can(cnode, (enum bd_op)op))
			limits->ops |= BD_OP_BIT(op);
	if (!bd_node_fast_zero(cnode))
		limits->ops &= ~BD_OP_BIT(BD_OP_WRITE_ZEROES);
	/* Aligning at this level only helps when the window keeps the child's alignment. */
	if (limits->req_align > 1 && rn->offset % limits->req_align)
		limits->req_align = 1;
	/* The child's core emulates FUA if its driver cannot. */
	limits->native_fua = true;
	limits->can_resize = !rn->window && cl->can_resize;
	return 0;
}

static void raw_close(struct bd_node *node)
{
}

static int raw_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct raw_node *rn = bd_node_priv(node);
	int ret;

	if (rn->window)
		return bd_err_set(err, -ENOTSUP,
				  "Cannot resize a raw node with an 'offset' or 'size' window");
	ret = bd_node_resize(bd_child_node(rn->child), new_size, err);
	if (ret < 0)
		return ret;
	rn->size = new_size;
	return 0;
}

static void raw_describe(struct bd_node *node, json_t *out)
{
	struct raw_node *rn = bd_node_priv(node);

	if (rn->window) {
		json_object_set_new(out, "offset", json_integer((json_int_t)rn->offset));
		json_object_set_new(out, "size", json_integer((json_int_t)rn->size));
	}
}

static const struct bd_opt_desc raw_options[] = {
    {"file", BD_OPT_CHILD, true, NULL, "the node holding the bytes"},
    {"offset", BD_OPT_SIZE, false, NULL, "start of the window in the child (default 0)"},
    {"size", BD_OPT_SIZE, false, NULL,
     "size of the window, a multiple of 512 (default: the rest of the child)"},
    {NULL},
};

const struct bd_driver bd_drv_raw = {
    .name = "raw",
    .kind = BD_DRV_FORMAT,
    .help = "raw image (optionally a window of the child)",
    .options = raw_options,
    .node_size = sizeof(struct raw_node),
    .req_size = 0,
    .open = raw_open,
    .close = raw_close,
    .submit = raw_submit,
    .resize = raw_resize,
    .describe = raw_describe,
};
