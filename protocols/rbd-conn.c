/*
 * rbd-conn.c - connecting to a Ceph cluster with librados for the rbd driver and the rbd pool:
 * configuration (ceph.conf or none at all: monitors and key given as options), cephx key from
 * a secret object, timeouts so that a dead cluster gives an error instead of a hang; and the
 * parser of the legacy "rbd:..." filename.  [control thread or a worker thread; connecting
 * blocks, bounded by the timeout; the parser runs on any thread]
 */
#include "protocols/rbd-conn.h"
#include "qmp-like/qmp.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int conf_set(rados_t cl, const char *key, const char *val, struct bd_err *err)
{
	int r = rados_conf_set(cl, key, val);
	if (r < 0)
		return bd_err_set(err, r, "cannot set Ceph option '%s': %s", key, strerror(-r));
	return 0;
}

int bd_rbd_connect(const struct bd_rbd_conn *c, rados_t *out, struct bd_err *err)
{
	rados_t cl;
	char tmo[32];
	int r;

	r = rados_create(&cl, c->user && *c->user ? c->user : NULL);
	if (r < 0)
		return bd_err_set(err, r, "cannot create a Ceph cluster handle: %s", strerror(-r));
	if (c->conf) {
		r = rados_conf_read_file(cl, c->conf);
		if (r < 0) {
			bd_err_set(err, r, "cannot read Ceph configuration '%s': %s", c->conf,
				   strerror(-r));
			goto fail;
		}
	} else {
		/* QEMU's rule: try the default locations, but no ceph.conf is fine */
		(void)rados_conf_read_file(cl, NULL);
	}
	if (c->mon_host && (r = conf_set(cl, "mon_host", c->mon_host, err)) < 0)
		goto fail;
	if (c->key && (r = conf_set(cl, "key", c->key, err)) < 0)
		goto fail;
	if (c->auth_client_required &&
	    (r = conf_set(cl, "auth_client_required", c->auth_client_required, err)) < 0)
		goto fail;
	if (c->cache >= 0 && (r = conf_set(cl, "rbd_cache", c->cache ? "true" : "false", err)) < 0)
		goto fail;
	if (c->timeout) {
		snprintf(tmo, sizeof(tmo), "%" PRIu64, c->timeout);
		if ((r = conf_set(cl, "rados_osd_op_timeout", tmo, err)) < 0 ||
		    (r = conf_set(cl, "rados_mon_op_timeout", tmo, err)) < 0 ||
		    (r = conf_set(cl, "client_mount_timeout", tmo, err)) < 0)
			goto fail;
	}
	if (c->extra) {
		const char *k;
		json_t *v;
		json_object_foreach(c->extra, k, v)
		{
			if (!json_is_string(v)) {
				r = bd_err_set(err, -EINVAL,
					       "Ceph option '%s' needs a string value", k);
				goto fail;
			}
			if ((r = conf_set(cl, k, json_string_value(v), err)) < 0)
				goto fail;
		}
	}
	r = rados_connect(cl);
	if (r < 0) {
		const char *why = "";
		if (r == -EACCES || r == -EPERM)
			why = " (the cephx user or key was refused)";
		else if (r == -ETIMEDOUT)
			why = " (no monitor answered within the timeout; over the legacy v1 "
			      "protocol a "
			      "refused cephx key also ends this way)";
		else if (r == -EINVAL)
			why = " (no usable monitor address: check the monitor host names)";
		else if (r == -ENOENT)
			why = " (no monitor address or keyring: give server or conf)";
		bd_err_set(err, r, "cannot connect to the Ceph cluster as client.%s: %s%s",
			   c->user && *c->user ? c->user : "admin", strerror(-r), why);
		goto fail;
	}
	*out = cl;
	return 0;
fail:
	rados_shutdown(cl);
	return r;
}

char *bd_rbd_mon_host(json_t *servers, struct bd_err *err)
{
	size_t i;
	json_t *s;
	char *res = NULL;
	size_t len = 0;
	FILE *f;

	if (!json_is_array(servers) || json_array_size(servers) == 0) {
		bd_err_set(err, -EINVAL,
			   "Parameter 'server' must be a non-empty list of {host, port}");
		return NULL;
	}
	f = open_memstream(&res, &len);
	if (!f)
		abort();
	json_array_foreach(servers, i, s)
	{
		const char *k, *host = NULL, *port = NULL;
		json_t *v;
		char pbuf[32];
		if (!json_is_object(s))
			goto bad;
		json_object_foreach(s, k, v)
		{
			if (bd_opts_is_mark(k))
				continue;
			if (!strcmp(k, "host") && json_is_string(v)) {
				host = json_string_value(v);
			} else if (!strcmp(k, "port") && json_is_string(v)) {
				port = json_string_value(v);
			} else if (!strcmp(k, "port") && json_is_integer(v)) {
				snprintf(pbuf, sizeof(pbuf), "%" JSON_INTEGER_FORMAT,
					 json_integer_value(v));
				port = pbuf;
			} else {
				fclose(f);
				free(res);
				bd_err_set(err, -EINVAL, "Invalid parameter 'server.%zu.%s'", i, k);
				return NULL;
			}
		}
		if (!host || !*host || strpbrk(host, ",; "))
			goto bad;
		if (port) {
			char *end;
			long p = strtol(port, &end, 10);
			if (!*port || *end || p <= 0 || p > 65535)
				goto bad;
		}
		bool v6 = strchr(host, ':') && host[0] != '[';
		fprintf(f, "%s%s%s%s%s%s", i ? "," : "", v6 ? "[" : "", host, v6 ? "]" : "",
			port ? ":" : "", port ? port : "");
		continue;
	bad:
		fclose(f);
		free(res);
		bd_err_set(
		    err, -EINVAL,
		    "Parameter 'server.%zu' must be {host, port} with a host name and a port "
		    "in 1..65535",
		    i);
		return NULL;
	}
	fclose(f);
	return res;
}

