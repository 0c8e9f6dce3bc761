/*
 * test-request.c - unit tests of the core request path (blockd/request.c) with an in-memory
 * driver whose limits each test sets: alignment bouncing and read-modify-write, splitting at
 * max_transfer, write-zeroes and FUA emulation, range and read-only checks, detect-zeroes,
 * discard alignment, block-status emulation.  Runs the real loops: requests are submitted on
 * the default I/O loop and the test (main thread) waits for them.
 */
#include "blockd/internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MEM_SIZE (4u << 20)

struct seen {
	enum bd_op op;
	uint64_t offset, len;
	uint32_t flags;
};

/* The memory driver.  Its node-private area is the image. */
struct mem {
	unsigned char *data;
	struct seen log[4096];
	unsigned nlog;
	bool bad;
};

static struct bd_limits want; /* the limits the next open declares */

static int mem_open(struct bd_node *node, json_t *opts, struct bd_limits *lim,
		    struct bd_err *err)
{
	struct mem *m = bd_node_priv(node);
	(void)opts;
	(void)err;
	m->data = calloc(1, MEM_SIZE);
	*lim = want;
	lim->size = MEM_SIZE;
	return 0;
}

static void mem_close(struct bd_node *node)
{
	struct mem *m = bd_node_priv(node);
	free(m->data);
}

static void mem_done(struct bd_defer *d)
{
	struct bd_req *req = bd_container_of(d, struct bd_req, defer);
	bd_req_complete(req, 0);
}

static int mem_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req)
{
	struct mem *m = bd_node_priv(node);
	const struct bd_limits *lim = bd_node_limits(node);
	(void)ch;

	if (m->nlog < BD_ARRAY_SIZE(m->log))
		m->log[m->nlog++] = (struct seen){req->op, req->offset, req->len, req->flags};
	/* the core promised: only aligned, in-limit requests reach us */
	if (req->op != BD_OP_FLUSH) {
		uint64_t a = lim->req_align;
		if ((req->offset % a) || (req->len % a))
			m->bad = true;
		if (req->offset + req->len > lim->size)
			m->bad = true;
	}
	if ((req->op == BD_OP_READ || req->op == BD_OP_WRITE) && lim->max_transfer &&
	    req->len > lim->max_transfer)
		m->bad = true;
	switch (req->op) {
	case BD_OP_READ:
		bd_iov_from_buf(req->iov, req->iovcnt, 0, m->data + req->offset, req->len);
		break;
	case BD_OP_WRITE:
		bd_iov_to_buf(req->iov, req->iovcnt, 0, m->data + req->offset, req->len);
		break;
	case BD_OP_WRITE_ZEROES:
	case BD_OP_DISCARD:
		memset(m->data + req->offset, 0, req->len);
		break;
	case BD_OP_BLOCK_STATUS:
		req->extents[0] = (struct bd_extent){req->len, BD_EXT_DATA, 1};
		req->nr_extents = 1;
		break;
	default:
		break;
	}
	/* complete on a later iteration, as a real driver does */
	req->defer.fn = mem_done;
	bd_loop_defer(bd_chan_loop(ch), &req->defer);
	return 0;
}

static const struct bd_driver mem_driver = {
	.name = "test-mem",
	.kind = BD_DRV_PROTOCOL,
	.node_size = sizeof(struct mem),
	.open = mem_open,
	.close = mem_close,
	.submit = mem_submit,
};

static int failures;
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static struct bd_node *open_mem(const char *name, const char *extra_json)
{
	struct bd_err err = {0};
	char text[512];
	snprintf(text, sizeof(text), "{\"node-name\":\"%s\"%s%s}", name, extra_json ? "," : "",
		 extra_json ? extra_json : "");
	json_t *o = json_loads(text, 0, NULL);
	struct bd_node *n = bd_node_open_driver(&mem_driver, o, &err);
	json_decref(o);
	if (!n) {
		fprintf(stderr, "open failed: %s\n", err.msg);
		exit(1);
	}
	return n;
}

