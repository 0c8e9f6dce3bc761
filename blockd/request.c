/*
 * request.c - the request path: validation, emulation, splitting, bouncing, completion.  [loop]
 *
 * Everything here runs on the loop that owns the request's channel.  The core keeps drivers
 * simple: a driver sees only requests inside its declared limits (range, alignment, max
 * transfer, supported ops), and the core emulates the rest:
 *   - FLUSH with cache.no-flush or an unsupported op, CACHE, DISCARD with discard=ignore:
 *     completed without the driver;
 *   - WRITE_ZEROES the driver lacks (or answers -ENOTSUP): written as zero buffers, unless
 *     BD_REQ_NO_FALLBACK;
 *   - FUA without native_fua: the write, then a flush;
 *   - BLOCK_STATUS the driver lacks: one extent "data, depth 1";
 *   - detect-zeroes: an all-zero WRITE becomes WRITE_ZEROES;
 *   - unaligned offsets/lengths: bounce buffers, and read-modify-write for writes (serialised
 *     per node against other read-modify-writes, see rmw_* below);
 *   - requests above max_transfer / max_discard: split into a window of sub-requests;
 *   - BD_REQ_WRITE_COMPRESSED: checked against limits.compress_cluster, kept in whole units.
 * Sub-requests come from the same channel and pass through process() again, so each step only
 * handles one concern.
 */
#include "blockd/internal.h"

#include <assert.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum core_state {
	CS_NONE = 0,
	CS_FUA_WRITE, /* write done without FUA: a flush follows */
	CS_FUA_FLUSH,
	CS_PARENT,     /* waiting for chunked sub-requests */
	CS_BOUNCE,     /* buffer-aligned copy of an aligned range */
	CS_RMW_READ,   /* read-modify-write: reading the aligned range */
	CS_RMW_WRITE,  /* read-modify-write: writing it back */
	CS_RMW_WAIT,   /* read-modify-write: waiting for an overlapping one */
	CS_UNALIGNED_READ,
};

enum chunk_mode { CHUNK_SPLIT, CHUNK_ZERO_WRITE };

#define CHUNK_WINDOW 8
#define ZERO_BUF_SIZE (1u << 20)
#define FREE_LIST_MAX 1024

static void *zero_buf;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void zero_buf_init(void)
{
	zero_buf = bd_io_alloc(ZERO_BUF_SIZE);
	if (!zero_buf)
		abort();
	memset(zero_buf, 0, ZERO_BUF_SIZE);
}

static inline uint64_t align_down(uint64_t x, uint64_t a)
{
	return x & ~(a - 1);
}

static inline uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) & ~(a - 1);
}

static bool is_write_op(enum bd_op op)
{
	return op == BD_OP_WRITE || op == BD_OP_DISCARD || op == BD_OP_WRITE_ZEROES;
}

/* ---- request pool ---- */

struct bd_req *bd_req_get(struct bd_chan *ch)
{
	struct bd_req *req = ch->free_list;
	size_t size = sizeof(*req) + ch->node->drv->req_size;

	if (req) {
		ch->free_list = req->next;
		ch->free_count--;
	} else {
		req = aligned_alloc(64, (size + 63) & ~(size_t)63);
		if (!req)
			abort();
	}
	memset(req, 0, size);
	req->chan = ch;
	req->priv = ch->node->drv->req_size ? (void *)(req + 1) : NULL;
	return req;
}

void bd_req_put(struct bd_req *req)
{
	struct bd_chan *ch = req->chan;
	if (ch->free_count >= FREE_LIST_MAX) {
		free(req);
		return;
	}
	req->next = ch->free_list;
	ch->free_list = req;
	ch->free_count++;
}

void bd_chan_free_all(struct bd_chan *ch)
{
	while (ch->free_list) {
		struct bd_req *r = ch->free_list;
		ch->free_list = r->next;
		free(r);
	}
	ch->free_count = 0;
}

/* ---- completion ---- */

