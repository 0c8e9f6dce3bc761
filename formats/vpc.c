/*
 * vpc.c - the "vpc" format driver (Microsoft Virtual PC / Hyper-V VHD, fixed and dynamic),
 * read-only: footer, dynamic header and block allocation table are parsed at open (control
 * thread; vpc_parse() is pure over a struct ro_src so the fuzzer drives it), requests run through
 * the shared engine in ro-image.c on the request's loop.
 *
 * Layout (big-endian): a 512-byte footer "conectix" at the end (and a copy at 0 for dynamic
 * disks).  Fixed: the data, then the footer.  Dynamic: a 1 KiB "cxsparse" header naming the
 * block allocation table (32-bit sector offsets, 0xffffffff = unallocated); each block is a
 * sector bitmap (ignored for reads, as QEMU does) followed by block_size bytes.
 *
 * The virtual size follows QEMU's rule, so that the bytes equal `qemu-img convert`'s: the CHS
 * geometry for images made by Virtual PC and old QEMU, the footer's current_size for creators
 * that use it ("win ", "qem2", "d2v ", "CTXS", "tap") or when the geometry is the maximum one;
 * force-size-calc overrides.
 */
#include "formats/ro-image-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VHD_FIXED 2u
#define VHD_DYNAMIC 3u
#define VHD_DIFFERENCING 4u
#define VHD_MAX_GEOMETRY (65535ull * 16 * 255)
#define VHD_UNALLOC 0xffffffffu

static uint32_t vpc_checksum(const uint8_t *buf, size_t len, size_t skip_at)
{
	uint32_t sum = 0;
	for (size_t i = 0; i < len; i++)
		if (i < skip_at || i >= skip_at + 4)
			sum += buf[i];
	return ~sum;
}

int vpc_parse(const struct ro_src *src, enum vpc_size_calc calc, struct vpc_img *v, char *msg,
	      size_t msglen)
{
	uint8_t f[512], d[1024];
	uint32_t type;
	uint64_t chs, cur, bat_off, bat_bytes;
	uint8_t *raw;
	bool use_chs;
	int r;

	memset(v, 0, sizeof(*v));
	if (src->size < 512) {
		snprintf(msg, msglen, "File too small for a VHD header");
		return -EINVAL;
	}
	if (ro_src_read(src, 0, f, sizeof(f)) < 0 || memcmp(f, "conectix", 8)) {
		/* A fixed disk has its footer only at the end. */
		if (ro_src_read(src, src->size - 512, f, sizeof(f)) < 0 ||
		    memcmp(f, "conectix", 8) || ro_be32(f + 60) != VHD_FIXED) {
			snprintf(msg, msglen, "invalid VPC image (no \"conectix\" footer)");
			return -EINVAL;
		}
	}
	v->checksum_bad = vpc_checksum(f, 512, 64) != ro_be32(f + 64);
	memcpy(v->creator, f + 28, 4);
	for (int i = 0; i < 4; i++)
		if (v->creator[i] < 0x20 || v->creator[i] > 0x7e)
			v->creator[i] = '?';
	v->creator[4] = 0;
	type = ro_be32(f + 60);
	cur = ro_be64(f + 48);
	chs = (uint64_t)ro_be16(f + 56) * f[58] * f[59];
	use_chs = memcmp(f + 28, "win ", 4) && memcmp(f + 28, "qem2", 4) &&
		  memcmp(f + 28, "d2v ", 4) && memcmp(f + 28, "CTXS", 4) &&
		  memcmp(f + 28, "tap", 4);
	if (calc == VPC_SIZE_CHS)
		use_chs = true;
	if (!use_chs || chs == VHD_MAX_GEOMETRY || calc == VPC_SIZE_CURRENT)
		v->size = cur & ~511ull;
	else
		v->size = chs * 512;

	if (type == VHD_DIFFERENCING) {
		snprintf(msg, msglen, "differencing VHD images are not supported");
		return -ENOTSUP;
	}
	if (type == VHD_FIXED) {
		v->fixed = true;
		if (v->size > src->size - 512) {
			snprintf(msg, msglen,
				 "Image is corrupt: fixed VHD of %" PRIu64
				 " bytes in a file of %" PRIu64 " bytes",
				 v->size, src->size);
			return -EINVAL;
		}
		return 0;
	}
	if (type != VHD_DYNAMIC) {
		snprintf(msg, msglen, "unsupported VHD image type %" PRIu32, type);
		return -ENOTSUP;
	}
	uint64_t doff = ro_be64(f + 16);
	if (ro_src_read(src, doff, d, sizeof(d)) < 0 || memcmp(d, "cxsparse", 8)) {
		snprintf(msg, msglen, "invalid VPC image (no \"cxsparse\" header at %" PRIu64 ")",
			 doff);
		return -EINVAL;
	}
	v->block_size = ro_be32(d + 32);
	if (v->block_size < 512 || (v->block_size & (v->block_size - 1)) ||
	    v->block_size > (1u << 30)) {
		snprintf(msg, msglen, "Invalid block size %" PRIu32, v->block_size);
		return -EINVAL;
	}
	v->bitmap_size = ((v->block_size / (8 * 512)) + 511) & ~511u;
	v->entries = ro_be32(d + 28);
	if (v->size / v->block_size > 0xffffffffull) {
		snprintf(msg, msglen, "Too many blocks");
		return -EINVAL;
	}
	if ((uint64_t)v->entries * v->block_size < v->size) {
		snprintf(msg, msglen,
			 "Image is corrupt: page table too small (%" PRIu32 " blocks "
			 "of %" PRIu32 " bytes for %" PRIu64 " bytes)",
			 v->entries, v->block_size, v->size);
		return -EINVAL;
	}
	/* Only the entries that cover the disk matter. */
	uint64_t need = (v->size + v->block_size - 1) / v->block_size;
	if (need < v->entries)
		v->entries = (uint32_t)need;
	bat_off = ro_be64(d + 16);
	bat_bytes = (uint64_t)v->entries * 4;
	if (bat_bytes > RO_MAX_META_BYTES || bat_off > src->size ||
	    bat_bytes > src->size - bat_off) {
		snprintf(msg, msglen,
			 "Image is corrupt: block allocation table (%" PRIu32 " entries at %" PRIu64
			 ") lies past the end of the file",
			 v->entries, bat_off);
		return -EINVAL;
	}
	raw = malloc(bat_bytes ? bat_bytes : 1);
	v->bat = calloc(v->entries ? v->entries : 1, sizeof(*v->bat));
	if (!raw || !v->bat) {
		free(raw);
		vpc_free(v);
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	r = ro_src_read(src, bat_off, raw, bat_bytes);
	if (r < 0) {
		free(raw);
		vpc_free(v);
		snprintf(msg, msglen, "Could not read the block allocation table: %s",
			 strerror(-r));
		return r;
	}
	for (uint32_t i = 0; i < v->entries; i++) {
		uint32_t e = ro_be32(raw + 4ull * i);
		v->bat[i] = e;
		if (e == VHD_UNALLOC)
			continue;
		if ((uint64_t)e * 512 + v->bitmap_size >= src->size) {
			snprintf(msg, msglen,
				 "Image is corrupt: block %" PRIu32 " (sector %" PRIu32
				 ") lies past the end of the file",
				 i, e);
			free(raw);
			vpc_free(v);
			return -EINVAL;
		}
	}
	free(raw);
	return 0;
}

void vpc_free(struct vpc_img *v)
{
	free(v->bat);
	v->bat = NULL;
}

int vpc_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg)
{
	const struct vpc_img *v = fmt;

	if (v->fixed) {
		seg->kind = RO_DATA;
		seg->recurse = true;
		seg->host = off;
		seg->len = len;
		return 0;
	}
	uint64_t blk = off / v->block_size, in = off % v->block_size;
	uint64_t n = v->block_size - in;
	if (blk >= v->entries)
		return -EIO;
	if (v->bat[blk] != VHD_UNALLOC) {
		seg->kind = RO_DATA;
		seg->host = (uint64_t)v->bat[blk] * 512 + v->bitmap_size + in;
	} else {
		seg->kind = RO_ZERO; /* no backing files: zeroes (as QEMU reports) */
		while (n < len && blk + 1 < v->entries && v->bat[blk + 1] == VHD_UNALLOC) {
			blk++;
			n += v->block_size;
		}
	}
	seg->len = n < len ? n : len;
	return 0;
}

