/*
 * export.c - NBD export objects: --export type=nbd / block-export-add (add, del, shutdown, query:
 * struct bd_export_type bd_export_nbd) and the export table the handshake looks names up in.
 * Control thread only.
 *
 * An export holds a reference on its node.  Each connection in the transmission phase holds a
 * reference on its export, so a deleted export (and its node reference) goes away only when its
 * last connection is gone.
 */
#include "export/nbd/nbd-int.h"

#include <stdlib.h>
#include <string.h>

static struct nbd_export *exports; /* creation order; deleted ones stay until unreferenced */

static struct nbd_export *find_id(const char *id)
{
	struct nbd_export *e;
	for (e = exports; e; e = e->next)
		if (!e->deleted && !strcmp(e->id, id))
			return e;
	return NULL;
}

static struct nbd_export *find_name(const char *name)
{
	struct nbd_export *e;
	for (e = exports; e; e = e->next)
		if (!e->deleted && !strcmp(e->name, name))
			return e;
	return NULL;
}

struct nbd_export *nbd_export_lookup(const char *name)
{
	struct nbd_export *e = find_name(name), *only = NULL;
	unsigned n = 0;

	if (e || *name)
		return e;
	/* The default export "": the only export, if there is exactly one. */
	for (e = exports; e; e = e->next) {
		if (!e->deleted) {
			only = e;
			n++;
		}
	}
	return n == 1 ? only : NULL;
}

struct nbd_export *nbd_export_nth(unsigned i)
{
	struct nbd_export *e;
	for (e = exports; e; e = e->next)
		if (!e->deleted && i-- == 0)
			return e;
	return NULL;
}

void nbd_export_info(struct nbd_export *exp, struct nbd_export_info *out)
{
	memset(out, 0, sizeof(*out));
	out->name = exp->name;
	out->description = exp->description;
	out->size = bd_node_size(exp->node);
	out->tflags = exp->tflags;
	out->min_block = exp->min_block;
	out->pref_block = exp->pref_block;
	out->max_block = NBD_MAX_PAYLOAD;
	out->allocation_depth = exp->allocation_depth;
	out->handle = exp;
}

void nbd_export_get(struct nbd_export *exp)
{
	exp->refcnt++;
}

void nbd_export_put(struct nbd_export *exp)
{
	struct nbd_export **pp;

	if (--exp->refcnt > 0)
		return;
	for (pp = &exports; *pp; pp = &(*pp)->next) {
		if (*pp == exp) {
			*pp = exp->next;
			break;
		}
	}
	bd_node_unref(exp->node);
	/* QEMU's event once the export is really gone (after its last client). */
	bd_event_emit("BLOCK_EXPORT_DELETED", json_pack("{s:s}", "id", exp->id));
	free(exp->id);
	free(exp->name);
	free(exp->description);
	free(exp->node_name);
	free(exp);
}

static uint32_t pow2_floor(uint64_t v)
{
	uint32_t p = 1;
	while ((uint64_t)p * 2 <= v && p < (1u << 31))
		p *= 2;
	return p;
}

static uint16_t export_flags(struct bd_node *node, bool writable)
{
	uint16_t f = NBD_FLAG_HAS_FLAGS | NBD_FLAG_CAN_MULTI_CONN | NBD_FLAG_SEND_CACHE;
	bool ro = !writable || bd_node_read_only(node);

	if (bd_node_can(node, BD_OP_FLUSH))
		f |= NBD_FLAG_SEND_FLUSH;
	if (ro)
		return f | NBD_FLAG_READ_ONLY;
	if (bd_node_can(node, BD_OP_WRITE))
		f |= NBD_FLAG_SEND_FUA;
	if (bd_node_can(node, BD_OP_DISCARD))
		f |= NBD_FLAG_SEND_TRIM;
	if (bd_node_can(node, BD_OP_WRITE_ZEROES)) {
		f |= NBD_FLAG_SEND_WRITE_ZEROES;
		if (bd_node_fast_zero(node))
			f |= NBD_FLAG_SEND_FAST_ZERO;
	}
	return f;
}

