/*
 * vub-msg.c - the vhost-user side of the vhost-user-blk export: the listening socket, the one
 * connected front end, its messages and replies (features, memory table, vring setup, config,
 * in-flight fd), guest memory mappings, and the back-end channel (config change notices on
 * resize).
 *
 * Threads: all of it runs on the main loop [control].  Messages are handled one at a time; a
 * message that changes state a running queue reads (memory table, ring addresses, features)
 * first stops the affected queues (vub-queue.c), changes, restarts.
 *
 * In-flight tracking (GET/SET_INFLIGHT_FD, the region's layout in vub-inflight.c) lets blockd be
 * killed and restarted under a running guest (chardev reconnect=1).
 */
#include "export/vhost-user-blk/vub-int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t offered_protocol_features(void)
{
	return (1ull << VHOST_USER_PROTOCOL_F_MQ) | (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK) |
	       (1ull << VHOST_USER_PROTOCOL_F_BACKEND_REQ) |
	       (1ull << VHOST_USER_PROTOCOL_F_CONFIG) |
	       (1ull << VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD) |
	       (1ull << VHOST_USER_PROTOCOL_F_RESET_DEVICE) |
	       (1ull << VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS);
}

/* ---------------------------------------------------------------------------------------------
 * Guest memory [control]
 */
static void region_unmap(struct vub_region *r)
{
	if (r->map)
		munmap(r->map, r->map_len);
	memset(r, 0, sizeof(*r));
}

/* A mapping past the end of a file faults (SIGBUS) on access: refuse regions that the front end's
 * file does not cover.  (A front end that shrinks the file later can still do that; QEMU never
 * does.) */
static bool fd_covers(int fd, uint64_t len)
{
	struct stat st;

	if (fstat(fd, &st) < 0)
		return false;
	return !S_ISREG(st.st_mode) || (uint64_t)st.st_size >= len;
}

static int region_map(struct vub_region *r, const struct vhost_user_mem_region *m, int fd)
{
	void *p;
	uint64_t len;

	if (m->memory_size == 0 || m->mmap_offset > UINT64_MAX - m->memory_size ||
	    m->guest_phys_addr > UINT64_MAX - m->memory_size ||
	    m->userspace_addr > UINT64_MAX - m->memory_size)
		return -EINVAL;
	len = m->mmap_offset + m->memory_size;
	if (len > SIZE_MAX || !fd_covers(fd, len))
		return -EINVAL;
	p = mmap(NULL, (size_t)len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, fd, 0);
	if (p == MAP_FAILED)
		return -errno;
	r->gpa = m->guest_phys_addr;
	r->size = m->memory_size;
	r->uva = m->userspace_addr;
	r->mmap_offset = m->mmap_offset;
	r->map = p;
	r->map_len = (size_t)len;
	r->host = (uint8_t *)p + m->mmap_offset;
	return 0;
}

static void mem_clear(struct vub_mem *m)
{
	for (unsigned i = 0; i < m->n; i++)
		region_unmap(&m->r[i]);
	m->n = 0;
}

static bool region_overlaps(const struct vub_mem *m, const struct vhost_user_mem_region *nr)
{
	for (unsigned i = 0; i < m->n; i++) {
		const struct vub_region *r = &m->r[i];
		if (nr->guest_phys_addr < r->gpa + r->size &&
		    r->gpa < nr->guest_phys_addr + nr->memory_size)
			return true;
	}
	return false;
}

/* ---------------------------------------------------------------------------------------------
 * The connection: messages [control]
 */
#define VUB_REPLIED 1
#define VUB_FATAL 2
#define VUB_WAIT 3

