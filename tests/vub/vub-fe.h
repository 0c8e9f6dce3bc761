/*
 * vub-fe.h - the test front end's virtio driver (tests/vub/vub-fe.c), shared by the commands of
 * tests/vub/vub-client.c: the vhost-user connection and its set-up, guest memory (a memfd shared
 * with the back end), split and packed rings, submitting and reaping virtio-blk requests, and
 * reconnecting the way QEMU does.  Single-threaded per queue.
 */
#ifndef BLOCKD_TESTS_VUB_FE_H
#define BLOCKD_TESTS_VUB_FE_H

#include "export/vhost-user-blk/vub-proto.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define MAX_Q 16
#define SLOT_BUF (1u << 20)

struct slot {
	struct virtio_blk_outhdr hdr;
	uint8_t status;
	uint8_t ndesc;	/* packed: ring slots its chain took */
	uint8_t *buf;	/* SLOT_BUF bytes in shared memory */
	uint64_t start; /* bench: ns */
	uint64_t tag;	/* stress: what the request wrote */
	bool busy;
};

struct vq {
	unsigned idx, num, nslots;
	struct vring_desc *desc; /* split */
	struct vring_avail *avail;
	struct vring_used *used;
	struct vring_packed_desc *pdesc; /* packed */
	struct vring_packed_event *drv_ev, *dev_ev;
	bool avail_wrap, used_wrap;
	int kick, call;
	uint16_t avail_idx, last_used; /* split: free-running; packed: ring positions */
	uint64_t completed;
	struct slot *slots; /* in shared memory */
	uint8_t *bufs;
	/* bench */
	uint64_t ops, bytes, lat_ns;
	pthread_t th;
};

/* Set by the caller before connect_and_map()/setup() (options), then by the set-up. */
extern int sock;
extern uint8_t *mem;
extern size_t mem_size;
extern int mem_fd;
extern uint64_t features, pfeatures;
extern struct virtio_blk_config cfg;
extern unsigned nq, ring_num;
extern bool packed, use_inflight, reconnect_mode;
extern const char *sock_path;
extern unsigned nreconnects;
extern struct vq vqs[MAX_Q];

void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
uint64_t now_ns(void);

/* vhost-user messages: send; a request with a u64 reply; a request acknowledged with REPLY_ACK
 * when negotiated (returns the ack, 0 = success). */
void vu_send(uint32_t req, uint32_t flags, const void *p, uint32_t size, const int *fds, int nfds);
uint64_t vu_get_u64(uint32_t req);
uint64_t vu_call(uint32_t req, const void *p, uint32_t size, const int *fds, int nfds);

/* Connect to sock_path and create the shared memory (8 MiB + slots_mem). */
void connect_and_map(size_t slots_mem);
/* Rings and slots (at most qd_slots per queue), then the vhost-user set-up. */
void setup(unsigned qd_slots);
/* The back end went away: connect again and set up again (dies unless reconnect_mode). */
void reconnect(void);
/* Has the back end closed the connection? */
bool sock_gone(void);

/* Queue a request in slot s of q (not kicked); kick. */
void submit(struct vq *q, unsigned s, uint32_t type, uint64_t sector, uint32_t len, bool data_in);
void kick(struct vq *q);
/* The next used element's slot (marked idle), or -1; dies on an element for an idle slot. */
int next_used(struct vq *q);
/* Wait for completions; calls fn for each; returns how many (0 on timeout). */
unsigned reap(struct vq *q, void (*fn)(struct vq *, unsigned), int timeout_ms);
/* One synchronous request on queue qi slot 0; returns the status byte. */
int sync_req(unsigned qi, uint32_t type, uint64_t off, uint32_t len, bool data_in);
/* DISCARD / WRITE_ZEROES / SECURE_ERASE with n segments (offset, length pairs) + extra bytes. */
int multi_req(unsigned qi, uint32_t type, unsigned n, const uint64_t *ol, uint32_t flags,
	      uint32_t extra);
int range_req(unsigned qi, uint32_t type, uint64_t off, uint64_t len, uint32_t flags);

#endif
