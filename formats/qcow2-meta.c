/*
 * qcow2-meta.c - pure functions over qcow2 metadata buffers: header and extension parsing and
 * validation, entry decoding, refcount arithmetic, overlap checks, snapshot table validation,
 * (de)compression of one cluster.  No I/O, no global state: [any thread].  Fed hostile input by
 * tests/fuzz/fuzz-qcow2.c, so every length and offset is checked before use.
 */
#include "formats/qcow2-config.h"
#include "formats/qcow2.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <zlib.h>
#ifdef HAVE_ZSTD
#include <zstd.h>
#endif

__attribute__((format(printf, 4, 5))) static int fail(char *msg, size_t msglen, int code,
						       const char *fmt, ...)
{
	va_list ap;

	if (msg && msglen) {
		va_start(ap, fmt);
		vsnprintf(msg, msglen, fmt, ap);
		va_end(ap);
	}
	return code;
}

uint64_t q2_l1_needed(uint64_t size, uint32_t cluster_bits)
{
	return q2_l1_needed_ext(size, cluster_bits, false);
}

uint64_t q2_l1_needed_ext(uint64_t size, uint32_t cluster_bits, bool extl2)
{
	uint32_t shift = cluster_bits + cluster_bits - (extl2 ? 4 : 3); /* bytes one table maps */

	if (shift >= 64)
		return size ? 1 : 0;
	return (size >> shift) + ((size & ((1ull << shift) - 1)) ? 1 : 0);
}

static bool range_ok(uint64_t off, uint64_t len, uint64_t limit)
{
	return off <= limit && len <= limit - off;
}

static void add_feature_name(struct q2_header *h, const char *name)
{
	size_t n = strlen(h->unknown_features);

	if (n + strlen(name) + 3 >= sizeof(h->unknown_features))
		return;
	if (n)
		strcat(h->unknown_features, ", ");
	strcat(h->unknown_features, name);
}

static int parse_extensions(const uint8_t *buf, size_t len, struct q2_header *h, char *msg,
			    size_t msglen, const uint8_t **ftable, size_t *ftable_len)
{
	uint64_t cs = 1ull << h->cluster_bits;
	uint64_t off = h->version == 2 ? Q2_V2_HEADER_LEN : h->header_length;
	uint64_t end = h->backing_file_offset ? h->backing_file_offset : cs;
	uint32_t seen_bfmt = 0, seen_ft = 0, seen_bm = 0;

	if (end > cs)
		end = cs;
	if (end > len)
		end = len;
	while (off + 8 <= end) {
		uint32_t type = q2_be32(buf + off);
		uint32_t elen = q2_be32(buf + off + 4);
		const uint8_t *d = buf + off + 8;

		off += 8;
		if (type == Q2_EXT_END) {
			h->ext_end = off;
			return 0;
		}
		if (elen > end - off)
			return fail(msg, msglen, -EINVAL,
				    "Invalid header extension 0x%08" PRIx32 " (length %" PRIu32
				    " past the extension area)",
				    type, elen);
		switch (type) {
		case Q2_EXT_BACKING_FMT:
			if (seen_bfmt++ || elen >= sizeof(h->backing_fmt))
				return fail(msg, msglen, -EINVAL,
					    "Invalid backing file format header extension");
			memcpy(h->backing_fmt, d, elen);
			h->backing_fmt[elen] = 0;
			if (strlen(h->backing_fmt) != elen)
				return fail(msg, msglen, -EINVAL,
					    "Invalid backing file format header extension");
			h->has_backing_fmt = true;
			break;
		case Q2_EXT_FEATURE_TABLE:
			if (seen_ft++)
				return fail(msg, msglen, -EINVAL, "Duplicate feature name table");
			h->has_feature_table = true;
			*ftable = d;
			*ftable_len = elen;
			break;
		case Q2_EXT_BITMAPS:
			if (seen_bm++ || elen != 24)
				return fail(msg, msglen, -EINVAL, "Invalid bitmaps extension");
			h->has_bitmaps = true;
			h->nb_bitmaps = q2_be32(d);
			h->bitmap_dir_size = q2_be64(d + 8);
			h->bitmap_dir_offset = q2_be64(d + 16);
			break;
		case Q2_EXT_DATA_FILE:
			h->has_data_file_ext = true;
			break;
		default:
			break; /* unknown or crypto: ignored here, kept intact on disk */
		}
		uint64_t padded = ((uint64_t)elen + 7) & ~7ull;
		off += padded > end - off ? end - off : padded;
	}
	h->ext_end = off;
	return 0;
}

