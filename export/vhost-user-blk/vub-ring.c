/*
 * vub-ring.c - pure functions of the vhost-user-blk export: guest memory translation, split and
 * packed descriptor chain walks, virtio-blk request parsing and vhost-user message validation.
 * No I/O, no global state: any thread, and the fuzz harness drives them over fake memory.
 *
 * Everything read from guest memory is read once into a local copy before it is checked and
 * used, so that a guest changing descriptors under our feet cannot make a checked value differ
 * from the used one.
 */
#include "export/vhost-user-blk/vub-ring.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(struct virtio_blk_config) == 72, "virtio_blk_config layout");
_Static_assert(sizeof(struct vhost_vring_addr) == 40, "vring addr layout");
_Static_assert(sizeof(struct vhost_user_inflight) == 24, "inflight layout");
_Static_assert(sizeof(struct vub_inflight_desc) == 16, "inflight desc layout");
_Static_assert(sizeof(struct vub_inflight_queue) == 16, "inflight queue layout");
_Static_assert(sizeof(struct vub_inflight_pdesc) == 32, "packed inflight desc layout");
_Static_assert(sizeof(struct vub_inflight_pqueue) == 32, "packed inflight queue layout");

/* Walks never take more descriptors than this, whatever the ring size says. */
#define VUB_MAX_CHAIN 4096u

static const struct vub_region *find_gpa(const struct vub_mem *m, uint64_t gpa)
{
	for (unsigned i = 0; i < m->n; i++) {
		const struct vub_region *r = &m->r[i];
		if (gpa >= r->gpa && gpa - r->gpa < r->size)
			return r;
	}
	return NULL;
}

void *vub_gpa_to_host(const struct vub_mem *m, uint64_t gpa, uint64_t len)
{
	const struct vub_region *r = find_gpa(m, gpa);
	uint64_t off;

	if (!r)
		return NULL;
	off = gpa - r->gpa;
	if (len > r->size - off)
		return NULL;
	return r->host + off;
}

void *vub_uva_to_host(const struct vub_mem *m, uint64_t uva, uint64_t len)
{
	for (unsigned i = 0; i < m->n; i++) {
		const struct vub_region *r = &m->r[i];
		if (uva >= r->uva && uva - r->uva < r->size) {
			uint64_t off = uva - r->uva;
			if (len > r->size - off)
				return NULL;
			return r->host + off;
		}
	}
	return NULL;
}

int vub_gpa_to_iov(const struct vub_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, int *n,
		   int max)
{
	while (len) {
		const struct vub_region *r = find_gpa(m, gpa);
		uint64_t off, piece;

		if (!r)
			return -EFAULT;
		if (*n >= max)
			return -E2BIG;
		off = gpa - r->gpa;
		piece = r->size - off;
		if (piece > len)
			piece = len;
		iov[*n].iov_base = r->host + off;
		iov[*n].iov_len = (size_t)piece;
		(*n)++;
		gpa += piece;
		len -= piece;
	}
	return 0;
}

/* Add one descriptor's buffer to the chain.  Readable pieces must all come first. */
static int chain_add(const struct vub_mem *m, struct vub_chain *c, uint64_t addr, uint32_t len,
		     bool writable)
{
	int n = c->nout + c->nin, r;

	if (!writable && c->nin)
		return -EINVAL;
	if (len == 0)
		return 0;
	r = vub_gpa_to_iov(m, addr, len, c->iov, &n, c->max);
	if (r < 0)
		return r;
	if (writable)
		c->nin = n - c->nout;
	else
		c->nout = n;
	return 0;
}

/* An indirect table of split descriptors: walk it by its own next links. */
static int split_walk_indirect(const struct vub_mem *m, uint64_t addr, uint32_t len,
			       struct vub_chain *c)
{
	const struct vring_desc *table;
	uint32_t count, i = 0, steps = 0;

