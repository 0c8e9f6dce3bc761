/*
 * vub-client.c - a small vhost-user-blk front end for tests and benchmarks: its commands and
 * options.  The userspace virtio driver underneath (vub-fe.c) connects to a vhost-user-blk socket
 * (blockd's or qemu-storage-daemon's), shares a memfd as "guest memory", sets up split or packed
 * rings and submits virtio-blk requests.
 *
 * usage: vub-client SOCKET COMMAND [options]
 *   info                         features, config space, serial
 *   write OFF LEN FILE           write LEN bytes of FILE at OFF;  read OFF LEN FILE: the reverse
 *   discard|zero|zero-unmap OFF LEN [OFF LEN...]   one request, up to 4 segments;  flush
 *   verify                       self-check: write/read back on every queue, discard, zeroes,
 *                                flush, GET_ID, out-of-range and read-only errors
 *   hostile                      bad descriptors and bad messages; the back end must survive
 *   bench [--rw randread|randwrite|read|write] [--bs N] [--qd N] [--time S] [--queues N]
 *   stress [--bs N] [--qd N] [--area SIZE] [--passes N] [--expect FILE]
 *                                passes of writes over the area (a pattern per pass and block),
 *                                every request checked to complete once with status OK; then the
 *                                area is read back and compared; FILE gets the expected bytes
 *   stop-under-load [--qd N]     N writes in flight, then a memory table change (the back end
 *                                stops the queues): all must complete before the ack
 * Options for every command: --queues N (default 1), --num N (ring size, default 256),
 * --packed (packed virtqueues), --inflight (in-flight tracking: GET/SET_INFLIGHT_FD),
 * --reconnect (when the back end goes away, connect again and set everything up as QEMU does,
 * with the in-flight region kept; implies --inflight).
 * Single-threaded per queue: one thread per queue in bench.  Exit 0 on success.
 */
#include "tests/vub/vub-fe.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- commands ------------------------------------------------------------------------------- */
static int cmd_info(void)
{
	char id[21] = {0};
	int st = sync_req(0, VIRTIO_BLK_T_GET_ID, 0, 20, true);
	memcpy(id, vqs[0].slots[0].buf, 20);
	printf("features=0x%" PRIx64 " protocol=0x%" PRIx64 "\n", features, pfeatures);
	printf("capacity=%" PRIu64 " blk_size=%u seg_max=%u size_max=%u num_queues=%u wce=%u "
	       "ro=%d discard=%d write_zeroes=%d\n",
	       cfg.capacity, cfg.blk_size, cfg.seg_max, cfg.size_max, cfg.num_queues, cfg.wce,
	       !!(features & (1ull << VIRTIO_BLK_F_RO)),
	       !!(features & (1ull << VIRTIO_BLK_F_DISCARD)),
	       !!(features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES)));
	printf("max_discard_seg=%u max_write_zeroes_seg=%u secure_erase=%d\n", cfg.max_discard_seg,
	       cfg.max_write_zeroes_seg, !!(features & (1ull << VIRTIO_BLK_F_SECURE_ERASE)));
	printf("serial=%s (status %d)\n", id, st);
	return 0;
}