int q2_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, struct q2_header *h,
		    char *msg, size_t msglen)
{
	const uint8_t *ftable = NULL;
	size_t ftable_len = 0;
	uint64_t cs;
	int r;

	memset(h, 0, sizeof(*h));
	if (msg && msglen)
		msg[0] = 0;
	if (len < Q2_V2_HEADER_LEN || q2_be32(buf) != Q2_MAGIC)
		return fail(msg, msglen, -EINVAL, "Image is not in qcow2 format");
	h->version = q2_be32(buf + 4);
	if (h->version != 2 && h->version != 3)
		return fail(msg, msglen, -ENOTSUP, "Unsupported qcow2 version %" PRIu32,
			    h->version);
	h->backing_file_offset = q2_be64(buf + 8);
	h->backing_file_size = q2_be32(buf + 16);
	h->cluster_bits = q2_be32(buf + 20);
	h->size = q2_be64(buf + 24);
	h->crypt_method = q2_be32(buf + 32);
	h->l1_size = q2_be32(buf + 36);
	h->l1_table_offset = q2_be64(buf + 40);
	h->refcount_table_offset = q2_be64(buf + 48);
	h->refcount_table_clusters = q2_be32(buf + 56);
	h->nb_snapshots = q2_be32(buf + 60);
	h->snapshots_offset = q2_be64(buf + 64);

	if (h->cluster_bits < Q2_MIN_CLUSTER_BITS || h->cluster_bits > Q2_MAX_CLUSTER_BITS)
		return fail(msg, msglen, -EINVAL, "Unsupported cluster size: 2^%" PRIu32,
			    h->cluster_bits);
	cs = 1ull << h->cluster_bits;

	if (h->version == 2) {
		h->refcount_order = 4;
		h->header_length = Q2_V2_HEADER_LEN;
	} else {
		if (len < Q2_V3_HEADER_LEN)
			return fail(msg, msglen, -EINVAL, "qcow2 header truncated");
		h->incompatible = q2_be64(buf + 72);
		h->compatible = q2_be64(buf + 80);
		h->autoclear = q2_be64(buf + 88);
		h->refcount_order = q2_be32(buf + 96);
		h->header_length = q2_be32(buf + 100);
		if (h->header_length < Q2_V3_HEADER_LEN || h->header_length % 8 ||
		    h->header_length > cs)
			return fail(msg, msglen, -EINVAL, "Invalid header length %" PRIu32,
				    h->header_length);
		if (h->header_length > len)
			return fail(msg, msglen, -EINVAL, "qcow2 header truncated");
		if (h->header_length > 104)
			h->compression_type = buf[104];
		if (h->refcount_order > 6)
			return fail(msg, msglen, -EINVAL,
				    "Reference count entry width too large; may not exceed 64 bits");
	}

	/* Backing file name: inside the first cluster. */
	if (h->backing_file_offset) {
		if (h->backing_file_size > Q2_MAX_BACKING_NAME || h->backing_file_size == 0 ||
		    !range_ok(h->backing_file_offset, h->backing_file_size, cs) ||
		    h->backing_file_offset + h->backing_file_size > len ||
		    h->backing_file_offset < h->header_length)
			return fail(msg, msglen, -EINVAL, "Invalid backing file offset or size");
		memcpy(h->backing_file, buf + h->backing_file_offset, h->backing_file_size);
		h->backing_file[h->backing_file_size] = 0;
		if (strlen(h->backing_file) != h->backing_file_size)
			return fail(msg, msglen, -EINVAL, "Invalid backing file name (NUL byte)");
	}

	r = parse_extensions(buf, len, h, msg, msglen, &ftable, &ftable_len);
	if (r < 0)
		return r;

	/* Incompatible features we do not know: refuse, naming them like QEMU does. */
	uint64_t unknown = h->incompatible & ~Q2_INCOMPAT_KNOWN;
	if (unknown) {
		for (size_t i = 0; ftable && i + 48 <= ftable_len; i += 48) {
			char name[47];
			if (ftable[i] != 0 || ftable[i + 1] > 63 ||
			    !(unknown & (1ull << ftable[i + 1])))
				continue;
			memcpy(name, ftable + i + 2, 46);
			name[46] = 0;
			for (char *p = name; *p; p++)
				if (*p < 0x20 || *p > 0x7e)
					*p = '?';
			add_feature_name(h, name);
			unknown &= ~(1ull << ftable[i + 1]);
		}
		if (unknown) {
			char t[64];
			snprintf(t, sizeof(t), "Unknown incompatible feature: %" PRIx64, unknown);
			add_feature_name(h, t);
		}
		return fail(msg, msglen, -ENOTSUP, "Unsupported qcow2 feature(s): %s",
			    h->unknown_features);
	}
	if (h->incompatible & Q2_INCOMPAT_DATA_FILE)
		return fail(msg, msglen, -ENOTSUP,
			    "Unsupported qcow2 feature(s): external data file");
	if (h->incompatible & Q2_INCOMPAT_EXTL2) {
		if (h->cluster_bits < Q2_EXTL2_MIN_CLUSTER_BITS)
			return fail(msg, msglen, -EINVAL,
				    "Extended L2 entries need clusters of at least 16 KiB");
		h->extl2 = true;
	}
	if (h->crypt_method != 0)
		return fail(msg, msglen, -ENOTSUP,
			    "Unsupported qcow2 feature(s): encryption (crypt_method %" PRIu32 ")",
			    h->crypt_method);
	if (!!(h->incompatible & Q2_INCOMPAT_COMPRESSION) != (h->compression_type != 0))
		return fail(msg, msglen, -EINVAL,
			    "Compression type bit and compression_type field disagree");
	if (h->compression_type > Q2_COMP_ZSTD)
		return fail(msg, msglen, -ENOTSUP, "Unknown compression type %u",
			    h->compression_type);

	/* Size and L1. */
	if (h->size > (1ull << 62))
		return fail(msg, msglen, -EINVAL, "Image size too large");
	if ((uint64_t)h->l1_size * 8 > Q2_MAX_L1_BYTES)
		return fail(msg, msglen, -EINVAL, "Active L1 table too large");
	if (h->l1_size < q2_l1_needed_ext(h->size, h->cluster_bits, h->extl2))
		return fail(msg, msglen, -EINVAL, "L1 table is too small");
	if (h->l1_size) {
		if (h->l1_table_offset & (cs - 1) || h->l1_table_offset == 0)
			return fail(msg, msglen, -EINVAL, "Invalid L1 table offset");
		if (!range_ok(h->l1_table_offset, (uint64_t)h->l1_size * 8, file_size))
			return fail(msg, msglen, -EINVAL,
				    "L1 table (offset 0x%" PRIx64 ") lies past the end of the file",
				    h->l1_table_offset);
	}

	/* Refcount table. */
	if (h->refcount_table_clusters == 0 ||
	    (uint64_t)h->refcount_table_clusters << h->cluster_bits > Q2_MAX_REFTABLE_BYTES)
		return fail(msg, msglen, -EINVAL, "Reference count table too large or empty");
	if (h->refcount_table_offset & (cs - 1) || h->refcount_table_offset == 0)
		return fail(msg, msglen, -EINVAL, "Invalid reference count table offset");
	if (!range_ok(h->refcount_table_offset, (uint64_t)h->refcount_table_clusters << h->cluster_bits,
		      file_size))
		return fail(msg, msglen, -EINVAL,
			    "Reference count table lies past the end of the file");

	/* Snapshot table. */
	if (h->nb_snapshots > Q2_MAX_SNAPSHOTS)
		return fail(msg, msglen, -EINVAL, "Too many snapshots");
	if (h->nb_snapshots) {
		if (h->snapshots_offset & (cs - 1) || h->snapshots_offset == 0 ||
		    h->snapshots_offset >= file_size)
			return fail(msg, msglen, -EINVAL, "Invalid snapshot table offset");
	}

	/* Bitmaps: only meaningful with the autoclear bit. */
	if (h->has_bitmaps) {
		if (h->nb_bitmaps == 0 || h->nb_bitmaps > 65535 || h->bitmap_dir_size == 0 ||
		    h->bitmap_dir_size > (64u << 20) || h->bitmap_dir_offset & (cs - 1) ||
		    !range_ok(h->bitmap_dir_offset, h->bitmap_dir_size, file_size))
			return fail(msg, msglen, -EINVAL, "Invalid bitmaps extension");
	}
	return 0;
}

