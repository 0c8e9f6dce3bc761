/*
 * qcow2-int.h - the qcow2 driver's private state, shared by qcow2.c (open/close/resize and the
 * asynchronous request engine, on the node's owner loop) and qcow2-create.c (blockdev-create,
 * control thread).
 */
#ifndef BLOCKD_FORMATS_QCOW2_INT_H
#define BLOCKD_FORMATS_QCOW2_INT_H

#include "blockd/blockd.h"
#include "formats/qcow2-config.h"
#include "formats/qcow2.h"

#include <stdatomic.h>

struct q2_req;

/* One L2 table in the cache (owner loop only). */
struct q2_l2slot {
	uint64_t off;    /* host offset of the table; 0 = slot unused */
	uint8_t *tab;    /* cluster-size buffer, on-disk (big-endian) entries */
	uint64_t lru;    /* last use */
	int pins;        /* in use by a metadata program: not evictable */
	bool loading;    /* read in flight */
	struct q2_req *waiters;
};

/* A pending refcount decrement (a cluster range no longer referenced). */
struct q2_free {
	uint64_t off, len; /* bytes; every cluster touched loses one reference */
	bool discard;      /* pass the discard down when the refcount reaches zero */
};

/* A dirty byte range of one in-memory refcount block, to be written back. */
struct q2_rbdirty {
	uint64_t idx; /* refcount table index */
	uint32_t lo, hi;
};

struct q2 {
	struct bd_node *node;
	struct bd_child *file;
	struct bd_child *backing;
	struct q2_header h;
	uint32_t cb;       /* cluster bits */
	uint64_t cs;       /* cluster size */
	uint64_t l2n;      /* entries per L2 table */
	uint32_t esz;      /* bytes per L2 entry: 8, or 16 with extended L2 entries */
	uint32_t l2shift;  /* guest offset >> l2shift = L1 index */
	uint64_t epb;      /* refcount entries per refcount block */
	uint64_t size;     /* virtual size */
	bool writable;
	bool lazy;         /* lazy refcounts in use (dirty bit set while open) */
	bool pass_discard_request;
	bool pass_discard_other;
	bool broken;       /* metadata I/O failed or corruption found: writes fail */
	uint64_t orig_file_size;

	/* Active L1 table, host order. */
	uint64_t *l1;
	uint32_t l1_size;

	/* Refcounts: the whole table and every refcount block are in memory. */
	uint64_t *reft;   /* refcount table entries (host order, offsets) */
	uint64_t reft_n;  /* entries */
	uint8_t **rb;     /* refcount blocks by table index, NULL if none */
	uint64_t free_hint; /* cluster index where the free search starts */
	struct q2_rbdirty *rbd;
	unsigned rbd_n, rbd_cap;

	/* Snapshot table size (bytes) for the overlap check, and the snapshots. */
	uint64_t snap_bytes;
	struct q2_snapinfo *snaps;
	unsigned nsnaps;
	int loaded_snap; /* load-snapshot: index into snaps, -1 = the active image */

	/* L2 cache. */
	struct q2_l2slot *slots;
	unsigned nslots;
	uint64_t lru_clock;
	struct q2_req *slot_waiters; /* waiting for any slot to become free */

	/* Owner loop: every request runs there (see docs/qcow2.md). */
	_Atomic(struct bd_loop *) owner;
	struct bd_chan *och; /* this node's channel on the owner loop */

	/* The metadata lock: one metadata program at a time. */
	struct q2_req *lock_owner;
	struct q2_req *lock_head, *lock_tail;
	uint64_t active; /* requests in progress (they may hold host offsets) */
	struct q2_free *frees;
	unsigned nfrees, frees_cap;
	bool barrier;    /* too many pending frees: new requests wait */
	struct q2_req *stalled;
	struct q2_req *freeq; /* the free program's pseudo request */
	atomic_bool free_running;

	/* One decompressed cluster. */
	uint64_t dc_off; /* host offset of the cached compressed cluster, 0 = none */
	uint8_t *dc_buf;

	/* Header sector written when the image is marked corrupt. */
	uint8_t hdr_buf[512];
};

/* qcow2.c: synchronous helpers (control thread). */
int q2_sync_read(struct bd_node *file, uint64_t off, void *buf, uint64_t len);
int q2_sync_write(struct bd_node *file, uint64_t off, const void *buf, uint64_t len);
int q2_sync_flush(struct bd_node *file);

/* qcow2.c: a never-written buffer of zeroes, 2 MiB long. */
void *q2_zero_buf(void);

/* qcow2.c: internal snapshots [control, node drained]; for the driver ops requested in
 * docs/core-requests.md ("qcow2" 5).  id may be NULL (next free number) for create; delete
 * matches id and/or name. */
int q2_snapshot_create(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err);
int q2_snapshot_delete(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err);

/* qcow2-create.c */
int q2_create(struct bd_node *file, json_t *opts, struct bd_err *err);
int q2_create_on(struct bd_node *file, json_t *opts, struct bd_err *err);

#endif
