/*
 * gluster-int.h - what the gluster protocol driver (protocols/gluster.c) and the gluster pool
 * (pools/gluster.c) share: QEMU's BlockdevOptionsGluster parsed into a location, and the cache
 * of gfapi connections (protocols/gluster-conn.c).  [control thread unless stated]
 */
#ifndef BLOCKD_GLUSTER_INT_H
#define BLOCKD_GLUSTER_INT_H

#include "blockd/blockd.h"

#include <glusterfs/api/glfs.h>

#define GL_DEFAULT_PORT 24007
#define GL_DEFAULT_DEBUG 4
#define GL_MAX_SERVERS 16

struct gl_server {
	bool unix_sock; /* SocketAddress type=unix: path; else inet: host, port */
	char *host;
	char *path;
	int port;
};

/* Where an image (or a pool's directory) is: volume, path in it and how to reach the servers. */
struct gl_loc {
	char *volume;
	char *path; /* always starts with '/' */
	struct gl_server servers[GL_MAX_SERVERS];
	int nservers;
	int debug;     /* gfapi log level 0..9 */
	char *logfile; /* "-" = stderr; NULL = stderr */
};

/* Parse opts (QEMU's BlockdevOptionsGluster: volume, path, server[], debug, logfile, or the
 * filename URI gluster[+tcp|+unix]://[host[:port]]/VOLUME/PATH[?socket=SOCK] when
 * allow_filename).  Marks what it reads.  0 or -errno with err naming the key. */
int gl_loc_parse(json_t *opts, struct gl_loc *loc, bool allow_filename, struct bd_err *err);
/* Parse only the URI form.  [any] */
int gl_uri_parse(const char *uri, struct gl_loc *loc, struct bd_err *err);
void gl_loc_free(struct gl_loc *loc);
/* The location as QEMU's BlockdevOptionsGluster object (new reference), with "driver". */
json_t *gl_loc_to_json(const struct gl_loc *loc);
/* "gluster://host:port/volume/path" for messages (static buffer per call site: pass buf). */
const char *gl_loc_str(const struct gl_loc *loc, char *buf, size_t len);

/* A connection to a volume: one glfs_t shared by every node and pool with the same volume,
 * servers, debug level and log file.  get() may block (glfs_init: bounded by gfapi's connect
 * timeouts). */
struct gl_conn;
struct gl_conn *gl_conn_get(const struct gl_loc *loc, struct bd_err *err);
glfs_t *gl_conn_fs(struct gl_conn *c);
/* [any] Drop a reference; the last one runs glfs_fini() (about 10 s with Debian's gfapi) on a
 * detached thread, never on the caller's thread.  A process that exits meanwhile does not wait
 * for it (the volume's server cleans up when the connection drops). */
void gl_conn_put(struct gl_conn *c);
/* [any] glfs_close(fd) and then gl_conn_put(c), on a detached thread (fd may be NULL). */
void gl_conn_put_close(struct gl_conn *c, glfs_fd_t *fd);

#endif /* BLOCKD_GLUSTER_INT_H */
