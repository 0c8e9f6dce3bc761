/*
 * transmission.c - the NBD transmission phase of one connection: receiving and parsing
 * requests, dispatching them to the node, and the connection's lifecycle.  Replies and the send
 * queue are in transmission-send.c.  [the I/O loop the connection was handed to (conn->loop);
 * every function here runs on that loop]
 *
 * Receive: one recv at a time into a 256 KiB buffer; every complete request in it is parsed
 * (pipelining).  A write payload is copied out of the buffer, or, when a large part is still to
 * come, received straight into the request's buffer.  Up to NBD_MAX_INFLIGHT requests (and
 * NBD_MAX_INFLIGHT_BYTES of payload) per connection; past that, reading pauses.
 * Dispatch: each request becomes one or two bd_req on the node's channel for this loop.
 * Request objects and their buffers are recycled through a per-connection free list.
 * Teardown: a connection that dies (error, client gone, killed) stops all I/O; requests still at
 * the node complete into the void; when nothing is pending the socket is closed, everything is
 * freed and the main loop is told (nbd_server_conn_released).
 */
#include "export/nbd/transmission-int.h"

#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void rx_process(struct nbd_conn *conn);
static void rx_submit(struct nbd_conn *conn);

/* ---- Requests -------------------------------------------------------------------------------- */

static struct nbd_req *req_new(struct nbd_conn *conn, const struct nbd_request *r)
{
	struct nbd_req *q = conn->free_reqs;

	if (q) {
		conn->free_reqs = q->next;
		conn->nfree--;
	} else {
		q = calloc(1, sizeof(*q));
		if (!q)
			abort(); /* like malloc failure in the core's hot path */
	}
	q->conn = conn;
	q->next = NULL;
	if (r)
		q->r = *r;
	else
		memset(&q->r, 0, sizeof(q->r));
	q->stage = RQ_NONE;
	q->ctx_mask = 0;
	q->effect_len = 0;
	q->nr_ext = 0;
	q->riov = q->riov_in;
	q->riovcnt = 0;
	q->riov_cap = 2;
	q->rlen = 0;
	conn->nreqs++;
	return q;
}

static void req_free_mem(struct nbd_req *q)
{
	free(q->buf);
	free(q->ext);
	free(q->riov_dyn);
	free(q->rbuf);
	free(q);
}

void nbd_req_release(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;

	conn->nreqs--;
	conn->inflight_bytes -= q->charged;
	q->charged = 0;
	if (q->buf_cap > NBD_KEEP_BUF) {
		free(q->buf);
		q->buf = NULL;
		q->buf_cap = 0;
	}
	if (conn->nfree < NBD_MAX_INFLIGHT) {
		q->next = conn->free_reqs;
		conn->free_reqs = q;
		conn->nfree++;
	} else {
		req_free_mem(q);
	}
	/* Reading may have paused on the in-flight limits. */
	if (!conn->rx_busy && !conn->dead && !conn->draining) {
		conn->rx_defer_queued = true;
		bd_loop_defer(conn->loop, &conn->rx_defer);
	}
}

static bool req_buf(struct nbd_req *q, size_t len)
{
	if (q->buf_cap < len) {
		size_t cap = (len + 4095) & ~(size_t)4095;
		free(q->buf);
		q->buf_cap = 0;
		q->buf = bd_io_alloc(cap);
		if (!q->buf)
			return false;
		q->buf_cap = cap;
	}
	q->charged = len;
	q->conn->inflight_bytes += len;
	return true;
}

static bool req_ext(struct nbd_req *q)
{
	if (!q->ext)
		q->ext = malloc(NBD_BS_EXTENTS * sizeof(*q->ext));
	return q->ext != NULL;
}

/* ---- Dispatch to the node -------------------------------------------------------------------- */

static void breq_done(struct bd_req *br, int ret);

static int submit(struct nbd_req *q, enum bd_op op, uint64_t off, uint64_t len, uint32_t flags,
		  unsigned max_extents)
{
	struct nbd_conn *conn = q->conn;
	struct bd_req *br = bd_req_get(conn->ch);
	int r;

	br->op = op;
	br->offset = off;
	br->len = len;
	br->flags = flags;
	br->cb = breq_done;
	br->opaque = q;
	if (op == BD_OP_READ || op == BD_OP_WRITE) {
		q->data_iov.iov_base = q->buf;
		q->data_iov.iov_len = len;
		br->iov = &q->data_iov;
		br->iovcnt = 1;
	} else if (op == BD_OP_BLOCK_STATUS) {
		br->extents = q->ext;
		br->max_extents = max_extents;
	}
	conn->nbusy++;
	r = bd_submit(conn->ch, br);
	if (r < 0) {
		conn->nbusy--;
		bd_req_put(br);
	}
	return r;
}

