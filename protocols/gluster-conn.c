/*
 * gluster-conn.c - GlusterFS locations and connections for the gluster driver and pool: QEMU's
 * BlockdevOptionsGluster and gluster:// URIs parsed into a struct gl_loc, and a cache of gfapi
 * connections (glfs_t) shared by every node and pool that reach the same volume the same way.
 *
 * Threads: parsing is pure [any]; gl_conn_get runs on the control thread (or a create worker)
 * and may block in glfs_init; the last gl_conn_put hands glfs_fini() to a detached thread,
 * because Debian's gfapi 10 spends about 10 s in it (upstream knows): the caller never waits, and
 * the daemon does not wait for those threads at exit either (the brick drops a client whose
 * connection closes; data was flushed before: nodes are flushed before they are closed).
 */
#include "protocols/gluster-int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------------------------------------
 * Locations
 */

void gl_loc_free(struct gl_loc *loc)
{
	free(loc->volume);
	free(loc->path);
	for (int i = 0; i < loc->nservers; i++) {
		free(loc->servers[i].host);
		free(loc->servers[i].path);
	}
	free(loc->logfile);
	memset(loc, 0, sizeof(*loc));
}

/* Text that goes into messages, option trees and gfapi: no control characters, valid UTF-8. */
static bool valid_text(const char *s)
{
	json_t *j;
	for (const char *c = s; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			return false;
	j = json_string(s);
	json_decref(j);
	return j != NULL;
}

static int check_host(const char *h, struct bd_err *err)
{
	if (!h || !*h || h[0] == '-' || !valid_text(h) || strpbrk(h, "/?#@ []"))
		return bd_err_set(err, -EINVAL, "gluster: invalid server host '%s'",
				  h && valid_text(h) ? h : "(unprintable)");
	return 0;
}

static int set_path(struct gl_loc *loc, const char *path, struct bd_err *err)
{
	if (!path || !*path)
		return bd_err_set(err, -EINVAL, "gluster: the image path is missing");
	if (!valid_text(path))
		return bd_err_set(err, -EINVAL, "gluster: invalid image path");
	if (asprintf(&loc->path, "%s%s", path[0] == '/' ? "" : "/", path) < 0) {
		loc->path = NULL;
		return bd_err_set(err, -ENOMEM, "Out of memory");
	}
	return 0;
}

static int check_volume(const char *v, struct bd_err *err)
{
	if (!v || !*v)
		return bd_err_set(err, -EINVAL, "gluster: the volume name is missing");
	if (strchr(v, '/') || strchr(v, '?') || !valid_text(v))
		return bd_err_set(err, -EINVAL, "gluster: invalid volume name '%s'",
				  valid_text(v) ? v : "(unprintable)");
	return 0;
}

int gl_uri_parse(const char *uri, struct gl_loc *loc, struct bd_err *err)
{
	const char *p, *rest, *q;
	bool unix_sock = false;
	char *host = NULL, *sock = NULL;
	int port = 0, r;

	memset(loc, 0, sizeof(*loc));
	loc->debug = GL_DEFAULT_DEBUG;
	if (!valid_text(uri))
		return bd_err_set(err, -EINVAL,
				  "gluster: invalid URI (control characters or invalid UTF-8)");
	if (!strncmp(uri, "gluster://", 10)) {
		p = uri + 10;
	} else if (!strncmp(uri, "gluster+tcp://", 14)) {
		p = uri + 14;
	} else if (!strncmp(uri, "gluster+rdma://", 15)) {
		p = uri + 15; /* rdma is gone from gluster: tcp, as QEMU does */
	} else if (!strncmp(uri, "gluster+unix://", 15)) {
		p = uri + 15;
		unix_sock = true;
	} else {
		return bd_err_set(err, -EINVAL,
				  "gluster: invalid URI '%s' (expected "
				  "gluster[+tcp|+unix]://[host[:port]]/volume/path[?socket=...])",
				  uri);
	}
	rest = strchr(p, '/');
	if (!rest)
		return bd_err_set(err, -EINVAL, "gluster: URI '%s' has no volume", uri);
	/* authority: host, [v6]:port or host:port */
	if (rest > p) {
		const char *hend = rest, *colon = NULL;
		if (*p == '[') {
			const char *rb = memchr(p, ']', (size_t)(rest - p));
			if (!rb)
				return bd_err_set(err, -EINVAL, "gluster: invalid host in URI '%s'",
						  uri);
			host = strndup(p + 1, (size_t)(rb - p - 1));
			if (rb + 1 < rest && rb[1] == ':')
				colon = rb + 1;
		} else {
			colon = memchr(p, ':', (size_t)(rest - p));
			hend = colon ? colon : rest;
			host = strndup(p, (size_t)(hend - p));
		}
		if (colon) {
			char *end;
			long v = strtol(colon + 1, &end, 10);
			if (end != rest || v <= 0 || v > 65535) {
				free(host);
				return bd_err_set(err, -EINVAL, "gluster: invalid port in URI '%s'",
						  uri);
			}
			port = (int)v;
		}
	}
	/* /volume/path?query */
	p = rest + 1;
	q = strchr(p, '?');
	rest = strchr(p, '/');
	if (!rest || (q && rest > q)) {
		free(host);
		return bd_err_set(err, -EINVAL, "gluster: URI '%s' has no image path", uri);
	}
	loc->volume = strndup(p, (size_t)(rest - p));
	r = check_volume(loc->volume, err);
	if (r == 0) {
		char *path = q ? strndup(rest, (size_t)(q - rest)) : strdup(rest);
		r = set_path(loc, path && strcmp(path, "/") ? path : NULL, err);
		free(path);
	}
	if (r == 0 && q) {
		if (!strncmp(q + 1, "socket=", 7) && unix_sock && !strchr(q + 8, '&'))
			sock = strdup(q + 8);
		else
			r = bd_err_set(err, -EINVAL,
				       "gluster: unsupported query '%s' in URI (only "
				       "?socket=PATH with gluster+unix)",
				       q + 1);
	}
	if (r == 0 && unix_sock && (!sock || !*sock || host || !valid_text(sock)))
		r = bd_err_set(err, -EINVAL, "gluster+unix URIs need ?socket=PATH and no host");
	if (r == 0 && !unix_sock && host)
		r = check_host(host, err);
	if (r < 0) {
		free(host);
		free(sock);
		gl_loc_free(loc);
		return r;
	}
	loc->nservers = 1;
	loc->servers[0].unix_sock = unix_sock;
	loc->servers[0].path = sock;
	loc->servers[0].host = unix_sock ? NULL : (host ? host : strdup("localhost"));
	loc->servers[0].port = unix_sock ? 0 : (port ? port : GL_DEFAULT_PORT);
	return 0;
}

static int parse_server(json_t *o, int i, struct gl_server *s, struct bd_err *err)
{
	static const char *const types[] = {"inet", "unix", "tcp", NULL};
	const char *host = NULL, *path = NULL, *key;
	int type = 0, r;
	uint64_t port = GL_DEFAULT_PORT;
	json_t *v;

	if (!json_is_object(o))
		return bd_err_set(err, -EINVAL,
				  "Invalid parameter type for 'server.%d', expected: "
				  "object",
				  i);
	r = bd_opts_enum(o, "type", types, &type, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'server.%d.type' is missing", i);
	if (r < 0)
		return bd_err_prefix(err, "server.%d", i);
	if (type == 1) {
		r = bd_opts_str(o, "path", &path, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'server.%d.path' is missing", i);
		if (r < 0)
			return bd_err_prefix(err, "server.%d", i);
		if (!*path || !valid_text(path))
			return bd_err_set(err, -EINVAL, "server.%d.path: invalid socket path", i);
		s->unix_sock = true;
		s->path = strdup(path);
	} else {
		r = bd_opts_str(o, "host", &host, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'server.%d.host' is missing", i);
		if (r < 0)
			return bd_err_prefix(err, "server.%d", i);
		r = bd_opts_u64(o, "port", &port, err);
		if (r < 0 && r != -ENOENT)
			return bd_err_prefix(err, "server.%d", i);
		if (port == 0 || port > 65535)
			return bd_err_set(err, -EINVAL, "server.%d.port: invalid port %llu", i,
					  (unsigned long long)port);
		if ((r = check_host(host, err)) < 0)
			return bd_err_prefix(err, "server.%d", i);
		s->host = strdup(host);
		s->port = (int)port;
	}
	/* InetSocketAddress extras QEMU accepts and gfapi cannot use */
	bool b;
	const char *str;
	if (bd_opts_bool(o, "numeric", &b, NULL) == -EINVAL ||
	    bd_opts_bool(o, "ipv4", &b, NULL) == -EINVAL ||
	    bd_opts_bool(o, "ipv6", &b, NULL) == -EINVAL ||
	    bd_opts_bool(o, "keep-alive", &b, NULL) == -EINVAL)
		return bd_err_set(err, -EINVAL, "server.%d: invalid boolean option", i);
	bd_opts_str(o, "to", &str, NULL);
	json_object_foreach(o, key, v)
	{
		(void)v;
		if (!bd_opts_is_mark(key) && !bd_opts_is_used(o, key))
			return bd_err_set(err, -EINVAL, "Invalid parameter 'server.%d.%s'", i, key);
	}
	if ((s->unix_sock && !s->path) || (!s->unix_sock && !s->host))
		return bd_err_set(err, -ENOMEM, "Out of memory");
	return 0;
}

int gl_loc_parse(json_t *opts, struct gl_loc *loc, bool allow_filename, struct bd_err *err)
{
	const char *filename = NULL, *volume = NULL, *path = NULL, *logfile = NULL;
	json_t *servers;
	uint64_t debug = GL_DEFAULT_DEBUG;
	int r;

	memset(loc, 0, sizeof(*loc));
	r = allow_filename ? bd_opts_str(opts, "filename", &filename, err) : -ENOENT;
	if (r < 0 && r != -ENOENT)
		return r;
	if (filename) {
		if (json_object_get(opts, "volume") || json_object_get(opts, "path") ||
		    json_object_get(opts, "server"))
			return bd_err_set(err, -EINVAL,
					  "gluster: 'filename' cannot be combined with 'volume', "
					  "'path' or 'server'");
		if ((r = gl_uri_parse(filename, loc, err)) < 0)
			return r;
	} else {
		r = bd_opts_str(opts, "volume", &volume, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'volume' is missing");
		if (r < 0 || (r = check_volume(volume, err)) < 0)
			return r;
		r = bd_opts_str(opts, "path", &path, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'path' is missing");
		if (r < 0)
			return r;
		loc->volume = strdup(volume);
		if (!loc->volume || (r = set_path(loc, path, err)) < 0)
			goto fail;
		servers = json_object_get(opts, "server");
		if (!servers) {
			r = bd_err_set(err, -EINVAL, "Parameter 'server' is missing");
			goto fail;
		}
		bd_opts_mark_used(opts, "server");
		if (!json_is_array(servers) || json_array_size(servers) == 0 ||
		    json_array_size(servers) > GL_MAX_SERVERS) {
			r = bd_err_set(err, -EINVAL,
				       "Parameter 'server' must be a list of 1 to %d server "
				       "addresses",
				       GL_MAX_SERVERS);
			goto fail;
		}
		for (size_t i = 0; i < json_array_size(servers); i++) {
			json_t *s = json_array_get(servers, i);
			r = parse_server(s, (int)i, &loc->servers[loc->nservers++], err);
			if (json_is_object(s))
				bd_opts_clear_marks(s);
			if (r < 0)
				goto fail;
		}
	}
	loc->debug = GL_DEFAULT_DEBUG;
	r = bd_opts_u64(opts, "debug", &debug, err);
	if (r < 0 && r != -ENOENT)
		goto fail;
	loc->debug = debug > 9 ? 9 : (int)debug; /* QEMU clamps too */
	r = bd_opts_str(opts, "logfile", &logfile, err);
	if (r < 0 && r != -ENOENT)
		goto fail;
	if (logfile && (!*logfile || !valid_text(logfile))) {
		r = bd_err_set(err, -EINVAL, "gluster: invalid logfile");
		goto fail;
	}
	if (logfile && !(loc->logfile = strdup(logfile))) {
		r = bd_err_set(err, -ENOMEM, "Out of memory");
		goto fail;
	}
	return 0;
fail:
	if (!err->code)
		r = bd_err_set(err, -ENOMEM, "Out of memory");
	gl_loc_free(loc);
	return r;
}

json_t *gl_loc_to_json(const struct gl_loc *loc)
{
	json_t *servers = json_array();
	for (int i = 0; i < loc->nservers; i++) {
		const struct gl_server *s = &loc->servers[i];
		if (s->unix_sock)
			json_array_append_new(
			    servers, json_pack("{s:s,s:s}", "type", "unix", "path", s->path));
		else {
			char port[16];
			snprintf(port, sizeof(port), "%d", s->port);
			json_array_append_new(servers, json_pack("{s:s,s:s,s:s}", "type", "inet",
								 "host", s->host, "port", port));
		}
	}
	json_t *o = json_pack("{s:s,s:s,s:s,s:o}", "driver", "gluster", "volume", loc->volume,
			      "path", loc->path, "server", servers);
	if (loc->debug != GL_DEFAULT_DEBUG)
		json_object_set_new(o, "debug", json_integer(loc->debug));
	if (loc->logfile)
		json_object_set_new(o, "logfile", json_string(loc->logfile));
	return o;
}

const char *gl_loc_str(const struct gl_loc *loc, char *buf, size_t len)
{
	const struct gl_server *s = &loc->servers[0];
	if (loc->nservers && s->unix_sock)
		snprintf(buf, len, "gluster+unix:///%s%s?socket=%s", loc->volume, loc->path,
			 s->path);
	else if (loc->nservers)
		snprintf(buf, len, "gluster://%s:%d/%s%s", s->host, s->port, loc->volume,
			 loc->path);
	else
		snprintf(buf, len, "gluster:///%s%s", loc->volume, loc->path);
	return buf;
}

/* ---------------------------------------------------------------------------------------------
 * Connections
 */

struct gl_conn {
	char *key;
	glfs_t *fs;
	int refs; /* under conn_lock */
	struct gl_conn *next;
};

static pthread_mutex_t conn_lock = PTHREAD_MUTEX_INITIALIZER;
static struct gl_conn *conns;

static char *conn_key(const struct gl_loc *loc)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	fprintf(f, "%s|%d|%s", loc->volume, loc->debug, loc->logfile ? loc->logfile : "-");
	for (int i = 0; i < loc->nservers; i++) {
		const struct gl_server *s = &loc->servers[i];
		if (s->unix_sock)
			fprintf(f, "|unix:%s", s->path);
		else
			fprintf(f, "|inet:%s:%d", s->host, s->port);
	}
	fclose(f);
	return buf;
}

static void *fini_thread(void *arg)
{
	glfs_fini(arg);
	return NULL;
}

/* glfs_fini on a detached thread; inline only if no thread can be made. */
static void fini_async(glfs_t *fs)
{
	pthread_t th;
	pthread_attr_t a;
	pthread_attr_init(&a);
	pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &a, fini_thread, fs) != 0)
		glfs_fini(fs);
	pthread_attr_destroy(&a);
}

struct gl_conn *gl_conn_get(const struct gl_loc *loc, struct bd_err *err)
{
	char *key = conn_key(loc);
	struct gl_conn *c;
	glfs_t *fs;
	char where[512];

	if (!key) {
		bd_err_set(err, -ENOMEM, "Out of memory");
		return NULL;
	}
	pthread_mutex_lock(&conn_lock);
	for (c = conns; c; c = c->next)
		if (!strcmp(c->key, key)) {
			c->refs++;
			pthread_mutex_unlock(&conn_lock);
			free(key);
			return c;
		}
	pthread_mutex_unlock(&conn_lock);

	gl_loc_str(loc, where, sizeof(where));
	fs = glfs_new(loc->volume);
	if (!fs) {
		bd_err_set(err, -ENOMEM, "cannot set up a gfapi instance for '%s'", where);
		free(key);
		return NULL;
	}
	for (int i = 0; i < loc->nservers; i++) {
		const struct gl_server *s = &loc->servers[i];
		if (glfs_set_volfile_server(fs, s->unix_sock ? "unix" : "tcp",
					    s->unix_sock ? s->path : s->host, s->port) < 0) {
			int e = errno ? errno : EINVAL;
			bd_err_set(err, -e, "cannot use server %s for '%s': %s",
				   s->unix_sock ? s->path : s->host, where, strerror(e));
			goto fail;
		}
	}
	if (glfs_set_logging(fs, loc->logfile ? loc->logfile : "-", loc->debug) < 0) {
		int e = errno ? errno : EINVAL;
		bd_err_set(err, -e, "cannot log gfapi messages to '%s': %s",
			   loc->logfile ? loc->logfile : "stderr", strerror(e));
		goto fail;
	}
	/* Writes that write-behind could not flush stay cached and are retried by the next fsync
	 * instead of being dropped (QEMU sets the same): a failed flush really fails. */
	glfs_set_xlator_option(fs, "*-write-behind", "resync-failed-syncs-after-fsync", "on");
	if (glfs_init(fs) < 0) {
		int e = errno ? errno : EIO;
		bd_err_set(err, -e, "cannot connect to gluster volume '%s' (%s): %s", loc->volume,
			   where, strerror(e));
		goto fail;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		bd_err_set(err, -ENOMEM, "Out of memory");
		goto fail;
	}
	c->key = key;
	c->fs = fs;
	c->refs = 1;
	pthread_mutex_lock(&conn_lock);
	c->next = conns;
	conns = c;
	pthread_mutex_unlock(&conn_lock);
	return c;
fail:
	fini_async(fs);
	free(key);
	return NULL;
}

glfs_t *gl_conn_fs(struct gl_conn *c)
{
	return c->fs;
}

void gl_conn_put(struct gl_conn *c)
{
	bool last;

	if (!c)
		return;
	pthread_mutex_lock(&conn_lock);
	last = --c->refs == 0;
	if (last)
		for (struct gl_conn **pp = &conns; *pp; pp = &(*pp)->next)
			if (*pp == c) {
				*pp = c->next;
				break;
			}
	pthread_mutex_unlock(&conn_lock);
	if (!last)
		return;
	fini_async(c->fs);
	free(c->key);
	free(c);
}

struct put_close {
	struct gl_conn *c;
	glfs_fd_t *fd;
};

static void *put_close_thread(void *arg)
{
	struct put_close *pc = arg;
	struct gl_conn *c = pc->c;
	bool last;

	if (pc->fd)
		glfs_close(pc->fd);
	free(pc);
	pthread_mutex_lock(&conn_lock);
	last = --c->refs == 0;
	if (last)
		for (struct gl_conn **pp = &conns; *pp; pp = &(*pp)->next)
			if (*pp == c) {
				*pp = c->next;
				break;
			}
	pthread_mutex_unlock(&conn_lock);
	if (last) {
		glfs_fini(c->fs); /* already on our own detached thread */
		free(c->key);
		free(c);
	}
	return NULL;
}

void gl_conn_put_close(struct gl_conn *c, glfs_fd_t *fd)
{
	struct put_close *pc = malloc(sizeof(*pc));
	pthread_t th;
	pthread_attr_t a;

	if (pc) {
		pc->c = c;
		pc->fd = fd;
		pthread_attr_init(&a);
		pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
		int r = pthread_create(&th, &a, put_close_thread, pc);
		pthread_attr_destroy(&a);
		if (r == 0)
			return;
		free(pc);
	}
	if (fd)
		glfs_close(fd);
	gl_conn_put(c);
}
