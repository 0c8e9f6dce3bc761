/*
 * qed.c - the "qed" format driver (QEMU Enhanced Disk), read-only, with backing files: header,
 * L1 and every L2 table are parsed at open (control thread; qed_parse() is pure over a struct
 * ro_src so the fuzzer drives it), requests run through the shared engine in ro-image.c on the
 * request's loop.
 *
 * Layout (little-endian): header "QED\0" with cluster_size (4 KiB..64 MiB), table_size (1..16
 * clusters per table), header_size (clusters), features, l1_table_offset, image_size and the
 * backing file name inside the header clusters.  L1 entries name L2 tables, L2 entries name data
 * clusters: 0 = unallocated (backing file or zeroes), 1 = zero cluster.
 */
#include "formats/ro-image-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QED_F_BACKING_FILE 0x1ull
#define QED_F_NEED_CHECK 0x2ull
#define QED_F_BACKING_FORMAT_NO_PROBE 0x4ull
#define QED_FEATURE_MASK                                                                           \
	((uint64_t)(QED_F_BACKING_FILE | QED_F_NEED_CHECK | QED_F_BACKING_FORMAT_NO_PROBE))
#define QED_ZERO_CLUSTER 1ull

static bool pow2(uint64_t x)
{
	return x && !(x & (x - 1));
}

/* A table or cluster offset: aligned, after the header, starting inside the file. */
static bool off_ok(const struct qed_img *q, uint64_t hdr_bytes, uint64_t fsize, uint64_t off,
		   uint64_t len)
{
	return !(off & (q->cluster_size - 1)) && off >= hdr_bytes && off < fsize &&
	       len <= fsize - off;
}

