/*
 * qcow2.c - the qcow2 format driver.  open/close/resize/describe (and refcount repair, refcount
 * table growth) run on the control thread with synchronous I/O on the file child; every request
 * runs on the node's *owner loop* as an explicit state machine (struct q2_req, enum q2_st).
 *
 * Threading (docs/qcow2.md): the first loop that submits a request becomes the owner; requests
 * submitted on other loops are handed to it with bd_loop_send() and completed back on their own
 * loop.  All metadata (L1, L2 cache, in-memory refcounts) is therefore touched by one thread
 * only, without locks.
 *
 * Crash safety: metadata is written through (no write-back cache).  An allocation writes the
 * data and the refcount block updates (and a new L2 table), flushes, then writes the L2 entry
 * (or the L1 entry of a new L2 table).  Refcount decrements are queued and applied only when no
 * request that may still use the old mapping is active, after a flush, so an L2 entry on disk
 * never points at a cluster whose refcount on disk is zero.  One metadata program runs at a
 * time (the metadata lock); reads and in-place writes run beside it.
 */
#include "formats/qcow2-int.h"

#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define Q2_MAX_RUN_CLUSTERS 512      /* clusters per allocation program */
#define Q2_FREE_BARRIER 4096         /* pending frees before new requests wait */
#define Q2_MAX_EXTENTS_SUB 64
#define Q2_DEFAULT_L2_CACHE (32u << 20)
#define Q2_MIN_SLOTS 16

/* A buffer of zeroes the size of the largest cluster; never written. */
static uint8_t q2_zeroes[1u << Q2_MAX_CLUSTER_BITS];

void *q2_zero_buf(void)
{
	return q2_zeroes;
}

/* ============================================================================================
 * Synchronous helpers (control thread)
 */
int q2_sync_read(struct bd_node *file, uint64_t off, void *buf, uint64_t len)
{
	return bd_node_io_sync(file, BD_OP_READ, off, len, buf, 0);
}

int q2_sync_write(struct bd_node *file, uint64_t off, const void *buf, uint64_t len)
{
	return bd_node_io_sync(file, BD_OP_WRITE, off, len, (void *)(uintptr_t)buf, 0);
}

int q2_sync_flush(struct bd_node *file)
{
	return bd_node_io_sync(file, BD_OP_FLUSH, 0, 0, NULL, 0);
}

static struct bd_node *fnode(struct q2 *s)
{
	return bd_child_node(s->file);
}

/* ============================================================================================
 * Corruption reports
 */
static void q2_corrupt(struct q2 *s, uint64_t off, uint64_t size, bool fatal, const char *fmt,
		       ...) __attribute__((format(printf, 5, 6)));

static void hdr_write_done(struct bd_req *c, int ret)
{
	bd_req_put(c);
}

static void q2_corrupt(struct q2 *s, uint64_t off, uint64_t size, bool fatal, const char *fmt,
		       ...)
{
	char msg[512];
	va_list ap;
	json_t *d;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bd_log(BD_LOG_ERROR, "qcow2 node '%s': image is corrupt: %s%s", bd_node_name(s->node),
	       msg, fatal ? "; further writes refused" : "");
	d = json_pack("{s:s,s:s,s:s,s:b}", "device", "", "node-name", bd_node_name(s->node), "msg",
		      msg, "fatal", fatal);
	if (d && off != UINT64_MAX) {
		json_object_set_new(d, "offset", json_integer((json_int_t)off));
		json_object_set_new(d, "size", json_integer((json_int_t)size));
	}
	bd_event_emit("BLOCK_IMAGE_CORRUPTED", d);
	if (!fatal || s->broken)
		return;
	s->broken = true;
	/* Mark the image corrupt on disk (v3), as QEMU does: best effort, from the owner loop. */
	if (s->writable && s->h.version >= 3 && s->och && bd_loop_current() == s->owner) {
		struct bd_chan *fc = bd_child_chan(s->file, s->och);
		struct bd_req *c = bd_req_get(fc);
		static struct iovec iov;
		struct q2_header h = s->h;

		h.incompatible |= Q2_INCOMPAT_CORRUPT;
		memset(s->hdr_buf, 0, sizeof(s->hdr_buf));
		q2_header_write_fixed(&h, s->hdr_buf);
		iov.iov_base = s->hdr_buf + 72;
		iov.iov_len = 8;
		c->op = BD_OP_WRITE;
		c->offset = 72;
		c->len = 8;
		c->iov = &iov;
		c->iovcnt = 1;
		c->cb = hdr_write_done;
		if (bd_submit(fc, c) < 0)
			bd_req_put(c);
	}
}

/* ============================================================================================
 * In-memory refcounts
 */
static uint64_t rc_get(struct q2 *s, uint64_t ci)
{
	uint64_t r = ci / s->epb;

	if (r >= s->reft_n || !s->rb[r])
		return 0;
	return q2_refcount_get(s->rb[r], s->h.refcount_order, ci % s->epb);
}

static void rbd_mark(struct q2 *s, uint64_t idx, uint32_t lo, uint32_t hi)
{
	for (unsigned i = 0; i < s->rbd_n; i++) {
		if (s->rbd[i].idx == idx) {
			if (lo < s->rbd[i].lo)
				s->rbd[i].lo = lo;
			if (hi > s->rbd[i].hi)
				s->rbd[i].hi = hi;
			return;
		}
	}
	if (s->rbd_n == s->rbd_cap) {
		s->rbd_cap = s->rbd_cap ? 2 * s->rbd_cap : 16;
		s->rbd = realloc(s->rbd, s->rbd_cap * sizeof(*s->rbd));
		if (!s->rbd)
			abort();
	}
	s->rbd[s->rbd_n++] = (struct q2_rbdirty){idx, lo, hi};
}

/* Set a refcount; the block must exist.  -ERANGE on overflow. */
static int rc_set(struct q2 *s, uint64_t ci, uint64_t v)
{
	uint64_t r = ci / s->epb, e = ci % s->epb;
	uint32_t bits = 1u << s->h.refcount_order;
	uint32_t lo = (uint32_t)(e * bits / 8);
	uint32_t hi = lo + (bits >= 8 ? bits / 8 : 1);
	int ret;

	if (r >= s->reft_n || !s->rb[r])
		return -EIO;
	ret = q2_refcount_set(s->rb[r], s->h.refcount_order, e, v);
	if (ret < 0)
		return ret;
	rbd_mark(s, r, lo, hi);
	return 0;
}

/* ============================================================================================
 * Metadata overlap check: would writing guest data at [off, off+len) hit metadata?
 */
static const char *meta_overlap(struct q2 *s, uint64_t off, uint64_t len)
{
	struct q2_region fixed[] = {
		{0, s->cs, "header"},
		{s->h.l1_table_offset, (uint64_t)s->l1_size * 8, "active L1 table"},
		{s->h.refcount_table_offset, (uint64_t)s->h.refcount_table_clusters * s->cs,
		 "refcount table"},
		{s->h.snapshots_offset, s->h.nb_snapshots ? s->snap_bytes : 0, "snapshot table"},
		{s->h.bitmap_dir_offset, s->h.has_bitmaps ? s->h.bitmap_dir_size : 0,
		 "bitmap directory"},
	};
	int i = q2_overlaps(fixed, 5, off, len);

	if (i >= 0)
		return fixed[i].what;
	for (uint64_t r = 0; r < s->reft_n; r++)
		if (s->reft[r] && s->reft[r] < off + len && off < s->reft[r] + s->cs)
			return "refcount block";
	for (uint32_t k = 0; k < s->l1_size; k++) {
		uint64_t l2 = s->l1[k] & Q2_OFFSET_MASK;
		if (l2 && l2 < off + len && off < l2 + s->cs)
			return "active L2 table";
	}
	return NULL;
}

/* ============================================================================================
 * The request engine
 */
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
	bool waiting_lock;
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

static void run(struct q2_req *qr);
static void cow_free(struct q2_req *qr);

static void resume_defer(struct bd_defer *d)
{
	struct q2_req *qr = (struct q2_req *)(void *)((char *)d - offsetof(struct q2_req, defer));
	run(qr);
}

/* Resume qr later on the owner loop (no recursion). */
static void wake(struct q2_req *qr)
{
	qr->defer.fn = resume_defer;
	bd_loop_defer(qr->s->owner, &qr->defer);
}

static void add_free(struct q2_req *qr, uint64_t off, uint64_t len, bool discard)
{
	if (qr->nfr == qr->frcap) {
		qr->frcap = qr->frcap ? 2 * qr->frcap : 8;
		qr->fr = realloc(qr->fr, qr->frcap * sizeof(*qr->fr));
		if (!qr->fr)
			abort();
	}
	qr->fr[qr->nfr++] = (struct q2_free){off, len, discard};
}

/* ---- sub-requests ---- */

static void sub_done(struct bd_req *c, int ret)
{
	struct q2_req *qr = c->opaque;

	if (c->op == BD_OP_BLOCK_STATUS && ret == 0)
		qr->bs_len = c->nr_extents;
	bd_req_put(c);
	if (ret < 0 && !qr->err)
		qr->err = ret;
	if (--qr->pending == 0)
		run(qr);
}

static void sub_io(struct q2_req *qr, struct bd_child *child, enum bd_op op, uint64_t off,
		   uint64_t len, struct iovec *iov, int iovcnt, uint32_t flags)
{
	struct q2 *s = qr->s;
	struct bd_chan *cc = bd_child_chan(child, s->och);
	struct bd_req *c = bd_req_get(cc);
	int r;

	c->op = op;
	c->offset = off;
	c->len = len;
	c->iov = iov;
	c->iovcnt = iovcnt;
	c->flags = flags;
	c->cb = sub_done;
	c->opaque = qr;
	if (op == BD_OP_BLOCK_STATUS) {
		c->extents = qr->bext;
		c->max_extents = Q2_MAX_EXTENTS_SUB;
	}
	qr->pending++;
	r = bd_submit(cc, c);
	if (r < 0) {
		bd_req_put(c);
		qr->pending--;
		if (!qr->err)
			qr->err = r;
	}
}

/* A single-buffer I/O needs its own iovec that outlives the call: these live in the request. */
static struct iovec *iov_need(struct q2_req *qr, int n)
{
	if (n > qr->iovcap) {
		int cap = n < 16 ? 16 : n;
		qr->iov = realloc(qr->iov, (size_t)cap * sizeof(*qr->iov));
		if (!qr->iov)
			abort();
		qr->iovcap = cap;
	}
	return qr->iov;
}

static struct iovec *miov_need(struct q2_req *qr, int n)
{
	if (n > qr->miovcap) {
		int cap = n < 16 ? 16 : n;
		qr->miov = realloc(qr->miov, (size_t)cap * sizeof(*qr->miov));
		if (!qr->miov)
			abort();
		qr->miovcap = cap;
	}
	return qr->miov;
}

/* Append the slice [off, off+len) of src to dst (dst has room); returns entries used. */
static int slice(const struct iovec *src, int cnt, uint64_t off, uint64_t len,
		 struct iovec *dst)
{
	int n = 0;

	for (int i = 0; i < cnt && len > 0; i++) {
		if (off >= src[i].iov_len) {
			off -= src[i].iov_len;
			continue;
		}
		uint64_t take = src[i].iov_len - off;
		if (take > len)
			take = len;
		dst[n].iov_base = (char *)src[i].iov_base + off;
		dst[n].iov_len = take;
		n++;
		len -= take;
		off = 0;
	}
	return n;
}

/* ---- the L2 cache ---- */

struct q2_load {
	struct q2 *s;
	int slot;
	struct iovec iov;
};

static void l2_loaded(struct bd_req *c, int ret)
{
	struct q2_load *ld = c->opaque;
	struct q2 *s = ld->s;
	struct q2_l2slot *sl = &s->slots[ld->slot];
	struct q2_req *w = sl->waiters, *next;

	bd_req_put(c);
	sl->loading = false;
	sl->waiters = NULL;
	if (ret < 0)
		sl->off = 0;
	free(ld);
	for (; w; w = next) {
		next = w->next;
		if (ret < 0 && !w->err)
			w->err = ret;
		wake(w);
	}
	/* A slot may have become evictable for someone waiting for any slot. */
	for (w = s->slot_waiters, s->slot_waiters = NULL; w; w = next) {
		next = w->next;
		wake(w);
	}
}

/* The L2 table for guest offset off.  Returns 1 when ready (*slot >= 0, or -1 when the L1 entry
 * is empty; *l1e gets the L1 entry), 0 when qr must wait (it is woken later), <0 on error. */
static int l2_get(struct q2_req *qr, uint64_t off, int *slot, uint64_t *l1e)
{
	struct q2 *s = qr->s;
	uint64_t l1i = off >> s->l2shift;
	uint64_t l2off;
	int victim = -1;

	*slot = -1;
	*l1e = l1i < s->l1_size ? s->l1[l1i] : 0;
	l2off = *l1e & Q2_OFFSET_MASK;
	if (!l2off)
		return 1;
	for (unsigned i = 0; i < s->nslots; i++) {
		struct q2_l2slot *sl = &s->slots[i];
		if (sl->off == l2off) {
			if (sl->loading) {
				qr->next = sl->waiters;
				sl->waiters = qr;
				return 0;
			}
			sl->lru = ++s->lru_clock;
			*slot = (int)i;
			return 1;
		}
		if (sl->pins || sl->loading)
			continue;
		if (victim < 0 || sl->off == 0 ||
		    (s->slots[victim].off != 0 && sl->lru < s->slots[victim].lru))
			victim = (int)i;
	}
	if (victim < 0) {
		qr->next = s->slot_waiters;
		s->slot_waiters = qr;
		return 0;
	}
	/* Load into the victim slot. */
	struct q2_l2slot *sl = &s->slots[victim];
	struct q2_load *ld = malloc(sizeof(*ld));
	struct bd_chan *fc = bd_child_chan(s->file, s->och);
	struct bd_req *c;
	int r;

	if (!ld)
		return -ENOMEM;
	if (l2off + s->cs > bd_node_size(fnode(s))) {
		free(ld);
		q2_corrupt(s, l2off, s->cs, true, "L2 table offset 0x%" PRIx64 " past the end",
			   l2off);
		return -EIO;
	}
	sl->off = l2off;
	sl->loading = true;
	sl->lru = ++s->lru_clock;
	sl->waiters = qr;
	qr->next = NULL;
	ld->s = s;
	ld->slot = victim;
	ld->iov.iov_base = sl->tab;
	ld->iov.iov_len = s->cs;
	c = bd_req_get(fc);
	c->op = BD_OP_READ;
	c->offset = l2off;
	c->len = s->cs;
	c->iov = &ld->iov;
	c->iovcnt = 1;
	c->cb = l2_loaded;
	c->opaque = ld;
	r = bd_submit(fc, c);
	if (r < 0) {
		bd_req_put(c);
		free(ld);
		sl->off = 0;
		sl->loading = false;
		sl->waiters = NULL;
		return r;
	}
	return 0;
}

static uint64_t l2_raw(struct q2 *s, int slot, uint64_t l2i)
{
	return q2_be64(s->slots[slot].tab + s->esz * l2i);
}

/* Decode an entry, reporting corruption. */
static int l2_entry(struct q2 *s, int slot, uint64_t l2i, struct q2_l2e *e)
{
	uint64_t raw = slot < 0 ? 0 : l2_raw(s, slot, l2i);

	if ((s->h.extl2 ? q2_l2e_decode_ext(raw, s->cb, e) : q2_l2e_decode(raw, s->cb, e)) < 0) {
		q2_corrupt(s, slot < 0 ? UINT64_MAX : s->slots[slot].off + s->esz * l2i, s->esz, true,
			   "Invalid L2 entry 0x%016" PRIx64, raw);
		return -EIO;
	}
	return 0;
}

/* ---- the metadata lock and pending frees ---- */

static void fp_start(struct q2 *s);

static bool lock_take(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	if (s->lock_owner == qr)
		return true;
	if (!s->lock_owner && !atomic_load(&s->free_running)) {
		s->lock_owner = qr;
		return true;
	}
	qr->next = NULL;
	if (s->lock_tail)
		s->lock_tail->next = qr;
	else
		s->lock_head = qr;
	s->lock_tail = qr;
	qr->waiting_lock = true;
	return false;
}

static void maybe_free(struct q2 *s)
{
	if (s->nfrees && s->active == 0 && !s->lock_owner && !atomic_load(&s->free_running))
		fp_start(s);
}

static void lock_release(struct q2 *s)
{
	struct q2_req *w;

	s->lock_owner = NULL;
	maybe_free(s);
	if (s->lock_owner || atomic_load(&s->free_running))
		return;
	w = s->lock_head;
	if (w) {
		s->lock_head = w->next;
		if (!s->lock_head)
			s->lock_tail = NULL;
		w->waiting_lock = false;
		s->lock_owner = w;
		wake(w);
	}
}

static void queue_frees(struct q2 *s, struct q2_free *f, unsigned n)
{
	if (!n)
		return;
	if (s->nfrees + n > s->frees_cap) {
		s->frees_cap = (s->nfrees + n) * 2;
		s->frees = realloc(s->frees, s->frees_cap * sizeof(*s->frees));
		if (!s->frees)
			abort();
	}
	memcpy(s->frees + s->nfrees, f, n * sizeof(*f));
	s->nfrees += n;
	if (s->nfrees > Q2_FREE_BARRIER)
		s->barrier = true;
}

/* ---- completion ---- */

static void complete_msg(void *arg)
{
	struct q2_req *qr = arg;
	bd_req_complete(qr->req, qr->ret);
}

