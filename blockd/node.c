/*
 * node.c - nodes and the graph: channels, references, drain and stats, the graph's list and
 * deleting from it, resize, internal and external snapshots, synchronous requests for the
 * control path.  Opening a node from its options, reopen and describe are in node-open.c.
 * [control], except bd_node_chan() and the accessors, which any loop may call.
 */
#include "blockd/internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct bd_node *graph_head, *graph_tail;

const struct bd_driver *bd_driver_find(const char *name)
{
	for (const struct bd_driver *const *d = bd_driver_table; *d; d++)
		if (!strcmp((*d)->name, name))
			return *d;
	return NULL;
}

/* ---- accessors ---- */

void *bd_node_priv(struct bd_node *node)
{
	return node->priv;
}

const char *bd_node_name(const struct bd_node *node)
{
	return node->name;
}

const struct bd_driver *bd_node_driver(const struct bd_node *node)
{
	return node->drv;
}

const struct bd_limits *bd_node_limits(const struct bd_node *node)
{
	return &node->limits;
}

const struct bd_node_common *bd_node_common(const struct bd_node *node)
{
	return &node->common;
}

uint64_t bd_node_size(const struct bd_node *node)
{
	return node->limits.size;
}

bool bd_node_read_only(const struct bd_node *node)
{
	return node->common.read_only;
}

bool bd_node_can(const struct bd_node *node, enum bd_op op)
{
	switch (op) {
	case BD_OP_WRITE:
	case BD_OP_WRITE_ZEROES:
	case BD_OP_DISCARD:
		return !node->common.read_only;
	case BD_OP_READ:
	case BD_OP_FLUSH:
	case BD_OP_BLOCK_STATUS:
	case BD_OP_CACHE:
		return true;
	default:
		return false;
	}
}

bool bd_node_fast_zero(const struct bd_node *node)
{
	return !node->common.read_only && (node->limits.ops & BD_OP_BIT(BD_OP_WRITE_ZEROES));
}

struct bd_node *bd_child_node(struct bd_child *child)
{
	return child->node;
}

void *bd_chan_priv(struct bd_chan *ch)
{
	return ch->priv;
}

struct bd_node *bd_chan_node(struct bd_chan *ch)
{
	return ch->node;
}

struct bd_loop *bd_chan_loop(struct bd_chan *ch)
{
	return ch->loop;
}

/* ---- channels ---- */

struct bd_chan *bd_node_chan(struct bd_node *node, struct bd_loop *loop)
{
	unsigned idx = bd_loop_index(loop);
	struct bd_chan *ch = node->chans[idx];

	if (ch)
		return ch;
	ch = calloc(1, sizeof(*ch) + node->drv->chan_size);
	if (!ch)
		abort();
	bd_loop_mark_used(loop);
	ch->node = node;
	ch->loop = loop;
	ch->priv = node->drv->chan_size ? (void *)(ch + 1) : NULL;
	if (node->drv->chan_open && node->drv->chan_open(node, ch) < 0) {
		/* A driver that cannot set up a channel fails every request on it. */
		bd_log(BD_LOG_ERROR, "node '%s': cannot open a channel on loop %s", node->name,
		       bd_loop_name(loop));
	}
	node->chans[idx] = ch;
	return ch;
}

/* [loop] The node's own channel for an overlay that replaced it (never forwarded). */
static struct bd_chan *inner_chan(struct bd_node *node, struct bd_loop *loop)
{
	unsigned idx = bd_loop_index(loop);
	struct bd_chan *ch = node->inner_chans[idx];

	if (ch)
		return ch;
	ch = calloc(1, sizeof(*ch) + node->drv->chan_size);
	if (!ch)
		abort();
	bd_loop_mark_used(loop);
	ch->node = node;
	ch->loop = loop;
	ch->inner = true;
	ch->priv = node->drv->chan_size ? (void *)(ch + 1) : NULL;
	if (node->drv->chan_open && node->drv->chan_open(node, ch) < 0)
		bd_log(BD_LOG_ERROR, "node '%s': cannot open a channel on loop %s", node->name,
		       bd_loop_name(loop));
	node->inner_chans[idx] = ch;
	return ch;
}

