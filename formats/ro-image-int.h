/*
 * ro-image-int.h - the shared engine of the read-only format drivers (vmdk, vdi, vpc, qed) and
 * the pure parsers each of them exposes to its libFuzzer harness.
 *
 * A read-only format here is a *map*: every guest byte is data at an offset in one of the
 * node's files, zeroes, unallocated (the backing file or zeroes) or part of a compressed grain.
 * Each driver parses its header and tables at open (control thread, through a struct ro_src
 * that reads the file child with bd_node_io_sync(), or a buffer in the fuzzers), keeps them in
 * memory, immutable, and answers map() from them.  The engine (ro-image.c) turns requests into
 * sub-requests on the files' channels on the request's own loop: the map never changes after
 * open, so any loop may run requests of the node at the same time without locks.
 */
#ifndef BLOCKD_FORMATS_RO_IMAGE_INT_H
#define BLOCKD_FORMATS_RO_IMAGE_INT_H

#include "blockd/blockd.h"

#include <stddef.h>
#include <stdint.h>

/* Metadata kept in memory per node is capped (tables, grain directories, descriptors). */
#define RO_MAX_META_BYTES (512ull << 20)
/* Backing chains opened by these drivers nest at most this deep (loops in hostile images). */
#define RO_MAX_BACKING_DEPTH 32

/* ---- little/big-endian loads (any thread) ---- */
static inline uint16_t ro_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t ro_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}
static inline uint64_t ro_le64(const uint8_t *p)
{
	return (uint64_t)ro_le32(p) | ((uint64_t)ro_le32(p + 4) << 32);
}
static inline uint16_t ro_be16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}
static inline uint32_t ro_be32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint64_t ro_be64(const uint8_t *p)
{
	return ((uint64_t)ro_be32(p) << 32) | ro_be32(p + 4);
}

/* A byte source for the parsers: the file child at open, a buffer in the fuzzers. */
struct ro_src {
	int (*read)(void *ctx, uint64_t off, void *buf, size_t len); /* 0 or -errno */
	void *ctx;
	uint64_t size;
};
/* [any] Read [off, off+len) of src: -EIO when any of it lies past the end (never reads it). */
int ro_src_read(const struct ro_src *src, uint64_t off, void *buf, size_t len);
/* [any] A source over a buffer (the fuzzers' and unit tests' files). */
struct ro_membuf {
	const uint8_t *data;
	size_t len;
};
void ro_src_mem(struct ro_src *src, struct ro_membuf *m, const uint8_t *data, size_t len);

/* What a guest range is. */
enum ro_kind {
	RO_DATA,       /* bytes at host in files[child] (zeroes past that file's end) */
	RO_ZERO,       /* zeroes, allocated in this image (zero grain / cluster) */
	RO_UNALLOC,    /* not in this image: the backing file, or zeroes without one */
	RO_COMPRESSED, /* inside a compressed grain whose marker starts at host */
};
struct ro_seg {
	enum ro_kind kind;
	bool recurse;	     /* DATA: ask the file whether it reads as zeroes (flat extents) */
	unsigned child;	     /* DATA, COMPRESSED: index into the driver's files */
	uint64_t len;	     /* bytes, 0 < len <= the asked length */
	uint64_t host;	     /* DATA: offset of the first byte; COMPRESSED: the grain's offset */
	uint64_t grain_off;  /* COMPRESSED: offset of the first byte inside the grain */
	uint64_t grain_size; /* COMPRESSED: bytes of the whole uncompressed grain */
};

struct ro_ops {
	/* [any, pure] The segment starting at guest offset off, at most len bytes (off + len <=
	 * the virtual size, len > 0).  0, or -EIO on a table entry the open checks let pass. */
	int (*map)(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg);
	/* [any, pure] COMPRESSED: decode the bytes read at seg->host (inlen, which may run past
	 * the grain's record) into out (seg->grain_size bytes).  0 or -EIO. */
	int (*inflate)(const void *fmt, const struct ro_seg *seg, const uint8_t *in, size_t inlen,
		       uint8_t *out);
};

/* The engine's part of a node; each driver's node private struct starts with it. */
struct ro_img {
	struct bd_node *node;
	const char *drv;
	const struct ro_ops *ops;
	const void *fmt;
	struct bd_child **files; /* files[0] is the "file" child */
	uint64_t *fsizes;
	unsigned nfiles;
	struct bd_child *backing;
	char *backing_name; /* as named in the image, for describe */
	uint64_t size;
	uint64_t comp_read; /* bytes read for one compressed grain (clamped at the file's end) */
	bool fallback;	    /* opened with auto-read-only=on: the core marks the node read-only */
};

/* Per request (bd_driver.req_size = sizeof(struct ro_req)); the engine's. */
#define RO_SUB_EXTENTS 64
struct ro_req {
	struct bd_req *req;
	struct ro_img *ro;
	struct bd_chan *ch;
	unsigned pending;
	int err;
	bool in_submit;
	/* block status */
	uint64_t pos;
	uint64_t sub_len;
	bool sub_backing;
	unsigned sub_n;
	struct bd_extent sub_ext[RO_SUB_EXTENTS];
};

/* [control] Engine set-up in a driver's open().  ro_init opens the "file" child as files[0]. */
int ro_init(struct ro_img *ro, struct bd_node *node, json_t *opts, const char *drv,
	    struct bd_err *err);
/* [control] The refusal of writable opens ("driver 'vmdk' is read-only in blockd ..."), unless
 * auto-read-only=on (then the node falls back to read-only). */
