/*
 * qcow2.h - shared declarations of the qcow2 format driver: the on-disk layout, the parsed
 * header, and the pure metadata functions of qcow2-meta.c (header and header-extension parsing,
 * L1/L2/refcount-table entry decoding and validation, refcount arithmetic, metadata overlap
 * checks).  The pure functions take buffers, never do I/O, and run on any thread: the driver,
 * the unit tests (tests/unit/test-qcow2*.c) and the fuzz harness (tests/fuzz/fuzz-qcow2.c) all
 * call them.
 */
#ifndef BLOCKD_FORMATS_QCOW2_H
#define BLOCKD_FORMATS_QCOW2_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define Q2_MAGIC 0x514649fbu /* "QFI\xfb" */
#define Q2_MIN_CLUSTER_BITS 9
#define Q2_MAX_CLUSTER_BITS 21
#define Q2_V2_HEADER_LEN 72
#define Q2_V3_HEADER_LEN 104
#define Q2_HEADER_LEN_WITH_CTYPE 112 /* what blockd writes for v3 */
#define Q2_MAX_L1_BYTES (32u << 20)   /* QEMU's QCOW_MAX_L1_SIZE */
#define Q2_MAX_REFTABLE_BYTES (8u << 20) /* QEMU's QCOW_MAX_REFTABLE_SIZE */
#define Q2_MAX_SNAPSHOTS 65536
#define Q2_MAX_BACKING_NAME 1023

/* Incompatible feature bits. */
#define Q2_INCOMPAT_DIRTY (1ull << 0)
#define Q2_INCOMPAT_CORRUPT (1ull << 1)
#define Q2_INCOMPAT_DATA_FILE (1ull << 2)
#define Q2_INCOMPAT_COMPRESSION (1ull << 3)
#define Q2_INCOMPAT_EXTL2 (1ull << 4)
#define Q2_INCOMPAT_KNOWN 0x1full
#define Q2_EXTL2_MIN_CLUSTER_BITS 14
/* Compatible and autoclear bits. */
#define Q2_COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define Q2_AUTOCLEAR_BITMAPS (1ull << 0)
#define Q2_AUTOCLEAR_DATA_FILE_RAW (1ull << 1)

/* Header extension types. */
#define Q2_EXT_END 0x00000000u
#define Q2_EXT_BACKING_FMT 0xe2792acau
#define Q2_EXT_FEATURE_TABLE 0x6803f857u
#define Q2_EXT_BITMAPS 0x23852875u
#define Q2_EXT_CRYPTO 0x0537be77u
#define Q2_EXT_DATA_FILE 0x44415441u

/* L1/L2 entry bits (standard L2 entries). */
#define Q2_OFLAG_COPIED (1ull << 63)
#define Q2_OFLAG_COMPRESSED (1ull << 62)
#define Q2_OFLAG_ZERO (1ull << 0)
#define Q2_OFFSET_MASK 0x00fffffffffffe00ull /* bits 9-55 */
#define Q2_L1_RESERVED 0x7f000000000001ffull /* bits 0-8, 56-62 */
#define Q2_L2_RESERVED 0x3f000000000001feull /* bits 1-8, 56-61 */
#define Q2_REFT_RESERVED 0x1ffull            /* bits 0-8 */

enum q2_compression { Q2_COMP_ZLIB = 0, Q2_COMP_ZSTD = 1 };

/* The parsed header and extensions (host byte order). */
struct q2_header {
	uint32_t version;
	uint64_t backing_file_offset;
	uint32_t backing_file_size;
	uint32_t cluster_bits;
	uint64_t size;
	uint32_t crypt_method;
	uint32_t l1_size;
	uint64_t l1_table_offset;
	uint64_t refcount_table_offset;
	uint32_t refcount_table_clusters;
	uint32_t nb_snapshots;
	uint64_t snapshots_offset;
	uint64_t incompatible;
	uint64_t compatible;
	uint64_t autoclear;
	uint32_t refcount_order;
	uint32_t header_length;
	uint8_t compression_type;
	bool extl2; /* extended L2 entries (subclusters): 16-byte L2 entries */

