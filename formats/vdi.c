/*
 * vdi.c - the "vdi" format driver (VirtualBox disk images, version 1.1, static and dynamic),
 * read-only: the header and block map are parsed at open (control thread, vdi_parse() is pure
 * over a struct ro_src so the fuzzer drives it), requests run through the shared engine in
 * ro-image.c on the request's loop.
 *
 * Layout (little-endian): a 512-byte header (signature 0xbeda107f at 0x40), a block map of
 * blocks_in_image 32-bit entries at offset_bmap, data blocks of block_size bytes from
 * offset_data.  Entry 0xffffffff (never written) and 0xfffffffe (discarded) read as zeroes.
 */
#include "formats/ro-image-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VDI_SIGNATURE 0xbeda107fu
#define VDI_VERSION_1_1 0x00010001u
#define VDI_TYPE_DYNAMIC 1u
#define VDI_TYPE_STATIC 2u
#define VDI_UNALLOCATED 0xffffffffu
#define VDI_DISCARDED 0xfffffffeu
#define VDI_HEADER_LEN 512

static bool uuid_null(const uint8_t *u)
{
	for (int i = 0; i < 16; i++)
		if (u[i])
			return false;
	return true;
}

int vdi_parse(const struct ro_src *src, struct vdi_img *v, char *msg, size_t msglen)
{
	uint8_t h[VDI_HEADER_LEN];
	uint32_t type, bmap_off, sector_size, extra;
	uint64_t bmap_bytes;
	uint8_t *raw;
	int r;

	memset(v, 0, sizeof(*v));
	if (src->size < VDI_HEADER_LEN || ro_src_read(src, 0, h, sizeof(h)) < 0 ||
	    ro_le32(h + 0x40) != VDI_SIGNATURE) {
		snprintf(msg, msglen, "Image not in VDI format (bad signature)");
		return -EINVAL;
	}
	if (ro_le32(h + 0x44) != VDI_VERSION_1_1) {
		snprintf(msg, msglen, "unsupported VDI image (version %u.%u)",
			 ro_le32(h + 0x44) >> 16, ro_le32(h + 0x44) & 0xffff);
		return -ENOTSUP;
	}
	type = ro_le32(h + 0x4c);
	bmap_off = ro_le32(h + 0x154);
	v->data_off = ro_le32(h + 0x158);
	sector_size = ro_le32(h + 0x168);
	v->disk_size = ro_le64(h + 0x170);
	v->block_size = ro_le32(h + 0x178);
	extra = ro_le32(h + 0x17c);
	v->blocks = ro_le32(h + 0x180);
	v->is_static = type == VDI_TYPE_STATIC;
	if (type != VDI_TYPE_DYNAMIC && type != VDI_TYPE_STATIC) {
		snprintf(msg, msglen, "unsupported VDI image (type %u)", type);
		return -ENOTSUP;
	}
	if (bmap_off % 512 || v->data_off % 512) {
		snprintf(msg, msglen, "unsupported VDI image (unaligned %s offset)",
			 bmap_off % 512 ? "block map" : "data");
		return -ENOTSUP;
	}
	if (sector_size != 512) {
		snprintf(msg, msglen, "unsupported VDI image (sector size %u is not 512)",
			 sector_size);
		return -ENOTSUP;
	}
	if (v->block_size < 512 || v->block_size > (256u << 20) ||
	    (v->block_size & (v->block_size - 1))) {
		snprintf(msg, msglen, "unsupported VDI image (block size %u)", v->block_size);
		return -ENOTSUP;
	}
	if (extra) {
		snprintf(msg, msglen, "unsupported VDI image (block_extra %u is not 0)", extra);
		return -ENOTSUP;
	}
	if (!uuid_null(h + 0x1a8) || !uuid_null(h + 0x1b8)) {
		snprintf(msg, msglen,
			 "unsupported VDI image (non-NULL %s UUID: differencing images "
			 "are not supported)",
			 uuid_null(h + 0x1a8) ? "parent" : "link");
		return -ENOTSUP;
	}
	if (v->disk_size > (uint64_t)v->blocks * v->block_size) {
		snprintf(msg, msglen,
			 "Image is corrupt: disk size %" PRIu64 " but the block map has room for "
			 "%" PRIu64 " bytes",
			 v->disk_size, (uint64_t)v->blocks * v->block_size);
		return -EINVAL;
	}
	bmap_bytes = (uint64_t)v->blocks * 4;
	if (bmap_bytes > RO_MAX_META_BYTES || bmap_off > src->size ||
	    bmap_bytes > src->size - bmap_off) {
		snprintf(msg, msglen,
			 "Image is corrupt: block map (%" PRIu32 " entries at %" PRIu32
			 ") lies past the end of the file",
			 v->blocks, bmap_off);
		return -EINVAL;
	}
	raw = malloc(bmap_bytes ? bmap_bytes : 1);
	v->bmap = calloc(v->blocks ? v->blocks : 1, sizeof(*v->bmap));
	if (!raw || !v->bmap) {
		free(raw);
		vdi_free(v);
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	r = ro_src_read(src, bmap_off, raw, bmap_bytes);
	if (r < 0) {
		free(raw);
		vdi_free(v);
		snprintf(msg, msglen, "Could not read the block map: %s", strerror(-r));
		return r;
	}
	for (uint32_t i = 0; i < v->blocks; i++) {
		uint32_t e = ro_le32(raw + 4ull * i);
		v->bmap[i] = e;
		if (e >= VDI_DISCARDED)
			continue;
		if (e >= v->blocks || v->data_off + (uint64_t)e * v->block_size >= src->size) {
			snprintf(msg, msglen,
				 "Image is corrupt: block map entry %" PRIu32 " (%" PRIu32
				 ") points past the end of the file",
				 i, e);
			free(raw);
			vdi_free(v);
			return -EINVAL;
		}
	}
	free(raw);
	return 0;
}

void vdi_free(struct vdi_img *v)
{
	free(v->bmap);
	v->bmap = NULL;
}

int vdi_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg)
{
	const struct vdi_img *v = fmt;
	uint64_t blk = off / v->block_size, in = off % v->block_size;
	uint64_t n = v->block_size - in;

	if (blk >= v->blocks)
		return -EIO;
	uint32_t e = v->bmap[blk];
	if (e < VDI_DISCARDED) {
		seg->kind = RO_DATA;
		seg->recurse = v->is_static; /* preallocated: holes read as zeroes */
		seg->host = v->data_off + (uint64_t)e * v->block_size + in;
	} else {
		seg->kind = RO_ZERO; /* no backing files: zeroes (as QEMU reports) */
		while (n < len && blk + 1 < v->blocks && v->bmap[blk + 1] >= VDI_DISCARDED) {
			blk++;
			n += v->block_size;
		}
	}
	seg->len = n < len ? n : len;
	return 0;
}