struct secret_call {
	const char *id;
	char *out;
	struct bd_err err;
	int ret;
};

static void secret_on_main(void *arg)
{
	struct secret_call *sc = arg;
	sc->ret = bd_secret_lookup(sc->id, &sc->out, &sc->err);
}

int bd_rbd_secret(const char *id, char **out, struct bd_err *err)
{
	struct secret_call sc = {.id = id};
	if (bd_loop_current() == bd_loop_main() || !bd_loop_main()) {
		secret_on_main(&sc);
	} else if (bd_loop_call(bd_loop_main(), secret_on_main, &sc) < 0) {
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	if (sc.ret < 0) {
		bd_err_set(err, sc.ret, "%s", sc.err.msg);
		return sc.ret;
	}
	*out = sc.out;
	return 0;
}

/* The first unescaped c in s, or NULL. */
static char *find_unescaped(char *s, char c)
{
	for (; *s; s++) {
		if (*s == '\\' && s[1])
			s++;
		else if (*s == c)
			return s;
	}
	return NULL;
}

/* Remove the escaping backslashes of s in place. */
static void unescape(char *s)
{
	char *w = s;
	for (; *s; s++) {
		if (*s == '\\' && s[1])
			s++;
		*w++ = *s;
	}
	*w = '\0';
}

static int set_str(json_t *o, const char *key, const char *val, struct bd_err *err)
{
	json_t *v = json_string(val);
	if (!v || json_object_set_new(o, key, v) < 0)
		return bd_err_set(err, -EINVAL, "rbd filename: '%s' is not valid UTF-8", key);
	return 0;
}

int bd_rbd_parse_filename(const char *fn, json_t *opts, json_t *extra, struct bd_err *err)
{
	char *buf, *spec, *opt, *next, *at, *slash, *parts[3];
	size_t np = 0;
	int r = 0;

	if (strncmp(fn, "rbd:", 4))
		return bd_err_set(err, -EINVAL, "rbd filename must start with 'rbd:'");
	buf = strdup(fn + 4);
	if (!buf)
		abort();
	spec = buf;
	opt = find_unescaped(buf, ':');
	if (opt)
		*opt++ = '\0';
	/* the options: key=value separated by ':' */
	for (; opt; opt = next) {
		next = find_unescaped(opt, ':');
		if (next)
			*next++ = '\0';
		char *eq = find_unescaped(opt, '=');
		if (!eq || eq == opt) {
			unescape(opt);
			r = bd_err_set(err, -EINVAL, "rbd filename option '%s' needs key=value",
				       opt);
			goto out;
		}
		*eq = '\0';
		unescape(opt);
		unescape(eq + 1);
		if (!strcmp(opt, "id"))
			r = set_str(opts, "user", eq + 1, err);
		else if (!strcmp(opt, "conf"))
			r = set_str(opts, "conf", eq + 1, err);
		else
			r = set_str(extra, opt, eq + 1, err);
		if (r < 0)
			goto out;
	}
	/* pool[/namespace]/image[@snapshot] */
	at = find_unescaped(spec, '@');
	if (at) {
		*at++ = '\0';
		unescape(at);
		if (!*at) {
			r = bd_err_set(err, -EINVAL, "rbd filename: empty snapshot name");
			goto out;
		}
		if ((r = set_str(opts, "snapshot", at, err)) < 0)
			goto out;
	}
	parts[np++] = spec;
	while ((slash = find_unescaped(parts[np - 1], '/')) && np < 3) {
		*slash = '\0';
		parts[np++] = slash + 1;
	}
	if (np < 2 || find_unescaped(parts[np - 1], '/')) {
		r = bd_err_set(
		    err, -EINVAL,
		    "rbd filename must be rbd:pool[/namespace]/image[@snapshot][:opt=val]");
		goto out;
	}
	for (size_t i = 0; i < np; i++) {
		unescape(parts[i]);
		if (!*parts[i]) {
			r = bd_err_set(err, -EINVAL,
				       "rbd filename: empty pool, namespace or image");
			goto out;
		}
	}
	if ((r = set_str(opts, "pool", parts[0], err)) < 0 ||
	    (np == 3 && (r = set_str(opts, "namespace", parts[1], err)) < 0) ||
	    (r = set_str(opts, "image", parts[np - 1], err)) < 0)
		goto out;
out:
	free(buf);
	return r;
}
