/*
 * test-qcow2-io.c - the qcow2 driver end to end through the core, without a daemon: images made
 * by qemu-img/qemu-io are opened with bd_node_open() and read with bd_node_io_sync(), compared
 * with `qemu-img convert -O raw`; images written here (random writes, write-zeroes, discard,
 * backing chains) must pass `qemu-img check` and compare equal to a mirror buffer.  Skips (77)
 * without qemu-img/qemu-io.  Runs the real loops; the test is the control thread.
 */
#include "blockd/internal.h"
#include "formats/qcow2-int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;
static char dir[256];

#define CHECK(cond, ...)                                                                          \
	do {                                                                                     \
		if (!(cond)) {                                                                   \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                     \
			fprintf(stderr, __VA_ARGS__);                                            \
			fprintf(stderr, "\n");                                                   \
			failures++;                                                              \
		}                                                                                \
	} while (0)

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
	char cmd[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	int r = system(cmd);
	if (r != 0)
		fprintf(stderr, "command failed (%d): %s\n", r, cmd);
	return r;
}

static unsigned char *read_file(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	unsigned char *b = malloc(n ? (size_t)n : 1);
	if (fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		fclose(f);
		return NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return b;
}

static struct bd_node *open_q(const char *img, const char *name, bool ro, const char *extra)
{
	char text[2048];
	struct bd_err err = {0};
	snprintf(text, sizeof(text),
		 "driver=qcow2,node-name=%s,read-only=%s,file.driver=file,file.filename=%s%s%s", name,
		 ro ? "on" : "off", img, extra ? "," : "", extra ? extra : "");
	json_t *o = bd_opts_parse(text, NULL, &err);
	if (!o) {
		fprintf(stderr, "parse: %s\n", err.msg);
		return NULL;
	}
	struct bd_node *n = bd_node_open(o, &err);
	json_decref(o);
	if (!n)
		fprintf(stderr, "open %s: %s\n", img, err.msg);
	return n;
}

static void close_q(const char *name)
{
	struct bd_err err = {0};
	if (bd_graph_del(name, &err) < 0)
		fprintf(stderr, "del %s: %s\n", name, err.msg);
}

/* Read the whole node in odd-sized pieces and compare with qemu-img's raw conversion. */
static void compare_with_qemu(const char *img, const char *what)
{
	char raw[512];
	size_t rlen;
	snprintf(raw, sizeof(raw), "%s.raw", img);
	if (sh("qemu-img convert -O raw '%s' '%s'", img, raw))
		return failures++, (void)0;
	unsigned char *want = read_file(raw, &rlen);
	struct bd_node *n = open_q(img, "cmp", true, NULL);
	CHECK(n, "%s: open", what);
	if (!n || !want) {
		free(want);
		return;
	}
	CHECK(bd_node_size(n) == rlen, "%s: size %llu vs %zu", what,
	      (unsigned long long)bd_node_size(n), rlen);
	unsigned char *got = malloc(rlen + 1);
	size_t step = 777 * 1024 + 13, pos = 0;
	while (pos < rlen) {
		size_t l = rlen - pos < step ? rlen - pos : step;
		int r = bd_node_io_sync(n, BD_OP_READ, pos, l, got + pos, 0);
		CHECK(r == 0, "%s: read at %zu: %d", what, pos, r);
		if (r)
			break;
		pos += l;
	}
	if (pos == rlen) {
		size_t i = 0;
		while (i < rlen && got[i] == want[i])
			i++;
		CHECK(i == rlen, "%s: differs from qemu-img at byte %zu", what, i);
	}
	free(got);
	free(want);
	close_q("cmp");
	unlink(raw);
}

static void check_clean(const char *img, const char *what)
{
	int r = sh("qemu-img check -q '%s' >/dev/null 2>&1", img);
	if (r) {
		sh("qemu-img check '%s' 2>&1 | head -20 >&2", img);
		CHECK(0, "%s: qemu-img check failed", what);
	}
}


/* Block status with the extents visible (bd_node_io_sync hides them): submit on the default
 * I/O loop, wait on a condition variable. */
struct bs_ctx {
	struct bd_node *node;
	uint64_t off, len;
	struct bd_extent ext[64];
	unsigned n;
	int ret;
	bool done;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void bs_done(struct bd_req *req, int ret)
{
	struct bs_ctx *c = req->opaque;
	c->n = req->nr_extents;
	bd_req_put(req);
	pthread_mutex_lock(&c->lock);
	c->ret = ret;
	c->done = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void bs_start(void *arg)
{
	struct bs_ctx *c = arg;
	struct bd_chan *ch = bd_node_chan(c->node, bd_loop_current());
	struct bd_req *req = bd_req_get(ch);
	req->op = BD_OP_BLOCK_STATUS;
	req->offset = c->off;
	req->len = c->len;
	req->extents = c->ext;
	req->max_extents = 64;
	req->cb = bs_done;
	req->opaque = c;
	int r = bd_submit(ch, req);
	if (r < 0) {
		bd_req_put(req);
		bs_done(&(struct bd_req){.opaque = c}, r);
	}
}

static int bs_sync(struct bd_node *n, uint64_t off, uint64_t len, struct bs_ctx *c)
{
	memset(c, 0, sizeof(*c));
	c->node = n;
	c->off = off;
	c->len = len;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	bd_loop_send(bd_io_loop_get(0), bs_start, c);
	pthread_mutex_lock(&c->lock);
	while (!c->done)
		pthread_cond_wait(&c->cond, &c->lock);
	pthread_mutex_unlock(&c->lock);
	return c->ret;
}

/* The depth and flags of the first extent at off. */
static void expect_bs(struct bd_node *n, uint64_t off, uint32_t depth, uint32_t flags,
		      const char *what)
{
	struct bs_ctx c;
	int r = bs_sync(n, off, 4096, &c);
	CHECK(r == 0 && c.n >= 1, "%s: block status %d", what, r);
	if (r == 0 && c.n >= 1)
		CHECK(c.ext[0].depth == depth && c.ext[0].flags == flags,
		      "%s: depth %u flags %u, want depth %u flags %u", what, c.ext[0].depth,
		      c.ext[0].flags, depth, flags);
}

/* ---- read matrix ---- */

static void test_read_matrix(void)
{
	static const char *const cases[] = {
		"-o cluster_size=512,compat=0.10",
		"-o cluster_size=4096,compat=1.1,refcount_bits=1",
		"-o cluster_size=65536,compat=1.1",
		"-o cluster_size=2M,compat=1.1,refcount_bits=64",
		"-o cluster_size=16384,compat=0.10",
		"-o cluster_size=32768,compat=1.1,refcount_bits=8,lazy_refcounts=on",
	};
	char img[512];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(img, sizeof(img), "%s/m%zu.qcow2", dir, i);
		if (sh("qemu-img create -q -f qcow2 %s '%s' 9M", cases[i], img) ||
		    sh("qemu-io -f qcow2 -c 'write -P 0x11 0 100k' -c 'write -P 0x22 1M 3M' "
		       "-c 'write -z 2M 64k' -c 'write -P 0x33 8191k 1k' -c 'discard 1536k 512k' "
		       "-c 'write -P 0x44 5000k 3k' -c 'write -z -u 3M 128k' '%s' >/dev/null",
		       img)) {
			failures++;
			continue;
		}
		compare_with_qemu(img, cases[i]);
	}
	/* extended L2 entries (subclusters) */
	int ext_ran = 0;
	snprintf(img, sizeof(img), "%s/ext.qcow2", dir);
	if (sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=65536 '%s' 9M", img) == 0 &&
	    sh("qemu-io -f qcow2 -c 'write -P 0x11 2k 1k' -c 'write -P 0x22 1M 70k' "
	       "-c 'write -z 2M 4k' -c 'write -P 0x33 3M 64k' -c 'write -z 3147776 2k' "
	       "-c 'discard 3153920 16k' '%s' >/dev/null",
	       img) == 0) {
		compare_with_qemu(img, "extended L2");
		ext_ran++;
		/* writable since subcluster writes (qcow2-sub.c; tests/integration/qcow2-subcluster.sh) */
		struct bd_node *w = open_q(img, "x", false, NULL);
		CHECK(w != NULL, "extended L2 opens writable");
		if (w)
			close_q("x");
		CHECK(sh("qemu-img check -q '%s'", img) == 0, "extended L2: clean after a writable open");
		struct bd_node *x = open_q(img, "x", true, NULL);
		if (x) {
			expect_bs(x, 2048, 1, BD_EXT_DATA, "ext: allocated subcluster");
			expect_bs(x, 4096, 0, BD_EXT_ZERO, "ext: unallocated subcluster");
			expect_bs(x, 2u << 20, 1, BD_EXT_ZERO, "ext: zero subcluster");
			close_q("x");
		}
	}
	snprintf(img, sizeof(img), "%s/ext-b.qcow2", dir);
	char eb[512];
	snprintf(eb, sizeof(eb), "%s/ext-base.raw", dir);
	if (sh("head -c 5M /dev/urandom > '%s' && qemu-img create -q -f qcow2 -o "
	       "extended_l2=on,cluster_size=32k -b ext-base.raw -F raw '%s' 6M",
	       eb, img) == 0 &&
	    sh("qemu-io -f qcow2 -c 'write -P 0x44 5k 3k' -c 'write -z 100k 1k' '%s' >/dev/null",
	       img) == 0)
		compare_with_qemu(img, "extended L2 over a backing file"), ext_ran++;

	CHECK(ext_ran == 2, "extended L2 images could not be made (%d)", ext_ran);

	/* compressed: zlib and zstd */
	snprintf(img, sizeof(img), "%s/src.raw", dir);
	sh("head -c 3M /dev/urandom > '%s'; yes hello | head -c 2M >> '%s'; "
	   "truncate -s 8M '%s'",
	   img, img, img);
	char c1[512], c2[512];
	snprintf(c1, sizeof(c1), "%s/cz.qcow2", dir);
	snprintf(c2, sizeof(c2), "%s/cs.qcow2", dir);
	if (sh("qemu-img convert -c -O qcow2 '%s' '%s'", img, c1) == 0)
		compare_with_qemu(c1, "compressed zlib");
	if (sh("qemu-img convert -c -O qcow2 -o compression_type=zstd '%s' '%s' 2>/dev/null",
	       img, c2) == 0)
		compare_with_qemu(c2, "compressed zstd");
}

/* ---- backing chains ---- */

static void test_backing(void)
{
	char base[512], mid[512], top[512], rawb[512];
	snprintf(rawb, sizeof(rawb), "%s/base.raw", dir);
	snprintf(base, sizeof(base), "%s/base.qcow2", dir);
	snprintf(mid, sizeof(mid), "%s/mid.qcow2", dir);
	snprintf(top, sizeof(top), "%s/top.qcow2", dir);
	if (sh("head -c 4M /dev/urandom > '%s'", rawb) ||
	    sh("qemu-img create -q -f qcow2 -b base.raw -F raw '%s' 6M", base) ||
	    sh("qemu-io -f qcow2 -c 'write -P 0x55 1M 1M' '%s' >/dev/null", base) ||
	    sh("qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 '%s' 8M", mid) ||
	    sh("qemu-io -f qcow2 -c 'write -P 0x66 1536k 1M' -c 'write -z 512k 64k' '%s' >/dev/null",
	       mid) ||
	    sh("qemu-img create -q -f qcow2 -o compat=0.10 -b '%s' -F qcow2 '%s' 8M", mid, top) ||
	    sh("qemu-io -f qcow2 -c 'write -P 0x77 3000k 5k' -c 'write -P 0x78 7M 4k' '%s' "
	       ">/dev/null",
	       top)) {
		failures++;
		return;
	}
	compare_with_qemu(top, "backing chain depth 3");

	/* block status with depth through the chain: top (1) <- mid (2) <- base.qcow2 (3) <-
	 * base.raw (4, the file under raw) */
	struct bd_node *n = open_q(top, "bs", true, NULL);
	CHECK(n, "open top");
	if (n) {
		expect_bs(n, 3000 * 1024, 1, BD_EXT_DATA, "top data");
		expect_bs(n, 1536 * 1024 + 8192, 2, BD_EXT_DATA, "mid data");
		expect_bs(n, 512 * 1024, 2, BD_EXT_ZERO, "mid zero cluster");
		expect_bs(n, 1024 * 1024, 3, BD_EXT_DATA, "base.qcow2 data");
		expect_bs(n, 0, 4, BD_EXT_DATA, "base.raw data");
		expect_bs(n, 6 * 1024 * 1024 + 4096, 3, BD_EXT_ZERO, "past the short base.qcow2");
		expect_bs(n, 5 * 1024 * 1024, 4, BD_EXT_ZERO, "past the short base.raw");
		struct bs_ctx c;
		CHECK(bs_sync(n, 0, bd_node_size(n), &c) == 0, "whole map");
		uint64_t sum = 0;
		for (unsigned i = 0; i < c.n; i++)
			sum += c.ext[i].length;
		CHECK(c.n == 64 || sum == bd_node_size(n), "map covers the disk (%u extents)", c.n);
		close_q("bs");
	}

	/* writes on top of the chain: copy-on-write from the backing */
	n = open_q(top, "w", false, NULL);
	CHECK(n, "open top rw");
	if (!n)
		return;
	size_t size = bd_node_size(n);
	unsigned char *mirror = malloc(size);
	CHECK(bd_node_io_sync(n, BD_OP_READ, 0, size, mirror, 0) == 0, "read all");
	unsigned char buf[70000];
	srand(7);
	for (int i = 0; i < 200; i++) {
		size_t len = 1 + (size_t)rand() % sizeof(buf);
		size_t off = (size_t)rand() % (size - len);
		memset(buf, 'a' + i % 26, len);
		CHECK(bd_node_io_sync(n, BD_OP_WRITE, off, len, buf, 0) == 0, "write");
		memcpy(mirror + off, buf, len);
	}
	CHECK(bd_node_io_sync(n, BD_OP_FLUSH, 0, 0, NULL, 0) == 0, "flush");
	close_q("w");
	check_clean(top, "writes over backing");
	char mr[512];
	snprintf(mr, sizeof(mr), "%s/mirror.raw", dir);
	FILE *f = fopen(mr, "wb");
	fwrite(mirror, 1, size, f);
	fclose(f);
	CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", mr, top) == 0,
	      "writes over backing: compare");
	free(mirror);
}

/* ---- writes on every geometry ---- */

static void write_workload_opts(const char *img, const char *what, unsigned seed, bool zeroes,
			       const char *opts)
{
	struct bd_node *n = open_q(img, "w", false, opts);
	CHECK(n, "%s: open rw", what);
	if (!n)
		return;
	size_t size = bd_node_size(n);
	unsigned char *mirror = malloc(size);
	CHECK(bd_node_io_sync(n, BD_OP_READ, 0, size, mirror, 0) == 0, "read all");
	unsigned char *buf = malloc(300000);
	srand(seed);
	for (int i = 0; i < 300; i++) {
		size_t len = 1 + (size_t)rand() % 300000;
		size_t off = (size_t)rand() % (size - len);
		int kind = zeroes ? rand() % 4 : 0;
		int r;
		if (kind == 1) {
			r = bd_node_io_sync(n, BD_OP_WRITE_ZEROES, off, len, NULL,
					    (rand() & 1) ? BD_REQ_MAY_UNMAP : 0);
			memset(mirror + off, 0, len);
		} else if (kind == 2) {
			/* discard: contents undefined afterwards; re-read them */
			r = bd_node_io_sync(n, BD_OP_DISCARD, off, len, NULL, 0);
			if (r == 0)
				r = bd_node_io_sync(n, BD_OP_READ, off, len, mirror + off, 0);
		} else {
			for (size_t k = 0; k < len; k++)
				buf[k] = (unsigned char)(rand() >> 3);
			r = bd_node_io_sync(n, BD_OP_WRITE, off, len, buf, 0);
			memcpy(mirror + off, buf, len);
		}
		CHECK(r == 0, "%s: op %d at %zu+%zu: %d", what, kind, off, len, r);
	}
	unsigned char *back = malloc(size);
	CHECK(bd_node_io_sync(n, BD_OP_READ, 0, size, back, 0) == 0, "read back");
	CHECK(memcmp(back, mirror, size) == 0, "%s: read back differs", what);
	free(back);
	free(buf);
	close_q("w");
	check_clean(img, what);
	char mr[512];
	snprintf(mr, sizeof(mr), "%s.mirror", img);
	FILE *f = fopen(mr, "wb");
	fwrite(mirror, 1, size, f);
	fclose(f);
	CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", mr, img) == 0, "%s: compare",
	      what);
	free(mirror);
	unlink(mr);
}

