/*
 * proto.c - the pure parts of the NBD transmission phase: parse and validate request headers,
 * encode reply headers, translate block status extents into NBD descriptors, map errno values
 * to NBD errors.  No sockets, no loops, no allocation: callable from any thread (the server
 * calls it on the connection's I/O loop) and from the fuzz harness.
 */
#include "export/nbd/nbd-proto.h"

#include "blockd/blockd.h"

#include <errno.h>
#include <string.h>

int nbd_parse_request(const void *buf, size_t len, bool extended, struct nbd_request *req)
{
	const uint8_t *p = buf;
	size_t need = extended ? NBD_EXT_REQ_SIZE : NBD_REQ_SIZE;
	uint32_t magic;

	if (len < 4)
		return 0;
	magic = nbd_get32(p);
	if (magic != (extended ? NBD_EXT_REQUEST_MAGIC : NBD_REQUEST_MAGIC))
		return -1;
	if (len < need)
		return 0;
	req->flags = nbd_get16(p + 4);
	req->type = nbd_get16(p + 6);
	req->cookie = nbd_get64(p + 8);
	req->offset = nbd_get64(p + 16);
	req->length = extended ? nbd_get64(p + 24) : nbd_get32(p + 24);
	return (int)need;
}

static bool range_ok(const struct nbd_session *s, uint64_t offset, uint64_t length)
{
	return offset <= s->size && length <= s->size - offset;
}

void nbd_check_request(const struct nbd_session *s, const struct nbd_request *r,
		       struct nbd_check *out)
{
	uint16_t tf = s->tflags;
	uint16_t allowed;
	bool ro = tf & NBD_FLAG_READ_ONLY;

	memset(out, 0, sizeof(*out));

	/* First how much payload follows: whatever the verdict, the stream must stay in sync. */
	if (s->extended) {
		if (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN) {
			if (r->length > NBD_MAX_PAYLOAD) {
				out->close = true; /* the spec says: hard disconnect */
				return;
			}
			out->payload = r->length;
		} else if (r->type == NBD_CMD_WRITE) {
			out->close = true; /* a write must carry PAYLOAD_LEN: cannot resync */
			return;
		}
	} else if (r->type == NBD_CMD_WRITE) {
		out->payload = r->length;
		if (r->length > NBD_MAX_PAYLOAD) {
			out->error = NBD_EINVAL; /* the caller skips the payload */
			return;
		}
	}

	switch (r->type) {
	case NBD_CMD_READ:
		allowed = NBD_CMD_FLAG_FUA | ((tf & NBD_FLAG_SEND_DF) ? NBD_CMD_FLAG_DF : 0);
		break;
	case NBD_CMD_WRITE:
		allowed = NBD_CMD_FLAG_FUA | (s->extended ? NBD_CMD_FLAG_PAYLOAD_LEN : 0);
		break;
	case NBD_CMD_DISC:
		out->no_reply = true;
		return;
	case NBD_CMD_FLUSH:
	case NBD_CMD_TRIM:
	case NBD_CMD_CACHE:
		allowed = NBD_CMD_FLAG_FUA;
		break;
	case NBD_CMD_WRITE_ZEROES:
		allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
			  ((tf & NBD_FLAG_SEND_FAST_ZERO) ? NBD_CMD_FLAG_FAST_ZERO : 0);
		break;
	case NBD_CMD_BLOCK_STATUS:
		allowed = NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE;
		if (s->extended && (tf & NBD_FLAG_BLOCK_STAT_PAYLOAD))
			allowed |= NBD_CMD_FLAG_PAYLOAD_LEN;
		break;
	default:
		out->error = NBD_EINVAL;
		return;
	}
	if (r->flags & ~allowed) {
		out->error = NBD_EINVAL;
		return;
	}

	switch (r->type) {
	case NBD_CMD_READ:
		if (r->length > NBD_MAX_PAYLOAD) {
			out->error = s->structured ? NBD_EOVERFLOW : NBD_EINVAL;
			return;
		}
		break;
	case NBD_CMD_WRITE:
		if (ro) {
			out->error = NBD_EPERM;
			return;
		}
		break;
	case NBD_CMD_FLUSH:
		if (!(tf & NBD_FLAG_SEND_FLUSH))
			out->error = NBD_EINVAL;
		return; /* offset and length are reserved: not checked */
	case NBD_CMD_TRIM:
		if (ro)
			out->error = NBD_EPERM;
		else if (!(tf & NBD_FLAG_SEND_TRIM))
			out->error = NBD_EINVAL;
		if (out->error)
			return;
		break;
	case NBD_CMD_WRITE_ZEROES:
		if (ro)
			out->error = NBD_EPERM;
		else if (!(tf & NBD_FLAG_SEND_WRITE_ZEROES))
			out->error = NBD_EINVAL;
		if (out->error)
			return;
		break;
	case NBD_CMD_BLOCK_STATUS:
		if (!s->structured || !s->contexts) {
			out->error = NBD_EINVAL;
			return;
		}
		if (r->flags & NBD_CMD_FLAG_PAYLOAD_LEN)
			return; /* the effect length is in the payload: nbd_parse_bs_payload() */
		break;
	default:
		break;
	}

	if (!range_ok(s, r->offset, r->length)) {
		out->error = (r->type == NBD_CMD_WRITE || r->type == NBD_CMD_WRITE_ZEROES)
				 ? NBD_ENOSPC
				 : NBD_EINVAL;
	}
}