static void req_dispatch(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;
	const struct nbd_request *r = &q->r;
	uint32_t fl = 0;
	int ret = 0;

	switch (r->type) {
	case NBD_CMD_READ:
		if (!r->length) {
			nbd_reply_read(q);
			return;
		}
		if (!req_buf(q, r->length)) {
			nbd_reply_error(q, NBD_ENOMEM);
			return;
		}
		if (conn->sess.structured && !(r->flags & NBD_CMD_FLAG_DF) && conn->sparse_reads &&
		    r->length >= NBD_SPARSE_MIN && req_ext(q)) {
			q->stage = RQ_READ_STATUS;
			ret = submit(q, BD_OP_BLOCK_STATUS, r->offset, r->length, 0, READ_EXTENTS);
		} else {
			q->stage = RQ_READ;
			ret = submit(q, BD_OP_READ, r->offset, r->length, 0, 0);
		}
		break;
	case NBD_CMD_WRITE:
		if (!r->length) {
			nbd_reply_ok(q);
			return;
		}
		if ((r->flags & NBD_CMD_FLAG_FUA) || conn->writethrough)
			fl |= BD_REQ_FUA;
		q->stage = RQ_WRITE;
		conn->dirty = true;
		ret = submit(q, BD_OP_WRITE, r->offset, r->length, fl, 0);
		break;
	case NBD_CMD_FLUSH:
		q->stage = RQ_FLUSH;
		ret = submit(q, BD_OP_FLUSH, 0, 0, 0, 0);
		break;
	case NBD_CMD_TRIM:
		if (!r->length) {
			nbd_reply_ok(q);
			return;
		}
		q->stage = RQ_TRIM;
		conn->dirty = true;
		ret = submit(q, BD_OP_DISCARD, r->offset, r->length, 0, 0);
		break;
	case NBD_CMD_CACHE:
		if (!r->length || !conn->can_cache) {
			nbd_reply_ok(q);
			return;
		}
		q->stage = RQ_CACHE;
		ret = submit(q, BD_OP_CACHE, r->offset, r->length, 0, 0);
		break;
	case NBD_CMD_WRITE_ZEROES:
		if (!r->length) {
			nbd_reply_ok(q);
			return;
		}
		if (r->flags & NBD_CMD_FLAG_FAST_ZERO) {
			if (!conn->fast_zero) {
				nbd_reply_error(q, NBD_ENOTSUP);
				return;
			}
			fl |= BD_REQ_NO_FALLBACK;
		}
		if ((r->flags & NBD_CMD_FLAG_FUA) || conn->writethrough)
			fl |= BD_REQ_FUA;
		if (!(r->flags & NBD_CMD_FLAG_NO_HOLE))
			fl |= BD_REQ_MAY_UNMAP;
		q->stage = RQ_WRITE_ZEROES;
		conn->dirty = true;
		ret = submit(q, BD_OP_WRITE_ZEROES, r->offset, r->length, fl, 0);
		break;
	case NBD_CMD_BLOCK_STATUS:
		if (!q->effect_len || !q->ctx_mask) {
			nbd_reply_error(q, NBD_EINVAL);
			return;
		}
		if (!req_ext(q)) {
			nbd_reply_error(q, NBD_ENOMEM);
			return;
		}
		q->stage = RQ_BLOCK_STATUS;
		if (r->flags & NBD_CMD_FLAG_REQ_ONE)
			ret = submit(q, BD_OP_BLOCK_STATUS, r->offset, q->effect_len, BD_REQ_BS_ONE,
				     1);
		else
			ret = submit(q, BD_OP_BLOCK_STATUS, r->offset, q->effect_len, 0,
				     NBD_BS_EXTENTS);
		break;
	default:
		nbd_reply_error(q, NBD_EINVAL);
		return;
	}
	if (ret < 0) {
		if (q->stage == RQ_WRITE_ZEROES && ret == -ENOTSUP &&
		    !(r->flags & NBD_CMD_FLAG_FAST_ZERO))
			ret = -EINVAL;
		if (q->stage == RQ_TRIM && ret == -ENOTSUP) {
			nbd_reply_ok(q); /* a hint it could not take */
			return;
		}
		nbd_reply_errno(q, ret);
	}
}