static int conn_send(int fd, uint32_t req, uint32_t flags, const void *payload, uint32_t size,
		     int pass_fd)
{
	struct vhost_user_hdr h = {.request = req, .flags = flags, .size = size};
	struct iovec iov[2] = {{&h, sizeof(h)}, {(void *)payload, size}};
	union {
		char buf[CMSG_SPACE(sizeof(int))];
		struct cmsghdr align;
	} u;
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = size ? 2 : 1};
	ssize_t n;

	if (pass_fd >= 0) {
		struct cmsghdr *cm;
		memset(&u, 0, sizeof(u));
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &pass_fd, sizeof(int));
	}
	do
		n = sendmsg(fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)(sizeof(h) + size))
		return n < 0 ? -errno : -EIO;
	return 0;
}

static int reply(struct vub_conn *c, const void *payload, uint32_t size, int pass_fd)
{
	int e = conn_send(c->fd, c->hdr.request, VHOST_USER_VERSION | VHOST_USER_REPLY_MASK,
			  payload, size, pass_fd);
	return e < 0 ? VUB_FATAL : VUB_REPLIED;
}

static int reply_u64(struct vub_conn *c, uint64_t v)
{
	return reply(c, &v, sizeof(v), -1);
}

static int take_fd(struct vub_conn *c, unsigned i)
{
	int fd;

	if (i >= c->nfds)
		return -1;
	fd = c->fds[i];
	c->fds[i] = -1;
	return fd;
}

static struct vub_queue *msg_queue(struct vub_conn *c, uint32_t index)
{
	if (index >= c->exp->nq)
		return NULL;
	return c->q[index];
}

static int h_set_mem_table(struct vub_conn *c)
{
	struct vhost_user_mem_table t;
	struct vub_mem nm = {0};
	int e = 0;

	memset(&t, 0, sizeof(t));
	memcpy(&t, c->payload, c->hdr.size < sizeof(t) ? c->hdr.size : sizeof(t));
	if (t.nregions > VHOST_MEMORY_BASELINE_NREGIONS || t.nregions != c->nfds ||
	    c->hdr.size < 8 + t.nregions * sizeof(struct vhost_user_mem_region))
		return -EINVAL;
	for (unsigned i = 0; i < t.nregions; i++) {
		if (region_overlaps(&nm, &t.regions[i])) {
			e = -EINVAL;
			break;
		}
		e = region_map(&nm.r[nm.n], &t.regions[i], c->fds[i]);
		if (e < 0)
			break;
		nm.n++;
	}
	if (e < 0) {
		mem_clear(&nm);
		return e;
	}
	mem_clear(&c->mem); /* the queues were stopped before (msg_stop_mask) */
	c->mem = nm;
	return 0;
}

static int h_add_mem_reg(struct vub_conn *c)
{
	struct vhost_user_mem_single s;
	struct vub_region r;
	int e;

	memcpy(&s, c->payload, sizeof(s));
	if (c->mem.n >= VUB_MAX_MEM_SLOTS || region_overlaps(&c->mem, &s.region))
		return -EINVAL;
	e = region_map(&r, &s.region, c->fds[0]);
	if (e < 0)
		return e;
	c->mem.r[c->mem.n++] = r;
	return 0;
}

static int h_rem_mem_reg(struct vub_conn *c)
{
	struct vhost_user_mem_single s;
	unsigned i;

	memcpy(&s, c->payload, sizeof(s));
	for (i = 0; i < c->mem.n; i++)
		if (c->mem.r[i].gpa == s.region.guest_phys_addr &&
		    c->mem.r[i].size == s.region.memory_size)
			break;
	if (i == c->mem.n)
		return -ENOENT;
	region_unmap(&c->mem.r[i]);
	c->mem.r[i] = c->mem.r[c->mem.n - 1];
	memset(&c->mem.r[c->mem.n - 1], 0, sizeof(c->mem.r[0]));
	c->mem.n--;
	return 0;
}