void q2_header_write_fixed(const struct q2_header *h, uint8_t *buf)
{
	q2_put_be32(buf, Q2_MAGIC);
	q2_put_be32(buf + 4, h->version);
	q2_put_be64(buf + 8, h->backing_file_offset);
	q2_put_be32(buf + 16, h->backing_file_size);
	q2_put_be32(buf + 20, h->cluster_bits);
	q2_put_be64(buf + 24, h->size);
	q2_put_be32(buf + 32, h->crypt_method);
	q2_put_be32(buf + 36, h->l1_size);
	q2_put_be64(buf + 40, h->l1_table_offset);
	q2_put_be64(buf + 48, h->refcount_table_offset);
	q2_put_be32(buf + 56, h->refcount_table_clusters);
	q2_put_be32(buf + 60, h->nb_snapshots);
	q2_put_be64(buf + 64, h->snapshots_offset);
	if (h->version == 2)
		return;
	q2_put_be64(buf + 72, h->incompatible);
	q2_put_be64(buf + 80, h->compatible);
	q2_put_be64(buf + 88, h->autoclear);
	q2_put_be32(buf + 96, h->refcount_order);
	q2_put_be32(buf + 100, h->header_length);
	if (h->header_length > 104) {
		buf[104] = h->compression_type;
		memset(buf + 105, 0, 7);
	}
}