static void stage_done(struct nbd_req *q, int ret, unsigned nr_ext)
{
	struct nbd_conn *conn = q->conn;
	uint64_t pos;
	unsigned i;

	switch (q->stage) {
	case RQ_READ_STATUS:
		q->nr_ext = 0;
		if (!ret && nr_ext) {
			bool all_zero = true;
			q->nr_ext = nr_ext > READ_EXTENTS ? READ_EXTENTS : nr_ext;
			for (i = 0, pos = 0; i < q->nr_ext && pos < q->r.length; i++) {
				if (!(q->ext[i].flags & BD_EXT_ZERO))
					all_zero = false;
				pos += q->ext[i].length;
			}
			if (all_zero && pos >= q->r.length) {
				nbd_reply_read(q); /* nothing to read: holes only */
				return;
			}
		}
		q->stage = RQ_READ;
		ret = submit(q, BD_OP_READ, q->r.offset, q->r.length, 0, 0);
		if (ret < 0)
			nbd_reply_errno(q, ret);
		return;
	case RQ_READ:
		if (ret)
			nbd_reply_errno(q, ret);
		else
			nbd_reply_read(q);
		return;
	case RQ_TRIM:
		if (ret == -ENOTSUP)
			ret = 0;
		if (!ret && ((q->r.flags & NBD_CMD_FLAG_FUA) || conn->writethrough)) {
			q->stage = RQ_TRIM_FLUSH;
			ret = submit(q, BD_OP_FLUSH, 0, 0, 0, 0);
			if (ret < 0)
				nbd_reply_errno(q, ret);
			return;
		}
		nbd_reply_errno(q, ret);
		return;
	case RQ_WRITE_ZEROES:
		if (ret == -ENOTSUP && !(q->r.flags & NBD_CMD_FLAG_FAST_ZERO))
			ret = -EINVAL;
		nbd_reply_errno(q, ret);
		return;
	case RQ_BLOCK_STATUS:
		if (ret) {
			nbd_reply_errno(q, ret);
			return;
		}
		q->nr_ext = nr_ext > NBD_BS_EXTENTS ? NBD_BS_EXTENTS : nr_ext;
		nbd_reply_block_status(q);
		return;
	case RQ_CACHE:
	case RQ_WRITE:
	case RQ_FLUSH:
	case RQ_TRIM_FLUSH:
		if (ret == -ENOTSUP && q->stage != RQ_WRITE)
			ret = q->stage == RQ_CACHE ? 0 : -EINVAL;
		nbd_reply_errno(q, ret);
		return;
	case RQ_FINAL_FLUSH:
	case RQ_NONE:
		if (ret)
			bd_log(BD_LOG_WARN, "nbd: flush at disconnect failed: %s", strerror(-ret));
		nbd_req_release(q);
		return;
	}
}

static void breq_done(struct bd_req *br, int ret)
{
	struct nbd_req *q = br->opaque;
	struct nbd_conn *conn = q->conn;
	unsigned nr = br->nr_extents;

	bd_req_put(br);
	conn->nbusy--;
	if (conn->dead)
		nbd_req_release(q);
	else
		stage_done(q, ret, nr);
	nbd_conn_maybe_finish(conn);
}

/* ---- Receive --------------------------------------------------------------------------------- */

static bool throttled(const struct nbd_conn *conn)
{
	return conn->nreqs >= NBD_MAX_INFLIGHT || conn->inflight_bytes >= NBD_MAX_INFLIGHT_BYTES;
}

void nbd_conn_dead(struct nbd_conn *conn, const char *why)
{
	if (conn->dead)
		return;
	bd_log(BD_LOG_DEBUG, "nbd: connection %llu closed: %s", (unsigned long long)conn->id, why);
	conn->dead = true;
	shutdown(conn->fd, SHUT_RDWR); /* wakes pending recv / send */
}

/* The client broke the protocol: read nothing more, answer what is in flight, then close. */
static void conn_violation(struct nbd_conn *conn, const char *why)
{
	bd_log(BD_LOG_INFO, "nbd: connection %llu: %s; closing", (unsigned long long)conn->id, why);
	conn->draining = true;
}

/* A request's payload is complete. */
static void payload_done(struct nbd_conn *conn)
{
	struct nbd_req *q = conn->pay;
	uint32_t e;

	conn->pay = NULL;
	if (q->r.type == NBD_CMD_BLOCK_STATUS) {
		e = nbd_parse_bs_payload(&conn->sess, q->r.offset, q->buf, conn->pay_len,
					 &q->effect_len, &q->ctx_mask);
		conn->inflight_bytes -= q->charged;
		q->charged = 0;
		if (e) {
			nbd_reply_error(q, e);
			return;
		}
	}
	req_dispatch(q);
}