static void fill_config(struct vub_export *x, uint8_t *buf, bool wce)
{
	struct virtio_blk_config cfg;
	const struct bd_limits *l = bd_node_limits(x->node);
	uint32_t phys = l->req_align > x->lbs ? l->req_align : x->lbs;
	uint32_t exp = 0;

	memset(&cfg, 0, sizeof(cfg));
	cfg.capacity = atomic_load(&x->size) / VIRTIO_BLK_SECTOR_SIZE;
	cfg.size_max = VUB_SIZE_MAX;
	cfg.seg_max = VUB_SEG_MAX;
	cfg.blk_size = x->lbs;
	while ((x->lbs << exp) < phys && exp < 16)
		exp++;
	cfg.physical_block_exp = (uint8_t)exp;
	cfg.min_io_size = (uint16_t)(phys / x->lbs);
	if (l->opt_transfer && l->opt_transfer / x->lbs <= UINT32_MAX)
		cfg.opt_io_size = (uint32_t)(l->opt_transfer / x->lbs);
	cfg.wce = wce;
	cfg.num_queues = (uint16_t)x->nq;
	cfg.max_discard_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_discard_seg = VUB_MAX_DWZ_SEG;
	cfg.discard_sector_alignment = phys / VIRTIO_BLK_SECTOR_SIZE;
	cfg.max_write_zeroes_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_write_zeroes_seg = VUB_MAX_DWZ_SEG;
	cfg.write_zeroes_may_unmap = 1;
	cfg.max_secure_erase_sectors = VUB_MAX_DISCARD_SECTORS;
	cfg.max_secure_erase_seg = VUB_MAX_DWZ_SEG;
	cfg.secure_erase_sector_alignment = phys / VIRTIO_BLK_SECTOR_SIZE;
	memset(buf, 0, VHOST_USER_MAX_CONFIG_SIZE);
	memcpy(buf, &cfg, sizeof(cfg));
}

static int h_get_config(struct vub_conn *c)
{
	struct vhost_user_config cfg;
	uint8_t space[VHOST_USER_MAX_CONFIG_SIZE];

	memcpy(&cfg, c->payload, VHOST_USER_CONFIG_HDR_SIZE);
	if (cfg.size > VHOST_USER_MAX_CONFIG_SIZE ||
	    cfg.offset > VHOST_USER_MAX_CONFIG_SIZE - cfg.size)
		return VUB_FATAL; /* the front end waits for a reply we cannot give */
	fill_config(c->exp, space, atomic_load(&c->wce));
	memcpy(cfg.region, space + cfg.offset, cfg.size);
	return reply(c, &cfg, VHOST_USER_CONFIG_HDR_SIZE + cfg.size, -1);
}

static int h_set_config(struct vub_conn *c)
{
	struct vhost_user_config cfg;

	memcpy(&cfg, c->payload, VHOST_USER_CONFIG_HDR_SIZE);
	if (cfg.size != 1 || cfg.offset != VUB_CONFIG_WCE_OFFSET ||
	    c->hdr.size != VHOST_USER_CONFIG_HDR_SIZE + 1 ||
	    !has_feature(c, VIRTIO_BLK_F_CONFIG_WCE))
		return -EINVAL;
	atomic_store(&c->wce, c->payload[VHOST_USER_CONFIG_HDR_SIZE] != 0);
	return 0;
}

static void inflight_unmap(struct vub_conn *c)
{
	if (c->if_map)
		munmap(c->if_map, c->if_size);
	c->if_map = NULL;
	c->if_size = 0;
}

static int h_get_inflight_fd(struct vub_conn *c)
{
	struct vhost_user_inflight in;
	size_t size;
	int fd, r;
	void *p;

	memcpy(&in, c->payload, sizeof(in));
	if (in.num_queues == 0 || in.num_queues > c->exp->nq || in.queue_size == 0 ||
	    in.queue_size > VUB_MAX_RING)
		return VUB_FATAL;
	size = vub_inflight_queue_size(has_feature(c, VIRTIO_F_RING_PACKED), in.queue_size) *
	       in.num_queues;
	fd = memfd_create("blockd-vub-inflight", MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0)
		return VUB_FATAL;
	if (ftruncate(fd, (off_t)size) < 0) {
		close(fd);
		return VUB_FATAL;
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		close(fd);
		return VUB_FATAL;
	}
	memset(p, 0, size);
	inflight_unmap(c);
	c->if_map = p;
	c->if_size = size;
	c->if_nq = in.num_queues;
	c->if_qsize = in.queue_size;
	in.mmap_size = size;
	in.mmap_offset = 0;
	r = reply(c, &in, sizeof(in), fd);
	close(fd);
	return r;
}