bool bd_req_add_extent(struct bd_req *req, uint64_t len, uint32_t flags, uint32_t depth)
{
	if (len == 0)
		return true;
	if (req->nr_extents) {
		struct bd_extent *last = &req->extents[req->nr_extents - 1];
		if (last->flags == flags && last->depth == depth) {
			last->length += len;
			return true;
		}
	}
	if (req->nr_extents >= req->max_extents)
		return false;
	req->extents[req->nr_extents++] = (struct bd_extent){len, flags, depth};
	return true;
}

/* A request a client sent failed in the storage (not a refused request): tell the control
 * socket, at most once a second per node and loop, as QEMU throttles the event.  Only nodes
 * without parents report: the layers below fail the same request. */
static void report_io_error(struct bd_chan *ch, enum bd_op op, int ret)
{
	uint64_t now;

	switch (ret) {
	case -EINVAL:
	case -EPERM:
	case -ENOTSUP:
	case -ECANCELED:
	case -ESHUTDOWN:
		return;
	}
	if (op == BD_OP_BLOCK_STATUS || op == BD_OP_CACHE)
		return;
	if (ch->node->parents)
		return; /* reported once, by the node the client uses */
	now = bd_now_ns();
	if (ch->last_io_error_ns && now - ch->last_io_error_ns < 1000000000ull)
		return;
	ch->last_io_error_ns = now;
	bd_event_emit("BLOCK_IO_ERROR",
		      json_pack("{s:s,s:s,s:s,s:s,s:b,s:s}", "device", "", "node-name",
				ch->node->name, "operation", op == BD_OP_READ ? "read" : "write",
				"action", "report", "nospace", ret == -ENOSPC, "reason",
				strerror(-ret)));
}

static void finish(struct bd_req *req, int ret)
{
	struct bd_chan *ch = req->chan;

	req->core_state = CS_NONE;
	if (req->orig_op) {
		req->op = (enum bd_op)(req->orig_op - 1);
		req->orig_op = 0;
	}
	if (req->top) {
		enum bd_op op = req->op;
		req->top = false;
		ch->inflight--;
		ch->stats.ops[op]++;
		if (ret < 0) {
			ch->stats.errors[op]++;
			report_io_error(ch, op, ret);
		}
		else if (op != BD_OP_FLUSH && op != BD_OP_BLOCK_STATUS)
			ch->stats.bytes[op] += req->len;
		ch->stats.total_ns[op] += bd_now_ns() - req->start_ns;
	}
	req->cb(req, ret);
}

static void deferred_complete(struct bd_defer *d)
{
	struct bd_req *req = bd_container_of(d, struct bd_req, defer);
	bd_req_complete(req, req->status);
}

void bd_req_complete_later(struct bd_req *req, int ret)
{
	req->status = ret;
	req->defer.fn = deferred_complete;
	bd_loop_defer(req->chan->loop, &req->defer);
}

/* ---- driver submission with -EAGAIN retry ---- */

static void retry_run(struct bd_defer *d)
{
	struct bd_chan *ch = bd_container_of(d, struct bd_chan, retry_defer);

	while (ch->retry_head) {
		struct bd_req *req = ch->retry_head;
		ch->retry_head = req->next;
		if (!ch->retry_head)
			ch->retry_tail = NULL;
		req->next = NULL;
		int r = ch->node->drv->submit(ch->node, ch, req);
		if (r == -EAGAIN) {
			/* still full: put it back in front and try again next iteration */
			req->next = ch->retry_head;
			ch->retry_head = req;
			if (!ch->retry_tail)
				ch->retry_tail = req;
			bd_loop_defer(ch->loop, &ch->retry_defer);
			return;
		}
		if (r < 0)
			bd_req_complete_later(req, r);
	}
}

static int drv_submit(struct bd_chan *ch, struct bd_req *req)
{
	int r;

	if (ch->retry_head) {
		r = -EAGAIN; /* keep order behind queued requests */
	} else {
		r = ch->node->drv->submit(ch->node, ch, req);
	}
	if (r == -EAGAIN) {
		req->next = NULL;
		if (ch->retry_tail)
			ch->retry_tail->next = req;
		else
			ch->retry_head = req;
		ch->retry_tail = req;
		ch->retry_defer.fn = retry_run;
		bd_loop_defer(ch->loop, &ch->retry_defer);
		return 0;
	}
	return r;
}

static int process(struct bd_chan *ch, struct bd_req *req);