struct bd_chan *bd_child_chan(struct bd_child *child, struct bd_chan *ch)
{
	if (child->inner)
		return inner_chan(child->node, ch->loop);
	return bd_node_chan(child->node, ch->loop);
}

struct chan_close_ctx {
	struct bd_node *node;
	struct bd_chan *ch;
};

static void chan_close_on_loop(void *arg)
{
	struct chan_close_ctx *c = arg;
	if (c->node->drv->chan_close)
		c->node->drv->chan_close(c->node, c->ch);
	bd_chan_free_all(c->ch);
}

static void close_channels(struct bd_node *node)
{
	for (unsigned i = 0; i < 2 * BD_MAX_LOOPS; i++) {
		struct bd_chan **slot =
			i < BD_MAX_LOOPS ? &node->chans[i] : &node->inner_chans[i - BD_MAX_LOOPS];
		struct bd_chan *ch = *slot;
		if (!ch)
			continue;
		struct chan_close_ctx c = {node, ch};
		if (ch->loop == bd_loop_current() || !ch->loop)
			chan_close_on_loop(&c);
		else
			bd_loop_call(ch->loop, chan_close_on_loop, &c);
		free(ch);
		*slot = NULL;
	}
}

/* ---- drain and stats ---- */

struct inflight_ctx {
	struct bd_chan *ch;
	uint64_t n;
	struct bd_node_stats stats;
};

static void read_chan_on_loop(void *arg)
{
	struct inflight_ctx *c = arg;
	c->n = c->ch->inflight + (c->ch->retry_head ? 1 : 0);
	c->stats = c->ch->stats;
}

/* Read one channel's counters on its own loop. */
static void read_chan(struct bd_chan *ch, struct inflight_ctx *c)
{
	c->ch = ch;
	if (ch->loop == bd_loop_current())
		read_chan_on_loop(c);
	else
		bd_loop_call(ch->loop, read_chan_on_loop, c);
}

static uint64_t node_inflight(struct bd_node *node)
{
	uint64_t n = 0;
	for (unsigned i = 0; i < 2 * BD_MAX_LOOPS; i++) {
		struct bd_chan *ch =
			i < BD_MAX_LOOPS ? node->chans[i] : node->inner_chans[i - BD_MAX_LOOPS];
		struct inflight_ctx c;
		if (!ch)
			continue;
		read_chan(ch, &c);
		n += c.n;
	}
	return n;
}

static void drain_hooks(struct bd_node *node, bool begin)
{
	if (begin && node->drv->drain_begin)
		node->drv->drain_begin(node);
	for (struct bd_child *c = node->children; c; c = c->next)
		drain_hooks(c->node, begin);
	if (!begin && node->drv->drain_end)
		node->drv->drain_end(node);
}

static bool drained(struct bd_node *node)
{
	if (node_inflight(node))
		return false;
	for (struct bd_child *c = node->children; c; c = c->next)
		if (!drained(c->node))
			return false;
	return true;
}

void bd_graph_release_held(void)
{
	for (struct bd_node *n = graph_head; n; n = n->next)
		if (!n->parents)
			drain_hooks(n, true);
}

void bd_node_drain(struct bd_node *node)
{
	drain_hooks(node, true);
	/* Poll: the loops finish what is in flight on their own; the control thread only
	 * looks.  Requests complete in microseconds to seconds, so a short sleep is fine. */
	while (!drained(node))
		usleep(200);
	drain_hooks(node, false);
}

