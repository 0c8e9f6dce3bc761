/*
 * test-qcow2.c - unit tests of the pure qcow2 metadata functions (formats/qcow2-meta.c):
 * header parsing and validation (versions, cluster sizes, extensions, feature names, hostile
 * values), L1/L2/refcount-table entry decoding, refcount arithmetic for every width, overlap
 * checks, snapshot table validation, zlib/zstd round trips.  No I/O.
 */
#include "formats/qcow2.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond, ...)                                                                          \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                     \
			fprintf(stderr, __VA_ARGS__);                                            \
			fprintf(stderr, "\n");                                                   \
			failures++;                                                              \
		}                                                                                \
	} while (0)

#define CS 65536u

/* A valid v3 header for a 1 GiB image with 64k clusters in a 4-cluster file. */
static void make_v3(uint8_t *b, uint64_t *fsize)
{
	memset(b, 0, CS);
	q2_put_be32(b, Q2_MAGIC);
	q2_put_be32(b + 4, 3);
	q2_put_be32(b + 20, 16);
	q2_put_be64(b + 24, 1ull << 30);
	q2_put_be32(b + 36, 2);        /* l1_size */
	q2_put_be64(b + 40, 3 * CS);   /* l1 */
	q2_put_be64(b + 48, CS);       /* reftable */
	q2_put_be32(b + 56, 1);
	q2_put_be32(b + 96, 4);
	q2_put_be32(b + 100, 112);
	*fsize = 4 * CS;
}

