/*
 * qcow2-io.c - the qcow2 request engine: every request (read, write, write-zeroes, discard,
 * block status, flush) runs on the node's *owner loop* as an explicit state machine (struct
 * q2_req, enum q2_st in qcow2-int.h), never blocking.  This file holds the dispatcher (submit,
 * hand-off to the owner loop, start, run, completion), the sub-I/O helpers and the read and
 * write paths.  Write-zeroes and discard are in qcow2-zero.c, block status in qcow2-status.c,
 * allocation and the metadata programs in qcow2-alloc.c and qcow2-group.c, the L2 cache in
 * qcow2-cache.c, its write-back in qcow2-writeback.c.
 *
 * Threading (docs/qcow2.md): q2_submit() runs on any loop; everything else here runs on the
 * owner loop only, so the metadata needs no locks.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* A buffer of zeroes the size of the largest cluster; never written. */
static uint8_t q2_zeroes[1u << Q2_MAX_CLUSTER_BITS];

void *q2_zero_buf(void)
{
	return q2_zeroes;
}

static const struct iovec q2_zero_iovec = {q2_zeroes, sizeof(q2_zeroes)};

const struct iovec *q2_zero_iov(void)
{
	return &q2_zero_iovec;
}

/* ---- wake-ups and pending frees of a request ---- */

static void run(struct q2_req *qr);

static void resume_defer(struct bd_defer *d)
{
	struct q2_req *qr = (struct q2_req *)(void *)((char *)d - offsetof(struct q2_req, defer));
	run(qr);
}

/* Resume qr later on the owner loop (no recursion). */
void q2_wake(struct q2_req *qr)
{
	qr->defer.fn = resume_defer;
	bd_loop_defer(qr->s->owner, &qr->defer);
}

void q2_add_free(struct q2_req *qr, uint64_t off, uint64_t len, bool discard)
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

