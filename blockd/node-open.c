/*
 * node-open.c - a node's options: opening a node (and its inline children) from an option
 * tree, reopen with changed options, and the node's description for queries.  [control]
 *
 * The core reads the options every node has (node-name, driver, read-only, cache.*, discard,
 * detect-zeroes, ...), the driver's open() reads its own, and any key nobody read is an error.
 * Inline children inherit cache.*, read-only, discard and force-share from their parent unless
 * they set them, as in QEMU.  An opened node joins the graph's list (node.c).
 */
#include "blockd/internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned auto_name_counter;

static const char *const discard_names[] = {"ignore", "unmap", "off", "on", NULL};
static const char *const dz_names[] = {"off", "on", "unmap", NULL};

/* ---- opening ---- */

static int read_common(json_t *opts, struct bd_node_common *c, struct bd_err *err)
{
	json_t *cache;
	int r, idx;

	if ((r = bd_opts_bool(opts, "read-only", &c->read_only, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "auto-read-only", &c->auto_read_only, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "force-share", &c->force_share, err)) < 0 && r != -ENOENT)
		return r;
	r = bd_opts_enum(opts, "discard", discard_names, &idx, err);
	if (r == 0)
		c->discard = (idx == 1 || idx == 3) ? BD_DISCARD_UNMAP : BD_DISCARD_IGNORE;
	else if (r != -ENOENT)
		return r;
	r = bd_opts_enum(opts, "detect-zeroes", dz_names, &idx, err);
	if (r == 0)
		c->detect_zeroes = (enum bd_detect_zeroes)idx;
	else if (r != -ENOENT)
		return r;
	r = bd_opts_obj(opts, "cache", &cache, err);
	if (r == 0) {
		if ((r = bd_opts_bool(cache, "direct", &c->cache_direct, err)) < 0 && r != -ENOENT)
			return bd_err_prefix(err, "cache");
		if ((r = bd_opts_bool(cache, "no-flush", &c->cache_no_flush, err)) < 0 &&
		    r != -ENOENT)
			return bd_err_prefix(err, "cache");
	} else if (r != -ENOENT) {
		return r;
	}
	if (c->detect_zeroes == BD_DZ_UNMAP && c->discard != BD_DISCARD_UNMAP)
		return bd_err_set(err, -EINVAL,
				  "setting detect-zeroes to unmap is not allowed without setting "
				  "discard operation to unmap");
	if (c->force_share && !c->read_only)
		return bd_err_set(err, -EINVAL, "force-share=on can only be used with read-only images");
	return 0;
}

/* Copy the inheritable options of the parent into an inline child's options unless it sets
 * them itself (QEMU's bdrv_inherited_options). */
static void inherit(json_t *child, const struct bd_node_common *pc)
{
	json_t *cache = json_object_get(child, "cache");
	if (!json_object_get(child, "read-only"))
		json_object_set_new(child, "read-only", json_boolean(pc->read_only));
	if (!json_object_get(child, "discard"))
		json_object_set_new(child, "discard", json_string(pc->discard == BD_DISCARD_UNMAP
									 ? "unmap"
									 : "ignore"));
	if (!json_object_get(child, "force-share") && pc->force_share)
		json_object_set_new(child, "force-share", json_true());
	if (!cache) {
		cache = json_object();
		json_object_set_new(child, "cache", cache);
	}
	if (json_is_object(cache)) {
		if (!json_object_get(cache, "direct"))
			json_object_set_new(cache, "direct", json_boolean(pc->cache_direct));
		if (!json_object_get(cache, "no-flush"))
			json_object_set_new(cache, "no-flush", json_boolean(pc->cache_no_flush));
	}
}

static int check_limits(struct bd_node *node, struct bd_err *err)
{
	struct bd_limits *l = &node->limits;
	if (!l->req_align)
		l->req_align = 1;
	if (!l->buf_align)
		l->buf_align = 1;
	if (l->req_align & (l->req_align - 1) || l->buf_align & (l->buf_align - 1))
		return bd_err_set(err, -EINVAL, "driver '%s' declared a bad alignment",
				  node->drv->name);
	if (l->max_transfer && l->max_transfer < l->req_align)
		l->max_transfer = l->req_align;
	if (l->max_transfer && l->req_align > 1)
		l->max_transfer &= ~(uint64_t)(l->req_align - 1);
	if (l->read_only)
		node->common.read_only = true;
	node->drv_ops = l->ops;
	if (node->common.read_only)
		l->ops &= ~(BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_WRITE_ZEROES) |
			    BD_OP_BIT(BD_OP_DISCARD));
	return 0;
}

static struct bd_node *node_open(json_t *given, bool top, const struct bd_driver *forced,
				 struct bd_err *err)
{
	json_t *opts = json_deep_copy(given);
	const char *drv_name = NULL, *name = NULL;
	const struct bd_driver *drv;
	struct bd_node_common common = {0};
	struct bd_node *node = NULL;
	int r;