/* Flushes are skipped here (cache.no-flush) to keep the test fast; the 64k-cluster case of the
 * write matrix and the integration tests keep them. */
static void write_workload(const char *img, const char *what, unsigned seed, bool zeroes)
{
	write_workload_opts(img, what, seed, zeroes, "discard=unmap,cache.no-flush=on");
}

/* Internal snapshots: shared L2 tables and data clusters are copied on write; the snapshot
 * keeps its data. */
static void test_snapshots(void)
{
	char img[512], snap[512];
	snprintf(img, sizeof(img), "%s/snap.qcow2", dir);
	snprintf(snap, sizeof(snap), "%s/snap-s1.raw", dir);
	if (sh("qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 8M", img) ||
	    sh("qemu-io -f qcow2 -c 'write -P 0x31 0 3M' -c 'write -c -P 0x32 4M 64k' '%s' >/dev/null",
	       img) ||
	    sh("qemu-img snapshot -c s1 '%s' && qemu-img convert -l snapshot.name=s1 -O raw '%s' '%s'",
	       img, img, snap)) {
		failures++;
		return;
	}
	write_workload(img, "over an internal snapshot", 42, true);
	/* blockd reads the snapshot itself (load-snapshot) */
	char snapimg[600];
	snprintf(snapimg, sizeof(snapimg), "%s", img);
	struct bd_node *n = open_q(snapimg, "ls", true, "load-snapshot=s1");
	CHECK(n, "open load-snapshot=s1");
	if (n) {
		size_t len;
		unsigned char *want = read_file(snap, &len);
		unsigned char *got = malloc(len);
		CHECK(bd_node_size(n) == len, "snapshot size");
		CHECK(bd_node_io_sync(n, BD_OP_READ, 0, len, got, 0) == 0, "read snapshot");
		CHECK(memcmp(got, want, len) == 0, "snapshot contents through blockd");
		free(got);
		free(want);
		close_q("ls");
	}
	CHECK(open_q(snapimg, "ls", false, "load-snapshot=s1") == NULL, "load-snapshot rw refused");
	CHECK(open_q(snapimg, "ls", true, "load-snapshot=nope") == NULL, "unknown snapshot");
	char again[512];
	snprintf(again, sizeof(again), "%s/snap-s1-after.raw", dir);
	CHECK(sh("qemu-img convert -l snapshot.name=s1 -O raw '%s' '%s' && cmp -s '%s' '%s'", img,
		 again, snap, again) == 0,
	      "the snapshot's data changed");
	/* and QEMU can still delete it cleanly */
	CHECK(sh("qemu-img snapshot -d s1 '%s'", img) == 0, "snapshot delete");
	check_clean(img, "after snapshot delete");
}

