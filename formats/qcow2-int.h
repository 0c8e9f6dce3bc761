/*
 * qcow2-int.h - the qcow2 driver's private state and the functions its files share: qcow2.c
 * (driver table, open/close/resize/describe; control thread), qcow2-io.c (the asynchronous
 * request engine) with qcow2-cache.c (L2 cache) and qcow2-alloc.c (allocation, refcounts,
 * metadata programs), all on the node's owner loop; qcow2-repair.c (open-time refcount repair
 * and growth) and qcow2-snapshot.c (internal snapshots), control thread; qcow2-create.c
 * (blockdev-create, control thread).
 */
#ifndef BLOCKD_FORMATS_QCOW2_INT_H
#define BLOCKD_FORMATS_QCOW2_INT_H

#include "blockd/blockd.h"
#include "formats/qcow2-config.h"
#include "formats/qcow2.h"

#include <stdatomic.h>

struct q2_req;

#define Q2_MAX_EXTENTS_SUB 64
#define Q2_GRP_MAX 64             /* allocating writes in one group commit */
#define Q2_GRP_BYTES (8ull << 20) /* bytes they may allocate together */

/* One L2 table in the cache (owner loop only). */
struct q2_l2slot {
	uint64_t off;    /* host offset of the table; 0 = slot unused */
	uint8_t *tab;    /* cluster-size buffer, on-disk (big-endian) entries */
	uint64_t lru;    /* last use */
	int pins;        /* in use by a metadata program: not evictable */
	bool loading;    /* read in flight */
	/* Write-back (qcow2-writeback.c): bytes [dlo, dhi) were changed in memory and are not
	 * written yet (dhi == 0: clean).  A dirty slot is never evicted. */
	uint32_t dlo, dhi;
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
	/* Clusters from here on were never written since the writable open (the file is reserved
	 * sparse, docs/qcow2.md "Sharp edges"): they read as zeroes, so an allocation there needs
	 * no copy-on-write of zeroes.  Only grows (q2_zero_mark()). */
	uint64_t zero_from;

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
	bool frozen;     /* q2_freeze(): new requests wait (control-thread metadata work) */
	struct q2_req *stalled;
	struct q2_req *freeq; /* the free program's pseudo request */
	atomic_bool free_running;

	/* Group commit (qcow2-alloc.c): while the lock is held by grpq, the allocating writes in
	 * gm[] plan and write their data side by side and share one refcount write, one flush and
	 * one round of L2/L1 writes. */
	struct q2_req *grpq;           /* the group's pseudo request (owns the lock) */
	/* Programs whose L2/L1 entries are set in memory but may not be on disk yet: a guest
	 * flush waits for them (else an in-place write to a new cluster, acknowledged and
	 * flushed, could lose its mapping in a crash). */
	unsigned l2_writing;
	struct q2_req *flush_parked;
	struct q2_req *gm[Q2_GRP_MAX]; /* members */
	unsigned gm_n;                 /* members */
	unsigned g_wait;               /* members still planning */
	unsigned g_data;               /* members whose data writes are in flight */
	unsigned g_nl1;                /* distinct L1 indexes of the members (pinned tables) */
	uint64_t g_bytes;              /* bytes the members may allocate */
	bool g_commit;                 /* the commit (refcounts, flush, L2) is running */
	bool g_closing;                /* a write-through member waits: no more members join */

	/* Write-back of L2/L1 updates (qcow2-writeback.c): plain allocating writes set their
	 * entries in the cached tables only; the tables are written at guest flush, when too many
	 * slots are dirty, on the timer and before control-thread metadata work. */
	bool l2wb;              /* option l2-writeback (default on) */
	unsigned ndirty;        /* dirty slots */
	uint64_t l1_dlo, l1_dhi; /* dirty byte range of the L1 table (l1_dhi == 0: clean) */
	uint64_t wb_interval_ns; /* option l2-writeback-interval; 0: no timer */
	struct bd_timer wb_timer;
	bool wb_armed;
	struct q2_req *wbq;     /* the timer's write-back pseudo request */

	/* Compressed writes: where the next one may be packed (0 = start a new cluster). */
	uint64_t comp_next;