void bd_node_stats(struct bd_node *node, struct bd_node_stats *out)
{
	memset(out, 0, sizeof(*out));
	for (unsigned i = 0; i < BD_MAX_LOOPS; i++) {
		struct inflight_ctx c;
		if (!node->chans[i])
			continue;
		read_chan(node->chans[i], &c);
		for (int op = 0; op < BD_OP__COUNT; op++) {
			out->ops[op] += c.stats.ops[op];
			out->bytes[op] += c.stats.bytes[op];
			out->errors[op] += c.stats.errors[op];
			out->total_ns[op] += c.stats.total_ns[op];
		}
	}
}

/* ---- references and closing ---- */

bool bd_node_in_use(const struct bd_node *node)
{
	return node->parents || atomic_load(&node->refcnt) > 1;
}

void bd_node_ref(struct bd_node *node)
{
	atomic_fetch_add(&node->refcnt, 1);
}

static void graph_unlink(struct bd_node *node)
{
	struct bd_node *prev = NULL;
	for (struct bd_node *n = graph_head; n; prev = n, n = n->next) {
		if (n != node)
			continue;
		if (prev)
			prev->next = n->next;
		else
			graph_head = n->next;
		if (graph_tail == n)
			graph_tail = prev;
		n->next = NULL;
		return;
	}
}

void bd_node_drop_children(struct bd_node *node)
{
	while (node->children) {
		struct bd_child *c = node->children;
		node->children = c->next;
		c->node->parents--;
		bd_node_unref(c->node);
		free(c);
	}
}

static void node_close(struct bd_node *node)
{
	node->closing = true;
	bd_node_drain(node);
	if (node->fwd_from) {
		/* the node this overlay replaced is itself again (it has no other users) */
		atomic_store(&node->fwd_from->fwd, 0);
		node->fwd_from->fwd_to = NULL;
	}
	close_channels(node);
	if (node->drv->close)
		node->drv->close(node);
	bd_node_drop_children(node);
	graph_unlink(node);
	json_decref(node->opts);
	pthread_mutex_destroy(&node->rmw_lock);
	free(node);
}

void bd_node_unref(struct bd_node *node)
{
	if (atomic_fetch_sub(&node->refcnt, 1) == 1)
		node_close(node);
}

/* ---- the graph ---- */

/* The graph's list holds every node (auto-named ones too, for queries). */
void bd_graph_link(struct bd_node *node)
{
	if (graph_tail)
		graph_tail->next = node;
	else
		graph_head = node;
	graph_tail = node;
}

struct bd_node *bd_graph_find(const char *node_name)
{
	for (struct bd_node *n = graph_head; n; n = n->next)
		if (!strcmp(n->name, node_name))
			return n;
	return NULL;
}

struct bd_node *bd_graph_next(struct bd_node *prev)
{
	return prev ? prev->next : graph_head;
}

int bd_graph_del(const char *node_name, struct bd_err *err)
{
	struct bd_node *node = bd_graph_find(node_name);

	if (!node || node->auto_named)
		return bd_err_set(err, -ENOENT, "Failed to find node with node-name='%s'",
				  node_name);
	if (node->parents)
		return bd_err_set(err, -EBUSY, "Node '%s' is busy: node is used as a child",
				  node_name);
	/* An overlay that replaced a node: while the node has users besides the overlay (and
	 * the graph), they reach the overlay through it. */
	if (node->fwd_from &&
	    (node->fwd_from->parents > 1 || atomic_load(&node->fwd_from->refcnt) > 2))
		return bd_err_set(err, -EBUSY,
				  "Node '%s' is busy: it replaced node '%s' under its users",
				  node_name, node->fwd_from->name);
	if (atomic_load(&node->refcnt) > 1)
		return bd_err_set(err, -EBUSY,
				  "Node '%s' is busy: block device is in use by an export",
				  node_name);
	bd_node_unref(node);
	return 0;
}

void bd_graph_close_all(void)
{
	/* Close roots first (nodes no parent holds); their children follow by reference. */
	bool progress = true;
	while (graph_head && progress) {
		progress = false;
		for (struct bd_node *n = graph_head; n; n = n->next) {
			if (n->parents || n->auto_named)
				continue;
			bd_node_unref(n);
			progress = true;
			break;
		}
	}
}