/* A dirty image left by QEMU with lazy refcounts (killed after writing): refcounts are stale
 * (qemu-img check reports errors); a writable open repairs them. */
static void test_dirty_repair(void)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/dirty.qcow2", dir);
	sh("qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4096 '%s' 8M", img);
	sh("qemu-io -f qcow2 -c 'write -P 1 0 1M' -c 'write -P 2 3M 512k' -c 'write -z 3M 8k' "
	   "-c flush -c 'sigraise 9' '%s' >/dev/null 2>&1",
	   img);
	CHECK(sh("qemu-img check -q '%s' >/dev/null 2>&1", img) != 0, "the image should be dirty");
	/* read-only: served as is */
	struct bd_node *n = open_q(img, "d", true, NULL);
	CHECK(n, "read-only open of a dirty image");
	if (n)
		close_q("d");
	CHECK(sh("qemu-img check -q '%s' >/dev/null 2>&1", img) != 0, "read-only changed nothing");
	n = open_q(img, "d", false, NULL);
	CHECK(n, "writable open repairs");
	if (n)
		close_q("d");
	check_clean(img, "repaired dirty image");
	CHECK(sh("qemu-io -f qcow2 -r -c 'read -P 1 0 1M' -c 'read -P 2 3153920 516096' '%s' | "
		 "grep -c '^read' | grep -qx 2",
		 img) == 0,
	      "data after repair");
	write_workload(img, "after repair", 5, true);
}

