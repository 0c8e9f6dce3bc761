/*
 * file-lock.c - QEMU-compatible image locking (OFD byte-range locks at 100+i and 200+i).
 * [control thread]
 *
 * See file-lock.h for the protocol.  Written for blockd from the description of QEMU's scheme;
 * the byte offsets, the lock/test types and the messages match QEMU so that blockd, qemu-img,
 * qemu-io, QEMU and qemu-storage-daemon all see each other's use of an image.
 */
#include "protocols/file-lock.h"

#include "blockd/blockd.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

struct file_perm file_lock_perm_for(bool writable, bool resizable, bool force_share)
{
	struct file_perm p;

	p.perm = FILE_PERM_CONSISTENT_READ;
	if (writable) {
		p.perm |= FILE_PERM_WRITE;
		if (resizable)
			p.perm |= FILE_PERM_RESIZE;
	}
	if (force_share && !writable)
		p.shared = FILE_PERM_ALL;
	else
		p.shared = FILE_PERM_ALL & ~(FILE_PERM_WRITE | FILE_PERM_RESIZE);
	return p;
}

int file_lock_check_offsets(struct file_perm p, int *offs, uint32_t *bits)
{
	int n = 0;

	for (int i = 0; i < FILE_PERM_COUNT; i++) {
		uint32_t bit = 1u << i;
		if (p.perm & bit) {
			offs[n] = FILE_LOCK_SHARED_BASE + i;
			bits[n++] = bit;
		}
	}
	for (int i = 0; i < FILE_PERM_COUNT; i++) {
		uint32_t bit = 1u << i;
		if (!(p.shared & bit)) {
			offs[n] = FILE_LOCK_PERM_BASE + i;
			bits[n++] = bit;
		}
	}
	return n;
}

const char *file_perm_name(uint32_t bit)
{
	switch (bit) {
	case FILE_PERM_CONSISTENT_READ:
		return "consistent read";
	case FILE_PERM_WRITE:
		return "write";
	case FILE_PERM_WRITE_UNCHANGED:
		return "write unchanged";
	case FILE_PERM_RESIZE:
		return "resize";
	default:
		return "unknown";
	}
}

/* One byte: take a shared lock (lock), release it (!lock). */
static int lock_byte(int fd, int off, bool lock)
{
	struct flock fl;

	memset(&fl, 0, sizeof(fl));
	fl.l_whence = SEEK_SET;
	fl.l_start = off;
	fl.l_len = 1;
	fl.l_type = lock ? F_RDLCK : F_UNLCK;
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0)
		return -errno;
	return 0;
}

/* 1 if another open file description holds a lock on byte off, 0 if not, or -errno. */
static int byte_held_elsewhere(int fd, int off)
{
	struct flock fl;

	memset(&fl, 0, sizeof(fl));
	fl.l_whence = SEEK_SET;
	fl.l_start = off;
	fl.l_len = 1;
	fl.l_type = F_WRLCK;
	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}

bool file_lock_supported(int fd)
{
	return byte_held_elsewhere(fd, FILE_LOCK_PERM_BASE) >= 0;
}

void file_lock_release(int fd, struct file_lock_state *st)
{
	for (int i = 0; i < FILE_PERM_COUNT; i++) {
		uint32_t bit = 1u << i;
		if ((st->locked_perm & bit) && lock_byte(fd, FILE_LOCK_PERM_BASE + i, false) == 0)
			st->locked_perm &= ~bit;
		if ((st->locked_unshared & bit) &&
		    lock_byte(fd, FILE_LOCK_SHARED_BASE + i, false) == 0)
			st->locked_unshared &= ~bit;
	}
}

int file_lock_take(int fd, struct file_lock_state *st, struct file_perm p, const char *filename,
		   struct bd_err *err)
{
	int offs[2 * FILE_PERM_COUNT];
	uint32_t bits[2 * FILE_PERM_COUNT];
	int ret, n;

	/* First announce ourselves, then look for others: two processes racing both fail rather
	 * than both succeeding (QEMU does the same). */
	for (int i = 0; i < FILE_PERM_COUNT; i++) {
		uint32_t bit = 1u << i;
		if ((p.perm & bit) && !(st->locked_perm & bit)) {
			ret = lock_byte(fd, FILE_LOCK_PERM_BASE + i, true);
			if (ret < 0) {
				bd_err_set(err, ret, "Failed to lock byte %d: %s",
					   FILE_LOCK_PERM_BASE + i, strerror(-ret));
				goto fail;
			}
			st->locked_perm |= bit;
		}
		if (!(p.shared & bit) && !(st->locked_unshared & bit)) {
			ret = lock_byte(fd, FILE_LOCK_SHARED_BASE + i, true);
			if (ret < 0) {
				bd_err_set(err, ret, "Failed to lock byte %d: %s",
					   FILE_LOCK_SHARED_BASE + i, strerror(-ret));
				goto fail;
			}
			st->locked_unshared |= bit;
		}
	}

	n = file_lock_check_offsets(p, offs, bits);
	for (int i = 0; i < n; i++) {
		ret = byte_held_elsewhere(fd, offs[i]);
		if (ret < 0) {
			bd_err_set(err, ret, "Failed to test lock byte %d: %s", offs[i],
				   strerror(-ret));
			goto fail;
		}
		if (ret > 0) {
			ret = -EAGAIN;
			bd_err_set(
			    err, ret,
			    "Failed to get %s\"%s\" lock: Is another process using the image "
			    "[%s]?",
			    offs[i] >= FILE_LOCK_PERM_BASE && offs[i] < FILE_LOCK_SHARED_BASE
				? "shared "
				: "",
			    file_perm_name(bits[i]), filename);
			goto fail;
		}
	}
	return 0;

fail:
	file_lock_release(fd, st);
	return ret;
}
