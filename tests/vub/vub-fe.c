/*
 * vub-fe.c - the test front end's virtio driver (see vub-fe.h): a userspace virtio-blk driver over
 * vhost-user, used by tests/vub/vub-client.c.  It shares a memfd as "guest memory", sets up split
 * or packed rings (optionally with an in-flight region it keeps across reconnections, as QEMU
 * does) and submits virtio-blk requests.  Thread: one per queue at most.
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

int sock = -1;
uint8_t *mem;
size_t mem_size;
int mem_fd;
uint64_t features, pfeatures;
struct virtio_blk_config cfg;
unsigned nq = 1, ring_num = 256;
bool packed, use_inflight, reconnect_mode;
const char *sock_path;
static int inflight_fd = -1;
static struct vhost_user_inflight inflight;
unsigned nreconnects;

void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "vub-client: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

/* ---- vhost-user messages -------------------------------------------------------------------- */
void vu_send(uint32_t req, uint32_t flags, const void *p, uint32_t size, const int *fds, int nfds)
{
	struct vhost_user_hdr h = {req, VHOST_USER_VERSION | flags, size};
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)p, size}};
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};

	if (nfds) {
		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
	}
	if (sendmsg(sock, &mh, MSG_NOSIGNAL) != (ssize_t)(sizeof(h) + size))
		die("sendmsg %u: %s", req, strerror(errno));
}

/* Read a reply; returns payload size, fills *fd if one came. */
static uint32_t vu_recv(uint32_t req, void *p, uint32_t max, int *fd)
{
	struct vhost_user_hdr h;
	char cbuf[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = {&h, sizeof(h)};
	struct msghdr mh = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(sock, &mh, MSG_WAITALL);

	if (n != sizeof(h))
		die("reply to %u: %s", req, n < 0 ? strerror(errno) : "connection closed");
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm))
		if (cm->cmsg_type == SCM_RIGHTS && fd)
			memcpy(fd, CMSG_DATA(cm), sizeof(int));
	if (h.request != req || !(h.flags & VHOST_USER_REPLY_MASK) || h.size > max)
		die("bad reply to %u: req %u flags %x size %u", req, h.request, h.flags, h.size);
	if (h.size && recv(sock, p, h.size, MSG_WAITALL) != (ssize_t)h.size)
		die("reply payload to %u", req);
	return h.size;
}

uint64_t vu_get_u64(uint32_t req)
{
	uint64_t v = 0;
	vu_send(req, 0, NULL, 0, NULL, 0);
	vu_recv(req, &v, sizeof(v), NULL);
	return v;
}

/* Send a request, and with REPLY_ACK wait for its ack; returns the ack (0 = success). */
uint64_t vu_call(uint32_t req, const void *p, uint32_t size, const int *fds, int nfds)
{
	bool ack = pfeatures & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK);
	uint64_t v = 0;
	vu_send(req, ack ? VHOST_USER_NEED_REPLY_MASK : 0, p, size, fds, nfds);
	if (ack)
		vu_recv(req, &v, sizeof(v), NULL);
	return v;
}

/* ---- rings ---------------------------------------------------------------------------------- */

struct vq vqs[MAX_Q];
static size_t mem_used;

static void *alloc_mem(size_t len, size_t align)
{
	size_t off = (mem_used + align - 1) & ~(align - 1);
	if (off + len > mem_size)
		die("out of shared memory");
	mem_used = off + len;
	return mem + off;
}

static uint64_t gpa(const void *p)
{
	return (uint64_t)((const uint8_t *)p - mem);
}

/* The vhost-user set-up, in QEMU's order: features, in-flight region, memory table, rings.  On a
 * reconnection (resume) the rings keep their memory and the in-flight region is handed back. */