static int h_set_inflight_fd(struct vub_conn *c)
{
	struct vhost_user_inflight in;
	void *p;

	memcpy(&in, c->payload, sizeof(in));
	if (in.num_queues == 0 || in.queue_size == 0 || in.queue_size > VUB_MAX_RING ||
	    in.mmap_size < vub_inflight_queue_size(false, in.queue_size) * in.num_queues ||
	    in.mmap_size > SIZE_MAX || in.mmap_offset > INT64_MAX || (in.mmap_offset & 4095) ||
	    in.mmap_offset > UINT64_MAX - in.mmap_size ||
	    !fd_covers(c->fds[0], in.mmap_offset + in.mmap_size))
		return -EINVAL;
	p = mmap(NULL, (size_t)in.mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fds[0],
		 (off_t)in.mmap_offset);
	if (p == MAP_FAILED)
		return -errno;
	inflight_unmap(c);
	c->if_map = p;
	c->if_size = (size_t)in.mmap_size;
	c->if_nq = in.num_queues;
	c->if_qsize = in.queue_size;
	return 0;
}

static void conn_reset(struct vub_conn *c)
{
	for (unsigned i = 0; i < c->exp->nq; i++)
		vub_queue_reset(c->q[i]);
	c->features = 0;
	c->features_set = false;
}

static uint64_t queue_bit(const struct vub_conn *c, uint64_t index)
{
	return index < c->exp->nq ? 1ull << index : 0;
}

/* The queues whose state the current message changes: they are stopped, and their requests in
 * flight completed, before it is handled.  *restart: those that ran start again afterwards. */
static uint64_t msg_stop_mask(const struct vub_conn *c, uint64_t u64,
			      const struct vhost_vring_state *st, bool *restart)
{
	uint64_t all = c->exp->nq >= 64 ? ~0ull : (1ull << c->exp->nq) - 1;

	*restart = false;
	switch (c->hdr.request) {
	case VHOST_USER_SET_MEM_TABLE:
	case VHOST_USER_ADD_MEM_REG:
	case VHOST_USER_REM_MEM_REG:
	case VHOST_USER_SET_FEATURES:
		*restart = true;
		return all;
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
		return all;
	case VHOST_USER_SET_VRING_ADDR:
		*restart = true;
		return queue_bit(c, st->index);
	case VHOST_USER_SET_VRING_NUM:
	case VHOST_USER_SET_VRING_BASE:
	case VHOST_USER_GET_VRING_BASE:
		return queue_bit(c, st->index);
	case VHOST_USER_SET_VRING_KICK:
		return queue_bit(c, u64 & VHOST_USER_VRING_IDX_MASK);
	case VHOST_USER_SET_VRING_ENABLE:
		return st->num ? 0 : queue_bit(c, st->index);
	default:
		return 0;
	}
}

static int handle_msg_now(struct vub_conn *c, uint64_t u64, struct vhost_vring_state st);

/* Handle the message in c.  VUB_WAIT: it waits for queues to stop (vub_conn_stop_answered()
 * handles it again then); else as handle_msg_now(). */