/* ---- resize and watches ---- */

void bd_node_watch_add(struct bd_node *node, struct bd_node_watch *w)
{
	w->next = node->watches;
	node->watches = w;
}

void bd_node_watch_del(struct bd_node *node, struct bd_node_watch *w)
{
	for (struct bd_node_watch **pp = &node->watches; *pp; pp = &(*pp)->next) {
		if (*pp == w) {
			*pp = w->next;
			return;
		}
	}
}

int bd_node_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err)
{
	int r;

	if (!node->drv->resize)
		return bd_err_set(err, -ENOTSUP, "Node '%s' (%s) does not support resizing",
				  node->name, node->drv->name);
	if (node->common.read_only)
		return bd_err_set(err, -EPERM, "Node '%s' is read-only", node->name);
	bd_node_drain(node);
	r = node->drv->resize(node, new_size, err);
	if (r < 0)
		return r;
	node->limits.size = new_size;
	for (struct bd_node_watch *w = node->watches; w; w = w->next)
		w->resized(w, new_size);
	return 0;
}

/* ---- internal snapshots ---- */

static int snapshot_check(struct bd_node *node, bool has_op, struct bd_err *err)
{
	if (!has_op)
		return bd_err_set(err, -ENOTSUP,
				  "Block format '%s' used by device '%s' does not support internal "
				  "snapshots",
				  node->drv->name, node->name);
	if (node->common.read_only)
		return bd_err_set(err, -EPERM, "Device '%s' is read only", node->name);
	return 0;
}

int bd_node_snapshot_create(struct bd_node *node, const char *id, const char *name,
			    struct bd_err *err)
{
	int r = snapshot_check(node, node->drv->snapshot_create != NULL, err);
	if (r < 0)
		return r;
	return node->drv->snapshot_create(node, id, name, err);
}

int bd_node_snapshot_delete(struct bd_node *node, const char *id, const char *name,
			    json_t **info, struct bd_err *err)
{
	int r = snapshot_check(node, node->drv->snapshot_delete != NULL, err);
	if (r < 0)
		return r;
	*info = NULL;
	return node->drv->snapshot_delete(node, id, name, info, err);
}

/* ---- external snapshots: an overlay replaces a node under its users ----
 *
 * The overlay gets the node as its backing child (an "inner" link), then the node's channels
 * start forwarding: every request that its users (exports, parents) submit to it goes to the
 * overlay instead.  The switch: hold new requests on the node's channels, drain what is
 * already inside the node, forward, release the held requests.  A write in flight in the node
 * therefore always completes before the overlay can copy that cluster up. */

static void release_on_loop(void *arg)
{
	bd_chan_release_held(arg);
}

