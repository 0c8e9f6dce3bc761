/*
 * compress.c - the "compress" filter driver (QEMU's block/filter-compress.c): writes of whole
 * clusters reach its child "file" as compressed writes (BD_REQ_WRITE_COMPRESSED); the parts of
 * a write that do not cover whole clusters, and every other request, pass through unchanged.
 * The child must take compressed writes (limits.compress_cluster, e.g. qcow2).  open/close on
 * the control thread, submit and completions on the I/O loops.
 *
 *   --blockdev driver=compress,node-name=c,file=q
 *
 * Unlike QEMU's filter, which makes every write a read-modify-write of whole clusters, a
 * partial cluster is written as it is (uncompressed), so small writes cost no more than
 * without the filter.
 */
#include "blockd/blockd.h"

#include <stdlib.h>
#include <string.h>

struct cmp_node {
	struct bd_child *file;
	uint64_t unit; /* the child's compress_cluster */
};

/* Per request: up to three child requests (head, whole clusters, tail). */
struct cmp_req {
	unsigned pending;
	int status;
	struct iovec *iov[3];
};

static int cmp_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct cmp_node *cn = bd_node_priv(node);

	cn->file = bd_node_open_child(node, opts, "file", true, err);
	if (!cn->file)
		return err && err->code ? err->code : -EINVAL;
	struct bd_node *child = bd_child_node(cn->file);
	const struct bd_limits *cl = bd_node_limits(child);
	if (!cl->compress_cluster)
		return bd_err_set(err, -ENOTSUP,
				  "Compression is not supported for underlying format: %s (node '%s')",
				  bd_node_driver(child)->name, bd_node_name(child));
	cn->unit = cl->compress_cluster;
	/* A filter: the child's limits and every op the child can take. */
	*limits = *cl;
	limits->compress_cluster = 0; /* our writes are compressed anyway */
	limits->ops = 0;
	for (int op = 0; op < BD_OP__COUNT; op++)
		if (bd_node_can(child, op))
			limits->ops |= BD_OP_BIT(op);
	return 0;
}

static void cmp_close(struct bd_node *node)
{
	(void)node;
}

static void piece_done(struct bd_req *creq, int ret)
{
	struct bd_req *req = creq->opaque;
	struct cmp_req *cr = req->priv;

	if (req->op == BD_OP_BLOCK_STATUS)
		req->nr_extents = creq->nr_extents;
	bd_req_put(creq);
	if (ret < 0 && cr->status == 0)
		cr->status = ret;
	if (--cr->pending)
		return;
	for (int i = 0; i < 3; i++) {
		free(cr->iov[i]);
		cr->iov[i] = NULL;
	}
	bd_req_complete(req, cr->status);
}

/* The iovec entries for bytes [off, off+len) of req's buffers (malloc'd). */
static struct iovec *slice(const struct bd_req *req, uint64_t off, uint64_t len, int *cnt)
{
	struct iovec *out = malloc(sizeof(*out) * (size_t)(req->iovcnt ? req->iovcnt : 1));

	if (!out)
		return NULL;
	*cnt = bd_iov_slice(req->iov, req->iovcnt, off, len, out);
	return out;
}

/* Submit one child request for bytes [off, off+len) of req (a write piece when iov != NULL). */
static int submit_piece(struct bd_chan *cch, struct bd_req *req, uint64_t off, uint64_t len,
			struct iovec *iov, int iovcnt, uint32_t flags)
{
	struct cmp_req *cr = req->priv;
	struct bd_req *c = bd_req_get(cch);
	int r;

	c->op = req->op;
	c->flags = flags;
	c->offset = off;
	c->len = len;
	c->iov = iov ? iov : req->iov;
	c->iovcnt = iov ? iovcnt : req->iovcnt;
	c->extents = req->extents;
	c->max_extents = req->max_extents;
	c->cb = piece_done;
	c->opaque = req;
	r = bd_submit(cch, c);
	if (r < 0) {
		bd_req_put(c);
		return r;
	}
	cr->pending++;
	return 0;
}

static int cmp_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct cmp_node *cn = bd_node_priv(node);
	struct cmp_req *cr = req->priv;
	struct bd_chan *cch = bd_child_chan(cn->file, ch);
	uint64_t u = cn->unit, end = req->offset + req->len;
	uint64_t size = bd_node_size(bd_child_node(cn->file));
	uint64_t a, b;

	memset(cr, 0, sizeof(*cr));
	if (req->op != BD_OP_WRITE || req->len == 0)
		return submit_piece(cch, req, req->offset, req->len, NULL, 0, req->flags);

	/* [offset, a) head, [a, b) whole clusters, [b, end) tail */
	a = (req->offset + u - 1) & ~(u - 1);
	b = end == size ? end : end & ~(u - 1);
	if (a > end)
		a = end;
	if (b < a)
		b = a;
	if (a == req->offset && b == end)
		return submit_piece(cch, req, req->offset, req->len, NULL, 0,
				    req->flags | BD_REQ_WRITE_COMPRESSED);
	if (a == b)
		return submit_piece(cch, req, req->offset, req->len, NULL, 0, req->flags);

	const uint64_t lo[3] = {req->offset, a, b}, hi[3] = {a, b, end};
	int r = 0;
	cr->pending = 1; /* held while submitting: no completion before all are out */
	for (int i = 0; i < 3 && r == 0; i++) {
		int cnt;
		if (hi[i] == lo[i])
			continue;
		cr->iov[i] = slice(req, lo[i] - req->offset, hi[i] - lo[i], &cnt);
		if (!cr->iov[i]) {
			r = -ENOMEM;
			break;
		}
		r = submit_piece(cch, req, lo[i], hi[i] - lo[i], cr->iov[i], cnt,
				 req->flags | (i == 1 ? BD_REQ_WRITE_COMPRESSED : 0));
	}
	if (r < 0 && cr->pending == 1) {
		for (int i = 0; i < 3; i++)
			free(cr->iov[i]);
		memset(cr, 0, sizeof(*cr));
		return r; /* nothing went out */
	}
	if (r < 0)
		cr->status = r;
	if (--cr->pending == 0) {
		for (int i = 0; i < 3; i++) {
			free(cr->iov[i]);
			cr->iov[i] = NULL;
		}
		bd_req_complete_later(req, cr->status);
	}
	return 0;
}

static const struct bd_opt_desc cmp_options[] = {
	{"file", BD_OPT_CHILD, true, NULL, "the node to write compressed (e.g. a qcow2 node)"},
	{NULL},
};

const struct bd_driver bd_drv_compress = {
	.name = "compress",
	.kind = BD_DRV_FILTER,
	.help = "writes whole clusters compressed to its child (QEMU's compress filter)",
	.options = cmp_options,
	.node_size = sizeof(struct cmp_node),
	.req_size = sizeof(struct cmp_req),
	.open = cmp_open,
	.close = cmp_close,
	.submit = cmp_submit,
};
