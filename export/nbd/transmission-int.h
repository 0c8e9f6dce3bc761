/*
 * transmission-int.h - the NBD transmission phase's request object, shared by transmission.c
 * (receive, dispatch, lifecycle) and transmission-send.c (replies and the send queue).  Every
 * function here runs on the connection's I/O loop (conn->loop).
 */
#ifndef NBD_TRANSMISSION_INT_H
#define NBD_TRANSMISSION_INT_H

#include "export/nbd/nbd-int.h"

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

/* transmission.c */
/* Back to the connection's free list (or freed); resumes reading paused on the limits. */
void nbd_req_release(struct nbd_req *q);
/* The connection is gone: stop all I/O (shutdown wakes the pending recv and send). */
void nbd_conn_dead(struct nbd_conn *conn, const char *why);
/* Close the connection once nothing is in flight (after death or a drain). */
void nbd_conn_maybe_finish(struct nbd_conn *conn);

/* transmission-send.c: each reply is queued, then sent by the deferred flush. */
void nbd_reply_error(struct nbd_req *q, uint32_t error);
void nbd_reply_ok(struct nbd_req *q);
/* Answer a request with -errno ret (0: success). */
void nbd_reply_errno(struct nbd_req *q, int ret);
/* READ: simple, structured (one data or hole chunk) or sparse (chunks over q->ext). */
void nbd_reply_read(struct nbd_req *q);
void nbd_reply_block_status(struct nbd_req *q);
/* Release every queued reply (a dead connection). */
void nbd_drop_sendq(struct nbd_conn *conn);
/* conn->tx_io.done and conn->tx_defer.fn */
void nbd_tx_done(struct bd_io *io, int res);
void nbd_tx_defer_fn(struct bd_defer *d);

#endif /* NBD_TRANSMISSION_INT_H */