/* ---- chunked sub-requests: split and zero-write emulation ---- */

static void chunk_pump(struct bd_req *parent, bool in_submit);

static void chunk_sub_done(struct bd_req *sub, int ret)
{
	struct bd_req *parent = sub->opaque;

	if (ret < 0 && parent->status == 0)
		parent->status = ret;
	free(sub->sub_iov);
	bd_req_put(sub);
	parent->pending--;
	chunk_pump(parent, false);
}

/* An iovec array for bytes [off, off+len) of req's iovec. */
static struct iovec *iov_slice(const struct bd_req *req, uint64_t off, uint64_t len, int *cnt)
{
	struct iovec *out = malloc(sizeof(*out) * (size_t)req->iovcnt);

	if (!out)
		abort();
	*cnt = bd_iov_slice(req->iov, req->iovcnt, off, len, out);
	return out;
}

static void chunk_pump(struct bd_req *parent, bool in_submit)
{
	struct bd_chan *ch = parent->chan;
	const struct bd_limits *lim = &ch->node->limits;
	enum chunk_mode mode = (enum chunk_mode)parent->core_state_mode;

	while (parent->status == 0 && parent->pending < CHUNK_WINDOW &&
	       parent->next_off < parent->end_off) {
		struct bd_req *sub = bd_req_get(ch);
		uint64_t max, len = parent->end_off - parent->next_off;

		if (mode == CHUNK_ZERO_WRITE) {
			max = ZERO_BUF_SIZE;
			if (lim->max_transfer && lim->max_transfer < max)
				max = lim->max_transfer;
			sub->op = BD_OP_WRITE;
			sub->flags = parent->flags & BD_REQ_FUA;
		} else {
			sub->op = parent->op;
			sub->flags = parent->flags;
			if (parent->op == BD_OP_READ || parent->op == BD_OP_WRITE)
				max = lim->max_transfer;
			else
				max = lim->max_discard;
			if (!max)
				max = len;
		}
		/* keep chunks aligned so that they do not each need a read-modify-write */
		if (max < len && lim->req_align > 1 && max >= lim->req_align)
			max = align_down(max, lim->req_align);
		/* and compressed writes in whole units */
		if (max < len && (sub->flags & BD_REQ_WRITE_COMPRESSED) &&
		    max >= lim->compress_cluster)
			max = align_down(max, lim->compress_cluster);
		if (len > max)
			len = max;
		sub->offset = parent->next_off;
		sub->len = len;
		if (mode == CHUNK_ZERO_WRITE) {
			sub->sub_iov = malloc(sizeof(struct iovec));
			if (!sub->sub_iov)
				abort();
			sub->sub_iov->iov_base = zero_buf;
			sub->sub_iov->iov_len = len;
			sub->iov = sub->sub_iov;
			sub->iovcnt = 1;
		} else if (sub->op == BD_OP_READ || sub->op == BD_OP_WRITE) {
			sub->sub_iov =
				iov_slice(parent, parent->next_off - parent->offset, len, &sub->iovcnt);
			sub->iov = sub->sub_iov;
		}
		sub->cb = chunk_sub_done;
		sub->opaque = parent;
		sub->parent = parent;
		parent->next_off += len;
		int r = process(ch, sub);
		if (r < 0) {
			free(sub->sub_iov);
			bd_req_put(sub);
			parent->status = r;
			break;
		}
		parent->pending++;
	}
	if (parent->pending == 0 && (parent->status || parent->next_off >= parent->end_off)) {
		if (in_submit)
			bd_req_complete_later(parent, parent->status);
		else
			bd_req_complete(parent, parent->status);
	}
}

static int chunk_start(struct bd_req *req, uint64_t start, uint64_t end, enum chunk_mode mode,
		       bool in_submit)
{
	pthread_once(&zero_once, zero_buf_init);
	req->core_state = CS_PARENT;
	req->core_state_mode = mode;
	req->next_off = start;
	req->end_off = end;
	req->pending = 0;
	req->status = 0;
	chunk_pump(req, in_submit);
	return 0;
}

/* ---- read-modify-write serialisation ---- */

static bool ranges_overlap(uint64_t a0, uint64_t a1, uint64_t b0, uint64_t b1)
{
	return a0 < b1 && b0 < a1;
}