int q2_l2e_decode(uint64_t entry, uint32_t cluster_bits, struct q2_l2e *e)
{
	memset(e, 0, sizeof(*e));
	if (entry & Q2_OFLAG_COMPRESSED) {
		uint32_t x = 62 - (cluster_bits - 8);
		uint64_t off = entry & ((1ull << x) - 1);
		uint64_t nsect = (entry & ((1ull << 62) - 1)) >> x;

		if (entry & Q2_OFLAG_COPIED)
			return -EINVAL; /* compressed clusters are never "copied" */
		e->type = Q2_C_COMPRESSED;
		e->host = off;
		/* The data runs from off to the end of sector (off/512 + nsect). */
		e->csize = (nsect + 1) * 512 - (off & 511);
		if (off == 0)
			return -EINVAL;
		return 0;
	}
	if (entry & Q2_L2_RESERVED)
		return -EINVAL;
	e->host = entry & Q2_OFFSET_MASK;
	e->copied = !!(entry & Q2_OFLAG_COPIED);
	if (e->host & ((1ull << cluster_bits) - 1))
		return -EINVAL;
	if (entry & Q2_OFLAG_ZERO) {
		e->type = e->host ? Q2_C_ZERO_ALLOC : Q2_C_ZERO_PLAIN;
		return 0;
	}
	if (e->host == 0) {
		/* Unallocated; a COPIED flag without an offset is meaningless but harmless. */
		e->type = Q2_C_UNALLOC;
		e->copied = false;
		return 0;
	}
	e->type = Q2_C_NORMAL;
	return 0;
}

int q2_l2e_decode_ext(uint64_t entry, uint32_t cluster_bits, struct q2_l2e *e)
{
	if ((entry & Q2_OFLAG_ZERO) && !(entry & Q2_OFLAG_COMPRESSED))
		return -EINVAL; /* reserved with extended L2 entries (a compressed cluster's offset
				 * may be odd) */
	int r = q2_l2e_decode(entry, cluster_bits, e);
	if (r == 0 && e->type == Q2_C_UNALLOC && (entry & Q2_OFLAG_COPIED))
		e->copied = true;
	return r;
}