	/* One decompressed cluster. */
	uint64_t dc_off; /* host offset of the cached compressed cluster, 0 = none */
	uint8_t *dc_buf;

	/* Header sector written when the image is marked corrupt. */
	uint8_t hdr_buf[512];
};

#define Q2_MIN_SLOTS 16 /* L2 cache tables at least */

struct q2_refs;

/* The request engine (qcow2-io.c): the states of a request. */
enum q2_st {
	ST_START,
	/* read */
	ST_R_NEXT,
	ST_R_CHUNK_DONE,
	ST_R_DECOMP,
	/* write */
	ST_W_NEXT,
	ST_W_CHUNK_DONE,
	ST_A_PLAN,
	ST_A_COW_READ_DONE,
	/* metadata program: shared by allocating writes, write-zeroes and discard */
	ST_MP_P1,
	ST_MP_P1_DONE,
	ST_MP_P2_DONE,
	ST_MP_P3_DONE,
	/* new refcount block */
	ST_RB_WRITTEN,
	ST_RB_FLUSHED,
	ST_RB_TABLE_DONE,
	/* write-zeroes and discard */
	ST_Z_NEXT,
	ST_D_NEXT,
	/* block status */
	ST_B_NEXT,
	ST_B_BACKING_DONE,
	/* flush */
	ST_F_DONE,
	/* group commit: a member waiting for the commit, a member whose program is done */
	ST_G_WAIT,
	ST_G_DONE,
	/* group commit: the group's pseudo request */
	ST_G_START,
	ST_G_RB_DONE,
	ST_G_FLUSHED,
	ST_G_L2_DONE,
	ST_G_WB_DONE,
	/* write-back of dirty L2/L1 tables (qcow2-writeback.c), returns to wb_ret */
	ST_WB_START,
	ST_WB_RB_DONE,
	ST_WB_FLUSHED,
	ST_WB_WRITTEN,
	/* guest flush with dirty tables: take the lock, write back, flush */
	ST_FW_LOCK,
	ST_FW_DONE,
	/* the timer's write-back pseudo request */
	ST_WT_LOCK,
	ST_WT_DONE,
	/* free program */
	ST_FP_START,
	ST_FP_FLUSHED,
	ST_FP_DONE,
};

/* What an L2 update program changes. */
struct q2_cow {
	bool needed;
	enum q2_ctype type;
	uint64_t host, csize;   /* old cluster */
	uint64_t guest;         /* guest offset of the cluster */
	uint8_t *buf;           /* cluster-size buffer: the old contents */
	uint8_t *cbuf;          /* compressed bytes */
};

struct q2_req {
	struct bd_req *req; /* NULL for the free program */
	struct q2 *s;
	struct bd_loop *home;
	struct bd_defer defer;
	enum q2_st st;
	int pending;
	int err;
	int ret;
	bool counted;
	bool in_submit;      /* running inside q2_submit(): complete later */
	bool waiting_lock;
	bool batch;          /* waits for the lock to join a group commit */
	bool in_grp;         /* a member of the running group */
	bool g_ready;        /* planned: its refcounts may be written */
	bool is_grp;         /* the group's pseudo request */
	bool is_wbt;         /* the write-back timer's pseudo request */
	bool g_wbm;          /* a member that sets its entries alone, in write-back mode */
	enum q2_st wb_ret;   /* where a write-back program returns */
	int *wb_slots;       /* slots pinned while their dirty ranges are written */
	unsigned wb_n;
	uint64_t g_l1i, g_c0, g_c1, g_bytes; /* what a member may change: L1 index, clusters */
	bool comp;           /* this write range is planned compressed */
	uint64_t comp_skip;  /* pos + 1 of a cluster that did not compress (written plainly) */
	struct q2_req *next;

	uint64_t pos;  /* bytes of the request done */
	uint64_t end;  /* bytes of the request to do */
	uint64_t chunk;
	enum q2_st w_ret;             /* where a write sub-range returns (write-zeroes) */
	const struct iovec *src;      /* write data */
	int srccnt;
	uint64_t src_base;            /* request position of src's first byte */
	struct iovec *iov;            /* slice scratch / data write */
	int iovcap;
	struct iovec *miov;           /* metadata writes */
	int miovcap;
	uint8_t *mbuf;                /* metadata write buffer (L1 / refcount table sector) */
	uint8_t *buf;                 /* compressed read buffer */
	uint64_t dc_host;
	uint64_t dc_in;               /* offset in the decompressed cluster */

