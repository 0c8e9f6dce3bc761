/*
 * file-probe.c - pure helpers of the file driver: O_DIRECT alignment probing and block-status
 * extents from SEEK_DATA/SEEK_HOLE.  [any thread]
 */
#include "protocols/file-probe.h"

#include <unistd.h>

/* Did a trial read of len bytes prove the alignment works (1), fails (0), or nothing (-1)? */
static int trial(file_probe_read_fn *rd, void *ctx, void *buf, size_t len)
{
	long r = rd(ctx, buf, len, 0);

	if (r == -EINVAL)
		return 0;
	if (r == 0)
		return -1;
	return 1; /* data, or an error that is not about alignment */
}

struct file_align file_probe_align_io(file_probe_read_fn *rd, void *ctx, void *buf)
{
	struct file_align a = {0, 0};
	int t;

	for (uint32_t sz = 512; sz <= FILE_MAX_BLOCKSIZE; sz <<= 1) {
		t = trial(rd, ctx, buf, sz);
		if (t < 0)
			goto fallback;
		if (t > 0) {
			a.req_align = sz;
			break;
		}
	}
	if (!a.req_align)
		return a;
	for (uint32_t al = 512; al <= FILE_MAX_BLOCKSIZE; al <<= 1) {
		t = trial(rd, ctx, (char *)buf + al, a.req_align);
		if (t < 0)
			goto fallback;
		if (t > 0) {
			a.buf_align = al;
			break;
		}
	}
	if (!a.buf_align)
		a.buf_align = FILE_MAX_BLOCKSIZE;
	return a;

fallback:
	a.req_align = FILE_MAX_BLOCKSIZE;
	a.buf_align = FILE_MAX_BLOCKSIZE;
	return a;
}

static uint64_t align_down(uint64_t x, uint32_t a)
{
	return x - x % a;
}

static uint64_t align_up(uint64_t x, uint32_t a)
{
	uint64_t r = x % a;
	return r ? x + (a - r) : x;
}

int file_map_extents(file_seek_fn *seek, void *ctx, uint64_t off, uint64_t len, uint32_t align,
		     struct bd_extent *ext, unsigned max)
{
	const uint64_t end = off + len;
	uint64_t pos = off;
	unsigned nr = 0;

	if (align == 0)
		align = 1;
	while (pos < end) {
		int64_t d, h;
		uint64_t next;
		uint32_t flags;

		d = seek(ctx, pos, SEEK_DATA);
		if (d == -ENXIO) {
			/* No data from here on: a hole up to EOF, then nothing.  Past EOF (a node
			 * larger than its file: truncated by another process, or an O_DIRECT image
			 * rounded up) say data, so that readers read and learn the truth (an error,
			 * or the zeroes of the rounded-up tail) instead of trusting a hole. */
			int64_t eof = seek(ctx, 0, SEEK_END);
			if (eof >= 0 && pos >= (uint64_t)eof) {
				next = end;
				flags = BD_EXT_DATA;
			} else {
				next = eof >= 0 && (uint64_t)eof < end ? (uint64_t)eof : end;
				flags = BD_EXT_ZERO;
			}
		} else if (d < 0) {
			if (nr == 0 && (d == -EINVAL || d == -EOPNOTSUPP || d == -ENOTSUP))
				return -ENOTSUP;
			if (nr > 0)
				break; /* report what we have */
			return (int)d;
		} else if ((uint64_t)d > pos) {
			next = (uint64_t)d < end ? (uint64_t)d : end;
			flags = BD_EXT_ZERO;
		} else {
			h = seek(ctx, pos, SEEK_HOLE);
			if (h < 0 || (uint64_t)h <= pos)
				next = end; /* truncated under us, or confused: say data */
			else
				next = (uint64_t)h < end ? (uint64_t)h : end;
			flags = BD_EXT_DATA;
		}

		if (next < end && next % align) {
			if (flags == BD_EXT_DATA) {
				next = align_up(next, align);
			} else {
				uint64_t down = align_down(next, align);
				if (down > pos) {
					next = down;
				} else {
					/* A hole smaller than a block: part of the data. */
					flags = BD_EXT_DATA;
					next = align_up(next, align);
				}
			}
			if (next > end)
				next = end;
		}

		if (nr > 0 && ext[nr - 1].flags == flags) {
			ext[nr - 1].length += next - pos;
		} else {
			if (nr == max)
				break;
			ext[nr].length = next - pos;
			ext[nr].flags = flags;
			ext[nr].depth = 1;
			nr++;
		}
		pos = next;
	}
	return (int)nr;
}