static void finish(struct q2_req *qr, int ret)
{
	struct q2 *s = qr->s;

	if (qr->slot >= 0) {
		s->slots[qr->slot].pins--;
		qr->slot = -1;
	}
	for (int i = 0; i < 2; i++) {
		free(qr->cow[i].buf);
		free(qr->cow[i].cbuf);
	}
	free(qr->iov);
	free(qr->miov);
	free(qr->mbuf);
	free(qr->buf);
	free(qr->newtab);
	free(qr->ents);
	free(qr->fr);
	qr->ret = ret;
	if (s->lock_owner == qr)
		lock_release(s);
	if (qr->counted) {
		s->active--;
		maybe_free(s);
	}
	if (qr->home == s->owner)
		bd_req_complete(qr->req, ret);
	else if (bd_loop_send(qr->home, complete_msg, qr) < 0)
		abort(); /* the completion must run exactly once */
}

/* ---- reads ---- */

/* Issue a read of guest bytes [pos, pos+len) of the request from child at coff, zero-filling
 * what lies past the child's end. */
static void read_child(struct q2_req *qr, struct bd_child *child, uint64_t coff, uint64_t len)
{
	struct bd_req *req = qr->req;
	uint64_t csize = bd_node_size(bd_child_node(child));
	uint64_t avail = coff >= csize ? 0 : csize - coff;
	uint64_t rd = len < avail ? len : avail;

	if (rd < len)
		bd_iov_memset(req->iov, req->iovcnt, qr->pos + rd, 0, len - rd);
	if (rd) {
		struct iovec *v = iov_need(qr, req->iovcnt);
		int n = slice(req->iov, req->iovcnt, qr->pos, rd, v);
		sub_io(qr, child, BD_OP_READ, coff, rd, v, n, 0);
	}
}

/* How many clusters from l2i on (at most max) share ent's type and, for data, are contiguous. */
static uint64_t run_len(struct q2 *s, int slot, uint64_t l2i, uint64_t max,
			const struct q2_l2e *first, bool strict)
{
	uint64_t n = 1;

	if (first->type == Q2_C_COMPRESSED)
		return 1;
	while (n < max && l2i + n < s->l2n) {
		struct q2_l2e e;
		if (slot < 0)
			break;
		if (q2_l2e_decode(l2_raw(s, slot, l2i + n), s->cb, &e) < 0)
			break;
		if (first->type == Q2_C_NORMAL) {
			if (e.type != Q2_C_NORMAL || e.host != first->host + n * s->cs)
				break;
		} else if (e.type != first->type) {
			bool both_zero =
				(e.type == Q2_C_ZERO_PLAIN || e.type == Q2_C_ZERO_ALLOC) &&
				(first->type == Q2_C_ZERO_PLAIN || first->type == Q2_C_ZERO_ALLOC);
			if (strict || !both_zero)
				break;
		}
		n++;
	}
	return n;
}

/* How the guest range from off (at most max bytes, cut at the end of the L2 table) maps:
 * one type, and for data one contiguous host range. */
struct q2_map {
	enum q2_ctype type;
	uint64_t host;  /* NORMAL: host offset of off; COMPRESSED: the descriptor's offset */
	uint64_t csize; /* COMPRESSED */
	uint64_t len;
};

static int map_at(struct q2 *s, int slot, uint64_t off, uint64_t max, bool strict,
		  struct q2_map *m)
{
	uint64_t inoff = off & (s->cs - 1);
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t table_left = ((s->l2n - l2i) << s->cb) - inoff;
	struct q2_l2e e;

	memset(m, 0, sizeof(*m));
	if (max > table_left)
		max = table_left;
	if (slot < 0) {
		m->type = Q2_C_UNALLOC;
		m->len = max;
		return 0;
	}
	if (!s->h.extl2) {
		if (l2_entry(s, slot, l2i, &e) < 0)
			return -EIO;
		uint64_t n = run_len(s, slot, l2i, (inoff + max + s->cs - 1) >> s->cb, &e, strict);
		m->type = e.type;
		m->host = e.type == Q2_C_NORMAL ? e.host + inoff : e.host;
		m->csize = e.csize;
		m->len = (n << s->cb) - inoff;
		if (m->len > max)
			m->len = max;
		return 0;
	}
	/* Extended L2: subcluster by subcluster. */
	uint32_t ub = s->cb - 5;
	uint64_t usz = 1ull << ub, pos = off, len = 0, h0 = 0;
	enum q2_ctype t0 = Q2_C_UNALLOC;
	while (len < max) {
		uint64_t li = (pos >> s->cb) & (s->l2n - 1);
		const uint8_t *ent = s->slots[slot].tab + 16 * li;
		enum q2_ctype t;
		uint64_t h;
		if (l2_entry(s, slot, li, &e) < 0)
			return -EIO;
		if (q2_subcluster(&e, q2_be64(ent + 8), (unsigned)((pos >> ub) & 31), s->cb, &t,
				  &h) < 0) {
			q2_corrupt(s, s->slots[slot].off + 16 * li, 16, true,
				   "Invalid subcluster bitmap 0x%016" PRIx64, q2_be64(ent + 8));
			return -EIO;
		}
		if (t == Q2_C_COMPRESSED) {
			if (len)
				break;
			m->type = t;
			m->host = e.host;
			m->csize = e.csize;
			m->len = s->cs - inoff < max ? s->cs - inoff : max;
			return 0;
		}
		uint64_t within = usz - (pos & (usz - 1));
		if (len == 0) {
			t0 = t;
			h0 = h + (pos & (usz - 1));
		} else if (t != t0 || (t == Q2_C_NORMAL && h != h0 + (pos - off))) {
			break;
		}
		len += within;
		pos += within;
	}
	m->type = t0;
	m->host = h0;
	m->len = len < max ? len : max;
	return 0;
}

static int read_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;

	for (;;) {
		switch (qr->st) {
		case ST_R_NEXT: {
			uint64_t off = req->offset + qr->pos;
			uint64_t inoff = off & (s->cs - 1);
			uint64_t rem = qr->end - qr->pos;
			uint64_t l1e, chunk;
			struct q2_map e;
			int slot, r;

			if (qr->pos == qr->end)
				return 1;
			r = l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (map_at(s, slot, off, rem, false, &e) < 0)
				return -EIO;
			chunk = e.len;
			qr->chunk = chunk;
			qr->st = ST_R_CHUNK_DONE;
			switch (e.type) {
			case Q2_C_UNALLOC:
				if (s->backing)
					read_child(qr, s->backing, off, chunk);
				else
					bd_iov_memset(req->iov, req->iovcnt, qr->pos, 0, chunk);
				break;
			case Q2_C_ZERO_PLAIN:
			case Q2_C_ZERO_ALLOC:
				bd_iov_memset(req->iov, req->iovcnt, qr->pos, 0, chunk);
				break;
			case Q2_C_NORMAL:
				read_child(qr, s->file, e.host, chunk);
				break;
			case Q2_C_COMPRESSED: {
				qr->dc_host = e.host;
				qr->dc_in = inoff;
				if (s->dc_off == e.host && s->dc_off) {
					qr->st = ST_R_DECOMP;
					continue;
				}
				uint64_t fsz = bd_node_size(fnode(s));
				uint64_t clen = e.csize;
				if (e.host >= fsz) {
					q2_corrupt(s, e.host, e.csize, false,
						   "Compressed cluster at 0x%" PRIx64
						   " past the end of the file",
						   e.host);
					return -EIO;
				}
				if (clen > fsz - e.host)
					clen = fsz - e.host;
				free(qr->buf);
				qr->buf = malloc(clen);
				if (!qr->buf)
					return -ENOMEM;
				struct iovec *v = iov_need(qr, 1);
				v[0].iov_base = qr->buf;
				v[0].iov_len = clen;
				qr->dc_in = inoff | (clen << 32); /* both, unpacked below */
				sub_io(qr, s->file, BD_OP_READ, e.host, clen, v, 1, 0);
				qr->st = ST_R_DECOMP;
				break;
			}
			}
			if (qr->pending)
				return 0;
			if (qr->err)
				return qr->err;
			continue;
		}
		case ST_R_DECOMP: {
			uint64_t inoff = qr->dc_in & 0xffffffffu;
			if (qr->err)
				return qr->err;
			if (s->dc_off != qr->dc_host || !s->dc_off) {
				uint64_t clen = qr->dc_in >> 32;
				int r = q2_decompress((enum q2_compression)s->h.compression_type,
						      qr->buf, clen, s->dc_buf, s->cs);
				if (r < 0) {
					s->dc_off = 0;
					if (r == -ENOTSUP)
						bd_log(BD_LOG_ERROR,
						       "qcow2 '%s': compression type %u not built in",
						       bd_node_name(s->node), s->h.compression_type);
					else
						q2_corrupt(s, qr->dc_host, clen, false,
							   "Cannot decompress the cluster at 0x%" PRIx64,
							   qr->dc_host);
					return r == -ENOTSUP ? -ENOTSUP : -EIO;
				}
				s->dc_off = qr->dc_host;
			}
			bd_iov_from_buf(req->iov, req->iovcnt, qr->pos, s->dc_buf + inoff, qr->chunk);
			qr->st = ST_R_CHUNK_DONE;
			continue;
		}
		case ST_R_CHUNK_DONE:
			if (qr->err)
				return qr->err;
			qr->pos += qr->chunk;
			qr->st = ST_R_NEXT;
			continue;
		default:
			return -EIO;
		}
	}
}

/* ---- allocation ---- */

/* May the data cluster of e be written in place?  The COPIED flag says its refcount is one;
 * the in-memory refcount must agree (a hostile flag on a shared cluster would otherwise let a
 * guest write reach a snapshot's data). */
static bool in_place(struct q2 *s, const struct q2_l2e *e)
{
	if (e->type != Q2_C_NORMAL || !e->copied)
		return false;
	uint64_t rc = rc_get(s, e->host >> s->cb);
	if (rc == 1)
		return true;
	q2_corrupt(s, e->host, s->cs, false,
		   "OFLAG_COPIED data cluster 0x%" PRIx64 " has refcount %" PRIu64
		   "; copying it on write",
		   e->host, rc);
	return false;
}

/* Find up to want contiguous free clusters.  Returns 1 with first and got set, 0 when refcount block
 * need_rb must be created first, -ENOSPC when the image file is full. */
static int alloc_find(struct q2 *s, uint64_t want, uint64_t *first, uint64_t *got,
		      uint64_t *need_rb)
{
	uint64_t fclusters = bd_node_size(fnode(s)) >> s->cb;
	uint64_t c = s->free_hint ? s->free_hint : 1;

	for (; c < fclusters; c++) {
		uint64_t r = c / s->epb;
		if (r >= s->reft_n)
			break;
		if (!s->rb[r]) {
			*need_rb = r;
			return 0;
		}
		if (rc_get(s, c) == 0)
			break;
	}
	if (c >= fclusters || c / s->epb >= s->reft_n) {
		bd_log(BD_LOG_ERROR,
		       "qcow2 '%s': no free cluster left in the image file (%" PRIu64 " clusters)",
		       bd_node_name(s->node), fclusters);
		return -ENOSPC;
	}
	s->free_hint = c;
	uint64_t n = 1;
	while (n < want && c + n < fclusters) {
		uint64_t r = (c + n) / s->epb;
		if (r >= s->reft_n || !s->rb[r] || rc_get(s, c + n) != 0)
			break;
		n++;
	}
	*first = c;
	*got = n;
	return 1;
}

/* Allocate (refcount 1) clusters [c, c+n) found by alloc_find. */
static int alloc_take(struct q2 *s, uint64_t c, uint64_t n)
{
	const char *what = meta_overlap(s, c << s->cb, n << s->cb);

	if (what) {
		q2_corrupt(s, c << s->cb, n << s->cb, true,
			   "Preventing invalid allocation of %s at 0x%" PRIx64
			   " (its refcount is zero)",
			   what, c << s->cb);
		return -EIO;
	}
	for (uint64_t i = 0; i < n; i++) {
		int r = rc_set(s, c + i, 1);
		if (r < 0)
			return r;
	}
	s->free_hint = c + n;
	return 0;
}

/* Start creating refcount block qr->rb_idx; the program returns to qr->rb_ret. */
static int rb_create(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t r = qr->rb_idx;
	uint64_t c = r * s->epb; /* the first cluster of the range it covers: always free */
	uint64_t off = c << s->cb;
	struct iovec *v;

	if (off + s->cs > bd_node_size(fnode(s)))
		return -ENOSPC;
	if (meta_overlap(s, off, s->cs)) {
		q2_corrupt(s, off, s->cs, true,
			   "New refcount block at 0x%" PRIx64 " would overlap metadata", off);
		return -EIO;
	}
	s->rb[r] = calloc(1, s->cs);
	if (!s->rb[r])
		return -ENOMEM;
	q2_refcount_set(s->rb[r], s->h.refcount_order, 0, 1);
	s->reft[r] = off;
	v = miov_need(qr, 1);
	v[0].iov_base = s->rb[r];
	v[0].iov_len = s->cs;
	qr->st = ST_RB_WRITTEN;
	sub_io(qr, s->file, BD_OP_WRITE, off, s->cs, v, 1, 0);
	if (!qr->pending)
		return qr->err ? qr->err : -EIO;
	return 0;
}

/* Write the dirty ranges of refcount blocks (rounded to 512 bytes). */
static void write_rb_dirty(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct iovec *v = miov_need(qr, (int)s->rbd_n + 1);

	for (unsigned i = 0; i < s->rbd_n; i++) {
		struct q2_rbdirty *d = &s->rbd[i];
		uint64_t lo = d->lo & ~511u, hi = ((uint64_t)d->hi + 511) & ~511ull;
		if (hi > s->cs)
			hi = s->cs;
		v[i].iov_base = s->rb[d->idx] + lo;
		v[i].iov_len = hi - lo;
		sub_io(qr, s->file, BD_OP_WRITE, s->reft[d->idx] + lo, hi - lo, &v[i], 1, 0);
	}
	s->rbd_n = 0;
}

/* ---- the metadata program (lock held, qr->slot pinned or qr->newl2 set) ---- */

static void mp_set_entries(struct q2 *s, uint8_t *tab, struct q2_req *qr)
{
	for (uint64_t k = 0; k < qr->nent; k++)
		q2_put_be64(tab + 8 * (qr->l2i + k), qr->ents[k]);
}

static int mp_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	switch (qr->st) {
	case ST_MP_P1: {
		/* Data (with copy-on-write), refcount blocks, a new L2 table: in parallel. */
		qr->st = ST_MP_P1_DONE;
		if (qr->dwrite)
			sub_io(qr, s->file, BD_OP_WRITE, qr->dhost, qr->dlen, qr->iov,
			       qr->diovcnt, 0);
		unsigned nrb = s->rbd_n;
		struct iovec *mv = miov_need(qr, (int)nrb + 1);
		write_rb_dirty(qr); /* uses mv[0 .. nrb) */
		if (qr->newl2) {
			mp_set_entries(s, qr->newtab, qr);
			mv[nrb].iov_base = qr->newtab;
			mv[nrb].iov_len = s->cs;
			sub_io(qr, s->file, BD_OP_WRITE, qr->newl2, s->cs, &mv[nrb], 1, 0);
		}
		return qr->pending ? 1 : 2;
	}
	case ST_MP_P1_DONE:
		if (qr->err)
			return qr->err;
		qr->st = ST_MP_P2_DONE;
		if (qr->incr && !s->lazy)
			sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		return qr->pending ? 1 : 2;
	case ST_MP_P2_DONE: {
		if (qr->err)
			return qr->err;
		qr->st = ST_MP_P3_DONE;
		struct iovec *v = miov_need(qr, 1);
		if (qr->newl2) {
			/* Install the new table in the cache (the pinned copy source's slot, or
			 * any free slot), then point the L1 entry at it. */
			int slot = qr->slot;
			if (slot < 0) {
				for (unsigned i = 0; i < s->nslots; i++)
					if (!s->slots[i].pins && !s->slots[i].loading &&
					    (slot < 0 || s->slots[i].off == 0 ||
					     s->slots[i].lru < s->slots[slot].lru))
						slot = (int)i;
				if (slot >= 0) {
					s->slots[slot].pins++;
					qr->slot = slot;
				}
			}
			if (slot >= 0) {
				memcpy(s->slots[slot].tab, qr->newtab, s->cs);
				s->slots[slot].off = qr->newl2;
				s->slots[slot].lru = ++s->lru_clock;
			}
			s->l1[qr->l1i] = qr->newl2 | Q2_OFLAG_COPIED;
			uint64_t lo = (qr->l1i * 8) & ~511ull;
			uint64_t hi = lo + 512;
			if (hi > (uint64_t)s->l1_size * 8)
				hi = ((uint64_t)s->l1_size * 8 + 511) & ~511ull;
			/* The L1 array is host order: write from a big-endian copy. */
			uint8_t *be = malloc(hi - lo);
			if (!be)
				return -ENOMEM;
			memset(be, 0, hi - lo);
			for (uint64_t k = lo / 8; k < hi / 8 && k < s->l1_size; k++)
				q2_put_be64(be + 8 * k - lo, s->l1[k]);
			free(qr->mbuf);
			qr->mbuf = be; /* freed with the request */
			v[0].iov_base = be;
			v[0].iov_len = hi - lo;
			sub_io(qr, s->file, BD_OP_WRITE, s->h.l1_table_offset + lo, hi - lo, v, 1, 0);
		} else {
			uint8_t *tab = s->slots[qr->slot].tab;
			uint64_t lo = (qr->l2i * 8) & ~511ull;
			uint64_t hi = ((qr->l2i + qr->nent) * 8 + 511) & ~511ull;
			mp_set_entries(s, tab, qr);
			v[0].iov_base = tab + lo;
			v[0].iov_len = hi - lo;
			sub_io(qr, s->file, BD_OP_WRITE, s->slots[qr->slot].off + lo, hi - lo, v, 1,
			       0);
		}
		return qr->pending ? 1 : 2;
	}
	case ST_MP_P3_DONE:
		if (qr->err) {
			/* The L2/L1 entry on disk is unknown: stop writing. */
			q2_corrupt(s, UINT64_MAX, 0, true, "L2/L1 update failed (%s)",
				   strerror(-qr->err));
			return qr->err;
		}
		if (qr->oldl2)
			add_free(qr, qr->oldl2, s->cs, false);
		queue_frees(s, qr->fr, qr->nfr);
		qr->nfr = 0;
		if (qr->slot >= 0) {
			s->slots[qr->slot].pins--;
			qr->slot = -1;
		}
		free(qr->newtab);
		qr->newtab = NULL;
		cow_free(qr);
		qr->newl2 = qr->oldl2 = 0;
		qr->nent = 0;
		qr->dwrite = false;
		qr->incr = false;
		return 3; /* program done */
	default:
		return -EIO;
	}
}