	/* metadata program */
	enum q2_st rb_ret; /* state after a new refcount block */
	uint64_t rb_idx;
	int slot;          /* pinned L2 slot, -1 none */
	uint64_t l1i;
	uint64_t newl2;    /* host offset of a new (or copied) L2 table, 0 none */
	uint64_t oldl2;    /* the shared table a copy replaces (loses a reference) */
	uint8_t *newtab;
	uint64_t l2i;      /* first changed entry */
	uint64_t nent;     /* changed entries */
	uint64_t *ents;    /* new entries (host order) */
	uint64_t entcap;
	bool incr;         /* refcounts were incremented: flush before P3 */
	struct q2_free *fr;
	unsigned nfr, frcap;
	/* data write of an allocation */
	bool dwrite;
	uint64_t dhost;
	uint64_t dlen;
	int diovcnt;
	struct q2_cow cow[2];

	/* block status */
	struct bd_extent bext[Q2_MAX_EXTENTS_SUB];
	uint64_t bs_len;

	/* free program */
	struct q2_free *fp;
	unsigned nfp;
};

/* qcow2.c: synchronous helpers (control thread). */
int q2_sync_read(struct bd_node *file, uint64_t off, void *buf, uint64_t len);
int q2_sync_write(struct bd_node *file, uint64_t off, const void *buf, uint64_t len);
int q2_sync_flush(struct bd_node *file);

/* qcow2-io.c: a never-written buffer of zeroes, 2 MiB long (and an iovec of it). */
void *q2_zero_buf(void);
const struct iovec *q2_zero_iov(void);

/* qcow2-io.c: how the guest range from off (at most max bytes, cut at the end of the L2 table)
 * maps: one type, and for data one contiguous host range.  strict: stop at a change of the
 * COPIED flag too.  0 or -EIO (corruption reported). */
struct q2_map {
	enum q2_ctype type;
	uint64_t host;  /* NORMAL: host offset of off; COMPRESSED: the descriptor's offset */
	uint64_t csize; /* COMPRESSED */
	uint64_t len;
};
int q2_map_at(struct q2 *s, int slot, uint64_t off, uint64_t max, bool strict,
	      struct q2_map *m);
/* qcow2-zero.c: one step of a write-zeroes (zero) or discard request, lock held: 1 done,
 * 4 run the write path for zero bytes, 5 run the metadata program, 0 waiting, <0 error.
 * qcow2-status.c: one step of block status: nonzero done (<0 error), 0 waiting. */
int q2_zd_step(struct q2_req *qr, bool zero);
int q2_bs_step(struct q2_req *qr);

/* qcow2.c: the file child's node; corruption reports (owner loop or control thread: a fatal
 * report marks the node broken, and on the owner loop also marks the image corrupt on disk). */
struct bd_node *q2_fnode(struct q2 *s);
void q2_corrupt(struct q2 *s, uint64_t off, uint64_t size, bool fatal, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* qcow2.c [control]: wait for a running free program to end; apply pending frees synchronously. */
void q2_quiesce(struct q2 *s);
/* [control] Hold new requests back (they wait in s->stalled) and wait until none is in
 * progress and the free program is idle; q2_thaw() lets them go.  For metadata changes on the
 * control thread while exports keep submitting (snapshots, resize). */
void q2_freeze(struct q2 *s);
void q2_thaw(struct q2 *s);
/* [owner loop] Restart the requests waiting in s->stalled. */
void q2_wake_stalled(struct q2 *s);
void q2_apply_frees_sync(struct q2 *s);

/* qcow2-io.c: the request engine [owner loop; q2_submit on any loop]. */
void q2_wake(struct q2_req *qr);
void q2_add_free(struct q2_req *qr, uint64_t off, uint64_t len, bool discard);
void q2_sub_io(struct q2_req *qr, struct bd_child *child, enum bd_op op, uint64_t off,
	       uint64_t len, struct iovec *iov, int iovcnt, uint32_t flags);
struct iovec *q2_iov_need(struct q2_req *qr, int n);
struct iovec *q2_miov_need(struct q2_req *qr, int n);
int q2_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req);