static int handle_msg(struct vub_conn *c)
{
	struct vub_export *x = c->exp;
	struct vhost_vring_state st = {0};
	uint64_t u64 = 0, mask;
	const char *why;
	bool restart;
	int h;

	if (vub_msg_check(&c->hdr, c->nfds, &why) < 0) {
		bd_log(BD_LOG_ERROR, "vhost-user-blk export '%s': %s message: %s", x->id,
		       vub_req_name(c->hdr.request), why);
		return VUB_FATAL;
	}
	if (c->hdr.size >= 8)
		memcpy(&u64, c->payload, 8);
	if (c->hdr.size >= sizeof(st))
		memcpy(&st, c->payload, sizeof(st));
	mask = msg_stop_mask(c, u64, &st, &restart);
	for (unsigned i = 0; i < x->nq; i++) {
		if (!(mask & (1ull << i)) || !c->q[i]->started || c->q[i]->stopping)
			continue;
		c->msg_ran |= 1ull << i;
		vub_queue_stop_begin(c->q[i]);
	}
	for (unsigned i = 0; i < x->nq; i++)
		if ((mask & (1ull << i)) && c->q[i]->started)
			return VUB_WAIT;
	bd_log(BD_LOG_DEBUG, "vhost-user-blk '%s': %s", x->id, vub_req_name(c->hdr.request));
	h = handle_msg_now(c, u64, st);
	for (unsigned i = 0; i < x->nq && restart; i++)
		if (c->msg_ran & (1ull << i))
			vub_queue_try_start(c->q[i]);
	c->msg_ran = 0;
	return h;
}

static int handle_msg_now(struct vub_conn *c, uint64_t u64, struct vhost_vring_state st)
{
	struct vub_export *x = c->exp;
	struct vub_queue *q;

	switch (c->hdr.request) {
	case VHOST_USER_GET_FEATURES:
		return reply_u64(c, x->offered);
	case VHOST_USER_SET_FEATURES:
		if (u64 & ~x->offered)
			return -EINVAL;
		c->features = u64;
		c->features_set = true;
		return 0;
	case VHOST_USER_GET_PROTOCOL_FEATURES:
		return reply_u64(c, offered_protocol_features());
	case VHOST_USER_SET_PROTOCOL_FEATURES:
		c->pfeatures = u64 & offered_protocol_features();
		return 0;
	case VHOST_USER_SET_OWNER:
		return 0;
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
		conn_reset(c);
		return 0;
	case VHOST_USER_GET_QUEUE_NUM:
		return reply_u64(c, x->nq);
	case VHOST_USER_GET_MAX_MEM_SLOTS:
		return reply_u64(c, VUB_MAX_MEM_SLOTS);
	case VHOST_USER_SET_MEM_TABLE:
		return h_set_mem_table(c);
	case VHOST_USER_ADD_MEM_REG:
		return h_add_mem_reg(c);
	case VHOST_USER_REM_MEM_REG:
		return h_rem_mem_reg(c);
	case VHOST_USER_SET_VRING_NUM:
		if (!(q = msg_queue(c, st.index)) || st.num == 0 || st.num > VUB_MAX_RING)
			return -EINVAL;
		if (!has_feature(c, VIRTIO_F_RING_PACKED) && (st.num & (st.num - 1)))
			return -EINVAL;
		vub_queue_stop(q);
		q->num = st.num;
		q->broken = false;
		return 0;
	case VHOST_USER_SET_VRING_ADDR: {
		struct vhost_vring_addr a;
		memcpy(&a, c->payload, sizeof(a));
		if (!(q = msg_queue(c, a.index)))
			return -EINVAL;
		q->desc_ua = a.desc_user_addr;
		q->avail_ua = a.avail_user_addr;
		q->used_ua = a.used_user_addr;
		q->addr_set = true;
		q->broken = false;
		return 0;
	}
	case VHOST_USER_SET_VRING_BASE:
		if (!(q = msg_queue(c, st.index)))
			return -EINVAL;
		vub_queue_stop(q);
		q->base = st.num;
		return 0;
	case VHOST_USER_GET_VRING_BASE:
		if (!(q = msg_queue(c, st.index)))
			return VUB_FATAL;
		vub_queue_stop(q); /* stopped already (msg_stop_mask); q->base is where it stood */
		st.num = q->base;
		vub_close_fd(&q->kick_fd);
		q->broken = false;
		return reply(c, &st, sizeof(st), -1);
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR: {
		int fd = (u64 & VHOST_USER_VRING_NOFD_MASK) ? -1 : take_fd(c, 0);
		if (!(q = msg_queue(c, (uint32_t)(u64 & VHOST_USER_VRING_IDX_MASK))) ||
		    (!(u64 & VHOST_USER_VRING_NOFD_MASK) && fd < 0)) {
			if (fd >= 0)
				close(fd);
			return -EINVAL;
		}
		if (c->hdr.request == VHOST_USER_SET_VRING_KICK) {
			if (fd < 0)
				return -EINVAL; /* polling mode: not supported */
			vub_queue_stop(q);
			vub_close_fd(&q->kick_fd);
			q->kick_fd = fd;
			if (!has_feature(c, VHOST_USER_F_PROTOCOL_FEATURES))
				q->enabled = true;
			vub_queue_try_start(q);
		} else if (c->hdr.request == VHOST_USER_SET_VRING_CALL) {
			int old = q->call_fd;
			if (q->started) {
				/* swap on the loop, then signal the new fd once so that no
				 * completion is lost between the two */
				q->new_call_fd = fd;
				bd_loop_call(q->loop, vub_q_swap_call_fn, q);
			} else {
				q->call_fd = fd;
			}
			if (old >= 0)
				close(old);
		} else {
			vub_close_fd(&q->err_fd);
			q->err_fd = fd;
		}
		return 0;
	}
	case VHOST_USER_SET_VRING_ENABLE:
		if (!(q = msg_queue(c, st.index)))
			return -EINVAL;
		q->enabled = st.num != 0;
		if (q->enabled)
			vub_queue_try_start(q);
		else
			vub_queue_stop(q);
		return 0;
	case VHOST_USER_GET_CONFIG:
		return h_get_config(c);
	case VHOST_USER_SET_CONFIG:
		return h_set_config(c);
	case VHOST_USER_SET_BACKEND_REQ_FD:
		vub_close_fd(&c->backend_fd);
		c->backend_fd = take_fd(c, 0);
		return 0;
	case VHOST_USER_GET_INFLIGHT_FD:
		return h_get_inflight_fd(c);
	case VHOST_USER_SET_INFLIGHT_FD:
		return h_set_inflight_fd(c);
	case VHOST_USER_GET_STATUS:
		return reply_u64(c, 0);
	default:
		bd_log(BD_LOG_WARN, "vhost-user-blk export '%s': unsupported message %u (%s)",
		       x->id, c->hdr.request, vub_req_name(c->hdr.request));
		return -ENOTSUP;
	}
}