static void test_header(void)
{
	static uint8_t b[CS];
	struct q2_header h;
	char msg[256];
	uint64_t fs;

	make_v3(b, &fs);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "valid v3: %s", msg);
	CHECK(h.version == 3 && h.cluster_bits == 16 && h.size == 1ull << 30, "fields");
	CHECK(h.refcount_order == 4 && h.header_length == 112, "v3 fields");

	/* bad magic */
	b[0] = 'X';
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "magic");
	make_v3(b, &fs);
	/* version 4 */
	q2_put_be32(b + 4, 4);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP, "version 4");
	make_v3(b, &fs);
	/* cluster bits out of range */
	q2_put_be32(b + 20, 8);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "cluster_bits 8");
	q2_put_be32(b + 20, 22);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "cluster_bits 22");
	make_v3(b, &fs);
	/* L1 too small for the size */
	q2_put_be32(b + 36, 1);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "l1 too small");
	make_v3(b, &fs);
	/* L1 past the end of the file */
	q2_put_be64(b + 40, 100 * CS);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "l1 past end");
	/* L1 unaligned */
	q2_put_be64(b + 40, 3 * CS + 8);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "l1 unaligned");
	make_v3(b, &fs);
	/* absurd L1 size (overflow attempt) */
	q2_put_be32(b + 36, 0xffffffffu);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "huge l1");
	make_v3(b, &fs);
	/* absurd image size */
	q2_put_be64(b + 24, UINT64_MAX);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "huge size");
	make_v3(b, &fs);
	/* refcount table: zero clusters, past the end, too large */
	q2_put_be32(b + 56, 0);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "reftable 0");
	q2_put_be32(b + 56, 1000);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "reftable big");
	make_v3(b, &fs);
	q2_put_be32(b + 96, 7);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "refcount order 7");
	make_v3(b, &fs);
	/* header length not a multiple of 8 */
	q2_put_be32(b + 100, 108);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "header len");
	make_v3(b, &fs);
	/* encryption refused */
	q2_put_be32(b + 32, 2);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP, "crypt");
	make_v3(b, &fs);
	/* compression type without the bit, and unknown type */
	b[104] = 1;
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "ctype w/o bit");
	q2_put_be64(b + 72, Q2_INCOMPAT_COMPRESSION);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "zstd: %s", msg);
	CHECK(h.compression_type == Q2_COMP_ZSTD, "zstd type");
	b[104] = 9;
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP, "ctype 9");
	make_v3(b, &fs);
	/* external data file / extended L2: refused with a clear error */
	q2_put_be64(b + 72, Q2_INCOMPAT_DATA_FILE);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP &&
		      strstr(msg, "external data file"),
	      "data file: %s", msg);
	/* extended L2 entries: 16-byte entries (the L1 must be twice as long) */
	q2_put_be64(b + 72, Q2_INCOMPAT_EXTL2);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "extl2 needs 4 L1");
	q2_put_be32(b + 36, 4);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0 && h.extl2, "extl2: %s", msg);
	q2_put_be64(b + 24, 2ull << 30);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "extl2 l1 too small");
	q2_put_be64(b + 24, 1ull << 30);
	q2_put_be32(b + 20, 13);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "extl2 8k clusters");
	make_v3(b, &fs);

	/* unknown incompatible feature named by the feature table */
	q2_put_be64(b + 72, 1ull << 40);
	q2_put_be32(b + 112, Q2_EXT_FEATURE_TABLE);
	q2_put_be32(b + 116, 48);
	b[120] = 0;
	b[121] = 40;
	memcpy(b + 122, "frobnication", 12);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP &&
		      strstr(msg, "frobnication"),
	      "named feature: %s", msg);
	/* ... and one without a name */
	q2_put_be64(b + 72, (1ull << 40) | (1ull << 41));
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -ENOTSUP &&
		      strstr(msg, "frobnication") && strstr(msg, "20000000000"),
	      "unnamed feature: %s", msg);
	make_v3(b, &fs);

	/* backing file name and format extension */
	q2_put_be32(b + 112, Q2_EXT_BACKING_FMT);
	q2_put_be32(b + 116, 5);
	memcpy(b + 120, "qcow2", 5);
	/* end marker at 128 (zeroes) */
	q2_put_be64(b + 8, 200);
	q2_put_be32(b + 16, 8);
	memcpy(b + 200, "base.img", 8);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "backing: %s", msg);
	CHECK(h.has_backing_fmt && !strcmp(h.backing_fmt, "qcow2"), "backing fmt");
	CHECK(!strcmp(h.backing_file, "base.img"), "backing name '%s'", h.backing_file);
	/* backing name too long / past the cluster */
	q2_put_be32(b + 16, 2000);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "backing size");
	q2_put_be32(b + 16, 8);
	q2_put_be64(b + 8, CS - 4);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "backing offset");
	make_v3(b, &fs);
	/* an extension whose length runs past the cluster */
	q2_put_be32(b + 112, 0x12345678);
	q2_put_be32(b + 116, CS);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "ext length");
	make_v3(b, &fs);
	/* bitmaps extension, kept as parsed */
	q2_put_be32(b + 112, Q2_EXT_BITMAPS);
	q2_put_be32(b + 116, 24);
	q2_put_be32(b + 120, 1);
	q2_put_be64(b + 128, 64);
	q2_put_be64(b + 136, 2 * CS);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "bitmaps: %s", msg);
	CHECK(h.has_bitmaps && h.nb_bitmaps == 1 && h.bitmap_dir_offset == 2 * CS, "bitmaps");
	q2_put_be64(b + 136, 2 * CS + 1);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == -EINVAL, "bitmaps unaligned");

	/* version 2: 72-byte header, refcount order 4 */
	make_v3(b, &fs);
	q2_put_be32(b + 4, 2);
	memset(b + 72, 0, 40);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "v2: %s", msg);
	CHECK(h.refcount_order == 4 && h.header_length == 72 && h.incompatible == 0, "v2 fields");
	/* truncated buffer */
	CHECK(q2_header_parse(b, 50, fs, &h, msg, sizeof(msg)) == -EINVAL, "short");

	/* round trip of the fixed fields */
	make_v3(b, &fs);
	CHECK(q2_header_parse(b, CS, fs, &h, msg, sizeof(msg)) == 0, "rt parse");
	uint8_t out[112];
	q2_header_write_fixed(&h, out);
	CHECK(memcmp(out, b, 112) == 0, "fixed header round trip");
}

