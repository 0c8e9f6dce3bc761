/*
 * qcow2-create.c - blockdev-create for qcow2 (QEMU's BlockdevCreateOptionsQcow2): lays out a new
 * image on an already opened protocol node.  Control thread; synchronous I/O on the file node
 * (bd_node_io_sync), which may block for a bounded time.
 *
 * Layout: cluster 0 header (+ extensions + backing file name), then the refcount table (sized
 * for the whole virtual disk so that it never has to move for this size), the refcount blocks,
 * the L1 table, and with preallocation the L2 tables and the data clusters.
 */
#include "formats/qcow2-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const version_names[] = {"v2", "v3", NULL};
static const char *const prealloc_names[] = {"off", "metadata", "falloc", "full", NULL};
static const char *const ctype_names[] = {"zlib", "zstd", NULL};
enum { PREALLOC_OFF, PREALLOC_METADATA, PREALLOC_FALLOC, PREALLOC_FULL };

static uint64_t div_up(uint64_t a, uint64_t b)
{
	return (a + b - 1) / b;
}

/* Append a header extension at *off in buf (cluster-size bytes). */
static int put_ext(uint8_t *buf, uint64_t cs, uint64_t *off, uint32_t type, const void *data,
		   uint32_t len)
{
	uint64_t padded = ((uint64_t)len + 7) & ~7ull;

	if (*off + 8 + padded > cs)
		return -ENOSPC;
	q2_put_be32(buf + *off, type);
	q2_put_be32(buf + *off + 4, len);
	memcpy(buf + *off + 8, data, len);
	*off += 8 + padded;
	return 0;
}

static const struct {
	uint8_t type, bit;
	const char *name;
} feature_names[] = {
	{0, 0, "dirty bit"},         {0, 1, "corrupt bit"},      {0, 2, "external data file"},
	{0, 3, "compression type"},  {0, 4, "extended L2 entries"}, {1, 0, "lazy refcounts"},
	{2, 0, "bitmaps"},           {2, 1, "raw external data"},
};

int q2_create(struct bd_node *file, json_t *opts, struct bd_err *err)
{
	if (!file)
		return bd_err_set(err, -EINVAL, "Parameter 'file' is missing");
	return q2_create_on(file, opts, err);
}

/* The create op proper, on a resolved file node ("file" in opts is marked used and ignored).
 * Any thread that is not an I/O loop (blockdev-create runs it on a worker thread). */