int q2_subcluster(const struct q2_l2e *e, uint64_t bitmap, unsigned sc, uint32_t cluster_bits,
		  enum q2_ctype *type, uint64_t *host)
{
	bool alloc = (bitmap >> sc) & 1, zero = (bitmap >> (32 + sc)) & 1;

	*host = 0;
	if (e->type == Q2_C_COMPRESSED) {
		*type = Q2_C_COMPRESSED; /* the bitmap is ignored (must be zero) */
		*host = e->host;
		return 0;
	}
	if (alloc && zero)
		return -EINVAL;
	if (alloc) {
		if (e->type != Q2_C_NORMAL)
			return -EINVAL; /* allocated subcluster without a host cluster */
		*type = Q2_C_NORMAL;
		*host = e->host + ((uint64_t)sc << (cluster_bits - 5));
		return 0;
	}
	*type = zero ? Q2_C_ZERO_PLAIN : Q2_C_UNALLOC;
	return 0;
}

int q2_l1e_check(uint64_t entry, uint32_t cluster_bits, uint64_t file_size, uint64_t *l2_off)
{
	uint64_t off = entry & Q2_OFFSET_MASK;

	*l2_off = off;
	if (entry & Q2_L1_RESERVED)
		return -EINVAL;
	if (off == 0)
		return 0;
	if (off & ((1ull << cluster_bits) - 1))
		return -EINVAL;
	if (!range_ok(off, 1ull << cluster_bits, file_size))
		return -EINVAL;
	return 0;
}

int q2_reftable_check(uint64_t entry, uint32_t cluster_bits, uint64_t file_size,
		      uint64_t *rb_off)
{
	uint64_t off = entry & ~Q2_REFT_RESERVED;

	*rb_off = off;
	if (entry & Q2_REFT_RESERVED)
		return -EINVAL;
	if (off == 0)
		return 0;
	if (off & ((1ull << cluster_bits) - 1))
		return -EINVAL;
	if (!range_ok(off, 1ull << cluster_bits, file_size))
		return -EINVAL;
	return 0;
}

uint64_t q2_refcount_max(uint32_t order)
{
	return order >= 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
}

uint64_t q2_refcount_get(const uint8_t *block, uint32_t order, uint64_t idx)
{
	switch (order) {
	case 0:
		return (block[idx / 8] >> (idx % 8)) & 1;
	case 1:
		return (block[idx / 4] >> (2 * (idx % 4))) & 3;
	case 2:
		return (block[idx / 2] >> (4 * (idx % 2))) & 15;
	case 3:
		return block[idx];
	case 4:
		return q2_be16(block + 2 * idx);
	case 5:
		return q2_be32(block + 4 * idx);
	default:
		return q2_be64(block + 8 * idx);
	}
}

int q2_refcount_set(uint8_t *block, uint32_t order, uint64_t idx, uint64_t v)
{
	if (v > q2_refcount_max(order))
		return -ERANGE;
	switch (order) {
	case 0:
	case 1:
	case 2: {
		unsigned bits = 1u << order;
		unsigned per = 8 / bits;
		unsigned shift = bits * (unsigned)(idx % per);
		uint8_t mask = (uint8_t)(((1u << bits) - 1) << shift);
		block[idx / per] = (uint8_t)((block[idx / per] & ~mask) | ((unsigned)v << shift));
		return 0;
	}
	case 3:
		block[idx] = (uint8_t)v;
		return 0;
	case 4:
		q2_put_be16(block + 2 * idx, (uint16_t)v);
		return 0;
	case 5:
		q2_put_be32(block + 4 * idx, (uint32_t)v);
		return 0;
	default:
		q2_put_be64(block + 8 * idx, v);
		return 0;
	}
}

