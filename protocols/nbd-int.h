/*
 * nbd-int.h - shared state of the "nbd" protocol driver (an NBD client on libnbd): nbd.c opens,
 * closes and describes nodes on the control thread; nbd-conn.c runs the connection and the
 * requests on the node's home I/O loop.  docs/nbd-client.md tells the whole story.
 */
#ifndef BD_PROTOCOLS_NBD_INT_H
#define BD_PROTOCOLS_NBD_INT_H

#include "blockd/blockd.h"

#include <libnbd.h>
#include <stdatomic.h>
#include <sys/socket.h>

#define nbdc_container_of(ptr, type, member)                                                       \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* One libnbd handle and its readiness watch.  A new one per (re)connection attempt; freed on
 * the home loop once the ring has let go of its watch. */
struct nbdc_link {
	struct nbd_handle *h;
	struct bd_poll watch;
	struct nbdc_node *nn;	 /* cleared when the link is retired */
	struct nbdc_node *owner; /* never cleared: counts the links not yet freed */
	uint64_t gen;		 /* number of the connection attempt */
	bool dead;		 /* retired: no libnbd call on h any more but nbd_close */
	bool answered;		 /* the server has answered a command on it */
};

enum nbdc_state {
	NBDC_READY,	 /* link is connected: requests go to the server */
	NBDC_CONNECTING, /* link is in the TCP/NBD handshake */
	NBDC_WAITING,	 /* no link: the next attempt starts at next_attempt_ns */
};

/* Per request (req->priv). */
struct nbdc_req {
	struct bd_req *req;
	struct nbdc_req *prev, *next; /* in-flight list, or pending/done queues (next only) */
	void *bounce;		      /* READ/WRITE with more than one iovec */
	uint64_t issue_ns;
	uint64_t gen; /* link it was sent on */
	int status;
	bool timed_out;
	bool got_extents;
};

struct nbdc_node {
	/* Set by open() on the control thread, read-only afterwards. */
	struct bd_node *node;
	char *desc; /* "unix:/path" or "tcp:host:port", for messages */
	char *export_name;
	struct sockaddr_storage addr;
	socklen_t addrlen;
	uint64_t size;
	uint64_t timeout_ns;	     /* 0: no request timeout */
	uint64_t reconnect_delay_ns; /* 0: fail at once while disconnected */
	bool need_write;	     /* node is writable: the server must be too */
	bool has_bs;		     /* base:allocation negotiated at open */

	atomic_int links_alive; /* links not freed yet: close() waits for them */
	/* The loop that owns the connection: the first loop to open a channel. */
	_Atomic(struct bd_loop *) home;

	/* Home loop only. */
	struct nbdc_link *link; /* current link, NULL in NBDC_WAITING */
	enum nbdc_state state;
	uint64_t gen;
	uint64_t dead_since_ns; /* 0 while connected */
	uint64_t next_attempt_ns;
	uint64_t attempt_deadline_ns;
	uint64_t backoff_ns;
	bool failing; /* disconnected past reconnect-delay: requests fail at once */
	bool grace;   /* the connection made at open died unused: wait for one reconnection */
	bool timer_armed;
	bool closing;
	struct bd_timer tick;
	struct bd_defer done_defer;
	struct nbdc_req *inflight_head, *inflight_tail; /* oldest first */
	struct nbdc_req *pending_head, *pending_tail;	/* waiting for a connection */
	struct nbdc_req *done_head, *done_tail;		/* to complete */
	uint64_t reconnects;				/* statistics */
};

/* nbd.c [control]: a new handle, set up for this node (export name, meta context). */
struct nbd_handle *nbdc_handle_new(struct nbdc_node *nn);

/* nbd-conn.c */
/* [loop] The driver's chan_open / chan_close / submit. */
int nbdc_chan_open(struct bd_node *node, struct bd_chan *ch);
void nbdc_chan_close(struct bd_node *node, struct bd_chan *ch);
int nbdc_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req);
/* [control] Wrap the handle open() connected into the node's first link. */
void nbdc_link_adopt(struct nbdc_node *nn, struct nbd_handle *h);
/* [control, node closed] Free a link that never reached a loop, or wait until the home loop has
 * freed every link (their watches are stopped asynchronously). */
void nbdc_links_release(struct nbdc_node *nn);

#endif /* BD_PROTOCOLS_NBD_INT_H */