/* An optional string option. */
static int opt_str(json_t *opts, const char *key, const char **out, struct bd_err *err)
{
	int r = bd_opts_str(opts, key, out, err);
	return r == -ENOENT ? 0 : r;
}

static int opt_bool(json_t *opts, const char *key, bool *out, struct bd_err *err)
{
	int r = bd_opts_bool(opts, key, out, err);
	return r == -ENOENT ? 0 : r;
}

static int nbd_add(json_t *opts, struct bd_err *err)
{
	const char *id = NULL, *node_name = NULL, *name = NULL, *desc = NULL, *iothread = NULL;
	bool writable = false, writethrough = false, depth = false, fixed = false;
	struct bd_loop *loop = NULL;
	const struct bd_limits *lim;
	struct bd_node *node;
	struct nbd_export *e, **pp;
	json_t *bitmaps;
	int r;

	bd_opts_mark_used(opts, "type");
	if ((r = opt_str(opts, "id", &id, err)) < 0 ||
	    (r = opt_str(opts, "node-name", &node_name, err)) < 0 ||
	    (r = opt_str(opts, "name", &name, err)) < 0 ||
	    (r = opt_str(opts, "description", &desc, err)) < 0 ||
	    (r = opt_str(opts, "iothread", &iothread, err)) < 0 ||
	    (r = opt_bool(opts, "writable", &writable, err)) < 0 ||
	    (r = opt_bool(opts, "writethrough", &writethrough, err)) < 0 ||
	    (r = opt_bool(opts, "fixed-iothread", &fixed, err)) < 0 ||
	    (r = opt_bool(opts, "allocation-depth", &depth, err)) < 0)
		return r;
	bitmaps = json_object_get(opts, "bitmaps");
	if (bitmaps) {
		bd_opts_mark_used(opts, "bitmaps");
		if ((json_is_array(bitmaps) && json_array_size(bitmaps)) ||
		    (json_is_object(bitmaps) && json_object_size(bitmaps)) ||
		    (json_is_string(bitmaps) && *json_string_value(bitmaps)))
			return bd_err_set(
			    err, -ENOTSUP,
			    "NBD export: bitmaps (qemu:dirty-bitmap) are not supported");
	}
	r = bd_opts_check_unused(opts, "", err);
	if (r < 0)
		return r;
	if (!id)
		return bd_err_set(err, -EINVAL, "Parameter 'id' is missing");
	if (!node_name)
		return bd_err_set(err, -EINVAL, "Parameter 'node-name' is missing");
	if (!name)
		name = node_name;
	if (strlen(name) > NBD_MAX_STRING)
		return bd_err_set(err, -EINVAL, "export name '%.64s...' is too long (max %d bytes)",
				  name, NBD_MAX_STRING);
	if (desc && strlen(desc) > NBD_MAX_STRING)
		return bd_err_set(err, -EINVAL, "export description is too long (max %d bytes)",
				  NBD_MAX_STRING);
	if (find_id(id))
		return bd_err_set(err, -EEXIST, "Block export id '%s' is already in use", id);
	if (find_name(name))
		return bd_err_set(err, -EEXIST, "NBD server already has export named '%s'", name);
	node = bd_graph_find(node_name);
	if (!node)
		return bd_err_set(err, -ENOENT, "Cannot find device=%s nor node-name=%s", node_name,
				  node_name);
	if (writable && bd_node_read_only(node))
		return bd_err_set(
		    err, -EROFS, "Cannot export node '%s' as writable: it is read-only", node_name);
	if (iothread) {
		loop = bd_iothread_find(iothread);
		if (!loop)
			return bd_err_set(err, -ENOENT, "iothread '%s' not found", iothread);
	}

	e = calloc(1, sizeof(*e));
	if (!e)
		return bd_err_set(err, -ENOMEM, "out of memory");
	e->id = strdup(id);
	e->name = strdup(name);
	e->description = desc ? strdup(desc) : NULL;
	e->node_name = strdup(node_name);
	if (!e->id || !e->name || (desc && !e->description) || !e->node_name) {
		free(e->id);
		free(e->name);
		free(e->description);
		free(e->node_name);
		free(e);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	e->node = node;
	e->loop = loop;
	e->writable = writable;
	e->writethrough = writethrough;
	e->allocation_depth = depth;
	e->tflags = export_flags(node, writable);
	lim = bd_node_limits(node);
	e->min_block = lim && lim->req_align > 1 ? lim->req_align : 1;
	if (e->min_block > 65536)
		e->min_block = 65536;
	e->pref_block = lim && lim->opt_transfer > 4096 ? pow2_floor(lim->opt_transfer) : 4096;
	if (e->pref_block < e->min_block)
		e->pref_block = e->min_block;
	if (e->pref_block > NBD_MAX_PAYLOAD)
		e->pref_block = NBD_MAX_PAYLOAD;
	e->refcnt = 1;
	bd_node_ref(node);
	for (pp = &exports; *pp; pp = &(*pp)->next)
		;
	*pp = e;
	bd_log(BD_LOG_DEBUG, "nbd: export '%s' (id %s) on node '%s'%s", e->name, e->id, node_name,
	       writable ? ", writable" : "");
	return 0;
}

static void export_delete(struct nbd_export *e, bool hard)
{
	e->deleted = true;
	if (e->nconns)
		nbd_server_kill_conns(e, hard);
	nbd_export_put(e); /* the table's reference */
}

static int nbd_del(const char *id, bool hard, struct bd_err *err)
{
	struct nbd_export *e = find_id(id);

	if (!e)
		return bd_err_set(err, -ENOENT, "Export '%s' is not found", id);
	if (!hard && e->nconns)
		return bd_err_set(err, -EBUSY, "export '%s' has %u connected client%s", id,
				  e->nconns, e->nconns == 1 ? "" : "s");
	export_delete(e, true);
	return 0;
}

static struct nbd_export *first_live(void)
{
	struct nbd_export *e;
	for (e = exports; e; e = e->next)
		if (!e->deleted)
			return e;
	return NULL;
}

void nbd_export_del_all(void)
{
	struct nbd_export *e;

	/* Deleting one export may reap connections and so free other (deleted) exports: start
	 * over from the head every time. */
	while ((e = first_live()))
		export_delete(e, true);
}

static void nbd_shutdown(void)
{
	struct nbd_export *e;

	nbd_server_shutdown();
	while ((e = first_live())) {
		e->deleted = true;
		nbd_export_put(e);
	}
}

static void nbd_query(json_t *list)
{
	struct nbd_export *e;

	for (e = exports; e; e = e->next) {
		if (e->deleted)
			continue;
		json_array_append_new(
		    list, json_pack("{s:s, s:s, s:s, s:b, s:s, s:b, s:i}", "type", "nbd", "id",
				    e->id, "node-name", e->node_name, "shutting-down", 0, "name",
				    e->name, "writable", e->writable, "clients", (int)e->nconns));
	}
}

static const struct bd_opt_desc nbd_export_options[] = {
	{"name", BD_OPT_STR, false, NULL, "export name (default: the node name)"},
	{"description", BD_OPT_STR, false, NULL, "free text shown to clients"},
	{"bitmaps", BD_OPT_OBJ, false, NULL, "dirty bitmaps to expose (not supported yet)"},
	{"allocation-depth", BD_OPT_BOOL, false, NULL,
	 "expose the qemu:allocation-depth metadata context"},
	{NULL},
};

const struct bd_export_type bd_export_nbd = {
    .name = "nbd",
    .options = nbd_export_options,
    .add = nbd_add,
    .del = nbd_del,
    .shutdown = nbd_shutdown,
    .query = nbd_query,
};