int bd_node_snapshot_external(struct bd_node *node, struct bd_node *overlay, struct bd_err *err)
{
	int r;

	if (overlay == node)
		return bd_err_set(err, -EINVAL, "The overlay and the node are the same");
	if (!overlay->drv->attach_backing)
		return bd_err_set(err, -ENOTSUP, "Driver '%s' of node '%s' has no backing file",
				  overlay->drv->name, overlay->name);
	if (bd_node_in_use(overlay) || overlay->fwd_from || atomic_load(&overlay->fwd))
		return bd_err_set(err, -EBUSY, "The overlay is already in use");
	if (overlay->common.read_only)
		return bd_err_set(err, -EPERM, "The overlay '%s' is read-only", overlay->name);
	if (atomic_load(&node->fwd))
		return bd_err_set(err, -EBUSY,
				  "Node '%s' already has an overlay ('%s'): snapshot that instead",
				  node->name, node->fwd_to->name);
	if (node->auto_named)
		return bd_err_set(err, -EINVAL, "Node '%s' has no node-name of its own", node->name);

	struct bd_child *child = calloc(1, sizeof(*child));
	if (!child)
		abort();
	child->node = node;
	child->parent = overlay;
	child->inner = true;
	snprintf(child->name, sizeof(child->name), "backing");
	r = overlay->drv->attach_backing(overlay, child, err);
	if (r < 0) {
		free(child);
		return r;
	}
	child->next = overlay->children;
	overlay->children = child;
	node->parents++;
	bd_node_ref(node);
	overlay->fwd_from = node;
	node->fwd_to = overlay;

	atomic_store_explicit(&node->fwd, 1, memory_order_release); /* hold */
	bd_node_drain(node);
	atomic_store_explicit(&node->fwd, 2, memory_order_release); /* forward */
	for (unsigned i = 0; i < BD_MAX_LOOPS; i++) {
		struct bd_chan *ch = node->chans[i];
		if (!ch)
			continue;
		if (ch->loop == bd_loop_current())
			release_on_loop(ch);
		else
			bd_loop_call(ch->loop, release_on_loop, ch);
	}
	bd_log(BD_LOG_INFO, "node '%s' is now the active layer over '%s'", overlay->name,
	       node->name);
	return 0;
}

/* ---- synchronous requests for the control path ---- */

struct sync_ctx {
	struct bd_node *node;
	enum bd_op op;
	uint64_t offset, len;
	void *buf;
	uint32_t flags;
	struct iovec iov;
	struct bd_extent ext;
	int ret;
	bool done;
	pthread_mutex_t lock;
	pthread_cond_t cond;
};

static void sync_done(struct bd_req *req, int ret)
{
	struct sync_ctx *c = req->opaque;
	bd_req_put(req);
	pthread_mutex_lock(&c->lock);
	c->ret = ret;
	c->done = true;
	pthread_cond_signal(&c->cond);
	pthread_mutex_unlock(&c->lock);
}

static void sync_start(void *arg)
{
	struct sync_ctx *c = arg;
	struct bd_chan *ch = bd_node_chan(c->node, bd_loop_current());
	struct bd_req *req = bd_req_get(ch);
	int r;

	req->op = c->op;
	req->offset = c->offset;
	req->len = c->len;
	req->flags = c->flags;
	if (c->op == BD_OP_READ || c->op == BD_OP_WRITE) {
		c->iov.iov_base = c->buf;
		c->iov.iov_len = c->len;
		req->iov = &c->iov;
		req->iovcnt = 1;
	}
	if (c->op == BD_OP_BLOCK_STATUS) {
		req->extents = &c->ext;
		req->max_extents = 1;
	}
	req->cb = sync_done;
	req->opaque = c;
	r = bd_submit(ch, req);
	if (r < 0) {
		bd_req_put(req);
		pthread_mutex_lock(&c->lock);
		c->ret = r;
		c->done = true;
		pthread_cond_signal(&c->cond);
		pthread_mutex_unlock(&c->lock);
	}
}

int bd_node_io_sync(struct bd_node *node, enum bd_op op, uint64_t offset, uint64_t len,
		    void *buf, uint32_t flags)
{
	struct sync_ctx c = {.node = node, .op = op, .offset = offset, .len = len, .buf = buf,
			     .flags = flags};
	struct bd_loop *loop = bd_io_loop_count() ? bd_io_loop_get(0) : NULL;
	int r;

	if (!loop || loop == bd_loop_current())
		return -EDEADLK;
	pthread_mutex_init(&c.lock, NULL);
	pthread_cond_init(&c.cond, NULL);
	r = bd_loop_send(loop, sync_start, &c);
	if (r == 0) {
		pthread_mutex_lock(&c.lock);
		while (!c.done)
			pthread_cond_wait(&c.cond, &c.lock);
		pthread_mutex_unlock(&c.lock);
		r = c.ret;
	}
	pthread_cond_destroy(&c.cond);
	pthread_mutex_destroy(&c.lock);
	return r;
}