static int cmd_rw(bool wr, uint64_t off, uint64_t len, const char *file)
{
	int fd = open(file, wr ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("open %s: %s", file, strerror(errno));
	for (uint64_t done = 0; done < len;) {
		uint32_t n = (uint32_t)(len - done > SLOT_BUF ? SLOT_BUF : len - done);
		if (wr && pread(fd, vqs[0].slots[0].buf, n, (off_t)done) != (ssize_t)n)
			die("short read of %s", file);
		int st = sync_req(0, wr ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, off + done, n, !wr);
		if (st)
			die("%s at %" PRIu64 ": status %d", wr ? "write" : "read", off + done, st);
		if (!wr && pwrite(fd, vqs[0].slots[0].buf, n, (off_t)done) != (ssize_t)n)
			die("write %s", file);
		done += n;
	}
	close(fd);
	return 0;
}

static int fails;
#define CHECK(cond, ...)                                                                           \
	do {                                                                                       \
		if (cond)                                                                          \
			printf("ok: " __VA_ARGS__);                                                \
		else {                                                                             \
			printf("FAILED: " __VA_ARGS__);                                            \
			fails++;                                                                   \
		}                                                                                  \
		printf("\n");                                                                      \
	} while (0)

/* Several segments in one request: zeroes exactly in them, the pattern around them. */
static void check_multi_segment(void)
{
	static const uint64_t ol[6] = {2 << 20, 4096, (2 << 20) + 65536, 8192, (2 << 20) + 196608,
				       65536};
	uint64_t many[2 * 40];
	uint8_t *b = vqs[0].slots[0].buf;
	bool good = true;

	if (cfg.max_write_zeroes_seg < 3) {
		printf("skipped: multi-segment write zeroes (max_write_zeroes_seg=%u)\n",
		       cfg.max_write_zeroes_seg);
		return;
	}
	memset(b, 0xaa, 262144);
	CHECK(sync_req(0, VIRTIO_BLK_T_OUT, 2 << 20, 262144, false) == 0, "pattern written");
	CHECK(multi_req(0, VIRTIO_BLK_T_WRITE_ZEROES, 3, ol, 0, 0) == 0,
	      "write zeroes with 3 segments");
	CHECK(sync_req(0, VIRTIO_BLK_T_IN, 2 << 20, 262144, true) == 0, "read back");
	for (unsigned i = 0; i < 262144; i++) {
		bool in = false;
		for (unsigned k = 0; k < 3; k++)
			in |=
			    i >= ol[2 * k] - (2 << 20) && i < ol[2 * k] - (2 << 20) + ol[2 * k + 1];
		good &= b[i] == (in ? 0 : 0xaa);
	}
	CHECK(good, "zeroes exactly in the 3 segments");
	for (unsigned i = 0; i < 40; i++) {
		many[2 * i] = (uint64_t)i << 16;
		many[2 * i + 1] = cfg.blk_size ? cfg.blk_size : 512;
	}
	CHECK(multi_req(0, VIRTIO_BLK_T_WRITE_ZEROES, cfg.max_write_zeroes_seg + 1, many, 0, 0) ==
		  VIRTIO_BLK_S_UNSUPP,
	      "more segments than max_write_zeroes_seg: UNSUPP");
	CHECK(multi_req(0, VIRTIO_BLK_T_WRITE_ZEROES, 1, ol, 0, 8) == VIRTIO_BLK_S_IOERR,
	      "a partial segment: IOERR");
	if (features & (1ull << VIRTIO_BLK_F_DISCARD) && cfg.max_discard_seg >= 2)
		CHECK(multi_req(0, VIRTIO_BLK_T_DISCARD, 2, many, 0, 0) == 0,
		      "discard with 2 segments");
	if (features & (1ull << VIRTIO_BLK_F_SECURE_ERASE)) {
		memset(b, 0x55, 65536);
		sync_req(0, VIRTIO_BLK_T_OUT, 3 << 20, 65536, false);
		CHECK(range_req(0, VIRTIO_BLK_T_SECURE_ERASE, 3 << 20, 65536, 0) == 0,
		      "secure erase");
		sync_req(0, VIRTIO_BLK_T_IN, 3 << 20, 65536, true);
		good = true;
		for (unsigned i = 0; i < 65536; i++)
			good &= b[i] == 0;
		CHECK(good, "secure erase reads back zeroes");
	}
}

static int cmd_verify(void)
{
	uint64_t size = cfg.capacity * 512;
	bool ro = features & (1ull << VIRTIO_BLK_F_RO);
	uint8_t *pat = malloc(65536);
	char id[21] = {0};

	for (unsigned i = 0; i < 65536; i++)
		pat[i] = (uint8_t)(rand() >> 7);
	CHECK(cfg.num_queues >= nq, "config num_queues %u >= %u", cfg.num_queues, nq);
	for (unsigned qi = 0; qi < nq && !ro; qi++) {
		uint64_t off = (uint64_t)qi * 65536 * 2;
		memcpy(vqs[qi].slots[0].buf, pat, 65536);
		pat[qi] ^= 0x5a;
		CHECK(sync_req(qi, VIRTIO_BLK_T_OUT, off, 65536, false) == 0, "write on queue %u",
		      qi);
		memset(vqs[qi].slots[0].buf, 0, 65536);
		CHECK(sync_req(qi, VIRTIO_BLK_T_IN, off, 65536, true) == 0, "read on queue %u", qi);
		pat[qi] ^= 0x5a;
		CHECK(!memcmp(vqs[qi].slots[0].buf, pat, 65536), "read back on queue %u", qi);
	}
	CHECK(sync_req(0, VIRTIO_BLK_T_FLUSH, 0, 0, false) == 0, "flush");
	{
		/* the same memory table again while the queues run: the back end stops and
		 * restarts them, and must resume where it was (no request served twice) */
		struct vhost_user_mem_table mt = {.nregions = 1};
		mt.regions[0].memory_size = mem_size;
		mt.regions[0].userspace_addr = (uint64_t)(uintptr_t)mem;
		CHECK(vu_call(VHOST_USER_SET_MEM_TABLE, &mt, 8 + sizeof(mt.regions[0]), &mem_fd,
			      1) == 0,
		      "memory table replaced while running");
		for (unsigned qi = 0; qi < nq; qi++) {
			uint64_t before = vqs[qi].completed;
			CHECK(sync_req(qi, VIRTIO_BLK_T_IN, 0, 4096, true) == 0 &&
				  vqs[qi].completed - before == 1 && next_used(&vqs[qi]) < 0,
			      "queue %u resumes after the memory table change", qi);
		}
	}
	CHECK(sync_req(0, VIRTIO_BLK_T_IN, size, 512, true) == VIRTIO_BLK_S_IOERR,
	      "read past the end fails");
	CHECK(sync_req(0, VIRTIO_BLK_T_IN, size - 512, 1024, true) == VIRTIO_BLK_S_IOERR,
	      "read across the end fails");
	CHECK(sync_req(0, 0x77, 0, 512, true) == VIRTIO_BLK_S_UNSUPP, "unknown type: UNSUPP");
	sync_req(0, VIRTIO_BLK_T_GET_ID, 0, 20, true);
	memcpy(id, vqs[0].slots[0].buf, 20);
	printf("serial: %s\n", id);
	if (ro) {
		CHECK(sync_req(0, VIRTIO_BLK_T_OUT, 0, 512, false) == VIRTIO_BLK_S_IOERR,
		      "write on read-only fails");
	} else {
		if (features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES)) {
			CHECK(range_req(0, VIRTIO_BLK_T_WRITE_ZEROES, 0, 65536, 0) == 0,
			      "write zeroes");
			sync_req(0, VIRTIO_BLK_T_IN, 0, 65536, true);
			bool z = true;
			for (unsigned i = 0; i < 65536; i++)
				z &= vqs[0].slots[0].buf[i] == 0;
			CHECK(z, "zeroes read back");
			CHECK(range_req(0, VIRTIO_BLK_T_WRITE_ZEROES, 65536, 65536,
					VIRTIO_BLK_WZ_F_UNMAP) == 0,
			      "write zeroes with unmap");
			CHECK(range_req(0, VIRTIO_BLK_T_WRITE_ZEROES, size, 512, 0) ==
				  VIRTIO_BLK_S_IOERR,
			      "write zeroes past the end fails");
		}
		if (features & (1ull << VIRTIO_BLK_F_DISCARD))
			CHECK(range_req(0, VIRTIO_BLK_T_DISCARD, 1 << 20, 1 << 20, 0) == 0,
			      "discard");
		if (features & (1ull << VIRTIO_BLK_F_WRITE_ZEROES))
			check_multi_segment();
	}
	free(pat);
	printf("%s\n", fails ? "VERIFY FAILED" : "VERIFY OK");
	return fails ? 1 : 0;
}