static struct mem *M(struct bd_node *n)
{
	return bd_node_priv(n);
}

static void fill(unsigned char *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (unsigned char)(seed + i * 7 + (i >> 9));
}

static void test_unaligned_rmw(void)
{
	want = (struct bd_limits){.ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) |
					 BD_OP_BIT(BD_OP_FLUSH),
				  .req_align = 4096,
				  .buf_align = 4096,
				  .native_fua = true};
	struct bd_node *n = open_mem("rmw", NULL);
	unsigned char *buf = malloc(10000), *back = malloc(10000);

	fill(M(n)->data, MEM_SIZE, 1);
	fill(buf, 10000, 99);
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 1000, 10000, buf, 0) == 0);
	CHECK(memcmp(M(n)->data + 1000, buf, 10000) == 0);
	/* the neighbours survived the read-modify-write */
	unsigned char ref[1000];
	fill(ref, 1000, 1);
	CHECK(memcmp(M(n)->data, ref, 1000) == 0);
	CHECK(bd_node_io_sync(n, BD_OP_READ, 1000, 10000, back, 0) == 0);
	CHECK(memcmp(back, buf, 10000) == 0);
	/* a misaligned buffer at an aligned offset is bounced */
	CHECK(bd_node_io_sync(n, BD_OP_READ, 8192, 4096, back + 1, 0) == 0);
	CHECK(memcmp(back + 1, M(n)->data + 8192, 4096) == 0);
	CHECK(!M(n)->bad);
	free(buf);
	free(back);
	struct bd_err err = {0};
	CHECK(bd_graph_del("rmw", &err) == 0);
}

/* Two unaligned writes to different bytes of one block, submitted together on one loop. */
struct pair_ctx {
	struct bd_node *node;
	unsigned char a[100], b[100];
	struct iovec ia, ib;
	int done, ret[2];
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void pair_cb(struct bd_req *req, int ret)
{
	struct pair_ctx *c = req->opaque;
	pthread_mutex_lock(&c->lock);
	c->ret[c->done++] = ret;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
	bd_req_put(req);
}

static void pair_start(void *arg)
{
	struct pair_ctx *c = arg;
	struct bd_chan *ch = bd_node_chan(c->node, bd_loop_current());
	for (int i = 0; i < 2; i++) {
		struct bd_req *r = bd_req_get(ch);
		r->op = BD_OP_WRITE;
		r->offset = i ? 300 : 10;
		r->len = 100;
		r->iov = i ? &c->ib : &c->ia;
		r->iovcnt = 1;
		r->cb = pair_cb;
		r->opaque = c;
		if (bd_submit(ch, r) < 0)
			abort();
	}
}

static void test_rmw_serialised(void)
{
	want = (struct bd_limits){.ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE),
				  .req_align = 4096,
				  .buf_align = 1};
	struct bd_node *n = open_mem("pair", NULL);
	struct pair_ctx c = {.node = n};
	memset(c.a, 0xaa, sizeof(c.a));
	memset(c.b, 0xbb, sizeof(c.b));
	c.ia = (struct iovec){c.a, 100};
	c.ib = (struct iovec){c.b, 100};
	pthread_mutex_init(&c.lock, NULL);
	pthread_cond_init(&c.cond, NULL);
	bd_loop_send(bd_io_loop_get(0), pair_start, &c);
	pthread_mutex_lock(&c.lock);
	while (c.done < 2)
		pthread_cond_wait(&c.cond, &c.lock);
	pthread_mutex_unlock(&c.lock);
	CHECK(c.ret[0] == 0 && c.ret[1] == 0);
	CHECK(M(n)->data[10] == 0xaa && M(n)->data[109] == 0xaa);
	CHECK(M(n)->data[300] == 0xbb && M(n)->data[399] == 0xbb);
	CHECK(M(n)->data[9] == 0 && M(n)->data[110] == 0 && M(n)->data[400] == 0);
	struct bd_err err = {0};
	CHECK(bd_graph_del("pair", &err) == 0);
}