int qed_parse(const struct ro_src *src, struct qed_img *q, char *msg, size_t msglen)
{
	uint8_t h[64];
	uint32_t header_size, bf_off, bf_size;
	uint64_t l1_off, tbytes, hdr_bytes, max_size, meta = 0;
	uint8_t *raw = NULL;
	int r;

	memset(q, 0, sizeof(*q));
	if (ro_src_read(src, 0, h, sizeof(h)) < 0 || memcmp(h, "QED\0", 4)) {
		snprintf(msg, msglen, "Image not in QED format");
		return -EINVAL;
	}
	q->cluster_size = ro_le32(h + 4);
	q->table_size = ro_le32(h + 8);
	header_size = ro_le32(h + 12);
	q->features = ro_le64(h + 16);
	l1_off = ro_le64(h + 40);
	q->size = ro_le64(h + 48);
	bf_off = ro_le32(h + 56);
	bf_size = ro_le32(h + 60);
	if (q->features & ~QED_FEATURE_MASK) {
		snprintf(msg, msglen, "Unsupported QED features: 0x%" PRIx64,
			 q->features & ~QED_FEATURE_MASK);
		return -ENOTSUP;
	}
	if (!pow2(q->cluster_size) || q->cluster_size < 4096 || q->cluster_size > (64u << 20)) {
		snprintf(msg, msglen, "Image is corrupt: invalid cluster size %" PRIu32,
			 q->cluster_size);
		return -EINVAL;
	}
	if (!pow2(q->table_size) || q->table_size > 16) {
		snprintf(msg, msglen, "Image is corrupt: invalid table size %" PRIu32,
			 q->table_size);
		return -EINVAL;
	}
	tbytes = (uint64_t)q->table_size * q->cluster_size;
	q->l2_entries = tbytes / 8;
	/* l1 entries * l2 entries * cluster size, without overflow (at most 2^26 * 2^23 * 2^23
	 * bits would overflow: compare in logs). */
	unsigned lg = (unsigned)__builtin_ctzll(q->l2_entries) * 2 +
		      (unsigned)__builtin_ctzll(q->cluster_size);
	max_size = lg >= 63 ? UINT64_MAX : 1ull << lg;
	if (q->size % 512 || q->size > max_size) {
		snprintf(msg, msglen, "Image is corrupt: invalid image size %" PRIu64, q->size);
		return -EINVAL;
	}
	hdr_bytes = (uint64_t)header_size * q->cluster_size;
	if (header_size == 0 || hdr_bytes > src->size) {
		snprintf(msg, msglen, "Image is corrupt: header of %" PRIu32 " clusters",
			 header_size);
		return -EINVAL;
	}
	if (!off_ok(q, hdr_bytes, src->size, l1_off, tbytes)) {
		snprintf(msg, msglen, "Image is corrupt: L1 table at 0x%" PRIx64 " is invalid",
			 l1_off);
		return -EINVAL;
	}
	q->need_check = q->features & QED_F_NEED_CHECK;
	if (q->features & QED_F_BACKING_FILE) {
		if ((uint64_t)bf_off + bf_size > hdr_bytes || bf_size == 0 || bf_size > 4096) {
			snprintf(msg, msglen,
				 "Image is corrupt: backing file name (%" PRIu32
				 " bytes at %" PRIu32 ") lies outside the header",
				 bf_size, bf_off);
			return -EINVAL;
		}
		q->backing = calloc(1, bf_size + 1);
		if (!q->backing) {
			snprintf(msg, msglen, "out of memory");
			return -ENOMEM;
		}
		r = ro_src_read(src, bf_off, q->backing, bf_size);
		if (r < 0 || strlen(q->backing) != bf_size) {
			snprintf(msg, msglen, "Image is corrupt: invalid backing file name");
			qed_free(q);
			return r < 0 ? r : -EINVAL;
		}
		q->backing_raw = q->features & QED_F_BACKING_FORMAT_NO_PROBE;
	}

	/* Tables. */
	uint64_t cover = q->l2_entries * q->cluster_size; /* bytes one L2 table covers */
	q->l1_n = q->size / cover + (q->size % cover ? 1 : 0);
	if (q->l1_n > q->l2_entries)
		q->l1_n = q->l2_entries;
	raw = malloc(tbytes);
	q->l2 = calloc(q->l1_n ? q->l1_n : 1, sizeof(*q->l2));
	if (!raw || !q->l2) {
		r = -ENOMEM;
		snprintf(msg, msglen, "out of memory");
		goto fail;
	}
	r = ro_src_read(src, l1_off, raw, tbytes);
	if (r < 0) {
		snprintf(msg, msglen, "Could not read the L1 table: %s", strerror(-r));
		goto fail;
	}
	uint64_t *l1 = calloc(q->l1_n ? q->l1_n : 1, sizeof(*l1));
	if (!l1) {
		r = -ENOMEM;
		snprintf(msg, msglen, "out of memory");
		goto fail;
	}
	for (uint64_t i = 0; i < q->l1_n; i++)
		l1[i] = ro_le64(raw + 8 * i);
	for (uint64_t i = 0; i < q->l1_n; i++) {
		if (!l1[i])
			continue;
		if (!off_ok(q, hdr_bytes, src->size, l1[i], tbytes)) {
			snprintf(msg, msglen,
				 "Image is corrupt: L1 entry %" PRIu64 " (0x%" PRIx64
				 ") is invalid",
				 i, l1[i]);
			r = -EINVAL;
			break;
		}
		meta += tbytes;
		if (meta > RO_MAX_META_BYTES) {
			snprintf(msg, msglen, "the L2 tables need more than %llu MiB of memory",
				 RO_MAX_META_BYTES >> 20);
			r = -EFBIG;
			break;
		}
		q->l2[i] = malloc(tbytes);
		if (!q->l2[i]) {
			snprintf(msg, msglen, "out of memory");
			r = -ENOMEM;
			break;
		}
		r = ro_src_read(src, l1[i], raw, tbytes);
		if (r < 0) {
			snprintf(msg, msglen, "Could not read an L2 table: %s", strerror(-r));
			break;
		}
		for (uint64_t k = 0; k < q->l2_entries; k++) {
			uint64_t e = ro_le64(raw + 8 * k);
			q->l2[i][k] = e;
			if (e > QED_ZERO_CLUSTER && !off_ok(q, hdr_bytes, src->size, e, 1)) {
				snprintf(msg, msglen,
					 "Image is corrupt: L2 table %" PRIu64 " entry %" PRIu64
					 " (0x%" PRIx64 ") is invalid",
					 i, k, e);
				r = -EINVAL;
				break;
			}
		}
		if (r < 0)
			break;
		if (bd_buf_is_zero(raw, tbytes)) {
			free(q->l2[i]);
			q->l2[i] = NULL;
			meta -= tbytes;
		}
	}
	free(l1);
	if (r < 0)
		goto fail;
	free(raw);
	return 0;
fail:
	free(raw);
	qed_free(q);
	return r;
}