/* Internal snapshots created and deleted by blockd: QEMU lists them, reads them, checks the
 * image clean; writes after a snapshot keep its data. */
static void save_node(struct bd_node *n, const char *path)
{
	size_t size = bd_node_size(n);
	unsigned char *b = malloc(size);
	CHECK(bd_node_io_sync(n, BD_OP_READ, 0, size, b, 0) == 0, "read all");
	FILE *f = fopen(path, "wb");
	fwrite(b, 1, size, f);
	fclose(f);
	free(b);
}

static void test_snapshot_ops(void)
{
	char img[512], a[600], b[600], c[600], tmp[600];
	struct bd_err err = {0};
	snprintf(img, sizeof(img), "%s/sops.qcow2", dir);
	snprintf(a, sizeof(a), "%s.a", img);
	snprintf(b, sizeof(b), "%s.b", img);
	snprintf(c, sizeof(c), "%s.c", img);
	snprintf(tmp, sizeof(tmp), "%s.tmp", img);
	sh("qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 4M", img);
	sh("qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -c -P 0x12 2M 64k' '%s' >/dev/null", img);
	struct bd_node *n = open_q(img, "so", false, NULL);
	CHECK(n, "open");
	if (!n)
		return;
	save_node(n, a);
	bd_node_drain(n);
	CHECK(q2_snapshot_create(n, NULL, "first", &err) == 0, "create first: %s", err.msg);
	unsigned char buf[20000];
	memset(buf, 0x22, sizeof(buf));
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 1000, sizeof(buf), buf, 0) == 0, "write after");
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 2 * 1024 * 1024 + 5000, sizeof(buf), buf, 0) == 0,
	      "write over compressed after");
	save_node(n, b);
	bd_node_drain(n);
	CHECK(q2_snapshot_create(n, "77", "second", &err) == 0, "create second: %s", err.msg);
	bd_err_clear(&err);
	CHECK(q2_snapshot_create(n, NULL, "second", &err) < 0, "duplicate name refused");
	bd_err_clear(&err);
	memset(buf, 0x33, sizeof(buf));
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 3000, sizeof(buf), buf, 0) == 0, "write after 2");
	save_node(n, c);
	close_q("so");
	check_clean(img, "after two snapshots");
	CHECK(sh("qemu-img snapshot -l '%s' | grep -q first && qemu-img snapshot -l '%s' | grep -q "
		 "second",
		 img, img) == 0,
	      "qemu-img lists them");
	CHECK(sh("qemu-img convert -l snapshot.name=first -O raw '%s' '%s' && cmp -s '%s' '%s'", img,
		 tmp, tmp, a) == 0,
	      "snapshot 'first' holds the data at its creation");
	CHECK(sh("qemu-img convert -l snapshot.name=second -O raw '%s' '%s' && cmp -s '%s' '%s'",
		 img, tmp, tmp, b) == 0,
	      "snapshot 'second' holds the data at its creation");
	CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", c, img) == 0, "active data");
	/* delete the first: the second and the active image keep their data */
	n = open_q(img, "so", false, NULL);
	CHECK(n, "reopen");
	if (!n)
		return;
	bd_node_drain(n);
	CHECK(q2_snapshot_delete(n, NULL, "first", NULL, &err) == 0, "delete first: %s", err.msg);
	close_q("so");
	check_clean(img, "after deleting first");
	CHECK(sh("qemu-img snapshot -l '%s' | grep -q first", img) != 0, "first is gone");
	CHECK(sh("qemu-img convert -l snapshot.name=second -O raw '%s' '%s' && cmp -s '%s' '%s'",
		 img, tmp, tmp, b) == 0,
	      "snapshot 'second' intact");
	CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", c, img) == 0, "active intact");
	n = open_q(img, "so", false, NULL);
	if (n) {
		bd_node_drain(n);
		CHECK(q2_snapshot_delete(n, "77", NULL, NULL, &err) == 0, "delete second: %s", err.msg);
		close_q("so");
	}
	check_clean(img, "after deleting both");
	CHECK(sh("qemu-img compare -q -f raw -F qcow2 '%s' '%s'", c, img) == 0, "active intact 2");
	/* no leaks either: every cluster the snapshots held is free again */
	CHECK(sh("qemu-img check '%s' 2>&1 | grep -q leaked", img) != 0, "no leaks");
	/* QEMU's snapshot on blockd-written metadata, then blockd deletes it */
	sh("qemu-img snapshot -c q1 '%s'", img);
	n = open_q(img, "so", false, NULL);
	if (n) {
		bd_node_drain(n);
		CHECK(q2_snapshot_delete(n, NULL, "q1", NULL, &err) == 0, "delete QEMU's: %s", err.msg);
		close_q("so");
	}
	check_clean(img, "after deleting QEMU's snapshot");
}

