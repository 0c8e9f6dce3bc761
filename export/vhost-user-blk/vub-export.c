/*
 * vub-export.c - the vhost-user-blk export type (--export type=vhost-user-blk,
 * block-export-add): add (options, the listening socket, the node, the offered features), del,
 * query, shutdown, and the bd_export_type.  The connection and its messages are in vub-msg.c,
 * the virtqueues in vub-queue.c.
 *
 * Threads: all of it runs on the main loop [control].
 */
#include "export/vhost-user-blk/vub-int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct vub_export *exports;

/* ---------------------------------------------------------------------------------------------
 * The export type [control]
 */
static struct vub_export *export_find(const char *id)
{
	for (struct vub_export *x = exports; x; x = x->next)
		if (!strcmp(x->id, id))
			return x;
	return NULL;
}

static void export_free(struct vub_export *x)
{
	if (x->conn)
		vub_conn_free(x->conn);
	vub_poll_cancel(bd_loop_main(), x->listen_poll);
	x->listen_poll = NULL;
	if (x->listen_fd >= 0) {
		close(x->listen_fd);
		x->listen_fd = -1;
		if (x->unlink_path)
			unlink(x->path);
	}
	if (x->node) {
		bd_node_watch_del(x->node, &x->watch);
		bd_node_unref(x->node);
	}
	free(x);
}