	if (!opts || !json_is_object(opts)) {
		bd_err_set(err, -EINVAL, "block device options must be an object");
		goto fail;
	}
	r = bd_opts_str(opts, "driver", &drv_name, err);
	if (r == -ENOENT && !forced) {
		bd_err_set(err, -EINVAL, "Parameter 'driver' is missing");
		goto fail;
	}
	if (r < 0 && r != -ENOENT)
		goto fail;
	drv = forced ? forced : bd_driver_find(drv_name);
	if (!drv) {
		bd_err_set(err, -EINVAL, "Unknown driver '%s'", drv_name);
		goto fail;
	}
	r = bd_opts_str(opts, "node-name", &name, err);
	if (r < 0 && r != -ENOENT)
		goto fail;
	if (r == 0) {
		if (!bd_id_valid(name, 31)) {
			bd_err_set(err, -EINVAL, "Invalid node-name: '%s'", name);
			goto fail;
		}
		if (bd_graph_find(name)) {
			bd_err_set(err, -EEXIST, "Duplicate nodes with node-name='%s'", name);
			goto fail;
		}
	} else if (top) {
		bd_err_set(err, -EINVAL, "A top-level node needs a node-name");
		goto fail;
	}
	if (read_common(opts, &common, err) < 0)
		goto fail;

	node = calloc(1, sizeof(*node) + drv->node_size);
	if (!node) {
		bd_err_set(err, -ENOMEM, "out of memory");
		goto fail;
	}
	node->drv = drv;
	node->priv = drv->node_size ? (void *)(node + 1) : NULL;
	node->common = common;
	atomic_init(&node->refcnt, 1);
	pthread_mutex_init(&node->rmw_lock, NULL);
	if (name) {
		snprintf(node->name, sizeof(node->name), "%s", name);
	} else {
		node->auto_named = true;
		snprintf(node->name, sizeof(node->name), "#block%03u", auto_name_counter++);
	}

	r = drv->open(node, opts, &node->limits, err);
	if (r < 0) {
		bd_err_prefix(err, "%s '%s'", drv->name, node->auto_named ? drv->name : node->name);
		goto fail_node;
	}
	if (bd_opts_check_unused(opts, NULL, err) < 0 || check_limits(node, err) < 0) {
		if (drv->close)
			drv->close(node);
		goto fail_node;
	}
	bd_opts_clear_marks(opts);
	node->opts = opts;
	bd_graph_link(node);
	bd_log(BD_LOG_DEBUG, "opened node '%s' (%s), %" PRIu64 " bytes", node->name, drv->name,
	       node->limits.size);
	return node;

fail_node:
	bd_node_drop_children(node);
	pthread_mutex_destroy(&node->rmw_lock);
	free(node);
fail:
	json_decref(opts);
	return NULL;
}

struct bd_node *bd_node_open(json_t *opts, struct bd_err *err)
{
	return node_open(opts, true, NULL, err);
}

struct bd_node *bd_node_open_driver(const struct bd_driver *drv, json_t *opts,
				    struct bd_err *err)
{
	return node_open(opts, true, drv, err);
}

struct bd_child *bd_node_open_child(struct bd_node *parent, json_t *opts, const char *key,
				    bool required, struct bd_err *err)
{
	json_t *v = json_object_get(opts, key);
	struct bd_node *cn;
	struct bd_child *child;

	if (!v) {
		if (required)
			bd_err_set(err, -ENOENT, "Parameter '%s' is missing", key);
		return NULL;
	}
	bd_opts_mark_used(opts, key);
	if (json_is_string(v)) {
		cn = bd_graph_find(json_string_value(v));
		if (!cn) {
			bd_err_set(err, -ENOENT, "Cannot find device='' nor node-name='%s'",
				   json_string_value(v));
			return NULL;
		}
		if (cn->common.read_only && !parent->common.read_only) {
			bd_err_set(err, -EPERM,
				   "Node '%s' is read-only and cannot be the writable child '%s'",
				   cn->name, key);
			return NULL;
		}
		bd_node_ref(cn);
	} else if (json_is_object(v)) {
		json_t *copy = json_deep_copy(v);
		inherit(copy, &parent->common);
		cn = node_open(copy, false, NULL, err);
		json_decref(copy);
		if (!cn) {
			bd_err_prefix(err, "%s", key);
			return NULL;
		}
	} else {
		bd_err_set(err, -EINVAL, "Invalid parameter type for '%s', expected: node or object",
			   key);
		return NULL;
	}
	child = calloc(1, sizeof(*child));
	if (!child)
		abort();
	child->node = cn;
	child->parent = parent;
	snprintf(child->name, sizeof(child->name), "%s", key);
	child->next = parent->children;
	parent->children = child;
	cn->parents++;
	return child;
}

/* ---- reopen ---- */

json_t *bd_node_options(struct bd_node *node)
{
	return node->opts;
}

/* A driver without reopen() cannot change its own options: each key the core and the children
 * did not read must have the value the node was opened with.  Unknown keys are left unread, so
 * that bd_opts_check_unused() names them. */