/* Persistent bitmaps stay: blockd marks them in-use (not synced) and keeps their clusters;
 * a dirty lazy-refcount image with bitmaps is repaired counting the bitmaps' clusters. */
static void test_bitmaps(void)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/bm.qcow2", dir);
	if (sh("qemu-img create -q -f qcow2 -o cluster_size=4096 '%s' 8M && "
	       "qemu-img bitmap --add --enable '%s' b0 && qemu-img bitmap --add '%s' b1 && "
	       "qemu-io -f qcow2 -c 'write -P 1 0 1M' '%s' >/dev/null",
	       img, img, img, img)) {
		failures++;
		return;
	}
	write_workload(img, "with bitmaps", 11, true);
	CHECK(sh("qemu-img info --output=json '%s' | grep -c in-use | grep -qx 2", img) == 0,
	      "both bitmaps in-use");
	CHECK(sh("qemu-img info '%s' | grep -q 'name: b1'", img) == 0, "bitmaps kept");
	CHECK(sh("qemu-img check '%s' 2>&1 | grep -q leaked", img) != 0, "no leaked clusters");
	/* QEMU can still remove them */
	CHECK(sh("qemu-img bitmap --remove '%s' b0", img) == 0, "QEMU removes an in-use bitmap");
	check_clean(img, "after removing a bitmap");

	/* dirty (lazy refcounts, QEMU killed) with bitmaps: repaired with their clusters */
	snprintf(img, sizeof(img), "%s/bm-dirty.qcow2", dir);
	sh("qemu-img create -q -f qcow2 -o cluster_size=4096,lazy_refcounts=on '%s' 8M && "
	   "qemu-img bitmap --add --enable '%s' b0",
	   img, img);
	sh("qemu-io -f qcow2 -c 'write -P 1 0 1M' -c flush -c 'sigraise 9' '%s' >/dev/null 2>&1", img);
	struct bd_node *n = open_q(img, "bd", false, NULL);
	CHECK(n, "writable open of a dirty image with bitmaps");
	if (n)
		close_q("bd");
	check_clean(img, "repaired dirty image with bitmaps");
	CHECK(sh("qemu-img check '%s' 2>&1 | grep -q leaked", img) != 0, "no leaks after repair");
	CHECK(sh("qemu-img info '%s' | grep -q 'name: b0'", img) == 0, "bitmap kept after repair");
}