/* qcow2-cache.c: the L2 table cache [owner loop]. */
int q2_l2_get(struct q2_req *qr, uint64_t off, int *slot, uint64_t *l1e);
uint64_t q2_l2_raw(struct q2 *s, int slot, uint64_t l2i);
int q2_l2_entry(struct q2 *s, int slot, uint64_t l2i, struct q2_l2e *e);

/* qcow2-alloc.c: in-memory refcounts (also [control] while no request runs), the overlap check,
 * the metadata lock, allocation, the metadata program (allocating writes, write-zeroes, discard),
 * COW, the free program [owner loop]. */
uint64_t q2_rc_get(struct q2 *s, uint64_t ci);
int q2_rc_set(struct q2 *s, uint64_t ci, uint64_t v);
void q2_zero_mark(struct q2 *s, uint64_t ci);
const char *q2_meta_overlap(struct q2 *s, uint64_t off, uint64_t len);
bool q2_lock_take(struct q2_req *qr);
/* Group commit of allocating writes: join (true: a member now, false: queued, woken as a
 * member in the state it has), leave before the commit (in place after all, or failed), run the
 * group's pseudo request. */
bool q2_grp_join(struct q2_req *qr);
void q2_grp_leave(struct q2_req *qr);
void q2_grp_run(struct q2_req *gq);
void q2_maybe_free(struct q2 *s);
void q2_lock_release(struct q2 *s);
/* qcow2-alloc.c, shared with qcow2-group.c: the pieces of a metadata program. */
void q2_write_rb_dirty(struct q2_req *qr);
void q2_mp_install_l2(struct q2_req *qr);
void q2_mp_done(struct q2_req *qr);
void q2_mp_set_entries(struct q2 *s, uint8_t *tab, struct q2_req *qr);
/* qcow2-group.c: form a group when the lock is free and the first waiter is an allocating
 * write; q2_grp_check: every member is ready (or gone): commit, or end an empty group. */
void q2_grp_form(struct q2 *s);
void q2_grp_check(struct q2 *s);
/* A write-back member's data is written: set its entries (dirty), leave the group. */
void q2_grp_wb_done(struct q2_req *qr);

#define Q2_MAX_RUN_CLUSTERS 512 /* clusters per allocation program */
/* qcow2-io.c: one L2 write phase ended; start the flushes that waited for it. */
void q2_l2_written(struct q2 *s);
bool q2_in_place(struct q2 *s, const struct q2_l2e *e);
int q2_alloc_find(struct q2 *s, uint64_t want, uint64_t *first, uint64_t *got,
		  uint64_t *need_rb);
int q2_alloc_take(struct q2 *s, uint64_t c, uint64_t n);
int q2_mp_step(struct q2_req *qr);
bool q2_reads_zero_unalloc(struct q2 *s, uint64_t guest);
int q2_cow_finish(struct q2_req *qr, struct q2_cow *cw);
int q2_alloc_plan(struct q2_req *qr);
/* qcow2-alloc.c: pieces of the allocation programs, shared with qcow2-sub.c [owner loop]. */
int q2_mp_prepare_l2(struct q2_req *qr, uint64_t off);
uint8_t *q2_mp_tab(struct q2_req *qr);
void q2_ents_need(struct q2_req *qr, uint64_t n);
void q2_free_entry(struct q2_req *qr, const struct q2_l2e *e, bool discard);
void q2_cow_free(struct q2_req *qr);
int q2_cow_read(struct q2_req *qr, struct q2_cow *cw);
int q2_rb_create(struct q2_req *qr);
/* qcow2-sub.c: compressed writes and writes to images with extended L2 entries [owner loop]:
 * plan one cluster's program.  1 planned, 0 waiting, 2 (sub) writable in place now, -ENOSPC
 * (comp) the cluster does not compress, <0 error. */
