/*
 * fuzz-formats.c - libFuzzer harness for the read-only format parsers (formats/vdi.c, vpc.c,
 * qed.c, vmdk-parse.c).  The first input byte picks the parser (modulo 5: vdi, vpc, qed, vmdk
 * sparse extent, vmdk text descriptor), the rest is the image file.  An accepted image's map is
 * walked over the whole virtual size (at most 4096 segments) as the engine does, and compressed
 * grains are inflated from the input.  Invariants checked: segments are non-empty and inside the
 * asked range; data names the image file without overflowing; compressed grains start inside the
 * file; the tables cover the virtual size.  No I/O.
 */
#include "formats/ro-image-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-formats: invariant broken: %s\n", what);
		abort();
	}
}

/* Walk the map like ro-image.c does; file is the image (child 0). */
static void walk(const struct ro_ops *ops, const void *fmt, uint64_t vsize, const uint8_t *file,
		 uint64_t fsize, bool host_in_file)
{
	uint64_t off = 0;

	for (unsigned n = 0; n < 4096 && off < vsize; n++) {
		struct ro_seg seg;
		memset(&seg, 0, sizeof(seg));
		if (ops->map(fmt, off, vsize - off, &seg) < 0)
			return;
		check(seg.len > 0 && seg.len <= vsize - off, "segment length");
		if (seg.kind == RO_DATA && host_in_file)
			check(seg.child == 0 && seg.host + seg.len >= seg.host, "data host");
		if (seg.kind == RO_COMPRESSED && ops->inflate && seg.grain_size <= (64u << 20)) {
			check(seg.host < fsize, "grain inside the file");
			check(seg.grain_off + seg.len <= seg.grain_size, "grain slice");
			uint8_t *out = malloc(seg.grain_size);
			uint64_t inlen = fsize - seg.host;
			if (inlen > 2 * seg.grain_size + 512)
				inlen = 2 * seg.grain_size + 512;
			if (out) {
				ops->inflate(fmt, &seg, file + seg.host, inlen, out);
				free(out);
			}
		}
		off += seg.len;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct ro_membuf m;
	struct ro_src src;
	char msg[256];

	if (size < 1)
		return 0;
	unsigned which = data[0] % 5;
	const uint8_t *file = data + 1;
	uint64_t fsize = size - 1;
	ro_src_mem(&src, &m, file, fsize);

	switch (which) {
	case 0: {
		struct vdi_img v;
		struct ro_ops ops = {.map = vdi_map};
		if (vdi_parse(&src, &v, msg, sizeof(msg)) < 0)
			return 0;
		check(v.disk_size <= (uint64_t)v.blocks * v.block_size, "vdi size");
		for (uint32_t i = 0; i < v.blocks; i++)
			check(v.bmap[i] >= 0xfffffffeu ||
				  v.data_off + (uint64_t)v.bmap[i] * v.block_size < fsize,
			      "vdi block inside");
		walk(&ops, &v, v.disk_size & ~511ull, file, fsize, true);
		vdi_free(&v);
		break;
	}
	case 1: {
		struct vpc_img v;
		struct ro_ops ops = {.map = vpc_map};
		for (int calc = 0; calc < 3; calc++) {
			if (vpc_parse(&src, (enum vpc_size_calc)calc, &v, msg, sizeof(msg)) < 0)
				continue;
			check(!v.fixed || v.size <= fsize - 512, "vpc fixed size");
			check(v.fixed || (uint64_t)v.entries * v.block_size >= v.size, "vpc bat");
			walk(&ops, &v, v.size, file, fsize, true);
			vpc_free(&v);
		}
		break;
	}
	case 2: {
		struct qed_img q;
		struct ro_ops ops = {.map = qed_map};
		if (qed_parse(&src, &q, msg, sizeof(msg)) < 0)
			return 0;
		check(q.cluster_size >= 4096 && !(q.cluster_size & (q.cluster_size - 1)), "qed cs");
		check(!q.backing || strlen(q.backing) <= 4096, "qed backing");
		walk(&ops, &q, q.size, file, fsize, true);
		qed_free(&q);
		break;
	}
	case 3: {
		struct vmdk_extent e;
		struct vmdk_map mp = {&e, 1, 0};
		struct ro_ops ops = {.map = vmdk_map, .inflate = vmdk_inflate};
		memset(&e, 0, sizeof(e));
		e.type = VMDK_EXT_SPARSE;
		if (vmdk_sparse_parse(&src, &e.sp, msg, sizeof(msg)) < 0)
			return 0;
		check(e.sp.gtes >= 1 && e.sp.gtes <= 512 && e.sp.grain >= 1, "vmdk geometry");
		check(!e.sp.desc_size || e.sp.desc_off + e.sp.desc_size <= fsize, "vmdk desc");
		e.sectors = e.sp.capacity;
		mp.size = e.sectors * 512;
		if (e.sp.desc_size) {
			struct vmdk_desc d;
			if (vmdk_desc_parse((const char *)file + e.sp.desc_off, e.sp.desc_size, &d,
					    msg, sizeof(msg)) == 0)
				vmdk_desc_free(&d);
		}
		walk(&ops, &mp, mp.size, file, fsize, true);
		vmdk_sparse_free(&e.sp);
		break;
	}
	case 4: {
		struct vmdk_desc d;
		if (vmdk_desc_parse((const char *)file, fsize, &d, msg, sizeof(msg)) < 0)
			return 0;
		uint64_t total = 0;
		bool fits = true;
		for (unsigned i = 0; i < d.n; i++) {
			check(d.ext[i].sectors > 0 && d.ext[i].sectors <= (1ull << 53),
			      "extent size");
			check(d.ext[i].type == VMDK_EXT_ZERO || d.ext[i].file, "extent file");
			d.ext[i].start = total;
			if (d.ext[i].sectors * 512 > (1ull << 62) - total) {
				fits = false; /* the driver refuses such extents too */
				break;
			}
			total += d.ext[i].sectors * 512;
			/* Flat extents only: sparse ones have no tables here. */
			if (d.ext[i].type == VMDK_EXT_SPARSE)
				d.ext[i].type = VMDK_EXT_ZERO;
		}
		if (fits) {
			struct vmdk_map mp = {d.ext, d.n, total};
			struct ro_ops ops = {.map = vmdk_map};
			walk(&ops, &mp, total, file, fsize, false);
		}
		vmdk_desc_free(&d);
		break;
	}
	}
	return 0;
}
