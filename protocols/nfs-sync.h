/*
 * nfs-sync.h - shared by the nfs protocol driver (protocols/nfs.c) and the netfs pool backend
 * for NFS (pools/netfs-nfs.c): the connection options, checking an nfs:// URL, mounting an
 * export with a deadline, and bounded synchronous calls on a libnfs context that the calling
 * thread owns (the control thread, or a worker thread).  Never for an I/O loop.
 */
#ifndef BLOCKD_NFS_SYNC_H
#define BLOCKD_NFS_SYNC_H

#include "blockd/blockd.h"

#include <sys/time.h> /* before libnfs.h: it uses struct timeval (Debian's 4.0 header) */

#include <nfsc/libnfs.h>

#define BD_NFS_DEFAULT_TIMEOUT 30 /* seconds */
#define BD_NFS_MAX_READAHEAD (1u << 20)
#define BD_NFS_MAX_PAGECACHE 1024 /* pages of 4 KiB */

/* How to reach a server.  -1 / 0 = libnfs's default for the optional ones. */
struct bd_nfs_conn {
	const char *host;
	const char *export; /* the directory to MOUNT, e.g. "/export" */
	int uid, gid;	    /* -1: the daemon's own */
	int tcp_syncnt;	    /* -1: the kernel's */
	uint32_t readahead; /* bytes, 0 = off */
	uint32_t pagecache; /* pages, 0 = off */
	int debug;
	int timeout;		/* seconds per RPC, > 0 */
	int nfsport, mountport; /* 0: ask the portmapper */
	int autoreconnect;	/* libnfs: -1 forever, 0 never, N tries */
};

/* [any] Check the query part of an nfs:// URL (after '?', may be NULL or empty) against the
 * arguments blockd accepts (uid, gid, tcp-syncnt, readahead, pagecache, debug, nfsport,
 * mountport, version=3, timeout) and store them in c.  Unknown keys, duplicates, non-numbers
 * and values out of range are errors naming the key.  0 or -EINVAL with err set. */
int bd_nfs_url_query(const char *query, struct bd_nfs_conn *c, struct bd_err *err);

/* [any] Split an nfs:// URL into host, directory to mount and file name, with libnfs's parser
 * (nfs_parse_url_full), after checking the query with bd_nfs_url_query() and the shape (a
 * host, an absolute path with a file name, no "..", no control characters).  On success *host,
 * *dir and *file are malloc'd ("127.0.0.1", "/export", "disk.img"). */
int bd_nfs_url_split(const char *url, struct bd_nfs_conn *c, char **host, char **dir, char **file,
		     struct bd_err *err);

/* [control or worker] A new libnfs context set up from c (NFSv3) with the export mounted.
 * Bounded by c->timeout seconds overall.  NULL with err set ("Could not mount ..."). */
struct nfs_context *bd_nfs_connect(const struct bd_nfs_conn *c, struct bd_err *err);

/* [owner of ctx] Bounded synchronous calls: each waits at most timeout seconds (the context's
 * own RPC timeout normally ends it first).  Return 0 (or a byte count) or -errno; on -ETIMEDOUT
 * the call is abandoned (its late completion is ignored). */
int bd_nfs_open(struct nfs_context *ctx, const char *path, int flags, int mode, struct nfsfh **fh,
		int timeout);
int bd_nfs_close(struct nfs_context *ctx, struct nfsfh *fh, int timeout);
int bd_nfs_fstat(struct nfs_context *ctx, struct nfsfh *fh, struct nfs_stat_64 *st, int timeout);
int bd_nfs_stat(struct nfs_context *ctx, const char *path, struct nfs_stat_64 *st, int timeout);
int bd_nfs_ftruncate(struct nfs_context *ctx, struct nfsfh *fh, uint64_t size, int timeout);
int bd_nfs_fsync(struct nfs_context *ctx, struct nfsfh *fh, int timeout);
int bd_nfs_unlink(struct nfs_context *ctx, const char *path, int timeout);
int bd_nfs_opendir(struct nfs_context *ctx, const char *path, struct nfsdir **dir, int timeout);
int bd_nfs_statvfs(struct nfs_context *ctx, const char *path, struct nfs_statvfs_64 *sv,
		   int timeout);
/* Whole transfers: loops over short reads (stops at EOF, returning the bytes read) and writes. */
long bd_nfs_pread(struct nfs_context *ctx, struct nfsfh *fh, uint64_t off, size_t len, void *buf,
		  int timeout);
long bd_nfs_pwrite(struct nfs_context *ctx, struct nfsfh *fh, uint64_t off, size_t len,
		   const void *buf, int timeout);

/* [owner] The context's last error text (never NULL). */
const char *bd_nfs_error(struct nfs_context *ctx);

#endif /* BLOCKD_NFS_SYNC_H */
