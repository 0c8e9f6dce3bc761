/*
 * qcow2-zero.c - write-zeroes and discard requests of a qcow2 node: whole clusters (or, with
 * extended L2 entries, whole subclusters) change the metadata through the programs of
 * qcow2-alloc.c and qcow2-sub.c; partial ones are written as zero bytes through the write path
 * (write-zeroes) or skipped (discard).
 *
 * Threading: owner loop (docs/qcow2.md), metadata lock held.
 */
#include "formats/qcow2-int.h"

/* ---- write-zeroes and discard: only whole clusters change the metadata ---- */

/* Does guest offset off (and the rest of its cluster, or of its subcluster with extended L2
 * entries) already read as zeroes?  1 answered, 0 waiting for the L2 table, <0 error. */
static int reads_zero(struct q2_req *qr, uint64_t off, bool *zero)
{
	struct q2 *s = qr->s;
	uint64_t l1e;
	struct q2_map m;
	int slot, r;

	r = q2_l2_get(qr, off, &slot, &l1e);
	if (r <= 0)
		return r;
	if (q2_map_at(s, slot, off, 1, true, &m) < 0)
		return -EIO;
	*zero = m.type == Q2_C_ZERO_PLAIN || m.type == Q2_C_ZERO_ALLOC ||
		(m.type == Q2_C_UNALLOC && q2_reads_zero_unalloc(s, off));
	return 1;
}

/* Whole clusters from the cluster-aligned off: those rem bytes cover (the last one partly when
 * the request runs to the end of the disk), at least one, at most to the end of the L2 table. */
static uint64_t whole_clusters(struct q2 *s, uint64_t off, uint64_t rem, bool to_end)
{
	uint64_t l2i = (off >> s->cb) & (s->l2n - 1);
	uint64_t n = (rem + (to_end ? s->cs - 1 : 0)) >> s->cb;

	if (n > s->l2n - l2i)
		n = s->l2n - l2i;
	return n ? n : 1;
}

/* Write [pos, pos + part) of the request as zero bytes through the write machinery; it
 * returns to me. */
static int zd_write_bytes(struct q2_req *qr, uint64_t part, enum q2_st me)
{
	qr->src = q2_zero_iov();
	qr->srccnt = 1;
	qr->src_base = qr->pos;
	qr->end = qr->pos + part;
	qr->w_ret = me;
	qr->st = ST_W_NEXT;
	return 4; /* run the write machinery for this part */
}

/* A partial (sub)cluster [off, off + part) of a write-zeroes: skipped (2, pos advanced) when it
 * reads as zeroes already, else written as zero bytes (4); 0 waiting, <0 error. */
static int zero_part(struct q2_req *qr, uint64_t off, uint64_t part, enum q2_st me)
{
	bool z;
	int r = reads_zero(qr, off, &z);

	if (r <= 0)
		return r;
	if (z) {
		qr->pos += part;
		return 2;
	}
	return zd_write_bytes(qr, part, me);
}

/* Write-zeroes on an image with extended L2 entries: a partial subcluster is written as zero
 * bytes (unless it reads as zeroes already), whole subclusters get their zero bits
 * (qcow2-sub.c), a cluster at a time or whole clusters up to the end of the L2 table.
 * Returns like zd_step(); *done gets the bytes a planned program covers. */
static int zd_sub_step(struct q2_req *qr, uint64_t off, uint64_t rem, bool to_end, uint64_t *done)
{
	struct q2 *s = qr->s;
	uint64_t usz = s->cs >> 5, inoff = off & (s->cs - 1), sin = off & (usz - 1);
	bool unmap = !!(qr->req->flags & BD_REQ_MAY_UNMAP);
	int r;

	if (sin || (rem < usz && !to_end)) {
		uint64_t part = usz - sin < rem ? usz - sin : rem;
		return zero_part(qr, off, part, ST_Z_NEXT);
	}
	if (inoff || (rem < s->cs && !to_end)) {
		/* whole subclusters of one cluster */
		uint64_t e = inoff + rem;
		if (e >= s->cs)
			e = s->cs;
		else if (to_end)
			e = (e + usz - 1) & ~(usz - 1);
		else
			e &= ~(usz - 1);
		unsigned sc0 = (unsigned)(inoff / usz), sc1 = (unsigned)(e / usz - 1);
		uint32_t hi = sc1 == 31 ? UINT32_MAX : (1u << (sc1 + 1)) - 1;
		uint32_t mask = hi & ~((1u << sc0) - 1);
		*done = e - inoff < rem ? e - inoff : rem;
		r = q2_zd_plan_sub(qr, off - inoff, 1, mask, true, unmap);
		if (r == 3)
			return zd_write_bytes(qr, *done, ST_Z_NEXT); /* compressed: copied */
		return r;
	}
	uint64_t n = whole_clusters(s, off, rem, to_end);
	*done = n << s->cb < rem ? n << s->cb : rem;
	return q2_zd_plan_sub(qr, off, n, UINT32_MAX, true, unmap);
}

int q2_zd_step(struct q2_req *qr, bool zero)
{
	struct q2 *s = qr->s;
	struct bd_req *req = qr->req;
	enum q2_st me = zero ? ST_Z_NEXT : ST_D_NEXT;

	for (;;) {
		uint64_t off = req->offset + qr->pos;
		uint64_t inoff = off & (s->cs - 1);
		uint64_t rem = req->len - qr->pos;
		bool to_end = req->offset + req->len >= s->size;
		uint64_t done = 0;
		int r;

		if (qr->pos == req->len)
			return 1;
		if (s->broken)
			return -EIO;
		if (zero && s->h.extl2) {
			r = zd_sub_step(qr, off, rem, to_end, &done);
			if (r == 2 && !done)
				continue; /* a partial subcluster that reads as zeroes */
			goto planned;
		}
		/* A partial cluster: write-zeroes writes zero bytes, discard skips it. */
		if (inoff || (rem < s->cs && !to_end)) {
			uint64_t part = s->cs - inoff;
			if (part > rem)
				part = rem;
			if (!zero) {
				qr->pos += part;
				continue;
			}
			r = zero_part(qr, off, part, me);
			if (r == 2)
				continue;
			return r;
		}
		/* Whole clusters, up to the end of this L2 table. */
		uint64_t n = whole_clusters(s, off, rem, to_end);
		done = n << s->cb;
		if (done > rem)
			done = rem;
		r = s->h.extl2
			? q2_zd_plan_sub(qr, off, n, UINT32_MAX, false, true)
			: q2_zd_plan(qr, off, n, zero, !!(req->flags & BD_REQ_MAY_UNMAP) || !zero);
	planned:
		if (r <= 0 || r == 4)
			return r;
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