	/* Extensions. */
	uint64_t ext_end;       /* offset just after the end-of-extensions marker (or area end) */
	bool has_backing_fmt;
	char backing_fmt[64];
	char backing_file[Q2_MAX_BACKING_NAME + 1];
	bool has_feature_table;
	bool has_bitmaps;
	uint32_t nb_bitmaps;
	uint64_t bitmap_dir_size;
	uint64_t bitmap_dir_offset;
	bool has_data_file_ext;
	char unknown_features[256]; /* names of unknown incompatible features (error text) */
};

/* Cluster types of a standard L2 entry. */
enum q2_ctype {
	Q2_C_UNALLOC,    /* unallocated: backing file or zeroes */
	Q2_C_ZERO_PLAIN, /* reads as zeroes, no host cluster */
	Q2_C_ZERO_ALLOC, /* reads as zeroes, host cluster kept */
	Q2_C_NORMAL,     /* data at host offset */
	Q2_C_COMPRESSED, /* compressed data at host offset, csize bytes */
};

struct q2_l2e {
	enum q2_ctype type;
	uint64_t host;  /* host byte offset (cluster aligned unless compressed) */
	uint64_t csize; /* compressed: bytes to read from host (up to the sector end) */
	bool copied;    /* refcount is exactly one: may be written in place */
};

/* A region of metadata for overlap checks. */
struct q2_region {
	uint64_t start, len;
	const char *what;
};

/* Big-endian helpers. */
static inline uint16_t q2_be16(const uint8_t *p)
{
	return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}
static inline uint32_t q2_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t q2_be64(const uint8_t *p)
{
	return (uint64_t)q2_be32(p) << 32 | q2_be32(p + 4);
}
static inline void q2_put_be16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}
static inline void q2_put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}
static inline void q2_put_be64(uint8_t *p, uint64_t v)
{
	q2_put_be32(p, (uint32_t)(v >> 32));
	q2_put_be32(p + 4, (uint32_t)v);
}

/* [any] Parse and validate the header and extensions in buf (the start of the image: at least
 * the whole first cluster, or the whole file when it is shorter).  file_size is the image
 * file's length, used to refuse tables past its end.  Returns 0, or -EINVAL (invalid or
 * corrupt: msg says why), -ENOTSUP (valid but a feature blockd does not support: msg names it).
 * msg gets a NUL-terminated text of at most msglen bytes. */
int q2_header_parse(const uint8_t *buf, size_t len, uint64_t file_size, struct q2_header *h,
		    char *msg, size_t msglen);

/* [any] Serialise the fixed header fields of h into buf (header_length bytes: 72 for v2, else
 * h->header_length, which must be >= 104).  Extensions are not touched. */
void q2_header_write_fixed(const struct q2_header *h, uint8_t *buf);

/* [any] Decode a standard L2 entry.  Returns 0, or -EINVAL when the entry is invalid (reserved
 * bits, unaligned offset): *e is then unspecified. */
int q2_l2e_decode(uint64_t entry, uint32_t cluster_bits, struct q2_l2e *e);

/* [any] Validate an L1 entry (host order): 0 or -EINVAL.  *l2_off gets the L2 table offset
 * (0 = unallocated).  An L2 table must lie inside file_size. */
int q2_l1e_check(uint64_t entry, uint32_t cluster_bits, uint64_t file_size, uint64_t *l2_off);
/* [any] Validate a refcount table entry: 0 or -EINVAL; *rb_off gets the refblock offset. */
int q2_reftable_check(uint64_t entry, uint32_t cluster_bits, uint64_t file_size,
		      uint64_t *rb_off);

/* [any] Refcount of entry idx in a refcount block of 2^order-bit entries (big endian). */
uint64_t q2_refcount_get(const uint8_t *block, uint32_t order, uint64_t idx);
/* [any] Set it; returns -ERANGE (block unchanged) if v does not fit. */
int q2_refcount_set(uint8_t *block, uint32_t order, uint64_t idx, uint64_t v);
/* [any] Largest refcount representable with 2^order bits. */
uint64_t q2_refcount_max(uint32_t order);