/* ---- the driver ---- */

struct vdi_node {
	struct ro_img ro;
	struct vdi_img v;
};

static const struct ro_ops vdi_ops = {.map = vdi_map};

static int vdi_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct vdi_node *n = bd_node_priv(node);
	struct ro_src src;
	char msg[256];
	int r;

	memset(&n->v, 0, sizeof(n->v));
	r = ro_init(&n->ro, node, opts, "vdi", err);
	if (r < 0)
		goto fail;
	ro_src_file(&n->ro, 0, &src);
	r = vdi_parse(&src, &n->v, msg, sizeof(msg));
	if (r < 0) {
		r = bd_err_set(err, r, "%s", msg);
		goto fail;
	}
	n->ro.ops = &vdi_ops;
	n->ro.fmt = &n->v;
	n->ro.size = n->v.disk_size & ~511ull;
	ro_limits(&n->ro, limits);
	return 0;
fail:
	vdi_free(&n->v);
	ro_free(&n->ro);
	return r;
}

static void vdi_close(struct bd_node *node)
{
	struct vdi_node *n = bd_node_priv(node);
	vdi_free(&n->v);
	ro_free(&n->ro);
}

static void vdi_describe(struct bd_node *node, json_t *out)
{
	struct vdi_node *n = bd_node_priv(node);
	json_object_set_new(out, "format-specific",
			    json_pack("{s:s,s:{s:s,s:I}}", "type", "vdi", "data", "image-type",
				      n->v.is_static ? "static" : "dynamic", "block-size",
				      (json_int_t)n->v.block_size));
}

static const struct bd_opt_desc vdi_options[] = {
    {"file", BD_OPT_CHILD, true, NULL, "the node holding the image"},
    {NULL},
};

const struct bd_driver bd_drv_vdi = {
    .name = "vdi",
    .kind = BD_DRV_FORMAT,
    .help = "VirtualBox disk image (read-only)",
    .options = vdi_options,
    .node_size = sizeof(struct vdi_node),
    .req_size = sizeof(struct ro_req),
    .open = vdi_open,
    .close = vdi_close,
    .submit = ro_submit,
    .describe = vdi_describe,
};
