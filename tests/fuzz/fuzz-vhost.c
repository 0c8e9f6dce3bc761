/*
 * fuzz-vhost.c - libFuzzer harness for the vhost-user-blk export's pure parts
 * (export/vhost-user-blk/vub-ring.c): vhost-user message validation, split and packed
 * descriptor chain walks over fake guest memory, and virtio-blk request parsing of the chains.
 *
 * Input: byte 0 picks the mode, the rest is the message or the guest memory image.
 *   mode 0: a vhost-user header (12 bytes) + payload; byte 1 is the number of fds "received".
 *   mode 1/2: split/packed rings.  Bytes 1..4: ring size exponent, head index (2 bytes),
 *     flags (indirect allowed); the rest fills guest memory, which is two regions with a hole
 *     between them, each exactly as large as its buffer so that AddressSanitizer sees any access
 *     outside.  The descriptor table is at guest-physical 0.
 *   byte 0 >= 0xc0: a packed ring's in-flight region (vub_ifp_scan) as a restarted back end
 *     finds it, then every chain it reports walked from its recorded copies.  Byte 1: ring size
 *     exponent; the rest fills the region (header + 32-byte entries), then guest memory (the
 *     ring is at guest-physical 0, its flags decide whether a half-done completion is kept).
 * Every iovec the walk returns is read byte by byte (and the status byte written), so an iovec
 * outside guest memory is a reported bug.
 */
#include "export/vhost-user-blk/vub-ring.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define REGION_SIZE 8192u
#define REGION2_GPA 0x10000u

static volatile uint8_t sink;

static void touch_chain(struct vub_chain *c)
{
	struct vub_blk_req r;

	for (int i = 0; i < c->nout + c->nin; i++) {
		const uint8_t *p = c->iov[i].iov_base;
		for (size_t k = 0; k < c->iov[i].iov_len; k++)
			sink ^= p[k];
	}
	if (vub_blk_parse(c, &r) == 0) {
		*r.status = 0;
		for (int i = 0; i < r.ndata; i++) {
			const uint8_t *p = r.data[i].iov_base;
			for (size_t k = 0; k < r.data[i].iov_len; k++)
				sink ^= p[k];
		}
	}
}

/* The in-flight region of a packed ring, as written by a front end that may be hostile. */
static void fuzz_inflight(const uint8_t *data, size_t size, struct vub_mem *m, uint8_t *r1)
{
	uint32_t num = 1u << (data[1] % 10), taken;
	size_t rsize = sizeof(struct vub_inflight_pqueue) + sizeof(struct vub_inflight_pdesc) * num;
	struct vub_inflight_pqueue *f = calloc(1, rsize);
	uint16_t *heads = calloc(num, sizeof(*heads));
	uint8_t *owned = calloc(num, 1);
	struct vring_packed_desc *tmp = calloc(num, sizeof(*tmp));
	struct iovec iov[64];
	uint64_t maxc;
	const char *why;
	int n;

	if (data[4] & 2)
		num = num - num / 3;
	if (f && heads && owned && tmp) {
		size_t k = size - 5 < rsize ? size - 5 : rsize;
		memcpy(f, data + 5, k);
		if (size - 5 > rsize) {
			size_t g = size - 5 - rsize < REGION_SIZE ? size - 5 - rsize : REGION_SIZE;
			memcpy(r1, data + 5 + rsize, g);
		}
		n = vub_ifp_scan(f, num, (const struct vring_packed_desc *)r1, heads, owned, &taken,
				 &maxc, &why);
		for (int i = 0; i < n; i++) {
			struct vub_chain c = {.iov = iov, .max = 64};
			uint16_t nd = vub_ifp_chain(f, num, heads[i], tmp);
			if (nd && vub_packed_walk(m, tmp, nd, 0, data[4] & 1, &c) == 0)
				touch_chain(&c);
		}
		/* the rebuilt free list stays inside the region */
		for (uint32_t e = f->free_head, steps = 0; e < num && steps <= num; steps++)
			e = f->desc[e].next;
	}
	free(tmp);
	free(owned);
	free(heads);
	free(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct iovec iov[64];
	struct vub_chain c = {.iov = iov, .max = 64};
	struct vub_mem m = {0};
	uint8_t *r1, *r2;
	size_t n;

	if (size < 1)
		return 0;
	if (data[0] % 3 == 0) {
		struct vhost_user_hdr h;
		const char *why;
		if (size < 2 + sizeof(h))
			return 0;
		memcpy(&h, data + 2, sizeof(h));
		vub_msg_check(&h, data[1] % 10, &why);
		(void)vub_req_name(h.request);
		return 0;
	}
	if (size < 5)
		return 0;
	r1 = calloc(1, REGION_SIZE);
	r2 = calloc(1, REGION_SIZE);
	if (!r1 || !r2) {
		free(r1);
		free(r2);
		return 0;
	}
	n = size - 5 < 2 * REGION_SIZE ? size - 5 : 2 * REGION_SIZE;
	memcpy(r1, data + 5, n < REGION_SIZE ? n : REGION_SIZE);
	if (n > REGION_SIZE)
		memcpy(r2, data + 5 + REGION_SIZE, n - REGION_SIZE);
	m.n = 2;
	m.r[0] = (struct vub_region){
	    .gpa = 0, .size = REGION_SIZE, .uva = 0x7f0000000000ull, .host = r1};
	m.r[1] = (struct vub_region){
	    .gpa = REGION2_GPA, .size = REGION_SIZE, .uva = 0x7f0000100000ull, .host = r2};
	if (data[0] >= 0xc0) {
		memset(r1, 0, REGION_SIZE);
		fuzz_inflight(data, size, &m, r1);
		free(r1);
		free(r2);
		return 0;
	}
	{
		uint32_t num = 1u << (data[1] % 10); /* up to 512 entries: 8 KiB of descriptors */
		uint16_t head = (uint16_t)(data[2] | data[3] << 8);
		bool indirect = data[4] & 1;
		if (data[0] % 3 == 1) {
			if (vub_split_walk(&m, (const struct vring_desc *)r1, num, head, indirect,
					   &c) == 0)
				touch_chain(&c);
		} else {
			if (data[4] & 2)
				num = num - num / 3; /* packed rings need not be powers of two */
			if (vub_packed_walk(&m, (const struct vring_packed_desc *)r1, num,
					    head % (num ? num : 1), indirect, &c) == 0)
				touch_chain(&c);
		}
		/* translation helpers on arbitrary addresses */
		uint64_t a;
		memcpy(&a, r1, sizeof(a));
		(void)vub_gpa_to_host(&m, a, data[4]);
		(void)vub_uva_to_host(&m, a, data[3]);
		int k = 0;
		(void)vub_gpa_to_iov(&m, a, (uint64_t)data[2] << 8, iov, &k, 64);
	}
	free(r1);
	free(r2);
	return 0;
}