static void conn_close_fds(struct vub_conn *c)
{
	for (unsigned i = 0; i < c->nfds; i++)
		vub_close_fd(&c->fds[i]);
	c->nfds = 0;
}

/* Receive more of the current message.  1: complete; 0: wait for input; <0: close. */
static int conn_recv(struct vub_conn *c)
{
	for (;;) {
		size_t want = VHOST_USER_HDR_SIZE;
		uint8_t *dst;
		union {
			char buf[CMSG_SPACE(sizeof(int) * VHOST_USER_MAX_FDS)];
			struct cmsghdr align;
		} u;
		struct iovec iov;
		struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
		ssize_t n;

		if (c->got >= VHOST_USER_HDR_SIZE) {
			if (c->hdr.size > VHOST_USER_MAX_PAYLOAD)
				return -EMSGSIZE;
			want += c->hdr.size;
		}
		if (c->got == want) {
			if (want == VHOST_USER_HDR_SIZE && c->hdr.size)
				continue; /* now read the payload */
			return 1;
		}
		if (c->got < VHOST_USER_HDR_SIZE) {
			dst = (uint8_t *)&c->hdr + c->got;
			iov.iov_len = VHOST_USER_HDR_SIZE - c->got;
		} else {
			dst = c->payload + (c->got - VHOST_USER_HDR_SIZE);
			iov.iov_len = want - c->got;
		}
		iov.iov_base = dst;
		mh.msg_control = u.buf;
		mh.msg_controllen = sizeof(u.buf);
		n = recvmsg(c->fd, &mh, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -errno;
		}
		if (n == 0)
			return -ECONNRESET;
		for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
			if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
				continue;
			unsigned k = (unsigned)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			for (unsigned i = 0; i < k; i++) {
				int fd;
				memcpy(&fd, CMSG_DATA(cm) + i * sizeof(int), sizeof(int));
				if (c->nfds < VHOST_USER_MAX_FDS)
					c->fds[c->nfds++] = fd;
				else
					close(fd);
			}
		}
		if (mh.msg_flags & MSG_CTRUNC)
			return -EMSGSIZE;
		c->got += (size_t)n;
	}
}

