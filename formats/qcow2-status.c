/*
 * qcow2-status.c - block status of a qcow2 node: extents of data, zero and unallocated
 * clusters with their depth (1 here, the backing chain's answer plus one below).
 *
 * Threading: owner loop (docs/qcow2.md).
 */
#include "formats/qcow2-int.h"

/* ---- block status ---- */

int q2_bs_step(struct q2_req *qr)
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
			r = q2_l2_get(qr, off, &slot, &l1e);
			if (r <= 0)
				return r;
			if (q2_map_at(s, slot, off, rem, true, &e) < 0)
				return -EIO;
			chunk = e.len;
			bool ok = true;
			switch (e.type) {
			case Q2_C_NORMAL:
			case Q2_C_COMPRESSED:
				ok = bd_req_add_extent(req, chunk, BD_EXT_DATA, 1);
				break;
			case Q2_C_ZERO_PLAIN:
				ok = bd_req_add_extent(req, chunk, BD_EXT_ZERO, 1);
				break;
			case Q2_C_ZERO_ALLOC:
				ok = bd_req_add_extent(req, chunk, BD_EXT_ZERO | BD_EXT_DATA, 1);
				break;
			case Q2_C_UNALLOC: {
				uint64_t bsz =
				    s->backing ? bd_node_size(bd_child_node(s->backing)) : 0;
				if (off >= bsz) {
					/* Past a short backing file the zeroes count as allocated
					 * in that backing layer (depth 2 from here), as in QEMU;
					 * without a backing file nothing has them (0). */
					ok = bd_req_add_extent(req, chunk, BD_EXT_ZERO,
							       s->backing ? 2 : 0);
					break;
				}
				if (chunk > bsz - off)
					chunk = bsz - off;
				qr->chunk = chunk;
				qr->bs_len = 0;
				qr->st = ST_B_BACKING_DONE;
				q2_sub_io(qr, s->backing, BD_OP_BLOCK_STATUS, off, chunk, NULL, 0,
					  0);
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
				if (!bd_req_add_extent(req, l, qr->bext[i].flags,
						       qr->bext[i].depth ? qr->bext[i].depth + 1
									 : 0))
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