static void vhost_setup(bool resume)
{
	struct vhost_user_mem_table mt = {0};
	uint64_t f;

	pfeatures = 0;
	features = vu_get_u64(VHOST_USER_GET_FEATURES);
	if (features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES)) {
		uint64_t pf = vu_get_u64(VHOST_USER_GET_PROTOCOL_FEATURES);
		pf &= (1ull << VHOST_USER_PROTOCOL_F_MQ) |
		      (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
		      (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |
		      (use_inflight ? 1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD : 0);
		vu_send(VHOST_USER_SET_PROTOCOL_FEATURES, 0, &pf, sizeof(pf), NULL, 0);
		pfeatures = pf;
	}
	if (use_inflight && !(pfeatures & (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD)))
		die("the back end does not offer in-flight tracking");
	if (pfeatures & (1ull << VHOST_USER_PROTOCOL_F_MQ)) {
		uint64_t n = vu_get_u64(VHOST_USER_GET_QUEUE_NUM);
		if (nq > n)
			die("back end has only %" PRIu64 " queues", n);
	}
	vu_send(VHOST_USER_SET_OWNER, 0, NULL, 0, NULL, 0);
	if (pfeatures & (1ull << VHOST_USER_PROTOCOL_F_CONFIG)) {
		/* 60 bytes: the config up to the write-zeroes fields; older back ends (QEMU 7.2's
		 * libvhost-user) refuse anything larger than their own struct */
		struct vhost_user_config c = {.offset = 0, .size = 60};
		uint32_t n;
		vu_send(VHOST_USER_GET_CONFIG, 0, &c, VHOST_USER_CONFIG_HDR_SIZE + 60, NULL, 0);
		n = vu_recv(VHOST_USER_GET_CONFIG, &c, sizeof(c), NULL);
		if (n < VHOST_USER_CONFIG_HDR_SIZE + 60)
			die("GET_CONFIG: short reply (%u bytes)", n);
		memcpy(&cfg, c.region, 60);
	}
	f = features &
	    ((1ull << VIRTIO_F_VERSION_1) | (1ull << VHOST_USER_F_PROTOCOL_FEATURES) |
	     (1ull << VIRTIO_BLK_F_RO) | (1ull << VIRTIO_BLK_F_FLUSH) |
	     (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES) |
	     (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_MQ) |
	     (1ull << VIRTIO_BLK_F_SEG_MAX) | (1ull << VIRTIO_BLK_F_CONFIG_WCE) |
	     (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_SIZE_MAX) |
	     (1ull << VIRTIO_BLK_F_SECURE_ERASE) | (packed ? 1ull << VIRTIO_F_RING_PACKED : 0));
	if (packed && !(f & (1ull << VIRTIO_F_RING_PACKED)))
		die("the back end does not offer packed virtqueues");
	features = f;
	if (vu_call(VHOST_USER_SET_FEATURES, &f, sizeof(f), NULL, 0))
		die("SET_FEATURES refused");
	if (use_inflight) {
		if (inflight_fd < 0) {
			struct vhost_user_inflight in = {.num_queues = (uint16_t)nq,
							 .queue_size = (uint16_t)ring_num};
			vu_send(VHOST_USER_GET_INFLIGHT_FD, 0, &in, sizeof(in), NULL, 0);
			if (vu_recv(VHOST_USER_GET_INFLIGHT_FD, &inflight, sizeof(inflight),
				    &inflight_fd) != sizeof(inflight) ||
			    inflight_fd < 0)
				die("GET_INFLIGHT_FD: no region");
		}
		if (vu_call(VHOST_USER_SET_INFLIGHT_FD, &inflight, sizeof(inflight), &inflight_fd,
			    1))
			die("SET_INFLIGHT_FD refused");
	}

	mt.nregions = 1;
	mt.regions[0].guest_phys_addr = 0;
	mt.regions[0].memory_size = mem_size;
	mt.regions[0].userspace_addr = (uint64_t)(uintptr_t)mem;
	mt.regions[0].mmap_offset = 0;
	if (vu_call(VHOST_USER_SET_MEM_TABLE, &mt, 8 + sizeof(mt.regions[0]), &mem_fd, 1))
		die("SET_MEM_TABLE refused");

	for (unsigned i = 0; i < nq; i++) {
		struct vq *q = &vqs[i];
		struct vhost_vring_state st = {i, ring_num};
		struct vhost_vring_addr a = {0};
		uint64_t u;

		vu_call(VHOST_USER_SET_VRING_NUM, &st, sizeof(st), NULL, 0);
		/* What QEMU 7.2 sends after a back end died: for split rings the used index, for
		 * packed rings its last value from before (the start of the ring here).  A back
		 * end with in-flight tracking must find the real position itself. */
		st.num = packed ? 1u << 15 : (resume ? q->used->idx : 0);
		vu_call(VHOST_USER_SET_VRING_BASE, &st, sizeof(st), NULL, 0);
		a.index = i;
		a.desc_user_addr = (uint64_t)(uintptr_t)(packed ? (void *)q->pdesc : q->desc);
		a.avail_user_addr = (uint64_t)(uintptr_t)(packed ? (void *)q->drv_ev : q->avail);
		a.used_user_addr = (uint64_t)(uintptr_t)(packed ? (void *)q->dev_ev : q->used);
		vu_call(VHOST_USER_SET_VRING_ADDR, &a, sizeof(a), NULL, 0);
		u = i;
		vu_call(VHOST_USER_SET_VRING_CALL, &u, sizeof(u), &q->call, 1);
		vu_call(VHOST_USER_SET_VRING_KICK, &u, sizeof(u), &q->kick, 1);
		st.num = 1;
		if (features & (1ull << VHOST_USER_F_PROTOCOL_FEATURES))
			vu_call(VHOST_USER_SET_VRING_ENABLE, &st, sizeof(st), NULL, 0);
	}
	(void)resume;
}

void setup(unsigned qd_slots)
{
	for (unsigned i = 0; i < nq; i++) {
		struct vq *q = &vqs[i];
		q->idx = i;
		q->num = ring_num;
		q->nslots = ring_num / 3 < qd_slots ? ring_num / 3 : qd_slots;
		if (packed) {
			q->pdesc = alloc_mem(16 * ring_num, 4096);
			q->drv_ev = alloc_mem(4, 4096);
			q->dev_ev = alloc_mem(4, 4096);
			q->avail_wrap = q->used_wrap = true;
		} else {
			q->desc = alloc_mem(16 * ring_num, 4096);
			q->avail = alloc_mem(6 + 2 * ring_num, 4096);
			q->used = alloc_mem(6 + 8 * ring_num, 4096);
		}
		q->slots = alloc_mem(sizeof(struct slot) * q->nslots, 64);
		q->kick = eventfd(0, EFD_CLOEXEC);
		q->call = eventfd(0, EFD_CLOEXEC);
	}
	vhost_setup(false);
	for (unsigned i = 0; i < nq; i++)
		for (unsigned s = 0; s < vqs[i].nslots; s++)
			vqs[i].slots[s].buf = alloc_mem(SLOT_BUF, 4096);
}

static void sock_connect(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("connect %s: %s", sock_path, strerror(errno));
}

/* The back end went away: connect again (for up to 60 s) and set everything up again, the way
 * QEMU does with reconnect=1. */
void reconnect(void)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	if (!reconnect_mode)
		die("the back end closed the connection");
	close(sock);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
	for (int i = 0;; i++) {
		sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == 0)
			break;
		close(sock);
		if (i == 1200)
			die("reconnect %s: %s", sock_path, strerror(errno));
		usleep(50000);
	}
	vhost_setup(true);
	nreconnects++;
	fprintf(stderr, "vub-client: reconnected (%u)\n", nreconnects);
	for (unsigned i = 0; i < nq; i++)
		kick(&vqs[i]);
}