/* Take [start,end) for req, or queue req behind an overlapping range and return false. */
static bool rmw_lock(struct bd_node *node, struct bd_req *req, uint64_t start, uint64_t end)
{
	bool got = true;

	pthread_mutex_lock(&node->rmw_lock);
	for (struct bd_rmw_range *r = node->rmw_list; r; r = r->next) {
		if (ranges_overlap(start, end, r->start, r->end)) {
			req->next = r->waiters;
			r->waiters = req;
			got = false;
			break;
		}
	}
	if (got) {
		struct bd_rmw_range *r = malloc(sizeof(*r));
		if (!r)
			abort();
		r->start = start;
		r->end = end;
		r->waiters = NULL;
		r->next = node->rmw_list;
		node->rmw_list = r;
	}
	pthread_mutex_unlock(&node->rmw_lock);
	return got;
}

static void rmw_resume(void *arg);

static void rmw_unlock(struct bd_node *node, uint64_t start, uint64_t end)
{
	struct bd_req *waiters = NULL;

	pthread_mutex_lock(&node->rmw_lock);
	for (struct bd_rmw_range **pp = &node->rmw_list; *pp; pp = &(*pp)->next) {
		struct bd_rmw_range *r = *pp;
		if (r->start == start && r->end == end) {
			*pp = r->next;
			waiters = r->waiters;
			free(r);
			break;
		}
	}
	pthread_mutex_unlock(&node->rmw_lock);
	while (waiters) {
		struct bd_req *w = waiters;
		waiters = w->next;
		w->next = NULL;
		bd_loop_send(w->chan->loop, rmw_resume, w);
	}
}

/* ---- bouncing and read-modify-write ---- */

static void bounce_sub_done(struct bd_req *sub, int ret);

static struct bd_req *bounce_sub(struct bd_req *req, enum bd_op op, uint64_t off, uint64_t len)
{
	struct bd_req *sub = bd_req_get(req->chan);
	sub->op = op;
	sub->offset = off;
	sub->len = len;
	sub->iov = &req->bounce_iov;
	sub->iovcnt = 1;
	sub->flags = op == BD_OP_WRITE ? (req->flags & (BD_REQ_FUA | BD_REQ_WRITE_COMPRESSED)) : 0;
	sub->cb = bounce_sub_done;
	sub->opaque = req;
	sub->parent = req;
	return sub;
}

static void bounce_free(struct bd_req *req)
{
	free(req->bounce);
	req->bounce = NULL;
	req->bounce_len = 0;
}

static int rmw_begin(struct bd_req *req, bool in_submit)
{
	struct bd_req *sub = bounce_sub(req, BD_OP_READ, req->next_off, req->bounce_len);
	int r;

	req->core_state = CS_RMW_READ;
	r = process(req->chan, sub);
	if (r < 0) {
		bd_req_put(sub);
		rmw_unlock(req->chan->node, req->next_off, req->next_off + req->bounce_len);
		bounce_free(req);
		if (in_submit)
			return r;
		bd_req_complete(req, r);
	}
	return 0;
}

static void rmw_resume(void *arg)
{
	struct bd_req *req = arg;
	struct bd_node *node = req->chan->node;

	if (!rmw_lock(node, req, req->next_off, req->next_off + req->bounce_len))
		return;
	rmw_begin(req, false);
}

static void bounce_sub_done(struct bd_req *sub, int ret)
{
	struct bd_req *req = sub->opaque;
	struct bd_node *node = req->chan->node;

	bd_req_put(sub);
	switch (req->core_state) {
	case CS_BOUNCE:
	case CS_UNALIGNED_READ:
		if (ret == 0 && req->op == BD_OP_READ)
			bd_iov_from_buf(req->iov, req->iovcnt, 0,
					(char *)req->bounce + (req->offset - req->next_off),
					req->len);
		bounce_free(req);
		bd_req_complete(req, ret);
		return;
	case CS_RMW_READ:
		if (ret == 0) {
			bd_iov_to_buf(req->iov, req->iovcnt, 0,
				      (char *)req->bounce + (req->offset - req->next_off), req->len);
			struct bd_req *w =
				bounce_sub(req, BD_OP_WRITE, req->next_off, req->bounce_len);
			req->core_state = CS_RMW_WRITE;
			int r = process(req->chan, w);
			if (r == 0)
				return;
			bd_req_put(w);
			ret = r;
		}
		/* fall through */
	case CS_RMW_WRITE:
		rmw_unlock(node, req->next_off, req->next_off + req->bounce_len);
		bounce_free(req);
		bd_req_complete(req, ret);
		return;
	default:
		abort();
	}
}

