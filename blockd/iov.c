/*
 * iov.c - small helpers on iovecs and I/O buffers.  [any thread]
 */
#include "blockd/internal.h"

#include <stdlib.h>
#include <string.h>

size_t bd_iov_size(const struct iovec *iov, int iovcnt)
{
	size_t n = 0;
	for (int i = 0; i < iovcnt; i++)
		n += iov[i].iov_len;
	return n;
}

/* Walk [offset, offset+len) of the iovec, calling fn on each contiguous piece. */
#define IOV_WALK(iov, iovcnt, offset, len, BODY)                                                   \
	do {                                                                                       \
		size_t _off = (offset), _left = (len), _done = 0;                                 \
		for (int _i = 0; _i < (iovcnt) && _left; _i++) {                                   \
			if (_off >= (iov)[_i].iov_len) {                                           \
				_off -= (iov)[_i].iov_len;                                         \
				continue;                                                          \
			}                                                                          \
			char *piece = (char *)(iov)[_i].iov_base + _off;                           \
			size_t plen = (iov)[_i].iov_len - _off;                                    \
			if (plen > _left)                                                          \
				plen = _left;                                                      \
			size_t pdone = _done;                                                      \
			(void)pdone;                                                               \
			BODY;                                                                      \
			_done += plen;                                                             \
			_left -= plen;                                                             \
			_off = 0;                                                                  \
		}                                                                                  \
		walked = _done;                                                                    \
	} while (0)

void bd_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t len)
{
	size_t walked;
	IOV_WALK(iov, iovcnt, offset, len, memset(piece, c, plen));
	(void)walked;
}

size_t bd_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t len)
{
	size_t walked;
	IOV_WALK(iov, iovcnt, offset, len, memcpy((char *)buf + pdone, piece, plen));
	return walked;
}

size_t bd_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
		       size_t len)
{
	size_t walked;
	IOV_WALK(iov, iovcnt, offset, len, memcpy(piece, (const char *)buf + pdone, plen));
	return walked;
}

bool bd_buf_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;
	/* Check the first 16 bytes by hand, then compare the buffer with itself shifted: the
	 * libc memcmp is vectorised, which makes this fast for the common all-zero case. */
	size_t head = len < 16 ? len : 16;
	for (size_t i = 0; i < head; i++)
		if (p[i])
			return false;
	if (len <= 16)
		return true;
	return memcmp(p, p + 16, len - 16) == 0;
}

bool bd_iov_is_zero(const struct iovec *iov, int iovcnt)
{
	for (int i = 0; i < iovcnt; i++)
		if (!bd_buf_is_zero(iov[i].iov_base, iov[i].iov_len))
			return false;
	return true;
}

void *bd_io_alloc(size_t len)
{
	void *p = NULL;
	if (len == 0)
		len = 1;
	if (posix_memalign(&p, 4096, (len + 4095) & ~(size_t)4095))
		return NULL;
	return p;
}

int bd_iov_slice(const struct iovec *src, int cnt, uint64_t off, uint64_t len, struct iovec *dst)
{
	int n = 0;

	for (int i = 0; i < cnt && len > 0; i++) {
		if (off >= src[i].iov_len) {
			off -= src[i].iov_len;
			continue;
		}
		uint64_t take = src[i].iov_len - off;
		if (take > len)
			take = len;
		dst[n].iov_base = (char *)src[i].iov_base + off;
		dst[n].iov_len = take;
		n++;
		len -= take;
		off = 0;
	}
	return n;
}
