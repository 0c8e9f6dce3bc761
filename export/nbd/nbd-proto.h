/*
 * nbd-proto.h - NBD wire format (constants, big-endian helpers) and the pure, socket-free parts of
 * the NBD server: request parsing and validation, reply encoding, block status translation,
 * errno mapping (proto.c) and the handshake state machine (handshake.c).  Private to export/nbd/
 * and the fuzz harness.  Nothing here touches a loop or a socket, so every function may run on
 * any thread; the callers run them on the connection's loop (transmission) or on the main loop
 * (handshake).
 *
 * Reference: doc/proto.md of the NBD project, including the EXTENDED_HEADERS extension.
 */
#ifndef NBD_PROTO_H
#define NBD_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bd_extent;

/* ---- Magics ---------------------------------------------------------------------------------- */
#define NBD_MAGIC 0x4e42444d41474943ULL	     /* "NBDMAGIC" */
#define NBD_OPTS_MAGIC 0x49484156454F5054ULL /* "IHAVEOPT" */
#define NBD_REP_MAGIC 0x0003e889045565a9ULL  /* option replies */
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_EXT_REQUEST_MAGIC 0x21e41c71u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_EXT_REPLY_MAGIC 0x6e8a278cu

/* ---- Handshake ------------------------------------------------------------------------------- */
#define NBD_FLAG_FIXED_NEWSTYLE (1u << 0) /* handshake flags (server) */
#define NBD_FLAG_NO_ZEROES (1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE (1u << 0) /* client flags */
#define NBD_FLAG_C_NO_ZEROES (1u << 1)

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS (1u << 0)
#define NBD_FLAG_READ_ONLY (1u << 1)
#define NBD_FLAG_SEND_FLUSH (1u << 2)
#define NBD_FLAG_SEND_FUA (1u << 3)
#define NBD_FLAG_ROTATIONAL (1u << 4)
#define NBD_FLAG_SEND_TRIM (1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_SEND_DF (1u << 7)
#define NBD_FLAG_CAN_MULTI_CONN (1u << 8)
#define NBD_FLAG_SEND_RESIZE (1u << 9)
#define NBD_FLAG_SEND_CACHE (1u << 10)
#define NBD_FLAG_SEND_FAST_ZERO (1u << 11)
#define NBD_FLAG_BLOCK_STAT_PAYLOAD (1u << 12)

/* Options. */
#define NBD_OPT_EXPORT_NAME 1
#define NBD_OPT_ABORT 2
#define NBD_OPT_LIST 3
#define NBD_OPT_PEEK_EXPORT 4
#define NBD_OPT_STARTTLS 5
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT 10
#define NBD_OPT_EXTENDED_HEADERS 11

/* Option reply types. */
#define NBD_REP_ACK 1u
#define NBD_REP_SERVER 2u
#define NBD_REP_INFO 3u
#define NBD_REP_META_CONTEXT 4u
#define NBD_REP_ERR(x) ((1u << 31) | (x))
#define NBD_REP_ERR_UNSUP NBD_REP_ERR(1)
#define NBD_REP_ERR_POLICY NBD_REP_ERR(2)
#define NBD_REP_ERR_INVALID NBD_REP_ERR(3)
#define NBD_REP_ERR_PLATFORM NBD_REP_ERR(4)
#define NBD_REP_ERR_TLS_REQD NBD_REP_ERR(5)
#define NBD_REP_ERR_UNKNOWN NBD_REP_ERR(6)
#define NBD_REP_ERR_SHUTDOWN NBD_REP_ERR(7)
#define NBD_REP_ERR_BLOCK_SIZE_REQD NBD_REP_ERR(8)
#define NBD_REP_ERR_TOO_BIG NBD_REP_ERR(9)
#define NBD_REP_ERR_EXT_HEADER_REQD NBD_REP_ERR(10)

