/*
 * handshake.c - the NBD fixed newstyle handshake as a pure state machine: bytes from the client
 * go in (nbd_hs_input), bytes for the client come out (hs->out), and the state says when to hand
 * the connection to the transmission phase or to close it.  Exports are found through the
 * caller's callbacks, so the same code runs in the server (on the main loop, where the export
 * table lives) and in the fuzz harness.  No sockets, no loops.
 *
 * Options: EXPORT_NAME, ABORT, LIST, STARTTLS (refused: ERR_POLICY), INFO, GO, STRUCTURED_REPLY,
 * LIST_META_CONTEXT, SET_META_CONTEXT (base:allocation, qemu:allocation-depth), EXTENDED_HEADERS;
 * anything else gets ERR_UNSUP and the negotiation goes on.
 */
#include "export/nbd/nbd-proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_ALLOC "base:allocation"
#define NAME_DEPTH "qemu:allocation-depth"

static bool out_reserve(struct nbd_hs *hs, size_t n)
{
	size_t cap;
	uint8_t *p;

	if (hs->oom)
		return false;
	if (hs->out_len + n <= hs->out_cap)
		return true;
	cap = hs->out_cap ? hs->out_cap : 256;
	while (cap < hs->out_len + n)
		cap *= 2;
	p = realloc(hs->out, cap);
	if (!p) {
		hs->oom = true;
		hs->state = NBD_HS_CLOSE;
		hs->why = "out of memory";
		return false;
	}
	hs->out = p;
	hs->out_cap = cap;
	return true;
}

static void out_put(struct nbd_hs *hs, const void *data, size_t n)
{
	if (!n || !out_reserve(hs, n))
		return;
	memcpy(hs->out + hs->out_len, data, n);
	hs->out_len += n;
}

/* An option reply: header, then len bytes of data in up to two pieces. */
static void rep2(struct nbd_hs *hs, uint32_t type, const void *a, size_t alen, const void *b,
		 size_t blen)
{
	uint8_t h[20];
	nbd_put64(h, NBD_REP_MAGIC);
	nbd_put32(h + 8, hs->opt);
	nbd_put32(h + 12, type);
	nbd_put32(h + 16, (uint32_t)(alen + blen));
	out_put(hs, h, sizeof(h));
	out_put(hs, a, alen);
	out_put(hs, b, blen);
}

static void rep(struct nbd_hs *hs, uint32_t type, const void *data, size_t len)
{
	rep2(hs, type, data, len, NULL, 0);
}