/* Prepare the L2 side of a program for guest offset off: pin the cached table, or allocate a
 * new one (empty, or a copy of a shared one).  Returns 1 ready, 0 waiting (state unchanged),
 * <0 error. */
static int mp_prepare_l2(struct q2_req *qr, uint64_t off)
{
	struct q2 *s = qr->s;
	uint64_t l1e;
	int slot, r;

	r = l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	qr->l1i = off >> s->l2shift;
	if (slot >= 0 && (l1e & Q2_OFLAG_COPIED)) {
		qr->slot = slot;
		s->slots[slot].pins++;
		return 1;
	}
	/* A new table: allocate one cluster. */
	uint64_t c, got, need;
	r = alloc_find(s, 1, &c, &got, &need);
	if (r < 0)
		return r;
	if (r == 0) {
		qr->rb_idx = need;
		qr->rb_ret = qr->st;
		r = rb_create(qr);
		return r < 0 ? r : 0;
	}
	r = alloc_take(s, c, 1);
	if (r < 0)
		return r;
	qr->incr = true;
	qr->newl2 = c << s->cb;
	qr->newtab = malloc(s->cs);
	if (!qr->newtab)
		return -ENOMEM;
	if (slot >= 0) {
		memcpy(qr->newtab, s->slots[slot].tab, s->cs);
		qr->oldl2 = l1e & Q2_OFFSET_MASK;
		qr->slot = slot;
		s->slots[slot].pins++;
	} else {
		memset(qr->newtab, 0, s->cs);
	}
	return 1;
}

/* The table the program changes: the new one, or the cached one. */
static uint8_t *mp_tab(struct q2_req *qr)
{
	return qr->newl2 ? qr->newtab : qr->s->slots[qr->slot].tab;
}

static void ents_need(struct q2_req *qr, uint64_t n)
{
	if (n > qr->entcap) {
		qr->entcap = n;
		qr->ents = realloc(qr->ents, n * sizeof(*qr->ents));
		if (!qr->ents)
			abort();
	}
}

/* The clusters an entry references lose a reference when it is replaced. */
static void free_entry(struct q2_req *qr, const struct q2_l2e *e, bool discard)
{
	if (e->type == Q2_C_NORMAL || e->type == Q2_C_ZERO_ALLOC)
		add_free(qr, e->host, qr->s->cs, discard);
	else if (e->type == Q2_C_COMPRESSED)
		add_free(qr, e->host & ~511ull, e->csize + (e->host & 511), discard);
}

/* ---- writes ---- */

static bool reads_zero_unalloc(struct q2 *s, uint64_t guest)
{
	return !s->backing || guest >= bd_node_size(bd_child_node(s->backing));
}

static void cow_free(struct q2_req *qr)
{
	for (int i = 0; i < 2; i++) {
		free(qr->cow[i].buf);
		free(qr->cow[i].cbuf);
	}
	memset(qr->cow, 0, sizeof(qr->cow));
}

/* Read the old contents of a cluster for copy-on-write into cow->buf. */
static int cow_read(struct q2_req *qr, struct q2_cow *cw)
{
	struct q2 *s = qr->s;
	struct iovec *v = malloc(sizeof(*v));

	if (!v)
		return -ENOMEM;
	cw->buf = malloc(s->cs);
	if (!cw->buf) {
		free(v);
		return -ENOMEM;
	}
	/* the iovec is freed with the request through cbuf when not compressed */
	switch (cw->type) {
	case Q2_C_UNALLOC: {
		uint64_t bsz = s->backing ? bd_node_size(bd_child_node(s->backing)) : 0;
		uint64_t avail = cw->guest >= bsz ? 0 : bsz - cw->guest;
		uint64_t rd = avail < s->cs ? avail : s->cs;
		memset(cw->buf + rd, 0, s->cs - rd);
		if (rd) {
			v->iov_base = cw->buf;
			v->iov_len = rd;
			sub_io(qr, s->backing, BD_OP_READ, cw->guest, rd, v, 1, 0);
		}
		cw->cbuf = (uint8_t *)v;
		return 0;
	}
	case Q2_C_ZERO_PLAIN:
	case Q2_C_ZERO_ALLOC:
		memset(cw->buf, 0, s->cs);
		cw->cbuf = (uint8_t *)v;
		return 0;
	case Q2_C_NORMAL: {
		uint64_t fsz = bd_node_size(fnode(s));
		uint64_t avail = cw->host >= fsz ? 0 : fsz - cw->host;
		uint64_t rd = avail < s->cs ? avail : s->cs;
		memset(cw->buf + rd, 0, s->cs - rd);
		if (rd) {
			v->iov_base = cw->buf;
			v->iov_len = rd;
			sub_io(qr, s->file, BD_OP_READ, cw->host, rd, v, 1, 0);
		}
		cw->cbuf = (uint8_t *)v;
		return 0;
	}
	case Q2_C_COMPRESSED: {
		uint64_t fsz = bd_node_size(fnode(s));
		uint64_t clen = cw->csize;
		if (cw->host >= fsz) {
			free(v);
			return -EIO;
		}
		if (clen > fsz - cw->host)
			clen = fsz - cw->host;
		cw->csize = clen;
		/* cbuf holds [iovec][compressed bytes] */
		free(v);
		cw->cbuf = malloc(sizeof(struct iovec) + clen);
		if (!cw->cbuf)
			return -ENOMEM;
		v = (struct iovec *)(void *)cw->cbuf;
		v->iov_base = cw->cbuf + sizeof(struct iovec);
		v->iov_len = clen;
		sub_io(qr, s->file, BD_OP_READ, cw->host, clen, v, 1, 0);
		return 0;
	}
	}
	free(v);
	return -EIO;
}

static int cow_finish(struct q2_req *qr, struct q2_cow *cw)
{
	struct q2 *s = qr->s;

	if (!cw->needed || cw->type != Q2_C_COMPRESSED)
		return 0;
	int r = q2_decompress((enum q2_compression)s->h.compression_type,
			      cw->cbuf + sizeof(struct iovec), cw->csize, cw->buf, s->cs);
	if (r < 0) {
		q2_corrupt(s, cw->host, cw->csize, false,
			   "Cannot decompress the cluster at 0x%" PRIx64 " for copy-on-write",
			   cw->host);
		return -EIO;
	}
	return 0;
}

/* Plan one allocation program for the write range at qr->pos (lock held). */
static int alloc_plan(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	uint64_t off = qr->req->offset + qr->pos;
	uint64_t inoff = off & (s->cs - 1);
	uint64_t rem = qr->end - qr->pos;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t want, c, got, need, n;
	int r;

	if (qr->slot < 0 && !qr->newl2) {
		r = mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = mp_tab(qr);
	/* Clusters to allocate: from l2i on, while they cannot be written in place. */
	want = (inoff + rem + s->cs - 1) >> s->cb;
	if (want > s->l2n - l2i)
		want = s->l2n - l2i;
	if (want > Q2_MAX_RUN_CLUSTERS)
		want = Q2_MAX_RUN_CLUSTERS;
	for (n = 0; n < want; n++) {
		struct q2_l2e e;
		if (q2_l2e_decode(q2_be64(tab + 8 * (l2i + n)), s->cb, &e) < 0) {
			if (n == 0) {
				q2_corrupt(s, UINT64_MAX, 0, true, "Invalid L2 entry");
				return -EIO;
			}
			break;
		}
		if (in_place(s, &e))
			break;
	}
	if (n == 0 && qr->newl2) {
		q2_corrupt(s, UINT64_MAX, 0, true,
			   "L2 table shared by a snapshot holds an exclusively owned cluster");
		return -EIO;
	}
	if (n == 0) {
		/* The first cluster became writable in place (another request allocated it):
		 * drop the program and write in place. */
		return 2;
	}
	r = alloc_find(s, n, &c, &got, &need);
	if (r < 0)
		return r;
	if (r == 0) {
		qr->rb_idx = need;
		qr->rb_ret = ST_A_PLAN;
		r = rb_create(qr);
		return r < 0 ? r : 0;
	}
	r = alloc_take(s, c, got);
	if (r < 0)
		return r;
	n = got;
	qr->incr = true;

	/* Entries and frees. */
	ents_need(qr, n);
	qr->l2i = l2i;
	qr->nent = n;
	for (uint64_t k = 0; k < n; k++) {
		struct q2_l2e e;
		q2_l2e_decode(q2_be64(tab + 8 * (l2i + k)), s->cb, &e);
		qr->ents[k] = ((c + k) << s->cb) | Q2_OFLAG_COPIED;
		free_entry(qr, &e, s->pass_discard_other);
	}

	/* The guest range written: [off, off+chunk). */
	uint64_t chunk = (n << s->cb) - inoff;
	if (chunk > rem)
		chunk = rem;
	qr->chunk = chunk;
	uint64_t tail = (n << s->cb) - inoff - chunk;

	/* Copy-on-write of the head of the first and the tail of the last cluster. */
	cow_free(qr);
	for (int i = 0; i < 2; i++) {
		uint64_t k = i == 0 ? 0 : n - 1;
		struct q2_cow *cw = &qr->cow[i];
		struct q2_l2e e;
		if ((i == 0 && inoff == 0) || (i == 1 && tail == 0))
			continue;
		if (i == 1 && n == 1 && qr->cow[0].needed) {
			/* head and tail in the same cluster: one copy serves both */
			continue;
		}
		q2_l2e_decode(q2_be64(tab + 8 * (l2i + k)), s->cb, &e);
		cw->needed = true;
		cw->type = e.type;
		cw->host = e.host;
		cw->csize = e.csize;
		cw->guest = (off & ~(s->cs - 1)) + (k << s->cb);
		if (e.type == Q2_C_UNALLOC && reads_zero_unalloc(s, cw->guest))
			cw->type = Q2_C_ZERO_PLAIN;
		r = cow_read(qr, cw);
		if (r < 0)
			return r;
	}

	/* The data write: [cow head][guest data][cow tail] at the new clusters. */
	struct q2_cow *tsrc = qr->cow[1].needed ? &qr->cow[1] : &qr->cow[0];
	struct iovec *v = iov_need(qr, qr->srccnt + 2);
	int nv = 0;
	if (inoff)
		v[nv++] = (struct iovec){qr->cow[0].buf, inoff};
	nv += slice(qr->src, qr->srccnt, qr->pos - qr->src_base, chunk, v + nv);
	if (tail)
		v[nv++] = (struct iovec){tsrc->buf + (s->cs - tail), tail};
	qr->diovcnt = nv;
	qr->dwrite = true;
	qr->dhost = c << s->cb;
	qr->dlen = n << s->cb;
	qr->st = ST_A_COW_READ_DONE;
	return 1;
}

static int write_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;

	for (;;) {
		switch (qr->st) {
		case ST_W_NEXT: {
			uint64_t off = qr->req->offset + qr->pos;
			uint64_t inoff = off & (s->cs - 1);
			uint64_t rem = qr->end - qr->pos;
			uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
			uint64_t l1e, n, chunk;
			struct q2_l2e e;
			int slot, r;

			if (qr->pos == qr->end) {
				qr->st = qr->w_ret;
				return 3;
			}
			if (s->broken)
				return -EIO;
			r = l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (l2_entry(s, slot, l2i, &e) < 0)
				return -EIO;
			if (in_place(s, &e)) {
				n = run_len(s, slot, l2i, (inoff + rem + s->cs - 1) >> s->cb, &e, true);
				/* run_len does not check COPIED on the following entries */
				for (uint64_t k = 1; k < n; k++) {
					struct q2_l2e f;
					q2_l2e_decode(l2_raw(s, slot, l2i + k), s->cb, &f);
					if (!f.copied || rc_get(s, f.host >> s->cb) != 1) {
						n = k;
						break;
					}
				}
				chunk = (n << s->cb) - inoff;
				if (chunk > rem)
					chunk = rem;
				const char *what = meta_overlap(s, e.host + inoff, chunk);
				if (what) {
					q2_corrupt(s, e.host + inoff, chunk, true,
						   "Preventing a guest write over the %s at 0x%" PRIx64,
						   what, e.host + inoff);
					return -EIO;
				}
				if (e.host + inoff + chunk > bd_node_size(fnode(s))) {
					q2_corrupt(s, e.host, s->cs, true,
						   "Data cluster at 0x%" PRIx64
						   " lies past the end of the file",
						   e.host);
					return -EIO;
				}
				struct iovec *v = iov_need(qr, qr->srccnt);
				int nv = slice(qr->src, qr->srccnt, qr->pos - qr->src_base, chunk, v);
				qr->chunk = chunk;
				qr->st = ST_W_CHUNK_DONE;
				sub_io(qr, s->file, BD_OP_WRITE, e.host + inoff, chunk, v, nv, 0);
				if (qr->pending)
					return 0;
				return qr->err ? qr->err : -EIO;
			}
			/* Needs an allocation: under the metadata lock, looking up again. */
			if (!lock_take(qr))
				return 0;
			qr->st = ST_A_PLAN;
			continue;
		}
		case ST_W_CHUNK_DONE:
			if (qr->err)
				return qr->err;
			qr->pos += qr->chunk;
			qr->st = ST_W_NEXT;
			continue;
		case ST_A_PLAN: {
			int r = alloc_plan(qr);
			if (r < 0)
				return r;
			if (r == 0)
				return 0; /* waiting for an L2 table or a new refcount block */
			if (r == 2) {
				if (qr->slot >= 0) {
					s->slots[qr->slot].pins--;
					qr->slot = -1;
				}
				qr->st = ST_W_NEXT;
				continue;
			}
			if (qr->pending)
				return 0;
			if (qr->err)
				return qr->err;
			continue; /* ST_A_COW_READ_DONE */
		}
		case ST_A_COW_READ_DONE:
			if (qr->err)
				return qr->err;
			for (int i = 0; i < 2; i++)
				if (cow_finish(qr, &qr->cow[i]) < 0)
					return -EIO;
			qr->st = ST_MP_P1;
			return 4; /* run the metadata program */
		default:
			return -EIO;
		}
	}
}

/* ---- write-zeroes and discard: only whole clusters change the metadata ---- */

/* Does the cluster at guest offset off already read as zeroes? (L2 table cached or none) */
static int cluster_reads_zero(struct q2_req *qr, uint64_t off, bool *zero)
{
	struct q2 *s = qr->s;
	uint64_t l1e;
	struct q2_l2e e;
	int slot, r;

	r = l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	if (l2_entry(s, slot, (off >> s->cb) & (s->l2n - 1), &e) < 0)
		return -EIO;
	*zero = e.type == Q2_C_ZERO_PLAIN || e.type == Q2_C_ZERO_ALLOC ||
		(e.type == Q2_C_UNALLOC && reads_zero_unalloc(s, off & ~(s->cs - 1)));
	return 1;
}

/* Plan the metadata program for whole clusters [off, off + n clusters) (one L2 table).
 * zero: write-zeroes (else discard).  Returns 1 program planned, 2 nothing to change,
 * 0 waiting, <0 error. */
static int zd_plan(struct q2_req *qr, uint64_t off, uint64_t n, bool zero, bool unmap)
{
	struct q2 *s = qr->s;
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t l1e;
	int slot, r;

	/* Without an L2 table: nothing to do unless zeroes must hide a backing file. */
	r = l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	if (slot < 0 && (!zero || reads_zero_unalloc(s, off)))
		return 2;
	if (qr->slot < 0 && !qr->newl2) {
		r = mp_prepare_l2(qr, off);
		if (r <= 0)
			return r;
	}
	uint8_t *tab = mp_tab(qr);
	bool has_backing = s->backing != NULL;
	bool changed = false;

	ents_need(qr, n);
	qr->l2i = l2i;
	qr->nent = n;
	for (uint64_t k = 0; k < n; k++) {
		uint64_t raw = q2_be64(tab + 8 * (l2i + k));
		struct q2_l2e e;
		uint64_t ne;

		if (q2_l2e_decode(raw, s->cb, &e) < 0) {
			q2_corrupt(s, UINT64_MAX, 0, true, "Invalid L2 entry 0x%016" PRIx64, raw);
			return -EIO;
		}
		if (zero) {
			if (!unmap && in_place(s, &e)) {
				ne = e.host | Q2_OFLAG_COPIED | Q2_OFLAG_ZERO;
			} else if (!unmap && e.type == Q2_C_ZERO_ALLOC && e.copied &&
				   rc_get(s, e.host >> s->cb) == 1) {
				ne = raw;
			} else {
				ne = Q2_OFLAG_ZERO;
				free_entry(qr, &e, false);
			}
		} else {
			if (e.type == Q2_C_UNALLOC || e.type == Q2_C_ZERO_PLAIN) {
				ne = raw;
			} else {
				ne = (has_backing && s->h.version >= 3) ? Q2_OFLAG_ZERO : 0;
				free_entry(qr, &e, s->pass_discard_request);
			}
		}
		qr->ents[k] = ne;
		if (ne != raw)
			changed = true;
	}
	if (!changed && !qr->newl2) {
		qr->nfr = 0;
		return 2;
	}
	qr->st = ST_MP_P1;
	return 1;
}