int q2_overlaps(const struct q2_region *r, unsigned n, uint64_t off, uint64_t len)
{
	for (unsigned i = 0; i < n; i++) {
		if (r[i].len == 0)
			continue;
		if (off < r[i].start + r[i].len && r[i].start < off + len)
			return (int)i;
	}
	return -1;
}

static void copy_str(char *dst, size_t cap, const uint8_t *src, size_t n)
{
	if (n >= cap)
		n = cap - 1;
	for (size_t i = 0; i < n; i++)
		dst[i] = (src[i] >= 0x20 && src[i] < 0x7f) ? (char)src[i] : '?';
	dst[n] = 0;
}

int q2_snapshots_parse(const uint8_t *buf, size_t len, uint32_t nb, uint32_t cluster_bits,
		       uint64_t file_size, uint64_t *table_bytes,
		       void (*cb)(void *opaque, const struct q2_snapinfo *sn), void *opaque,
		       char *msg, size_t msglen)
{
	size_t off = 0;
	uint64_t cs = 1ull << cluster_bits;

	for (uint32_t i = 0; i < nb; i++) {
		if (len - off < 40)
			return fail(msg, msglen, -ENODATA, "Snapshot table truncated");
		const uint8_t *p = buf + off;
		struct q2_snapinfo sn;
		uint16_t id_len = q2_be16(p + 12);
		uint16_t name_len = q2_be16(p + 14);
		uint32_t extra = q2_be32(p + 36);
		uint64_t ent = 40 + (uint64_t)extra + id_len + name_len;

		memset(&sn, 0, sizeof(sn));
		sn.l1_off = q2_be64(p);
		sn.l1_size = q2_be32(p + 8);
		sn.date_sec = q2_be32(p + 16);
		sn.date_nsec = q2_be32(p + 20);
		sn.vm_clock_nsec = q2_be64(p + 24);
		sn.vm_state_size = q2_be32(p + 32);
		if (extra > 1024)
			return fail(msg, msglen, -EINVAL, "Snapshot table entry %" PRIu32 " invalid",
				    i);
		/* the padding of the last entry may be missing at the end of the file (QEMU
		 * writes the table unpadded) */
		if (ent > len - off)
			return fail(msg, msglen, -ENODATA, "Snapshot table truncated");
		if (extra >= 16)
			sn.disk_size = q2_be64(p + 40 + 8);
		copy_str(sn.id, sizeof(sn.id), p + 40 + extra, id_len);
		copy_str(sn.name, sizeof(sn.name), p + 40 + extra + id_len, name_len);
		ent = (ent + 7) & ~7ull;
		if (ent > len - off)
			ent = len - off;
		if ((uint64_t)sn.l1_size * 8 > Q2_MAX_L1_BYTES ||
		    (sn.l1_size && (sn.l1_off & (cs - 1) ||
				    !range_ok(sn.l1_off, (uint64_t)sn.l1_size * 8, file_size))))
			return fail(msg, msglen, -EINVAL,
				    "Snapshot %" PRIu32 " has an invalid L1 table", i);
		if (sn.disk_size > (1ull << 62) ||
		    (sn.disk_size && q2_l1_needed(sn.disk_size, cluster_bits) > sn.l1_size))
			return fail(msg, msglen, -EINVAL,
				    "Snapshot %" PRIu32 " has an invalid disk size", i);
		if (cb)
			cb(opaque, &sn);
		off += ent;
	}
	*table_bytes = off;
	return 0;
}