/* The current message was handled with result h: acknowledge it if asked, forget it.  <0: close
 * the connection. */
static int msg_done(struct vub_conn *c, int h)
{
	bool need_ack = (c->pfeatures & (1ull << VHOST_USER_PROTOCOL_F_REPLY_ACK)) &&
			(c->hdr.flags & VHOST_USER_NEED_REPLY_MASK);

	conn_close_fds(c);
	c->got = 0;
	if (h == VUB_FATAL)
		return -EPROTO;
	if (h != VUB_REPLIED && need_ack) {
		if (reply_u64(c, h < 0 ? 1 : 0) == VUB_FATAL)
			return -EPIPE;
	} else if (h < 0) {
		bd_log(BD_LOG_WARN, "vhost-user-blk export '%s': %s failed: %s", c->exp->id,
		       vub_req_name(c->hdr.request), strerror(-h));
	}
	return 0;
}

/* Disconnect: stop every queue without waiting; the connection is freed when they have. */
static void conn_close(struct vub_conn *c)
{
	c->closing = true;
	vub_poll_cancel(bd_loop_main(), c->poll);
	c->poll = NULL;
	for (unsigned i = 0; i < c->exp->nq; i++)
		vub_queue_stop_begin(c->q[i]);
	if (!c->pending_stops)
		vub_conn_free(c);
}

static void conn_readable(void *arg, int res);

/* Read and handle messages until the socket is drained, then wait for more. */
static void conn_process(struct vub_conn *c)
{
	int r;

	for (;;) {
		int h;
		r = conn_recv(c);
		if (r <= 0)
			break;
		h = handle_msg(c);
		if (h == VUB_WAIT) {
			c->waiting = true; /* no reading until the queues have stopped */
			return;
		}
		r = msg_done(c, h);
		if (r < 0)
			break;
	}
	if (r < 0) {
		if (r != -ECONNRESET)
			bd_log(BD_LOG_WARN,
			       "vhost-user-blk export '%s': closing the connection: %s", c->exp->id,
			       strerror(-r));
		else
			bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': front end disconnected",
			       c->exp->id);
		conn_close(c);
		return;
	}
	c->poll = vub_poll_arm(bd_loop_main(), c->fd, conn_readable, c);
}

static void conn_readable(void *arg, int res)
{
	struct vub_conn *c = arg;

	c->poll = NULL;
	if (res < 0) {
		conn_close(c);
		return;
	}
	conn_process(c);
}

static void conn_destroy(struct vub_conn *c)
{
	for (unsigned i = 0; i < c->nq; i++) {
		free(c->q[i]->reqs);
		free(c->q[i]);
	}
	free(c);
}

void vub_conn_stop_answered(struct vub_conn *c)
{
	int h;

	if (c->pending_stops)
		return;
	if (c->zombie) {
		conn_destroy(c);
		return;
	}
	if (c->closing) {
		vub_conn_free(c);
		return;
	}
	if (!c->waiting)
		return;
	c->waiting = false;
	h = handle_msg(c);
	if (h == VUB_WAIT) {
		c->waiting = true;
		return;
	}
	if (msg_done(c, h) < 0) {
		conn_close(c);
		return;
	}
	conn_process(c);
}