/* Has the back end closed the connection? (nothing else arrives unasked) */
bool sock_gone(void)
{
	struct pollfd p = {sock, POLLIN, 0};
	char c;

	if (poll(&p, 1, 0) <= 0)
		return false;
	return recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

void connect_and_map(size_t slots_mem)
{
	sock_connect();
	mem_size = (8u << 20) + slots_mem;
	mem_fd = memfd_create("vub-client", MFD_CLOEXEC);
	if (mem_fd < 0 || ftruncate(mem_fd, (off_t)mem_size) < 0)
		die("memfd: %s", strerror(errno));
	mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED, mem_fd, 0);
	if (mem == MAP_FAILED)
		die("mmap: %s", strerror(errno));
}

/* Packed ring: write descriptor k of a chain at the next available position. */
static void packed_put(struct vq *q, uint64_t addr, uint32_t len, uint16_t id, uint16_t flags,
		       bool head, uint16_t *head_flags)
{
	struct vring_packed_desc *d = &q->pdesc[q->avail_idx];

	flags |= q->avail_wrap ? VRING_PACKED_DESC_F_AVAIL : VRING_PACKED_DESC_F_USED;
	d->addr = addr;
	d->len = len;
	d->id = id;
	if (head)
		*head_flags = flags; /* published last, when the whole chain is written */
	else
		d->flags = flags;
	if (++q->avail_idx == q->num) {
		q->avail_idx = 0;
		q->avail_wrap = !q->avail_wrap;
	}
}

/* Queue a request in slot s of q (not kicked). */
void submit(struct vq *q, unsigned s, uint32_t type, uint64_t sector, uint32_t len, bool data_in)
{
	struct slot *sl = &q->slots[s];
	unsigned d = s * 3, n = 0;

	sl->hdr.type = type;
	sl->hdr.ioprio = 0;
	sl->hdr.sector = sector;
	sl->status = 0xff;
	sl->busy = true;
	if (packed) {
		uint16_t head = q->avail_idx, hf = 0;
		sl->ndesc = len ? 3 : 2;
		packed_put(q, gpa(&sl->hdr), sizeof(sl->hdr), (uint16_t)s, VRING_DESC_F_NEXT, true,
			   &hf);
		if (len)
			packed_put(q, gpa(sl->buf), len, (uint16_t)s,
				   VRING_DESC_F_NEXT | (data_in ? VRING_DESC_F_WRITE : 0), false,
				   NULL);
		packed_put(q, gpa(&sl->status), 1, (uint16_t)s, VRING_DESC_F_WRITE, false, NULL);
		__atomic_store_n(&q->pdesc[head].flags, hf, __ATOMIC_RELEASE);
		return;
	}
	q->desc[d].addr = gpa(&sl->hdr);
	q->desc[d].len = sizeof(sl->hdr);
	q->desc[d].flags = VRING_DESC_F_NEXT;
	q->desc[d].next = (uint16_t)(d + 1);
	n = d + 1;
	if (len) {
		q->desc[n].addr = gpa(sl->buf);
		q->desc[n].len = len;
		q->desc[n].flags = VRING_DESC_F_NEXT | (data_in ? VRING_DESC_F_WRITE : 0);
		q->desc[n].next = (uint16_t)(n + 1);
		n++;
	}
	q->desc[n].addr = gpa(&sl->status);
	q->desc[n].len = 1;
	q->desc[n].flags = VRING_DESC_F_WRITE;
	q->desc[n].next = 0;
	q->avail->ring[q->avail_idx % q->num] = (uint16_t)d;
	q->avail_idx++;
	__atomic_store_n(&q->avail->idx, q->avail_idx, __ATOMIC_RELEASE);
}