void q2_sub_io(struct q2_req *qr, struct bd_child *child, enum bd_op op, uint64_t off,
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
struct iovec *q2_iov_need(struct q2_req *qr, int n)
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

struct iovec *q2_miov_need(struct q2_req *qr, int n)
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
	free(qr->wb_slots);
	qr->ret = ret;
	q2_grp_leave(qr);
	if (s->lock_owner == qr)
		q2_lock_release(s);
	if (qr->counted) {
		s->active--;
		q2_maybe_free(s);
	}
	if (qr->home == s->owner && qr->in_submit)
		bd_req_complete_later(qr->req, ret); /* finished inside q2_submit() */
	else if (qr->home == s->owner)
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
		struct iovec *v = q2_iov_need(qr, req->iovcnt);
		int n = bd_iov_slice(req->iov, req->iovcnt, qr->pos, rd, v);
		q2_sub_io(qr, child, BD_OP_READ, coff, rd, v, n, 0);
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
		if (q2_l2e_decode(q2_l2_raw(s, slot, l2i + n), s->cb, &e) < 0)
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

int q2_map_at(struct q2 *s, int slot, uint64_t off, uint64_t max, bool strict,
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
		if (q2_l2_entry(s, slot, l2i, &e) < 0)
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
		if (q2_l2_entry(s, slot, li, &e) < 0)
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
			r = q2_l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (q2_map_at(s, slot, off, rem, false, &e) < 0)
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
				uint64_t fsz = bd_node_size(q2_fnode(s));
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
				struct iovec *v = q2_iov_need(qr, 1);
				v[0].iov_base = qr->buf;
				v[0].iov_len = clen;
				qr->dc_in = inoff | (clen << 32); /* both, unpacked below */
				q2_sub_io(qr, s->file, BD_OP_READ, e.host, clen, v, 1, 0);
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
			qr->comp = (qr->req->flags & BD_REQ_WRITE_COMPRESSED) &&
				   qr->req->op == BD_OP_WRITE && qr->comp_skip != qr->pos + 1;
			if (qr->comp) {
				if (!q2_lock_take(qr))
					return 0;
				qr->st = ST_A_PLAN;
				continue;
			}
			r = q2_l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (s->h.extl2) {
				/* subclusters: one cluster at a time (qcow2-sub.c) */
				uint64_t host;
				chunk = rem < s->cs - inoff ? rem : s->cs - inoff;
				if (slot < 0 || !q2_sub_in_place(s, slot, l2i, inoff, chunk, &host)) {
					if (!q2_lock_take(qr))
						return 0;
					qr->st = ST_A_PLAN;
					continue;
				}
				e.host = host;
				goto in_place;
			}
			if (q2_l2_entry(s, slot, l2i, &e) < 0)
				return -EIO;
			if (q2_in_place(s, &e)) {
				n = run_len(s, slot, l2i, (inoff + rem + s->cs - 1) >> s->cb, &e, true);
				/* run_len does not check COPIED on the following entries */
				for (uint64_t k = 1; k < n; k++) {
					struct q2_l2e f;
					q2_l2e_decode(q2_l2_raw(s, slot, l2i + k), s->cb, &f);
					if (!f.copied || q2_rc_get(s, f.host >> s->cb) != 1) {
						n = k;
						break;
					}
				}
				chunk = (n << s->cb) - inoff;
				if (chunk > rem)
					chunk = rem;
			in_place:;
				const char *what = q2_meta_overlap(s, e.host + inoff, chunk);
				if (what) {
					q2_corrupt(s, e.host + inoff, chunk, true,
						   "Preventing a guest write over the %s at 0x%" PRIx64,
						   what, e.host + inoff);
					return -EIO;
				}
				if (e.host + inoff + chunk > bd_node_size(q2_fnode(s))) {
					q2_corrupt(s, e.host, s->cs, true,
						   "Data cluster at 0x%" PRIx64
						   " lies past the end of the file",
						   e.host);
					return -EIO;
				}
				struct iovec *v = q2_iov_need(qr, qr->srccnt);
				int nv = bd_iov_slice(qr->src, qr->srccnt, qr->pos - qr->src_base, chunk,
						  v);
				qr->chunk = chunk;
				qr->st = ST_W_CHUNK_DONE;
				q2_sub_io(qr, s->file, BD_OP_WRITE, e.host + inoff, chunk, v, nv,
					  0);
				if (qr->pending)
					return 0;
				return qr->err ? qr->err : -EIO;
			}
			/* Needs an allocation: under the metadata lock, looking up again; a plain
			 * write joins a group commit (qcow2-alloc.c). */
			if (qr->req->op == BD_OP_WRITE && s->lock_owner != qr) {
				qr->st = ST_A_PLAN;
				if (!q2_grp_join(qr))
					return 0;
				continue;
			}
			if (!q2_lock_take(qr))
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
			int r = qr->comp	   ? q2_comp_plan(qr)
				: s->h.extl2 ? q2_sub_plan(qr)
					     : q2_alloc_plan(qr);
			if (r == -ENOSPC && qr->comp) {
				/* does not compress: this cluster is written as it is */
				qr->comp = false;
				qr->comp_skip = qr->pos + 1;
				r = q2_alloc_plan(qr);
			}
			if (r < 0)
				return r;
			if (r == 0)
				return 0; /* waiting for an L2 table or a new refcount block */
			if (r == 2) {
				if (qr->slot >= 0) {
					s->slots[qr->slot].pins--;
					qr->slot = -1;
				}
				q2_grp_leave(qr); /* writable in place now */
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
				if (q2_cow_finish(qr, &qr->cow[i]) < 0)
					return -EIO;
			qr->st = ST_MP_P1;
			return 4; /* run the metadata program */
		default:
			return -EIO;
		}
	}
}

/* ---- the dispatcher ---- */

static void start(struct q2_req *qr);

