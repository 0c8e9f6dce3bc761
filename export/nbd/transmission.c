/*
 * transmission.c - the NBD transmission phase of one connection, on the I/O loop the connection
 * was handed to (conn->loop); every function here runs on that loop.
 *
 * Receive: one recv at a time into a 256 KiB buffer; every complete request in it is parsed
 * (pipelining).  A write payload is copied out of the buffer, or, when a large part is still to
 * come, received straight into the request's buffer.  Up to NBD_MAX_INFLIGHT requests (and
 * NBD_MAX_INFLIGHT_BYTES of payload) per connection; past that, reading pauses.
 * Dispatch: each request becomes one or two bd_req on the node's channel for this loop.
 * Send: replies queue up and a deferred flush sends them with one sendmsg of many iovecs per
 * loop iteration (data straight from the request buffers); partial sends resume where they
 * stopped.  Request objects and their buffers are recycled through a per-connection free list.
 * Teardown: a connection that dies (error, client gone, killed) stops all I/O; requests still at
 * the node complete into the void; when nothing is pending the socket is closed, everything is
 * freed and the main loop is told (nbd_server_conn_released).
 */
#include "export/nbd/nbd-int.h"

#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

enum rq_stage {
	RQ_NONE,
	RQ_READ_STATUS, /* structured read: where are the holes? */
	RQ_READ,
	RQ_WRITE,
	RQ_FLUSH,
	RQ_TRIM,
	RQ_TRIM_FLUSH, /* TRIM with FUA: the flush after the discard */
	RQ_CACHE,
	RQ_WRITE_ZEROES,
	RQ_BLOCK_STATUS,
	RQ_FINAL_FLUSH, /* graceful close of a connection that wrote */
};

#define READ_EXTENTS 64 /* extents asked for before a sparse read */

struct nbd_req {
	struct nbd_conn *conn;
	struct nbd_req *next; /* free list or send queue */
	struct nbd_request r;
	enum rq_stage stage;
	uint32_t ctx_mask;   /* BLOCK_STATUS: contexts to answer */
	uint64_t effect_len; /* BLOCK_STATUS: range of interest */

	void *buf; /* payload / read data, bd_io_alloc'ed, kept for reuse */
	size_t buf_cap;
	size_t charged; /* bytes counted in conn->inflight_bytes */
	struct iovec data_iov;
	struct bd_extent *ext; /* NBD_BS_EXTENTS entries, kept for reuse */
	unsigned nr_ext;

	/* The reply: iovecs over hdr, rbuf and buf. */
	uint8_t hdr[48];
	struct iovec riov_in[2];
	struct iovec *riov;
	unsigned riovcnt, riov_cap;
	struct iovec *riov_dyn;
	unsigned riov_dyn_cap;
	uint8_t *rbuf;
	size_t rbuf_cap;
	size_t rlen;
};

static void conn_maybe_finish(struct nbd_conn *conn);
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

static void req_release(struct nbd_req *q)
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

/* ---- Replies --------------------------------------------------------------------------------- */

/* Room for niov iovecs and nbytes of reply bytes in rbuf. */
static bool rep_reserve(struct nbd_req *q, unsigned niov, size_t nbytes)
{
	if (niov > 2) {
		if (q->riov_dyn_cap < niov) {
			struct iovec *v = realloc(q->riov_dyn, niov * sizeof(*v));
			if (!v)
				return false;
			q->riov_dyn = v;
			q->riov_dyn_cap = niov;
		}
		q->riov = q->riov_dyn;
		q->riov_cap = q->riov_dyn_cap;
	}
	if (q->rbuf_cap < nbytes) {
		uint8_t *b = realloc(q->rbuf, nbytes);
		if (!b)
			return false;
		q->rbuf = b;
		q->rbuf_cap = nbytes;
	}
	return true;
}

static void rep_iov(struct nbd_req *q, void *p, size_t n)
{
	q->riov[q->riovcnt].iov_base = p;
	q->riov[q->riovcnt].iov_len = n;
	q->riovcnt++;
	q->rlen += n;
}

static void rep_reset(struct nbd_req *q)
{
	q->riov = q->riov_in;
	q->riov_cap = 2;
	q->riovcnt = 0;
	q->rlen = 0;
}