/* A tiny L2 cache (16 tables) on an image with hundreds of L2 tables: eviction under load. */
static void test_small_cache(void)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/small-cache.qcow2", dir);
	if (sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 24M", img)) {
		failures++;
		return;
	}
	write_workload_opts(img, "l2-cache-size=1", 77, true, "discard=unmap,l2-cache-size=1");
	compare_with_qemu(img, "after small-cache writes");
}

static void test_write_matrix(void)
{
	static const char *const cases[] = {
		"-o cluster_size=512,compat=0.10",
		"-o cluster_size=4096,refcount_bits=1",
		"-o cluster_size=65536",
		"-o cluster_size=65536,lazy_refcounts=on",
		"-o cluster_size=2M,refcount_bits=64",
		"-o cluster_size=8192,refcount_bits=4",
		/* extended L2 entries: subcluster zero bits, whole-cluster discard */
		"-o cluster_size=16384,extended_l2=on",
		"-o cluster_size=65536,extended_l2=on,refcount_bits=1",
	};
	char img[512];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(img, sizeof(img), "%s/w%zu.qcow2", dir, i);
		if (sh("qemu-img create -q -f qcow2 %s '%s' 24M", cases[i], img)) {
			failures++;
			continue;
		}
		sh("qemu-io -f qcow2 -c 'write -P 0x5a 0 2M' '%s' >/dev/null", img);
		write_workload_opts(img, cases[i], (unsigned)i + 1, strstr(cases[i], "0.10") == NULL,
				    i == 2 ? "discard=unmap" : "discard=unmap,cache.no-flush=on");
	}
	/* compressed image: overwrite compressed clusters */
	char c1[512];
	snprintf(c1, sizeof(c1), "%s/cz.qcow2", dir);
	if (access(c1, F_OK) == 0)
		write_workload(c1, "over compressed", 99, true);
}

