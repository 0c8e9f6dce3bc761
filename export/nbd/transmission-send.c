/*
 * transmission-send.c - the NBD transmission phase's send path: replies built for a request
 * (simple, or structured chunks: errors, reads as data and hole chunks, block status in
 * either extent format) and the connection's send queue.  [the connection's I/O loop]
 *
 * Replies queue up and a deferred flush sends them with one sendmsg of many iovecs per loop
 * iteration (read data straight from the request buffers); partial sends resume where they
 * stopped, and a sent request goes back to the free list.
 */
#include "export/nbd/transmission-int.h"

#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

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
		nbd_req_release(q);
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

void nbd_reply_error(struct nbd_req *q, uint32_t error)
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

void nbd_reply_ok(struct nbd_req *q)
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
void nbd_reply_errno(struct nbd_req *q, int ret)
{
	if (ret)
		nbd_reply_error(q, nbd_errno_to_nbd(ret));
	else
		nbd_reply_ok(q);
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

void nbd_reply_read(struct nbd_req *q)
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
			nbd_reply_error(q, NBD_ENOMEM);
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

void nbd_reply_block_status(struct nbd_req *q)
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
			nbd_reply_error(q, NBD_EIO);
			return;
		}
		bytes += NBD_EXT_CHUNK_SIZE + 8 + 16 * (size_t)nd[c];
		last = c;
		nchunks++;
	}
	rep_reset(q);
	if (!nchunks || !rep_reserve(q, nchunks, bytes)) {
		nbd_reply_error(q, nchunks ? NBD_ENOMEM : NBD_EINVAL);
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

/* ---- Send ------------------------------------------------------------------------------------ */

void nbd_drop_sendq(struct nbd_conn *conn)
{
	struct nbd_req *q;

	while ((q = conn->sendq)) {
		conn->sendq = q->next;
		nbd_req_release(q);
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

void nbd_tx_done(struct bd_io *io, int res)
{
	struct nbd_conn *conn = nbd_container_of(io, struct nbd_conn, tx_io);
	size_t done;

	conn->tx_busy = false;
	if (res == -EINTR || res == -EAGAIN) {
		if (!conn->dead)
			tx_submit(conn);
		nbd_conn_maybe_finish(conn);
		return;
	}
	if (res <= 0 || conn->dead) {
		nbd_conn_dead(conn, res < 0 ? "send error" : "send returned 0");
		nbd_drop_sendq(conn);
		nbd_conn_maybe_finish(conn);
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
		nbd_req_release(q);
	}
	if (conn->sendq)
		tx_submit(conn);
	nbd_conn_maybe_finish(conn);
}

void nbd_tx_defer_fn(struct bd_defer *d)
{
	struct nbd_conn *conn = nbd_container_of(d, struct nbd_conn, tx_defer);

	conn->tx_defer_queued = false;
	if (!conn->tx_busy && !conn->dead && conn->sendq)
		tx_submit(conn);
	nbd_conn_maybe_finish(conn);
}
