/*
 * vub-ring.h - the pure parts of the vhost-user-blk export: guest memory translation, descriptor
 * chain walks (split and packed rings), virtio-blk request parsing and vhost-user message
 * validation.  They work on buffers and a memory table only (no fds, no loops), so that the
 * fuzz harness tests/fuzz/fuzz-vhost.c can drive them over fake guest memory.  [any thread; the
 * caller owns every object passed in]
 */
#ifndef BLOCKD_VUB_RING_H
#define BLOCKD_VUB_RING_H

#include "export/vhost-user-blk/vub-proto.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#define VUB_MAX_MEM_SLOTS 32u

/* One region of guest memory, mapped in this process at host (covering [gpa, gpa+size) and the
 * front end's virtual addresses [uva, uva+size)). */
struct vub_region {
	uint64_t gpa, size, uva, mmap_offset;
	uint8_t *host;
	void *map;	/* what mmap returned (NULL for fake memory) */
	size_t map_len; /* its length */
};

struct vub_mem {
	unsigned n;
	struct vub_region r[VUB_MAX_MEM_SLOTS];
};

/* Host pointer for len bytes at guest-physical gpa, inside one region; NULL if not mapped. */
void *vub_gpa_to_host(const struct vub_mem *m, uint64_t gpa, uint64_t len);
/* Host pointer for len bytes at front-end virtual address uva, inside one region; NULL if not. */
void *vub_uva_to_host(const struct vub_mem *m, uint64_t uva, uint64_t len);
/* Append iovecs for [gpa, gpa+len) (possibly across regions) at iov[*n], at most max entries in
 * all.  0, or -EFAULT (not mapped) / -E2BIG (too many pieces). */
int vub_gpa_to_iov(const struct vub_mem *m, uint64_t gpa, uint64_t len, struct iovec *iov, int *n,
		   int max);

/* A walked descriptor chain: iov[0..nout) are device-readable, iov[nout..nout+nin) writable. */
struct vub_chain {
	struct iovec *iov;
	int max;	/* capacity of iov */
	int nout;	/* readable pieces */
	int nin;	/* writable pieces */
	uint32_t ndesc; /* packed rings: descriptors the chain took in the ring */
	uint16_t id;	/* packed rings: the buffer id */
};

/* Walk the split-ring chain starting at head in the descriptor table desc (num entries, already
 * translated to host memory).  indirect: VIRTIO_RING_F_INDIRECT_DESC was negotiated.
 * 0, or -EINVAL for a malformed chain (bad index, loop, readable after writable, nested or
 * disallowed indirect), -EFAULT for memory outside the guest, -E2BIG for too many pieces. */
int vub_split_walk(const struct vub_mem *m, const struct vring_desc *desc, uint32_t num,
		   uint16_t head, bool indirect, struct vub_chain *c);

/* Walk the packed-ring chain starting at ring slot idx (desc: num entries; the caller checked
 * that slot idx is available).  Fills c->id and c->ndesc.  Errors as vub_split_walk. */
int vub_packed_walk(const struct vub_mem *m, const struct vring_packed_desc *desc, uint32_t num,
		    uint16_t idx, bool indirect, struct vub_chain *c);

/* vring_need_event() from the virtio spec: should the device notify after moving its index from
 * old to new_idx, given the driver's event index? */
static inline bool vub_need_event(uint16_t event_idx, uint16_t new_idx, uint16_t old)
{
	return (uint16_t)(new_idx - event_idx - 1) < (uint16_t)(new_idx - old);
}

/* A parsed virtio-blk request.  Parsing trims the header and the status byte off the chain's
 * iovecs in place; data/ndata then describe the payload (readable for OUT, DISCARD,
 * WRITE_ZEROES, SECURE_ERASE; writable for IN and GET_ID). */
struct vub_blk_req {
	uint32_t type;
	uint64_t sector;
	uint8_t *status;
	struct iovec *data;
	int ndata;
	uint64_t data_len;
};

/* 0, or -EINVAL when the chain cannot carry a request at all (no room for the header or the
 * status byte): the request then cannot be answered with a status. */
int vub_blk_parse(struct vub_chain *c, struct vub_blk_req *r);

/* ---- packed in-flight region (vhost-user.rst "Inflight I/O tracking"; written by vub-inflight.c,
 * but shared with the front end, so read back as outside input) ---- */
#define VUB_IFP_END                                                                                \
	0xffffu /* end of the free list (never an index: rings have <= 32768 entries)              \
		 */

/* At a restart, over the region f of a packed ring of num entries (ring: its descriptors, to see
 * whether a used element was written): commit or roll back a half-done update, find the chains in
 * flight and check them (lengths, links in range, no entry in two chains), rebuild the free list
 * from the other entries.  heads[] (num entries) gets the head entries in flight in the order
 * they were taken, *taken the ring descriptors they hold, *max_counter their largest counter;
 * owned is num bytes of scratch.  Returns the number of heads, or -EINVAL with *why. */
int vub_ifp_scan(struct vub_inflight_pqueue *f, uint32_t num, const struct vring_packed_desc *ring,
		 uint16_t *heads, uint8_t *owned, uint32_t *taken, uint64_t *max_counter,
		 const char **why);

/* The descriptors recorded for the chain at head (checked by vub_ifp_scan) into tmp (num
 * entries); returns how many (0 if the chain is not valid). */
uint16_t vub_ifp_chain(const struct vub_inflight_pqueue *f, uint32_t num, uint16_t head,
		       struct vring_packed_desc *tmp);

/* Validate a vhost-user message header and payload size for the given request (nfds file
 * descriptors came with it).  0, or -EINVAL with a reason in *why. */
int vub_msg_check(const struct vhost_user_hdr *h, unsigned nfds, const char **why);

/* Name of a vhost-user request for logs. */
const char *vub_req_name(uint32_t req);

#endif /* BLOCKD_VUB_RING_H */