static void test_hostile(void)
{
	char img[512];
	snprintf(img, sizeof(img), "%s/bad.qcow2", dir);
	/* L1 table offset past the end of the file */
	sh("qemu-img create -q -f qcow2 '%s' 1M && printf '\\000\\000\\000\\000\\020\\000\\000\\000' | "
	   "dd of='%s' bs=1 seek=40 conv=notrunc 2>/dev/null",
	   img, img);
	CHECK(open_q(img, "bad", true, NULL) == NULL, "L1 past the end must be refused");
	/* refcount table overlapping the header */
	sh("qemu-img create -q -f qcow2 '%s' 1M && printf '\\000\\000\\000\\000\\000\\000\\000\\000' | "
	   "dd of='%s' bs=1 seek=48 conv=notrunc 2>/dev/null",
	   img, img);
	CHECK(open_q(img, "bad", true, NULL) == NULL, "reftable at 0 must be refused");
	/* unknown incompatible feature */
	sh("qemu-img create -q -f qcow2 '%s' 1M && printf '\\000\\000\\000\\000\\000\\000\\001\\000' | "
	   "dd of='%s' bs=1 seek=72 conv=notrunc 2>/dev/null",
	   img, img);
	CHECK(open_q(img, "bad", true, NULL) == NULL, "unknown incompatible feature refused");
}


/* ---- blockdev-create ---- */

static int create_img(const char *img, const char *json_extra)
{
	char text[2048];
	struct bd_err err = {0};
	int r;

	sh("rm -f '%s'; touch '%s'", img, img);
	snprintf(text, sizeof(text), "driver=file,node-name=cf,filename=%s", img);
	json_t *o = bd_opts_parse(text, NULL, &err);
	struct bd_node *f = bd_node_open(o, &err);
	json_decref(o);
	if (!f) {
		fprintf(stderr, "open file: %s\n", err.msg);
		return -1;
	}
	snprintf(text, sizeof(text), "{\"file\": \"cf\"%s}", json_extra);
	o = json_loads(text, 0, NULL);
	r = bd_driver_find("qcow2")->create(f, o, &err);
	json_decref(o);
	if (r < 0)
		fprintf(stderr, "create %s: %s\n", img, err.msg);
	close_q("cf");
	return r;
}

static void test_create(void)
{
	static const struct {
		const char *json;
		const char *info; /* expected in qemu-img info */
	} cases[] = {
		{", \"size\": 10485760", "cluster_size: 65536"},
		{", \"size\": 10485760, \"version\": \"v2\", \"cluster-size\": 512",
		 "compat: 0.10"},
		{", \"size\": 33554432, \"cluster-size\": 4096, \"refcount-bits\": 1",
		 "refcount bits: 1"},
		{", \"size\": 8388608, \"lazy-refcounts\": true, \"refcount-bits\": 64",
		 "lazy refcounts: true"},
		{", \"size\": 8388608, \"preallocation\": \"metadata\", \"cluster-size\": 8192",
		 "cluster_size: 8192"},
		{", \"size\": 4194304, \"preallocation\": \"falloc\"", "virtual size: 4 MiB"},
		{", \"size\": 4194304, \"preallocation\": \"full\", \"cluster-size\": 2097152",
		 "cluster_size: 2097152"},
		{", \"size\": 8388608, \"compression-type\": \"zstd\"", "compression type: zstd"},
		{", \"size\": 8388608, \"backing-file\": \"base.raw\", \"backing-fmt\": \"raw\"",
		 "backing file format: raw"},
		{", \"size\": 1073741824, \"cluster-size\": 512", "virtual size: 1 GiB"},
	};
	char img[512], info[600];
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(img, sizeof(img), "%s/c%zu.qcow2", dir, i);
		snprintf(info, sizeof(info), "%s.info", img);
		CHECK(create_img(img, cases[i].json) == 0, "create %s", cases[i].json);
		check_clean(img, cases[i].json);
		sh("qemu-img info '%s' > '%s' 2>&1", img, info);
		CHECK(sh("grep -q '%s' '%s'", cases[i].info, info) == 0, "%s: info lacks '%s'",
		      cases[i].json, cases[i].info);
		/* QEMU can write it, and blockd can write it */
		CHECK(sh("qemu-io -f qcow2 -c 'write -P 9 0 1k' -c 'read -P 9 0 1k' '%s' >/dev/null",
			 img) == 0,
		      "qemu-io on %s", cases[i].json);
		check_clean(img, cases[i].json);
		/* blockd writes on a few of them (the rest are covered by the write matrix) */
		if (!strstr(cases[i].json, "backing") && i % 3 == 1)
			write_workload(img, cases[i].json, (unsigned)(100 + i), true);
	}
	/* refused options */
	snprintf(img, sizeof(img), "%s/bad.qcow2", dir);
	CHECK(create_img(img, ", \"size\": 1048576, \"extended-l2\": true, \"cluster-size\": 4096") <
		      0,
	      "extl2 with 4k clusters");
	CHECK(create_img(img, ", \"size\": 1048576, \"version\": \"v2\", \"lazy-refcounts\": true") <
		      0,
	      "v2 lazy");
	CHECK(create_img(img, ", \"size\": 1048576, \"cluster-size\": 1000") < 0, "bad cs");
	CHECK(create_img(img, ", \"size\": 1048576, \"refcount-bits\": 3") < 0, "bad rb");
	CHECK(create_img(img, ", \"size\": 1048576, \"backing-fmt\": \"raw\"") < 0,
	      "fmt without file");
	CHECK(create_img(img, ", \"size\": 1000") < 0, "unaligned size");
}