static bool iov_aligned(const struct bd_req *req, uint32_t a)
{
	if (a <= 1)
		return true;
	/* every base aligned, every length but the last (a request ending at an unaligned end
	 * of the image has a short last piece; the request range check covers the total) */
	for (int i = 0; i < req->iovcnt; i++) {
		uintptr_t bits = (uintptr_t)req->iov[i].iov_base;
		if (i + 1 < req->iovcnt)
			bits |= req->iov[i].iov_len;
		if (bits & (a - 1))
			return false;
	}
	return true;
}

static int process_unaligned(struct bd_chan *ch, struct bd_req *req)
{
	const struct bd_limits *lim = &ch->node->limits;
	uint64_t a = lim->req_align > 1 ? lim->req_align : 1;
	uint64_t start = align_down(req->offset, a);
	uint64_t end = align_up(req->offset + req->len, a);

	if (end > lim->size)
		end = lim->size; /* an image whose size is not aligned: its tail is short */
	req->next_off = start;
	req->bounce_len = end - start;
	req->bounce = bd_io_alloc(req->bounce_len);
	if (!req->bounce)
		return -ENOMEM;
	req->bounce_iov.iov_base = req->bounce;
	req->bounce_iov.iov_len = req->bounce_len;

	if (start == req->offset && end == req->offset + req->len) {
		/* only the buffers are misaligned */
		req->core_state = CS_BOUNCE;
		if (req->op == BD_OP_WRITE)
			bd_iov_to_buf(req->iov, req->iovcnt, 0, req->bounce, req->len);
	} else if (req->op == BD_OP_READ) {
		req->core_state = CS_UNALIGNED_READ;
	} else {
		/* read-modify-write, serialised with other read-modify-writes that share a
		 * block: two unaligned writes to different bytes of one block must both land */
		req->core_state = CS_RMW_WAIT;
		if (!rmw_lock(ch->node, req, start, end))
			return 0;
		int r = rmw_begin(req, true);
		if (r < 0)
			return r;
		return 0;
	}
	struct bd_req *sub = bounce_sub(req, req->op, start, end - start);
	int r = process(ch, sub);
	if (r < 0) {
		bd_req_put(sub);
		bounce_free(req);
	}
	return r;
}

/* ---- the dispatcher ---- */