static void rep_err(struct nbd_hs *hs, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void rep_err(struct nbd_hs *hs, uint32_t type, const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	rep(hs, type, msg, (size_t)n);
}

static void hs_close(struct nbd_hs *hs, const char *why)
{
	hs->state = NBD_HS_CLOSE;
	hs->why = why;
}

int nbd_hs_init(struct nbd_hs *hs, const struct nbd_hs_ops *ops, void *ctx)
{
	uint8_t g[18];

	memset(hs, 0, sizeof(*hs));
	hs->ops = ops;
	hs->ctx = ctx;
	hs->state = NBD_HS_CLIENT_FLAGS;
	hs->optbuf = malloc(NBD_MAX_OPT_LEN + 1);
	if (!hs->optbuf)
		return -ENOMEM;
	nbd_put64(g, NBD_MAGIC);
	nbd_put64(g + 8, NBD_OPTS_MAGIC);
	nbd_put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	out_put(hs, g, sizeof(g));
	return hs->oom ? -ENOMEM : 0;
}

void nbd_hs_free(struct nbd_hs *hs)
{
	free(hs->optbuf);
	free(hs->out);
	free(hs->meta_export);
	hs->optbuf = NULL;
	hs->out = NULL;
	hs->meta_export = NULL;
	hs->out_len = hs->out_cap = 0;
}

void nbd_hs_consumed(struct nbd_hs *hs, size_t n)
{
	if (n >= hs->out_len) {
		hs->out_len = 0;
		return;
	}
	memmove(hs->out, hs->out + n, hs->out_len - n);
	hs->out_len -= n;
}

/* Copy a wire string into a NUL terminated buffer of NBD_MAX_STRING + 1 bytes.  False if it is
 * too long or holds a NUL (no export can have such a name). */
static bool get_string(const uint8_t *p, uint32_t len, char *dst)
{
	if (len > NBD_MAX_STRING || memchr(p, 0, len))
		return false;
	memcpy(dst, p, len);
	dst[len] = 0;
	return true;
}

static uint16_t export_tflags(const struct nbd_hs *hs, const struct nbd_export_info *e)
{
	uint16_t f = e->tflags | NBD_FLAG_HAS_FLAGS;
	f &= (uint16_t) ~(NBD_FLAG_SEND_DF | NBD_FLAG_BLOCK_STAT_PAYLOAD);
	if (hs->structured || hs->extended)
		f |= NBD_FLAG_SEND_DF;
	if (hs->extended)
		f |= NBD_FLAG_BLOCK_STAT_PAYLOAD;
	return f;
}

/* The client enters transmission with export e. */
static void enter_transmission(struct nbd_hs *hs, const struct nbd_export_info *e, uint16_t tf)
{
	hs->exp = *e;
	hs->tflags = tf;
	hs->contexts = 0;
	if (hs->meta_export && !strcmp(hs->meta_export, e->name)) {
		hs->contexts = hs->meta_mask;
		if (!e->allocation_depth)
			hs->contexts &= ~NBD_CTX_MASK_DEPTH;
	}
	hs->state = NBD_HS_DONE;
}

static void opt_export_name(struct nbd_hs *hs, const uint8_t *d, uint32_t n)
{
	char name[NBD_MAX_STRING + 1];
	struct nbd_export_info e;
	uint8_t r[10 + 124];
	uint16_t tf;

	if (hs->extended) {
		hs_close(hs, "NBD_OPT_EXPORT_NAME after extended headers");
		return;
	}
	if (!get_string(d, n, name) || !hs->ops->lookup(hs->ctx, name, &e)) {
		hs_close(hs, "NBD_OPT_EXPORT_NAME: unknown export");
		return;
	}
	tf = export_tflags(hs, &e);
	memset(r, 0, sizeof(r));
	nbd_put64(r, e.size);
	nbd_put16(r + 8, tf);
	out_put(hs, r, hs->no_zeroes ? 10 : sizeof(r));
	if (!hs->oom)
		enter_transmission(hs, &e, tf);
}

static void opt_list(struct nbd_hs *hs, uint32_t n)
{
	struct nbd_export_info e;
	unsigned i;

	if (n) {
		rep_err(hs, NBD_REP_ERR_INVALID, "NBD_OPT_LIST with data");
		return;
	}
	for (i = 0; hs->ops->nth(hs->ctx, i, &e); i++) {
		uint8_t len[4];
		size_t nl = strlen(e.name), dl = e.description ? strlen(e.description) : 0;
		if (nl > NBD_MAX_STRING)
			continue;
		if (dl > NBD_MAX_STRING)
			dl = NBD_MAX_STRING;
		nbd_put32(len, (uint32_t)nl);
		/* name length, name, then the description for humans */
		if (!out_reserve(hs, 24 + nl + dl))
			return;
		{
			uint8_t h[20];
			nbd_put64(h, NBD_REP_MAGIC);
			nbd_put32(h + 8, hs->opt);
			nbd_put32(h + 12, NBD_REP_SERVER);
			nbd_put32(h + 16, (uint32_t)(4 + nl + dl));
			out_put(hs, h, sizeof(h));
			out_put(hs, len, 4);
			out_put(hs, e.name, nl);
			out_put(hs, e.description, dl);
		}
	}
	rep(hs, NBD_REP_ACK, NULL, 0);
}

static void opt_info(struct nbd_hs *hs, const uint8_t *d, uint32_t n, bool go)
{
	char name[NBD_MAX_STRING + 1];
	struct nbd_export_info e;
	bool want_name = false, want_desc = false;
	uint32_t namelen, i, nreq;
	uint8_t b[14];
	uint16_t tf;

	if (n < 6) {
		rep_err(hs, NBD_REP_ERR_INVALID, "option too short");
		return;
	}
	namelen = nbd_get32(d);
	if (namelen > n - 6) {
		rep_err(hs, NBD_REP_ERR_INVALID, "name length beyond the option");
		return;
	}
	nreq = nbd_get16(d + 4 + namelen);
	if (4 + namelen + 2 + 2 * nreq != n) {
		rep_err(hs, NBD_REP_ERR_INVALID, "bad number of information requests");
		return;
	}
	for (i = 0; i < nreq; i++) {
		uint16_t t = nbd_get16(d + 4 + namelen + 2 + 2 * i);
		if (t == NBD_INFO_NAME)
			want_name = true;
		else if (t == NBD_INFO_DESCRIPTION)
			want_desc = true;
	}
	if (namelen > NBD_MAX_STRING) {
		rep_err(hs, NBD_REP_ERR_INVALID, "export name too long");
		return;
	}
	if (!get_string(d + 4, namelen, name)) {
		rep_err(hs, NBD_REP_ERR_UNKNOWN, "invalid export name");
		return;
	}
	if (!hs->ops->lookup(hs->ctx, name, &e)) {
		rep_err(hs, NBD_REP_ERR_UNKNOWN, "export '%.256s' not present", name);
		return;
	}
	tf = export_tflags(hs, &e);

	nbd_put16(b, NBD_INFO_EXPORT);
	nbd_put64(b + 2, e.size);
	nbd_put16(b + 10, tf);
	rep(hs, NBD_REP_INFO, b, 12);

	if (want_name) {
		size_t nl = strlen(e.name);
		nbd_put16(b, NBD_INFO_NAME);
		rep2(hs, NBD_REP_INFO, b, 2, e.name, nl > NBD_MAX_STRING ? NBD_MAX_STRING : nl);
	}
	if (want_desc && e.description && *e.description) {
		size_t dl = strlen(e.description);
		nbd_put16(b, NBD_INFO_DESCRIPTION);
		rep2(hs, NBD_REP_INFO, b, 2, e.description,
		     dl > NBD_MAX_STRING ? NBD_MAX_STRING : dl);
	}
	/* Block sizes always: clients that did not ask may ignore them. */
	nbd_put16(b, NBD_INFO_BLOCK_SIZE);
	nbd_put32(b + 2, e.min_block);
	nbd_put32(b + 6, e.pref_block);
	nbd_put32(b + 10, e.max_block);
	rep(hs, NBD_REP_INFO, b, 14);

	rep(hs, NBD_REP_ACK, NULL, 0);
	if (go && !hs->oom)
		enter_transmission(hs, &e, tf);
}

/* Which contexts one query names.  list: wildcard forms count. */
static uint32_t query_mask(const char *q, uint32_t len, bool list, bool depth)
{
	if (len == strlen(NAME_ALLOC) && !memcmp(q, NAME_ALLOC, len))
		return NBD_CTX_MASK_BASE;
	if (len == 5 && !memcmp(q, "base:", 5))
		return list ? NBD_CTX_MASK_BASE : 0;
	if (!depth)
		return 0;
	if (len == strlen(NAME_DEPTH) && !memcmp(q, NAME_DEPTH, len))
		return NBD_CTX_MASK_DEPTH;
	if (len == 5 && !memcmp(q, "qemu:", 5))
		return list ? NBD_CTX_MASK_DEPTH : 0;
	return 0;
}

static void opt_meta(struct nbd_hs *hs, const uint8_t *d, uint32_t n, bool set)
{
	char name[NBD_MAX_STRING + 1];
	struct nbd_export_info e;
	uint32_t namelen, nq, i, pos, mask = 0;
	uint8_t b[4];

	if (set) {
		/* Replaces the selection, even when it fails. */
		free(hs->meta_export);
		hs->meta_export = NULL;
		hs->meta_mask = 0;
	}
	if (!hs->structured && !hs->extended) {
		rep_err(hs, NBD_REP_ERR_INVALID, "structured replies not negotiated");
		return;
	}
	if (n < 8) {
		rep_err(hs, NBD_REP_ERR_INVALID, "option too short");
		return;
	}
	namelen = nbd_get32(d);
	if (namelen > n - 8) {
		rep_err(hs, NBD_REP_ERR_INVALID, "name length beyond the option");
		return;
	}
	if (namelen > NBD_MAX_STRING) {
		rep_err(hs, NBD_REP_ERR_INVALID, "export name too long");
		return;
	}
	nq = nbd_get32(d + 4 + namelen);
	if (nq > NBD_MAX_QUERIES) {
		rep_err(hs, NBD_REP_ERR_TOO_BIG, "too many queries");
		return;
	}
	/* Check the structure whole before answering anything. */
	pos = 8 + namelen;
	for (i = 0; i < nq; i++) {
		uint32_t ql;
		if (n - pos < 4) {
			rep_err(hs, NBD_REP_ERR_INVALID, "query beyond the option");
			return;
		}
		ql = nbd_get32(d + pos);
		if (ql > n - pos - 4 || ql > NBD_MAX_STRING) {
			rep_err(hs, NBD_REP_ERR_INVALID, "query beyond the option");
			return;
		}
		pos += 4 + ql;
	}
	if (pos != n) {
		rep_err(hs, NBD_REP_ERR_INVALID, "trailing data after the queries");
		return;
	}
	if (!get_string(d + 4, namelen, name)) {
		rep_err(hs, NBD_REP_ERR_UNKNOWN, "invalid export name");
		return;
	}
	if (!hs->ops->lookup(hs->ctx, name, &e)) {
		rep_err(hs, NBD_REP_ERR_UNKNOWN, "export '%.256s' not present", name);
		return;
	}

	if (!nq) {
		if (!set)
			mask = NBD_CTX_MASK_BASE | (e.allocation_depth ? NBD_CTX_MASK_DEPTH : 0);
	} else {
		pos = 8 + namelen;
		for (i = 0; i < nq; i++) {
			uint32_t ql = nbd_get32(d + pos);
			mask |= query_mask((const char *)d + pos + 4, ql, !set, e.allocation_depth);
			pos += 4 + ql;
		}
	}

	if (mask & NBD_CTX_MASK_BASE) {
		nbd_put32(b, set ? NBD_CTX_BASE_ALLOCATION : 0);
		rep2(hs, NBD_REP_META_CONTEXT, b, 4, NAME_ALLOC, strlen(NAME_ALLOC));
	}
	if (mask & NBD_CTX_MASK_DEPTH) {
		nbd_put32(b, set ? NBD_CTX_QEMU_DEPTH : 0);
		rep2(hs, NBD_REP_META_CONTEXT, b, 4, NAME_DEPTH, strlen(NAME_DEPTH));
	}
	rep(hs, NBD_REP_ACK, NULL, 0);
	if (set && mask) {
		hs->meta_export = strdup(e.name);
		if (!hs->meta_export) {
			hs_close(hs, "out of memory");
			return;
		}
		hs->meta_mask = mask;
	}
}

static void process_option(struct nbd_hs *hs)
{
	const uint8_t *d = hs->optbuf;
	uint32_t n = hs->optlen;

	switch (hs->opt) {
	case NBD_OPT_EXPORT_NAME:
		opt_export_name(hs, d, n);
		break;
	case NBD_OPT_ABORT:
		rep(hs, NBD_REP_ACK, NULL, 0);
		hs_close(hs, "client sent NBD_OPT_ABORT");
		break;
	case NBD_OPT_LIST:
		opt_list(hs, n);
		break;
	case NBD_OPT_STARTTLS:
		if (n)
			rep_err(hs, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS with data");
		else
			rep_err(hs, NBD_REP_ERR_POLICY, "TLS is not supported by this server");
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		opt_info(hs, d, n, hs->opt == NBD_OPT_GO);
		break;
	case NBD_OPT_STRUCTURED_REPLY:
		if (n) {
			rep_err(hs, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY with data");
		} else if (hs->extended) {
			rep_err(hs, NBD_REP_ERR_EXT_HEADER_REQD,
				"extended headers already negotiated");
		} else {
			hs->structured = true;
			rep(hs, NBD_REP_ACK, NULL, 0);
		}
		break;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		opt_meta(hs, d, n, hs->opt == NBD_OPT_SET_META_CONTEXT);
		break;
	case NBD_OPT_EXTENDED_HEADERS:
		if (n) {
			rep_err(hs, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS with data");
		} else {
			hs->extended = true;
			rep(hs, NBD_REP_ACK, NULL, 0);
		}
		break;
	default:
		rep_err(hs, NBD_REP_ERR_UNSUP, "option %u not supported", hs->opt);
		break;
	}
}

/* An option whose data was too large to keep (already skipped). */
static void process_oversized(struct nbd_hs *hs)
{
	switch (hs->opt) {
	case NBD_OPT_EXPORT_NAME:
		hs_close(hs, "NBD_OPT_EXPORT_NAME: name too long");
		break;
	case NBD_OPT_ABORT:
		rep(hs, NBD_REP_ACK, NULL, 0);
		hs_close(hs, "client sent NBD_OPT_ABORT");
		break;
	case NBD_OPT_LIST:
	case NBD_OPT_STARTTLS:
	case NBD_OPT_STRUCTURED_REPLY:
	case NBD_OPT_EXTENDED_HEADERS:
		rep_err(hs, NBD_REP_ERR_INVALID, "unexpected option data");
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		if (hs->opt == NBD_OPT_SET_META_CONTEXT) {
			free(hs->meta_export);
			hs->meta_export = NULL;
			hs->meta_mask = 0;
		}
		rep_err(hs, NBD_REP_ERR_TOO_BIG, "option data too large");
		break;
	default:
		rep_err(hs, NBD_REP_ERR_UNSUP, "option %u not supported", hs->opt);
		break;
	}
}

static size_t take(struct nbd_hs *hs, uint32_t want, const uint8_t *p, size_t avail)
{
	size_t n = want - hs->hdrfill;
	if (n > avail)
		n = avail;
	memcpy(hs->hdr + hs->hdrfill, p, n);
	hs->hdrfill += (uint32_t)n;
	return n;
}

size_t nbd_hs_input(struct nbd_hs *hs, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	size_t used = 0;

	while (hs->state < NBD_HS_DONE) {
		size_t avail = len - used, n;

		switch (hs->state) {
		case NBD_HS_CLIENT_FLAGS: {
			uint32_t f;
			if (!avail)
				return used;
			used += take(hs, 4, p + used, avail);
			if (hs->hdrfill < 4)
				return used;
			hs->hdrfill = 0;
			f = nbd_get32(hs->hdr);
			if (f & ~(uint32_t)(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
				hs_close(hs, "unknown client flags");
				return used;
			}
			hs->fixed = f & NBD_FLAG_C_FIXED_NEWSTYLE;
			hs->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
			hs->state = NBD_HS_OPT_HDR;
			break;
		}
		case NBD_HS_OPT_HDR:
			if (!avail)
				return used;
			used += take(hs, 16, p + used, avail);
			if (hs->hdrfill < 16)
				return used;
			hs->hdrfill = 0;
			if (nbd_get64(hs->hdr) != NBD_OPTS_MAGIC) {
				hs_close(hs, "bad option magic");
				return used;
			}
			hs->opt = nbd_get32(hs->hdr + 8);
			hs->optlen = nbd_get32(hs->hdr + 12);
			hs->optfill = 0;
			if (hs->optlen > NBD_MAX_OPT_SKIP) {
				hs_close(hs, "option data too large");
				return used;
			}
			hs->state =
			    hs->optlen > NBD_MAX_OPT_LEN ? NBD_HS_OPT_SKIP : NBD_HS_OPT_DATA;
			if (hs->state == NBD_HS_OPT_DATA && !hs->optlen) {
				hs->state = NBD_HS_OPT_HDR;
				process_option(hs);
			}
			break;
		case NBD_HS_OPT_DATA:
			if (!avail)
				return used;
			n = hs->optlen - hs->optfill;
			if (n > avail)
				n = avail;
			memcpy(hs->optbuf + hs->optfill, p + used, n);
			hs->optfill += (uint32_t)n;
			used += n;
			if (hs->optfill == hs->optlen) {
				hs->optbuf[hs->optlen] = 0;
				hs->state = NBD_HS_OPT_HDR;
				process_option(hs);
			}
			break;
		case NBD_HS_OPT_SKIP:
			if (!avail)
				return used;
			n = hs->optlen - hs->optfill;
			if (n > avail)
				n = avail;
			hs->optfill += (uint32_t)n;
			used += n;
			if (hs->optfill == hs->optlen) {
				hs->state = NBD_HS_OPT_HDR;
				process_oversized(hs);
			}
			break;
		default:
			return used;
		}
	}
	return used;
}
