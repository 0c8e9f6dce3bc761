/*
 * rbd-conn.h - connecting to a Ceph cluster with librados, shared by the rbd protocol driver
 * (protocols/rbd.c) and the rbd pool type (pools/rbd.c).  [control thread, or a worker thread;
 * blocks for at most the timeout]
 */
#ifndef BLOCKD_RBD_CONN_H
#define BLOCKD_RBD_CONN_H

#include "blockd/blockd.h"

#include <rados/librados.h>

struct bd_rbd_conn {
	const char *user;     /* cephx user without "client." (NULL: admin) */
	const char *conf;     /* ceph.conf path (NULL: librados' default search, errors ignored) */
	const char *mon_host; /* "host:port,host:port" (NULL: from the configuration) */
	const char *key;      /* base64 cephx key (NULL: from the keyring in the configuration) */
	const char *auth_client_required; /* "cephx", "none", "cephx;none" (NULL: default) */
	uint64_t timeout;		  /* seconds for mon/osd operations and mount; 0 = none */
	int cache;			  /* rbd_cache: 1 on, 0 off, -1 leave as configured */
	json_t *extra;			  /* more {"key": "value"} for rados_conf_set, or NULL */
};

/* Create, configure and connect a cluster handle.  0 and *out, or -errno with err set (the
 * message names the cause: unreachable monitors, refused key, ...).  what names the caller
 * ("rbd node 'n'", "pool 'p'") in messages. */
int bd_rbd_connect(const struct bd_rbd_conn *c, rados_t *out, struct bd_err *err);

/* "host:port" list from a QEMU server array [{host, port}], malloc'd; NULL with err set. */
char *bd_rbd_mon_host(json_t *servers, struct bd_err *err);

/* [any] Parse the legacy filename "rbd:pool[/namespace]/image[@snap][:key=value...]" ('\'
 * escapes ':' '@' '/'): pool, namespace, image, snapshot, user (id=) and conf (conf=) are set in
 * opts, every other key=value in extra (for rados_conf_set).  0 or -EINVAL with err set. */
int bd_rbd_parse_filename(const char *fn, json_t *opts, json_t *extra, struct bd_err *err);

/* Look up a secret object's bytes from any thread (hops to the control thread when needed). */
int bd_rbd_secret(const char *id, char **out, struct bd_err *err);

#endif /* BLOCKD_RBD_CONN_H */