static int parse_addr(struct vub_export *x, json_t *opts, struct bd_err *err)
{
	static const char *const types[] = {"unix", "fd", NULL};
	json_t *addr;
	int type, r;
	const char *s;

	r = bd_opts_obj(opts, "addr", &addr, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr' is missing");
	if (r < 0)
		return r;
	r = bd_opts_enum(addr, "type", types, &type, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.type' is missing");
	if (r < 0)
		return r;
	if (type == 0) {
		struct sockaddr_un sa = {.sun_family = AF_UNIX};
		r = bd_opts_str(addr, "path", &s, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'addr.path' is missing");
		if (r < 0)
			return r;
		if (strlen(s) >= sizeof(sa.sun_path))
			return bd_err_set(err, -ENAMETOOLONG, "socket path '%s' is too long", s);
		strcpy(x->path, s);
		strcpy(sa.sun_path, s);
		x->listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (x->listen_fd < 0)
			return bd_err_set(err, -errno, "socket: %s", strerror(errno));
		unlink(s);
		if (bind(x->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 ||
		    listen(x->listen_fd, 1) < 0)
			return bd_err_set(err, -errno, "Failed to bind socket to %s: %s", s,
					  strerror(errno));
		x->unlink_path = true;
	} else {
		char *end;
		long fd;
		r = bd_opts_str(addr, "str", &s, err);
		if (r == -ENOENT)
			return bd_err_set(err, -EINVAL, "Parameter 'addr.str' is missing");
		if (r < 0)
			return r;
		fd = strtol(s, &end, 10);
		if (*end || fd < 0 || fd > INT32_MAX || fcntl((int)fd, F_GETFD) < 0)
			return bd_err_set(err, -EINVAL, "'%s' is not a valid file descriptor", s);
		x->listen_fd = (int)fd;
		fcntl(x->listen_fd, F_SETFL, fcntl(x->listen_fd, F_GETFL) | O_NONBLOCK);
		fcntl(x->listen_fd, F_SETFD, FD_CLOEXEC);
	}
	return 0;
}

static int parse_loops(struct vub_export *x, json_t *opts, struct bd_err *err)
{
	const char *one = NULL;
	json_t *list = json_object_get(opts, "iothreads");
	struct bd_loop *loops[VUB_MAX_QUEUES];
	unsigned n = 0;
	int r;

	r = bd_opts_str(opts, "iothread", &one, err);
	if (r < 0 && r != -ENOENT)
		return r;
	if (one) {
		loops[n] = bd_iothread_find(one);
		if (!loops[n])
			return bd_err_set(err, -ENOENT, "IOThread '%s' not found", one);
		n++;
	}
	if (list) {
		size_t i;
		json_t *v;
		bd_opts_mark_used(opts, "iothreads");
		if (one)
			return bd_err_set(err, -EINVAL, "'iothread' and 'iothreads' are exclusive");
		if (!json_is_array(list) || json_array_size(list) == 0)
			return bd_err_set(err, -EINVAL, "Parameter 'iothreads' expects a list");
		json_array_foreach(list, i, v)
		{
			if (!json_is_string(v))
				return bd_err_set(err, -EINVAL,
						  "Parameter 'iothreads.%zu' expects a "
						  "string",
						  i);
			if (n == VUB_MAX_QUEUES)
				return bd_err_set(err, -EINVAL, "too many iothreads");
			loops[n] = bd_iothread_find(json_string_value(v));
			if (!loops[n])
				return bd_err_set(err, -ENOENT, "IOThread '%s' not found",
						  json_string_value(v));
			n++;
		}
	}
	for (unsigned i = 0; i < x->nq; i++) {
		if (n)
			x->loops[i] = loops[i % n];
		else
			x->loops[i] = bd_io_loop_get(i % bd_io_loop_count());
	}
	/* More iothreads than queues: those without a queue help with large reads. */
	for (unsigned i = x->nq; i < n; i++) {
		bool used = false;
		for (unsigned k = 0; k < x->nq; k++)
			used |= x->loops[k] == loops[i];
		for (unsigned k = 0; k < x->nspare; k++)
			used |= x->spare[k] == loops[i];
		if (!used)
			x->spare[x->nspare++] = loops[i];
	}
	return 0;
}

static int vub_add(json_t *opts, struct bd_err *err)
{
	struct vub_export *x;
	const char *id, *node_name, *serial = NULL;
	uint64_t nq = 1, lbs = VIRTIO_BLK_SECTOR_SIZE;
	bool b;
	int r;

	if (bd_opts_str(opts, "id", &id, err) == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'id' is missing");
	if (err->code)
		return err->code;
	if (bd_opts_str(opts, "node-name", &node_name, err) == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'node-name' is missing");
	if (err->code)
		return err->code;
	if (strlen(id) >= sizeof(x->id))
		return bd_err_set(err, -EINVAL, "export id '%s' is too long", id);
	if (export_find(id))
		return bd_err_set(err, -EEXIST, "Block export id '%s' is already in use", id);
	x = calloc(1, sizeof(*x));
	if (!x)
		return bd_err_set(err, -ENOMEM, "out of memory");
	x->listen_fd = -1;
	strcpy(x->id, id);
	x->watch.resized = vub_export_resized;

	if ((r = bd_opts_bool(opts, "writable", &b, err)) == 0)
		x->writable = b;
	else if (r != -ENOENT)
		goto fail;
	if ((r = bd_opts_bool(opts, "writethrough", &b, err)) == 0)
		x->writethrough = b;
	else if (r != -ENOENT)
		goto fail;
	if ((r = bd_opts_bool(opts, "fixed-iothread", &b, err)) < 0 && r != -ENOENT)
		goto fail;
	if ((r = bd_opts_u64(opts, "num-queues", &nq, err)) < 0 && r != -ENOENT)
		goto fail;
	if (nq == 0 || nq > VUB_MAX_QUEUES) {
		r = bd_err_set(err, -EINVAL, "num-queues must be between 1 and %u", VUB_MAX_QUEUES);
		goto fail;
	}
	x->nq = (unsigned)nq;
	if ((r = bd_opts_size(opts, "logical-block-size", &lbs, err)) < 0 && r != -ENOENT)
		goto fail;
	if (lbs < 512 || lbs > 32768 || (lbs & (lbs - 1))) {
		r = bd_err_set(err, -EINVAL,
			       "logical-block-size must be a power of 2 between 512 "
			       "and 32768");
		goto fail;
	}
	x->lbs = (uint32_t)lbs;
	if ((r = bd_opts_str(opts, "serial", &serial, err)) < 0 && r != -ENOENT)
		goto fail;
	snprintf(x->serial, sizeof(x->serial), "%s", serial ? serial : id);
	if ((r = parse_loops(x, opts, err)) < 0)
		goto fail;

	x->node = bd_graph_find(node_name);
	if (!x->node) {
		r = bd_err_set(err, -ENOENT, "Cannot find device='%s' nor node-name='%s'",
			       node_name, node_name);
		goto fail;
	}
	if (x->writable && bd_node_read_only(x->node)) {
		x->node = NULL;
		r = bd_err_set(err, -EPERM, "Cannot export read-only node '%s' as writable",
			       node_name);
		goto fail;
	}
	if ((r = parse_addr(x, opts, err)) < 0) {
		x->node = NULL;
		goto fail;
	}
	if ((r = bd_opts_check_unused(opts, "", err)) < 0) {
		x->node = NULL;
		goto fail;
	}
	bd_node_ref(x->node);
	bd_node_watch_add(x->node, &x->watch);
	atomic_init(&x->size, bd_node_size(x->node));

	x->offered = (1ull << VIRTIO_F_VERSION_1) | (1ull << VIRTIO_RING_F_INDIRECT_DESC) |
		     (1ull << VIRTIO_RING_F_EVENT_IDX) | (1ull << VIRTIO_F_RING_PACKED) |
		     (1ull << VHOST_USER_F_PROTOCOL_FEATURES) | (1ull << VIRTIO_F_NOTIFY_ON_EMPTY) |
		     (1ull << VIRTIO_BLK_F_SIZE_MAX) | (1ull << VIRTIO_BLK_F_SEG_MAX) |
		     (1ull << VIRTIO_BLK_F_BLK_SIZE) | (1ull << VIRTIO_BLK_F_FLUSH) |
		     (1ull << VIRTIO_BLK_F_TOPOLOGY) | (1ull << VIRTIO_BLK_F_CONFIG_WCE) |
		     (1ull << VIRTIO_BLK_F_MQ);
	if (x->writable) {
		x->offered |= (1ull << VIRTIO_BLK_F_DISCARD) | (1ull << VIRTIO_BLK_F_WRITE_ZEROES);
		if (bd_node_fast_zero(x->node))
			x->offered |= 1ull << VIRTIO_BLK_F_SECURE_ERASE;
	} else {
		x->offered |= 1ull << VIRTIO_BLK_F_RO;
	}

	x->next = exports;
	exports = x;
	vub_export_listen_arm(x);
	return 0;

fail:
	export_free(x);
	return r < 0 ? r : -EINVAL;
}

static int vub_del(const char *id, bool hard, struct bd_err *err)
{
	struct vub_export *x = export_find(id), **pp;

	if (!x)
		return bd_err_set(err, -ENOENT, "Export '%s' is not found", id);
	if (x->conn && !hard)
		return bd_err_set(err, -EBUSY,
				  "export '%s' still in use (a front end is "
				  "connected)",
				  id);
	for (pp = &exports; *pp != x; pp = &(*pp)->next)
		;
	*pp = x->next;
	export_free(x);
	bd_event_emit("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", id));
	return 0;
}

static void vub_shutdown(void)
{
	while (exports) {
		struct vub_export *x = exports;
		exports = x->next;
		export_free(x);
	}
}

static void vub_query(json_t *list)
{
	for (struct vub_export *x = exports; x; x = x->next)
		json_array_append_new(list, json_pack("{s:s,s:s,s:s,s:b}", "type", "vhost-user-blk",
						      "id", x->id, "node-name",
						      bd_node_name(x->node), "shutting-down", 0));
}

static const struct bd_opt_desc vub_export_options[] = {
    {"addr", BD_OPT_OBJ, true, NULL, "the vhost-user socket (SocketAddress, type unix)"},
    {"logical-block-size", BD_OPT_SIZE, false, NULL, "logical block size (default 512)"},
    {"num-queues", BD_OPT_INT, false, NULL, "number of virtqueues (default 1)"},
    {"serial", BD_OPT_STR, false, NULL, "the serial the guest reads with GET_ID"},
    {"iothreads", BD_OPT_STR_LIST, false, NULL,
     "iothreads the queues are spread over (a blockd extension)"},
    {NULL},
};

const struct bd_export_type bd_export_vhost_user_blk = {
    .name = "vhost-user-blk",
    .options = vub_export_options,
    .add = vub_add,
    .del = vub_del,
    .shutdown = vub_shutdown,
    .query = vub_query,
};