/* [any] Geometry helpers. */
static inline uint64_t q2_l2_entries(uint32_t cluster_bits)
{
	return 1ull << (cluster_bits - 3);
}
/* Clusters one refcount block describes. */
static inline uint64_t q2_rb_entries(uint32_t cluster_bits, uint32_t order)
{
	return 1ull << (cluster_bits + 3 - order);
}
/* [any] L1 entries needed for a virtual size (0 if it overflows). */
uint64_t q2_l1_needed(uint64_t size, uint32_t cluster_bits);
/* [any] The same with extended L2 entries (16 bytes, half as many per table). */
uint64_t q2_l1_needed_ext(uint64_t size, uint32_t cluster_bits, bool extl2);

#define Q2_SUBCLUSTERS 32
/* [any] The type of subcluster sc of an extended L2 entry (e decoded from the entry's first
 * 8 bytes with q2_l2e_decode_ext(), bitmap its second 8 bytes); for data, *host gets the
 * subcluster's host offset.  -EINVAL for an invalid combination. */
int q2_subcluster(const struct q2_l2e *e, uint64_t bitmap, unsigned sc, uint32_t cluster_bits,
		  enum q2_ctype *type, uint64_t *host);
/* [any] q2_l2e_decode for the first half of an extended L2 entry (bit 0 is reserved there). */
int q2_l2e_decode_ext(uint64_t entry, uint32_t cluster_bits, struct q2_l2e *e);

/* [any] Does [off, off+len) overlap any of the n regions?  Returns the index of the first
 * overlapping region, or -1. */
int q2_overlaps(const struct q2_region *r, unsigned n, uint64_t off, uint64_t len);

/* One internal snapshot, as the snapshot table describes it. */
struct q2_snapinfo {
	uint64_t l1_off;
	uint32_t l1_size;
	uint64_t disk_size;     /* from the extra data when present, else 0 */
	uint32_t date_sec, date_nsec;
	uint64_t vm_clock_nsec;
	uint32_t vm_state_size;
	char id[128];           /* truncated if longer */
	char name[256];
};

/* [any] Parse a snapshot table (len bytes at buf) to validate it and describe each snapshot;
 * *table_bytes gets the table's byte size.  cb is called per snapshot (may be NULL).  Returns
 * 0, -EINVAL (msg says why), or -ENODATA when len is too short to hold the whole table (the
 * caller may retry with more). */
int q2_snapshots_parse(const uint8_t *buf, size_t len, uint32_t nb, uint32_t cluster_bits,
		       uint64_t file_size, uint64_t *table_bytes,
		       void (*cb)(void *opaque, const struct q2_snapinfo *sn), void *opaque,
		       char *msg, size_t msglen);

/* One persistent bitmap, as the bitmap directory describes it. */
#define Q2_BITMAP_IN_USE 1u
#define Q2_BITMAP_AUTO 2u
struct q2_bitmap {
	uint64_t table_off;
	uint32_t table_size; /* entries */
	uint32_t flags;
	uint8_t type;
	uint8_t granularity_bits;
	uint64_t entry_off;  /* offset of the entry in the directory (flags at +12) */
	char name[1024];
};

/* [any] Parse and validate a bitmap directory (len bytes at buf, nb entries); cb is called per
 * bitmap (may be NULL).  0, or -EINVAL with msg. */
int q2_bitmap_dir_parse(const uint8_t *buf, size_t len, uint32_t nb, uint32_t cluster_bits,
			uint64_t file_size,
			void (*cb)(void *opaque, const struct q2_bitmap *bm), void *opaque,
			char *msg, size_t msglen);

/* [any] Decompress a compressed cluster: src (srclen bytes, may have trailing garbage) into
 * dst (exactly dstlen bytes).  0, -EIO on bad data, -ENOTSUP for a type not built in. */
int q2_decompress(enum q2_compression type, const void *src, size_t srclen, void *dst,
		  size_t dstlen);
/* [any] Compress src into dst (dstcap bytes): the compressed length, or -ENOSPC when it does
 * not fit (the caller then writes the cluster uncompressed), -ENOTSUP, -EIO. */
long q2_compress(enum q2_compression type, const void *src, size_t srclen, void *dst,
		 size_t dstcap);

#endif