/* NBD_REP_INFO types. */
#define NBD_INFO_EXPORT 0
#define NBD_INFO_NAME 1
#define NBD_INFO_DESCRIPTION 2
#define NBD_INFO_BLOCK_SIZE 3

/* ---- Transmission ---------------------------------------------------------------------------- */
#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_CMD_TRIM 4
#define NBD_CMD_CACHE 5
#define NBD_CMD_WRITE_ZEROES 6
#define NBD_CMD_BLOCK_STATUS 7

#define NBD_CMD_FLAG_FUA (1u << 0)
#define NBD_CMD_FLAG_NO_HOLE (1u << 1)
#define NBD_CMD_FLAG_DF (1u << 2)
#define NBD_CMD_FLAG_REQ_ONE (1u << 3)
#define NBD_CMD_FLAG_FAST_ZERO (1u << 4)
#define NBD_CMD_FLAG_PAYLOAD_LEN (1u << 5)

#define NBD_REPLY_FLAG_DONE (1u << 0)

#define NBD_REPLY_TYPE_NONE 0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_OFFSET_HOLE 2
#define NBD_REPLY_TYPE_BLOCK_STATUS 5
#define NBD_REPLY_TYPE_BLOCK_STATUS_EXT 6
#define NBD_REPLY_TYPE_ERROR ((1u << 15) | 1)
#define NBD_REPLY_TYPE_ERROR_OFFSET ((1u << 15) | 2)

/* Errors on the wire. */
#define NBD_SUCCESS 0
#define NBD_EPERM 1
#define NBD_EIO 5
#define NBD_ENOMEM 12
#define NBD_EINVAL 22
#define NBD_ENOSPC 28
#define NBD_EOVERFLOW 75
#define NBD_ENOTSUP 95
#define NBD_ESHUTDOWN 108

/* base:allocation status flags. */
#define NBD_STATE_HOLE (1u << 0)
#define NBD_STATE_ZERO (1u << 1)

/* Metadata context ids this server hands out (transient by spec; ours never change). */
#define NBD_CTX_BASE_ALLOCATION 1u
#define NBD_CTX_QEMU_DEPTH 2u
#define NBD_CTX_MASK_BASE (1u << 0)
#define NBD_CTX_MASK_DEPTH (1u << 1)

/* ---- Sizes and limits ------------------------------------------------------------------------ */
#define NBD_REQ_SIZE 28	    /* compact request header */
#define NBD_EXT_REQ_SIZE 32 /* extended request header */
#define NBD_SIMPLE_REPLY_SIZE 16
#define NBD_CHUNK_SIZE 20	     /* structured reply chunk header */
#define NBD_EXT_CHUNK_SIZE 32	     /* extended reply chunk header */
#define NBD_MAX_STRING 4096	     /* names, descriptions, queries */
#define NBD_MAX_PAYLOAD (32u << 20)  /* maximum payload we accept and advertise */
#define NBD_MAX_OPT_LEN (64u << 10)  /* option data we parse; larger is skipped, ERR_TOO_BIG */
#define NBD_MAX_OPT_SKIP (16u << 20) /* larger option data: hard disconnect */
#define NBD_MAX_QUERIES 64	     /* meta context queries per option */

/* ---- Big-endian helpers ---------------------------------------------------------------------- */
static inline uint16_t nbd_get16(const void *p)
{
	const uint8_t *b = p;
	return (uint16_t)(b[0] << 8 | b[1]);
}
static inline uint32_t nbd_get32(const void *p)
{
	const uint8_t *b = p;
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static inline uint64_t nbd_get64(const void *p)
{
	const uint8_t *b = p;
	return (uint64_t)nbd_get32(b) << 32 | nbd_get32(b + 4);
}
static inline void nbd_put16(void *p, uint16_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)(v >> 8);
	b[1] = (uint8_t)v;
}
static inline void nbd_put32(void *p, uint32_t v)
{
	uint8_t *b = p;
	b[0] = (uint8_t)(v >> 24);
	b[1] = (uint8_t)(v >> 16);
	b[2] = (uint8_t)(v >> 8);
	b[3] = (uint8_t)v;
}
static inline void nbd_put64(void *p, uint64_t v)
{
	nbd_put32(p, (uint32_t)(v >> 32));
	nbd_put32((uint8_t *)p + 4, (uint32_t)v);
}