uint32_t nbd_parse_bs_payload(const struct nbd_session *s, uint64_t offset, const void *buf,
			      uint64_t len, uint64_t *effect_len, uint32_t *ctx_mask)
{
	const uint8_t *p = buf;
	uint32_t mask = 0;
	uint64_t i, n;

	if (len < 12 || (len - 8) % 4)
		return NBD_EINVAL;
	n = (len - 8) / 4;
	for (i = 0; i < n; i++) {
		uint32_t id = nbd_get32(p + 8 + 4 * i), bit;
		if (id == NBD_CTX_BASE_ALLOCATION)
			bit = NBD_CTX_MASK_BASE;
		else if (id == NBD_CTX_QEMU_DEPTH)
			bit = NBD_CTX_MASK_DEPTH;
		else
			return NBD_EINVAL;
		if (!(s->contexts & bit) || (mask & bit))
			return NBD_EINVAL;
		mask |= bit;
	}
	*effect_len = nbd_get64(p);
	if (!range_ok(s, offset, *effect_len))
		return NBD_EINVAL;
	*ctx_mask = mask;
	return 0;
}

size_t nbd_put_simple_reply(void *p, uint32_t error, uint64_t cookie)
{
	uint8_t *b = p;
	nbd_put32(b, NBD_SIMPLE_REPLY_MAGIC);
	nbd_put32(b + 4, error);
	nbd_put64(b + 8, cookie);
	return NBD_SIMPLE_REPLY_SIZE;
}

size_t nbd_put_chunk(void *p, bool extended, uint16_t flags, uint16_t type, uint64_t cookie,
		     uint64_t offset, uint64_t length)
{
	uint8_t *b = p;
	nbd_put32(b, extended ? NBD_EXT_REPLY_MAGIC : NBD_STRUCTURED_REPLY_MAGIC);
	nbd_put16(b + 4, flags);
	nbd_put16(b + 6, type);
	nbd_put64(b + 8, cookie);
	if (!extended) {
		nbd_put32(b + 16, (uint32_t)length);
		return NBD_CHUNK_SIZE;
	}
	nbd_put64(b + 16, offset);
	nbd_put64(b + 24, length);
	return NBD_EXT_CHUNK_SIZE;
}

uint32_t nbd_errno_to_nbd(int err)
{
	if (err < 0)
		err = -err;
	switch (err) {
	case 0:
		return NBD_SUCCESS;
	case EPERM:
	case EROFS:
	case EACCES:
		return NBD_EPERM;
	case EIO:
		return NBD_EIO;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ENOTSUP:
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

static uint64_t ext_status(uint32_t ctx, const struct bd_extent *e)
{
	if (ctx == NBD_CTX_QEMU_DEPTH)
		return e->depth;
	return ((e->flags & BD_EXT_DATA) ? 0 : NBD_STATE_HOLE) |
	       ((e->flags & BD_EXT_ZERO) ? NBD_STATE_ZERO : 0);
}

/* The status of a descriptor made of two differing parts: the weaker claim. */
static uint64_t combine(uint32_t ctx, uint64_t a, uint64_t b)
{
	if (ctx == NBD_CTX_QEMU_DEPTH)
		return a > b ? a : b;
	return a & b;
}

unsigned nbd_bs_translate(const struct bd_extent *in, unsigned n, uint32_t ctx, uint64_t len,
			  bool req_one, uint32_t align, bool ext, struct nbd_desc *out,
			  unsigned max)
{
	uint64_t pos = 0, total;
	unsigned i, k = 0;

	(void)ext; /* compact requests have 32-bit lengths, so every descriptor fits */
	for (i = 0; i < n && pos < len; i++) {
		uint64_t l = in[i].length, st;
		if (!l)
			continue;
		if (l > len - pos)
			l = len - pos;
		st = ext_status(ctx, &in[i]);
		if (k && out[k - 1].status == st) {
			out[k - 1].length += l;
		} else {
			if (k == max)
				break;
			out[k].length = l;
			out[k].status = st;
			k++;
		}
		pos += l;
	}
	total = pos;

	/* Descriptor boundaries on multiples of the minimum block size. */
	if (align > 1 && k > 1) {
		unsigned w = 0, r = 1;
		uint64_t start = 0;
		struct nbd_desc cur = out[0];
		for (;;) {
			uint64_t end = start + cur.length;
			if ((end & (align - 1)) && r < k) {
				uint64_t target = (end + align - 1) & ~(uint64_t)(align - 1);
				if (target > total)
					target = total;
				while (end < target && r < k) {
					uint64_t take = out[r].length;
					if (take > target - end)
						take = target - end;
					cur.status = combine(ctx, cur.status, out[r].status);
					cur.length += take;
					end += take;
					out[r].length -= take;
					if (!out[r].length)
						r++;
				}
			}
			if (w && out[w - 1].status == cur.status)
				out[w - 1].length += cur.length;
			else
				out[w++] = cur;
			start = end;
			if (r >= k)
				break;
			cur = out[r++];
		}
		k = w;
	}
	if (req_one && k > 1)
		k = 1;
	return k;
}

size_t nbd_bs_encode(void *p, bool ext, uint32_t ctx, const struct nbd_desc *d, unsigned n)
{
	uint8_t *b = p;
	unsigned i;

	nbd_put32(b, ctx);
	if (ext) {
		nbd_put32(b + 4, n);
		b += 8;
		for (i = 0; i < n; i++, b += 16) {
			nbd_put64(b, d[i].length);
			nbd_put64(b + 8, d[i].status);
		}
		return 8 + 16 * (size_t)n;
	}
	b += 4;
	for (i = 0; i < n; i++, b += 8) {
		nbd_put32(b, (uint32_t)d[i].length);
		nbd_put32(b + 4, (uint32_t)d[i].status);
	}
	return 4 + 8 * (size_t)n;
}