static int process(struct bd_chan *ch, struct bd_req *req)
{
	struct bd_node *node = ch->node;
	const struct bd_limits *lim = &node->limits;
	const struct bd_node_common *c = &node->common;
	uint32_t ops = lim->ops;
	uint64_t a = lim->req_align > 1 ? lim->req_align : 1;

	req->chan = ch;
	switch (req->op) {
	case BD_OP_FLUSH:
		if (c->cache_no_flush || !(ops & BD_OP_BIT(BD_OP_FLUSH)))
			goto done_now;
		return drv_submit(ch, req);

	case BD_OP_CACHE:
		if (!(ops & BD_OP_BIT(BD_OP_CACHE)) || req->len == 0)
			goto done_now;
		return drv_submit(ch, req);

	case BD_OP_BLOCK_STATUS:
		if (!(ops & BD_OP_BIT(BD_OP_BLOCK_STATUS))) {
			req->extents[0].length = req->len;
			req->extents[0].flags = BD_EXT_DATA;
			req->extents[0].depth = 1;
			req->nr_extents = 1;
			goto done_now;
		}
		return drv_submit(ch, req);

	case BD_OP_DISCARD: {
		if (c->discard == BD_DISCARD_IGNORE || !(ops & BD_OP_BIT(BD_OP_DISCARD)))
			goto done_now;
		uint64_t start = align_up(req->offset, a);
		uint64_t end = req->offset + req->len == lim->size
				       ? lim->size
				       : align_down(req->offset + req->len, a);
		if (start >= end)
			goto done_now; /* discard is advisory: nothing whole to drop */
		if (start != req->offset || end != req->offset + req->len ||
		    (lim->max_discard && req->len > lim->max_discard))
			return chunk_start(req, start, end, CHUNK_SPLIT, true);
		int r = drv_submit(ch, req);
		if (r == -ENOTSUP || r == -EOPNOTSUPP)
			goto done_now; /* discard is advisory */
		return r;
	}

	case BD_OP_WRITE_ZEROES:
		if (req->len == 0)
			goto done_now;
		if (c->discard == BD_DISCARD_IGNORE)
			req->flags &= ~BD_REQ_MAY_UNMAP;
		if (!(ops & BD_OP_BIT(BD_OP_WRITE_ZEROES)) || ((req->offset | req->len) & (a - 1))) {
			if (req->flags & BD_REQ_NO_FALLBACK)
				return -ENOTSUP;
			return chunk_start(req, req->offset, req->offset + req->len,
					   CHUNK_ZERO_WRITE, true);
		}
		if (lim->max_discard && req->len > lim->max_discard)
			return chunk_start(req, req->offset, req->offset + req->len, CHUNK_SPLIT,
					   true);
		if ((req->flags & BD_REQ_FUA) && !lim->native_fua) {
			req->fua_op = req->op;
			req->core_state = CS_FUA_WRITE;
		}
		{
			int r = drv_submit(ch, req);
			if ((r == -ENOTSUP || r == -EOPNOTSUPP) &&
			    !(req->flags & BD_REQ_NO_FALLBACK)) {
				/* the driver cannot for this range: write zeroes */
				req->core_state = CS_NONE;
				return chunk_start(req, req->offset, req->offset + req->len,
						   CHUNK_ZERO_WRITE, true);
			}
			return r;
		}

	case BD_OP_WRITE:
		if (req->len && c->detect_zeroes != BD_DZ_OFF && !req->parent &&
		    bd_iov_is_zero(req->iov, req->iovcnt)) {
			req->orig_op = BD_OP_WRITE + 1;
			req->op = BD_OP_WRITE_ZEROES;
			if (c->detect_zeroes == BD_DZ_UNMAP)
				req->flags |= BD_REQ_MAY_UNMAP;
			return process(ch, req);
		}
		/* fall through */
	case BD_OP_READ:
		if (req->len == 0)
			goto done_now;
		if ((req->offset & (a - 1)) ||
		    ((req->len & (a - 1)) && req->offset + req->len != lim->size) ||
		    !iov_aligned(req, lim->buf_align))
			return process_unaligned(ch, req);
		if (lim->max_transfer && req->len > lim->max_transfer)
			return chunk_start(req, req->offset, req->offset + req->len, CHUNK_SPLIT,
					   true);
		if (req->op == BD_OP_WRITE && (req->flags & BD_REQ_FUA) && !lim->native_fua) {
			req->fua_op = req->op;
			req->core_state = CS_FUA_WRITE;
		}
		return drv_submit(ch, req);

	default:
		return -EINVAL;
	}

done_now:
	bd_req_complete_later(req, 0);
	return 0;
}

void bd_req_complete(struct bd_req *req, int ret)
{
	struct bd_chan *ch = req->chan;

	switch (req->core_state) {
	case CS_FUA_WRITE:
	case CS_NONE:
		if (req->op == BD_OP_WRITE_ZEROES && (ret == -ENOTSUP || ret == -EOPNOTSUPP) &&
		    !(req->flags & BD_REQ_NO_FALLBACK)) {
			/* the driver found out only now that it cannot: write zeroes */
			chunk_start(req, req->offset, req->offset + req->len, CHUNK_ZERO_WRITE,
				    false);
			return;
		}
		if (req->core_state == CS_FUA_WRITE) {
			if (ret == 0) {
				req->core_state = CS_FUA_FLUSH;
				req->op = BD_OP_FLUSH;
				ret = drv_submit(ch, req);
				if (ret == 0)
					return;
			}
			req->op = (enum bd_op)req->fua_op;
		}
		break;
	case CS_FUA_FLUSH:
		req->op = (enum bd_op)req->fua_op;
		break;
	default:
		break;
	}
	if (req->op == BD_OP_DISCARD && (ret == -ENOTSUP || ret == -EOPNOTSUPP))
		ret = 0; /* discard is advisory */
	finish(req, ret);
}

