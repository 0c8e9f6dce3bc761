/*
 * file-lock.h - QEMU-compatible image locking for the file and host_device drivers.
 * [control thread]
 *
 * QEMU (block/file-posix.c) announces what a process does with an image by holding shared OFD
 * byte-range locks on the image file itself: byte 100+i while it holds permission i, byte 200+i
 * while it refuses to share permission i with others.  A process that wants permission i checks
 * that nobody holds 200+i; a process that refuses to share permission i checks that nobody holds
 * 100+i.  Locks are only ever taken shared (F_RDLCK, so a read-only fd can take them) and tested
 * with F_WRLCK (which conflicts with any other open file description's lock).
 */
#ifndef BLOCKD_FILE_LOCK_H
#define BLOCKD_FILE_LOCK_H

#include <stdbool.h>
#include <stdint.h>

struct bd_err;

/* QEMU's permission bits (BLK_PERM_*, QEMU >= 6.2). */
#define FILE_PERM_CONSISTENT_READ 0x01u
#define FILE_PERM_WRITE 0x02u
#define FILE_PERM_WRITE_UNCHANGED 0x04u
#define FILE_PERM_RESIZE 0x08u
#define FILE_PERM_ALL 0x0fu
#define FILE_PERM_COUNT 4

#define FILE_LOCK_PERM_BASE 100
#define FILE_LOCK_SHARED_BASE 200

/* What a node asks for: the permissions it takes and the ones it lets others take. */
struct file_perm {
	uint32_t perm;
	uint32_t shared;
};

/* The bytes one fd holds. */
struct file_lock_state {
	uint32_t locked_perm;	  /* bytes 100+i held */
	uint32_t locked_unshared; /* bytes 200+i held */
};

/* [any] Pure: the permissions blockd takes for a node.  A writable node takes consistent read,
 * write and (if resizable) resize and shares neither write nor resize, so a second writer (blockd,
 * qemu-img, QEMU) or a consistent reader fails; a read-only node takes consistent read and
 * refuses writers too, like qemu-img; force_share (read-only only) shares everything. */
struct file_perm file_lock_perm_for(bool writable, bool resizable, bool force_share);

/* [any] Pure: the lock offsets to test before taking p, in QEMU's order (200+i for each
 * permission taken, then 100+i for each permission not shared).  Fills offs (room for
 * 2 * FILE_PERM_COUNT) and the matching permission bit in bits; returns the count. */
int file_lock_check_offsets(struct file_perm p, int *offs, uint32_t *bits);

/* [any] Pure: QEMU's name of a single permission bit ("consistent read", "write", ...). */
const char *file_perm_name(uint32_t bit);

/* [control] Take the lock bytes for p on fd, then check that no other process conflicts.  On
 * conflict every byte taken here is released and err says which permission is held elsewhere
 * ("Failed to get \"write\" lock" / "Failed to get shared \"write\" lock") and names filename.
 * 0 or -errno (-EAGAIN on a conflict). */
int file_lock_take(int fd, struct file_lock_state *st, struct file_perm p, const char *filename,
		   struct bd_err *err);
/* [control] Release every byte in st. */
void file_lock_release(int fd, struct file_lock_state *st);
/* [control] Does fd support OFD locks (F_OFD_GETLK works)? */
bool file_lock_supported(int fd);

#endif /* BLOCKD_FILE_LOCK_H */
