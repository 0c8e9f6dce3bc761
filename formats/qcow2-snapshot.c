/*
 * qcow2-snapshot.c - qcow2 internal snapshots: create and delete (the driver ops requested in
 * docs/core-requests.md, "qcow2" 5).
 *
 * Threading: control thread, node drained; synchronous I/O on the file child.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
		r = q2_alloc_find(s, n, &c, &got, &need);
		if (r < 0)
			break;
		if (r == 0) {
			/* A new refcount block describing itself, then the table entry. */
			uint64_t off = (need * s->epb) << s->cb;
			uint8_t be[8];
			if (off + s->cs > bd_node_size(q2_fnode(s))) {
				r = -ENOSPC;
				break;
			}
			s->rb[need] = calloc(1, s->cs);
			if (!s->rb[need]) {
				r = -ENOMEM;
				break;
			}
			q2_refcount_set(s->rb[need], s->h.refcount_order, 0, 1);
			q2_zero_mark(s, need * s->epb);
			s->reft[need] = off;
			q2_put_be64(be, off);
			if ((r = q2_sync_write(q2_fnode(s), off, s->rb[need], s->cs)) < 0 ||
			    (r = q2_sync_flush(q2_fnode(s))) < 0 ||
			    (r = q2_sync_write(q2_fnode(s), s->h.refcount_table_offset + 8 * need,
					       be, 8)) < 0 ||
			    (r = q2_sync_flush(q2_fnode(s))) < 0)
				break;
			continue;
		}
		if (got == n) {
			r = q2_alloc_take(s, c, n);
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
		r = q2_sync_write(q2_fnode(s), s->reft[s->rbd[i].idx], s->rb[s->rbd[i].idx], s->cs);
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
		r = q2_sync_read(q2_fnode(s), l2off, l2, s->cs);
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
				if (q2_l2e_decode(q2_be64(l2 + s->esz * k), s->cb, &e) < 0) {
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
				uint64_t v = q2_rc_get(s, c);
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
					q2_rc_set(s, c, addend > 0 ? v + 1 : v - 1);
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
	return q2_write_header_fixed(s, err);
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
		r = q2_sync_write(q2_fnode(s), c << s->cb, pad, n << s->cb);
		free(pad);
		if (r == 0)
			r = sync_write_rbd(s);
		if (r == 0)
			r = q2_sync_flush(q2_fnode(s));
		if (r < 0)
			return bd_err_set(err, r, "Could not write the snapshot table: %s",
					  strerror(-r));
	}
	/* The commit point. */
	q2_put_be32(hb, nb);
	q2_put_be64(hb + 4, c << s->cb);
	r = q2_sync_write(q2_fnode(s), 60, hb, 12);
	if (r == 0)
		r = q2_sync_flush(q2_fnode(s));
	if (r < 0)
		return bd_err_set(err, r, "Could not update the header: %s", strerror(-r));
	s->h.nb_snapshots = nb;
	s->h.snapshots_offset = c << s->cb;
	s->snap_bytes = len;
	if (old_len) {
		for (uint64_t k = old_off >> s->cb; k < (old_off + old_len + s->cs - 1) >> s->cb; k++) {
			uint64_t v = q2_rc_get(s, k);
			if (v)
				q2_rc_set(s, k, v - 1);
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
		int r = q2_sync_read(q2_fnode(s), s->h.snapshots_offset, buf, old);
		if (r < 0) {
			free(buf);
			bd_err_set(err, r, "Could not read the snapshot table: %s", strerror(-r));
			return NULL;
		}
	}
	*len = padded;
	return buf;
}

static int do_create(struct bd_node *node, const char *id, const char *name, struct bd_err *err)
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
	q2_apply_frees_sync(s);
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
			return bd_err_set(err, -EEXIST,
					  "Snapshot with name '%s' already exists on device '%s'", name,
					  bd_node_name(node));
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
	if (l1c && (r = q2_sync_write(q2_fnode(s), l1copy << s->cb, be, l1c << s->cb)) < 0) {
		bd_err_set(err, r, "Could not write the snapshot L1 table: %s", strerror(-r));
		goto out;
	}
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(q2_fnode(s))) < 0) {
		bd_err_set(err, r, "Could not update refcounts: %s", strerror(-r));
		goto out;
	}
	/* The active tables' COPIED flags now follow the raised refcounts. */
	uint64_t fixed = 0;
	r = q2_fix_copied_flags(s, NULL, 0, &fixed, err);
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
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(q2_fnode(s))) < 0) {
		bd_err_set(err, r, "Could not free the old snapshot table: %s", strerror(-r));
		goto out;
	}
	r = set_dirty(s, false, err);
	if (r == 0)
		r = q2_load_snapshots(s, bd_node_size(q2_fnode(s)), NULL, err);
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

