/*
 * fuzz-nbd.c - libFuzzer harness for the NBD server's parsers (export/nbd/proto.c and
 * handshake.c): the handshake state machine (option negotiation: every option, meta contexts,
 * extended headers) and the transmission request parser and validator, block status payload
 * parsing, and block status translation / encoding.  Pure functions only: no sockets, no loops.
 * Single-threaded.  Built with tests/fuzz/standalone-main.c for the fuzz-smoke suite (corpus in
 * tests/fuzz/corpus/nbd/), and as a libFuzzer binary with -Dfuzz=true.
 *
 * Input: byte 0 selects the mode.
 *   even: handshake.  Byte 1 is the chunk size (1..256) the rest is fed in, to exercise partial
 *         reads; whatever follows a successful NBD_OPT_GO / EXPORT_NAME is parsed as requests
 *         with the negotiated session.
 *   odd:  transmission only.  Byte 1 holds session flags (bit 0 structured, 1 extended,
 *         2 read-only, 3 base:allocation, 4 qemu:allocation-depth, 5 min block 512); the rest is
 *         requests (payloads taken from the input as the server would).
 */
#include "export/nbd/nbd-proto.h"

#include "blockd/blockd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define EXPORT_SIZE (1ull << 20)

static bool fake_export(unsigned i, struct nbd_export_info *out)
{
	static const char *const names[] = {"disk", "ro", "big"};
	if (i >= 3)
		return false;
	memset(out, 0, sizeof(*out));
	out->name = names[i];
	out->description = i == 0 ? "a test disk" : NULL;
	out->size = i == 2 ? (1ull << 50) : EXPORT_SIZE;
	out->tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE |
		      NBD_FLAG_CAN_MULTI_CONN;
	if (i == 1)
		out->tflags |= NBD_FLAG_READ_ONLY;
	else
		out->tflags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
			       NBD_FLAG_SEND_FAST_ZERO;
	out->min_block = i == 2 ? 512 : 1;
	out->pref_block = 4096;
	out->max_block = NBD_MAX_PAYLOAD;
	out->allocation_depth = i != 0;
	out->handle = (void *)(uintptr_t)(i + 1);
	return true;
}

static bool fz_lookup(void *ctx, const char *name, struct nbd_export_info *out)
{
	unsigned i;
	(void)ctx;
	for (i = 0; fake_export(i, out); i++)
		if (!strcmp(out->name, name))
			return true;
	return false;
}

static bool fz_nth(void *ctx, unsigned i, struct nbd_export_info *out)
{
	(void)ctx;
	return fake_export(i, out);
}

static const struct nbd_hs_ops fz_ops = {.lookup = fz_lookup, .nth = fz_nth};

static void check(bool cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-nbd: invariant broken: %s\n", what);
		abort();
	}
}

/* Block status translation and encoding over extents made from input bytes. */
static void fuzz_block_status(const struct nbd_session *s, const struct nbd_request *r,
			      uint64_t len, const uint8_t *p, size_t n)
{
	struct bd_extent ext[16];
	struct nbd_desc d[16];
	static uint8_t out[8 + 16 * 16];
	unsigned i, ne = 0, nd, ctx;
	uint64_t sum = 0;

	for (i = 0; i + 3 <= n && ne < 16; i += 3, ne++) {
		ext[ne].length = (uint64_t)(p[i] | p[i + 1] << 8) * (1u + (p[i + 2] & 7));
		ext[ne].flags = p[i + 2] >> 6;
		ext[ne].depth = (p[i + 2] >> 3) & 3;
	}
	if (!ne) {
		ext[0].length = len;
		ext[0].flags = BD_EXT_DATA;
		ext[0].depth = 1;
		ne = 1;
	}
	for (ctx = NBD_CTX_BASE_ALLOCATION; ctx <= NBD_CTX_QEMU_DEPTH; ctx++) {
		nd = nbd_bs_translate(ext, ne, ctx, len, r->flags & NBD_CMD_FLAG_REQ_ONE,
				      s->min_block ? s->min_block : 1, s->extended, d, 16);
		check(nd <= 16, "descriptor count");
		for (i = 0, sum = 0; i < nd; i++) {
			check(d[i].length > 0, "zero-length descriptor");
			sum += d[i].length;
			if (i + 1 < nd && s->min_block > 1)
				check(sum % s->min_block == 0, "unaligned descriptor boundary");
		}
		check(sum <= len, "descriptors beyond the request");
		if (r->flags & NBD_CMD_FLAG_REQ_ONE)
			check(nd <= 1, "REQ_ONE gave several descriptors");
		check(nbd_bs_encode(out, s->extended, ctx, d, nd) <= sizeof(out), "encode size");
	}
}