static void handle_header(struct nbd_conn *conn, const struct nbd_request *r)
{
	struct nbd_check chk;
	struct nbd_req *q;

	nbd_check_request(&conn->sess, r, &chk);
	if (chk.close) {
		conn_violation(conn, "bad payload length");
		return;
	}
	if (chk.no_reply) {
		conn->draining = true; /* NBD_CMD_DISC */
		bd_log(BD_LOG_DEBUG, "nbd: connection %llu: disconnect requested",
		       (unsigned long long)conn->id);
		return;
	}
	q = req_new(conn, r);
	if (chk.error) {
		conn->skip = chk.payload;
		nbd_reply_error(q, chk.error);
		return;
	}
	if (r->type == NBD_CMD_BLOCK_STATUS && !chk.payload) {
		q->effect_len = r->length;
		q->ctx_mask = conn->sess.contexts;
	}
	if (chk.payload) {
		if (!req_buf(q, chk.payload)) {
			conn->skip = chk.payload;
			nbd_reply_error(q, NBD_ENOMEM);
			return;
		}
		conn->pay = q;
		conn->pay_len = chk.payload;
		conn->pay_fill = 0;
		return;
	}
	req_dispatch(q);
}

static void rx_process(struct nbd_conn *conn)
{
	struct nbd_request r;
	int n;

	for (;;) {
		uint32_t avail = conn->rx_tail - conn->rx_head;
		if (conn->dead || conn->draining)
			return;
		if (conn->pay) {
			uint64_t want = conn->pay_len - conn->pay_fill;
			if (want > avail)
				want = avail;
			memcpy((uint8_t *)conn->pay->buf + conn->pay_fill, conn->rx + conn->rx_head,
			       want);
			conn->rx_head += (uint32_t)want;
			conn->pay_fill += want;
			if (conn->pay_fill < conn->pay_len)
				return;
			payload_done(conn);
			continue;
		}
		if (conn->skip) {
			uint64_t s = conn->skip < avail ? conn->skip : avail;
			conn->rx_head += (uint32_t)s;
			conn->skip -= s;
			if (conn->skip)
				return;
			continue;
		}
		if (throttled(conn))
			return;
		n = nbd_parse_request(conn->rx + conn->rx_head, avail, conn->sess.extended, &r);
		if (n == 0)
			return;
		if (n < 0) {
			conn_violation(conn, "bad request magic");
			return;
		}
		conn->rx_head += (uint32_t)n;
		handle_header(conn, &r);
	}
}

static void rx_done(struct bd_io *io, int res)
{
	struct nbd_conn *conn = nbd_container_of(io, struct nbd_conn, rx_io);

	conn->rx_busy = false;
	if (res == -EINTR || res == -EAGAIN) {
		rx_submit(conn);
		return;
	}
	if (res <= 0) {
		if (conn->rx_direct) {
			conn->rx_direct = false;
		}
		if (res < 0)
			nbd_conn_dead(conn, "receive error");
		else if (!conn->dead)
			conn->draining = true; /* EOF: answer what is in flight, then close */
		nbd_conn_maybe_finish(conn);
		return;
	}
	if (conn->rx_direct) {
		conn->rx_direct = false;
		conn->pay_fill += (uint64_t)res;
		if (!conn->dead && conn->pay_fill == conn->pay_len)
			payload_done(conn);
	} else {
		conn->rx_tail += (uint32_t)res;
	}
	rx_process(conn);
	rx_submit(conn);
	nbd_conn_maybe_finish(conn);
}

static void rx_submit(struct nbd_conn *conn)
{
	struct io_uring_sqe *sqe;

	if (conn->rx_busy || conn->dead || conn->draining)
		return;
	if (!conn->pay && !conn->skip && throttled(conn))
		return;
	if (conn->pay && conn->rx_head == conn->rx_tail &&
	    conn->pay_len - conn->pay_fill >= NBD_DIRECT_MIN) {
		sqe = bd_loop_sqe(conn->loop);
		io_uring_prep_recv(sqe, conn->fd, (uint8_t *)conn->pay->buf + conn->pay_fill,
				   conn->pay_len - conn->pay_fill, MSG_WAITALL);
		conn->rx_direct = true;
	} else {
		if (conn->rx_head == conn->rx_tail) {
			conn->rx_head = conn->rx_tail = 0;
		} else if (conn->rx_head) {
			memmove(conn->rx, conn->rx + conn->rx_head, conn->rx_tail - conn->rx_head);
			conn->rx_tail -= conn->rx_head;
			conn->rx_head = 0;
		}
		if (conn->rx_tail == NBD_RX_BUF)
			return; /* full of parsed-later requests: resumes when some complete */
		sqe = bd_loop_sqe(conn->loop);
		io_uring_prep_recv(sqe, conn->fd, conn->rx + conn->rx_tail,
				   NBD_RX_BUF - conn->rx_tail, 0);
	}
	bd_io_attach(sqe, &conn->rx_io);
	conn->rx_busy = true;
}