void q2_l2_written(struct q2 *s)
{
	if (--s->l2_writing)
		return;
	struct q2_req *list = s->flush_parked;
	s->flush_parked = NULL;
	while (list) {
		struct q2_req *qr = list;
		list = qr->next;
		qr->next = NULL;
		start(qr);
	}
}

static void start(struct q2_req *qr)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;

	if (!s->och)
		s->och = bd_node_chan(s->node, s->owner);
	if (req->op == BD_OP_FLUSH) {
		if (s->frozen) {
			/* the control thread may be writing the tables back (q2_freeze) */
			qr->next = s->stalled;
			s->stalled = qr;
			return; /* woken with st still ST_START */
		}
		if (s->l2_writing) {
			qr->next = s->flush_parked;
			s->flush_parked = qr;
			return; /* q2_l2_written() starts it */
		}
		if (q2_wb_dirty(s)) {
			/* write the dirty tables back first (qcow2-writeback.c) */
			qr->st = ST_FW_LOCK;
			run(qr);
			return;
		}
		qr->st = ST_F_DONE;
		q2_sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
		if (!qr->pending)
			finish(qr, qr->err ? qr->err : -EIO);
		return;
	}
	if (s->barrier || s->frozen) {
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
		if (s->h.version < 3 || s->broken) {
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

	if (qr->is_grp) {
		q2_grp_run(qr);
		return;
	}
	if (qr->is_wbt) {
		q2_wbt_run(qr);
		return;
	}
	if (!qr->req) {
		q2_fp_run(qr);
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
		case ST_FW_LOCK:
			if (!q2_lock_take(qr))
				return; /* woken as the owner */
			qr->wb_ret = ST_FW_DONE;
			qr->st = ST_WB_START;
			continue;
		case ST_WB_START:
		case ST_WB_RB_DONE:
		case ST_WB_FLUSHED:
		case ST_WB_WRITTEN:
			r = q2_wb_step(qr);
			if (r < 0) {
				finish(qr, r);
				return;
			}
			if (r == 1)
				return;
			continue;
		case ST_FW_DONE:
			/* the tables are written: the guest's flush makes them durable */
			q2_lock_release(s);
			qr->st = ST_F_DONE;
			q2_sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
			if (!qr->pending) {
				finish(qr, qr->err ? qr->err : -EIO);
				return;
			}
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
			r = q2_mp_step(qr);
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
			if (qr->req->op == BD_OP_WRITE)
				qr->st = ST_W_NEXT;
			else if (qr->req->op == BD_OP_WRITE_ZEROES)
				qr->st = qr->src ? ST_W_NEXT : ST_Z_NEXT;
			else
				qr->st = ST_D_NEXT;
			continue;
		case ST_G_WAIT:
			return; /* the group commits and wakes it in ST_G_DONE */
		case ST_G_DONE:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			qr->pos += qr->chunk;
			qr->st = ST_W_NEXT;
			continue;
		case ST_RB_WRITTEN:
			if (qr->err) {
				finish(qr, qr->err);
				return;
			}
			qr->st = ST_RB_FLUSHED;
			q2_sub_io(qr, s->file, BD_OP_FLUSH, 0, 0, NULL, 0, 0);
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
			struct iovec *v = q2_miov_need(qr, 1);
			v[0] = (struct iovec){be, hi - lo};
			qr->st = ST_RB_TABLE_DONE;
			q2_sub_io(qr, s->file, BD_OP_WRITE, s->h.refcount_table_offset + lo, hi - lo,
				  v, 1, 0);
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
			if (!q2_lock_take(qr))
				return;
			r = q2_zd_step(qr, qr->st == ST_Z_NEXT);
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
			r = q2_bs_step(qr);
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

int q2_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
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
		/* start at once (no deferred hop); a request that ends here completes later */
		qr->in_submit = true;
		run(qr);
		qr->in_submit = false;
		return 0;
	}
	return bd_loop_send(owner, start_msg, qr);
}