static int do_delete(struct bd_node *node, const char *id, const char *name, json_t **info,
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
	if (!id && !name)
		return bd_err_set(err, -EINVAL, "Name or id must be provided");
	if (k < 0)
		return bd_err_set(err, -ENOENT,
				  "Snapshot with id '%s' and name '%s' does not exist on device '%s'",
				  id ? id : "(null)", name ? name : "(null)", bd_node_name(node));
	q2_apply_frees_sync(s);
	struct q2_snapinfo sn = s->snaps[k];
	if (info)
		*info = q2_snapinfo_json(&sn);
	uint64_t *l1 = calloc(sn.l1_size ? sn.l1_size : 1, sizeof(*l1));
	uint8_t *raw = malloc(sn.l1_size ? (size_t)sn.l1_size * 8 : 1);
	uint8_t *table = NULL;
	uint64_t tlen;
	if (!l1 || !raw) {
		free(l1);
		free(raw);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	r = sn.l1_size ? q2_sync_read(q2_fnode(s), sn.l1_off, raw, (uint64_t)sn.l1_size * 8) : 0;
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
		uint64_t v = q2_rc_get(s, c);
		if (v)
			q2_rc_set(s, c, v - 1);
	}
	if ((r = sync_write_rbd(s)) < 0 || (r = q2_sync_flush(q2_fnode(s))) < 0) {
		bd_err_set(err, r, "Could not update refcounts: %s", strerror(-r));
		goto out;
	}
	uint64_t fixed = 0;
	r = q2_fix_copied_flags(s, NULL, 0, &fixed, err);
	if (r == 0)
		r = set_dirty(s, false, err);
	if (r == 0) {
		s->free_hint = 1;
		r = q2_load_snapshots(s, bd_node_size(q2_fnode(s)), NULL, err);
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

/* SnapshotInfo as QEMU returns it. */
json_t *q2_snapinfo_json(const struct q2_snapinfo *sn)
{
	return json_pack("{s:s,s:s,s:I,s:I,s:I,s:I,s:I}", "id", sn->id, "name", sn->name,
			 "vm-state-size", (json_int_t)sn->vm_state_size, "date-sec",
			 (json_int_t)sn->date_sec, "date-nsec", (json_int_t)sn->date_nsec,
			 "vm-clock-sec", (json_int_t)(sn->vm_clock_nsec / 1000000000u),
			 "vm-clock-nsec", (json_int_t)(sn->vm_clock_nsec % 1000000000u));
}

/* After a snapshot every cluster may be copied once more: keep the room reserved in the file
 * (docs/qcow2.md, "The image file is reserved at open") enough for that. */
static void reserve_more(struct q2 *s)
{
	uint64_t want = q2_max_file_bytes(s, q2_alloc_end_cluster(s) << s->cb);
	uint64_t reft_max = ((uint64_t)Q2_MAX_REFTABLE_BYTES / 8 - 64) * s->epb << s->cb;
	struct bd_err e = {0};

	if (want > reft_max)
		want = reft_max;
	if (want <= bd_node_size(q2_fnode(s)) || !bd_node_limits(q2_fnode(s))->can_resize)
		return;
	if (q2_grow_reftable(s, want, &e) < 0 || bd_node_resize(q2_fnode(s), want, &e) < 0)
		bd_log(BD_LOG_WARN,
		       "qcow2 '%s': could not reserve more room in the image file (%s); "
		       "allocations may fail with ENOSPC",
		       bd_node_name(s->node), e.msg);
}

int q2_snapshot_create(struct bd_node *node, const char *id, const char *name,
		       struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	int r;

	q2_freeze(s);
	r = do_create(node, id, name, err);
	if (r == 0)
		reserve_more(s);
	q2_thaw(s);
	return r;
}

int q2_snapshot_delete(struct bd_node *node, const char *id, const char *name, json_t **info,
		       struct bd_err *err)
{
	json_t *tmp = NULL;
	int r;

	q2_freeze(bd_node_priv(node));
	r = do_delete(node, id, name, &tmp, err);
	q2_thaw(bd_node_priv(node));
	if (r == 0 && info)
		*info = tmp;
	else
		json_decref(tmp);
	return r;
}
