/*
 * file-int.h - internals of the file and host_device drivers shared by file.c (open, close,
 * resize, describe: control thread) and file-io.c (the request path: I/O loops): the node,
 * channel and request structures.
 */
#ifndef BLOCKD_PROTOCOLS_FILE_INT_H
#define BLOCKD_PROTOCOLS_FILE_INT_H

#include "blockd/blockd.h"
#include "protocols/file-lock.h"

#include <stdatomic.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#ifndef BLOCK_URING_CMD_DISCARD
#define BLOCK_URING_CMD_DISCARD _IO(0x12, 0) /* linux/blkdev.h, kernel >= 6.12 */
#endif

#define FILE_MAX_TRANSFER (32u << 20)
#define FILE_EAGAIN_RETRIES 8

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

enum file_aio { FILE_AIO_THREADS, FILE_AIO_NATIVE, FILE_AIO_IO_URING };
enum file_locking { FILE_LOCK_AUTO, FILE_LOCK_ON, FILE_LOCK_OFF };

struct file_node {
	int fd;
	bool bdev;
	bool direct;
	bool threads; /* aio=threads: IOSQE_ASYNC */
	bool writable;
	bool discard_unmap;
	bool no_flush;
	bool use_lock;
	bool bdev_fast_zero; /* block device: write-zeroes offloaded (not written by the kernel) */
	bool bdev_discard;   /* block device: supports discard */
	enum file_aio aio;
	struct file_lock_state lock;
	char *filename;
	/* The file size at open or at the last resize (the node is drained then): reads past it
	 * read zeroes (the node may be larger under O_DIRECT, rounded up to whole blocks). */
	uint64_t size;
	uint32_t req_align;
	uint32_t lbs;		    /* block device logical block size */
	atomic_bool no_zero_range;  /* fallocate(ZERO_RANGE) unsupported */
	atomic_bool no_punch;	    /* fallocate(PUNCH_HOLE) unsupported */
	atomic_bool no_discard_cmd; /* BLOCK_URING_CMD_DISCARD unsupported */
	atomic_int flush_err;	    /* fdatasync failed on a cached fd: every later flush fails */
};

enum file_step {
	STEP_RW,
	STEP_FLUSH,
	STEP_WZ_PUNCH,	    /* write-zeroes with unmap: punch a hole */
	STEP_WZ_ZERO_RANGE, /* write-zeroes: FALLOC_FL_ZERO_RANGE */
	STEP_WZ_PUNCH_ONLY, /* write-zeroes without ZERO_RANGE: punch, then re-allocate */
	STEP_WZ_ALLOC,
	STEP_FUA_SYNC, /* write-zeroes with FUA: fdatasync after */
	STEP_DISCARD_CMD,
	STEP_DISCARD_PUNCH,
	STEP_CACHE,
};

/* Per loop: reads and writes this channel has on the ring (for the inline write decision). */
struct file_chan {
	unsigned rw_inflight;
};

/* Buffered writes up to this size may be done inline (see write_inline). */
#define FILE_INLINE_WRITE_MAX (128u << 10)

struct file_req {
	struct bd_io io;
	struct bd_req *req;
	struct file_node *fn;
	struct file_chan *fc;
	bool counted; /* in fc->rw_inflight */
	struct bd_loop *loop;
	/* READ/WRITE: what is transferred, req's iovec or the tail bounce buffer */
	const struct iovec *iov;
	int iovcnt;
	uint64_t len;
	struct iovec biov;   /* O_DIRECT at an unaligned end of the image: one aligned buffer */
	struct iovec *tmp;   /* remainder of a short transfer, or a window of > IOV_MAX iovecs */
	uint64_t done;	     /* READ/WRITE: bytes transferred so far */
	uint64_t doff, dlen; /* DISCARD: the range (aligned on block devices) */
	int tmp_cap;
	uint8_t step;
	uint8_t eagain;
	uint8_t zero_tries;
};

/* file-io.c: [loop] the driver's submit(). */
int file_submit(struct bd_node *node, struct bd_chan *ch, struct bd_req *req);

#endif