static void test_entries(void)
{
	struct q2_l2e e;
	uint64_t off;

	CHECK(q2_l2e_decode(0, 16, &e) == 0 && e.type == Q2_C_UNALLOC, "unalloc");
	CHECK(q2_l2e_decode(Q2_OFLAG_ZERO, 16, &e) == 0 && e.type == Q2_C_ZERO_PLAIN, "zero");
	CHECK(q2_l2e_decode(0x50000 | Q2_OFLAG_ZERO | Q2_OFLAG_COPIED, 16, &e) == 0 &&
		      e.type == Q2_C_ZERO_ALLOC && e.host == 0x50000 && e.copied,
	      "zero alloc");
	CHECK(q2_l2e_decode(0x50000 | Q2_OFLAG_COPIED, 16, &e) == 0 && e.type == Q2_C_NORMAL &&
		      e.host == 0x50000 && e.copied,
	      "normal");
	CHECK(q2_l2e_decode(0x50000, 16, &e) == 0 && !e.copied, "normal shared");
	CHECK(q2_l2e_decode(0x50200, 16, &e) == -EINVAL, "unaligned data cluster");
	CHECK(q2_l2e_decode(0x50000 | (1ull << 3), 16, &e) == -EINVAL, "reserved bit");
	CHECK(q2_l2e_decode(0x50000 | (1ull << 60), 16, &e) == -EINVAL, "reserved high bit");
	/* compressed, 64k clusters: x = 62 - 8 = 54 offset bits; 3 extra sectors */
	uint64_t c = Q2_OFLAG_COMPRESSED | (3ull << 54) | 0x123456;
	CHECK(q2_l2e_decode(c, 16, &e) == 0 && e.type == Q2_C_COMPRESSED && e.host == 0x123456,
	      "compressed");
	CHECK(e.csize == 4 * 512 - 0x56, "compressed size %llu", (unsigned long long)e.csize);
	/* compressed, 512-byte clusters: x = 61 */
	c = Q2_OFLAG_COMPRESSED | (1ull << 61) | 0x1000;
	CHECK(q2_l2e_decode(c, 9, &e) == 0 && e.host == 0x1000 && e.csize == 1024, "compressed 512");
	CHECK(q2_l2e_decode(c | Q2_OFLAG_COPIED, 9, &e) == -EINVAL, "compressed copied");

	/* extended L2: subclusters of 2 KiB in 64 KiB clusters */
	enum q2_ctype t;
	uint64_t h;
	CHECK(q2_l2e_decode_ext(0x50000 | Q2_OFLAG_COPIED, 16, &e) == 0, "ext decode");
	CHECK(q2_subcluster(&e, 1u << 3, 3, 16, &t, &h) == 0 && t == Q2_C_NORMAL &&
		      h == 0x50000 + 3 * 2048,
	      "allocated subcluster");
	CHECK(q2_subcluster(&e, 1ull << 35, 3, 16, &t, &h) == 0 && t == Q2_C_ZERO_PLAIN,
	      "zero subcluster");
	CHECK(q2_subcluster(&e, 0, 3, 16, &t, &h) == 0 && t == Q2_C_UNALLOC, "unalloc subcluster");
	CHECK(q2_subcluster(&e, (1ull << 35) | (1u << 3), 3, 16, &t, &h) == -EINVAL,
	      "alloc+zero subcluster");
	CHECK(q2_l2e_decode_ext(Q2_OFLAG_ZERO, 16, &e) == -EINVAL, "ext zero flag reserved");
	CHECK(q2_l2e_decode_ext(0, 16, &e) == 0 && q2_subcluster(&e, 1, 0, 16, &t, &h) == -EINVAL,
	      "allocated subcluster without a cluster");

	CHECK(q2_l1e_check(0, 16, 1 << 20, &off) == 0 && off == 0, "l1 empty");
	CHECK(q2_l1e_check(0x30000 | Q2_OFLAG_COPIED, 16, 1 << 20, &off) == 0 && off == 0x30000,
	      "l1 entry");
	CHECK(q2_l1e_check(0x30000 | 1, 16, 1 << 20, &off) == -EINVAL, "l1 reserved");
	CHECK(q2_l1e_check(0x30200, 16, 1 << 20, &off) == -EINVAL, "l1 unaligned");
	CHECK(q2_l1e_check(0x100000, 16, 1 << 20, &off) == -EINVAL, "l1 past end");
	CHECK(q2_reftable_check(0x10000, 16, 1 << 20, &off) == 0 && off == 0x10000, "reft");
	CHECK(q2_reftable_check(0x10001, 16, 1 << 20, &off) == -EINVAL, "reft reserved");
	CHECK(q2_reftable_check(0xf0000000, 16, 1 << 20, &off) == -EINVAL, "reft past end");

	CHECK(q2_l1_needed(0, 16) == 0, "l1 needed 0");
	CHECK(q2_l1_needed(1, 16) == 1, "l1 needed 1");
	CHECK(q2_l1_needed(512ull << 20, 16) == 1, "l1 needed 512M");
	CHECK(q2_l1_needed((512ull << 20) + 1, 16) == 2, "l1 needed 512M+1");
	CHECK(q2_l1_needed(32ull << 10, 9) == 1 && q2_l1_needed((32ull << 10) + 1, 9) == 2,
	      "l1 needed 512b clusters");
	CHECK(q2_rb_entries(16, 4) == 32768 && q2_rb_entries(9, 6) == 64 &&
		      q2_rb_entries(16, 0) == 524288,
	      "refblock entries");
}