/* ---- Requests (proto.c) ---------------------------------------------------------------------- */

/* A request header as parsed from the wire. */
struct nbd_request {
	uint16_t flags;
	uint16_t type;
	uint64_t cookie;
	uint64_t offset;
	uint64_t length; /* effect length, or payload length (WRITE; PAYLOAD_LEN flag) */
};

/* What the connection negotiated: the input of request validation. */
struct nbd_session {
	uint64_t size;	    /* export size sent to the client */
	uint16_t tflags;    /* transmission flags sent to the client */
	bool structured;    /* structured replies (or extended headers) */
	bool extended;	    /* extended headers */
	uint32_t contexts;  /* NBD_CTX_MASK_* selected */
	uint32_t min_block; /* advertised minimum block size */
};

/* Parse one request header at buf (len bytes available).  Returns the header size (28 or 32)
 * when a whole header is there, 0 if more bytes are needed, -1 for a bad magic (the caller
 * must close the connection). */
int nbd_parse_request(const void *buf, size_t len, bool extended, struct nbd_request *req);

/* The verdict on a parsed request header. */
struct nbd_check {
	uint32_t error;	  /* NBD_E* to answer without doing anything, or 0 */
	uint64_t payload; /* payload bytes following the header: read them, or skip them on error */
	bool close;	  /* the client broke the protocol beyond recovery: hard disconnect */
	bool no_reply;	  /* NBD_CMD_DISC */
};

/* Validate a request against the session: command, flags, range, permissions, payload.  Pure. */
void nbd_check_request(const struct nbd_session *s, const struct nbd_request *r,
		       struct nbd_check *out);

/* Parse a BLOCK_STATUS payload (extended headers, NBD_CMD_FLAG_PAYLOAD_LEN): effect length and
 * a list of context ids.  On success fill *effect_len and *ctx_mask and return 0; return an NBD
 * error (NBD_EINVAL) for a malformed payload, unknown / duplicate / unselected ids, or a range
 * past the end of the export. */
uint32_t nbd_parse_bs_payload(const struct nbd_session *s, uint64_t offset, const void *buf,
			      uint64_t len, uint64_t *effect_len, uint32_t *ctx_mask);

/* ---- Replies (proto.c) ----------------------------------------------------------------------- */

/* Encode a simple reply header (16 bytes). */
size_t nbd_put_simple_reply(void *p, uint32_t error, uint64_t cookie);
/* Encode a structured (20 bytes) or extended (32 bytes) reply chunk header. */
size_t nbd_put_chunk(void *p, bool extended, uint16_t flags, uint16_t type, uint64_t cookie,
		     uint64_t offset, uint64_t length);

/* -errno (or errno) to NBD error, per the spec's list. */
uint32_t nbd_errno_to_nbd(int err);

/* One block status descriptor before encoding. */
struct nbd_desc {
	uint64_t length;
	uint64_t status;
};

/* Translate node extents (starting at the request offset) into descriptors for one metadata
 * context (NBD_CTX_BASE_ALLOCATION or NBD_CTX_QEMU_DEPTH): merges runs with equal status,
 * clips to len, keeps every descriptor but the last a multiple of align (a power of two), keeps
 * each length below 2^32 unless ext.  req_one: exactly one descriptor.  Returns the number of
 * descriptors written to out (at most max, at least 1 when n >= 1 and len >= 1). */
unsigned nbd_bs_translate(const struct bd_extent *in, unsigned n, uint32_t ctx, uint64_t len,
			  bool req_one, uint32_t align, bool ext, struct nbd_desc *out,
			  unsigned max);