/* Release everything of a connection and accept the next one. */
void vub_conn_free(struct vub_conn *c)
{
	struct vub_export *x = c->exp;

	vub_poll_cancel(bd_loop_main(), c->poll);
	c->poll = NULL;
	for (unsigned i = 0; i < x->nq; i++)
		vub_queue_reset(c->q[i]); /* waits for queues still stopping (teardown) */
	conn_close_fds(c);
	mem_clear(&c->mem);
	inflight_unmap(c);
	vub_close_fd(&c->backend_fd);
	vub_close_fd(&c->fd);
	x->conn = NULL;
	if (c->pending_stops) {
		/* their answers are still on the way to this thread */
		c->zombie = true;
		c->exp = NULL;
	} else {
		conn_destroy(c);
	}
	if (x->listen_fd >= 0)
		vub_export_listen_arm(x);
}

static struct vub_conn *conn_new(struct vub_export *x, int fd)
{
	struct vub_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->exp = x;
	c->nq = x->nq;
	c->fd = fd;
	c->backend_fd = -1;
	atomic_init(&c->wce, !x->writethrough);
	for (unsigned i = 0; i < VHOST_USER_MAX_FDS; i++)
		c->fds[i] = -1;
	for (unsigned i = 0; i < x->nq; i++) {
		struct vub_queue *q = calloc(1, sizeof(*q));
		if (!q) {
			for (unsigned k = 0; k < i; k++)
				free(c->q[k]);
			free(c);
			return NULL;
		}
		q->c = c;
		q->idx = i;
		q->loop = x->loops[i];
		q->helper = x->nspare ? x->spare[i % x->nspare] : NULL;
		q->kick_fd = q->call_fd = q->err_fd = -1;
		q->enabled = true;
		q->notify_defer.fn = vub_q_notify_defer;
		q->stop_defer.fn = vub_q_stop_done;
		c->q[i] = q;
	}
	return c;
}

static void listen_ready(void *arg, int res)
{
	struct vub_export *x = arg;
	int fd;

	x->listen_poll = NULL;
	if (res < 0) {
		bd_log(BD_LOG_ERROR, "vhost-user-blk export '%s': listener: %s", x->id,
		       strerror(-res));
		return;
	}
	fd = accept4(x->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	if (fd < 0) {
		vub_export_listen_arm(x);
		return;
	}
	x->conn = conn_new(x, fd);
	if (!x->conn) {
		close(fd);
		vub_export_listen_arm(x);
		return;
	}
	bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': front end connected", x->id);
	x->conn->poll = vub_poll_arm(bd_loop_main(), fd, conn_readable, x->conn);
}

void vub_export_listen_arm(struct vub_export *x)
{
	x->listen_poll = vub_poll_arm(bd_loop_main(), x->listen_fd, listen_ready, x);
}

/* ---------------------------------------------------------------------------------------------
 * Resize notice [control]
 */
void vub_export_resized(struct bd_node_watch *w, uint64_t new_size)
{
	struct vub_export *x = container_of(w, struct vub_export, watch);
	struct vub_conn *c = x->conn;

	atomic_store(&x->size, new_size);
	bd_log(BD_LOG_INFO, "vhost-user-blk export '%s': node resized to %llu bytes", x->id,
	       (unsigned long long)new_size);
	if (!c || c->backend_fd < 0 || !(c->pfeatures & (1ull << VHOST_USER_PROTOCOL_F_CONFIG)))
		return;
	if (conn_send(c->backend_fd, VHOST_USER_BACKEND_CONFIG_CHANGE_MSG, VHOST_USER_VERSION, NULL,
		      0, -1) < 0) {
		bd_log(BD_LOG_WARN,
		       "vhost-user-blk export '%s': cannot send the config change "
		       "notice: %s",
		       x->id, strerror(errno));
		vub_close_fd(&c->backend_fd);
	}
}