void kick(struct vq *q)
{
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	eventfd_write(q->kick, 1);
}

/* The next used element, or -1.  Checks that it names a busy slot. */
int next_used(struct vq *q)
{
	unsigned s;

	if (packed) {
		struct vring_packed_desc *d = &q->pdesc[q->last_used];
		uint16_t fl = __atomic_load_n(&d->flags, __ATOMIC_ACQUIRE);
		bool avail = fl & VRING_PACKED_DESC_F_AVAIL, used = fl & VRING_PACKED_DESC_F_USED;
		if (avail != q->used_wrap || used != q->used_wrap)
			return -1;
		s = d->id;
		if (s >= q->nslots || !q->slots[s].busy)
			die("queue %u: used element for idle buffer id %u", q->idx, s);
		q->last_used = (uint16_t)(q->last_used + q->slots[s].ndesc);
		if (q->last_used >= q->num) {
			q->last_used = (uint16_t)(q->last_used - q->num);
			q->used_wrap = !q->used_wrap;
		}
	} else {
		uint16_t ui = __atomic_load_n(&q->used->idx, __ATOMIC_ACQUIRE);
		struct vring_used_elem *e;
		if (q->last_used == ui)
			return -1;
		e = &q->used->ring[q->last_used % q->num];
		s = e->id / 3;
		if (e->id % 3 || s >= q->nslots || !q->slots[s].busy)
			die("queue %u: used element for idle head %u", q->idx, e->id);
		q->last_used++;
	}
	q->slots[s].busy = false;
	q->completed++;
	return (int)s;
}

/* Wait for completions; returns number reaped, calls fn for each slot. */
unsigned reap(struct vq *q, void (*fn)(struct vq *, unsigned), int timeout_ms)
{
	unsigned n = 0;

	for (;;) {
		int s;
		while ((s = next_used(q)) >= 0) {
			if (fn)
				fn(q, (unsigned)s);
			n++;
		}
		if (n)
			return n;
		struct pollfd p[2] = {{q->call, POLLIN, 0}, {sock, POLLIN, 0}};
		int r = poll(p, 2, timeout_ms);
		if (r == 0)
			return 0;
		if (p[1].revents && sock_gone()) {
			reconnect(); /* dies unless --reconnect */
			continue;
		}
		uint64_t v;
		if (p[0].revents && read(q->call, &v, sizeof(v)) < 0 && errno != EAGAIN)
			die("call read");
	}
}

/* One synchronous request on queue q slot 0.  Returns the status byte. */
int sync_req(unsigned qi, uint32_t type, uint64_t off, uint32_t len, bool data_in)
{
	struct vq *q = &vqs[qi];
	submit(q, 0, type, off / 512, len, data_in);
	kick(q);
	if (!reap(q, NULL, 10000))
		die("request timed out (type %u)", type);
	return q->slots[0].status;
}

/* A DISCARD / WRITE_ZEROES / SECURE_ERASE request with n segments (offset, length pairs in
 * ol[]) and `extra` bytes more (to send a partial segment).  Returns the status byte. */
int multi_req(unsigned qi, uint32_t type, unsigned n, const uint64_t *ol, uint32_t flags,
	      uint32_t extra)
{
	struct virtio_blk_discard_wz *seg = (void *)vqs[qi].slots[0].buf;

	for (unsigned i = 0; i < n; i++) {
		seg[i].sector = ol[2 * i] / 512;
		seg[i].num_sectors = (uint32_t)(ol[2 * i + 1] / 512);
		seg[i].flags = flags;
	}
	return sync_req(qi, type, 0, (uint32_t)(n * sizeof(*seg)) + extra, false);
}

int range_req(unsigned qi, uint32_t type, uint64_t off, uint64_t len, uint32_t flags)
{
	uint64_t ol[2] = {off, len};
	return multi_req(qi, type, 1, ol, flags, 0);
}

uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