static void test_split_and_zero_emulation(void)
{
	want = (struct bd_limits){.ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) |
					 BD_OP_BIT(BD_OP_FLUSH),
				  .req_align = 512,
				  .buf_align = 1,
				  .max_transfer = 65536,
				  .native_fua = false};
	struct bd_node *n = open_mem("split", NULL);
	size_t len = 1 << 20;
	unsigned char *buf = malloc(len);

	fill(buf, len, 3);
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 4096, len, buf, 0) == 0);
	CHECK(memcmp(M(n)->data + 4096, buf, len) == 0);
	unsigned writes = 0;
	for (unsigned i = 0; i < M(n)->nlog; i++)
		if (M(n)->log[i].op == BD_OP_WRITE)
			writes++;
	CHECK(writes == 16);

	/* no native write-zeroes: zero buffers are written */
	M(n)->nlog = 0;
	/* unaligned length: emulated by writing zeroes, the bytes after it survive */
	CHECK(bd_node_io_sync(n, BD_OP_WRITE_ZEROES, 4096, 200000, NULL, 0) == 0);
	CHECK(bd_buf_is_zero(M(n)->data + 4096, 200000));
	CHECK(M(n)->data[4096 + 200000] == buf[200000]);
	CHECK(bd_node_io_sync(n, BD_OP_WRITE_ZEROES, 8192, 131072, NULL, 0) == 0);
	CHECK(bd_buf_is_zero(M(n)->data + 8192, 131072));
	CHECK(bd_node_io_sync(n, BD_OP_WRITE_ZEROES, 8192, 4096, NULL, BD_REQ_NO_FALLBACK) ==
	      -ENOTSUP);

	/* FUA without native support: write, then flush */
	M(n)->nlog = 0;
	CHECK(bd_node_io_sync(n, BD_OP_WRITE, 0, 512, buf, BD_REQ_FUA) == 0);
	CHECK(M(n)->nlog == 2 && M(n)->log[0].op == BD_OP_WRITE &&
	      M(n)->log[1].op == BD_OP_FLUSH);

	/* range checks */
	CHECK(bd_node_io_sync(n, BD_OP_READ, MEM_SIZE - 512, 1024, buf, 0) == -EINVAL);
	CHECK(bd_node_io_sync(n, BD_OP_READ, UINT64_MAX - 10, 512, buf, 0) == -EINVAL);

	/* block status emulated as data */
	CHECK(bd_node_io_sync(n, BD_OP_BLOCK_STATUS, 0, 4096, NULL, 0) == 0);
	CHECK(!M(n)->bad);
	free(buf);
	struct bd_err err = {0};
	CHECK(bd_graph_del("split", &err) == 0);
}

static void test_read_only_and_discard(void)
{
	want = (struct bd_limits){.ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE) |
					 BD_OP_BIT(BD_OP_DISCARD) |
					 BD_OP_BIT(BD_OP_WRITE_ZEROES),
				  .req_align = 4096,
				  .buf_align = 1};
	struct bd_node *ro = open_mem("ro", "\"read-only\":true");
	unsigned char buf[4096] = {0};
	CHECK(bd_node_io_sync(ro, BD_OP_WRITE, 0, 4096, buf, 0) == -EPERM);
	CHECK(bd_node_io_sync(ro, BD_OP_DISCARD, 0, 4096, NULL, 0) == -EPERM);
	CHECK(bd_node_io_sync(ro, BD_OP_READ, 0, 4096, buf, 0) == 0);

	struct bd_node *d = open_mem("disc", "\"discard\":\"unmap\",\"detect-zeroes\":\"unmap\"");
	memset(M(d)->data, 0x55, MEM_SIZE);
	/* an unaligned discard is shrunk to the whole blocks inside it */
	CHECK(bd_node_io_sync(d, BD_OP_DISCARD, 100, 3 * 4096, NULL, 0) == 0);
	CHECK(M(d)->nlog == 1 && M(d)->log[0].offset == 4096 && M(d)->log[0].len == 8192);
	CHECK(M(d)->data[4095] == 0x55 && M(d)->data[4096] == 0 && M(d)->data[3 * 4096] == 0x55);
	/* an all-zero write becomes write-zeroes with unmap allowed */
	M(d)->nlog = 0;
	CHECK(bd_node_io_sync(d, BD_OP_WRITE, 16384, 4096, buf, 0) == 0);
	CHECK(M(d)->nlog == 1 && M(d)->log[0].op == BD_OP_WRITE_ZEROES &&
	      (M(d)->log[0].flags & BD_REQ_MAY_UNMAP));

	struct bd_node *ign = open_mem("ign", NULL);
	CHECK(bd_node_io_sync(ign, BD_OP_DISCARD, 0, 8192, NULL, 0) == 0);
	CHECK(M(ign)->nlog == 0); /* discard=ignore by default */
	struct bd_err err = {0};
	CHECK(bd_graph_del("ro", &err) == 0);
	CHECK(bd_graph_del("disc", &err) == 0);
	CHECK(bd_graph_del("ign", &err) == 0);
}