/* Encode the payload of a block status chunk (not its header).  Returns its size: 4 + 8n
 * (NBD_REPLY_TYPE_BLOCK_STATUS) or 8 + 16n (NBD_REPLY_TYPE_BLOCK_STATUS_EXT). */
size_t nbd_bs_encode(void *p, bool ext, uint32_t ctx, const struct nbd_desc *d, unsigned n);

/* ---- Handshake (handshake.c) ----------------------------------------------------------------- */

/* What the handshake needs to know of an export (filled by the caller's lookup). */
struct nbd_export_info {
	const char *name;	 /* canonical name */
	const char *description; /* NULL or "" for none */
	uint64_t size;
	uint16_t tflags; /* without NBD_FLAG_SEND_DF / NBD_FLAG_BLOCK_STAT_PAYLOAD */
	uint32_t min_block, pref_block, max_block;
	bool allocation_depth; /* qemu:allocation-depth offered */
	void *handle;	       /* the caller's export object */
};

struct nbd_hs_ops {
	/* Find an export by name (NUL terminated, may be ""). */
	bool (*lookup)(void *ctx, const char *name, struct nbd_export_info *out);
	/* The i-th export (for NBD_OPT_LIST); false past the end. */
	bool (*nth)(void *ctx, unsigned i, struct nbd_export_info *out);
};

enum nbd_hs_state {
	NBD_HS_CLIENT_FLAGS, /* waiting for the client's 32-bit flags */
	NBD_HS_OPT_HDR,	     /* waiting for an option header */
	NBD_HS_OPT_DATA,     /* collecting option data */
	NBD_HS_OPT_SKIP,     /* discarding oversized option data */
	NBD_HS_DONE,	     /* transmission phase: send the output, then hand over */
	NBD_HS_CLOSE,	     /* send the output (if any), then close */
};

/* The handshake of one connection: bytes in, bytes out, a verdict.  Pure. */
struct nbd_hs {
	enum nbd_hs_state state;
	const struct nbd_hs_ops *ops;
	void *ctx;

	bool fixed, no_zeroes, structured, extended;
	uint32_t opt;	  /* current option */
	uint32_t optlen;  /* its data length */
	uint32_t optfill; /* bytes collected (NBD_HS_OPT_DATA) or skipped (NBD_HS_OPT_SKIP) */
	uint8_t hdr[16];  /* partial header bytes */
	uint32_t hdrfill;
	uint8_t *optbuf; /* NBD_MAX_OPT_LEN + 1 bytes */

	/* Metadata contexts selected by the last NBD_OPT_SET_META_CONTEXT, and for which export. */
	char *meta_export;
	uint32_t meta_mask;

	/* Result after NBD_HS_DONE. */
	struct nbd_export_info exp;
	uint16_t tflags;   /* as sent */
	uint32_t contexts; /* NBD_CTX_MASK_* that apply to the chosen export */

	/* Output to send. */
	uint8_t *out;
	size_t out_len, out_cap;
	bool oom;
	const char *why; /* reason for NBD_HS_CLOSE, for logging */
};

/* Start a handshake: queues the greeting in hs->out.  Returns 0 or -ENOMEM. */
int nbd_hs_init(struct nbd_hs *hs, const struct nbd_hs_ops *ops, void *ctx);
/* Feed received bytes.  Returns how many were consumed: all of them, unless the state became
 * NBD_HS_DONE or NBD_HS_CLOSE (the rest belongs to the transmission phase, or is dropped). */
size_t nbd_hs_input(struct nbd_hs *hs, const void *buf, size_t len);
/* The caller sent hs->out[0..n): drop it from the output. */
void nbd_hs_consumed(struct nbd_hs *hs, size_t n);
void nbd_hs_free(struct nbd_hs *hs);

#endif /* NBD_PROTO_H */