/* Hostile front end: malformed chains must fail the request or break the queue, never crash. */
static int cmd_hostile(void)
{
	struct vq *q = &vqs[0];
	int st;

	/* 1. a data descriptor outside guest memory */
	submit(q, 0, VIRTIO_BLK_T_IN, 0, 512, true);
	q->desc[1].addr = mem_size + (1ull << 30);
	kick(q);
	reap(q, NULL, 500);
	/* 2. a loop in the chain (on queue 1 if there is one, else on the same queue) */
	q = &vqs[nq > 1 ? 1 : 0];
	submit(q, 1, VIRTIO_BLK_T_IN, 0, 512, true);
	q->desc[5].flags |= VRING_DESC_F_NEXT;
	q->desc[5].next = 3;
	kick(q);
	reap(q, NULL, 500);
	/* 3. bogus avail index (far ahead) */
	__atomic_store_n(&q->avail->idx, (uint16_t)(q->avail_idx + 5000), __ATOMIC_RELEASE);
	kick(q);
	usleep(100000);
	/* 4. bad messages: wrong sizes, unknown request, vring index out of range */
	struct vhost_vring_state st2 = {200, 8};
	vu_send(VHOST_USER_SET_VRING_NUM, 0, &st2, sizeof(st2), NULL, 0);
	uint64_t junk[4] = {1, 2, 3, 4};
	vu_send(99, 0, junk, sizeof(junk), NULL, 0);
	/* a memory region larger than its file: must be refused (mapping it would SIGBUS) */
	struct vhost_user_mem_table mt = {.nregions = 1};
	mt.regions[0].memory_size = mem_size * 4;
	mt.regions[0].userspace_addr = (uint64_t)(uintptr_t)mem;
	uint64_t ack =
	    vu_call(VHOST_USER_SET_MEM_TABLE, &mt, 8 + sizeof(mt.regions[0]), &mem_fd, 1);
	printf("oversized region refused: %s\n", ack ? "yes" : "no");
	/* the back end must still answer */
	uint64_t f = vu_get_u64(VHOST_USER_GET_FEATURES);
	printf("still answering after hostile requests: features=0x%" PRIx64 "\n", f);
	/* 5. a message with a wrong payload size: the back end may drop us */
	vu_send(VHOST_USER_SET_VRING_BASE, 0, junk, 3, NULL, 0);
	(void)st;
	printf("HOSTILE DONE\n");
	return 0;
}

