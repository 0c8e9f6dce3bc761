/*
 * nfs-sync.c - nfs:// URL checking, mounting an NFSv3 export with a deadline, and bounded
 * synchronous calls on a libnfs context owned by the calling thread (the control thread or a
 * worker thread, never an I/O loop): each call is libnfs's asynchronous function driven by
 * poll(2) on the context's socket until it completes or its deadline passes.
 *
 * Why not libnfs's own synchronous functions: they wait without any bound while a TCP connect
 * is pending and have no way to give up; here every wait ends.
 */
#include "protocols/nfs-sync.h"

#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Exported by libnfs without a declaration in its header: fail every queued call.  Weak: the
 * calls then wait for their timeout. */
struct rpc_context;
extern void rpc_error_all_pdus(struct rpc_context *rpc, const char *error) __attribute__((weak));
extern struct rpc_context *nfs_get_rpc_context(struct nfs_context *nfs);

/* ---------------------------------------------------------------------------------------------
 * URLs
 */

static int parse_int(const char *key, const char *v, long lo, long hi, long *out,
		     struct bd_err *err)
{
	char *end;
	long x;

	if (!*v || *v == '-' || *v == '+' || *v == ' ')
		goto bad;
	errno = 0;
	x = strtol(v, &end, 10);
	if (errno || *end)
		goto bad;
	if (x < lo || x > hi)
		return bd_err_set(err, -EINVAL,
				  "nfs URL argument '%s=%s' is out of range (%ld to %ld)", key, v,
				  lo, hi);
	*out = x;
	return 0;
bad:
	return bd_err_set(err, -EINVAL, "nfs URL argument '%s' must be a number, not '%s'", key, v);
}

