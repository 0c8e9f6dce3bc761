/*
 * nbd.c - the "nbd" protocol driver: a client of another NBD server, built on libnbd.  This file
 * reads the options (QEMU's BlockdevOptionsNbd: server, export, reconnect-delay, open-timeout,
 * plus timeout and a legacy nbd:// URI in filename), makes the first connection, learns the
 * export's size, flags and block sizes, and closes and describes the node.  [control thread]
 * The data path is in nbd-conn.c; docs/nbd-client.md has the options and the design.
 */
#include "protocols/nbd-int.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <time.h>

#define NS_PER_S 1000000000ull
#define DEFAULT_TIMEOUT_S 30
#define MAX_SECONDS (365ull * 24 * 3600) /* longer waits are surely a mistake */
#define DEFAULT_MAX_TRANSFER (32u << 20) /* NBD's traditional safe maximum */
#define MAX_DISCARD (1u << 30)		 /* trim/zero lengths are 32 bits on the wire */

enum { SRV_INET, SRV_UNIX };
static const char *const srv_types[] = {"inet", "unix", NULL};

struct nbd_handle *nbdc_handle_new(struct nbdc_node *nn)
{
	struct nbd_handle *h = nbd_create();

	if (!h)
		return NULL;
	/* pread_initialize stays on (libnbd's default): a server that answers a read with fewer
	 * bytes than asked must not hand a client what its buffer held before */
	if (nbd_set_handle_name(h, bd_node_name(nn->node)) == -1 ||
	    (nn->export_name && nbd_set_export_name(h, nn->export_name) == -1) ||
	    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == -1 ||
	    nbd_set_request_block_size(h, true) == -1) {
		nbd_close(h);
		return NULL;
	}
	return h;
}

/* Where to connect, as given by the options. */
struct target {
	const char *uri;
	int type;
	const char *host, *port, *path;
};

static int start_connect(struct nbdc_node *nn, const struct target *t, struct nbd_handle **hp,
			 struct bd_err *err)
{
	struct nbd_handle *h = nbdc_handle_new(nn);
	int r;

	*hp = NULL;
	if (!h)
		return bd_err_set(err, -ENOMEM, "cannot create an NBD handle: %s", nbd_get_error());
	if (t->uri) {
		if (nbd_supports_uri(h) != 1) {
			nbd_close(h);
			return bd_err_set(err, -ENOTSUP, "this libnbd cannot parse NBD URIs");
		}
		nbd_set_uri_allow_transports(h, LIBNBD_ALLOW_TRANSPORT_TCP |
						    LIBNBD_ALLOW_TRANSPORT_UNIX);
		nbd_set_uri_allow_tls(h, LIBNBD_TLS_DISABLE);
		nbd_set_uri_allow_local_file(h, false);
		r = nbd_aio_connect_uri(h, t->uri);
	} else if (t->type == SRV_UNIX) {
		r = nbd_aio_connect_unix(h, t->path);
	} else {
		r = nbd_aio_connect_tcp(h, t->host, t->port);
	}
	*hp = h;
	if (r == -1)
		return bd_err_set(err, -(nbd_get_errno() ? nbd_get_errno() : EIO), "%s",
				  nbd_get_error() ? nbd_get_error() : "connection failed");
	return 0;
}

/* One blocking connection attempt, bounded by deadline_ns.  0 with *hp ready, or -errno. */
static int connect_once(struct nbdc_node *nn, const struct target *t, uint64_t deadline_ns,
			struct nbd_handle **hp, struct bd_err *err)
{
	struct nbd_handle *h;
	int r = start_connect(nn, t, &h, err);

	while (r == 0 && nbd_aio_is_connecting(h)) {
		uint64_t now = bd_now_ns();
		int ms;

		if (now >= deadline_ns) {
			r = bd_err_set(err, -ETIMEDOUT, "no answer to the NBD handshake");
			break;
		}
		ms = (int)((deadline_ns - now + 999999) / 1000000);
		if (nbd_poll(h, ms > 1000 ? 1000 : ms) == -1 && !nbd_aio_is_dead(h)) {
			r = bd_err_set(err, -EIO, "%s", nbd_get_error());
			break;
		}
	}
	if (r == 0 && !nbd_aio_is_ready(h))
		r = bd_err_set(err, -(nbd_get_errno() ? nbd_get_errno() : ECONNREFUSED), "%s",
			       nbd_get_error() ? nbd_get_error() : "connection failed");
	if (r < 0) {
		nbd_close(h);
		return r;
	}
	*hp = h;
	return 0;
}

static int get_seconds(json_t *opts, const char *key, uint64_t *ns, struct bd_err *err)
{
	uint64_t s;
	int r = bd_opts_u64(opts, key, &s, err);

	if (r == -ENOENT)
		return 0;
	if (r < 0)
		return r;
	if (s > MAX_SECONDS)
		return bd_err_set(err, -EINVAL, "Parameter '%s' is too large (at most %llu s)", key,
				  MAX_SECONDS);
	*ns = s * NS_PER_S;
	return 0;
}