/* ---- benchmark ------------------------------------------------------------------------------ */
static int bench_rw; /* 0 randread 1 randwrite 2 read 3 write */
static uint32_t bench_bs = 4096;
static unsigned bench_qd = 32;
static double bench_time = 5;
static atomic_bool bench_stop;

static uint64_t rnd_state = 88172645463325252ull;
static uint64_t xrand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct bench_ctx {
	uint64_t seq_off, rs;
};
static struct bench_ctx bctx[MAX_Q];

static void bench_issue(struct vq *q, unsigned s)
{
	struct bench_ctx *b = &bctx[q->idx];
	uint64_t size = cfg.capacity * 512, blocks = size / bench_bs, off;
	bool wr = bench_rw == 1 || bench_rw == 3;

	if (bench_rw <= 1)
		off = (xrand(&b->rs) % blocks) * bench_bs;
	else {
		off = b->seq_off;
		b->seq_off += bench_bs;
		if (b->seq_off + bench_bs > size)
			b->seq_off = 0;
	}
	q->slots[s].start = now_ns();
	submit(q, s, wr ? VIRTIO_BLK_T_OUT : VIRTIO_BLK_T_IN, off / 512, bench_bs, !wr);
}

static void bench_done(struct vq *q, unsigned s)
{
	if (q->slots[s].status)
		die("bench: request failed with status %d", q->slots[s].status);
	q->ops++;
	q->bytes += bench_bs;
	q->lat_ns += now_ns() - q->slots[s].start;
	if (!atomic_load(&bench_stop))
		bench_issue(q, s);
}

static void *bench_thread(void *arg)
{
	struct vq *q = arg;
	unsigned qd = bench_qd < q->nslots ? bench_qd : q->nslots;

	bctx[q->idx].rs = rnd_state + q->idx * 7919;
	bctx[q->idx].seq_off = (cfg.capacity * 512 / nq) * q->idx;
	bctx[q->idx].seq_off -= bctx[q->idx].seq_off % bench_bs;
	for (unsigned s = 0; s < qd; s++)
		bench_issue(q, s);
	kick(q);
	for (;;) {
		unsigned busy = 0;
		reap(q, bench_done, 1000);
		kick(q);
		for (unsigned s = 0; s < qd; s++)
			busy += q->slots[s].busy;
		if (atomic_load(&bench_stop) && !busy)
			break;
	}
	return NULL;
}