static int keep_driver_options(struct bd_node *node, json_t *opts, struct bd_err *err)
{
	const char *key;
	json_t *val;

	json_object_foreach(opts, key, val)
	{
		json_t *old;
		if (bd_opts_is_mark(key) || bd_opts_is_used(opts, key))
			continue;
		old = json_object_get(node->opts, key);
		if (old && !json_equal(old, val))
			return bd_err_set(err, -ENOTSUP, "Cannot change the option '%s'", key);
	}
	/* mark in a second pass: adding marks while walking would change the object under us */
	json_t *copy = json_object();
	json_object_foreach(opts, key, val)
	{
		if (!bd_opts_is_mark(key) && !bd_opts_is_used(opts, key) &&
		    json_object_get(node->opts, key))
			json_object_set(copy, key, val);
	}
	json_object_foreach(copy, key, val)
	{
		(void)val;
		bd_opts_mark_used(opts, key);
	}
	json_decref(copy);
	return 0;
}

int bd_node_reopen(struct bd_node *node, json_t *given, struct bd_err *err)
{
	json_t *opts = json_deep_copy(given);
	struct bd_node_common common = {0};
	const char *s;
	int r;

	if (!opts || !json_is_object(opts)) {
		json_decref(opts);
		return bd_err_set(err, -EINVAL, "options must be an object");
	}
	if (bd_opts_str(opts, "driver", &s, err) == 0 && strcmp(s, node->drv->name)) {
		r = bd_err_set(err, -EINVAL, "Cannot change the option 'driver'");
		goto out;
	}
	if (bd_opts_str(opts, "node-name", &s, err) == 0 && strcmp(s, node->name)) {
		r = bd_err_set(err, -EINVAL, "Cannot change the option 'node-name'");
		goto out;
	}
	if ((r = read_common(opts, &common, err)) < 0)
		goto out;
	/* children cannot be swapped here: each must name the same node or be unchanged */
	for (struct bd_child *c = node->children; c; c = c->next) {
		json_t *v = json_object_get(opts, c->name);
		bd_opts_mark_used(opts, c->name);
		if (v && json_is_string(v) && strcmp(json_string_value(v), c->node->name)) {
			r = bd_err_set(err, -ENOTSUP, "Cannot change the child '%s'", c->name);
			goto out;
		}
	}
	if (common.read_only != node->common.read_only && !node->drv->reopen) {
		r = bd_err_set(err, -ENOTSUP, "driver '%s' cannot change read-only while open",
			       node->drv->name);
		goto out;
	}
	if (!common.read_only) {
		for (struct bd_child *c = node->children; c; c = c->next) {
			if (c->node->common.read_only) {
				r = bd_err_set(err, -EPERM, "child '%s' (node '%s') is read-only",
					       c->name, c->node->name);
				goto out;
			}
		}
	}
	/* Everything is checked before anything changes: a refused reopen leaves the node as it
	 * was.  A driver with reopen() reads its own options there, so its unknown keys can only
	 * be found after it ran; drivers must check their options before applying them. */
	if (!node->drv->reopen) {
		if ((r = keep_driver_options(node, opts, err)) < 0 ||
		    (r = bd_opts_check_unused(opts, NULL, err)) < 0)
			goto out;
	}
	bd_node_drain(node);
	if (node->drv->reopen) {
		struct bd_node_common saved = node->common;
		node->common = common; /* the driver sees the new common options */
		r = node->drv->reopen(node, opts, err);
		if (r == 0)
			r = bd_opts_check_unused(opts, NULL, err);
		if (r < 0) {
			node->common = saved;
			goto out;
		}
	} else {
		node->common = common;
	}
	node->limits.ops = node->drv_ops;
	if (node->common.read_only)
		node->limits.ops &= ~(BD_OP_BIT(BD_OP_WRITE) | BD_OP_BIT(BD_OP_WRITE_ZEROES) |
				      BD_OP_BIT(BD_OP_DISCARD));
	bd_opts_clear_marks(opts);
	json_decref(node->opts);
	node->opts = opts;
	return 0;
out:
	json_decref(opts);
	return r;
}

/* ---- description ---- */

json_t *bd_node_describe(struct bd_node *node)
{
	json_t *o = json_object();
	json_object_set_new(o, "node-name", json_string(node->name));
	json_object_set_new(o, "drv", json_string(node->drv->name));
	json_object_set_new(o, "ro", json_boolean(node->common.read_only));
	json_object_set_new(o, "virtual-size", json_integer((json_int_t)node->limits.size));
	json_object_set_new(o, "cache", json_pack("{s:b,s:b,s:b}", "writeback", 1, "direct",
						  node->common.cache_direct, "no-flush",
						  node->common.cache_no_flush));
	json_object_set_new(o, "detect_zeroes",
			    json_string(dz_names[node->common.detect_zeroes]));
	json_object_set_new(o, "discard", json_string(node->common.discard == BD_DISCARD_UNMAP
							      ? "unmap"
							      : "ignore"));
	json_t *children = json_array();
	for (struct bd_child *c = node->children; c; c = c->next)
		json_array_append_new(children, json_pack("{s:s,s:s}", "child", c->name,
							  "node-name", c->node->name));
	json_object_set_new(o, "children", children);
	if (node->drv->describe)
		node->drv->describe(node, o);
	return o;
}