static void rx_defer_fn(struct bd_defer *d)
{
	struct nbd_conn *conn = nbd_container_of(d, struct nbd_conn, rx_defer);

	conn->rx_defer_queued = false;
	rx_process(conn);
	rx_submit(conn);
	nbd_conn_maybe_finish(conn);
}

/* ---- Lifecycle ------------------------------------------------------------------------------- */

void nbd_conn_maybe_finish(struct nbd_conn *conn)
{
	struct nbd_req *q;

	if (!conn->dead && !conn->draining)
		return;
	if (conn->dead) {
		if (conn->pay && !(conn->rx_busy && conn->rx_direct)) {
			nbd_req_release(conn->pay);
			conn->pay = NULL;
		}
		if (!conn->tx_busy)
			nbd_drop_sendq(conn);
	}
	if (conn->rx_busy || conn->tx_busy || conn->nbusy || conn->sendq)
		return;
	if (conn->tx_defer_queued || conn->rx_defer_queued)
		return;
	if (conn->pay) {
		/* EOF in the middle of a payload: that request never runs */
		nbd_req_release(conn->pay);
		conn->pay = NULL;
		if (conn->rx_defer_queued)
			return;
	}
	if (!conn->dead && conn->dirty && !conn->final_flush) {
		conn->final_flush = true;
		q = req_new(conn, NULL);
		q->stage = RQ_FINAL_FLUSH;
		if (submit(q, BD_OP_FLUSH, 0, 0, 0, 0) == 0)
			return;
		nbd_req_release(q);
		if (conn->rx_defer_queued)
			return;
	}

	/* Nothing left in flight: release everything. */
	if (conn->nreqs)
		bd_log(BD_LOG_ERROR, "nbd: connection %llu: %u requests leaked at close",
		       (unsigned long long)conn->id, conn->nreqs);
	while ((q = conn->free_reqs)) {
		conn->free_reqs = q->next;
		req_free_mem(q);
	}
	conn->nfree = 0;
	free(conn->rx);
	conn->rx = NULL;
	if (conn->fd >= 0)
		close(conn->fd);
	conn->fd = -1;
	bd_log(BD_LOG_DEBUG, "nbd: connection %llu finished", (unsigned long long)conn->id);
	/* After this store the main loop may free conn at any time. */
	atomic_store(&conn->loop_done, true);
	nbd_server_conn_released();
}

void nbd_conn_start(void *arg)
{
	struct nbd_conn *conn = arg;
	const struct bd_limits *lim = bd_node_limits(conn->node);

	conn->ch = bd_node_chan(conn->node, conn->loop);
	conn->rx_io.done = rx_done;
	conn->tx_io.done = nbd_tx_done;
	conn->tx_defer.fn = nbd_tx_defer_fn;
	conn->rx_defer.fn = rx_defer_fn;
	conn->sparse_reads =
	    lim && (lim->ops & BD_OP_BIT(BD_OP_BLOCK_STATUS)) && !lim->block_status_costly;
	conn->can_cache = bd_node_can(conn->node, BD_OP_CACHE);
	conn->fast_zero = bd_node_fast_zero(conn->node);
	if (!conn->ch) {
		nbd_conn_dead(conn, "no channel for the node");
		nbd_conn_maybe_finish(conn);
		return;
	}
	rx_process(conn);
	rx_submit(conn);
	nbd_conn_maybe_finish(conn);
}

void nbd_conn_kill(void *arg)
{
	struct nbd_conn *conn = arg;

	if (atomic_load(&conn->loop_done))
		return;
	nbd_conn_dead(conn, "dropped by the server");
	nbd_conn_maybe_finish(conn);
}

void nbd_conn_drain(void *arg)
{
	struct nbd_conn *conn = arg;

	if (atomic_load(&conn->loop_done) || conn->dead)
		return;
	conn->draining = true;
	shutdown(conn->fd, SHUT_RD); /* the pending recv returns 0 */
	nbd_conn_maybe_finish(conn);
}
