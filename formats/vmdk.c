/*
 * vmdk.c - the "vmdk" format driver, read-only: monolithicSparse, streamOptimized (one sparse
 * extent file, "KDMV"), and descriptor files (monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat, vmfs, vmfsSparse) whose extents are opened as more file children, named
 * relative to the descriptor's file name.  Delta links (parentFileNameHint) open the parent as
 * the backing node.  open/close/describe on the control thread (parsing in vmdk-parse.c),
 * requests through the shared engine (ro-image.c) on the request's loop.
 */
#include "formats/ro-image-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define VMDK_MAX_DESC (1u << 20)

struct vmdk_node {
	struct ro_img ro;
	struct vmdk_desc d;
	struct vmdk_map m;
};

static const struct ro_ops vmdk_ops = {.map = vmdk_map, .inflate = vmdk_inflate};

/* A file that starts with "KDMV": the extent is the file itself; its embedded descriptor only
 * gives the create type and the parent. */
static int open_sparse_file(struct vmdk_node *n, struct bd_err *err)
{
	struct ro_src src;
	struct vmdk_extent *e;
	char msg[256];
	int r;

	n->d.ext = calloc(1, sizeof(*n->d.ext));
	if (!n->d.ext)
		return bd_err_set(err, -ENOMEM, "out of memory");
	n->d.n = 1;
	e = &n->d.ext[0];
	e->type = VMDK_EXT_SPARSE;
	ro_src_file(&n->ro, 0, &src);
	r = vmdk_sparse_parse(&src, &e->sp, msg, sizeof(msg));
	if (r < 0)
		return bd_err_set(err, r, "%s", msg);
	e->sectors = e->sp.capacity;
	snprintf(n->d.create_type, sizeof(n->d.create_type), "%s",
		 e->sp.compressed ? "streamOptimized" : "monolithicSparse");
	if (e->sp.desc_size) {
		char *text = malloc(e->sp.desc_size);
		struct vmdk_desc emb;
		if (!text)
			return bd_err_set(err, -ENOMEM, "out of memory");
		if (ro_src_read(&src, e->sp.desc_off, text, e->sp.desc_size) == 0 &&
		    vmdk_desc_parse(text, e->sp.desc_size, &emb, msg, sizeof(msg)) == 0) {
			snprintf(n->d.create_type, sizeof(n->d.create_type), "%s", emb.create_type);
			n->d.parent_hint = emb.parent_hint;
			n->d.cid = emb.cid;
			n->d.parent_cid = emb.parent_cid;
			n->d.has_parent_cid = emb.has_parent_cid;
			emb.parent_hint = NULL;
			vmdk_desc_free(&emb);
		}
		free(text);
	}
	return 0;
}

static int open_descriptor(struct vmdk_node *n, struct bd_err *err)
{
	struct bd_node *file = bd_child_node(n->ro.files[0]);
	uint64_t fsize = n->ro.fsizes[0];
	const char *base = ro_file_name(file);
	char msg[256], *text;
	int r;

	if (fsize > VMDK_MAX_DESC)
		return bd_err_set(err, -EINVAL,
				  "invalid VMDK image descriptor (%" PRIu64 " bytes: not a VMDK "
				  "file?)",
				  fsize);
	text = malloc(fsize + 1);
	if (!text)
		return bd_err_set(err, -ENOMEM, "out of memory");
	r = bd_node_io_sync(file, BD_OP_READ, 0, fsize, text, 0);
	if (r < 0) {
		free(text);
		return bd_err_set(err, r, "Could not read the VMDK descriptor: %s", strerror(-r));
	}
	r = vmdk_desc_parse(text, fsize, &n->d, msg, sizeof(msg));
	free(text);
	if (r < 0)
		return bd_err_set(err, r, "%s", msg);
	if (n->d.n == 0)
		return bd_err_set(err, -EINVAL, "invalid VMDK image descriptor (no extents)");
	for (unsigned i = 0; i < n->d.n; i++) {
		struct vmdk_extent *e = &n->d.ext[i];
		char *path;
		if (e->type == VMDK_EXT_ZERO)
			continue;
		if (!base && e->file[0] != '/')
			return bd_err_set(err, -ENOTSUP,
					  "Cannot find extent '%s': the descriptor's file node has "
					  "no file name to resolve it against",
					  e->file);
		path = ro_resolve(base, e->file);
		if (!path)
			return bd_err_set(err, -ENOMEM, "out of memory");
		r = ro_add_file(&n->ro, path, err);
		if (r < 0) {
			free(path);
			return r;
		}
		e->child = (unsigned)r;
		if (e->type == VMDK_EXT_SPARSE) {
			struct ro_src src;
			ro_src_file(&n->ro, e->child, &src);
			r = vmdk_sparse_parse(&src, &e->sp, msg, sizeof(msg));
			if (r < 0) {
				r = bd_err_set(err, r, "extent '%s': %s", path, msg);
				free(path);
				return r;
			}
		}
		free(path);
	}
	return 0;
}