/* ---- resize ---- */

static void test_resize(void)
{
	char img[512];
	struct bd_err err = {0};
	snprintf(img, sizeof(img), "%s/rs.qcow2", dir);
	/* 512-byte clusters: growing from 1M to 64M needs a bigger L1 table */
	sh("qemu-img create -q -f qcow2 -o cluster_size=512 '%s' 1M", img);
	sh("qemu-io -f qcow2 -c 'write -P 7 0 64k' '%s' >/dev/null", img);
	struct bd_node *n = open_q(img, "rs", false, NULL);
	CHECK(n, "open for resize");
	if (!n)
		return;
	CHECK(bd_node_resize(n, 64u << 20, &err) == 0, "grow: %s", err.msg);
	CHECK(bd_node_size(n) == 64u << 20, "grown size");
	unsigned char buf[8192];
	memset(buf, 0x3c, sizeof(buf));
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, (64u << 20) - 8192, 8192, buf, 0) == 0,
	      "write at the new end");
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 30u << 20, 8192, buf, 0) == 0, "write in the middle");
	/* shrink over data: refused; shrink over nothing: allowed */
	bd_err_clear(&err);
	CHECK(bd_node_resize(n, 16u << 20, &err) < 0, "shrink over data must fail");
	bd_err_clear(&err);
	CHECK(bd_node_io_sync(n, BD_OP_DISCARD, 30u << 20, 8192, NULL, 0) == 0, "discard");
	close_q("rs");
	n = open_q(img, "rs", false, "discard=unmap");
	CHECK(bd_node_io_sync(n, BD_OP_DISCARD, (64u << 20) - 8192, 8192, NULL, 0) == 0, "discard");
	CHECK(bd_node_io_sync(n, BD_OP_DISCARD, 30u << 20, 8192, NULL, 0) == 0, "discard");
	CHECK(bd_node_resize(n, 16u << 20, &err) == 0, "shrink: %s", err.msg);
	close_q("rs");
	check_clean(img, "resize");
	CHECK(sh("qemu-img info '%s' | grep -q 'virtual size: 16 MiB'", img) == 0, "size 16M");
	CHECK(sh("out=$(qemu-io -f qcow2 -r -c 'read -P 7 0 64k' '%s'); "
		 "echo \"$out\" | grep -q '^read 65536/65536' && ! echo \"$out\" | grep -q verification",
		 img) == 0,
	      "data kept");
}

int main(void)
{
	struct bd_err err = {0};
	if (system("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") != 0) {
		printf("SKIP: qemu-img/qemu-io not installed\n");
		return 77;
	}
	snprintf(dir, sizeof(dir), "%s/blockd-qcow2-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	if (!bd_loop_main_init(&err) || bd_default_io_loop_create(&err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	test_hostile();
	test_read_matrix();
	test_backing();
	test_write_matrix();
	test_create();
	test_resize();
	test_snapshots();
	test_dirty_repair();
	test_snapshot_ops();
	test_bitmaps();
	test_small_cache();
	bd_graph_close_all();
	bd_iothreads_destroy_all();
	if (!getenv("BD_KEEP_TMP"))
		sh("rm -rf '%s'", dir);
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all qcow2 I/O checks passed\n");
	return 0;
}