static void test_options(void)
{
	struct bd_err err = {0};
	json_t *o = bd_opts_parse("driver=raw,file.driver=file,file.filename=/a,,b,cache.direct=on",
				  NULL, &err);
	CHECK(o != NULL);
	if (o) {
		json_t *file = json_object_get(o, "file");
		CHECK(!strcmp(json_string_value(json_object_get(file, "filename")), "/a,b"));
		bool direct = false;
		json_t *cache;
		CHECK(bd_opts_obj(o, "cache", &cache, &err) == 0);
		CHECK(bd_opts_bool(cache, "direct", &direct, &err) == 0 && direct);
		/* driver and file were not read: the check names the first */
		CHECK(bd_opts_check_unused(o, NULL, &err) == -EINVAL);
		json_decref(o);
	}
	bd_err_clear(&err);
	o = bd_opts_parse("iothread,id=io1,x.0=a,x.1=b", "qom-type", &err);
	CHECK(o && !strcmp(json_string_value(json_object_get(o, "qom-type")), "iothread"));
	CHECK(o && json_is_array(json_object_get(o, "x")) &&
	      json_array_size(json_object_get(o, "x")) == 2);
	json_decref(o);
	bd_err_clear(&err);
	CHECK(bd_opts_parse("a=1,novalue", NULL, &err) == NULL && err.code == -EINVAL);
	bd_err_clear(&err);
	o = bd_opts_parse("size=1.5G,n=12k,bad=12q", NULL, &err);
	uint64_t v = 0;
	CHECK(bd_opts_size(o, "size", &v, &err) == 0 && v == 1610612736ull);
	CHECK(bd_opts_size(o, "n", &v, &err) == 0 && v == 12288);
	CHECK(bd_opts_size(o, "bad", &v, &err) == -EINVAL);
	json_decref(o);
	bd_err_clear(&err);
	o = bd_opts_parse("{\"a\": {\"b\": true}}", NULL, &err);
	CHECK(o && json_is_true(json_object_get(json_object_get(o, "a"), "b")));
	json_decref(o);
	bd_err_clear(&err);
	CHECK(bd_opts_parse("{\"a\": ", NULL, &err) == NULL);
}

int main(void)
{
	struct bd_err err = {0};
	if (!bd_loop_main_init(&err) || bd_default_io_loop_create(&err) < 0) {
		fprintf(stderr, "%s\n", err.msg);
		return 1;
	}
	test_options();
	test_unaligned_rmw();
	test_rmw_serialised();
	test_split_and_zero_emulation();
	test_read_only_and_discard();
	bd_graph_close_all();
	bd_iothreads_destroy_all();
	if (failures) {
		fprintf(stderr, "%d check(s) failed\n", failures);
		return 1;
	}
	printf("all request-path checks passed\n");
	return 0;
}