/* ---- external snapshots: requests to a replaced node go to its overlay ---- */

static int forward(struct bd_chan *ch, struct bd_req *req);

static void fwd_done(struct bd_req *sub, int ret)
{
	struct bd_req *req = sub->opaque;

	req->nr_extents = sub->nr_extents;
	bd_req_put(sub);
	req->chan->inflight--;
	req->cb(req, ret);
}

static int forward(struct bd_chan *ch, struct bd_req *req)
{
	struct bd_node *node = ch->node;

	req->chan = ch;
	if (atomic_load_explicit(&node->fwd, memory_order_acquire) == 1) {
		/* the switch is under way: wait for bd_chan_release_held() */
		req->next = NULL;
		if (ch->held_tail)
			ch->held_tail->next = req;
		else
			ch->held_head = req;
		ch->held_tail = req;
		return 0;
	}
	struct bd_chan *tch = bd_node_chan(node->fwd_to, ch->loop);
	struct bd_req *sub = bd_req_get(tch);
	sub->op = req->op;
	sub->flags = req->flags;
	sub->offset = req->offset;
	sub->len = req->len;
	sub->iov = req->iov;
	sub->iovcnt = req->iovcnt;
	sub->extents = req->extents;
	sub->max_extents = req->max_extents;
	sub->cb = fwd_done;
	sub->opaque = req;
	int r = bd_submit(tch, sub);
	if (r < 0) {
		bd_req_put(sub);
		return r;
	}
	ch->inflight++;
	return 0;
}

void bd_chan_release_held(struct bd_chan *ch)
{
	struct bd_req *r = ch->held_head, *next;

	ch->held_head = ch->held_tail = NULL;
	for (; r; r = next) {
		next = r->next;
		int e = forward(ch, r);
		if (e < 0)
			r->cb(r, e);
	}
}

/* ---- the public entry ---- */

int bd_submit(struct bd_chan *ch, struct bd_req *req)
{
	struct bd_node *node = ch->node;
	const struct bd_limits *lim = &node->limits;
	int r;

	assert(bd_loop_current() == ch->loop);
	if ((unsigned)req->op >= BD_OP__COUNT || !req->cb)
		return -EINVAL;
	if (!ch->inner && atomic_load_explicit(&node->fwd, memory_order_acquire))
		return forward(ch, req);
	if (req->op != BD_OP_FLUSH) {
		if (req->offset > lim->size || req->len > lim->size - req->offset)
			return -EINVAL;
	}
	if (is_write_op(req->op) && node->common.read_only)
		return -EPERM;
	if (req->flags & BD_REQ_WRITE_COMPRESSED) {
		uint64_t u = lim->compress_cluster;
		if (req->op != BD_OP_WRITE || !u)
			return -ENOTSUP;
		if ((req->offset & (u - 1)) ||
		    ((req->len & (u - 1)) && req->offset + req->len != lim->size))
			return -EINVAL;
	}
	if (req->op == BD_OP_READ || req->op == BD_OP_WRITE) {
		if (bd_iov_size(req->iov, req->iovcnt) != req->len)
			return -EINVAL;
	}
	if (req->op == BD_OP_BLOCK_STATUS) {
		if (!req->extents || req->max_extents < 1 || req->len == 0)
			return -EINVAL;
		req->nr_extents = 0;
	}

	req->chan = ch;
	req->core_state = CS_NONE;
	req->orig_op = 0;
	req->parent = NULL;
	req->pending = 0;
	req->status = 0;
	req->bounce = NULL;
	req->top = true;
	req->start_ns = bd_now_ns();
	ch->inflight++;
	r = process(ch, req);
	if (r < 0) {
		if (req->orig_op) {
			req->op = (enum bd_op)(req->orig_op - 1);
			req->orig_op = 0;
		}
		req->top = false;
		ch->inflight--;
	}
	return r;
}