static int zd_step(struct q2_req *qr, bool zero)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;
	enum q2_st me = zero ? ST_Z_NEXT : ST_D_NEXT;

	for (;;) {
		uint64_t off = req->offset + qr->pos;
		uint64_t inoff = off & (s->cs - 1);
		uint64_t rem = req->len - qr->pos;
		bool to_end = req->offset + req->len >= s->size;
		int r;

		if (qr->pos == req->len)
			return 1;
		if (s->broken)
			return -EIO;
		/* A partial cluster: write-zeroes writes zero bytes, discard skips it. */
		if (inoff || (rem < s->cs && !to_end)) {
			uint64_t part = s->cs - inoff;
			if (part > rem)
				part = rem;
			if (!zero) {
				qr->pos += part;
				continue;
			}
			bool z;
			r = cluster_reads_zero(qr, off, &z);
			if (r <= 0)
				return r;
			if (z) {
				qr->pos += part;
				continue;
			}
			static const struct iovec zv = {q2_zeroes, sizeof(q2_zeroes)};
			qr->src = &zv;
			qr->srccnt = 1;
			qr->src_base = qr->pos;
			qr->end = qr->pos + part;
			qr->w_ret = me;
			qr->st = ST_W_NEXT;
			return 4; /* run the write machinery for this part */
		}
		/* Whole clusters, up to the end of this L2 table. */
		uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
		uint64_t n = (rem + (to_end ? s->cs - 1 : 0)) >> s->cb;
		if (n > s->l2n - l2i)
			n = s->l2n - l2i;
		if (n == 0)
			n = 1;
		r = zd_plan(qr, off, n, zero, !!(req->flags & BD_REQ_MAY_UNMAP) || !zero);
		if (r <= 0)
			return r;
		uint64_t done = n << s->cb;
		if (done > rem)
			done = rem;
		qr->chunk = done;
		if (r == 2) {
			if (qr->slot >= 0) {
				s->slots[qr->slot].pins--;
				qr->slot = -1;
			}
			qr->pos += done;
			continue;
		}
		return 5; /* run the metadata program, then advance by chunk */
	}
}

/* ---- block status ---- */

/* Append (or merge) an extent; false when the array is full. */
static bool ext_add(struct bd_req *req, uint64_t len, uint32_t flags, uint32_t depth)
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

static int bs_step(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;

	for (;;) {
		switch (qr->st) {
		case ST_B_NEXT: {
			uint64_t off = req->offset + qr->pos;
			uint64_t rem = req->len - qr->pos;
			uint64_t l1e, chunk;
			struct q2_map e;
			int slot, r;

			if (qr->pos == req->len || req->nr_extents >= req->max_extents ||
			    (req->nr_extents && (req->flags & BD_REQ_BS_ONE)))
				return 1;
			r = l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (map_at(s, slot, off, rem, true, &e) < 0)
				return -EIO;
			chunk = e.len;
			bool ok = true;
			switch (e.type) {
			case Q2_C_NORMAL:
			case Q2_C_COMPRESSED:
				ok = ext_add(req, chunk, BD_EXT_DATA, 1);
				break;
			case Q2_C_ZERO_PLAIN:
				ok = ext_add(req, chunk, BD_EXT_ZERO, 1);
				break;
			case Q2_C_ZERO_ALLOC:
				ok = ext_add(req, chunk, BD_EXT_ZERO | BD_EXT_DATA, 1);
				break;
			case Q2_C_UNALLOC: {
				uint64_t bsz = s->backing ? bd_node_size(bd_child_node(s->backing)) : 0;
				if (off >= bsz) {
					/* Past a short backing file the zeroes count as allocated
					 * in that backing layer (depth 2 from here), as in QEMU;
					 * without a backing file nothing has them (0). */
					ok = ext_add(req, chunk, BD_EXT_ZERO, s->backing ? 2 : 0);
					break;
				}
				if (chunk > bsz - off)
					chunk = bsz - off;
				qr->chunk = chunk;
				qr->bs_len = 0;
				qr->st = ST_B_BACKING_DONE;
				sub_io(qr, s->backing, BD_OP_BLOCK_STATUS, off, chunk, NULL, 0, 0);
				if (qr->pending)
					return 0;
				return qr->err ? qr->err : -EIO;
			}
			}
			if (!ok)
				return 1;
			qr->pos += chunk;
			continue;
		}
		case ST_B_BACKING_DONE: {
			uint64_t got = 0;
			if (qr->err)
				return qr->err;
			for (uint64_t i = 0; i < qr->bs_len && got < qr->chunk; i++) {
				uint64_t l = qr->bext[i].length;
				if (l > qr->chunk - got)
					l = qr->chunk - got;
				if (!ext_add(req, l, qr->bext[i].flags,
					     qr->bext[i].depth ? qr->bext[i].depth + 1 : 0))
					break;
				got += l;
			}
			if (got == 0)
				return req->nr_extents ? 1 : -EIO;
			qr->pos += got;
			if (got < qr->chunk)
				return 1;
			qr->st = ST_B_NEXT;
			continue;
		}
		default:
			return -EIO;
		}
	}
}

/* ---- the free program: apply queued refcount decrements ---- */

static void fp_run(struct q2_req *fq)
{
	struct q2 *s = fq->s;

	switch (fq->st) {
	case ST_FP_START:
		fq->st = ST_FP_FLUSHED;
		fq->err = 0;
		/* The L2 updates that dropped these references must be durable first. */
		sub_io(fq, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		if (fq->pending)
			return;
		/* fall through */
	case ST_FP_FLUSHED: {
		if (fq->err) {
			/* keep the references: a leak, never a dangling entry */
			bd_log(BD_LOG_WARN, "qcow2 '%s': flush failed; %u cluster ranges leaked",
			       bd_node_name(s->node), fq->nfp);
			fq->nfp = 0;
			goto done;
		}
		struct iovec *dv = iov_need(fq, (int)fq->nfp + 1);
		int ndv = 0;
		for (unsigned i = 0; i < fq->nfp; i++) {
			struct q2_free *f = &fq->fp[i];
			uint64_t c0 = f->off >> s->cb;
			uint64_t c1 = (f->off + f->len + s->cs - 1) >> s->cb;
			for (uint64_t c = c0; c < c1; c++) {
				uint64_t v = rc_get(s, c);
				if (v == 0) {
					q2_corrupt(s, c << s->cb, s->cs, false,
						   "Refcount underflow at cluster 0x%" PRIx64,
						   c << s->cb);
					continue;
				}
				if (rc_set(s, c, v - 1) < 0)
					continue;
				if (v == 1) {
					if (c < s->free_hint)
						s->free_hint = c;
					if (s->dc_off && (s->dc_off >> s->cb) <= c &&
					    c <= ((s->dc_off + s->cs) >> s->cb))
						s->dc_off = 0;
					if (f->discard && ndv < (int)fq->nfp)
						dv[ndv++] = (struct iovec){NULL, c};
				}
			}
		}
		fq->st = ST_FP_DONE;
		for (int i = 0; i < ndv; i++) {
			uint64_t c = dv[i].iov_len;
			sub_io(fq, s->file, BD_OP_DISCARD, c << s->cb, s->cs, NULL, 0, 0);
		}
		write_rb_dirty(fq);
		if (fq->pending)
			return;
	}
		/* fall through */
	case ST_FP_DONE:
		if (fq->err)
			bd_log(BD_LOG_WARN, "qcow2 '%s': writing refcount decrements failed: %s",
			       bd_node_name(s->node), strerror(-fq->err));
	done:
		free(fq->fp);
		fq->fp = NULL;
		fq->nfp = 0;
		atomic_store(&s->free_running, false);
		s->lock_owner = NULL;
		if (s->nfrees <= Q2_FREE_BARRIER && s->barrier) {
			s->barrier = false;
			struct q2_req *w = s->stalled, *next;
			s->stalled = NULL;
			for (; w; w = next) {
				next = w->next;
				wake(w);
			}
		}
		lock_release(s);
		return;
	default:
		return;
	}
}

static void fp_start(struct q2 *s)
{
	struct q2_req *fq = s->freeq;

	atomic_store(&s->free_running, true);
	s->lock_owner = fq;
	fq->fp = s->frees;
	fq->nfp = s->nfrees;
	s->frees = NULL;
	s->nfrees = s->frees_cap = 0;
	fq->st = ST_FP_START;
	fq->pending = 0;
	fq->err = 0;
	wake(fq);
}

/* ---- the dispatcher ---- */

static void start(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;

	if (!s->och)
		s->och = bd_node_chan(s->node, s->owner);
	if (req->op == BD_OP_FLUSH) {
		qr->st = ST_F_DONE;
		sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		if (!qr->pending)
			finish(qr, qr->err ? qr->err : -EIO);
		return;
	}
	if (s->barrier) {
		qr->next = s->stalled;
		s->stalled = qr;
		return; /* woken with st still ST_START */
	}
	qr->counted = true;
	s->active++;
	qr->slot = -1;
	switch (req->op) {
	case BD_OP_READ:
		qr->end = req->len;
		qr->st = ST_R_NEXT;
		break;
	case BD_OP_WRITE:
		if (s->broken) {
			finish(qr, -EIO);
			return;
		}
		qr->end = req->len;
		qr->src = req->iov;
		qr->srccnt = req->iovcnt;
		qr->w_ret = ST_START; /* unused: a plain write ends with the request */
		qr->st = ST_W_NEXT;
		break;
	case BD_OP_WRITE_ZEROES:
		if (s->h.version < 3 || (s->broken)) {
			finish(qr, s->broken ? -EIO : -ENOTSUP);
			return;
		}
		qr->st = ST_Z_NEXT;
		break;
	case BD_OP_DISCARD:
		if (s->broken) {
			finish(qr, -EIO);
			return;
		}
		qr->st = ST_D_NEXT;
		break;
	case BD_OP_BLOCK_STATUS:
		req->nr_extents = 0;
		qr->st = ST_B_NEXT;
		break;
	default:
		finish(qr, -ENOTSUP);
		return;
	}
	run(qr);
}

static void run(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	int r;

	if (!qr->req) {
		fp_run(qr);
		return;
	}
	for (;;) {
		switch (qr->st) {
		case ST_START:
			start(qr);
			return;
		case ST_F_DONE:
			finish(qr, qr->err);
			return;
		case ST_R_NEXT:
		case ST_R_CHUNK_DONE:
		case ST_R_DECOMP:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			r = read_step(qr);
			if (r != 0)
				finish(qr, r < 0 ? r : 0);
			return;
		case ST_W_NEXT:
		case ST_W_CHUNK_DONE:
		case ST_A_PLAN:
		case ST_A_COW_READ_DONE:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			r = write_step(qr);
			if (r < 0) {
				finish(qr, r);
				return;
			}
			if (r == 3) {
				/* write range done */
				if (qr->w_ret == ST_START) {
					finish(qr, 0);
					return;
				}
				qr->pos = qr->end; /* back to write-zeroes */
				continue;
			}
			if (r == 4)
				continue; /* ST_MP_P1 */
			return;
		case ST_MP_P1:
		case ST_MP_P1_DONE:
		case ST_MP_P2_DONE:
		case ST_MP_P3_DONE:
			r = mp_step(qr);
			if (r < 0) {
				finish(qr, r);
				return;
			}
			if (r == 1)
				return;
			if (r == 2)
				continue;
			/* program done: advance */
			qr->pos += qr->chunk;
			if (qr->req->op == BD_OP_WRITE || qr->w_ret == ST_Z_NEXT) {
				if (qr->req->op == BD_OP_WRITE_ZEROES && qr->st == ST_MP_P3_DONE &&
				    qr->w_ret == ST_Z_NEXT && qr->end != qr->pos) {
					/* still inside a partial-zero write range */
				}
			}
			if (qr->req->op == BD_OP_WRITE)
				qr->st = ST_W_NEXT;
			else if (qr->req->op == BD_OP_WRITE_ZEROES)
				qr->st = qr->src ? ST_W_NEXT : ST_Z_NEXT;
			else
				qr->st = ST_D_NEXT;
			continue;
		case ST_RB_WRITTEN:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			qr->st = ST_RB_FLUSHED;
			sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
			if (qr->pending)
				return;
			continue;
		case ST_RB_FLUSHED: {
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			/* Point the refcount table at the new block. */
			uint64_t r0 = qr->rb_idx;
			uint64_t lo = (r0 * 8) & ~511ull;
			uint64_t tbytes = (uint64_t)s->h.refcount_table_clusters << s->cb;
			uint64_t hi = lo + 512 > tbytes ? tbytes : lo + 512;
			uint8_t *be = malloc(hi - lo);
			if (!be) {
				finish(qr, -ENOMEM);
				return;
			}
			for (uint64_t k = lo / 8; k < hi / 8; k++)
				q2_put_be64(be + 8 * k - lo, k < s->reft_n ? s->reft[k] : 0);
			free(qr->mbuf);
			qr->mbuf = be;
			struct iovec *v = miov_need(qr, 1);
			v[0] = (struct iovec){be, hi - lo};
			qr->st = ST_RB_TABLE_DONE;
			sub_io(qr, s->file, BD_OP_WRITE, s->h.refcount_table_offset + lo, hi - lo, v,
			       1, 0);
			if (qr->pending)
				return;
			continue;
		}
		case ST_RB_TABLE_DONE:
			free(qr->mbuf);
			qr->mbuf = NULL;
			if (qr->err) {
				q2_corrupt(s, UINT64_MAX, 0, true, "Refcount table update failed");
				finish(qr, qr->err);
				return;
			}
			qr->st = qr->rb_ret;
			continue;
		case ST_Z_NEXT:
		case ST_D_NEXT: {
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			qr->src = NULL;
			if (!lock_take(qr))
				return;
			r = zd_step(qr, qr->st == ST_Z_NEXT);
			if (r < 0 || r == 1) {
				finish(qr, r < 0 ? r : 0);
				return;
			}
			if (r == 4 || r == 5)
				continue;
			return;
		}
		case ST_B_NEXT:
		case ST_B_BACKING_DONE:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			r = bs_step(qr);
			if (r != 0)
				finish(qr, r < 0 ? r : 0);
			return;
		default:
			finish(qr, -EIO);
			return;
		}
	}
}

static void start_msg(void *arg)
{
	run(arg);
}

static int q2_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct q2 *s = bd_node_priv(node);
	struct q2_req *qr = req->priv;
	struct bd_loop *me = bd_chan_loop(ch);
	struct bd_loop *owner = atomic_load(&s->owner);

	if (!owner) {
		struct bd_loop *expected = NULL;
		if (atomic_compare_exchange_strong(&s->owner, &expected, me))
			owner = me;
		else
			owner = expected;
	}
	memset(qr, 0, sizeof(*qr));
	qr->req = req;
	qr->s = s;
	qr->home = me;
	qr->slot = -1;
	qr->st = ST_START;
	if (owner == me) {
		wake(qr);
		return 0;
	}
	return bd_loop_send(owner, start_msg, qr);
}

/* ============================================================================================
 * Open-time metadata (control thread, synchronous I/O)
 */