int ro_refuse_writable(struct bd_node *node, const char *drv, struct bd_err *err);
/* [control] A source reading files[i] synchronously. */
void ro_src_file(struct ro_img *ro, unsigned i, struct ro_src *src);
/* [control] The file name a file node was opened with, or NULL (not a file protocol node). */
const char *ro_file_name(struct bd_node *file);
/* [control] name resolved against the directory of base (a file name); malloc'd, NULL on
 * ENOMEM.  Absolute names are kept. */
char *ro_resolve(const char *base, const char *name);
/* [control] Open path read-only with the file driver as one more file; returns its index. */
int ro_add_file(struct ro_img *ro, const char *path, struct bd_err *err);
/* [control] The backing node: opts["backing"] when given (null or "" = none), otherwise
 * name (from the image; relative to files[0]'s name) opened read-only with driver fmt, or,
 * when fmt is NULL, with the format its magic names (qcow2, qed, vmdk, vdi) or raw. */
int ro_open_backing(struct ro_img *ro, json_t *opts, const char *name, const char *fmt,
		    struct bd_err *err);
/* [control] Fill limits for a read-only node of ro->size bytes. */
void ro_limits(struct ro_img *ro, struct bd_limits *limits);
/* [control] Release what ro_* allocated (children are released by the core). */
void ro_free(struct ro_img *ro);
/* [control] describe(): the backing file, if any. */
void ro_describe(struct ro_img *ro, json_t *out);
/* [loop] The driver's submit (node private data must start with struct ro_img). */
int ro_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req);

/* ==== the formats' pure parsers (driver open and the fuzzers) ==== */

/* ---- vdi (formats/vdi.c) ---- */
struct vdi_img {
	uint64_t disk_size;
	uint32_t block_size;
	uint32_t blocks;   /* entries in the block map */
	uint64_t data_off; /* offset of block 0 */
	uint32_t *bmap;	   /* host order */
	bool is_static;
};
int vdi_parse(const struct ro_src *src, struct vdi_img *v, char *msg, size_t msglen);
void vdi_free(struct vdi_img *v);
int vdi_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg);

/* ---- vpc (formats/vpc.c) ---- */
enum vpc_size_calc { VPC_SIZE_AUTO, VPC_SIZE_CHS, VPC_SIZE_CURRENT };
struct vpc_img {
	uint64_t size;
	bool fixed;
	uint32_t block_size;
	uint32_t bitmap_size;
	uint32_t entries; /* BAT entries */
	uint32_t *bat;	  /* host order, sector offsets; 0xffffffff = none */
	bool checksum_bad;
	char creator[5];
};
int vpc_parse(const struct ro_src *src, enum vpc_size_calc calc, struct vpc_img *v, char *msg,
	      size_t msglen);
void vpc_free(struct vpc_img *v);
int vpc_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg);

/* ---- qed (formats/qed.c) ---- */
struct qed_img {
	uint32_t cluster_size;
	uint32_t table_size; /* clusters per table */
	uint64_t size;
	uint64_t features;
	uint64_t l2_entries; /* entries per table */
	uint64_t l1_n;	     /* L1 entries that cover the image */
	uint64_t **l2;	     /* per L1 entry: the L2 table (host order), NULL = none */
	char *backing;	     /* backing file name, NULL = none */
	bool backing_raw;    /* QED_F_BACKING_FORMAT_NO_PROBE */
	bool need_check;
};
int qed_parse(const struct ro_src *src, struct qed_img *q, char *msg, size_t msglen);
void qed_free(struct qed_img *q);
int qed_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg);

/* ---- vmdk (formats/vmdk-parse.c) ---- */
enum vmdk_ext_type { VMDK_EXT_FLAT, VMDK_EXT_SPARSE, VMDK_EXT_ZERO };
struct vmdk_sparse {
	uint64_t capacity; /* sectors */
	uint64_t grain;	   /* sectors per grain */
	uint32_t gtes;	   /* entries per grain table */
	uint64_t ngd;	   /* grain directory entries */
	uint32_t **gt;	   /* per GD entry: the grain table (host order), NULL = none */
	bool zero_gte;	   /* GTE 1 = zero grain */
	bool compressed;
	bool markers;
	uint64_t desc_off, desc_size; /* embedded descriptor, bytes (0 = none) */
	uint32_t version;
};
struct vmdk_extent {
	enum vmdk_ext_type type;
	uint64_t sectors; /* virtual size of the extent */
	uint64_t offset;  /* FLAT: start in the file, bytes */
	char *file;	  /* as written in the descriptor; NULL for ZERO */
	unsigned child;	  /* engine file index */
	struct vmdk_sparse sp;
	uint64_t start; /* guest byte offset of the extent */
};
struct vmdk_desc {
	char create_type[64];
	char *parent_hint; /* parentFileNameHint, NULL = none */
	uint32_t cid, parent_cid;
	bool has_parent_cid;
	struct vmdk_extent *ext;
	unsigned n;
};
/* Parse a text descriptor (len bytes, NUL bytes end it). */
int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, char *msg, size_t msglen);
void vmdk_desc_free(struct vmdk_desc *d);
/* Parse a hosted sparse extent (header or footer, grain directory, grain tables). */
int vmdk_sparse_parse(const struct ro_src *src, struct vmdk_sparse *sp, char *msg, size_t msglen);
void vmdk_sparse_free(struct vmdk_sparse *sp);
/* The map over a list of extents (fmt is a struct vmdk_map). */
struct vmdk_map {
	struct vmdk_extent *ext;
	unsigned n;
	uint64_t size;
};
int vmdk_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg);
int vmdk_inflate(const void *fmt, const struct ro_seg *seg, const uint8_t *in, size_t inlen,
		 uint8_t *out);

#endif /* BLOCKD_FORMATS_RO_IMAGE_INT_H */