/* ---- the driver ---- */

struct vpc_node {
	struct ro_img ro;
	struct vpc_img v;
};

static const struct ro_ops vpc_ops = {.map = vpc_map};
static const char *const vpc_calc_names[] = {"none", "chs", "current_size", NULL};

static int vpc_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct vpc_node *n = bd_node_priv(node);
	struct ro_src src;
	char msg[256];
	int calc = VPC_SIZE_AUTO, r;

	memset(&n->v, 0, sizeof(n->v));
	r = bd_opts_enum(opts, "force_size_calc", vpc_calc_names, &calc, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = ro_init(&n->ro, node, opts, "vpc", err);
	if (r < 0)
		goto fail;
	ro_src_file(&n->ro, 0, &src);
	r = vpc_parse(&src, (enum vpc_size_calc)calc, &n->v, msg, sizeof(msg));
	if (r < 0) {
		r = bd_err_set(err, r, "%s", msg);
		goto fail;
	}
	if (n->v.checksum_bad)
		bd_log(BD_LOG_WARN, "vpc node '%s': the footer checksum is incorrect",
		       bd_node_name(node));
	n->ro.ops = &vpc_ops;
	n->ro.fmt = &n->v;
	n->ro.size = n->v.size;
	ro_limits(&n->ro, limits);
	return 0;
fail:
	vpc_free(&n->v);
	ro_free(&n->ro);
	return r;
}

static void vpc_close(struct bd_node *node)
{
	struct vpc_node *n = bd_node_priv(node);
	vpc_free(&n->v);
	ro_free(&n->ro);
}

static void vpc_describe(struct bd_node *node, json_t *out)
{
	struct vpc_node *n = bd_node_priv(node);
	json_t *d = json_pack("{s:s,s:s}", "subformat", n->v.fixed ? "fixed" : "dynamic", "creator",
			      n->v.creator);
	if (d && !n->v.fixed)
		json_object_set_new(d, "block-size", json_integer((json_int_t)n->v.block_size));
	json_object_set_new(out, "format-specific",
			    json_pack("{s:s,s:o}", "type", "vpc", "data", d));
}

static const struct bd_opt_desc vpc_options[] = {
    {"file", BD_OPT_CHILD, true, NULL, "the node holding the image"},
    {"force_size_calc", BD_OPT_ENUM, false, vpc_calc_names,
     "how the virtual size is found: none (by creator, QEMU's rule), chs, current_size"},
    {NULL},
};

const struct bd_driver bd_drv_vpc = {
    .name = "vpc",
    .kind = BD_DRV_FORMAT,
    .help = "Virtual PC / Hyper-V VHD image, fixed or dynamic (read-only)",
    .options = vpc_options,
    .node_size = sizeof(struct vpc_node),
    .req_size = sizeof(struct ro_req),
    .open = vpc_open,
    .close = vpc_close,
    .submit = ro_submit,
    .describe = vpc_describe,
};