static int cmd_bench(void)
{
	uint64_t t0 = now_ns(), t1, ops = 0, bytes = 0, lat = 0;
	static const char *const names[] = {"randread", "randwrite", "read", "write"};

	for (unsigned i = 0; i < nq; i++)
		pthread_create(&vqs[i].th, NULL, bench_thread, &vqs[i]);
	usleep((useconds_t)(bench_time * 1e6));
	atomic_store(&bench_stop, true);
	for (unsigned i = 0; i < nq; i++) {
		pthread_join(vqs[i].th, NULL);
		ops += vqs[i].ops;
		bytes += vqs[i].bytes;
		lat += vqs[i].lat_ns;
	}
	t1 = now_ns();
	double s = (double)(t1 - t0) / 1e9;
	printf("%s bs=%u qd=%u queues=%u: %.0f IOPS %.1f MiB/s avg-lat %.1f us\n", names[bench_rw],
	       bench_bs, bench_qd, nq, (double)ops / s, (double)bytes / s / 1048576.0,
	       ops ? (double)lat / (double)ops / 1000.0 : 0.0);
	return 0;
}

/* ---- a queue stopped under load -------------------------------------------------------------- */
/* --qd writes on queue 0, then the same memory table again (the back end stops the queues, waits
 * for what is in flight, restarts them) with REPLY_ACK: every write must have completed when the
 * ack comes, and the queue must serve the next request. */
static int cmd_stop_under_load(void)
{
	struct vq *q = &vqs[0];
	unsigned qd = bench_qd < q->nslots ? bench_qd : q->nslots, before_ack;
	struct vhost_user_mem_table mt = {.nregions = 1};
	uint64_t t0, ack;
	int sl;

	for (unsigned s = 0; s < qd; s++) {
		memset(q->slots[s].buf, (int)s, 4096);
		submit(q, s, VIRTIO_BLK_T_OUT, (uint64_t)s * 8, 4096, false);
	}
	kick(q);
	usleep(100000);
	mt.regions[0].memory_size = mem_size;
	mt.regions[0].userspace_addr = (uint64_t)(uintptr_t)mem;
	t0 = now_ns();
	ack = vu_call(VHOST_USER_SET_MEM_TABLE, &mt, 8 + sizeof(mt.regions[0]), &mem_fd, 1);
	printf("memory table ack %" PRIu64 " after %.0f ms\n", ack, (double)(now_ns() - t0) / 1e6);
	before_ack = 0;
	while ((sl = next_used(q)) >= 0)
		before_ack += q->slots[sl].status == VIRTIO_BLK_S_OK;
	printf("%u of %u writes completed OK before the ack\n", before_ack, qd);
	printf("next request: status %d\n", sync_req(0, VIRTIO_BLK_T_IN, 0, 4096, true));
	return before_ack == qd ? 0 : 1;
}

/* ---- stress: writes that must survive back-end restarts ---------------------------------------
 */
static uint64_t stress_area = 8u << 20;
static unsigned stress_passes = 6;
static const char *stress_expect;
static uint64_t st_issued, st_done;
static unsigned st_pass, st_next, st_nblocks;
static bool st_kick[MAX_Q];

static void pattern(uint8_t *buf, uint32_t len, unsigned pass, unsigned block)
{
	uint64_t *w = (uint64_t *)(void *)buf;

	for (uint32_t i = 0; i < len / 8; i++)
		w[i] = ((uint64_t)pass << 56) ^ ((uint64_t)block << 32) ^
		       ((uint64_t)i * 0x9e3779b97f4a7c15ull);
}

static void stress_issue(struct vq *q, unsigned s)
{
	unsigned b;

	if (st_next >= st_nblocks)
		return;
	b = st_next++;
	pattern(q->slots[s].buf, bench_bs, st_pass, b);
	q->slots[s].tag = ((uint64_t)st_pass << 32) | b;
	submit(q, s, VIRTIO_BLK_T_OUT, (uint64_t)b * bench_bs / 512, bench_bs, false);
	st_issued++;
	st_kick[q->idx] = true;
}