	if (len == 0 || len % sizeof(struct vring_desc))
		return -EINVAL;
	count = len / sizeof(struct vring_desc);
	table = vub_gpa_to_host(m, addr, len);
	if (!table)
		return -EFAULT;
	for (;;) {
		struct vring_desc d;
		int r;

		memcpy(&d, &table[i], sizeof(d));
		if (++steps > count || steps > VUB_MAX_CHAIN)
			return -EINVAL; /* a loop */
		if (d.flags & VRING_DESC_F_INDIRECT)
			return -EINVAL; /* nested */
		r = chain_add(m, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
		if (r < 0)
			return r;
		if (!(d.flags & VRING_DESC_F_NEXT))
			return 0;
		if (d.next >= count)
			return -EINVAL;
		i = d.next;
	}
}

int vub_split_walk(const struct vub_mem *m, const struct vring_desc *desc, uint32_t num,
		   uint16_t head, bool indirect, struct vub_chain *c)
{
	uint32_t i = head, steps = 0;

	c->nout = c->nin = 0;
	c->ndesc = 1;
	c->id = head;
	if (num == 0 || head >= num)
		return -EINVAL;
	for (;;) {
		struct vring_desc d;
		int r;

		memcpy(&d, &desc[i], sizeof(d));
		if (++steps > num || steps > VUB_MAX_CHAIN)
			return -EINVAL; /* a loop */
		if (d.flags & VRING_DESC_F_INDIRECT) {
			/* Only as the whole chain: not after other descriptors, not with NEXT. */
			if (!indirect || steps != 1 || (d.flags & VRING_DESC_F_NEXT))
				return -EINVAL;
			return split_walk_indirect(m, d.addr, d.len, c);
		}
		r = chain_add(m, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
		if (r < 0)
			return r;
		if (!(d.flags & VRING_DESC_F_NEXT))
			return 0;
		if (d.next >= num)
			return -EINVAL;
		i = d.next;
	}
}

int vub_packed_walk(const struct vub_mem *m, const struct vring_packed_desc *desc, uint32_t num,
		    uint16_t idx, bool indirect, struct vub_chain *c)
{
	uint32_t i = idx, steps = 0;

	c->nout = c->nin = 0;
	c->ndesc = 0;
	c->id = 0;
	if (num == 0 || idx >= num)
		return -EINVAL;
	for (;;) {
		struct vring_packed_desc d;
		int r;

		memcpy(&d, &desc[i], sizeof(d));
		if (++steps > num || steps > VUB_MAX_CHAIN)
			return -EINVAL;
		c->ndesc = steps;
		if (d.flags & VRING_DESC_F_INDIRECT) {
			const struct vring_packed_desc *table;
			uint32_t count;

			if (!indirect || steps != 1 || (d.flags & VRING_DESC_F_NEXT))
				return -EINVAL;
			if (d.len == 0 || d.len % sizeof(struct vring_packed_desc))
				return -EINVAL;
			count = d.len / sizeof(struct vring_packed_desc);
			if (count > VUB_MAX_CHAIN)
				return -EINVAL;
			table = vub_gpa_to_host(m, d.addr, d.len);
			if (!table)
				return -EFAULT;
			c->id = d.id;
			for (uint32_t k = 0; k < count; k++) {
				struct vring_packed_desc t;
				memcpy(&t, &table[k], sizeof(t));
				if (t.flags & VRING_DESC_F_INDIRECT)
					return -EINVAL;
				r = chain_add(m, c, t.addr, t.len, t.flags & VRING_DESC_F_WRITE);
				if (r < 0)
					return r;
			}
			return 0;
		}
		r = chain_add(m, c, d.addr, d.len, d.flags & VRING_DESC_F_WRITE);
		if (r < 0)
			return r;
		if (!(d.flags & VRING_DESC_F_NEXT)) {
			c->id = d.id;
			return 0;
		}
		if (++i == num)
			i = 0;
	}
}

/* Drop len bytes from the front of iov[0..*n); the array is compacted in place. */
static void iov_drop_front(struct iovec *iov, int *n, size_t len)
{
	int i = 0;

	while (len && i < *n) {
		if (iov[i].iov_len <= len) {
			len -= iov[i].iov_len;
			i++;
		} else {
			iov[i].iov_base = (uint8_t *)iov[i].iov_base + len;
			iov[i].iov_len -= len;
			len = 0;
		}
	}
	if (i) {
		memmove(iov, iov + i, (size_t)(*n - i) * sizeof(*iov));
		*n -= i;
	}
}

int vub_blk_parse(struct vub_chain *c, struct vub_blk_req *r)
{
	struct iovec *out = c->iov, *in = c->iov + c->nout;
	int nout = c->nout, nin = c->nin, last;
	struct virtio_blk_outhdr h;
	size_t got = 0;

	memset(r, 0, sizeof(*r));
	/* The header: the first 16 readable bytes, possibly over several pieces. */
	for (int i = 0; i < nout && got < sizeof(h); i++) {
		size_t take = out[i].iov_len;
		if (take > sizeof(h) - got)
			take = sizeof(h) - got;
		memcpy((uint8_t *)&h + got, out[i].iov_base, take);
		got += take;
	}
	if (got < sizeof(h))
		return -EINVAL;
	/* The status: the last writable byte. */
	last = nin - 1;
	while (last >= 0 && in[last].iov_len == 0)
		last--;
	if (last < 0)
		return -EINVAL;
	r->status = (uint8_t *)in[last].iov_base + in[last].iov_len - 1;
	in[last].iov_len--;
	nin = last + (in[last].iov_len ? 1 : 0);

	r->type = h.type;
	r->sector = h.sector;
	switch (h.type) {
	case VIRTIO_BLK_T_IN:
	case VIRTIO_BLK_T_GET_ID:
		r->data = in;
		r->ndata = nin;
		break;
	default:
		/* OUT, DISCARD, WRITE_ZEROES, SECURE_ERASE carry readable data; FLUSH and unknown
		 * types none that we look at.  The writable part is then only the status. */
		iov_drop_front(out, &nout, sizeof(h));
		r->data = out;
		r->ndata = nout;
		break;
	}
	c->nout = nout;
	c->nin = nin;
	r->data_len = 0;
	for (int i = 0; i < r->ndata; i++)
		r->data_len += r->data[i].iov_len;
	return 0;
}

/* ---- packed in-flight region ---------------------------------------------------------------- */
static int cmp_counter(const void *a, const void *b, void *arg)
{
	const struct vub_inflight_pqueue *f = arg;
	uint64_t ca = f->desc[*(const uint16_t *)a].counter,
		 cb = f->desc[*(const uint16_t *)b].counter;
	return ca < cb ? -1 : ca > cb;
}

/* Finish or roll back an update the previous back end was in the middle of. */
static void ifp_recover(struct vub_inflight_pqueue *f, uint32_t num,
			const struct vring_packed_desc *ring)
{
	if ((f->used_idx != f->old_used_idx || f->used_wrap_counter != f->old_used_wrap_counter) &&
	    f->old_used_idx < num) {
		/* A completion was under way.  If the descriptor at the old used index no longer
		 * looks as the driver made it available, its used element was written: commit. */
		uint16_t fl = __atomic_load_n(&ring[f->old_used_idx].flags, __ATOMIC_ACQUIRE);
		bool w = f->old_used_wrap_counter != 0;
		bool avail = fl & VRING_PACKED_DESC_F_AVAIL, used = fl & VRING_PACKED_DESC_F_USED;
		if (!(avail == w && used != w)) {
			f->old_free_head = f->free_head;
			f->old_used_idx = f->used_idx;
			f->old_used_wrap_counter = f->used_wrap_counter;
		}
	}
	f->free_head = f->old_free_head;
	f->used_idx = f->old_used_idx;
	f->used_wrap_counter = f->old_used_wrap_counter;
	/* The entry at the free head may carry a stale mark: a chain half taken, or a completion
	 * committed above before its mark was cleared. */
	if (f->free_head < num)
		f->desc[f->free_head].inflight = 0;
}

int vub_ifp_scan(struct vub_inflight_pqueue *f, uint32_t num, const struct vring_packed_desc *ring,
		 uint16_t *heads, uint8_t *owned, uint32_t *taken, uint64_t *max_counter,
		 const char **why)
{
	uint16_t prev = VUB_IFP_END;
	int n = 0;

	*why = NULL;
	*taken = 0;
	*max_counter = 0;
	if (num == 0 || num > 32768) {
		*why = "in-flight region: bad ring size";
		return -EINVAL;
	}
	ifp_recover(f, num, ring);
	if (f->used_idx >= num) {
		*why = "in-flight region: used index out of range";
		return -EINVAL;
	}
	memset(owned, 0, num);
	/* Every entry still marked is the head of a chain in flight: check its links. */
	for (uint32_t i = 0; i < num; i++) {
		struct vub_inflight_pdesc *h = &f->desc[i];
		uint16_t e = (uint16_t)i;
		if (h->inflight != 1)
			continue;
		if (h->num == 0 || h->num > num - *taken) {
			*why = "in-flight region: bad chain length";
			return -EINVAL;
		}
		for (uint16_t k = 0; k < h->num; k++) {
			if (e >= num || owned[e]) {
				*why = "in-flight region: bad chain links";
				return -EINVAL;
			}
			owned[e] = 1;
			if (k + 1 == h->num && h->last != e) {
				*why = "in-flight region: bad chain end";
				return -EINVAL;
			}
			e = f->desc[e].next;
		}
		*taken += h->num;
		heads[n++] = (uint16_t)i;
		if (h->counter > *max_counter)
			*max_counter = h->counter;
	}
	/* Rebuild the free list from the entries no chain owns. */
	for (uint32_t i = num; i-- > 0;) {
		if (owned[i])
			continue;
		f->desc[i].inflight = 0;
		f->desc[i].next = prev;
		prev = (uint16_t)i;
	}
	f->free_head = f->old_free_head = prev;
	qsort_r(heads, (size_t)n, sizeof(*heads), cmp_counter, f);
	return n;
}

uint16_t vub_ifp_chain(const struct vub_inflight_pqueue *f, uint32_t num, uint16_t head,
		       struct vring_packed_desc *tmp)
{
	uint16_t n, e = head;

	if (head >= num || (n = f->desc[head].num) == 0 || n > num)
		return 0;
	for (uint16_t k = 0; k < n; k++) {
		if (e >= num)
			return 0;
		tmp[k].addr = f->desc[e].addr;
		tmp[k].len = f->desc[e].len;
		tmp[k].id = f->desc[e].id;
		tmp[k].flags = f->desc[e].flags;
		e = f->desc[e].next;
	}
	return n;
}

int vub_msg_check(const struct vhost_user_hdr *h, unsigned nfds, const char **why)
{
	uint32_t sz = h->size;
	unsigned want_fds = 0, max_fds = 0;
	bool exact = true;
	uint32_t want = 0;

	*why = NULL;
	if ((h->flags & VHOST_USER_VERSION_MASK) != VHOST_USER_VERSION) {
		*why = "bad protocol version";
		return -EINVAL;
	}
	if (h->flags & VHOST_USER_REPLY_MASK) {
		*why = "a reply where a request was expected";
		return -EINVAL;
	}
	if (sz > VHOST_USER_MAX_PAYLOAD) {
		*why = "payload too large";
		return -EINVAL;
	}
	switch (h->request) {
	case VHOST_USER_GET_FEATURES:
	case VHOST_USER_GET_PROTOCOL_FEATURES:
	case VHOST_USER_GET_QUEUE_NUM:
	case VHOST_USER_GET_MAX_MEM_SLOTS:
	case VHOST_USER_SET_OWNER:
	case VHOST_USER_RESET_OWNER:
	case VHOST_USER_RESET_DEVICE:
	case VHOST_USER_GET_STATUS:
		exact = false; /* payload ignored (QEMU sends u64 zero for some) */
		want = 0;
		break;
	case VHOST_USER_SET_FEATURES:
	case VHOST_USER_SET_PROTOCOL_FEATURES:
	case VHOST_USER_SET_STATUS:
		want = sizeof(uint64_t);
		break;
	case VHOST_USER_SET_MEM_TABLE:
		/* nregions and the fd count are checked against each other by the handler */
		exact = false;
		want = 8;
		max_fds = VHOST_MEMORY_BASELINE_NREGIONS;
		break;
	case VHOST_USER_ADD_MEM_REG:
		want = sizeof(struct vhost_user_mem_single);
		want_fds = max_fds = 1;
		break;
	case VHOST_USER_REM_MEM_REG:
		want = sizeof(struct vhost_user_mem_single);
		max_fds = 1; /* QEMU passes the region's fd along; ignored */
		break;
	case VHOST_USER_SET_VRING_NUM:
	case VHOST_USER_SET_VRING_BASE:
	case VHOST_USER_GET_VRING_BASE:
	case VHOST_USER_SET_VRING_ENABLE:
		want = sizeof(struct vhost_vring_state);
		break;
	case VHOST_USER_SET_VRING_ADDR:
		want = sizeof(struct vhost_vring_addr);
		break;
	case VHOST_USER_SET_VRING_KICK:
	case VHOST_USER_SET_VRING_CALL:
	case VHOST_USER_SET_VRING_ERR:
		want = sizeof(uint64_t);
		max_fds = 1;
		break;
	case VHOST_USER_SET_BACKEND_REQ_FD:
		exact = false;
		want_fds = max_fds = 1;
		break;
	case VHOST_USER_GET_CONFIG:
	case VHOST_USER_SET_CONFIG:
		exact = false;
		want = VHOST_USER_CONFIG_HDR_SIZE;
		break;
	case VHOST_USER_GET_INFLIGHT_FD:
		want = sizeof(struct vhost_user_inflight);
		break;
	case VHOST_USER_SET_INFLIGHT_FD:
		want = sizeof(struct vhost_user_inflight);
		want_fds = max_fds = 1;
		break;
	case VHOST_USER_SET_LOG_BASE:
	case VHOST_USER_SET_LOG_FD:
		exact = false;
		max_fds = 1;
		break;
	default:
		/* Unknown or unsupported: let the handler answer it (with an error if asked). */
		exact = false;
		max_fds = VHOST_USER_MAX_FDS;
		break;
	}
	if (exact ? sz != want : sz < want) {
		*why = "wrong payload size";
		return -EINVAL;
	}
	if (nfds < want_fds || nfds > max_fds) {
		*why = "wrong number of file descriptors";
		return -EINVAL;
	}
	return 0;
}

const char *vub_req_name(uint32_t req)
{
	static const char *const names[VHOST_USER_MAX_REQ] = {
	    [VHOST_USER_GET_FEATURES] = "GET_FEATURES",
	    [VHOST_USER_SET_FEATURES] = "SET_FEATURES",
	    [VHOST_USER_SET_OWNER] = "SET_OWNER",
	    [VHOST_USER_RESET_OWNER] = "RESET_OWNER",
	    [VHOST_USER_SET_MEM_TABLE] = "SET_MEM_TABLE",
	    [VHOST_USER_SET_LOG_BASE] = "SET_LOG_BASE",
	    [VHOST_USER_SET_LOG_FD] = "SET_LOG_FD",
	    [VHOST_USER_SET_VRING_NUM] = "SET_VRING_NUM",
	    [VHOST_USER_SET_VRING_ADDR] = "SET_VRING_ADDR",
	    [VHOST_USER_SET_VRING_BASE] = "SET_VRING_BASE",
	    [VHOST_USER_GET_VRING_BASE] = "GET_VRING_BASE",
	    [VHOST_USER_SET_VRING_KICK] = "SET_VRING_KICK",
	    [VHOST_USER_SET_VRING_CALL] = "SET_VRING_CALL",
	    [VHOST_USER_SET_VRING_ERR] = "SET_VRING_ERR",
	    [VHOST_USER_GET_PROTOCOL_FEATURES] = "GET_PROTOCOL_FEATURES",
	    [VHOST_USER_SET_PROTOCOL_FEATURES] = "SET_PROTOCOL_FEATURES",
	    [VHOST_USER_GET_QUEUE_NUM] = "GET_QUEUE_NUM",
	    [VHOST_USER_SET_VRING_ENABLE] = "SET_VRING_ENABLE",
	    [VHOST_USER_SET_BACKEND_REQ_FD] = "SET_BACKEND_REQ_FD",
	    [VHOST_USER_GET_CONFIG] = "GET_CONFIG",
	    [VHOST_USER_SET_CONFIG] = "SET_CONFIG",
	    [VHOST_USER_GET_INFLIGHT_FD] = "GET_INFLIGHT_FD",
	    [VHOST_USER_SET_INFLIGHT_FD] = "SET_INFLIGHT_FD",
	    [VHOST_USER_RESET_DEVICE] = "RESET_DEVICE",
	    [VHOST_USER_GET_MAX_MEM_SLOTS] = "GET_MAX_MEM_SLOTS",
	    [VHOST_USER_ADD_MEM_REG] = "ADD_MEM_REG",
	    [VHOST_USER_REM_MEM_REG] = "REM_MEM_REG",
	    [VHOST_USER_SET_STATUS] = "SET_STATUS",
	    [VHOST_USER_GET_STATUS] = "GET_STATUS",
	};
	if (req < VHOST_USER_MAX_REQ && names[req])
		return names[req];
	return "unknown";
}