static void queue_reply(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;

	if (conn->dead) {
		req_release(q);
		return;
	}
	q->next = NULL;
	if (conn->sendq_tail)
		conn->sendq_tail->next = q;
	else
		conn->sendq = q;
	conn->sendq_tail = q;
	conn->tx_defer_queued = true;
	bd_loop_defer(conn->loop, &conn->tx_defer);
}

static void reply_error(struct nbd_req *q, uint32_t error)
{
	struct nbd_conn *conn = q->conn;
	size_t n;

	rep_reset(q);
	if (!error)
		error = NBD_EIO;
	if (conn->sess.structured) {
		n = nbd_put_chunk(q->hdr, conn->sess.extended, NBD_REPLY_FLAG_DONE,
				  NBD_REPLY_TYPE_ERROR, q->r.cookie, q->r.offset, 6);
		nbd_put32(q->hdr + n, error);
		nbd_put16(q->hdr + n + 4, 0);
		rep_iov(q, q->hdr, n + 6);
	} else {
		rep_iov(q, q->hdr, nbd_put_simple_reply(q->hdr, error, q->r.cookie));
	}
	queue_reply(q);
}

static void reply_ok(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;

	rep_reset(q);
	if (conn->sess.extended)
		rep_iov(q, q->hdr,
			nbd_put_chunk(q->hdr, true, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE,
				      q->r.cookie, q->r.offset, 0));
	else
		rep_iov(q, q->hdr, nbd_put_simple_reply(q->hdr, 0, q->r.cookie));
	queue_reply(q);
}

/* Answer a request with -errno ret (0: success). */
static void reply_errno(struct nbd_req *q, int ret)
{
	if (ret)
		reply_error(q, nbd_errno_to_nbd(ret));
	else
		reply_ok(q);
}

/* One content chunk header (+ its fixed payload) into p; returns its size. */
static size_t put_content(struct nbd_conn *conn, uint8_t *p, struct nbd_req *q, bool hole,
			  uint64_t off, uint64_t len, bool last)
{
	size_t n = nbd_put_chunk(p, conn->sess.extended, last ? NBD_REPLY_FLAG_DONE : 0,
				 hole ? NBD_REPLY_TYPE_OFFSET_HOLE : NBD_REPLY_TYPE_OFFSET_DATA,
				 q->r.cookie, q->r.offset, hole ? 12 : 8 + len);
	nbd_put64(p + n, off);
	if (hole) {
		nbd_put32(p + n + 8, (uint32_t)len);
		return n + 12;
	}
	return n + 8;
}

/* Sparse structured read: chunks following the extents in q->ext (the rest is data). */
static bool reply_read_sparse(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;
	uint64_t len = q->r.length, pos = 0;
	unsigned i = 0, nchunks = 0, k;
	struct {
		uint64_t off, len;
		bool hole;
	} ch[READ_EXTENTS + 1];
	uint8_t *p;

	while (pos < len) {
		uint64_t l;
		bool hole;
		if (i < q->nr_ext) {
			l = q->ext[i].length;
			hole = q->ext[i].flags & BD_EXT_ZERO;
			i++;
			if (!l)
				continue;
			if (l > len - pos)
				l = len - pos;
		} else {
			l = len - pos;
			hole = false;
		}
		if (nchunks && ch[nchunks - 1].hole == hole) {
			ch[nchunks - 1].len += l;
		} else {
			if (nchunks == READ_EXTENTS + 1)
				return false;
			ch[nchunks].off = pos;
			ch[nchunks].len = l;
			ch[nchunks].hole = hole;
			nchunks++;
		}
		pos += l;
	}
	if (!rep_reserve(q, 2 * nchunks, (size_t)nchunks * 44))
		return false;
	p = q->rbuf;
	for (k = 0; k < nchunks; k++) {
		size_t n = put_content(conn, p, q, ch[k].hole, q->r.offset + ch[k].off, ch[k].len,
				       k == nchunks - 1);
		rep_iov(q, p, n);
		if (!ch[k].hole)
			rep_iov(q, (uint8_t *)q->buf + ch[k].off, ch[k].len);
		p += n;
	}
	return true;
}