int q2_bitmap_dir_parse(const uint8_t *buf, size_t len, uint32_t nb, uint32_t cluster_bits,
			uint64_t file_size,
			void (*cb)(void *opaque, const struct q2_bitmap *bm), void *opaque,
			char *msg, size_t msglen)
{
	uint64_t cs = 1ull << cluster_bits, off = 0;

	for (uint32_t i = 0; i < nb; i++) {
		struct q2_bitmap bm;
		if (len - off < 24)
			return fail(msg, msglen, -EINVAL, "Bitmap directory truncated");
		const uint8_t *p = buf + off;
		uint16_t name_size = q2_be16(p + 18);
		uint32_t extra = q2_be32(p + 20);
		uint64_t ent = 24 + (uint64_t)extra + name_size;

		memset(&bm, 0, sizeof(bm));
		bm.table_off = q2_be64(p);
		bm.table_size = q2_be32(p + 8);
		bm.flags = q2_be32(p + 12);
		bm.type = p[16];
		bm.granularity_bits = p[17];
		bm.entry_off = off;
		if (name_size == 0 || name_size > 1023 || extra > (1u << 16) || ent > len - off)
			return fail(msg, msglen, -EINVAL, "Bitmap directory entry %" PRIu32 " invalid",
				    i);
		if (bm.flags & ~7u || bm.granularity_bits > 63)
			return fail(msg, msglen, -EINVAL, "Bitmap %" PRIu32 " has reserved flags or "
							  "granularity", i);
		if ((uint64_t)bm.table_size * 8 > Q2_MAX_L1_BYTES ||
		    (bm.table_size && (bm.table_off & (cs - 1) ||
				       !range_ok(bm.table_off, (uint64_t)bm.table_size * 8,
						 file_size))))
			return fail(msg, msglen, -EINVAL, "Bitmap %" PRIu32 " has an invalid table",
				    i);
		copy_str(bm.name, sizeof(bm.name), p + 24 + extra, name_size);
		if (cb)
			cb(opaque, &bm);
		ent = (ent + 7) & ~7ull;
		off += ent > len - off ? len - off : ent;
	}
	return 0;
}

int q2_decompress(enum q2_compression type, const void *src, size_t srclen, void *dst,
		  size_t dstlen)
{
	if (type == Q2_COMP_ZLIB) {
		z_stream s;
		int r;

		memset(&s, 0, sizeof(s));
		if (inflateInit2(&s, -12) != Z_OK)
			return -ENOMEM;
		s.next_in = (Bytef *)(uintptr_t)src;
		s.avail_in = (uInt)srclen;
		s.next_out = dst;
		s.avail_out = (uInt)dstlen;
		r = inflate(&s, Z_FINISH);
		inflateEnd(&s);
		if ((r == Z_STREAM_END || r == Z_BUF_ERROR) && s.avail_out == 0)
			return 0;
		return -EIO;
	}
#ifdef HAVE_ZSTD
	if (type == Q2_COMP_ZSTD) {
		ZSTD_DCtx *dctx = ZSTD_createDCtx();
		ZSTD_inBuffer in = {src, srclen, 0};
		ZSTD_outBuffer out = {dst, dstlen, 0};
		int ret = -EIO;

		if (!dctx)
			return -ENOMEM;
		while (out.pos < out.size) {
			size_t last_in = in.pos, last_out = out.pos;
			size_t z = ZSTD_decompressStream(dctx, &out, &in);
			if (ZSTD_isError(z))
				break;
			if (out.pos == out.size) {
				ret = 0;
				break;
			}
			if (z == 0 || (in.pos == last_in && out.pos == last_out))
				break; /* frame ended short, or no progress */
		}
		ZSTD_freeDCtx(dctx);
		return ret;
	}
#endif
	return -ENOTSUP;
}

long q2_compress(enum q2_compression type, const void *src, size_t srclen, void *dst,
		 size_t dstcap)
{
	if (type == Q2_COMP_ZLIB) {
		z_stream s;
		int r;

		memset(&s, 0, sizeof(s));
		if (deflateInit2(&s, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
				 Z_DEFAULT_STRATEGY) != Z_OK)
			return -ENOMEM;
		s.next_in = (Bytef *)(uintptr_t)src;
		s.avail_in = (uInt)srclen;
		s.next_out = dst;
		s.avail_out = (uInt)dstcap;
		r = deflate(&s, Z_FINISH);
		deflateEnd(&s);
		if (r != Z_STREAM_END)
			return -ENOSPC;
		return (long)(dstcap - s.avail_out);
	}
#ifdef HAVE_ZSTD
	if (type == Q2_COMP_ZSTD) {
		size_t z = ZSTD_compress(dst, dstcap, src, srclen, 1);
		if (ZSTD_isError(z))
			return -ENOSPC;
		return (long)z;
	}
#endif
	return -ENOTSUP;
}