static void stress_done(struct vq *q, unsigned s)
{
	if (q->slots[s].status != VIRTIO_BLK_S_OK)
		die("stress: write of pass %u block %u failed with status %d",
		    (unsigned)(q->slots[s].tag >> 32), (unsigned)q->slots[s].tag,
		    q->slots[s].status);
	st_done++;
	stress_issue(q, s);
}

static int cmd_stress(void)
{
	unsigned qd = bench_qd < vqs[0].nslots ? bench_qd : vqs[0].nslots;
	uint8_t *want = malloc(bench_bs);
	FILE *ef = NULL;
	int bad = 0;

	if (!want || stress_area % bench_bs || stress_area > cfg.capacity * 512)
		die("stress: --area must be a multiple of --bs and fit the disk");
	st_nblocks = (unsigned)(stress_area / bench_bs);
	for (st_pass = 0; st_pass < stress_passes; st_pass++) {
		uint64_t last_done = st_done, t_progress = now_ns();
		st_next = 0;
		for (unsigned i = 0; i < nq; i++)
			for (unsigned k = 0; k < qd; k++)
				stress_issue(&vqs[i], k);
		while (st_done < st_issued) {
			struct pollfd p[MAX_Q + 1];
			for (unsigned i = 0; i < nq; i++) {
				if (st_kick[i])
					kick(&vqs[i]);
				st_kick[i] = false;
				p[i] = (struct pollfd){vqs[i].call, POLLIN, 0};
			}
			p[nq] = (struct pollfd){sock, POLLIN, 0};
			poll(p, nq + 1, 200);
			for (unsigned i = 0; i < nq; i++) {
				uint64_t v;
				int sl;
				if (p[i].revents && read(vqs[i].call, &v, sizeof(v)) < 0)
					die("call read: %s", strerror(errno));
				while ((sl = next_used(&vqs[i])) >= 0)
					stress_done(&vqs[i], (unsigned)sl);
			}
			if (p[nq].revents && sock_gone())
				reconnect();
			if (st_done != last_done) {
				last_done = st_done;
				t_progress = now_ns();
			} else if (now_ns() - t_progress > 60000000000ull) {
				die("stress: %" PRIu64 " request(s) never completed (lost)",
				    st_issued - st_done);
			}
		}
		printf("pass %u: %u writes done\n", st_pass, st_nblocks);
		fflush(stdout);
	}
	/* every request completed exactly once (next_used dies on a completion of an idle slot) */
	printf("stress: %" PRIu64 " writes issued, %" PRIu64 " completed, %u reconnection(s)\n",
	       st_issued, st_done, nreconnects);
	if (stress_expect && !(ef = fopen(stress_expect, "w")))
		die("open %s: %s", stress_expect, strerror(errno));
	for (unsigned b = 0; b < st_nblocks; b++) {
		pattern(want, bench_bs, stress_passes - 1, b);
		if (ef && fwrite(want, 1, bench_bs, ef) != bench_bs)
			die("write %s", stress_expect);
		if (sync_req(0, VIRTIO_BLK_T_IN, (uint64_t)b * bench_bs, bench_bs, true) ||
		    memcmp(vqs[0].slots[0].buf, want, bench_bs))
			bad++;
	}
	if (ef)
		fclose(ef);
	free(want);
	printf("%s (%d bad block(s))\n", bad ? "STRESS READBACK FAILED" : "STRESS OK", bad);
	return bad ? 1 : 0;
}

static uint64_t parse_size(const char *s)
{
	char *end;
	uint64_t v = strtoull(s, &end, 0);
	switch (*end) {
	case 'k':
	case 'K':
		v <<= 10;
		break;
	case 'm':
	case 'M':
		v <<= 20;
		break;
	case 'g':
	case 'G':
		v <<= 30;
		break;
	}
	return v;
}