static void test_refcounts(void)
{
	uint8_t blk[4096];

	for (uint32_t order = 0; order <= 6; order++) {
		uint64_t n = 4096 * 8 >> order, max = q2_refcount_max(order);
		memset(blk, 0, sizeof(blk));
		for (uint64_t i = 0; i < n; i++)
			CHECK(q2_refcount_set(blk, order, i, (i * 7919) & max) == 0, "set");
		for (uint64_t i = 0; i < n; i++)
			CHECK(q2_refcount_get(blk, order, i) == ((i * 7919) & max),
			      "order %u idx %llu", order, (unsigned long long)i);
		if (order < 6)
			CHECK(q2_refcount_set(blk, order, 0, max + 1) == -ERANGE, "overflow %u",
			      order);
		CHECK(q2_refcount_set(blk, order, 1, max) == 0 &&
			      q2_refcount_get(blk, order, 1) == max,
		      "max %u", order);
	}
	/* bit order inside a byte: entry 0 is the least significant bit (as QEMU does) */
	memset(blk, 0, 8);
	q2_refcount_set(blk, 0, 0, 1);
	CHECK(blk[0] == 1, "1-bit lsb first");
	q2_refcount_set(blk, 2, 1, 0xa);
	CHECK(blk[0] == 0xa1, "4-bit layout %02x", blk[0]);
	memset(blk, 0, 8);
	q2_refcount_set(blk, 4, 1, 0x1234);
	CHECK(blk[2] == 0x12 && blk[3] == 0x34, "16-bit big endian");
}

static void test_overlaps(void)
{
	struct q2_region r[] = {{0, 65536, "header"}, {0x30000, 16, "l1"}, {0x50000, 0, "none"}};
	CHECK(q2_overlaps(r, 3, 0x10000, 0x10000) == -1, "no overlap");
	CHECK(q2_overlaps(r, 3, 0xffff, 2) == 0, "header overlap");
	CHECK(q2_overlaps(r, 3, 0x30008, 1) == 1, "l1 overlap");
	CHECK(q2_overlaps(r, 3, 0x50000, 10) == -1, "empty region never overlaps");
}

static struct q2_snapinfo last_snap;
static void snap_cb(void *opaque, const struct q2_snapinfo *sn)
{
	(void)opaque;
	last_snap = *sn;
}

static void test_snapshots(void)
{
	uint8_t t[256];
	uint64_t bytes;
	char msg[128];

	memset(t, 0, sizeof(t));
	q2_put_be64(t, 0x40000);
	q2_put_be32(t + 8, 2);
	q2_put_be16(t + 12, 1); /* id */
	q2_put_be16(t + 14, 4); /* name */
	q2_put_be32(t + 36, 16); /* extra */
	memcpy(t + 56, "1snap", 5);
	q2_put_be64(t + 48, 1 << 20); /* extra data: disk size */
	CHECK(q2_snapshots_parse(t, sizeof(t), 1, 16, 1 << 20, &bytes, snap_cb, NULL, msg,
				 sizeof(msg)) == 0 &&
		      bytes == 64,
	      "snapshot: %s %llu", msg, (unsigned long long)bytes);
	CHECK(!strcmp(last_snap.id, "1") && !strcmp(last_snap.name, "snap") &&
		      last_snap.disk_size == 1 << 20 && last_snap.l1_off == 0x40000,
	      "snapshot info '%s' '%s'", last_snap.id, last_snap.name);
	/* the last entry's padding may be missing at the end of the table */
	CHECK(q2_snapshots_parse(t, 61, 1, 16, 1 << 20, &bytes, NULL, NULL, msg, sizeof(msg)) == 0 &&
		      bytes == 61,
	      "unpadded last entry");
	CHECK(q2_snapshots_parse(t, 40, 1, 16, 1 << 20, &bytes, NULL, NULL, msg, sizeof(msg)) ==
		      -ENODATA,
	      "truncated");
	q2_put_be64(t, 0x40001);
	CHECK(q2_snapshots_parse(t, sizeof(t), 1, 16, 1 << 20, &bytes, NULL, NULL, msg,
				 sizeof(msg)) == -EINVAL,
	      "unaligned snapshot l1");
	q2_put_be64(t, 0x40000);
	q2_put_be32(t + 36, 100000);
	CHECK(q2_snapshots_parse(t, sizeof(t), 1, 16, 1 << 20, &bytes, NULL, NULL, msg,
				 sizeof(msg)) == -EINVAL,
	      "huge extra data");
}