static int read_server(json_t *opts, struct target *t, struct bd_err *err)
{
	json_t *srv;
	int r = bd_opts_obj(opts, "server", &srv, err);

	if (r < 0)
		return r;
	r = bd_opts_enum(srv, "type", srv_types, &t->type, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'server.type' is missing");
	if (r < 0)
		return bd_err_set(err, r, "Parameter 'server.type' must be 'inet' or 'unix'");
	if (t->type == SRV_UNIX) {
		r = bd_opts_str(srv, "path", &t->path, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'server.path' is missing");
		if (r < 0)
			return r;
		if (strlen(t->path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
			return bd_err_set(err, -ENAMETOOLONG, "socket path '%s' is too long",
					  t->path);
		return bd_opts_check_unused(srv, "server", err);
	}
	r = bd_opts_str(srv, "host", &t->host, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'server.host' is missing");
	if (r < 0)
		return r;
	t->port = "10809";
	r = bd_opts_str(srv, "port", &t->port, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (!*t->host || !*t->port)
		return bd_err_set(err, -EINVAL, "server.host and server.port must not be empty");
	return bd_opts_check_unused(srv, "server", err);
}

/* "unix:/path", "tcp:host:port" or the URI: how messages name the server. */
static char *describe_target(const struct target *t)
{
	char *s = NULL;
	int r;

	if (t->uri)
		r = asprintf(&s, "%s", t->uri);
	else if (t->type == SRV_UNIX)
		r = asprintf(&s, "unix:%s", t->path);
	else
		r = asprintf(&s, "tcp:%s:%s", t->host, t->port);
	return r < 0 ? NULL : s;
}

static uint32_t pow2_or(int64_t v, uint32_t dflt, uint32_t max)
{
	if (v <= 0 || (uint64_t)v > max || (v & (v - 1)))
		return dflt;
	return (uint32_t)v;
}

static void fill_limits(struct nbdc_node *nn, struct nbd_handle *h, struct bd_limits *limits)
{
	uint32_t min = pow2_or(nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM), 1, 65536);
	uint32_t pref = pow2_or(nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED), 0, 1u << 30);
	int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);

	limits->size = nn->size;
	limits->ops = BD_OP_BIT(BD_OP_READ) | BD_OP_BIT(BD_OP_WRITE);
	if (nbd_can_flush(h) == 1)
		limits->ops |= BD_OP_BIT(BD_OP_FLUSH);
	if (nbd_can_trim(h) == 1)
		limits->ops |= BD_OP_BIT(BD_OP_DISCARD);
	if (nbd_can_zero(h) == 1)
		limits->ops |= BD_OP_BIT(BD_OP_WRITE_ZEROES);
	if (nn->has_bs)
		limits->ops |= BD_OP_BIT(BD_OP_BLOCK_STATUS);
	limits->block_status_costly = true; /* a round trip to the server */
	if (nbd_can_cache(h) == 1)
		limits->ops |= BD_OP_BIT(BD_OP_CACHE);
	limits->req_align = min;
	limits->buf_align = 1;
	limits->max_transfer = DEFAULT_MAX_TRANSFER;
	if (max > 0 && (uint64_t)max < DEFAULT_MAX_TRANSFER)
		limits->max_transfer = (uint64_t)max;
	if (limits->max_transfer < min)
		limits->max_transfer = min;
	limits->max_transfer &= ~(uint64_t)(min - 1);
	limits->max_discard = MAX_DISCARD;
	limits->opt_transfer = pref;
	limits->native_fua = nbd_can_fua(h) == 1;
	limits->zeroes_unmap = nbd_can_zero(h) == 1 && nbd_can_trim(h) == 1;
	limits->can_resize = false;
}

static int nbdc_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		     struct bd_err *err)
{
	struct nbdc_node *nn = bd_node_priv(node);
	const struct bd_node_common *common = bd_node_common(node);
	struct target t = {0};
	const char *export_name = NULL, *tls = NULL;
	uint64_t open_timeout_ns = 0, deadline, attempt_end;
	struct nbd_handle *h = NULL;
	json_t *srv = json_object_get(opts, "server");
	int r;

	memset(nn, 0, sizeof(*nn));
	nn->node = node;
	nn->timeout_ns = DEFAULT_TIMEOUT_S * NS_PER_S;
	if ((r = get_seconds(opts, "timeout", &nn->timeout_ns, err)) < 0 ||
	    (r = get_seconds(opts, "reconnect-delay", &nn->reconnect_delay_ns, err)) < 0 ||
	    (r = get_seconds(opts, "open-timeout", &open_timeout_ns, err)) < 0)
		return r;
	r = bd_opts_str(opts, "tls-creds", &tls, err);
	if (r == 0)
		return bd_err_set(err, -ENOTSUP, "TLS (tls-creds) is not supported by this driver");
	r = bd_opts_str(opts, "filename", &t.uri, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_str(opts, "export", &export_name, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (t.uri && (srv || export_name))
		return bd_err_set(err, -EINVAL,
				  "'filename' (an nbd:// URI) cannot be combined with 'server' or "
				  "'export'");
	if (!t.uri && !srv)
		return bd_err_set(err, -EINVAL, "one of 'server' or 'filename' must be given");
	if (srv && (r = read_server(opts, &t, err)) < 0)
		return r;
	if (!t.uri)
		nn->export_name = strdup(export_name ? export_name : "");
	nn->desc = describe_target(&t);
	if ((!t.uri && !nn->export_name) || !nn->desc) {
		r = bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}

	/* Connect once now (retrying until open-timeout): the size and flags are needed here. */
	deadline = bd_now_ns() + open_timeout_ns;
	for (;;) {
		struct bd_err e1 = {0};
		attempt_end = bd_now_ns() + (nn->timeout_ns ? nn->timeout_ns : 30 * NS_PER_S);
		if (open_timeout_ns && attempt_end > deadline + NS_PER_S)
			attempt_end = deadline + NS_PER_S;
		r = connect_once(nn, &t, attempt_end, &h, &e1);
		if (r == 0)
			break;
		if (r == -ENOTSUP || r == -ENOMEM || bd_now_ns() + NS_PER_S > deadline) {
			r = bd_err_set(err, r, "Failed to connect to '%s': %s", nn->desc, e1.msg);
			goto fail;
		}
		nanosleep(&(struct timespec){.tv_sec = 1}, NULL);
	}

	nn->addrlen = sizeof(nn->addr);
	if (getpeername(nbd_aio_get_fd(h), (struct sockaddr *)&nn->addr, &nn->addrlen) < 0) {
		r = bd_err_set(err, -errno, "cannot learn the address of '%s': %s", nn->desc,
			       strerror(errno));
		goto fail;
	}
	if (t.uri) {
		nn->export_name = nbd_get_export_name(h);
		if (!nn->export_name) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
	}
	int64_t size = nbd_get_size(h);
	if (size < 0) {
		r = bd_err_set(err, -EIO, "'%s' did not give the export's size: %s", nn->desc,
			       nbd_get_error());
		goto fail;
	}
	nn->size = (uint64_t)size;
	if (nbd_is_read_only(h) == 1 && !common->read_only) {
		if (!common->auto_read_only) {
			r = bd_err_set(err, -EACCES,
				       "export '%s' on '%s' is read-only; open the node with "
				       "read-only=on (or auto-read-only=on)",
				       nn->export_name, nn->desc);
			goto fail;
		}
		limits->read_only = true;
	}
	nn->need_write = !common->read_only && !limits->read_only;
	nn->has_bs = nbd_can_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
	fill_limits(nn, h, limits);
	bd_log(BD_LOG_DEBUG, "nbd: connected to %s export '%s': %llu bytes, flags 0x%x", nn->desc,
	       nn->export_name, (unsigned long long)nn->size, (unsigned)nbd_get_handshake_flags(h));
	nbdc_link_adopt(nn, h);
	return 0;

fail:
	if (h)
		nbd_close(h);
	free(nn->desc);
	free(nn->export_name);
	nn->desc = nn->export_name = NULL;
	return r;
}

static void nbdc_close(struct bd_node *node)
{
	struct nbdc_node *nn = bd_node_priv(node);

	nbdc_links_release(nn);
	free(nn->desc);
	free(nn->export_name);
	nn->desc = nn->export_name = NULL;
}

static void nbdc_describe(struct bd_node *node, json_t *out)
{
	struct nbdc_node *nn = bd_node_priv(node);

	json_object_set_new(out, "nbd-server", json_string(nn->desc ? nn->desc : ""));
	json_object_set_new(out, "nbd-export", json_string(nn->export_name ? nn->export_name : ""));
}

static const struct bd_opt_desc nbdc_options[] = {
    {"server", BD_OPT_OBJ, false, NULL,
     "the NBD server: type=inet with host and port (default 10809), or type=unix with path"},
    {"export", BD_OPT_STR, false, NULL, "export name (default: the empty name)"},
    {"filename", BD_OPT_STR, false, NULL,
     "instead of server/export: nbd://host[:port]/export or nbd+unix:///export?socket=PATH"},
    {"reconnect-delay", BD_OPT_INT, false, NULL,
     "seconds requests wait for a reconnection after the connection is lost (default 0)"},
    {"open-timeout", BD_OPT_INT, false, NULL,
     "seconds to keep retrying the first connection (default 0: one attempt)"},
    {"timeout", BD_OPT_INT, false, NULL,
     "seconds without an answer after which a request fails and the connection is dropped "
     "(default 30, 0 = never)"},
    {NULL},
};

const struct bd_driver bd_drv_nbd = {
    .name = "nbd",
    .kind = BD_DRV_PROTOCOL,
    .help = "client of an NBD server (libnbd)",
    .options = nbdc_options,
    .node_size = sizeof(struct nbdc_node),
    .req_size = sizeof(struct nbdc_req),
    .open = nbdc_open,
    .close = nbdc_close,
    .chan_open = nbdc_chan_open,
    .chan_close = nbdc_chan_close,
    .submit = nbdc_submit,
    .describe = nbdc_describe,
};
