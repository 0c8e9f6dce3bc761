/*
 * internal.h - declarations shared by the core's own files, not part of the public API.
 */
#ifndef BLOCKD_INTERNAL_H
#define BLOCKD_INTERNAL_H

#include "blockd/blockd.h"

#include <pthread.h>
#include <stdatomic.h>

#define BD_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define bd_container_of(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))

void bd_log_use_syslog(bool on);

/* loop.c: the list of I/O loops that exports spread work over. [control] */
void bd_io_loop_register(struct bd_loop *loop);
void bd_io_loop_unregister(struct bd_loop *loop);
/* [any] A loop handed to anyone (bd_io_loop_get/next, bd_iothread_find, a node channel) may be
 * referenced from exports, connections or channels: its iothread is never deleted. */
void bd_loop_mark_used(struct bd_loop *loop);
bool bd_loop_was_used(const struct bd_loop *loop);
/* Stop and join every loop but main (shutdown). */
void bd_loops_destroy_all(void);


/* object.c */
/* QEMU's rule for ids and node names: a letter, then letters, digits, '-', '.', '_'. */
bool bd_id_valid(const char *s, size_t max_len);
void bd_iothreads_destroy_all(void);
const char *bd_iothread_id_of(const struct bd_loop *loop);
struct bd_loop *bd_default_io_loop(void);
int bd_default_io_loop_create(struct bd_err *err);

struct bd_child {
	struct bd_node *node;
	struct bd_node *parent;
	char name[32];
	struct bd_child *next;
	bool inner; /* an overlay's link to the node it replaced: uses its inner channels */
};

/* In-flight read-modify-write ranges of a node (unaligned writes under O_DIRECT). */
struct bd_rmw_range {
	uint64_t start, end;
	struct bd_req *waiters; /* RMW requests that overlap, resubmitted when this ends */
	struct bd_rmw_range *next;
};

struct bd_node {
	char name[128];
	bool auto_named;
	const struct bd_driver *drv;
	void *priv;
	struct bd_limits limits;
	uint32_t drv_ops; /* ops as the driver declared them, before read-only masking */
	struct bd_node_common common;
	atomic_int refcnt;
	int parents; /* how many parents hold this node as a child */
	struct bd_child *children;
	json_t *opts; /* as given, marks cleared */
	struct bd_chan *chans[BD_MAX_LOOPS];
	struct bd_node_watch *watches;
	pthread_mutex_t rmw_lock;
	struct bd_rmw_range *rmw_list;
	struct bd_node *next; /* the graph's list */
	bool closing;
	/* External snapshot (bd_node_snapshot_external): requests on the node's channels go to
	 * the overlay that replaced it (fwd 2) or wait for the switch (fwd 1); the overlay reaches
	 * the node itself through inner channels. */
	atomic_int fwd;
	struct bd_node *fwd_to;   /* the overlay */
	struct bd_node *fwd_from; /* on the overlay: the node it replaced */
	struct bd_chan *inner_chans[BD_MAX_LOOPS];
};

struct bd_chan {
	struct bd_node *node;
	struct bd_loop *loop;
	struct bd_req *free_list;
	unsigned free_count;
	struct bd_req *retry_head, *retry_tail; /* -EAGAIN from the driver */
	struct bd_defer retry_defer;
	uint64_t inflight; /* top-level requests */
	struct bd_node_stats stats;
	uint64_t last_io_error_ns; /* BLOCK_IO_ERROR rate limit */
	void *priv;
	bool inner;                            /* not forwarded (see bd_node.fwd) */
	struct bd_req *held_head, *held_tail; /* waiting for an external snapshot's switch */
};

/* request.c */
void bd_chan_free_all(struct bd_chan *ch);
/* [loop] Forward the requests held during an external snapshot's switch. */
void bd_chan_release_held(struct bd_chan *ch);

/* node.c */
void bd_graph_close_all(void);
/* Append a node just opened (node-open.c) to the graph's list. */
void bd_graph_link(struct bd_node *node);
/* Release a node's children (on close, or when its open failed). */
void bd_node_drop_children(struct bd_node *node);
/* Shutdown: tell every driver that holds requests back (throttle) to let them go, for good,
 * so that exports waiting for their in-flight requests finish at once. */
void bd_graph_release_held(void);

/* export.c */
void bd_exports_shutdown(void);

#endif
