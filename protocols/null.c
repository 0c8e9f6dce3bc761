/*
 * null.c - the "null-co" protocol driver: a device that stores nothing, for benchmarks and tests.
 * open/close/resize on the control thread, submit and completions on the request's I/O loop.
 *
 * Like QEMU's null-co: size defaults to 1 GiB, reads leave the buffer untouched unless
 * read-zeroes=on, block status reports "not allocated" (plus "zero" with read-zeroes=on), and
 * latency-ns delays every completion with a timer on the request's loop.
 */
#include "blockd/blockd.h"

#include <string.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

struct null_node {
	uint64_t size;
	uint64_t latency_ns;
	bool read_zeroes;
};

struct null_req {
	struct bd_timer timer;
	struct bd_req *req;
};

static void null_timer_fire(struct bd_timer *t)
{
	struct null_req *nr = container_of(t, struct null_req, timer);

	bd_req_complete(nr->req, 0);
}

static int null_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct null_node *nn = bd_node_priv(node);
	struct null_req *nr = req->priv;

	switch (req->op) {
	case BD_OP_READ:
		if (nn->read_zeroes)
			bd_iov_memset(req->iov, req->iovcnt, 0, 0, req->len);
		break;
	case BD_OP_BLOCK_STATUS:
		if (req->max_extents == 0)
			return -EINVAL;
		req->extents[0].length = req->len;
		req->extents[0].flags = nn->read_zeroes ? BD_EXT_ZERO : 0;
		req->extents[0].depth = 1;
		req->nr_extents = 1;
		break;
	case BD_OP_WRITE:
	case BD_OP_FLUSH:
	case BD_OP_DISCARD:
	case BD_OP_WRITE_ZEROES:
	case BD_OP_CACHE:
		break;
	default:
		return -ENOTSUP;
	}

	if (nn->latency_ns) {
		nr->req = req;
		bd_timer_init(&nr->timer, null_timer_fire);
		bd_timer_arm(bd_chan_loop(ch), &nr->timer, bd_now_ns() + nn->latency_ns);
	} else {
		bd_req_complete_later(req, 0);
	}
	return 0;
}

static int null_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		     struct bd_err *err)
{
	struct null_node *nn = bd_node_priv(node);
	int ret;

	memset(nn, 0, sizeof(*nn));
	nn->size = 1ull << 30;
	ret = bd_opts_size(opts, "size", &nn->size, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_u64(opts, "latency-ns", &nn->latency_ns, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	ret = bd_opts_bool(opts, "read-zeroes", &nn->read_zeroes, err);
	if (ret < 0 && ret != -ENOENT)
		return ret;
	if (nn->size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EINVAL, "Parameter 'size' is too large");
	if (nn->latency_ns > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EINVAL, "latency-ns is invalid");

	limits->size = nn->size;
	limits->ops = 0;
	for (int op = 0; op < BD_OP__COUNT; op++)
		limits->ops |= BD_OP_BIT(op);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = 0;
	limits->max_discard = 0;
	limits->opt_transfer = 0;
	limits->native_fua = true;
	limits->zeroes_unmap = true;
	limits->can_resize = true;
	return 0;
}

static void null_close(struct bd_node *node)
{
}

static int null_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct null_node *nn = bd_node_priv(node);

	if (new_size > (uint64_t)INT64_MAX)
		return bd_err_set(err, -EFBIG, "size too large");
	nn->size = new_size;
	return 0;
}

static void null_describe(struct bd_node *node, json_t *out)
{
	struct null_node *nn = bd_node_priv(node);

	json_object_set_new(out, "read-zeroes", json_boolean(nn->read_zeroes));
	json_object_set_new(out, "latency-ns", json_integer((json_int_t)nn->latency_ns));
}

static const struct bd_opt_desc null_options[] = {
    {"size", BD_OPT_SIZE, false, NULL, "size in bytes (default 1 GiB)"},
    {"read-zeroes", BD_OPT_BOOL, false, NULL,
     "reads return zeroes (default off: the buffer is left untouched)"},
    {"latency-ns", BD_OPT_INT, false, NULL, "complete every request after this delay"},
    {NULL},
};

const struct bd_driver bd_drv_null_co = {
    .name = "null-co",
    .kind = BD_DRV_PROTOCOL,
    .help = "null device: discards writes, reads nothing (or zeroes)",
    .options = null_options,
    .node_size = sizeof(struct null_node),
    .req_size = sizeof(struct null_req),
    .open = null_open,
    .close = null_close,
    .submit = null_submit,
    .resize = null_resize,
    .describe = null_describe,
};