static int vmdk_open(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		     struct bd_err *err)
{
	struct vmdk_node *n = bd_node_priv(node);
	uint8_t magic[4] = {0};
	uint64_t total = 0, maxgrain = 0;
	int r;

	memset(&n->d, 0, sizeof(n->d));
	memset(&n->m, 0, sizeof(n->m));
	r = ro_init(&n->ro, node, opts, "vmdk", err);
	if (r < 0)
		goto fail;
	if (n->ro.fsizes[0] >= 4) {
		r = bd_node_io_sync(bd_child_node(n->ro.files[0]), BD_OP_READ, 0, 4, magic, 0);
		if (r < 0) {
			r = bd_err_set(err, r, "Could not read the VMDK header: %s", strerror(-r));
			goto fail;
		}
	}
	if (!memcmp(magic, "KDMV", 4)) {
		r = open_sparse_file(n, err);
	} else if (!memcmp(magic, "COWD", 4)) {
		r = bd_err_set(err, -ENOTSUP, "VMDK3 (COWD) images are not supported");
	} else {
		r = open_descriptor(n, err);
	}
	if (r < 0)
		goto fail;
	for (unsigned i = 0; i < n->d.n; i++) {
		struct vmdk_extent *e = &n->d.ext[i];
		e->start = total;
		if (e->sectors * 512 > (UINT64_MAX >> 1) - total) {
			r = bd_err_set(err, -EINVAL, "Image is corrupt: the extents are too large");
			goto fail;
		}
		total += e->sectors * 512;
		if (e->type == VMDK_EXT_SPARSE && e->sp.compressed && e->sp.grain > maxgrain)
			maxgrain = e->sp.grain;
	}
	n->m.ext = n->d.ext;
	n->m.n = n->d.n;
	n->m.size = total;
	n->ro.ops = &vmdk_ops;
	n->ro.fmt = &n->m;
	n->ro.size = total;
	n->ro.comp_read = maxgrain * 512 * 2 + 512;
	r = ro_open_backing(&n->ro, opts, n->d.parent_hint, "vmdk", err);
	if (r < 0)
		goto fail;
	ro_limits(&n->ro, limits);
	return 0;
fail:
	vmdk_desc_free(&n->d);
	ro_free(&n->ro);
	return r;
}

static void vmdk_close(struct bd_node *node)
{
	struct vmdk_node *n = bd_node_priv(node);
	vmdk_desc_free(&n->d);
	ro_free(&n->ro);
}

static void vmdk_describe(struct bd_node *node, json_t *out)
{
	struct vmdk_node *n = bd_node_priv(node);
	json_t *exts = json_array();

	ro_describe(&n->ro, out);
	for (unsigned i = 0; i < n->d.n && exts; i++) {
		const struct vmdk_extent *e = &n->d.ext[i];
		json_t *x = json_pack("{s:s,s:I}", "type",
				      e->type == VMDK_EXT_FLAT	 ? "FLAT"
				      : e->type == VMDK_EXT_ZERO ? "ZERO"
								 : "SPARSE",
				      "virtual-size", (json_int_t)(e->sectors * 512));
		if (x && e->file)
			json_object_set_new(x, "filename", json_string(e->file));
		if (x && e->type == VMDK_EXT_SPARSE) {
			json_object_set_new(x, "cluster-size",
					    json_integer((json_int_t)(e->sp.grain * 512)));
			json_object_set_new(x, "compressed", json_boolean(e->sp.compressed));
		}
		json_array_append_new(exts, x);
	}
	json_object_set_new(out, "format-specific",
			    json_pack("{s:s,s:{s:s,s:I,s:I,s:o}}", "type", "vmdk", "data",
				      "create-type", n->d.create_type, "cid", (json_int_t)n->d.cid,
				      "parent-cid", (json_int_t)n->d.parent_cid, "extents", exts));
}

static const struct bd_opt_desc vmdk_options[] = {
    {"file", BD_OPT_CHILD, true, NULL, "the descriptor or the sparse extent file"},
    {"backing", BD_OPT_CHILD, false, NULL,
     "the parent (null: none; default: parentFileNameHint opened as vmdk)"},
    {NULL},
};

const struct bd_driver bd_drv_vmdk = {
    .name = "vmdk",
    .kind = BD_DRV_FORMAT,
    .help = "VMware disk image: sparse, flat, split and streamOptimized (read-only)",
    .options = vmdk_options,
    .node_size = sizeof(struct vmdk_node),
    .req_size = sizeof(struct ro_req),
    .open = vmdk_open,
    .close = vmdk_close,
    .submit = ro_submit,
    .describe = vmdk_describe,
};