/* Read all refcount blocks named by the refcount table. */
static int load_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err)
{
	uint64_t tbytes = (uint64_t)s->h.refcount_table_clusters << s->cb;
	uint8_t *raw = malloc(tbytes);
	int r;

	if (!raw)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(fnode(s), s->h.refcount_table_offset, raw, tbytes);
	if (r < 0) {
		free(raw);
		return bd_err_set(err, r, "Could not read the refcount table: %s", strerror(-r));
	}
	s->reft_n = tbytes / 8;
	s->reft = calloc(s->reft_n, sizeof(*s->reft));
	s->rb = calloc(s->reft_n, sizeof(*s->rb));
	if (!s->reft || !s->rb) {
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	for (uint64_t i = 0; i < s->reft_n; i++) {
		uint64_t off;
		if (q2_reftable_check(q2_be64(raw + 8 * i), s->cb, fsize, &off) < 0) {
			uint64_t bad = q2_be64(raw + 8 * i);
			free(raw);
			q2_corrupt(s, s->h.refcount_table_offset + 8 * i, 8, true,
				   "Refcount table entry %" PRIu64 " is invalid (0x%016" PRIx64 ")", i,
				   bad);
			return bd_err_set(err, -EIO,
					  "Image is corrupt: refcount table entry %" PRIu64
					  " is invalid",
					  i);
		}
		s->reft[i] = off;
		if (!off)
			continue;
		s->rb[i] = malloc(s->cs);
		if (!s->rb[i]) {
			free(raw);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		r = q2_sync_read(fnode(s), off, s->rb[i], s->cs);
		if (r < 0) {
			free(raw);
			return bd_err_set(err, r, "Could not read a refcount block: %s",
					  strerror(-r));
		}
	}
	free(raw);
	return 0;
}

static int write_header_fixed(struct q2 *s, struct bd_err *err)
{
	uint8_t buf[Q2_HEADER_LEN_WITH_CTYPE];
	uint32_t len = s->h.version == 2 ? Q2_V2_HEADER_LEN : s->h.header_length;
	int r;

	if (len > sizeof(buf))
		len = Q2_V3_HEADER_LEN; /* longer headers: only the known fields are rewritten */
	q2_header_write_fixed(&s->h, buf);
	r = q2_sync_write(fnode(s), 0, buf, len);
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not update the qcow2 header: %s", strerror(-r));
	return 0;
}

/* Refcount accounting for repair: count references into an array. */
struct q2_refs {
	uint64_t *ref;
	uint64_t n;
};

static int refs_add_c(struct q2 *s, struct q2_refs *rf, uint64_t off, uint64_t len)
{
	uint64_t c0 = off >> s->cb, c1 = (off + len + s->cs - 1) >> s->cb;

	if (len == 0)
		return 0;
	if (c1 > rf->n) {
		uint64_t nn = c1 + 1024;
		uint64_t *p = realloc(rf->ref, nn * sizeof(*p));
		if (!p)
			return -ENOMEM;
		memset(p + rf->n, 0, (nn - rf->n) * sizeof(*p));
		rf->ref = p;
		rf->n = nn;
	}
	for (uint64_t c = c0; c < c1; c++)
		rf->ref[c]++;
	return 0;
}

/* Count the references of one L1 table (its clusters, its L2 tables, their data). */
static int refs_l1(struct q2 *s, struct q2_refs *rf, uint64_t l1_off, uint32_t l1_size,
		   uint64_t fsize, struct bd_err *err)
{
	uint64_t bytes = (uint64_t)l1_size * 8;
	uint8_t *l1 = NULL, *l2 = malloc(s->cs);
	int r = 0;

	if (!l2)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (bytes) {
		l1 = malloc(bytes);
		if (!l1) {
			free(l2);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		r = q2_sync_read(fnode(s), l1_off, l1, bytes);
		if (r < 0)
			goto out;
		r = refs_add_c(s, rf, l1_off, bytes);
	}
	for (uint32_t i = 0; r == 0 && i < l1_size; i++) {
		uint64_t l2off;
		if (q2_l1e_check(q2_be64(l1 + 8 * i), s->cb, fsize, &l2off) < 0) {
			r = bd_err_set(err, -EIO, "Invalid L1 entry %" PRIu32 " at 0x%" PRIx64, i,
				       l1_off);
			goto out;
		}
		if (!l2off)
			continue;
		r = refs_add_c(s, rf, l2off, s->cs);
		if (r == 0)
			r = q2_sync_read(fnode(s), l2off, l2, s->cs);
		for (uint64_t k = 0; r == 0 && k < s->l2n; k++) {
			struct q2_l2e e;
			if (q2_l2e_decode(q2_be64(l2 + 8 * k), s->cb, &e) < 0) {
				r = bd_err_set(err, -EIO, "Invalid L2 entry in the table at 0x%" PRIx64,
					       l2off);
				goto out;
			}
			if (e.type == Q2_C_NORMAL || e.type == Q2_C_ZERO_ALLOC)
				r = refs_add_c(s, rf, e.host, s->cs);
			else if (e.type == Q2_C_COMPRESSED)
				r = refs_add_c(s, rf, e.host & ~511ull, e.csize + (e.host & 511));
		}
	}
out:
	free(l1);
	free(l2);
	if (r < 0 && err && !err->code)
		bd_err_set(err, r, "Could not read metadata: %s", strerror(-r));
	return r;
}

struct snap_cb_ctx {
	struct q2 *s;
	struct q2_refs *rf;
	uint64_t fsize;
	struct bd_err *err;
	int r;
};

static void snap_cb(void *opaque, const struct q2_snapinfo *sn)
{
	struct snap_cb_ctx *c = opaque;
	if (c->r == 0)
		c->r = refs_l1(c->s, c->rf, sn->l1_off, sn->l1_size, c->fsize, c->err);
}

/* Keep the snapshot list (describe, load-snapshot). */
static void snap_keep(void *opaque, const struct q2_snapinfo *sn)
{
	struct q2 *s = opaque;
	struct q2_snapinfo *n = realloc(s->snaps, (s->nsnaps + 1) * sizeof(*n));
	if (!n)
		return;
	s->snaps = n;
	s->snaps[s->nsnaps++] = *sn;
}

/* Read the snapshot table (validating it); with rf, count its references too. */
static int load_snapshots(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err)
{
	uint64_t avail = fsize - s->h.snapshots_offset;
	uint64_t len = 64u << 10;
	char msg[256];
	int r;

	if (!s->h.nb_snapshots)
		return 0;
	/* The table's size is not stored: read more until it parses (at most 64 MiB). */
	for (;;) {
		if (len > avail)
			len = avail;
		uint8_t *buf = malloc(len ? len : 1);
		if (!buf)
			return bd_err_set(err, -ENOMEM, "out of memory");
		r = q2_sync_read(fnode(s), s->h.snapshots_offset, buf, len);
		if (r < 0) {
			free(buf);
			return bd_err_set(err, r, "Could not read the snapshot table: %s",
					  strerror(-r));
		}
		struct snap_cb_ctx c = {s, rf, fsize, err, 0};
		free(s->snaps);
		s->snaps = NULL;
		s->nsnaps = 0;
		r = q2_snapshots_parse(buf, len, s->h.nb_snapshots, s->cb, fsize, &s->snap_bytes,
				       rf ? NULL : snap_keep, s, msg, sizeof(msg));
		if (r == 0 && rf)
			r = q2_snapshots_parse(buf, len, s->h.nb_snapshots, s->cb, fsize,
					       &s->snap_bytes, snap_cb, &c, msg, sizeof(msg));
		free(buf);
		if (r == -ENODATA && len < avail && len < (64u << 20)) {
			len *= 4;
			continue;
		}
		if (r < 0) {
			q2_corrupt(s, s->h.snapshots_offset, len, true, "%s", msg);
			return bd_err_set(err, -EIO, "Image is corrupt: %s", msg);
		}
		if (c.r < 0)
			return c.r;
		break;
	}
	if (rf)
		return refs_add_c(s, rf, s->h.snapshots_offset, s->snap_bytes);
	return 0;
}

/* Set the COPIED flag of every active L1 and L2 entry to (refcount == 1), with refcounts from
 * ref[] (cluster index -> refcount; NULL: the in-memory refcounts).  Writes the changed L2
 * tables, then the L1 table, then flushes.  Sync (control thread). */
static int fix_copied_flags(struct q2 *s, const uint64_t *ref, uint64_t nref, uint64_t *fixed,
			    struct bd_err *err)
{
	uint8_t *l2 = malloc(s->cs);
	bool l1_dirty = false;
	int r = 0;

	if (!l2)
		return bd_err_set(err, -ENOMEM, "out of memory");
#define REFC(c) (ref ? ((c) < nref ? ref[c] : 0) : rc_get(s, (c)))
	for (uint32_t i = 0; r == 0 && i < s->l1_size; i++) {
		uint64_t l2off = s->l1[i] & Q2_OFFSET_MASK;
		if (!l2off)
			continue;
		bool want = REFC(l2off >> s->cb) == 1;
		if (want != !!(s->l1[i] & Q2_OFLAG_COPIED)) {
			s->l1[i] = want ? s->l1[i] | Q2_OFLAG_COPIED : s->l1[i] & ~Q2_OFLAG_COPIED;
			l1_dirty = true;
			(*fixed)++;
		}
		r = q2_sync_read(fnode(s), l2off, l2, s->cs);
		if (r < 0)
			break;
		bool dirty = false;
		for (uint64_t k = 0; k < s->l2n; k++) {
			uint64_t e = q2_be64(l2 + 8 * k);
			struct q2_l2e d;
			if (q2_l2e_decode(e, s->cb, &d) < 0)
				continue;
			if (d.type != Q2_C_NORMAL && d.type != Q2_C_ZERO_ALLOC)
				continue;
			bool w = REFC(d.host >> s->cb) == 1;
			if (w != d.copied) {
				q2_put_be64(l2 + 8 * k, w ? e | Q2_OFLAG_COPIED : e & ~Q2_OFLAG_COPIED);
				dirty = true;
				(*fixed)++;
			}
		}
		if (dirty)
			r = q2_sync_write(fnode(s), l2off, l2, s->cs);
	}
#undef REFC
	free(l2);
	if (r == 0 && l1_dirty) {
		uint8_t *be = malloc((size_t)s->l1_size * 8);
		if (!be)
			return bd_err_set(err, -ENOMEM, "out of memory");
		for (uint32_t i = 0; i < s->l1_size; i++)
			q2_put_be64(be + 8 * i, s->l1[i]);
		r = q2_sync_write(fnode(s), s->h.l1_table_offset, be, (uint64_t)s->l1_size * 8);
		free(be);
	}
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not repair the COPIED flags: %s", strerror(-r));
	/* the L2 cache may hold old copies */
	for (unsigned i = 0; s->slots && i < s->nslots; i++)
		if (!s->slots[i].loading)
			s->slots[i].off = 0;
	return 0;
}

/* ---- persistent bitmaps ---- */

struct bm_ctx {
	struct q2 *s;
	uint8_t *dir;
	struct q2_refs *rf; /* repair: count the bitmap's clusters */
	uint64_t fsize;
	int r;
	unsigned marked;
};

static int refs_add_c(struct q2 *s, struct q2_refs *rf, uint64_t off, uint64_t len);

static void bm_cb(void *opaque, const struct q2_bitmap *bm)
{
	struct bm_ctx *c = opaque;
	struct q2 *s = c->s;

	if (c->r < 0)
		return;
	if (!c->rf) {
		/* blockd does not track writes in bitmaps: mark them not synced */
		if (!(bm->flags & Q2_BITMAP_IN_USE)) {
			q2_put_be32(c->dir + bm->entry_off + 12, bm->flags | Q2_BITMAP_IN_USE);
			c->marked++;
		}
		return;
	}
	uint64_t bytes = (uint64_t)bm->table_size * 8;
	if (!bytes)
		return;
	uint8_t *t = malloc(bytes);
	if (!t) {
		c->r = -ENOMEM;
		return;
	}
	c->r = q2_sync_read(fnode(s), bm->table_off, t, bytes);
	if (c->r == 0)
		c->r = refs_add_c(s, c->rf, bm->table_off, bytes);
	for (uint32_t i = 0; c->r == 0 && i < bm->table_size; i++) {
		uint64_t e = q2_be64(t + 8 * i), off = e & Q2_OFFSET_MASK;
		if (!off)
			continue;
		if (off & (s->cs - 1) || off + s->cs > c->fsize) {
			c->r = -EIO;
			break;
		}
		c->r = refs_add_c(s, c->rf, off, s->cs);
	}
	free(t);
}

/* Read the bitmap directory; with rf count every bitmap cluster, else set in_use on every
 * bitmap and write the directory back.  The extension must be consistent (autoclear bit). */
static int bitmaps_walk(struct q2 *s, uint64_t fsize, struct q2_refs *rf, struct bd_err *err)
{
	struct bm_ctx c = {s, NULL, rf, fsize, 0, 0};
	char msg[256];
	int r;

	c.dir = malloc(s->h.bitmap_dir_size);
	if (!c.dir)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(fnode(s), s->h.bitmap_dir_offset, c.dir, s->h.bitmap_dir_size);
	if (r < 0) {
		free(c.dir);
		return bd_err_set(err, r, "Could not read the bitmap directory: %s", strerror(-r));
	}
	r = q2_bitmap_dir_parse(c.dir, s->h.bitmap_dir_size, s->h.nb_bitmaps, s->cb, fsize, bm_cb,
				&c, msg, sizeof(msg));
	if (r < 0) {
		free(c.dir);
		return bd_err_set(err, -EIO, "Image is corrupt: %s", msg);
	}
	if (c.r < 0) {
		free(c.dir);
		return bd_err_set(err, c.r, "Could not read a bitmap table: %s", strerror(-c.r));
	}
	if (rf)
		r = refs_add_c(s, rf, s->h.bitmap_dir_offset, s->h.bitmap_dir_size);
	else if (c.marked) {
		r = q2_sync_write(fnode(s), s->h.bitmap_dir_offset, c.dir, s->h.bitmap_dir_size);
		if (r == 0)
			r = q2_sync_flush(fnode(s));
		if (r < 0)
			bd_err_set(err, r, "Could not mark the bitmaps in use: %s", strerror(-r));
		else
			bd_log(BD_LOG_INFO,
			       "qcow2 '%s': %u persistent bitmap(s) marked in-use (blockd does not "
			       "track writes in them)",
			       bd_node_name(s->node), c.marked);
	}
	free(c.dir);
	return r;
}

/* Rebuild every refcount from the metadata (dirty image with lazy refcounts). */
static int repair_refcounts(struct q2 *s, uint64_t fsize, struct bd_err *err)
{
	struct q2_refs rf = {0};
	uint64_t fixed = 0;
	int r;

	r = refs_add_c(s, &rf, 0, s->cs);
	/* bitmaps count only while the extension is consistent (else QEMU drops it) */
	if (r == 0 && s->h.has_bitmaps && (s->h.autoclear & Q2_AUTOCLEAR_BITMAPS))
		r = bitmaps_walk(s, fsize, &rf, err);
	if (r == 0)
		r = refs_l1(s, &rf, s->h.l1_table_offset, s->l1_size, fsize, err);
	if (r == 0)
		r = load_snapshots(s, fsize, &rf, err);
	if (r == 0)
		r = refs_add_c(s, &rf, s->h.refcount_table_offset,
			       (uint64_t)s->h.refcount_table_clusters << s->cb);
	for (uint64_t i = 0; r == 0 && i < s->reft_n; i++)
		if (s->reft[i])
			r = refs_add_c(s, &rf, s->reft[i], s->cs);
	if (r < 0)
		goto out;
	/* Every cluster with references needs a refcount block. */
	for (uint64_t c = 0; c < rf.n; c++) {
		uint64_t idx = c / s->epb;
		if (!rf.ref[c])
			continue;
		if (idx >= s->reft_n) {
			r = bd_err_set(err, -ENOTSUP,
				       "Cannot repair the dirty image: refcount table too small; "
				       "use 'qemu-img check -r all'");
			goto out;
		}
		if (!s->rb[idx]) {
			r = bd_err_set(err, -ENOTSUP,
				       "Cannot repair the dirty image: refcount block missing; use "
				       "'qemu-img check -r all'");
			goto out;
		}
		if (rf.ref[c] > q2_refcount_max(s->h.refcount_order)) {
			r = bd_err_set(err, -EIO, "Cannot repair: refcount overflow at 0x%" PRIx64,
				       c << s->cb);
			goto out;
		}
	}
	/* Apply the differences. */
	for (uint64_t idx = 0; idx < s->reft_n; idx++) {
		if (!s->rb[idx])
			continue;
		bool dirty = false;
		for (uint64_t e = 0; e < s->epb; e++) {
			uint64_t c = idx * s->epb + e;
			uint64_t want = c < rf.n ? rf.ref[c] : 0;
			if (q2_refcount_get(s->rb[idx], s->h.refcount_order, e) != want) {
				q2_refcount_set(s->rb[idx], s->h.refcount_order, e, want);
				dirty = true;
				fixed++;
			}
		}
		if (dirty) {
			r = q2_sync_write(fnode(s), s->reft[idx], s->rb[idx], s->cs);
			if (r < 0) {
				bd_err_set(err, r, "Could not write a refcount block: %s",
					   strerror(-r));
				goto out;
			}
		}
	}
	r = q2_sync_flush(fnode(s));
	if (r < 0) {
		bd_err_set(err, r, "flush failed: %s", strerror(-r));
		goto out;
	}
	/* The active tables' COPIED flags must say "refcount is one" exactly. */
	r = fix_copied_flags(s, rf.ref, rf.n, &fixed, err);
	if (r < 0)
		goto out;
	if (fixed)
		bd_log(BD_LOG_INFO, "qcow2 '%s': repaired %" PRIu64 " refcounts of a dirty image",
		       bd_node_name(s->node), fixed);
out:
	free(rf.ref);
	return r;
}

/* The highest cluster in use + 1 (by refcount). */
static uint64_t alloc_end_cluster(struct q2 *s)
{
	for (uint64_t idx = s->reft_n; idx-- > 0;) {
		if (!s->rb[idx])
			continue;
		for (uint64_t e = s->epb; e-- > 0;)
			if (q2_refcount_get(s->rb[idx], s->h.refcount_order, e))
				return idx * s->epb + e + 1;
	}
	return 1;
}

/* An upper bound of the image file's size for the virtual size: every cluster allocated,
 * every L2 table, refcount blocks, some slack for leaks and compressed COW. */
static uint64_t max_file_bytes(struct q2 *s, uint64_t used_end)
{
	uint64_t data = (s->size + s->cs - 1) & ~(s->cs - 1);
	uint64_t l2 = q2_l1_needed(s->size, s->cb) * s->cs;
	uint64_t total = used_end + data + l2 + (64ull << 20) + 64 * s->cs;
	uint64_t rbs = (total / s->cs / s->epb + 2) * s->cs;

	return total + rbs;
}

/* Grow the refcount table so that it can describe max_bytes of file (sync, at open/resize).
 * The new table and the refcount blocks it needs for itself go at the end of the file. */
static int grow_reftable(struct q2 *s, uint64_t max_bytes, struct bd_err *err)
{
	uint64_t need = (max_bytes >> s->cb) / s->epb + 1;
	uint64_t end, T, k, newn;
	uint64_t *nreft;
	uint8_t **nrb;
	int r;

	if (need <= s->reft_n)
		return 0;
	newn = need + need / 4 + 8;
	T = (newn * 8 + s->cs - 1) >> s->cb;
	newn = (T << s->cb) / 8;
	if ((T << s->cb) > Q2_MAX_REFTABLE_BYTES)
		return bd_err_set(err, -EFBIG, "The image would need a refcount table larger "
					       "than 8 MiB");
	end = alloc_end_cluster(s);
	if (end < (bd_node_size(fnode(s)) + s->cs - 1) >> s->cb &&
	    s->orig_file_size > (end << s->cb))
		end = (s->orig_file_size + s->cs - 1) >> s->cb;
	nreft = calloc(newn, sizeof(*nreft));
	nrb = calloc(newn, sizeof(*nrb));
	if (!nreft || !nrb) {
		free(nreft);
		free(nrb);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	memcpy(nreft, s->reft, s->reft_n * sizeof(*nreft));
	memcpy(nrb, s->rb, s->reft_n * sizeof(*nrb));
	/* k new refcount blocks at [end, end+k), then the table at [end+k, end+k+T). */
	k = 0;
	for (;;) {
		uint64_t m = 0;
		for (uint64_t c = end; c < end + k + T; c++) {
			uint64_t idx = c / s->epb;
			if (!nrb[idx] && (c == end || (c - 1) / s->epb != idx))
				m++;
		}
		if (m <= k)
			break;
		k = m;
	}
	uint64_t nb = 0;
	for (uint64_t c = end; c < end + k + T; c++) {
		uint64_t idx = c / s->epb;
		if (!nrb[idx]) {
			nrb[idx] = calloc(1, s->cs);
			if (!nrb[idx])
				abort();
			nreft[idx] = (end + nb) << s->cb;
			nb++;
		}
	}
	k = nb;
	/* Refcounts of the new blocks and the table. */
	for (uint64_t c = end; c < end + k + T; c++)
		q2_refcount_set(nrb[c / s->epb], s->h.refcount_order, c % s->epb, 1);
	/* Write: the file must be long enough first. */
	uint64_t need_file = (end + k + T) << s->cb;
	if (bd_node_size(fnode(s)) < need_file) {
		r = bd_node_resize(fnode(s), need_file, err);
		if (r < 0)
			goto fail;
	}
	for (uint64_t idx = 0; idx < newn; idx++) {
		bool is_new = idx >= s->reft_n || !s->rb[idx];
		if (!nrb[idx])
			continue;
		uint64_t lastc = (end + k + T - 1) / s->epb;
		if (is_new || (idx >= end / s->epb && idx <= lastc)) {
			r = q2_sync_write(fnode(s), nreft[idx], nrb[idx], s->cs);
			if (r < 0)
				goto io_fail;
		}
	}
	uint8_t *tab = calloc(1, T << s->cb);
	if (!tab)
		abort();
	for (uint64_t i = 0; i < newn; i++)
		q2_put_be64(tab + 8 * i, nreft[i]);
	r = q2_sync_write(fnode(s), (end + k) << s->cb, tab, T << s->cb);
	free(tab);
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		goto io_fail;
	/* Switch the header to the new table. */
	uint64_t old_off = s->h.refcount_table_offset;
	uint32_t old_clusters = s->h.refcount_table_clusters;
	uint8_t hb[12];
	q2_put_be64(hb, (end + k) << s->cb);
	q2_put_be32(hb + 8, (uint32_t)T);
	r = q2_sync_write(fnode(s), 48, hb, 12);
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		goto io_fail;
	s->h.refcount_table_offset = (end + k) << s->cb;
	s->h.refcount_table_clusters = (uint32_t)T;
	free(s->reft);
	free(s->rb);
	s->reft = nreft;
	s->rb = nrb;
	s->reft_n = newn;
	/* Free the old table's clusters. */
	for (uint64_t c = old_off >> s->cb; c < (old_off >> s->cb) + old_clusters; c++) {
		uint64_t v = rc_get(s, c);
		if (v)
			rc_set(s, c, v - 1);
	}
	for (unsigned i = 0; i < s->rbd_n; i++) {
		struct q2_rbdirty *d = &s->rbd[i];
		r = q2_sync_write(fnode(s), s->reft[d->idx], s->rb[d->idx], s->cs);
		if (r < 0)
			break;
	}
	s->rbd_n = 0;
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not free the old refcount table: %s",
				  strerror(-r));
	s->free_hint = 1;
	return 0;
io_fail:
	bd_err_set(err, r, "Could not grow the refcount table: %s", strerror(-r));
fail:
	for (uint64_t idx = 0; idx < newn; idx++)
		if (nrb[idx] && (idx >= s->reft_n || nrb[idx] != s->rb[idx]))
			free(nrb[idx]);
	free(nreft);
	free(nrb);
	return r;
}

/* Make sure the file can hold the worst case for the virtual size, sparse (see
 * docs/qcow2.md: the core does not let a format write past its child's end). */
static int prepare_growth(struct q2 *s, struct bd_err *err)
{
	uint64_t used = alloc_end_cluster(s) << s->cb;
	uint64_t fsz = bd_node_size(fnode(s));
	uint64_t want = max_file_bytes(s, used > fsz ? used : fsz);
	uint64_t reft_max = ((uint64_t)Q2_MAX_REFTABLE_BYTES / 8 - 64) * s->epb << s->cb;
	const struct bd_limits *fl = bd_node_limits(fnode(s));
	struct bd_err e2 = {0};
	int r;

	if (want > reft_max)
		want = reft_max;
	r = grow_reftable(s, want, err);
	if (r < 0)
		return r;
	fsz = bd_node_size(fnode(s));
	if (fsz < want && fl->can_resize) {
		r = bd_node_resize(fnode(s), want, &e2);
		if (r < 0) {
			/* A file system that cannot hold the worst case: reserve less. */
			bd_err_clear(&e2);
			uint64_t less = fsz + (1ull << 30);
			if (less < want)
				r = bd_node_resize(fnode(s), less, &e2);
			if (r < 0)
				bd_log(BD_LOG_WARN,
				       "qcow2 '%s': could not reserve room in the image file (%s); "
				       "allocations may fail with ENOSPC",
				       bd_node_name(s->node), e2.msg);
		}
	}
	return 0;
}

/* ---- backing file ---- */

static const char *file_name_of(struct bd_node *file)
{
	json_t *o = bd_node_options(file);
	json_t *f = o ? json_object_get(o, "filename") : NULL;
	return f && json_is_string(f) ? json_string_value(f) : NULL;
}

static int open_backing(struct bd_node *node, struct q2 *s, json_t *opts, struct bd_err *err)
{
	json_t *b = json_object_get(opts, "backing");
	char path[PATH_MAX + Q2_MAX_BACKING_NAME + 2];
	const char *fmt = NULL;

	if (b && (json_is_null(b) || (json_is_string(b) && !json_string_value(b)[0]))) {
		bd_opts_mark_used(opts, "backing");
		return 0; /* explicitly none */
	}
	if (b) {
		s->backing = bd_node_open_child(node, opts, "backing", false, err);
		if (!s->backing)
			return err && err->code ? err->code : -EINVAL;
		return 0;
	}
	if (!s->h.backing_file_offset)
		return 0;
	const char *bf = s->h.backing_file;
	if (!strncmp(bf, "json:", 5) || strstr(bf, "://") ||
	    (strchr(bf, ':') && bf[0] != '/' && strncmp(bf, "file:", 5)))
		return bd_err_set(err, -ENOTSUP,
				  "Backing file '%s' is not a plain file name: give the 'backing' "
				  "option explicitly",
				  bf);
	if (!strncmp(bf, "file:", 5))
		bf += 5;
	if (bf[0] == '/') {
		snprintf(path, sizeof(path), "%s", bf);
	} else {
		const char *img = file_name_of(fnode(s));
		const char *slash = img ? strrchr(img, '/') : NULL;
		if (slash)
			snprintf(path, sizeof(path), "%.*s/%s", (int)(slash - img), img, bf);
		else
			snprintf(path, sizeof(path), "%s", bf);
	}
	if (s->h.has_backing_fmt) {
		fmt = s->h.backing_fmt;
	} else {
		/* Probe: qcow2 or raw. */
		unsigned char magic[4] = {0};
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			return bd_err_set(err, -errno, "Could not open backing file '%s': %s", path,
					  strerror(errno));
		ssize_t n = pread(fd, magic, 4, 0);
		close(fd);
		fmt = (n == 4 && q2_be32(magic) == Q2_MAGIC) ? "qcow2" : "raw";
	}
	if (!bd_driver_find(fmt))
		return bd_err_set(err, -ENOTSUP, "Unknown backing file format '%s'", fmt);
	json_t *tmp = json_pack("{s:{s:s,s:b,s:{s:s,s:s}}}", "backing", "driver", fmt, "read-only",
				1, "file", "driver", "file", "filename", path);
	if (!tmp)
		return bd_err_set(err, -ENOMEM, "out of memory");
	s->backing = bd_node_open_child(node, tmp, "backing", true, err);
	json_decref(tmp);
	if (!s->backing)
		return err && err->code ? err->code : -EINVAL;
	return 0;
}

/* ---- open ---- */

/* Read-only view of an internal snapshot: its L1 table and disk size replace the active
 * ones. */
static int load_snapshot(struct q2 *s, const char *want, uint64_t fsize, struct bd_err *err)
{
	int k = -1;

	for (unsigned i = 0; i < s->nsnaps && k < 0; i++)
		if (!strcmp(s->snaps[i].id, want))
			k = (int)i;
	for (unsigned i = 0; i < s->nsnaps && k < 0; i++)
		if (!strcmp(s->snaps[i].name, want))
			k = (int)i;
	if (k < 0)
		return bd_err_set(err, -ENOENT, "Can't find snapshot '%s'", want);
	struct q2_snapinfo *sn = &s->snaps[k];
	uint64_t size = sn->disk_size ? sn->disk_size : s->h.size;
	if (q2_l1_needed_ext(size, s->cb, s->h.extl2) > sn->l1_size)
		return bd_err_set(err, -EIO, "Image is corrupt: snapshot '%s' has a short L1 table",
				  want);
	uint64_t *l1 = calloc(sn->l1_size ? sn->l1_size : 1, sizeof(*l1));
	uint8_t *raw = malloc(sn->l1_size ? (size_t)sn->l1_size * 8 : 1);
	int r = 0;
	if (!l1 || !raw) {
		free(l1);
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	if (sn->l1_size)
		r = q2_sync_read(fnode(s), sn->l1_off, raw, (uint64_t)sn->l1_size * 8);
	for (uint32_t i = 0; r == 0 && i < sn->l1_size; i++) {
		uint64_t l2off;
		l1[i] = q2_be64(raw + 8 * i);
		if (q2_l1e_check(l1[i], s->cb, fsize, &l2off) < 0)
			r = -EIO;
	}
	free(raw);
	if (r < 0) {
		free(l1);
		return bd_err_set(err, r, "Could not load snapshot '%s': %s", want,
				  r == -EIO ? "invalid L1 table" : strerror(-r));
	}
	free(s->l1);
	s->l1 = l1;
	s->l1_size = sn->l1_size;
	s->size = size;
	s->loaded_snap = k;
	return 0;
}

/* The fixed metadata regions, the refcount blocks and the active L2 tables must not overlap
 * one another (refcount loops, a table inside the header, ...). */
static int check_layout(struct q2 *s, char *what, size_t len)
{
	struct q2_region fixed[] = {
		{0, s->cs, "header"},
		{s->h.l1_table_offset, (uint64_t)s->l1_size * 8, "active L1 table"},
		{s->h.refcount_table_offset, (uint64_t)s->h.refcount_table_clusters << s->cb,
		 "refcount table"},
		{s->h.snapshots_offset, s->h.nb_snapshots ? s->snap_bytes : 0, "snapshot table"},
		{s->h.bitmap_dir_offset, s->h.has_bitmaps ? s->h.bitmap_dir_size : 0,
		 "bitmap directory"},
	};
	unsigned nf = 5;
	int i;

	for (unsigned a = 1; a < nf; a++) {
		i = q2_overlaps(fixed, a, fixed[a].start, fixed[a].len);
		if (i >= 0 && fixed[a].len) {
			snprintf(what, len, "the %s overlaps the %s", fixed[a].what, fixed[i].what);
			return -EIO;
		}
	}
	for (uint64_t r = 0; r < s->reft_n; r++) {
		if (!s->reft[r])
			continue;
		i = q2_overlaps(fixed, nf, s->reft[r], s->cs);
		if (i >= 0) {
			snprintf(what, len, "refcount block %" PRIu64 " overlaps the %s", r,
				 fixed[i].what);
			return -EIO;
		}
	}
	for (uint32_t k = 0; k < s->l1_size; k++) {
		uint64_t l2 = s->l1[k] & Q2_OFFSET_MASK;
		if (!l2)
			continue;
		i = q2_overlaps(fixed, nf, l2, s->cs);
		if (i >= 0) {
			snprintf(what, len, "L2 table %" PRIu32 " overlaps the %s", k, fixed[i].what);
			return -EIO;
		}
		/* A refcount block used as an L2 table would make guest data refcounts. */
		for (uint64_t r = 0; r < s->reft_n; r++) {
			if (s->reft[r] == l2) {
				snprintf(what, len, "L2 table %" PRIu32 " is refcount block %" PRIu64,
					 k, r);
				return -EIO;
			}
		}
	}
	return 0;
}

static void q2_free_mem(struct q2 *s)
{
	if (s->slots) {
		for (unsigned i = 0; i < s->nslots; i++)
			free(s->slots[i].tab);
		free(s->slots);
	}
	if (s->rb) {
		for (uint64_t i = 0; i < s->reft_n; i++)
			free(s->rb[i]);
		free(s->rb);
	}
	free(s->reft);
	free(s->l1);
	free(s->rbd);
	free(s->frees);
	free(s->dc_buf);
	free(s->snaps);
	s->snaps = NULL;
	s->nsnaps = 0;
	if (s->freeq) {
		free(s->freeq->iov);
		free(s->freeq->miov);
		free(s->freeq);
	}
	s->slots = NULL;
	s->rb = NULL;
	s->reft = NULL;
	s->l1 = NULL;
	s->rbd = NULL;
	s->frees = NULL;
	s->dc_buf = NULL;
	s->freeq = NULL;
}

static int q2_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		   struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	uint64_t l2cache = 0, fsize, hlen;
	bool lazy_opt = false, has_lazy_opt = false, b;
	const char *str, *load_snap = NULL;
	uint8_t *hbuf = NULL;
	char msg[512];
	int r;

	memset(s, 0, sizeof(*s));
	s->node = node;
	s->writable = !bd_node_read_only(node);

	r = bd_opts_size(opts, "l2-cache-size", &l2cache, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == -ENOENT) {
		uint64_t cache;
		r = bd_opts_size(opts, "cache-size", &cache, err);
		if (r < 0 && r != -ENOENT)
			return r;
		if (r == 0)
			l2cache = cache;
	}
	uint64_t ignored;
	r = bd_opts_size(opts, "refcount-cache-size", &ignored, err); /* all refcounts in memory */
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_u64(opts, "cache-clean-interval", &ignored, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(opts, "lazy-refcounts", &lazy_opt, err);
	if (r < 0 && r != -ENOENT)
		return r;
	has_lazy_opt = r == 0;
	s->pass_discard_request = bd_node_common(node)->discard == BD_DISCARD_UNMAP;
	r = bd_opts_bool(opts, "pass-discard-request", &s->pass_discard_request, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(opts, "pass-discard-other", &s->pass_discard_other, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(opts, "pass-discard-snapshot", &b, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_str(opts, "overlap-check", &str, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == 0 && strcmp(str, "none") && strcmp(str, "constant") && strcmp(str, "cached") &&
	    strcmp(str, "all"))
		return bd_err_set(err, -EINVAL, "Unsupported value '%s' for qcow2 option "
						"'overlap-check'", str);
	r = bd_opts_str(opts, "load-snapshot", &load_snap, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (load_snap && !bd_node_read_only(node))
		return bd_err_set(err, -EINVAL, "load-snapshot requires read-only=on");
	r = bd_opts_bool(opts, "discard-no-unref", &b, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (r == 0 && b)
		return bd_err_set(err, -ENOTSUP, "discard-no-unref is not supported");

	s->file = bd_node_open_child(node, opts, "file", true, err);
	if (!s->file)
		return err && err->code ? err->code : -EINVAL;
	fsize = bd_node_size(fnode(s));
	s->orig_file_size = fsize;

	/* Header: the first cluster (at most 2 MiB). */
	hlen = fsize < (1u << Q2_MAX_CLUSTER_BITS) ? fsize : (1u << Q2_MAX_CLUSTER_BITS);
	if (hlen < Q2_V2_HEADER_LEN)
		return bd_err_set(err, -EINVAL, "Image is not in qcow2 format");
	hbuf = malloc(hlen);
	if (!hbuf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = q2_sync_read(fnode(s), 0, hbuf, hlen);
	if (r < 0) {
		free(hbuf);
		return bd_err_set(err, r, "Could not read the qcow2 header: %s", strerror(-r));
	}
	r = q2_header_parse(hbuf, hlen, fsize, &s->h, msg, sizeof(msg));
	free(hbuf);
	if (r < 0) {
		if (r == -EINVAL && strcmp(msg, "Image is not in qcow2 format"))
			q2_corrupt(s, UINT64_MAX, 0, true, "%s", msg);
		return bd_err_set(err, r, "%s", msg);
	}
	s->cb = s->h.cluster_bits;
	s->cs = 1ull << s->cb;
	s->esz = s->h.extl2 ? 16 : 8;
	s->l2n = s->cs / s->esz;
	s->l2shift = s->cb + (uint32_t)__builtin_ctzll(s->l2n);
	s->epb = q2_rb_entries(s->cb, s->h.refcount_order);
	s->size = s->h.size;
	s->l1_size = s->h.l1_size;

	if (s->writable && s->h.extl2)
		return bd_err_set(err, -ENOTSUP,
				  "Images with extended L2 entries (subclusters) are supported "
				  "read-only: open with read-only=on");
	if (s->writable && (s->h.incompatible & Q2_INCOMPAT_CORRUPT))
		return bd_err_set(err, -EACCES,
				  "qcow2: Image is corrupt; cannot be opened read/write");
	if (s->writable && has_lazy_opt && lazy_opt && s->h.version < 3)
		return bd_err_set(err, -EINVAL,
				  "Lazy refcounts require a qcow2 image with at least qemu 1.1 "
				  "compatibility level");

	/* L1 table. */
	s->l1 = calloc(s->l1_size ? s->l1_size : 1, sizeof(*s->l1));
	if (!s->l1)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (s->l1_size) {
		uint8_t *raw = malloc((size_t)s->l1_size * 8);
		if (!raw)
			return bd_err_set(err, -ENOMEM, "out of memory");
		r = q2_sync_read(fnode(s), s->h.l1_table_offset, raw, (uint64_t)s->l1_size * 8);
		if (r < 0) {
			free(raw);
			r = bd_err_set(err, r, "Could not read the L1 table: %s", strerror(-r));
			goto fail;
		}
		for (uint32_t i = 0; i < s->l1_size; i++) {
			uint64_t e = q2_be64(raw + 8 * i), l2off;
			if (q2_l1e_check(e, s->cb, fsize, &l2off) < 0) {
				free(raw);
				q2_corrupt(s, s->h.l1_table_offset + 8ull * i, 8, true,
					   "L1 entry %" PRIu32 " is invalid (0x%016" PRIx64 ")", i, e);
				r = bd_err_set(err, -EIO,
					       "Image is corrupt: L1 entry %" PRIu32
					       " is invalid (0x%016" PRIx64 ")",
					       i, e);
				goto fail;
			}
			s->l1[i] = e;
		}
		free(raw);
	}

	r = load_refcounts(s, fsize, err);
	if (r < 0)
		goto fail;
	r = load_snapshots(s, fsize, NULL, err);
	if (r < 0)
		goto fail;
	/* Metadata that overlaps other metadata: refuse (a hostile image). */
	{
		char what[160];
		if (check_layout(s, what, sizeof(what)) < 0) {
			q2_corrupt(s, UINT64_MAX, 0, true, "%s", what);
			r = bd_err_set(err, -EIO, "Image is corrupt: %s", what);
			goto fail;
		}
	}
	s->loaded_snap = -1;
	if (load_snap) {
		r = load_snapshot(s, load_snap, fsize, err);
		if (r < 0)
			goto fail;
	}

	if (s->writable) {
		bool hdr_dirty = false;
		if (s->h.incompatible & Q2_INCOMPAT_DIRTY) {
			r = repair_refcounts(s, fsize, err);
			if (r < 0)
				goto fail;
			s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
			hdr_dirty = true;
		}
		/* Persistent bitmaps stay (consistent extension, every bitmap marked in_use:
		 * "not synced", as QEMU marks them while it has the image open); unknown
		 * autoclear features are cleared, the spec's rule for writers that do not
		 * know them. */
		uint64_t keep = 0;
		if (s->h.has_bitmaps && (s->h.autoclear & Q2_AUTOCLEAR_BITMAPS)) {
			r = bitmaps_walk(s, fsize, NULL, err);
			if (r < 0)
				goto fail;
			keep = Q2_AUTOCLEAR_BITMAPS;
		}
		if (s->h.autoclear != keep) {
			s->h.autoclear = keep;
			hdr_dirty = true;
		}
		bool want_lazy = has_lazy_opt ? lazy_opt
					      : !!(s->h.compatible & Q2_COMPAT_LAZY_REFCOUNTS);
		if (want_lazy && s->h.version >= 3) {
			s->lazy = true;
			s->h.incompatible |= Q2_INCOMPAT_DIRTY;
			hdr_dirty = true;
		}
		if (hdr_dirty) {
			r = write_header_fixed(s, err);
			if (r < 0)
				goto fail;
		}
		r = prepare_growth(s, err);
		if (r < 0)
			goto fail;
	}

	r = open_backing(node, s, opts, err);
	if (r < 0)
		goto fail;

	/* L2 cache: QEMU's default covers the whole disk up to 32 MiB of tables. */
	if (!l2cache) {
		l2cache = q2_l1_needed_ext(s->size, s->cb, s->h.extl2) * s->cs;
		if (l2cache > Q2_DEFAULT_L2_CACHE)
			l2cache = Q2_DEFAULT_L2_CACHE;
	}
	s->nslots = (unsigned)(l2cache / s->cs);
	if (s->nslots < Q2_MIN_SLOTS)
		s->nslots = Q2_MIN_SLOTS;
	s->slots = calloc(s->nslots, sizeof(*s->slots));
	if (!s->slots) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	for (unsigned i = 0; i < s->nslots; i++) {
		s->slots[i].tab = bd_io_alloc(s->cs);
		if (!s->slots[i].tab) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	s->dc_buf = malloc(s->cs);
	s->freeq = calloc(1, sizeof(*s->freeq));
	if (!s->dc_buf || !s->freeq) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	s->freeq->s = s;
	s->freeq->slot = -1;
	s->free_hint = 1;

	memset(limits, 0, sizeof(*limits));
	limits->size = s->size;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_FLUSH) |
		      BD_OP_BIT(BD_OP_BLOCK_STATUS) | BD_OP_BIT(BD_OP_DISCARD);
	if (s->h.version >= 3)
		limits->ops |= BD_OP_BIT(BD_OP_WRITE_ZEROES);
	limits->req_align = 1;
	limits->buf_align = 1;
	limits->max_transfer = 16u << 20;
	limits->max_discard = 1u << 30;
	limits->opt_transfer = s->cs;
	limits->native_fua = false;
	limits->zeroes_unmap = true;
	limits->can_resize = s->writable;
	return 0;
fail:
	q2_free_mem(s);
	return r;
}

/* Wait on the control thread until the free program is idle. */
static void owner_idle_check(void *arg)
{
	(void)arg;
}

static void q2_quiesce(struct q2 *s)
{
	struct bd_loop *owner = atomic_load(&s->owner);

	while (owner && atomic_load(&s->free_running)) {
		bd_loop_call(owner, owner_idle_check, NULL);
		usleep(1000);
	}
}

/* Apply pending frees synchronously (close). */
static void apply_frees_sync(struct q2 *s)
{
	if (!s->nfrees)
		return;
	if (q2_sync_flush(fnode(s)) < 0)
		return;
	for (unsigned i = 0; i < s->nfrees; i++) {
		struct q2_free *f = &s->frees[i];
		for (uint64_t c = f->off >> s->cb; c < (f->off + f->len + s->cs - 1) >> s->cb; c++) {
			uint64_t v = rc_get(s, c);
			if (v)
				rc_set(s, c, v - 1);
		}
	}
	s->nfrees = 0;
	for (unsigned i = 0; i < s->rbd_n; i++)
		q2_sync_write(fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx], s->cs);
	s->rbd_n = 0;
	q2_sync_flush(fnode(s));
}

static void q2_close(struct bd_node *node)
{
	struct q2 *s = bd_node_priv(node);

	q2_quiesce(s);
	if (s->writable && !s->broken) {
		struct bd_err err = {0};
		apply_frees_sync(s);
		if (s->lazy) {
			s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
			if (write_header_fixed(s, &err) < 0)
				bd_log(BD_LOG_WARN, "qcow2 '%s': %s", bd_node_name(node), err.msg);
		}
		/* Give back the room reserved at open (never below the original size). */
		uint64_t end = alloc_end_cluster(s) << s->cb;
		if (end < s->orig_file_size)
			end = s->orig_file_size;
		if (end < bd_node_size(fnode(s)) && bd_node_limits(fnode(s))->can_resize) {
			bd_err_clear(&err);
			if (bd_node_resize(fnode(s), end, &err) < 0)
				bd_log(BD_LOG_WARN, "qcow2 '%s': %s", bd_node_name(node), err.msg);
		}
	}
	q2_free_mem(s);
}

/* ---- resize (control thread, node drained) ---- */

static int q2_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	uint64_t need = q2_l1_needed(new_size, s->cb);
	int r;

	q2_quiesce(s);
	if (s->broken)
		return bd_err_set(err, -EIO, "Image is corrupt; cannot be resized");
	if (new_size % 512)
		return bd_err_set(err, -EINVAL, "The new size must be a multiple of 512");
	if (new_size < s->size) {
		/* Shrink only when nothing is allocated beyond the new end. */
		uint8_t *l2 = malloc(s->cs);
		if (!l2)
			return bd_err_set(err, -ENOMEM, "out of memory");
		uint64_t first_c = (new_size + s->cs - 1) >> s->cb;
		for (uint64_t c = first_c; c < (s->size + s->cs - 1) >> s->cb;) {
			uint64_t l1i = c / s->l2n, l2off = s->l1[l1i] & Q2_OFFSET_MASK;
			if (!l2off) {
				c = (l1i + 1) * s->l2n;
				continue;
			}
			r = q2_sync_read(fnode(s), l2off, l2, s->cs);
			if (r < 0) {
				free(l2);
				return bd_err_set(err, r, "Could not read an L2 table: %s",
						  strerror(-r));
			}
			for (; c < (l1i + 1) * s->l2n && c < (s->size + s->cs - 1) >> s->cb; c++) {
				if (q2_be64(l2 + 8 * (c % s->l2n))) {
					free(l2);
					return bd_err_set(err, -ENOTSUP,
							  "Cannot shrink: data is allocated beyond the "
							  "new size (at guest offset 0x%" PRIx64 ")",
							  c << s->cb);
				}
			}
		}
		free(l2);
		if (new_size & (s->cs - 1) && first_c > 0) {
			/* The last cluster stays; a later grow must read zeroes there: refuse
			 * unless that cluster is unallocated too. */
			uint64_t c = first_c - 1;
			uint64_t l2off = s->l1[c / s->l2n] & Q2_OFFSET_MASK;
			if (l2off) {
				uint8_t e[8];
				r = q2_sync_read(fnode(s), l2off + 8 * (c % s->l2n), e, 8);
				if (r < 0 || q2_be64(e))
					return bd_err_set(err, -ENOTSUP,
							  "Cannot shrink to a size inside an allocated "
							  "cluster");
			}
		}
	}
	if (need > s->l1_size) {
		/* A bigger L1 table at the end of the file. */
		uint64_t bytes = need * 8, nclusters = (bytes + s->cs - 1) >> s->cb;
		uint64_t want = max_file_bytes(s, (alloc_end_cluster(s) + nclusters + 1) << s->cb);
		s->size = new_size; /* for the bound */
		r = grow_reftable(s, want, err);
		if (r < 0)
			return r;
		if (bd_node_size(fnode(s)) < want && bd_node_limits(fnode(s))->can_resize) {
			r = bd_node_resize(fnode(s), want, err);
			if (r < 0)
				return r;
		}
		uint64_t c = alloc_end_cluster(s);
		for (uint64_t i = 0; i < nclusters; i++) {
			if ((c + i) / s->epb >= s->reft_n || !s->rb[(c + i) / s->epb])
				return bd_err_set(err, -ENOSPC,
						  "No refcount block for the new L1 table");
		}
		uint8_t *nl1 = calloc(1, nclusters << s->cb);
		uint64_t *ml1 = calloc(need, sizeof(*ml1));
		if (!nl1 || !ml1) {
			free(nl1);
			free(ml1);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		memcpy(ml1, s->l1, (size_t)s->l1_size * 8);
		for (uint64_t i = 0; i < need; i++)
			q2_put_be64(nl1 + 8 * i, ml1[i]);
		for (uint64_t i = 0; i < nclusters; i++)
			rc_set(s, c + i, 1);
		for (unsigned i = 0; i < s->rbd_n; i++)
			q2_sync_write(fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx],
				      s->cs);
		s->rbd_n = 0;
		r = q2_sync_write(fnode(s), c << s->cb, nl1, nclusters << s->cb);
		free(nl1);
		if (r == 0)
			r = q2_sync_flush(fnode(s));
		if (r < 0) {
			free(ml1);
			return bd_err_set(err, r, "Could not write the new L1 table: %s",
					  strerror(-r));
		}
		uint64_t old_off = s->h.l1_table_offset, old_bytes = (uint64_t)s->l1_size * 8;
		s->h.l1_table_offset = c << s->cb;
		s->h.l1_size = (uint32_t)need;
		s->h.size = new_size;
		r = write_header_fixed(s, err);
		if (r < 0) {
			free(ml1);
			return r;
		}
		free(s->l1);
		s->l1 = ml1;
		s->l1_size = (uint32_t)need;
		if (old_bytes) {
			for (uint64_t cc = old_off >> s->cb;
			     cc < (old_off + old_bytes + s->cs - 1) >> s->cb; cc++) {
				uint64_t v = rc_get(s, cc);
				if (v)
					rc_set(s, cc, v - 1);
			}
			for (unsigned i = 0; i < s->rbd_n; i++)
				q2_sync_write(fnode(s), s->reft[s->rbd[i].idx],
					      s->rb[s->rbd[i].idx], s->cs);
			s->rbd_n = 0;
			q2_sync_flush(fnode(s));
		}
		s->free_hint = 1;
		return 0;
	}
	s->h.size = new_size;
	r = write_header_fixed(s, err);
	if (r < 0)
		return r;
	s->size = new_size;
	if (new_size > s->size || 1) {
		uint64_t want = max_file_bytes(s, alloc_end_cluster(s) << s->cb);
		r = grow_reftable(s, want, err);
		if (r < 0)
			return r;
		if (bd_node_size(fnode(s)) < want && bd_node_limits(fnode(s))->can_resize)
			return bd_node_resize(fnode(s), want, err);
	}
	return 0;
}

/* ---- internal snapshots: create and delete (control thread, node drained) ----
 *
 * Ordering: the image is marked dirty (v3) for the whole operation, so that a crash in the
 * middle leaves an image that blockd and QEMU repair at the next writable open (refcounts and
 * COPIED flags rebuilt); v2 images have no dirty bit and may then need `qemu-img check -r all`
 * for OFLAG_COPIED mismatches (as with QEMU).  The header switch (nb_snapshots and the table
 * offset, one sector write) is the commit point. */

/* Allocate n contiguous clusters (refcount 1, refcount blocks created as needed). */
static int sync_alloc(struct q2 *s, uint64_t n, uint64_t *first, struct bd_err *err)
{
	uint64_t save = s->free_hint;
	int r;

	s->free_hint = 1;
	for (;;) {
		uint64_t c, got, need;
		r = alloc_find(s, n, &c, &got, &need);
		if (r < 0)
			break;
		if (r == 0) {
			/* A new refcount block describing itself, then the table entry. */
			uint64_t off = (need * s->epb) << s->cb;
			uint8_t be[8];
			if (off + s->cs > bd_node_size(fnode(s))) {
				r = -ENOSPC;
				break;
			}
			s->rb[need] = calloc(1, s->cs);
			if (!s->rb[need]) {
				r = -ENOMEM;
				break;
			}
			q2_refcount_set(s->rb[need], s->h.refcount_order, 0, 1);
			s->reft[need] = off;
			q2_put_be64(be, off);
			if ((r = q2_sync_write(fnode(s), off, s->rb[need], s->cs)) < 0 ||
			    (r = q2_sync_flush(fnode(s))) < 0 ||
			    (r = q2_sync_write(fnode(s), s->h.refcount_table_offset + 8 * need, be,
					       8)) < 0 ||
			    (r = q2_sync_flush(fnode(s))) < 0)
				break;
			continue;
		}
		if (got == n) {
			r = alloc_take(s, c, n);
			if (r == 0)
				*first = c;
			break;
		}
		s->free_hint = c + got + 1;
	}
	s->free_hint = save < 1 ? 1 : save;
	if (r < 0)
		return bd_err_set(err, r, "Could not allocate %" PRIu64 " clusters: %s", n,
				  strerror(-r));
	return 0;
}

/* Write every dirty refcount block (whole blocks). */
static int sync_write_rbd(struct q2 *s)
{
	int r = 0;
	for (unsigned i = 0; i < s->rbd_n && r == 0; i++)
		r = q2_sync_write(fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx], s->cs);
	s->rbd_n = 0;
	return r;
}

/* Add addend to the refcount of every cluster an L1 table references (its L2 tables and
 * their data), in memory.  With check_only, only verify that it fits. */
static int snapshot_refs(struct q2 *s, const uint64_t *l1, uint32_t l1_size, int addend,
			 bool check_only, struct bd_err *err)
{
	uint8_t *l2 = malloc(s->cs);
	int r = 0;

	if (!l2)
		return bd_err_set(err, -ENOMEM, "out of memory");
	for (uint32_t i = 0; r == 0 && i < l1_size; i++) {
		uint64_t l2off = l1[i] & Q2_OFFSET_MASK;
		if (!l2off)
			continue;
		r = q2_sync_read(fnode(s), l2off, l2, s->cs);
		if (r < 0) {
			bd_err_set(err, r, "Could not read an L2 table: %s", strerror(-r));
			break;
		}
		for (uint64_t k = 0; r == 0 && k <= s->l2n; k++) {
			uint64_t c0, c1;
			if (k == s->l2n) {
				c0 = l2off >> s->cb; /* the table itself, last */
				c1 = c0 + 1;
			} else {
				struct q2_l2e e;
				if (q2_l2e_decode(q2_be64(l2 + 8 * k), s->cb, &e) < 0) {
					r = bd_err_set(err, -EIO, "Image is corrupt: invalid L2 entry");
					break;
				}
				if (e.type == Q2_C_NORMAL || e.type == Q2_C_ZERO_ALLOC) {
					c0 = e.host >> s->cb;
					c1 = c0 + 1;
				} else if (e.type == Q2_C_COMPRESSED) {
					c0 = e.host >> s->cb;
					c1 = ((e.host & ~511ull) + e.csize + (e.host & 511) + s->cs - 1) >>
					     s->cb;
				} else {
					continue;
				}
			}
			for (uint64_t c = c0; c < c1; c++) {
				uint64_t v = rc_get(s, c);
				if (addend > 0 && v + 1 > q2_refcount_max(s->h.refcount_order)) {
					r = bd_err_set(err, -ERANGE,
						       "Refcount overflow: refcount-bits too small "
						       "for another snapshot");
					break;
				}
				if (addend < 0 && v == 0) {
					r = bd_err_set(err, -EIO,
						       "Image is corrupt: refcount underflow at 0x%" PRIx64,
						       c << s->cb);
					break;
				}
				if (!check_only)
					rc_set(s, c, addend > 0 ? v + 1 : v - 1);
			}
		}
	}
	free(l2);
	return r;
}

static int set_dirty(struct q2 *s, bool on, struct bd_err *err)
{
	if (s->h.version < 3 || s->lazy)
		return 0; /* v2: no dirty bit; lazy: already dirty while open */
	if (on)
		s->h.incompatible |= Q2_INCOMPAT_DIRTY;
	else
		s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
	return write_header_fixed(s, err);
}

/* Write a new snapshot table (bytes at buf) and switch the header to it; the old table's
 * clusters lose their reference afterwards. */
static int switch_snapshot_table(struct q2 *s, const uint8_t *buf, uint64_t len, uint32_t nb,
				 struct bd_err *err)
{
	uint64_t old_off = s->h.snapshots_offset, old_len = s->h.nb_snapshots ? s->snap_bytes : 0;
	uint64_t c = 0, n = (len + s->cs - 1) >> s->cb;
	uint8_t hb[12];
	int r;

	if (n) {
		r = sync_alloc(s, n, &c, err);
		if (r < 0)
			return r;
		uint8_t *pad = calloc(n, s->cs);
		if (!pad)
			return bd_err_set(err, -ENOMEM, "out of memory");
		memcpy(pad, buf, len);
		r = q2_sync_write(fnode(s), c << s->cb, pad, n << s->cb);
		free(pad);
		if (r == 0)
			r = sync_write_rbd(s);
		if (r == 0)
			r = q2_sync_flush(fnode(s));
		if (r < 0)
			return bd_err_set(err, r, "Could not write the snapshot table: %s",
					  strerror(-r));
	}
	/* The commit point. */
	q2_put_be32(hb, nb);
	q2_put_be64(hb + 4, c << s->cb);
	r = q2_sync_write(fnode(s), 60, hb, 12);
	if (r == 0)
		r = q2_sync_flush(fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not update the header: %s", strerror(-r));
	s->h.nb_snapshots = nb;
	s->h.snapshots_offset = c << s->cb;
	s->snap_bytes = len;
	if (old_len) {
		for (uint64_t k = old_off >> s->cb; k < (old_off + old_len + s->cs - 1) >> s->cb; k++) {
			uint64_t v = rc_get(s, k);
			if (v)
				rc_set(s, k, v - 1);
		}
	}
	return 0;
}

/* Read the current snapshot table's bytes (padded to 8 at the end). */
static uint8_t *read_snapshot_table(struct q2 *s, uint64_t extra, uint64_t *len,
				    struct bd_err *err)
{
	uint64_t old = s->h.nb_snapshots ? s->snap_bytes : 0;
	uint64_t padded = (old + 7) & ~7ull;
	uint8_t *buf = calloc(1, padded + extra + 8);

	if (!buf) {
		bd_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	if (old) {
		int r = q2_sync_read(fnode(s), s->h.snapshots_offset, buf, old);
		if (r < 0) {
			free(buf);
			bd_err_set(err, r, "Could not read the snapshot table: %s", strerror(-r));
			return NULL;
		}
	}
	*len = padded;
	return buf;
}

int q2_snapshot_create(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	char idbuf[32];
	uint64_t l1c, l1copy = 0, tlen;
	uint8_t *table = NULL, *be = NULL;
	int r;

	if (!s->writable || s->broken || s->loaded_snap >= 0)
		return bd_err_set(err, -EPERM, "Node '%s' is read-only or corrupt",
				  bd_node_name(node));
	if (!name || !name[0])
		return bd_err_set(err, -EINVAL, "Parameter 'name' cannot be empty");
	q2_quiesce(s);
	apply_frees_sync(s);
	if (!id || !id[0]) {
		unsigned long max = 0;
		for (unsigned i = 0; i < s->nsnaps; i++) {
			unsigned long v = strtoul(s->snaps[i].id, NULL, 10);
			if (v > max)
				max = v;
		}
		snprintf(idbuf, sizeof(idbuf), "%lu", max + 1);
		id = idbuf;
	}
	for (unsigned i = 0; i < s->nsnaps; i++) {
		if (!strcmp(s->snaps[i].name, name))
			return bd_err_set(err, -EEXIST, "Snapshot with name '%s' already exists",
					  name);
		if (!strcmp(s->snaps[i].id, id))
			return bd_err_set(err, -EEXIST, "Snapshot with id '%s' already exists", id);
	}
	if (strlen(id) > 127 || strlen(name) > 255)
		return bd_err_set(err, -EINVAL, "Snapshot id or name too long");
	if (s->h.nb_snapshots >= Q2_MAX_SNAPSHOTS)
		return bd_err_set(err, -EFBIG, "Too many snapshots");
	r = snapshot_refs(s, s->l1, s->l1_size, +1, true, err);
	if (r < 0)
		return r;
	r = set_dirty(s, true, err);
	if (r < 0)
		return r;

	/* The snapshot's L1 table: a copy of the active one without COPIED flags. */
	l1c = ((uint64_t)s->l1_size * 8 + s->cs - 1) >> s->cb;
	if (l1c) {
		r = sync_alloc(s, l1c, &l1copy, err);
		if (r < 0)
			goto out;
	}
	r = snapshot_refs(s, s->l1, s->l1_size, +1, false, err);
	if (r < 0)
		goto out;
	be = calloc(1, l1c ? l1c << s->cb : 8);
	if (!be) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < s->l1_size; i++)
		q2_put_be64(be + 8 * i, s->l1[i] & ~Q2_OFLAG_COPIED);
	if (l1c && (r = q2_sync_write(fnode(s), l1copy << s->cb, be, l1c << s->cb)) < 0) {
		bd_err_set(err, r, "Could not write the snapshot L1 table: %s", strerror(-r));
		goto out;
	}
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(fnode(s))) < 0) {
		bd_err_set(err, r, "Could not update refcounts: %s", strerror(-r));
		goto out;
	}
	/* The active tables' COPIED flags now follow the raised refcounts. */
	uint64_t fixed = 0;
	r = fix_copied_flags(s, NULL, 0, &fixed, err);
	if (r < 0)
		goto out;

	/* The new table: the old entries plus ours. */
	size_t idl = strlen(id), nl = strlen(name);
	uint64_t ent = (40 + 24 + idl + nl + 7) & ~7ull;
	table = read_snapshot_table(s, ent, &tlen, err);
	if (!table) {
		r = err->code;
		goto out;
	}
	uint8_t *p = table + tlen;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	q2_put_be64(p, l1copy << s->cb);
	q2_put_be32(p + 8, s->l1_size);
	q2_put_be16(p + 12, (uint16_t)idl);
	q2_put_be16(p + 14, (uint16_t)nl);
	q2_put_be32(p + 16, (uint32_t)now.tv_sec);
	q2_put_be32(p + 20, (uint32_t)now.tv_nsec);
	q2_put_be32(p + 36, 24);
	q2_put_be64(p + 40 + 8, s->size);
	q2_put_be64(p + 40 + 16, UINT64_MAX); /* icount: none */
	memcpy(p + 64, id, idl);
	memcpy(p + 64 + idl, name, nl);
	r = switch_snapshot_table(s, table, tlen + ent, s->h.nb_snapshots + 1, err);
	if (r < 0)
		goto out;
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(fnode(s))) < 0) {
		bd_err_set(err, r, "Could not free the old snapshot table: %s", strerror(-r));
		goto out;
	}
	r = set_dirty(s, false, err);
	if (r == 0)
		r = load_snapshots(s, bd_node_size(fnode(s)), NULL, err);
out:
	if (r < 0) {
		/* In-memory state may be ahead of the disk: stop writing (repair on reopen). */
		s->broken = true;
		bd_err_prefix(err, "Could not create snapshot '%s'", name);
	}
	free(be);
	free(table);
	return r;
}

int q2_snapshot_delete(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	int k = -1, r;

	if (!s->writable || s->broken || s->loaded_snap >= 0)
		return bd_err_set(err, -EPERM, "Node '%s' is read-only or corrupt",
				  bd_node_name(node));
	for (unsigned i = 0; i < s->nsnaps && k < 0; i++)
		if ((!id || !strcmp(s->snaps[i].id, id)) && (!name || !strcmp(s->snaps[i].name, name)))
			k = (int)i;
	if (k < 0 || (!id && !name))
		return bd_err_set(err, -ENOENT, "Snapshot with id '%s' and name '%s' does not exist",
				  id ? id : "(null)", name ? name : "(null)");
	q2_quiesce(s);
	apply_frees_sync(s);
	struct q2_snapinfo sn = s->snaps[k];
	uint64_t *l1 = calloc(sn.l1_size ? sn.l1_size : 1, sizeof(*l1));
	uint8_t *raw = malloc(sn.l1_size ? (size_t)sn.l1_size * 8 : 1);
	uint8_t *table = NULL;
	uint64_t tlen;
	if (!l1 || !raw) {
		free(l1);
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	r = sn.l1_size ? q2_sync_read(fnode(s), sn.l1_off, raw, (uint64_t)sn.l1_size * 8) : 0;
	for (uint32_t i = 0; i < sn.l1_size; i++)
		l1[i] = q2_be64(raw + 8 * i);
	free(raw);
	if (r < 0) {
		free(l1);
		return bd_err_set(err, r, "Could not read the snapshot's L1 table: %s", strerror(-r));
	}
	r = snapshot_refs(s, l1, sn.l1_size, -1, true, err);
	if (r < 0)
		goto out;
	r = set_dirty(s, true, err);
	if (r < 0)
		goto out;
	/* The table without entry k (entries are 8-aligned; the last may be unpadded). */
	table = read_snapshot_table(s, 0, &tlen, err);
	if (!table) {
		r = err->code;
		goto out;
	}
	{
		uint64_t off = 0, start = 0, end = 0;
		for (unsigned i = 0; i < s->nsnaps; i++) {
			const uint8_t *p = table + off;
			uint64_t ent = 40 + (uint64_t)q2_be32(p + 36) + q2_be16(p + 12) +
				       q2_be16(p + 14);
			ent = (ent + 7) & ~7ull;
			if ((int)i == k) {
				start = off;
				end = off + ent;
			}
			off += ent;
		}
		if (end > tlen)
			end = tlen;
		memmove(table + start, table + end, tlen - end);
		tlen -= end - start;
	}
	r = switch_snapshot_table(s, table, tlen, s->h.nb_snapshots - 1, err);
	if (r < 0)
		goto out;
	/* Only now drop the references: the snapshot is gone from the header. */
	r = snapshot_refs(s, l1, sn.l1_size, -1, false, err);
	if (r < 0)
		goto out;
	for (uint64_t c = sn.l1_off >> s->cb;
	     sn.l1_size && c < (sn.l1_off + (uint64_t)sn.l1_size * 8 + s->cs - 1) >> s->cb; c++) {
		uint64_t v = rc_get(s, c);
		if (v)
			rc_set(s, c, v - 1);
	}
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(fnode(s))) < 0) {
		bd_err_set(err, r, "Could not update refcounts: %s", strerror(-r));
		goto out;
	}
	uint64_t fixed = 0;
	r = fix_copied_flags(s, NULL, 0, &fixed, err);
	if (r == 0)
		r = set_dirty(s, false, err);
	if (r == 0) {
		s->free_hint = 1;
		r = load_snapshots(s, bd_node_size(fnode(s)), NULL, err);
		if (s->h.nb_snapshots == 0) {
			free(s->snaps);
			s->snaps = NULL;
			s->nsnaps = 0;
		}
	}
out:
	if (r < 0) {
		s->broken = true;
		bd_err_prefix(err, "Could not delete the snapshot");
	}
	free(l1);
	free(table);
	return r;
}

static void q2_describe(struct bd_node *node, json_t *out)
{
	struct q2 *s = bd_node_priv(node);
	json_t *f = json_pack("{s:s,s:i,s:b,s:i,s:s}", "compat", s->h.version == 2 ? "0.10" : "1.1",
			      "cluster-size", (json_int_t)s->cs, "lazy-refcounts", s->lazy,
			      "refcount-bits", (json_int_t)(1u << s->h.refcount_order),
			      "compression-type", s->h.compression_type ? "zstd" : "zlib");
	if (f) {
		json_object_set_new(f, "corrupt", json_boolean(s->broken ||
							       (s->h.incompatible &
								Q2_INCOMPAT_CORRUPT)));
		json_object_set_new(out, "format-specific",
				    json_pack("{s:s,s:o}", "type", "qcow2", "data", f));
	}
	if (s->nsnaps) {
		json_t *list = json_array();
		for (unsigned i = 0; i < s->nsnaps; i++) {
			struct q2_snapinfo *sn = &s->snaps[i];
			json_array_append_new(
				list, json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "id", sn->id, "name",
						sn->name, "vm-state-size", (json_int_t)sn->vm_state_size,
						"date-sec", (json_int_t)sn->date_sec, "date-nsec",
						(json_int_t)sn->date_nsec, "vm-clock-nsec",
						(json_int_t)sn->vm_clock_nsec, "disk-size",
						(json_int_t)(sn->disk_size ? sn->disk_size : s->h.size)));
		}
		json_object_set_new(out, "snapshots", list);
		if (s->loaded_snap >= 0)
			json_object_set_new(out, "loaded-snapshot",
					    json_string(s->snaps[s->loaded_snap].name));
	}
	if (s->h.backing_file_offset) {
		json_object_set_new(out, "backing_file", json_string(s->h.backing_file));
		if (s->h.has_backing_fmt)
			json_object_set_new(out, "backing_file_format",
					    json_string(s->h.backing_fmt));
	}
}

static const char *const q2_overlap_values[] = {"none", "constant", "cached", "all", NULL};

static const struct bd_opt_desc q2_options[] = {
	{"file", BD_OPT_CHILD, true, NULL, "the node holding the image"},
	{"backing", BD_OPT_CHILD, false, NULL,
	 "the backing node (null: none; default: the file named in the image)"},
	{"l2-cache-size", BD_OPT_SIZE, false, NULL,
	 "L2 table cache size in bytes (default: enough for the whole disk, at most 32 MiB)"},
	{"cache-size", BD_OPT_SIZE, false, NULL, "same as l2-cache-size here"},
	{"refcount-cache-size", BD_OPT_SIZE, false, NULL,
	 "accepted for compatibility: refcounts are kept in memory whole"},
	{"cache-clean-interval", BD_OPT_INT, false, NULL, "accepted, ignored"},
	{"lazy-refcounts", BD_OPT_BOOL, false, NULL,
	 "postpone refcount ordering (image marked dirty while open; v3 only)"},
	{"pass-discard-request", BD_OPT_BOOL, false, NULL,
	 "discard freed clusters in the file on guest discard (default: discard=unmap)"},
	{"pass-discard-snapshot", BD_OPT_BOOL, false, NULL, "accepted, ignored"},
	{"pass-discard-other", BD_OPT_BOOL, false, NULL,
	 "discard clusters freed for other reasons (default off)"},
	{"overlap-check", BD_OPT_ENUM, false, q2_overlap_values,
	 "accepted; blockd always checks the active metadata"},
	{"discard-no-unref", BD_OPT_BOOL, false, NULL, "not supported (false only)"},
	{"load-snapshot", BD_OPT_STR, false, NULL,
	 "read-only: show the internal snapshot with this id or name instead of the active image"},
	{NULL},
};

const struct bd_driver bd_drv_qcow2 = {
	.name = "qcow2",
	.kind = BD_DRV_FORMAT,
	.help = "QEMU copy-on-write image, versions 2 and 3",
	.options = q2_options,
	.node_size = sizeof(struct q2),
	.req_size = sizeof(struct q2_req),
	.open = q2_open,
	.close = q2_close,
	.submit = q2_submit,
	.resize = q2_resize,
	.describe = q2_describe,
	.create = q2_create,
};