static void reply_read(struct nbd_req *q)
{
	struct nbd_conn *conn = q->conn;
	uint64_t len = q->r.length;
	size_t n;

	rep_reset(q);
	if (!conn->sess.structured) {
		rep_iov(q, q->hdr, nbd_put_simple_reply(q->hdr, 0, q->r.cookie));
		if (len)
			rep_iov(q, q->buf, len);
	} else if (!len) {
		rep_iov(q, q->hdr,
			nbd_put_chunk(q->hdr, conn->sess.extended, NBD_REPLY_FLAG_DONE,
				      NBD_REPLY_TYPE_NONE, q->r.cookie, q->r.offset, 0));
	} else if (q->nr_ext) {
		if (!reply_read_sparse(q)) {
			reply_error(q, NBD_ENOMEM);
			return;
		}
	} else if (bd_buf_is_zero(q->buf, len)) {
		rep_iov(q, q->hdr, put_content(conn, q->hdr, q, true, q->r.offset, len, true));
	} else {
		n = put_content(conn, q->hdr, q, false, q->r.offset, len, true);
		rep_iov(q, q->hdr, n);
		rep_iov(q, q->buf, len);
	}
	queue_reply(q);
}

static void reply_block_status(struct nbd_req *q)
{
	static const uint32_t ids[2] = {NBD_CTX_BASE_ALLOCATION, NBD_CTX_QEMU_DEPTH};
	static const uint32_t bits[2] = {NBD_CTX_MASK_BASE, NBD_CTX_MASK_DEPTH};
	struct nbd_conn *conn = q->conn;
	bool ext = conn->sess.extended;
	struct nbd_desc d[2][NBD_BS_EXTENTS];
	unsigned nd[2] = {0, 0}, c, last = 0, nchunks = 0;
	size_t bytes = 0;
	uint8_t *p;

	for (c = 0; c < 2; c++) {
		if (!(q->ctx_mask & bits[c]))
			continue;
		nd[c] = nbd_bs_translate(q->ext, q->nr_ext, ids[c], q->effect_len,
					 q->r.flags & NBD_CMD_FLAG_REQ_ONE, conn->sess.min_block,
					 ext, d[c], NBD_BS_EXTENTS);
		if (!nd[c]) {
			reply_error(q, NBD_EIO);
			return;
		}
		bytes += NBD_EXT_CHUNK_SIZE + 8 + 16 * (size_t)nd[c];
		last = c;
		nchunks++;
	}
	rep_reset(q);
	if (!nchunks || !rep_reserve(q, nchunks, bytes)) {
		reply_error(q, nchunks ? NBD_ENOMEM : NBD_EINVAL);
		return;
	}
	p = q->rbuf;
	for (c = 0; c < 2; c++) {
		size_t hn, pn;
		if (!nd[c])
			continue;
		/* payload first (after room for the header), then the header knowing its size */
		hn = ext ? NBD_EXT_CHUNK_SIZE : NBD_CHUNK_SIZE;
		pn = nbd_bs_encode(p + hn, ext, ids[c], d[c], nd[c]);
		nbd_put_chunk(p, ext, c == last ? NBD_REPLY_FLAG_DONE : 0,
			      ext ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT : NBD_REPLY_TYPE_BLOCK_STATUS,
			      q->r.cookie, q->r.offset, pn);
		rep_iov(q, p, hn + pn);
		p += hn + pn;
	}
	queue_reply(q);
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
			reply_read(q);
			return;
		}
		if (!req_buf(q, r->length)) {
			reply_error(q, NBD_ENOMEM);
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
			reply_ok(q);
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
			reply_ok(q);
			return;
		}
		q->stage = RQ_TRIM;
		conn->dirty = true;
		ret = submit(q, BD_OP_DISCARD, r->offset, r->length, 0, 0);
		break;
	case NBD_CMD_CACHE:
		if (!r->length || !conn->can_cache) {
			reply_ok(q);
			return;
		}
		q->stage = RQ_CACHE;
		ret = submit(q, BD_OP_CACHE, r->offset, r->length, 0, 0);
		break;
	case NBD_CMD_WRITE_ZEROES:
		if (!r->length) {
			reply_ok(q);
			return;
		}
		if (r->flags & NBD_CMD_FLAG_FAST_ZERO) {
			if (!conn->fast_zero) {
				reply_error(q, NBD_ENOTSUP);
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
			reply_error(q, NBD_EINVAL);
			return;
		}
		if (!req_ext(q)) {
			reply_error(q, NBD_ENOMEM);
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
		reply_error(q, NBD_EINVAL);
		return;
	}
	if (ret < 0) {
		if (q->stage == RQ_WRITE_ZEROES && ret == -ENOTSUP &&
		    !(r->flags & NBD_CMD_FLAG_FAST_ZERO))
			ret = -EINVAL;
		if (q->stage == RQ_TRIM && ret == -ENOTSUP) {
			reply_ok(q); /* a hint it could not take */
			return;
		}
		reply_errno(q, ret);
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
				reply_read(q); /* nothing to read: holes only */
				return;
			}
		}
		q->stage = RQ_READ;
		ret = submit(q, BD_OP_READ, q->r.offset, q->r.length, 0, 0);
		if (ret < 0)
			reply_errno(q, ret);
		return;
	case RQ_READ:
		if (ret)
			reply_errno(q, ret);
		else
			reply_read(q);
		return;
	case RQ_TRIM:
		if (ret == -ENOTSUP)
			ret = 0;
		if (!ret && ((q->r.flags & NBD_CMD_FLAG_FUA) || conn->writethrough)) {
			q->stage = RQ_TRIM_FLUSH;
			ret = submit(q, BD_OP_FLUSH, 0, 0, 0, 0);
			if (ret < 0)
				reply_errno(q, ret);
			return;
		}
		reply_errno(q, ret);
		return;
	case RQ_WRITE_ZEROES:
		if (ret == -ENOTSUP && !(q->r.flags & NBD_CMD_FLAG_FAST_ZERO))
			ret = -EINVAL;
		reply_errno(q, ret);
		return;
	case RQ_BLOCK_STATUS:
		if (ret) {
			reply_errno(q, ret);
			return;
		}
		q->nr_ext = nr_ext > NBD_BS_EXTENTS ? NBD_BS_EXTENTS : nr_ext;
		reply_block_status(q);
		return;
	case RQ_CACHE:
	case RQ_WRITE:
	case RQ_FLUSH:
	case RQ_TRIM_FLUSH:
		if (ret == -ENOTSUP && q->stage != RQ_WRITE)
			ret = q->stage == RQ_CACHE ? 0 : -EINVAL;
		reply_errno(q, ret);
		return;
	case RQ_FINAL_FLUSH:
	case RQ_NONE:
		if (ret)
			bd_log(BD_LOG_WARN, "nbd: flush at disconnect failed: %s", strerror(-ret));
		req_release(q);
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
		req_release(q);
	else
		stage_done(q, ret, nr);
	conn_maybe_finish(conn);
}