void qed_free(struct qed_img *q)
{
	if (q->l2) {
		for (uint64_t i = 0; i < q->l1_n; i++)
			free(q->l2[i]);
		free(q->l2);
	}
	free(q->backing);
	q->l2 = NULL;
	q->backing = NULL;
}

static enum ro_kind entry_kind(uint64_t e)
{
	return e == 0 ? RO_UNALLOC : e == QED_ZERO_CLUSTER ? RO_ZERO : RO_DATA;
}

int qed_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg)
{
	const struct qed_img *q = fmt;
	uint64_t cs = q->cluster_size, cover = q->l2_entries * cs;
	uint64_t l1i = off / cover, l2i = (off % cover) / cs, in = off % cs;
	uint64_t n;

	if (l1i >= q->l1_n)
		return -EIO;
	if (!q->l2[l1i]) {
		seg->kind = RO_UNALLOC;
		n = cover - off % cover;
	} else {
		uint64_t e = q->l2[l1i][l2i];
		seg->kind = entry_kind(e);
		n = cs - in;
		if (seg->kind == RO_DATA)
			seg->host = e + in;
		else
			while (n < len && l2i + 1 < q->l2_entries &&
			       entry_kind(q->l2[l1i][l2i + 1]) == seg->kind) {
				l2i++;
				n += cs;
			}
	}
	seg->len = n < len ? n : len;
	return 0;
}

/* ---- the driver ---- */

struct qed_node {
	struct ro_img ro;
	struct qed_img q;
};

static const struct ro_ops qed_ops = {.map = qed_map};

static int qed_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err)
{
	struct qed_node *n = bd_node_priv(node);
	struct ro_src src;
	char msg[256];
	int r;

	memset(&n->q, 0, sizeof(n->q));
	r = ro_init(&n->ro, node, opts, "qed", err);
	if (r < 0)
		goto fail;
	ro_src_file(&n->ro, 0, &src);
	r = qed_parse(&src, &n->q, msg, sizeof(msg));
	if (r < 0) {
		r = bd_err_set(err, r, "%s", msg);
		goto fail;
	}
	n->ro.ops = &qed_ops;
	n->ro.fmt = &n->q;
	n->ro.size = n->q.size;
	r = ro_open_backing(&n->ro, opts, n->q.backing, n->q.backing_raw ? "raw" : NULL, err);
	if (r < 0)
		goto fail;
	ro_limits(&n->ro, limits);
	return 0;
fail:
	qed_free(&n->q);
	ro_free(&n->ro);
	return r;
}

static void qed_close(struct bd_node *node)
{
	struct qed_node *n = bd_node_priv(node);
	qed_free(&n->q);
	ro_free(&n->ro);
}

static void qed_describe(struct bd_node *node, json_t *out)
{
	struct qed_node *n = bd_node_priv(node);
	ro_describe(&n->ro, out);
	json_object_set_new(out, "format-specific",
			    json_pack("{s:s,s:{s:I,s:I,s:b}}", "type", "qed", "data",
				      "cluster-size", (json_int_t)n->q.cluster_size, "table-size",
				      (json_int_t)n->q.table_size, "need-check", n->q.need_check));
}

static const struct bd_opt_desc qed_options[] = {
    {"file", BD_OPT_CHILD, true, NULL, "the node holding the image"},
    {"backing", BD_OPT_CHILD, false, NULL,
     "the backing node (null: none; default: the file named in the image)"},
    {NULL},
};

const struct bd_driver bd_drv_qed = {
    .name = "qed",
    .kind = BD_DRV_FORMAT,
    .help = "QEMU enhanced disk image (read-only)",
    .options = qed_options,
    .node_size = sizeof(struct qed_node),
    .req_size = sizeof(struct ro_req),
    .open = qed_open,
    .close = qed_close,
    .submit = ro_submit,
    .describe = qed_describe,
};
