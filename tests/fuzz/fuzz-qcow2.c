/*
 * fuzz-qcow2.c - libFuzzer harness for the qcow2 metadata validation (formats/qcow2-meta.c).
 * The input is the start of an image file: the header is parsed against the input's length as
 * the file size; when it is accepted, every table it names that lies inside the input (L1,
 * refcount table, refcount blocks, L2 tables, snapshot table) is decoded and validated exactly
 * as the driver does at open and on lookups.  Invariants checked: an accepted header names
 * tables that lie inside the file; decoded offsets are aligned; refcount get/set round-trip.
 * No I/O.
 */
#include "formats/qcow2.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-qcow2: invariant broken: %s\n", what);
		abort();
	}
}

static void snap_cb(void *opaque, const struct q2_snapinfo *sn)
{
	uint64_t fsize = *(const uint64_t *)opaque;
	check(sn->l1_size == 0 || sn->l1_off + (uint64_t)sn->l1_size * 8 <= fsize,
	      "snapshot L1 inside file");
	check(strlen(sn->id) < sizeof(sn->id) && strlen(sn->name) < sizeof(sn->name), "strings");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct q2_header h;
	char msg[256];
	uint64_t fsize = size;

	if (q2_header_parse(data, size, fsize, &h, msg, sizeof(msg)) < 0)
		return 0;
	check(h.cluster_bits >= 9 && h.cluster_bits <= 21, "cluster bits");
	check(h.refcount_order <= 6, "refcount order");
	check(h.l1_size == 0 || h.l1_table_offset + (uint64_t)h.l1_size * 8 <= fsize, "L1 inside");
	check(h.refcount_table_offset + ((uint64_t)h.refcount_table_clusters << h.cluster_bits) <=
		      fsize,
	      "reftable inside");
	check(strlen(h.backing_file) == h.backing_file_size || !h.backing_file_offset, "backing");
	uint64_t cs = 1ull << h.cluster_bits;

	/* L1 entries and the L2 tables they name. */
	for (uint32_t i = 0; i < h.l1_size && i < 4096; i++) {
		uint64_t l2off;
		if (q2_l1e_check(q2_be64(data + h.l1_table_offset + 8ull * i), h.cluster_bits, fsize,
				 &l2off) < 0 ||
		    !l2off)
			continue;
		check(l2off % cs == 0 && l2off + cs <= fsize, "L2 offset");
		uint64_t esz = h.extl2 ? 16 : 8;
		for (uint64_t k = 0; k < cs / esz && k < 4096; k++) {
			struct q2_l2e e;
			uint64_t raw = q2_be64(data + l2off + esz * k);
			int r = h.extl2 ? q2_l2e_decode_ext(raw, h.cluster_bits, &e)
					: q2_l2e_decode(raw, h.cluster_bits, &e);
			if (r < 0)
				continue;
			if (e.type == Q2_C_NORMAL || e.type == Q2_C_ZERO_ALLOC)
				check(e.host % cs == 0, "data cluster aligned");
			if (e.type == Q2_C_COMPRESSED)
				check(e.csize >= 1 && e.host != 0, "compressed descriptor");
			if (!h.extl2)
				continue;
			uint64_t bitmap = q2_be64(data + l2off + esz * k + 8);
			for (unsigned sc = 0; sc < Q2_SUBCLUSTERS; sc++) {
				enum q2_ctype t;
				uint64_t host;
				if (q2_subcluster(&e, bitmap, sc, h.cluster_bits, &t, &host) < 0)
					continue;
				if (t == Q2_C_NORMAL)
					check(host == e.host + ((uint64_t)sc << (h.cluster_bits - 5)),
					      "subcluster host");
			}
		}
	}

	/* Refcount table and blocks. */
	uint64_t nref = ((uint64_t)h.refcount_table_clusters << h.cluster_bits) / 8;
	for (uint64_t i = 0; i < nref && i < 4096; i++) {
		uint64_t rb;
		if (q2_reftable_check(q2_be64(data + h.refcount_table_offset + 8 * i),
				      h.cluster_bits, fsize, &rb) < 0 ||
		    !rb)
			continue;
		check(rb % cs == 0 && rb + cs <= fsize, "refblock offset");
		uint8_t *copy = malloc(cs);
		memcpy(copy, data + rb, cs);
		uint64_t n = q2_rb_entries(h.cluster_bits, h.refcount_order);
		for (uint64_t e = 0; e < n && e < 2048; e++) {
			uint64_t v = q2_refcount_get(copy, h.refcount_order, e);
			check(v <= q2_refcount_max(h.refcount_order), "refcount range");
			check(q2_refcount_set(copy, h.refcount_order, e, v) == 0, "set back");
		}
		check(memcmp(copy, data + rb, cs) == 0, "refcount round trip");
		free(copy);
	}

	/* Snapshot table. */
	if (h.nb_snapshots && h.snapshots_offset < fsize) {
		uint64_t bytes;
		q2_snapshots_parse(data + h.snapshots_offset, fsize - h.snapshots_offset,
				   h.nb_snapshots, h.cluster_bits, fsize, &bytes, snap_cb, &fsize,
				   msg, sizeof(msg));
	}

	/* Bitmap directory. */
	if (h.has_bitmaps)
		q2_bitmap_dir_parse(data + h.bitmap_dir_offset, h.bitmap_dir_size, h.nb_bitmaps,
				    h.cluster_bits, fsize, NULL, NULL, msg, sizeof(msg));

	/* The fixed header round trip. */
	uint8_t out[Q2_HEADER_LEN_WITH_CTYPE];
	q2_header_write_fixed(&h, out);
	check(memcmp(out, data, h.version == 2 ? 72 : 104) == 0, "header round trip");
	return 0;
}