int main(int argc, char **argv)
{
	const char *cmd;
	char *pos[8];
	int npos = 0;

	if (argc < 3) {
		fprintf(stderr,
			"usage: vub-client SOCKET info|write|read|discard|zero|flush|verify|"
			"hostile|bench|stress [args] [--queues N] [--num N] [--rw RW] [--bs N] "
			"[--qd N] [--time S] [--packed] [--inflight] [--reconnect]\n");
		return 2;
	}
	sock_path = argv[1];
	cmd = argv[2];
	for (int i = 3; i < argc; i++) {
		if (!strcmp(argv[i], "--queues") && i + 1 < argc)
			nq = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--num") && i + 1 < argc)
			ring_num = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--bs") && i + 1 < argc)
			bench_bs = (uint32_t)parse_size(argv[++i]);
		else if (!strcmp(argv[i], "--qd") && i + 1 < argc)
			bench_qd = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--time") && i + 1 < argc)
			bench_time = atof(argv[++i]);
		else if (!strcmp(argv[i], "--area") && i + 1 < argc)
			stress_area = parse_size(argv[++i]);
		else if (!strcmp(argv[i], "--passes") && i + 1 < argc)
			stress_passes = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--expect") && i + 1 < argc)
			stress_expect = argv[++i];
		else if (!strcmp(argv[i], "--packed"))
			packed = true;
		else if (!strcmp(argv[i], "--inflight"))
			use_inflight = true;
		else if (!strcmp(argv[i], "--reconnect"))
			reconnect_mode = use_inflight = true;
		else if (!strcmp(argv[i], "--rw") && i + 1 < argc) {
			const char *r = argv[++i];
			bench_rw = !strcmp(r, "randread")    ? 0
				   : !strcmp(r, "randwrite") ? 1
				   : !strcmp(r, "read")	     ? 2
							     : 3;
		} else if (npos < 8)
			pos[npos++] = argv[i];
	}
	if (nq < 1 || nq > MAX_Q || ring_num < 4 || ring_num > 32768 || (ring_num & (ring_num - 1)))
		die("bad --queues or --num");
	if (bench_bs > SLOT_BUF || bench_bs < 512)
		die("--bs must be between 512 and 1M");
	{
		unsigned slots = ring_num / 3;
		if (strcmp(cmd, "bench") && strcmp(cmd, "stress") && strcmp(cmd, "stop-under-load"))
			slots = 2;
		else if (bench_qd < slots)
			slots = bench_qd;
		connect_and_map((size_t)nq * (slots + 1) * SLOT_BUF + (size_t)nq * 65536);
		/* only the first `slots` slots of each queue get buffers: shrink nslots */
		setup(slots);
	}
	if (!strcmp(cmd, "info"))
		return cmd_info();
	if (!strcmp(cmd, "verify"))
		return cmd_verify();
	if (!strcmp(cmd, "hostile"))
		return packed ? (fprintf(stderr, "hostile: split rings only\n"), 2) : cmd_hostile();
	if (!strcmp(cmd, "stress"))
		return cmd_stress();
	if (!strcmp(cmd, "stop-under-load"))
		return cmd_stop_under_load();
	if (!strcmp(cmd, "bench"))
		return cmd_bench();
	if ((!strcmp(cmd, "write") || !strcmp(cmd, "read")) && npos == 3)
		return cmd_rw(cmd[0] == 'w', parse_size(pos[0]), parse_size(pos[1]), pos[2]);
	if (!strcmp(cmd, "flush"))
		return sync_req(0, VIRTIO_BLK_T_FLUSH, 0, 0, false) ? 1 : 0;
	if ((!strcmp(cmd, "discard") || !strcmp(cmd, "zero") || !strcmp(cmd, "zero-unmap")) &&
	    npos >= 2 && npos % 2 == 0) {
		uint64_t ol[8];
		for (int i = 0; i < npos; i++)
			ol[i] = parse_size(pos[i]);
		int st =
		    multi_req(0, cmd[0] == 'd' ? VIRTIO_BLK_T_DISCARD : VIRTIO_BLK_T_WRITE_ZEROES,
			      (unsigned)npos / 2, ol,
			      !strcmp(cmd, "zero-unmap") ? VIRTIO_BLK_WZ_F_UNMAP : 0, 0);
		printf("%s: status %d\n", cmd, st);
		return st ? 1 : 0;
	}
	die("unknown command or wrong arguments: %s", cmd);
}
