/*
 * nbd-int.h - objects shared by the NBD export's files (private to export/nbd/): exports
 * (export.c, control thread), connections (server.c on the main loop during the handshake,
 * transmission.c on one I/O loop afterwards) and the glue between them.
 *
 * Ownership of a connection: server.c allocates it on the main loop, runs the handshake there,
 * then hands it to an I/O loop with bd_loop_send().  From then on only that loop touches its
 * I/O state.  When the loop is done with it (socket closed, every buffer freed) it sets
 * loop_done and asks the main loop to reap it; the main loop unlinks and frees the struct and
 * drops the export reference.  The main loop talks to a connection on its loop only by messages
 * (bd_loop_call for kills, so the struct cannot be reaped underneath).
 */
#ifndef NBD_INT_H
#define NBD_INT_H

#include "blockd/blockd.h"
#include "export/nbd/nbd-proto.h"
#include "export/nbd/nbd.h"

#include <stdatomic.h>
#include <sys/socket.h>

#define nbd_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* Tunables. */
#define NBD_RX_BUF (256u << 10)		   /* per-connection receive buffer */
#define NBD_MAX_INFLIGHT 128		   /* requests per connection (parsed, not yet replied) */
#define NBD_MAX_INFLIGHT_BYTES (64u << 20) /* payload buffers per connection */
#define NBD_DIRECT_MIN (64u << 10)	   /* payload rests at least this large: recv in place */
#define NBD_SEND_IOV 512		   /* iovecs per sendmsg */
#define NBD_SPARSE_MIN (64u << 10)	   /* structured reads this large ask for holes first */
#define NBD_BS_EXTENTS 256		   /* extents per block status request */
#define NBD_KEEP_BUF (1u << 20)		   /* request buffers kept for reuse up to this size */
#define NBD_HANDSHAKE_SECONDS 10	   /* a client has this long to finish the handshake */

/* ---- Exports (export.c) [control] ------------------------------------------------------------ */
struct nbd_export {
	char *id;
	char *name;
	char *description;
	char *node_name;
	struct bd_node *node;
	struct bd_loop *loop; /* pinned iothread, or NULL: connections spread round-robin */
	bool writable, writethrough, allocation_depth;
	uint16_t tflags; /* transmission flags but DF / BLOCK_STAT_PAYLOAD (per connection) */
	uint32_t min_block, pref_block;
	int refcnt; /* the table's (until deleted) + one per connection in transmission */
	bool deleted;
	unsigned nconns; /* connections in transmission */
	struct nbd_export *next;
};

/* [control] Export by name for a client ("" picks the only export, if there is exactly one). */
struct nbd_export *nbd_export_lookup(const char *name);
/* [control] The i-th live export, or NULL. */
struct nbd_export *nbd_export_nth(unsigned i);
void nbd_export_info(struct nbd_export *exp, struct nbd_export_info *out);
void nbd_export_get(struct nbd_export *exp);
void nbd_export_put(struct nbd_export *exp);
/* [control] Delete every NBD export, dropping their clients. */
void nbd_export_del_all(void);

/* ---- Connections ----------------------------------------------------------------------------- */
struct nbd_req; /* transmission-int.h */

enum nbd_conn_phase {
	NBD_CONN_HANDSHAKE,    /* on the main loop (server.c) */
	NBD_CONN_TRANSMISSION, /* handed to conn->loop (transmission.c) */
};

struct nbd_conn {
	/* [control] */
	struct nbd_conn *next, *prev; /* the server's list of connections */
	enum nbd_conn_phase phase;
	struct nbd_export *exp; /* set when entering transmission */
	struct bd_loop *loop;	/* the loop serving the transmission phase */
	atomic_bool loop_done;	/* the loop released it: the main loop may free it */
	int fd;
	bool tcp;
	uint64_t id;

	/* Handshake [main loop]. */
	struct nbd_hs hs;
	bool hs_started;
	bool closing; /* handshake connection going away: wait for its I/O, then free */
	struct bd_timer hs_timer;

	/* Both phases: the receive buffer (the handshake's leftover bytes carry over). */
	uint8_t *rx;
	uint32_t rx_head, rx_tail;
	struct bd_io rx_io, tx_io;
	bool rx_busy, tx_busy;

	/* Transmission [conn->loop]. */
	struct nbd_session sess;
	struct bd_node *node;
	struct bd_chan *ch;
	bool sparse_reads; /* the node reports holes itself: worth asking before big reads */
	bool can_cache, fast_zero, writethrough;
	bool dead;	  /* socket gone or killed: no more I/O, replies dropped */
	bool draining;	  /* DISC or graceful shutdown: no more requests, finish the rest */
	bool dirty;	  /* wrote something: flush before a graceful close */
	bool final_flush; /* that flush was issued */
	bool rx_direct;	  /* the pending recv fills conn->pay's buffer in place */
	struct nbd_req *free_reqs;
	unsigned nfree;
	unsigned nreqs; /* allocated, not on the free list */
	unsigned nbusy; /* with the node */
	size_t inflight_bytes;
	struct nbd_req *pay; /* request whose payload is being received */
	uint64_t pay_len, pay_fill;
	uint64_t skip; /* payload bytes still to discard */
	struct nbd_req *sendq, *sendq_tail;
	size_t tx_off; /* bytes of sendq's head already sent */
	struct iovec tx_iov[NBD_SEND_IOV];
	struct msghdr tx_msg;
	struct bd_defer tx_defer;
	struct bd_defer rx_defer;	       /* resume parsing after throttling */
	bool tx_defer_queued, rx_defer_queued; /* the conn must outlive queued defers */
};

/* transmission.c: messages for bd_loop_send/bd_loop_call, run on conn->loop. */
void nbd_conn_start(void *conn); /* begin the transmission phase */
void nbd_conn_kill(void *conn);	 /* drop the client now */
void nbd_conn_drain(void *conn); /* no new requests; finish, flush, close */

/* server.c: the loop finished with conn (after setting loop_done).  [any] */
void nbd_server_conn_released(void);
/* server.c [control]: kill (hard) or drain every transmission connection of exp (all if NULL). */
void nbd_server_kill_conns(struct nbd_export *exp, bool hard);
/* server.c [control]: graceful shutdown: stop listening, drain everything, wait (bounded). */
void nbd_server_shutdown(void);

#endif /* NBD_INT_H */