/* ---- Receive --------------------------------------------------------------------------------- */

static bool throttled(const struct nbd_conn *conn)
{
	return conn->nreqs >= NBD_MAX_INFLIGHT || conn->inflight_bytes >= NBD_MAX_INFLIGHT_BYTES;
}

static void conn_dead(struct nbd_conn *conn, const char *why)
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
			reply_error(q, e);
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
		reply_error(q, chk.error);
		return;
	}
	if (r->type == NBD_CMD_BLOCK_STATUS && !chk.payload) {
		q->effect_len = r->length;
		q->ctx_mask = conn->sess.contexts;
	}
	if (chk.payload) {
		if (!req_buf(q, chk.payload)) {
			conn->skip = chk.payload;
			reply_error(q, NBD_ENOMEM);
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
			conn_dead(conn, "receive error");
		else if (!conn->dead)
			conn->draining = true; /* EOF: answer what is in flight, then close */
		conn_maybe_finish(conn);
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
	conn_maybe_finish(conn);
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
	conn_maybe_finish(conn);
}

/* ---- Send ------------------------------------------------------------------------------------ */

static void drop_sendq(struct nbd_conn *conn)
{
	struct nbd_req *q;

	while ((q = conn->sendq)) {
		conn->sendq = q->next;
		req_release(q);
	}
	conn->sendq_tail = NULL;
	conn->tx_off = 0;
}

static void tx_submit(struct nbd_conn *conn)
{
	struct io_uring_sqe *sqe;
	size_t skip = conn->tx_off;
	unsigned n = 0, i;
	struct nbd_req *q;

	for (q = conn->sendq; q && n < NBD_SEND_IOV; q = q->next) {
		for (i = 0; i < q->riovcnt && n < NBD_SEND_IOV; i++) {
			struct iovec v = q->riov[i];
			if (skip) {
				if (skip >= v.iov_len) {
					skip -= v.iov_len;
					continue;
				}
				v.iov_base = (uint8_t *)v.iov_base + skip;
				v.iov_len -= skip;
				skip = 0;
			}
			if (v.iov_len)
				conn->tx_iov[n++] = v;
		}
	}
	if (!n)
		return;
	memset(&conn->tx_msg, 0, sizeof(conn->tx_msg));
	conn->tx_msg.msg_iov = conn->tx_iov;
	conn->tx_msg.msg_iovlen = n;
	sqe = bd_loop_sqe(conn->loop);
	io_uring_prep_sendmsg(sqe, conn->fd, &conn->tx_msg, MSG_NOSIGNAL);
	bd_io_attach(sqe, &conn->tx_io);
	conn->tx_busy = true;
}

static void tx_done(struct bd_io *io, int res)
{
	struct nbd_conn *conn = nbd_container_of(io, struct nbd_conn, tx_io);
	size_t done;

	conn->tx_busy = false;
	if (res == -EINTR || res == -EAGAIN) {
		if (!conn->dead)
			tx_submit(conn);
		conn_maybe_finish(conn);
		return;
	}
	if (res <= 0 || conn->dead) {
		conn_dead(conn, res < 0 ? "send error" : "send returned 0");
		drop_sendq(conn);
		conn_maybe_finish(conn);
		return;
	}
	done = (size_t)res;
	while (done && conn->sendq) {
		struct nbd_req *q = conn->sendq;
		size_t left = q->rlen - conn->tx_off;
		if (done < left) {
			conn->tx_off += done;
			break;
		}
		done -= left;
		conn->tx_off = 0;
		conn->sendq = q->next;
		if (!conn->sendq)
			conn->sendq_tail = NULL;
		req_release(q);
	}
	if (conn->sendq)
		tx_submit(conn);
	conn_maybe_finish(conn);
}

static void tx_defer_fn(struct bd_defer *d)
{
	struct nbd_conn *conn = nbd_container_of(d, struct nbd_conn, tx_defer);

	conn->tx_defer_queued = false;
	if (!conn->tx_busy && !conn->dead && conn->sendq)
		tx_submit(conn);
	conn_maybe_finish(conn);
}

/* ---- Lifecycle ------------------------------------------------------------------------------- */

static void conn_maybe_finish(struct nbd_conn *conn)
{
	struct nbd_req *q;

	if (!conn->dead && !conn->draining)
		return;
	if (conn->dead) {
		if (conn->pay && !(conn->rx_busy && conn->rx_direct)) {
			req_release(conn->pay);
			conn->pay = NULL;
		}
		if (!conn->tx_busy)
			drop_sendq(conn);
	}
	if (conn->rx_busy || conn->tx_busy || conn->nbusy || conn->sendq)
		return;
	if (conn->tx_defer_queued || conn->rx_defer_queued)
		return;
	if (conn->pay) {
		/* EOF in the middle of a payload: that request never runs */
		req_release(conn->pay);
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
		req_release(q);
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
	conn->tx_io.done = tx_done;
	conn->tx_defer.fn = tx_defer_fn;
	conn->rx_defer.fn = rx_defer_fn;
	conn->sparse_reads =
	    lim && (lim->ops & BD_OP_BIT(BD_OP_BLOCK_STATUS)) && !lim->block_status_costly;
	conn->can_cache = bd_node_can(conn->node, BD_OP_CACHE);
	conn->fast_zero = bd_node_fast_zero(conn->node);
	if (!conn->ch) {
		conn_dead(conn, "no channel for the node");
		conn_maybe_finish(conn);
		return;
	}
	rx_process(conn);
	rx_submit(conn);
	conn_maybe_finish(conn);
}

void nbd_conn_kill(void *arg)
{
	struct nbd_conn *conn = arg;

	if (atomic_load(&conn->loop_done))
		return;
	conn_dead(conn, "dropped by the server");
	conn_maybe_finish(conn);
}

void nbd_conn_drain(void *arg)
{
	struct nbd_conn *conn = arg;

	if (atomic_load(&conn->loop_done) || conn->dead)
		return;
	conn->draining = true;
	shutdown(conn->fd, SHUT_RD); /* the pending recv returns 0 */
	conn_maybe_finish(conn);
}