int q2_comp_plan(struct q2_req *qr);
int q2_sub_plan(struct q2_req *qr);
bool q2_sub_in_place(struct q2 *s, int slot, uint64_t l2i, uint64_t inoff, uint64_t len,
		     uint64_t *host);
int q2_zd_plan(struct q2_req *qr, uint64_t off, uint64_t n, bool zero, bool unmap);
/* qcow2-sub.c: the same for extended L2 entries: clusters [gc, gc + n clusters) of one table,
 * mask the subclusters of each to zero (all for discard; partial only with n == 1).  1
 * planned, 2 nothing to change, 3 a compressed cluster zeroed in part (write zero bytes
 * instead), 0 waiting, <0 error. */
int q2_zd_plan_sub(struct q2_req *qr, uint64_t gc, uint64_t n, uint32_t mask, bool zero,
		   bool unmap);
void q2_fp_run(struct q2_req *fq);

/* qcow2-writeback.c: write-back of L2/L1 updates [owner loop; q2_wb_sync and q2_wb_stop on
 * the control thread while the node is frozen or closing]. */
void q2_l2_mark_dirty(struct q2 *s, int slot, uint64_t lo, uint64_t hi);
void q2_l1_mark_dirty(struct q2 *s, uint64_t l1i);
static inline bool q2_wb_dirty(const struct q2 *s)
{
	return s->ndirty || s->l1_dhi;
}
/* May a metadata program that writes L2/L1 sectors skip the flush before them?  Only when no
 * refcount increments (incr) or write-back entries (dirty) in those sectors need it. */
bool q2_meta_flush_needed(struct q2 *s, bool incr, bool newl2);
/* The write-back program (lock held): 1 waiting, 3 done (qr->st = qr->wb_ret), <0 error. */
int q2_wb_step(struct q2_req *qr);
/* Too many dirty slots: the group writes back before it releases the lock. */
bool q2_wb_over_limit(struct q2 *s);
/* A write-back group left dirty tables: arm the timer. */
void q2_wb_arm(struct q2 *s);
void q2_wbt_run(struct q2_req *wq);
/* [control, frozen or closing] Write every dirty table; cancel the timer. */
int q2_wb_sync(struct q2 *s);
void q2_wb_stop(struct q2 *s);

/* qcow2-repair.c: open-time metadata, refcount repair and refcount table growth [control]. */
int q2_load_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err);
int q2_write_header_fixed(struct q2 *s, struct bd_err *err);
int q2_load_snapshots(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err);
int q2_fix_copied_flags(struct q2 *s, const uint64_t *ref, uint64_t nref, uint64_t *fixed,
			struct bd_err *err);
int q2_bitmaps_walk(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err);
int q2_repair_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err);
uint64_t q2_alloc_end_cluster(struct q2 *s);
uint64_t q2_max_file_bytes(struct q2 *s, uint64_t used_end);
int q2_grow_reftable(struct q2 *s, uint64_t max_bytes, struct bd_err *err);
int q2_prepare_growth(struct q2 *s, struct bd_err *err);

/* qcow2-snapshot.c: internal snapshots [control, node drained]; for the driver ops requested in
 * docs/core-requests.md ("qcow2" 5).  id may be NULL (next free number) for create; delete
 * matches id and/or name. */
int q2_snapshot_create(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err);
int q2_snapshot_delete(struct bd_node *node, const char *id, const char *name,
		       json_t **info, struct bd_err *err);
json_t *q2_snapinfo_json(const struct q2_snapinfo *sn);

/* qcow2.c [control]: the writable part of open (also for a reopen to read-write); the room
 * reserved in the file given back (close, reopen to read-only). */
int q2_make_writable(struct q2 *s, bool has_lazy_opt, bool lazy_opt, uint64_t fsize,
		     struct bd_err *err);
void q2_give_back_room(struct q2 *s);
/* qcow2-reopen.c: blockdev-reopen [control]. */
int q2_reopen(struct bd_node *node, json_t *opts, struct bd_err *err);

/* qcow2-create.c */
int q2_create(struct bd_node *file, json_t *opts, struct bd_err *err);
int q2_create_on(struct bd_node *file, json_t *opts, struct bd_err *err);

#endif