int bd_nfs_url_query(const char *query, struct bd_nfs_conn *c, struct bd_err *err)
{
	static const char *const keys[] = {"uid",	"gid",	   "tcp-syncnt", "readahead",
					   "pagecache", "debug",   "nfsport",	 "mountport",
					   "version",	"timeout", NULL};
	unsigned seen = 0;
	char buf[1024];
	char *save = NULL;

	if (!query || !*query)
		return 0;
	if (strlen(query) >= sizeof(buf))
		return bd_err_set(err, -EINVAL, "nfs URL arguments are too long");
	snprintf(buf, sizeof(buf), "%s", query);
	for (char *tok = strtok_r(buf, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(tok, '=');
		long v;
		int k;

		if (!eq)
			return bd_err_set(err, -EINVAL,
					  "nfs URL argument '%s' has no value (expected key=value)",
					  tok);
		*eq = '\0';
		for (k = 0; keys[k] && strcmp(keys[k], tok); k++)
			;
		if (!keys[k])
			return bd_err_set(err, -EINVAL,
					  "nfs URL argument '%s' is not supported (supported: uid, "
					  "gid, tcp-syncnt, readahead, pagecache, debug, nfsport, "
					  "mountport, version=3, timeout)",
					  tok);
		if (seen & (1u << k))
			return bd_err_set(err, -EINVAL, "nfs URL argument '%s' is given twice",
					  tok);
		seen |= 1u << k;
		const char *val = eq + 1;
		switch (k) {
		case 0:
		case 1:
			if (parse_int(tok, val, 0, INT_MAX, &v, err) < 0)
				return err->code;
			*(k == 0 ? &c->uid : &c->gid) = (int)v;
			break;
		case 2:
			if (parse_int(tok, val, 1, 255, &v, err) < 0)
				return err->code;
			c->tcp_syncnt = (int)v;
			break;
		case 3:
			if (parse_int(tok, val, 0, BD_NFS_MAX_READAHEAD, &v, err) < 0)
				return err->code;
			c->readahead = (uint32_t)v;
			break;
		case 4:
			if (parse_int(tok, val, 0, BD_NFS_MAX_PAGECACHE, &v, err) < 0)
				return err->code;
			c->pagecache = (uint32_t)v;
			break;
		case 5:
			if (parse_int(tok, val, 0, 10, &v, err) < 0)
				return err->code;
			c->debug = (int)v;
			break;
		case 6:
		case 7:
			if (parse_int(tok, val, 1, 65535, &v, err) < 0)
				return err->code;
			*(k == 6 ? &c->nfsport : &c->mountport) = (int)v;
			break;
		case 8:
			if (strcmp(val, "3"))
				return bd_err_set(err, -EINVAL,
						  "nfs URL argument 'version=%s': only NFSv3 is "
						  "supported",
						  val);
			break;
		case 9:
			if (parse_int(tok, val, 1, 3600, &v, err) < 0)
				return err->code;
			c->timeout = (int)v;
			break;
		}
	}
	return 0;
}

int bd_nfs_url_split(const char *url, struct bd_nfs_conn *c, char **host, char **dir, char **file,
		     struct bd_err *err)
{
	struct nfs_context *scratch;
	struct nfs_url *u;
	const char *q;
	int r = 0;

	*host = *dir = *file = NULL;
	if (strncmp(url, "nfs://", 6))
		return bd_err_set(err, -EINVAL, "'%s' is not an nfs:// URL", url);
	for (const char *p = url; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return bd_err_set(err, -EINVAL, "nfs URL contains a control character");
	q = strchr(url, '?');
	if ((r = bd_nfs_url_query(q ? q + 1 : NULL, c, err)) < 0)
		return r;
	scratch = nfs_init_context();
	if (!scratch)
		return bd_err_set(err, -ENOMEM, "cannot create an NFS context");
	u = nfs_parse_url_full(scratch, url);
	if (!u) {
		r = bd_err_set(err, -EINVAL,
			       "invalid nfs URL '%s' (expected nfs://HOST/EXPORT/FILE): %s", url,
			       nfs_get_error(scratch));
		goto out;
	}
	if (!u->server || !u->file || strlen(u->file) < 2 || u->file[0] != '/') {
		r = bd_err_set(err, -EINVAL,
			       "invalid nfs URL '%s' (expected nfs://HOST/EXPORT/FILE)", url);
		goto out;
	}
	const char *d = u->path && *u->path ? u->path : "/";
	if (strstr(d, "/../") || (strlen(d) >= 3 && !strcmp(d + strlen(d) - 3, "/..")) ||
	    !strcmp(u->file + 1, "..") || !strcmp(u->file + 1, ".")) {
		r = bd_err_set(err, -EINVAL, "nfs URL '%s' must not contain '..'", url);
		goto out;
	}
	*host = strdup(u->server);
	*dir = strdup(d);
	*file = strdup(u->file + 1);
	if (!*host || !*dir || !*file) {
		free(*host);
		free(*dir);
		free(*file);
		*host = *dir = *file = NULL;
		r = bd_err_set(err, -ENOMEM, "out of memory");
	}
out:
	nfs_destroy_url(u);
	nfs_destroy_context(scratch);
	return r;
}

/* ---------------------------------------------------------------------------------------------
 * Bounded waits
 */

enum call_kind { K_STATUS, K_PTR, K_STAT, K_STATVFS, K_READ };

struct call {
	enum call_kind kind;
	bool done, abandoned;
	int status;
	void *ptr;
	void *out;
	size_t outlen;
};

static void call_cb(int status, struct nfs_context *nfs, void *data, void *priv)
{
	struct call *c = priv;

	(void)nfs;
	if (c->abandoned) {
		free(c);
		return;
	}
	c->status = status;
	if (status >= 0 && data) {
		switch (c->kind) {
		case K_PTR:
			c->ptr = data;
			break;
		case K_STAT:
			memcpy(c->out, data, sizeof(struct nfs_stat_64));
			break;
		case K_STATVFS:
			memcpy(c->out, data, sizeof(struct nfs_statvfs_64));
			break;
		case K_READ:
			memcpy(c->out, data,
			       (size_t)status < c->outlen ? (size_t)status : c->outlen);
			break;
		case K_STATUS:
			break;
		}
	}
	c->done = true;
}

static struct call *call_new(enum call_kind kind, void *out, size_t outlen)
{
	struct call *c = calloc(1, sizeof(*c));
	if (c) {
		c->kind = kind;
		c->out = out;
		c->outlen = outlen;
	}
	return c;
}

/* Drive ctx until c is done or deadline_ns; -ETIMEDOUT then (c abandoned, not freed). */
static int drive(struct nfs_context *ctx, struct call *c, uint64_t deadline_ns)
{
	while (!c->done) {
		uint64_t now = bd_now_ns();
		if (now >= deadline_ns)
			return -ETIMEDOUT;
		uint64_t left_ms = (deadline_ns - now) / 1000000 + 1;
		int ms = left_ms < 100 ? (int)left_ms : 100;
		struct pollfd p = {.fd = nfs_get_fd(ctx), .events = (short)nfs_which_events(ctx)};
		int n;

		if (p.fd < 0) {
			struct timespec ts = {0, (long)ms * 1000000};
			nanosleep(&ts, NULL);
			n = 0;
		} else {
			n = poll(&p, 1, ms);
			if (n < 0 && errno != EINTR)
				return -errno;
		}
		if (n > 0 && (p.revents & (POLLERR | POLLHUP)) &&
		    !(nfs_which_events(ctx) & POLLIN)) {
			/* a connection attempt failed: fail the calls instead of retrying until
			 * their timeout */
			if (rpc_error_all_pdus) {
				rpc_error_all_pdus(nfs_get_rpc_context(ctx),
						   "the NFS server cannot be reached");
				continue;
			}
		}
		if (nfs_service(ctx, n > 0 ? p.revents : 0) < 0 && !c->done) {
			/* the connection broke; libnfs reconnects (or failed every call) */
			struct timespec ts = {0, 10000000};
			nanosleep(&ts, NULL);
		}
	}
	return 0;
}

/* Wait for c (heap) with the call's timeout plus a grace period: libnfs's own RPC timeout
 * normally ends it first, with its own error. */
static int call_wait(struct nfs_context *ctx, struct call *c, int timeout)
{
	/* -ETIMEDOUT: bd_nfs_error() keeps the last libnfs error; callers say "no answer" */
	uint64_t deadline = bd_now_ns() + ((uint64_t)timeout + 2) * 1000000000ull;
	int r = drive(ctx, c, deadline);
	if (r < 0) {
		c->abandoned = true;
		return r;
	}
	r = c->status;
	free(c);
	return r;
}

/* A failed start (libnfs did not queue the call; its callback will not run). */
static int call_fail(struct call *c)
{
	free(c);
	return -EIO;
}

const char *bd_nfs_error(struct nfs_context *ctx)
{
	const char *e = ctx ? nfs_get_error(ctx) : NULL;
	return e && *e ? e : "unknown error";
}

/* ---------------------------------------------------------------------------------------------
 * Mount
 */

static void apply_conn(struct nfs_context *ctx, const struct bd_nfs_conn *c)
{
	nfs_set_version(ctx, 3);
	if (c->uid >= 0)
		nfs_set_uid(ctx, c->uid);
	if (c->gid >= 0)
		nfs_set_gid(ctx, c->gid);
	if (c->tcp_syncnt > 0)
		nfs_set_tcp_syncnt(ctx, c->tcp_syncnt);
	if (c->readahead)
		nfs_set_readahead(ctx, c->readahead);
	if (c->pagecache)
		nfs_set_pagecache(ctx, c->pagecache);
	if (c->debug)
		nfs_set_debug(ctx, c->debug);
	nfs_set_timeout(ctx, (c->timeout > 0 ? c->timeout : BD_NFS_DEFAULT_TIMEOUT) * 1000);
	nfs_set_autoreconnect(ctx, c->autoreconnect);
}

struct nfs_context *bd_nfs_connect(const struct bd_nfs_conn *c, struct bd_err *err)
{
	struct nfs_context *ctx = nfs_init_context();
	int timeout = c->timeout > 0 ? c->timeout : BD_NFS_DEFAULT_TIMEOUT;
	struct call call = {.kind = K_STATUS};
	char url[1024];
	struct nfs_url *u = NULL;
	int r;

	if (!ctx) {
		bd_err_set(err, -ENOMEM, "cannot create an NFS context");
		return NULL;
	}
	apply_conn(ctx, c);
	if (c->nfsport || c->mountport) {
		/* libnfs takes the ports only from a URL's arguments */
		int n = snprintf(url, sizeof(url), "nfs://%s%s/x?", c->host, c->export);
		if (c->nfsport)
			n += snprintf(url + n, sizeof(url) - (size_t)n, "nfsport=%d&", c->nfsport);
		if (c->mountport && n < (int)sizeof(url))
			snprintf(url + n, sizeof(url) - (size_t)n, "mountport=%d", c->mountport);
		u = nfs_parse_url_full(ctx, url);
		nfs_destroy_url(u);
	}
	/* the mount's own connect has no RPC timeout: bound the whole mount */
	if (nfs_mount_async(ctx, c->host, c->export, call_cb, &call) < 0) {
		bd_err_set(err, -EIO, "Could not mount NFS export '%s:%s': %s", c->host, c->export,
			   bd_nfs_error(ctx));
		nfs_destroy_context(ctx);
		return NULL;
	}
	r = drive(ctx, &call, bd_now_ns() + (uint64_t)timeout * 1000000000ull);
	if (r == 0 && call.status < 0)
		r = call.status;
	if (r < 0) {
		if (r == -ETIMEDOUT)
			bd_err_set(err, r,
				   "Could not mount NFS export '%s:%s': no answer within %d "
				   "seconds",
				   c->host, c->export, timeout);
		else
			bd_err_set(err, r, "Could not mount NFS export '%s:%s': %s", c->host,
				   c->export, bd_nfs_error(ctx));
		call.abandoned = false;
		nfs_destroy_context(ctx); /* may call call_cb: call is still valid here */
		return NULL;
	}
	return ctx;
}

/* ---------------------------------------------------------------------------------------------
 * Calls
 */

#define START(c, expr)                                                                             \
	do {                                                                                       \
		if (!(c))                                                                          \
			return -ENOMEM;                                                            \
		if ((expr) < 0)                                                                    \
			return call_fail(c);                                                       \
	} while (0)

int bd_nfs_open(struct nfs_context *ctx, const char *path, int flags, int mode, struct nfsfh **fh,
		int timeout)
{
	struct call *c = call_new(K_PTR, NULL, 0);
	int r;

	START(c, nfs_open2_async(ctx, path, flags, mode, call_cb, c));
	c->ptr = NULL;
	r = drive(ctx, c, bd_now_ns() + ((uint64_t)timeout + 2) * 1000000000ull);
	if (r < 0) {
		c->abandoned = true;
		return r;
	}
	r = c->status;
	if (r >= 0) {
		*fh = c->ptr;
		r = c->ptr ? 0 : -EIO;
	}
	free(c);
	return r;
}

int bd_nfs_close(struct nfs_context *ctx, struct nfsfh *fh, int timeout)
{
	struct call *c = call_new(K_STATUS, NULL, 0);
	START(c, nfs_close_async(ctx, fh, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_fstat(struct nfs_context *ctx, struct nfsfh *fh, struct nfs_stat_64 *st, int timeout)
{
	struct call *c = call_new(K_STAT, st, sizeof(*st));
	START(c, nfs_fstat64_async(ctx, fh, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_stat(struct nfs_context *ctx, const char *path, struct nfs_stat_64 *st, int timeout)
{
	struct call *c = call_new(K_STAT, st, sizeof(*st));
	START(c, nfs_stat64_async(ctx, path, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_ftruncate(struct nfs_context *ctx, struct nfsfh *fh, uint64_t size, int timeout)
{
	struct call *c = call_new(K_STATUS, NULL, 0);
	START(c, nfs_ftruncate_async(ctx, fh, size, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_fsync(struct nfs_context *ctx, struct nfsfh *fh, int timeout)
{
	struct call *c = call_new(K_STATUS, NULL, 0);
	START(c, nfs_fsync_async(ctx, fh, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_unlink(struct nfs_context *ctx, const char *path, int timeout)
{
	struct call *c = call_new(K_STATUS, NULL, 0);
	START(c, nfs_unlink_async(ctx, path, call_cb, c));
	return call_wait(ctx, c, timeout);
}

int bd_nfs_opendir(struct nfs_context *ctx, const char *path, struct nfsdir **dir, int timeout)
{
	struct call *c = call_new(K_PTR, NULL, 0);
	int r;

	START(c, nfs_opendir_async(ctx, path, call_cb, c));
	r = drive(ctx, c, bd_now_ns() + ((uint64_t)timeout + 2) * 1000000000ull);
	if (r < 0) {
		c->abandoned = true;
		return r;
	}
	r = c->status;
	if (r >= 0) {
		*dir = c->ptr;
		r = c->ptr ? 0 : -EIO;
	}
	free(c);
	return r;
}

int bd_nfs_statvfs(struct nfs_context *ctx, const char *path, struct nfs_statvfs_64 *sv,
		   int timeout)
{
	struct call *c = call_new(K_STATVFS, sv, sizeof(*sv));
	START(c, nfs_statvfs64_async(ctx, path, call_cb, c));
	return call_wait(ctx, c, timeout);
}

long bd_nfs_pread(struct nfs_context *ctx, struct nfsfh *fh, uint64_t off, size_t len, void *buf,
		  int timeout)
{
	size_t done = 0;

	while (done < len) {
		struct call *c = call_new(K_READ, (char *)buf + done, len - done);
		int r;
		START(c, nfs_pread_async(ctx, fh, off + done, len - done, call_cb, c));
		r = call_wait(ctx, c, timeout);
		if (r < 0)
			return r;
		if (r == 0)
			break; /* EOF */
		done += (size_t)r;
	}
	return (long)done;
}

long bd_nfs_pwrite(struct nfs_context *ctx, struct nfsfh *fh, uint64_t off, size_t len,
		   const void *buf, int timeout)
{
	size_t done = 0;

	while (done < len) {
		struct call *c = call_new(K_STATUS, NULL, 0);
		int r;
		START(c, nfs_pwrite_async(ctx, fh, off + done, len - done, (const char *)buf + done,
					  call_cb, c));
		r = call_wait(ctx, c, timeout);
		if (r < 0)
			return r;
		if (r == 0)
			return -EIO;
		done += (size_t)r;
	}
	return (long)done;
}

/* ---------------------------------------------------------------------------------------------
 * For the fuzz harness (tests/fuzz/fuzz-nfsurl.c): split url as open() would; 0 or -errno.
 */
int bd_nfs_url_fuzz(const char *url);
int bd_nfs_url_fuzz(const char *url)
{
	struct bd_nfs_conn c = {.uid = -1, .gid = -1, .tcp_syncnt = -1};
	struct bd_err err = {0};
	char *host, *dir, *file;
	int r = bd_nfs_url_split(url, &c, &host, &dir, &file, &err);

	if (r == 0) {
		if (!*host || dir[0] != '/' || !*file || strchr(file, '/'))
			abort(); /* the promised shape */
		free(host);
		free(dir);
		free(file);
	} else if (!err.msg[0]) {
		abort(); /* every failure explains itself */
	}
	return r;
}