int q2_create_on(struct bd_node *file, json_t *opts, struct bd_err *err)
{
	const char *file_name = bd_node_name(file), *backing = NULL, *backing_fmt = NULL;
	uint64_t size = 0, cs = 65536, refbits = 16;
	int version = 1, prealloc = PREALLOC_OFF, ctype = 0;
	bool lazy = false, extl2 = false, b;
	json_t *j;
	int r;

	bd_opts_mark_used(opts, "file");
	r = bd_opts_size(opts, "size", &size, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'size' is missing");
	if (r < 0)
		return r;
	if ((r = bd_opts_enum(opts, "version", version_names, &version, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_size(opts, "cluster-size", &cs, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "lazy-refcounts", &lazy, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_enum(opts, "preallocation", prealloc_names, &prealloc, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_str(opts, "backing-file", &backing, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_str(opts, "backing-fmt", &backing_fmt, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "extended-l2", &extl2, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_enum(opts, "compression-type", ctype_names, &ctype, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_u64(opts, "refcount-bits", &refbits, err)) < 0 && r != -ENOENT)
		return r;
	if ((j = json_object_get(opts, "encrypt")) != NULL)
		return bd_err_set(err, -ENOTSUP, "Encrypted qcow2 images are not supported");
	if ((j = json_object_get(opts, "data-file")) != NULL)
		return bd_err_set(err, -ENOTSUP, "External data files are not supported");
	if ((r = bd_opts_bool(opts, "data-file-raw", &b, err)) == 0 && b)
		return bd_err_set(err, -EINVAL, "data-file-raw requires data-file");
	if (r < 0 && r != -ENOENT)
		return r;
	if (bd_opts_check_unused(opts, NULL, err) < 0)
		return err->code;

	/* Validation, with QEMU's messages where it has them. */
	if (cs < 512 || cs > (2u << 20) || (cs & (cs - 1)))
		return bd_err_set(err, -EINVAL,
				  "Cluster size must be a power of two between 512 and 2048k");
	if (size % 512)
		return bd_err_set(err, -EINVAL, "Image size must be a multiple of 512 bytes");
	if (refbits == 0 || refbits > 64 || (refbits & (refbits - 1)))
		return bd_err_set(err, -EINVAL,
				  "Refcount width must be a power of two and may not exceed 64 bits");
	if (version == 0 && refbits != 16)
		return bd_err_set(err, -EINVAL,
				  "Different refcount widths than 16 bits require compatibility "
				  "level 1.1 or above (use version=v3 or greater)");
	if (version == 0 && lazy)
		return bd_err_set(err, -EINVAL,
				  "Lazy refcounts only supported with compatibility level 1.1 and "
				  "above (use version=v3 or greater)");
	if (version == 0 && ctype != 0)
		return bd_err_set(err, -EINVAL,
				  "Non-zlib compression type is only supported with compatibility "
				  "level 1.1 and above (use version=v3 or greater)");
#ifndef HAVE_ZSTD
	if (ctype == Q2_COMP_ZSTD)
		return bd_err_set(err, -ENOTSUP, "zstd compression is not built in");
#endif
	if (extl2 && version == 0)
		return bd_err_set(err, -EINVAL,
				  "Extended L2 entries are only supported with compatibility level "
				  "1.1 and above (use version=v3 or greater)");
	if (extl2 && cs < (1u << Q2_EXTL2_MIN_CLUSTER_BITS))
		return bd_err_set(err, -EINVAL, "Extended L2 entries are only supported with "
						"cluster sizes of at least 16384 bytes");
	if (backing_fmt && !backing)
		return bd_err_set(err, -EINVAL,
				  "Backing format cannot be used without backing file");
	if (backing && prealloc != PREALLOC_OFF && !extl2)
		return bd_err_set(err, -EINVAL,
				  "Backing file and preallocation can only be used at the same time "
				  "if extended_l2 is on");
	if (backing && strlen(backing) > Q2_MAX_BACKING_NAME)
		return bd_err_set(err, -EINVAL, "Backing file name too long");
	if (backing_fmt && strlen(backing_fmt) > 63)
		return bd_err_set(err, -EINVAL, "Backing format name too long");

	if (bd_node_read_only(file))
		return bd_err_set(err, -EPERM, "Node '%s' is read-only", file_name);

	uint32_t cb = (uint32_t)__builtin_ctzll(cs);
	uint32_t order = (uint32_t)__builtin_ctzll(refbits);
	uint64_t epb = q2_rb_entries(cb, order);
	uint64_t l1_size = q2_l1_needed_ext(size, cb, extl2);
	uint64_t l2e = extl2 ? 16 : 8; /* bytes per L2 entry: + the subcluster bitmap */
	if (l1_size * 8 > Q2_MAX_L1_BYTES)
		return bd_err_set(err, -EFBIG, "Image size too big for the cluster size");
	uint64_t l1c = div_up(l1_size * 8, cs);
	if (l1c == 0)
		l1c = 1;
	uint64_t nl2 = prealloc != PREALLOC_OFF ? l1_size : 0;
	uint64_t nd = prealloc != PREALLOC_OFF ? div_up(size, cs) : 0;

	/* The refcount table covers the worst case for this virtual size. */
	uint64_t worst = 1 + l1c + l1_size + div_up(size, cs) + 64;
	uint64_t T = 1, R = 1;
	for (int it = 0; it < 64; it++) {
		uint64_t total = 1 + T + R + l1c + nl2 + nd;
		uint64_t nr = div_up(total, epb);
		uint64_t nt = div_up(div_up(worst + T + nr, epb) * 8, cs);
		if (nt == 0)
			nt = 1;
		if (nr == R && nt == T)
			break;
		R = nr > R ? nr : R;
		T = nt > T ? nt : T;
	}
	if ((T * cs) > Q2_MAX_REFTABLE_BYTES)
		return bd_err_set(err, -EFBIG, "Image too big for its cluster size (refcount table "
					       "larger than 8 MiB)");
	uint64_t c_reft = 1, c_rb = c_reft + T, c_l1 = c_rb + R, c_l2 = c_l1 + l1c,
		 c_data = c_l2 + nl2, c_end = c_data + nd;
	if (R * epb < c_end)
		return bd_err_set(err, -EIO, "internal error: refcount layout");

	/* The header cluster. */
	uint8_t *hdr = calloc(1, cs);
	uint8_t *buf = NULL;
	if (!hdr)
		return bd_err_set(err, -ENOMEM, "out of memory");
	struct q2_header h = {0};
	h.version = version == 0 ? 2 : 3;
	h.cluster_bits = cb;
	h.size = size;
	h.l1_size = (uint32_t)l1_size;
	h.l1_table_offset = c_l1 * cs;
	h.refcount_table_offset = c_reft * cs;
	h.refcount_table_clusters = (uint32_t)T;
	h.refcount_order = order;
	h.header_length = h.version == 2 ? Q2_V2_HEADER_LEN : Q2_HEADER_LEN_WITH_CTYPE;
	h.compatible = lazy ? Q2_COMPAT_LAZY_REFCOUNTS : 0;
	h.compression_type = (uint8_t)ctype;
	h.incompatible = (ctype ? Q2_INCOMPAT_COMPRESSION : 0) | (extl2 ? Q2_INCOMPAT_EXTL2 : 0);
	uint64_t off = h.header_length;
	r = 0;
	if (backing_fmt)
		r = put_ext(hdr, cs, &off, Q2_EXT_BACKING_FMT, backing_fmt,
			    (uint32_t)strlen(backing_fmt));
	if (r == 0 && h.version >= 3 && cs >= 4096) {
		uint8_t ft[sizeof(feature_names) / sizeof(feature_names[0]) * 48];
		memset(ft, 0, sizeof(ft));
		for (size_t i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++) {
			ft[48 * i] = feature_names[i].type;
			ft[48 * i + 1] = feature_names[i].bit;
			memcpy(ft + 48 * i + 2, feature_names[i].name, strlen(feature_names[i].name));
		}
		r = put_ext(hdr, cs, &off, Q2_EXT_FEATURE_TABLE, ft, (uint32_t)sizeof(ft));
	}
	if (r == 0) {
		if (off + 8 > cs)
			r = -ENOSPC;
		else
			off += 8; /* end marker: zeroes */
	}
	if (r == 0 && backing) {
		size_t bl = strlen(backing);
		if (off + bl > cs) {
			r = -ENOSPC;
		} else {
			memcpy(hdr + off, backing, bl);
			h.backing_file_offset = off;
			h.backing_file_size = (uint32_t)bl;
		}
	}
	if (r < 0) {
		free(hdr);
		return bd_err_set(err, -EINVAL, "The header extensions and backing file name do "
						"not fit in one cluster");
	}
	q2_header_write_fixed(&h, hdr);

	/* Start from an empty file of the right length (sparse). */
	if (bd_node_limits(file)->can_resize) {
		r = bd_node_resize(file, 0, err);
		if (r == 0)
			r = bd_node_resize(file, c_end * cs, err);
		if (r < 0)
			goto out;
	} else if (bd_node_size(file) < c_end * cs) {
		r = bd_err_set(err, -ENOSPC, "The device is too small for the image");
		goto out;
	}

	/* Metadata buffers: refcount table, refcount blocks, L1, L2 tables. */
	uint64_t meta_c = c_data; /* clusters 0 .. c_data are metadata */
	buf = calloc(meta_c - 1, cs);
	if (!buf) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto out;
	}
	uint8_t *reft = buf, *rbs = buf + T * cs, *l1 = rbs + R * cs, *l2 = l1 + l1c * cs;
	for (uint64_t i = 0; i < R; i++)
		q2_put_be64(reft + 8 * i, (c_rb + i) * cs);
	for (uint64_t c = 0; c < c_end; c++)
		q2_refcount_set(rbs + (c / epb) * cs, order, c % epb, 1);
	for (uint64_t i = 0; i < nl2; i++)
		q2_put_be64(l1 + 8 * i, ((c_l2 + i) * cs) | Q2_OFLAG_COPIED);
	/* Preallocated data clusters; with extended L2 their subcluster bitmaps stay 0
	 * ("unallocated": reads come from the backing file or are zeroes, as QEMU does). */
	for (uint64_t d = 0; d < nd; d++)
		q2_put_be64(l2 + l2e * d, ((c_data + d) * cs) | Q2_OFLAG_COPIED);

	if ((r = q2_sync_write(file, cs, buf, (meta_c - 1) * cs)) < 0 ||
	    (r = q2_sync_write(file, 0, hdr, cs)) < 0) {
		bd_err_set(err, r, "Could not write the image metadata: %s", strerror(-r));
		goto out;
	}
	if (prealloc == PREALLOC_FALLOC || prealloc == PREALLOC_FULL) {
		/* Data clusters: allocated on the file system (falloc), or written (full). */
		uint64_t chunk = 1u << 20, start = c_data * cs, end = c_end * cs;
		for (uint64_t p = start; p < end && r == 0; p += chunk) {
			uint64_t l = end - p < chunk ? end - p : chunk;
			if (prealloc == PREALLOC_FULL)
				r = bd_node_io_sync(file, BD_OP_WRITE, p, l, q2_zero_buf(), 0);
			else
				r = bd_node_io_sync(file, BD_OP_WRITE_ZEROES, p, l, NULL, 0);
		}
		if (r < 0) {
			bd_err_set(err, r, "Could not preallocate data: %s", strerror(-r));
			goto out;
		}
	}
	r = q2_sync_flush(file);
	if (r < 0)
		bd_err_set(err, r, "flush failed: %s", strerror(-r));
out:
	free(hdr);
	free(buf);
	return r;
}