static struct q2_bitmap last_bm;
static unsigned nbm;
static void bm_cb(void *opaque, const struct q2_bitmap *bm)
{
	(void)opaque;
	last_bm = *bm;
	nbm++;
}

static void test_bitmap_dir(void)
{
	uint8_t d[128];
	char msg[128];

	memset(d, 0, sizeof(d));
	q2_put_be64(d, 0x30000);
	q2_put_be32(d + 8, 1);
	q2_put_be32(d + 12, Q2_BITMAP_AUTO);
	d[16] = 1;
	d[17] = 16;
	q2_put_be16(d + 18, 2);
	memcpy(d + 24, "b0", 2);
	/* second entry at 32 */
	q2_put_be64(d + 32, 0x40000);
	q2_put_be32(d + 40, 2);
	q2_put_be32(d + 44, Q2_BITMAP_IN_USE);
	d[48] = 1;
	d[49] = 20;
	q2_put_be16(d + 50, 5);
	memcpy(d + 56, "other", 5);
	nbm = 0;
	CHECK(q2_bitmap_dir_parse(d, 64, 2, 16, 1 << 20, bm_cb, NULL, msg, sizeof(msg)) == 0 &&
		      nbm == 2,
	      "bitmap dir: %s", msg);
	CHECK(!strcmp(last_bm.name, "other") && last_bm.entry_off == 32 &&
		      last_bm.flags == Q2_BITMAP_IN_USE && last_bm.table_size == 2,
	      "bitmap fields");
	CHECK(q2_bitmap_dir_parse(d, 40, 2, 16, 1 << 20, NULL, NULL, msg, sizeof(msg)) == -EINVAL,
	      "truncated dir");
	q2_put_be32(d + 12, 8);
	CHECK(q2_bitmap_dir_parse(d, 64, 2, 16, 1 << 20, NULL, NULL, msg, sizeof(msg)) == -EINVAL,
	      "reserved flags");
	q2_put_be32(d + 12, 0);
	q2_put_be64(d, 0x30001);
	CHECK(q2_bitmap_dir_parse(d, 64, 2, 16, 1 << 20, NULL, NULL, msg, sizeof(msg)) == -EINVAL,
	      "unaligned table");
	q2_put_be64(d, 0x30000);
	q2_put_be16(d + 18, 0);
	CHECK(q2_bitmap_dir_parse(d, 64, 2, 16, 1 << 20, NULL, NULL, msg, sizeof(msg)) == -EINVAL,
	      "empty name");
}

static void test_compression(void)
{
	static uint8_t src[65536], comp[70000], out[65536];
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i % 251 < 100 ? 'a' : i * 31);
	for (int t = 0; t <= 1; t++) {
		long n = q2_compress((enum q2_compression)t, src, sizeof(src), comp, sizeof(comp));
		if (n == -ENOTSUP) {
			printf("compression type %d not built in\n", t);
			continue;
		}
		CHECK(n > 0 && n < (long)sizeof(src), "compress %d: %ld", t, n);
		/* trailing garbage after the stream must be ignored */
		memset(comp + n, 0x5a, 512);
		CHECK(q2_decompress((enum q2_compression)t, comp, (size_t)n + 512, out,
				    sizeof(out)) == 0,
		      "decompress %d", t);
		CHECK(memcmp(src, out, sizeof(src)) == 0, "round trip %d", t);
		/* a truncated stream fails */
		CHECK(q2_decompress((enum q2_compression)t, comp, (size_t)n / 2, out, sizeof(out)) <
			      0,
		      "truncated %d", t);
	}
	memset(comp, 0xff, 1000);
	CHECK(q2_decompress(Q2_COMP_ZLIB, comp, 1000, out, sizeof(out)) == -EIO, "garbage zlib");
	/* incompressible data does not fit */
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(rand() >> 7);
	CHECK(q2_compress(Q2_COMP_ZLIB, src, sizeof(src), comp, sizeof(src) - 512) == -ENOSPC,
	      "incompressible");
}

int main(void)
{
	test_header();
	test_entries();
	test_refcounts();
	test_overlaps();
	test_snapshots();
	test_bitmap_dir();
	test_compression();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all qcow2 metadata checks passed\n");
	return 0;
}