/* Parse requests as the transmission phase would, with payloads taken from the input. */
static void fuzz_requests(const struct nbd_session *s, const uint8_t *p, size_t n)
{
	uint8_t hdr[64];
	unsigned count = 0;

	while (n && count++ < 1000) {
		struct nbd_request r;
		struct nbd_check c;
		int k = nbd_parse_request(p, n, s->extended, &r);

		if (k <= 0)
			return; /* need more, or bad magic: the server closes */
		p += k;
		n -= (size_t)k;
		nbd_check_request(s, &r, &c);
		if (c.close || c.no_reply)
			return;
		check(c.payload <= (s->extended ? NBD_MAX_PAYLOAD : 0xffffffffull), "payload size");
		if (c.payload > n)
			return; /* truncated payload: the server waits, then the client goes */
		if (!c.error && r.type == NBD_CMD_BLOCK_STATUS) {
			uint64_t eff = r.length;
			uint32_t mask = s->contexts, e = 0;
			if (c.payload)
				e = nbd_parse_bs_payload(s, r.offset, p, c.payload, &eff, &mask);
			if (!e && eff) {
				check(mask && !(mask & ~s->contexts), "context mask");
				check(r.offset + eff <= s->size, "block status range");
				fuzz_block_status(s, &r, eff, p + c.payload, n - c.payload);
			}
		}
		if (!c.error && r.type != NBD_CMD_BLOCK_STATUS && r.type != NBD_CMD_FLUSH) {
			check(r.offset <= s->size && r.length <= s->size - r.offset, "range check");
			if (r.type == NBD_CMD_READ)
				check(r.length <= NBD_MAX_PAYLOAD, "read length");
			if (r.type == NBD_CMD_WRITE || r.type == NBD_CMD_TRIM ||
			    r.type == NBD_CMD_WRITE_ZEROES)
				check(!(s->tflags & NBD_FLAG_READ_ONLY), "write on read-only");
		}
		p += c.payload;
		n -= c.payload;
		/* reply headers */
		if (s->structured)
			nbd_put_chunk(hdr, s->extended, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR,
				      r.cookie, r.offset, 6);
		else
			nbd_put_simple_reply(hdr, c.error, r.cookie);
	}
}

static void fuzz_handshake(const uint8_t *p, size_t n)
{
	struct nbd_hs hs;
	size_t chunk, used = 0;

	if (!n)
		return;
	chunk = (size_t)p[0] + 1;
	p++;
	n--;
	if (nbd_hs_init(&hs, &fz_ops, NULL) < 0)
		return;
	while (used < n && hs.state < NBD_HS_DONE) {
		size_t len = n - used < chunk ? n - used : chunk;
		size_t k = nbd_hs_input(&hs, p + used, len);
		check(k <= len, "consumed more than given");
		used += k;
		/* pretend everything was sent, sometimes in two parts */
		if (hs.out_len > 1)
			nbd_hs_consumed(&hs, hs.out_len / 2);
		nbd_hs_consumed(&hs, hs.out_len);
		if (k < len)
			break;
	}
	if (hs.state == NBD_HS_DONE) {
		struct nbd_session s;
		check(hs.exp.handle != NULL, "GO without an export");
		memset(&s, 0, sizeof(s));
		s.size = hs.exp.size;
		s.tflags = hs.tflags;
		s.structured = hs.structured || hs.extended;
		s.extended = hs.extended;
		s.contexts = hs.contexts;
		s.min_block = hs.exp.min_block;
		if (s.contexts)
			check(s.structured, "contexts without structured replies");
		fuzz_requests(&s, p + used, n - used);
	}
	nbd_hs_free(&hs);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct nbd_session s;

	if (size < 2)
		return 0;
	if (!(data[0] & 1)) {
		fuzz_handshake(data + 1, size - 1);
		return 0;
	}
	memset(&s, 0, sizeof(s));
	s.structured = data[1] & 3;
	s.extended = data[1] & 2;
	s.size = (data[1] & 0x40) ? (1ull << 50) : EXPORT_SIZE;
	s.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_CACHE;
	if (data[1] & 4)
		s.tflags |= NBD_FLAG_READ_ONLY;
	else
		s.tflags |= NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES |
			    NBD_FLAG_SEND_FAST_ZERO;
	if (s.structured)
		s.tflags |= NBD_FLAG_SEND_DF;
	if (s.extended)
		s.tflags |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
	if (s.structured) {
		if (data[1] & 8)
			s.contexts |= NBD_CTX_MASK_BASE;
		if (data[1] & 16)
			s.contexts |= NBD_CTX_MASK_DEPTH;
	}
	s.min_block = (data[1] & 32) ? 512 : 1;
	fuzz_requests(&s, data + 2, size - 2);
	return 0;
}
