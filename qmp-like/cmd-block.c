/*
 * cmd-block.c - node, export and NBD server commands: blockdev-add/-del/-reopen,
 * query-named-block-nodes, block_resize, blockdev-snapshot, blockdev-snapshot-internal-sync,
 * blockdev-snapshot-delete-internal-sync, query-blockstats, block_set_io_throttle,
 * block-export-add/-del, query-block-exports, nbd-server-start/-stop.  [control]
 */
#include "export/nbd/nbd.h"
#include "filters/throttle.h"
#include "qmp-like/qmp-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define M(...) ((const struct qmp_member[]){__VA_ARGS__, {NULL}})
#define ENUM(...) ((const char *const[]){__VA_ARGS__, NULL})

struct bd_node *qmp_find_node(const char *device, const char *node_name, struct bd_err *err)
{
	struct bd_node *n = NULL;
	if (node_name)
		n = bd_graph_find(node_name);
	if (!n && device)
		n = bd_graph_find(device);
	if (!n)
		bd_err_set(err, -ENOENT, "Cannot find device='%s' nor node-name='%s'",
			   device ? device : "", node_name ? node_name : "");
	return n;
}

/* ---- BlockdevOptions, generated from the driver table ---- */

static const struct qmp_type t_cache = {
	.kind = QK_OBJECT,
	.doc_name = "BlockdevCacheOptions",
	.members = M({"direct", &qmp_t_bool, true, "O_DIRECT"},
		     {"no-flush", &qmp_t_bool, true, "ignore flush requests"})};
static const struct qmp_type t_discard = {.kind = QK_ENUM,
					  .values = ENUM("ignore", "unmap", "off", "on")};
static const struct qmp_type t_detect_zeroes = {.kind = QK_ENUM,
						.values = ENUM("off", "on", "unmap")};
static const struct qmp_type t_blockdev_ref = {
	.kind = QK_ALTERNATE,
	.doc_name = "BlockdevRef",
	.alts = (const struct qmp_type *const[]){&qmp_t_dict, &qmp_t_str, NULL}};

/* "backing": null means none (QEMU's BlockdevRefOrNull). */
static const struct qmp_type t_blockdev_ref_or_null = {
	.kind = QK_ALTERNATE,
	.doc_name = "BlockdevRefOrNull",
	.alts = (const struct qmp_type *const[]){&qmp_t_dict, &qmp_t_str, &qmp_t_null, NULL}};

static const struct qmp_member blockdev_base[] = {
	{"driver", NULL, false, "the driver (docs/drivers.md)"},
	{"node-name", &qmp_t_str, true, "the node's name (required for a top-level node)"},
	{"discard", &t_discard, true, "discard requests: ignore (default) or unmap"},
	{"cache", &t_cache, true, "cache mode"},
	{"read-only", &qmp_t_bool, true, "open read-only"},
	{"auto-read-only", &qmp_t_bool, true, "fall back to read-only when writing is refused"},
	{"force-share", &qmp_t_bool, true, "ignore other processes' image locks (read-only)"},
	{"detect-zeroes", &t_detect_zeroes, true, "turn zero-filled writes into write-zeroes"},
	{NULL},
};

struct dyn_type {
	struct qmp_type t;
	struct qmp_type tag_enum;
	const char **names;
	struct qmp_member *base;
	struct qmp_variant *variants;
	struct qmp_member **vmembers;
	struct qmp_type *vtypes; /* per option, flattened */
	size_t nvariants;
};


/* A union type: base members, tag, one variant per table entry with its option descriptors. */
static struct qmp_type *build_union(const char *doc_name, const char *tag,
				    const struct qmp_member *base, size_t nentries,
				    const char *(*entry_name)(size_t i),
				    const struct bd_opt_desc *(*entry_opts)(size_t i),
				    const char *const *skip)
{
	struct dyn_type *d = calloc(1, sizeof(*d));
	size_t nbase = 0, nopts_total = 0;

	for (; base[nbase].name; nbase++)
		;
	for (size_t i = 0; i < nentries; i++) {
		const struct bd_opt_desc *o = entry_opts(i);
		for (; o && o->name; o++)
			nopts_total++;
	}
	d->names = calloc(nentries + 1, sizeof(*d->names));
	d->base = calloc(nbase + 1, sizeof(*d->base));
	d->variants = calloc(nentries + 1, sizeof(*d->variants));
	d->vmembers = calloc(nentries + 1, sizeof(*d->vmembers));
	d->vtypes = calloc(nopts_total + 1, sizeof(*d->vtypes));
	if (!d->names || !d->base || !d->variants || !d->vmembers || !d->vtypes)
		abort();
	for (size_t i = 0; i < nentries; i++)
		d->names[i] = entry_name(i);
	d->tag_enum.kind = QK_ENUM;
	d->tag_enum.values = d->names;
	for (size_t i = 0; i < nbase; i++) {
		d->base[i] = base[i];
		if (!strcmp(base[i].name, tag))
			d->base[i].type = &d->tag_enum;
	}
	size_t k = 0;
	for (size_t i = 0; i < nentries; i++) {
		const struct bd_opt_desc *opts = entry_opts(i);
		size_t n = 0;
		for (const struct bd_opt_desc *o = opts; o && o->name; o++)
			n++;
		d->vmembers[i] = calloc(n + 1, sizeof(struct qmp_member));
		if (!d->vmembers[i])
			abort();
		size_t j = 0;
		for (const struct bd_opt_desc *o = opts; o && o->name; o++) {
			bool skipped = false;
			for (const char *const *s = skip; s && *s; s++)
				if (!strcmp(*s, o->name))
					skipped = true;
			if (skipped)
				continue;
			d->vmembers[i][j].name = o->name;
			d->vmembers[i][j].type =
				qmp_opt_type(o, &d->vtypes[k++],
					     strcmp(o->name, "backing") ? &t_blockdev_ref
									: &t_blockdev_ref_or_null);
			d->vmembers[i][j].optional = !o->required;
			d->vmembers[i][j].help = o->help;
			j++;
		}
		d->variants[i].tag_value = d->names[i];
		d->variants[i].members = d->vmembers[i];
	}
	d->nvariants = nentries;
	d->t.kind = QK_OBJECT;
	d->t.doc_name = doc_name;
	d->t.members = d->base;
	d->t.tag = tag;
	d->t.variants = d->variants;
	return &d->t;
}

static void free_union(struct qmp_type *t)
{
	struct dyn_type *d = (struct dyn_type *)t;
	for (size_t i = 0; i < d->nvariants; i++)
		free(d->vmembers[i]);
	free(d->vmembers);
	free(d->variants);
	free(d->vtypes);
	free(d->base);
	free(d->names);
	free(d);
}

static size_t count_drivers(void)
{
	size_t n = 0;
	while (bd_driver_table[n])
		n++;
	return n;
}
static const char *driver_name(size_t i)
{
	return bd_driver_table[i]->name;
}
static const struct bd_opt_desc *driver_opts(size_t i)
{
	return bd_driver_table[i]->options;
}

static struct qmp_type *build_blockdev_options(void)
{
	return build_union("BlockdevOptions", "driver", blockdev_base, count_drivers(),
			   driver_name, driver_opts, NULL);
}

static const struct qmp_type t_blockdev_options = {
	.kind = QK_DYNAMIC,
	.doc_name = "BlockdevOptions",
	.dynamic = &(const struct qmp_dynamic){.build = build_blockdev_options,
					       .free_type = free_union,
					       .lenient = true}};

/* ---- blockdev-add / -del / -reopen ---- */

static int cmd_blockdev_add(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *opts = json_deep_copy(args);
	struct bd_node *n;

	if (!json_object_get(opts, "node-name")) {
		json_decref(opts);
		return bd_err_set(err, -EINVAL, "'node-name' must be specified for the root node");
	}
	n = bd_node_open(opts, err);
	json_decref(opts);
	return n ? 0 : (err->code ? err->code : -EINVAL);
}

static int cmd_blockdev_del(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_graph_del(json_string_value(json_object_get(args, "node-name")), err);
}

static int cmd_blockdev_reopen(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_object_get(args, "options"), *o;
	size_t i;

	/* Check every entry before changing anything. */
	json_array_foreach(list, i, o)
	{
		const char *name = json_string_value(json_object_get(o, "node-name"));
		if (!name)
			return bd_err_set(err, -EINVAL, "node-name not specified");
		if (!bd_graph_find(name))
			return bd_err_set(err, -ENOENT, "Cannot find node named '%s'", name);
	}
	json_array_foreach(list, i, o)
	{
		const char *name = json_string_value(json_object_get(o, "node-name"));
		json_t *copy = json_deep_copy(o);
		int r = bd_node_reopen(bd_graph_find(name), copy, err);
		json_decref(copy);
		if (r < 0)
			return r;
	}
	return 0;
}

/* ---- query-named-block-nodes ---- */

/* The file a node's bytes come from: its own "filename", else its first child's. */
static char *node_filename(struct bd_node *n, int depth)
{
	json_t *d = bd_node_describe(n);
	const char *f = json_string_value(json_object_get(d, "filename"));
	char *out = f ? strdup(f) : NULL;
	json_t *c0 = json_array_get(json_object_get(d, "children"), 0);
	const char *child = json_string_value(json_object_get(c0, "node-name"));
	struct bd_node *cn = child ? bd_graph_find(child) : NULL;

	if (!out && cn && depth < 16)
		out = node_filename(cn, depth + 1);
	json_decref(d);
	return out;
}

static json_t *describe_node(struct bd_node *n)
{
	json_t *o = bd_node_describe(n);
	const char *drv = bd_node_driver(n)->name;
	char *fname = node_filename(n, 0);
	struct stat st;
	json_int_t actual = 0;

	if (!fname) {
		if (asprintf(&fname, "%s://", drv) < 0)
			abort();
	} else if (stat(fname, &st) == 0 && S_ISREG(st.st_mode)) {
		actual = (json_int_t)st.st_blocks * 512;
	}
	/* The members QEMU's BlockDeviceInfo always has, for scripts that read them. */
	if (!json_object_get(o, "file"))
		json_object_set_new(o, "file", json_string(fname));
	json_object_set_new(o, "encrypted", json_false());
	json_object_set_new(o, "backing_file_depth", json_integer(0));
	json_object_set_new(o, "write_threshold", json_integer(0));
	static const char *const zero_keys[] = {"bps",  "bps_rd",  "bps_wr",
						"iops", "iops_rd", "iops_wr"};
	for (size_t i = 0; i < sizeof(zero_keys) / sizeof(zero_keys[0]); i++)
		if (!json_object_get(o, zero_keys[i]))
			json_object_set_new(o, zero_keys[i], json_integer(0));
	json_object_set_new(o, "image",
			    json_pack("{s:I,s:s,s:s,s:I}", "virtual-size",
				      (json_int_t)bd_node_size(n), "filename", fname, "format", drv,
				      "actual-size", actual));
	free(fname);
	return o;
}

static int cmd_query_named_block_nodes(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_array();
	for (struct bd_node *n = bd_graph_next(NULL); n; n = bd_graph_next(n))
		json_array_append_new(list, describe_node(n));
	req->ret = list;
	return 0;
}

/* ---- block_resize ---- */

static int cmd_block_resize(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *dev = json_string_value(json_object_get(args, "device"));
	const char *nn = json_string_value(json_object_get(args, "node-name"));
	json_int_t size = json_integer_value(json_object_get(args, "size"));
	struct bd_node *n = qmp_find_node(dev, nn, err);

	if (!n)
		return err->code;
	if (size < 0)
		return bd_err_set(err, -EINVAL, "Parameter 'size' expects a >0 size");
	/* Unlike qemu-storage-daemon 7.2, a node under an export can be resized: new NBD
	 * clients see the new size (NBD cannot tell connected clients). */
	return bd_node_resize(n, (uint64_t)size, err);
}

/* ---- internal snapshots ---- */

static int cmd_snapshot_internal(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *dev = json_string_value(json_object_get(args, "device"));
	const char *name = json_string_value(json_object_get(args, "name"));
	struct bd_node *n = qmp_find_node(dev, NULL, err);

	if (!n)
		return err->code;
	if (!name || !name[0])
		return bd_err_set(err, -EINVAL, "Name is empty");
	return bd_node_snapshot_create(n, NULL, name, err);
}

static int cmd_snapshot_delete_internal(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *dev = json_string_value(json_object_get(args, "device"));
	const char *id = json_string_value(json_object_get(args, "id"));
	const char *name = json_string_value(json_object_get(args, "name"));
	struct bd_node *n = qmp_find_node(dev, NULL, err);
	json_t *info = NULL;
	int r;

	if (!n)
		return err->code;
	if (!id && !name)
		return bd_err_set(err, -EINVAL, "Name or id must be provided");
	r = bd_node_snapshot_delete(n, id, name, &info, err);
	if (r == 0)
		req->ret = info ? info : json_object();
	return r;
}

/* ---- blockdev-snapshot (external) ---- */

static int cmd_blockdev_snapshot(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *nn = json_string_value(json_object_get(args, "node"));
	const char *ov = json_string_value(json_object_get(args, "overlay"));
	struct bd_node *n = qmp_find_node(nn, nn, err), *o;

	if (!n)
		return err->code;
	o = bd_graph_find(ov);
	if (!o)
		return bd_err_set(err, -ENOENT, "Cannot find device='%s' nor node-name='%s'", ov, ov);
	return bd_node_snapshot_external(n, o, err);
}

/* ---- query-blockstats ---- */

struct stat_snap {
	char name[128];
	uint64_t when_ns;
	struct bd_node_stats st;
	struct stat_snap *next;
};
static struct stat_snap *snaps;

static struct stat_snap *snap_for(const char *name)
{
	for (struct stat_snap *s = snaps; s; s = s->next)
		if (!strcmp(s->name, name))
			return s;
	struct stat_snap *s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->next = snaps;
	snaps = s;
	return s;
}

static void snaps_prune(void)
{
	for (struct stat_snap **pp = &snaps; *pp;) {
		if (!bd_graph_find((*pp)->name)) {
			struct stat_snap *s = *pp;
			*pp = s->next;
			free(s);
		} else {
			pp = &(*pp)->next;
		}
	}
}

static json_int_t avg_ns(const struct bd_node_stats *now, const struct bd_node_stats *then,
			 enum bd_op op)
{
	uint64_t ops = now->ops[op] - then->ops[op];
	return ops ? (json_int_t)((now->total_ns[op] - then->total_ns[op]) / ops) : 0;
}

static json_t *node_stats(struct bd_node *n)
{
	struct bd_node_stats st;
	json_t *s;
	uint64_t now = bd_now_ns();

	bd_node_stats(n, &st);
	s = json_object();
#define SET(k, v) json_object_set_new(s, k, json_integer((json_int_t)(v)))
	SET("rd_bytes", st.bytes[BD_OP_READ]);
	SET("wr_bytes", st.bytes[BD_OP_WRITE]);
	SET("unmap_bytes", st.bytes[BD_OP_DISCARD]);
	SET("rd_operations", st.ops[BD_OP_READ]);
	SET("wr_operations", st.ops[BD_OP_WRITE]);
	SET("flush_operations", st.ops[BD_OP_FLUSH]);
	SET("unmap_operations", st.ops[BD_OP_DISCARD]);
	SET("rd_total_time_ns", st.total_ns[BD_OP_READ]);
	SET("wr_total_time_ns", st.total_ns[BD_OP_WRITE]);
	SET("flush_total_time_ns", st.total_ns[BD_OP_FLUSH]);
	SET("unmap_total_time_ns", st.total_ns[BD_OP_DISCARD]);
	SET("failed_rd_operations", st.errors[BD_OP_READ]);
	SET("failed_wr_operations", st.errors[BD_OP_WRITE]);
	SET("failed_flush_operations", st.errors[BD_OP_FLUSH]);
	SET("failed_unmap_operations", st.errors[BD_OP_DISCARD]);
	SET("invalid_rd_operations", 0);
	SET("invalid_wr_operations", 0);
	SET("invalid_flush_operations", 0);
	SET("invalid_unmap_operations", 0);
	SET("rd_merged", 0);
	SET("wr_merged", 0);
	SET("unmap_merged", 0);
	SET("wr_highest_offset", 0);
	json_object_set_new(s, "account_invalid", json_false());
	json_object_set_new(s, "account_failed", json_false());
	json_object_set_new(s, "timed_stats", json_array());
	/* blockd's additions: write-zeroes, and latency since the previous query-blockstats. */
	SET("x-zero-operations", st.ops[BD_OP_WRITE_ZEROES]);
	SET("x-zero-bytes", st.bytes[BD_OP_WRITE_ZEROES]);
	SET("x-zero-total-time-ns", st.total_ns[BD_OP_WRITE_ZEROES]);
	struct stat_snap *sn = snap_for(bd_node_name(n));
	if (sn->when_ns) {
		SET("x-recent-interval-ns", now - sn->when_ns);
		SET("x-recent-rd-operations", st.ops[BD_OP_READ] - sn->st.ops[BD_OP_READ]);
		SET("x-recent-wr-operations", st.ops[BD_OP_WRITE] - sn->st.ops[BD_OP_WRITE]);
		SET("x-recent-avg-rd-latency-ns", avg_ns(&st, &sn->st, BD_OP_READ));
		SET("x-recent-avg-wr-latency-ns", avg_ns(&st, &sn->st, BD_OP_WRITE));
		SET("x-recent-avg-flush-latency-ns", avg_ns(&st, &sn->st, BD_OP_FLUSH));
	}
#undef SET
	sn->when_ns = now;
	sn->st = st;
	json_t *e = json_pack("{s:s,s:o}", "node-name", bd_node_name(n), "stats", s);
	const char *drv = bd_node_driver(n)->name;
	if (!strcmp(drv, "file") || !strcmp(drv, "host_device"))
		json_object_set_new(
			e, "driver-specific",
			json_pack("{s:s,s:I,s:I,s:I}", "driver", drv, "discard-nb-ok",
				  (json_int_t)(st.ops[BD_OP_DISCARD] - st.errors[BD_OP_DISCARD]),
				  "discard-nb-failed", (json_int_t)st.errors[BD_OP_DISCARD],
				  "discard-bytes-ok", (json_int_t)st.bytes[BD_OP_DISCARD]));
	return e;
}

static int cmd_query_blockstats(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_array();
	/* Without query-nodes QEMU lists devices (BlockBackends), of which a storage daemon has
	 * none; with it, every named node. */
	if (json_is_true(json_object_get(args, "query-nodes"))) {
		for (struct bd_node *n = bd_graph_next(NULL); n; n = bd_graph_next(n))
			json_array_append_new(list, node_stats(n));
		snaps_prune();
	}
	req->ret = list;
	return 0;
}

/* ---- block_set_io_throttle ---- */

static const struct {
	const char *qmp, *limit;
} throttle_keys[] = {
	{"bps", "bps-total"},
	{"bps_rd", "bps-read"},
	{"bps_wr", "bps-write"},
	{"iops", "iops-total"},
	{"iops_rd", "iops-read"},
	{"iops_wr", "iops-write"},
	{"bps_max", "bps-total-max"},
	{"bps_rd_max", "bps-read-max"},
	{"bps_wr_max", "bps-write-max"},
	{"iops_max", "iops-total-max"},
	{"iops_rd_max", "iops-read-max"},
	{"iops_wr_max", "iops-write-max"},
	{"iops_size", "iops-size"},
	{"bps_max_length", "bps-total-max-length"},
	{"bps_rd_max_length", "bps-read-max-length"},
	{"bps_wr_max_length", "bps-write-max-length"},
	{"iops_max_length", "iops-total-max-length"},
	{"iops_rd_max_length", "iops-read-max-length"},
	{"iops_wr_max_length", "iops-write-max-length"},
};

static int cmd_block_set_io_throttle(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *dev = json_string_value(json_object_get(args, "device"));
	const char *id = json_string_value(json_object_get(args, "id"));
	const char *group = json_string_value(json_object_get(args, "group"));
	struct bd_node *n = qmp_find_node(dev, id, err);
	const char *node_group;
	json_t *limits;
	int r;

	if (!n) {
		req->err_class = "DeviceNotFound";
		return err->code;
	}
	if (strcmp(bd_node_driver(n)->name, "throttle") != 0)
		return bd_err_set(err, -EINVAL,
				  "Node '%s' is not a throttle filter: add one "
				  "(driver=throttle,throttle-group=G,file=%s) and export it",
				  bd_node_name(n), bd_node_name(n));
	node_group = json_string_value(json_object_get(bd_node_options(n), "throttle-group"));
	if (!node_group)
		return bd_err_set(err, -EINVAL, "Node '%s' has no throttle group", bd_node_name(n));
	if (group && strcmp(group, node_group))
		return bd_err_set(err, -EINVAL,
				  "Node '%s' belongs to throttle group '%s', not '%s' (blockd "
				  "cannot move a node to another group)",
				  bd_node_name(n), node_group, group);
	/* Like QEMU, the command sets every limit: what is not given is 0 (burst lengths 1). */
	limits = json_object();
	for (size_t i = 0; i < sizeof(throttle_keys) / sizeof(throttle_keys[0]); i++) {
		json_t *v = json_object_get(args, throttle_keys[i].qmp);
		json_int_t dflt = strstr(throttle_keys[i].limit, "-length") ? 1 : 0;
		json_object_set_new(limits, throttle_keys[i].limit,
				    json_integer(v ? json_integer_value(v) : dflt));
	}
	r = bd_throttle_group_set_limits(node_group, limits, err);
	json_decref(limits);
	return r;
}

/* ---- exports ---- */

static const struct qmp_member export_base[] = {
	{"type", NULL, false, "the export type"},
	{"id", &qmp_t_str, false, "the export's id"},
	{"node-name", &qmp_t_str, false, "the node to export"},
	{"writable", &qmp_t_bool, true, "allow writes (default false)"},
	{"writethrough", &qmp_t_bool, true, "flush after every write"},
	{"iothread", &qmp_t_str, true, "the iothread object whose loop serves the export"},
	{"fixed-iothread", &qmp_t_bool, true, "accepted (blockd never moves an export)"},
	{NULL},
};

static size_t count_export_types(void)
{
	size_t n = 0;
	while (bd_export_type_table[n])
		n++;
	return n;
}
static const char *export_type_name(size_t i)
{
	return bd_export_type_table[i]->name;
}
static const struct bd_opt_desc *export_type_opts(size_t i)
{
	return bd_export_type_table[i]->options;
}

static struct qmp_type *build_export_options(void)
{
	return build_union("BlockExportOptions", "type", export_base, count_export_types(),
			   export_type_name, export_type_opts, NULL);
}

static const struct qmp_type t_export_options = {
	.kind = QK_DYNAMIC,
	.doc_name = "BlockExportOptions",
	.dynamic = &(const struct qmp_dynamic){.build = build_export_options,
					       .free_type = free_union,
					       .lenient = false}};

static int cmd_block_export_add(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *opts = json_deep_copy(args);
	int r = bd_export_add(opts, err);
	json_decref(opts);
	return r;
}

/* Which export type has an export with this id? */
static const struct bd_export_type *export_owner(const char *id)
{
	for (const struct bd_export_type *const *t = bd_export_type_table; *t; t++) {
		json_t *list = json_array(), *e;
		size_t i;
		bool found = false;
		if ((*t)->query)
			(*t)->query(list);
		json_array_foreach(list, i, e)
			if (!strcmp(json_string_value(json_object_get(e, "id")) ?: "", id))
				found = true;
		json_decref(list);
		if (found)
			return *t;
	}
	return NULL;
}

static int cmd_block_export_del(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *id = json_string_value(json_object_get(args, "id"));
	const char *mode = json_string_value(json_object_get(args, "mode"));
	const struct bd_export_type *t = export_owner(id);

	if (!t || !t->del)
		return bd_err_set(err, -ENOENT, "Export '%s' is not found", id);
	return t->del(id, mode && !strcmp(mode, "hard"), err);
}

static int cmd_query_block_exports(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_array();
	size_t i;
	json_t *e;

	for (const struct bd_export_type *const *t = bd_export_type_table; *t; t++)
		if ((*t)->query)
			(*t)->query(list);
	/* After blockdev-snapshot an export serves the overlay (as in QEMU, which names the
	 * export's current root node). */
	json_array_foreach(list, i, e) {
		const char *nn = json_string_value(json_object_get(e, "node-name"));
		struct bd_node *n = nn ? bd_graph_find(nn) : NULL;
		struct bd_node *top = n ? bd_node_active_layer(n) : NULL;
		if (top && top != n)
			json_object_set_new(e, "node-name", json_string(bd_node_name(top)));
	}
	req->ret = list;
	return 0;
}

/* ---- NBD server ---- */

static const struct qmp_type t_inet_addr = {
	.kind = QK_OBJECT,
	.doc_name = "InetSocketAddress",
	.members = M({"host", &qmp_t_str, false, "address to listen on (127.0.0.1, ::1, ...)"},
		     {"port", &qmp_t_str, false, "port (a string, as in QEMU)"},
		     {"numeric", &qmp_t_bool, true, "host and port are numeric"},
		     {"to", &qmp_t_int, true, "not supported"},
		     {"ipv4", &qmp_t_bool, true, "use IPv4"},
		     {"ipv6", &qmp_t_bool, true, "use IPv6"},
		     {"keep-alive", &qmp_t_bool, true, "SO_KEEPALIVE on connections"},
		     {"mptcp", &qmp_t_bool, true, "not supported"})};
static const struct qmp_type t_unix_addr = {
	.kind = QK_OBJECT,
	.doc_name = "UnixSocketAddress",
	.members = M({"path", &qmp_t_str, false, "socket path"},
		     {"abstract", &qmp_t_bool, true, "abstract namespace"},
		     {"tight", &qmp_t_bool, true, "abstract address length"})};
static const struct qmp_type t_vsock_addr = {
	.kind = QK_OBJECT,
	.doc_name = "VsockSocketAddress",
	.members = M({"cid", &qmp_t_str, false, "context id"}, {"port", &qmp_t_str, false, "port"})};
static const struct qmp_type t_fd_addr = {
	.kind = QK_OBJECT,
	.doc_name = "String",
	.members = M({"str", &qmp_t_str, false,
		      "a descriptor number, or a name given to getfd"})};

static const struct qmp_type t_addr_type = {
	.kind = QK_ENUM, .values = ENUM("inet", "unix", "vsock", "fd")};

static const struct qmp_type t_socket_address_legacy = {
	.kind = QK_OBJECT,
	.doc_name = "SocketAddressLegacy",
	.members = M({"type", &t_addr_type, false, "inet, unix, vsock or fd"}),
	.tag = "type",
	.variants = (const struct qmp_variant[]){
		{"inet", M({"data", &t_inet_addr, false, "the address"})},
		{"unix", M({"data", &t_unix_addr, false, "the address"})},
		{"vsock", M({"data", &t_vsock_addr, false, "the address"})},
		{"fd", M({"data", &t_fd_addr, false, "the descriptor"})},
		{NULL}}};

static int cmd_nbd_server_start(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *addr = json_object_get(args, "addr");
	json_t *opts = json_deep_copy(args);
	/* SocketAddressLegacy {"type": T, "data": {...}} -> the flat {"type": T, ...} */
	json_t *flat = json_deep_copy(json_object_get(addr, "data"));
	json_object_set(flat, "type", json_object_get(addr, "type"));
	json_object_set_new(opts, "addr", flat);
	int r = bd_nbd_server_start(opts, err);
	json_decref(opts);
	return r;
}

static int cmd_nbd_server_stop(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	if (!bd_nbd_server_running())
		return bd_err_set(err, -ENOENT, "NBD server not running");
	bd_nbd_server_stop();
	return 0;
}

/* ---- the table ---- */

static const struct qmp_type t_node_name_arg = {
	.kind = QK_OBJECT, .members = M({"node-name", &qmp_t_str, false, "the node"})};

static const struct qmp_type t_reopen_list = {.kind = QK_ARRAY,
					      .element = &t_blockdev_options};

static const struct qmp_type t_throttle_args = {
	.kind = QK_OBJECT,
	.doc_name = "BlockIOThrottle",
	.members = M({"device", &qmp_t_str, true, "the throttle node (same as id)"},
		     {"id", &qmp_t_str, true, "the throttle filter node's node-name"},
		     {"bps", &qmp_t_int, false, "total bytes per second"},
		     {"bps_rd", &qmp_t_int, false, "read bytes per second"},
		     {"bps_wr", &qmp_t_int, false, "write bytes per second"},
		     {"iops", &qmp_t_int, false, "total operations per second"},
		     {"iops_rd", &qmp_t_int, false, "read operations per second"},
		     {"iops_wr", &qmp_t_int, false, "write operations per second"},
		     {"bps_max", &qmp_t_int, true, "burst"}, {"bps_rd_max", &qmp_t_int, true, "burst"},
		     {"bps_wr_max", &qmp_t_int, true, "burst"},
		     {"iops_max", &qmp_t_int, true, "burst"},
		     {"iops_rd_max", &qmp_t_int, true, "burst"},
		     {"iops_wr_max", &qmp_t_int, true, "burst"},
		     {"bps_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"bps_rd_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"bps_wr_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"iops_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"iops_rd_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"iops_wr_max_length", &qmp_t_int, true, "burst length (s)"},
		     {"iops_size", &qmp_t_int, true, "operation size for iops accounting"},
		     {"group", &qmp_t_str, true,
		      "the node's throttle group (checked; nodes cannot change group)"})};

static const struct qmp_type t_export_info = {
	.kind = QK_OBJECT,
	.doc_name = "BlockExportInfo",
	.members = M({"id", &qmp_t_str}, {"type", &qmp_t_str}, {"node-name", &qmp_t_str},
		     {"shutting-down", &qmp_t_bool})};
static const struct qmp_type t_export_info_list = {.kind = QK_ARRAY,
						   .element = &t_export_info};
static const struct qmp_type t_node_info_list = {.kind = QK_ARRAY, .element = &qmp_t_dict};
static const struct qmp_type t_snapshot_info = {
	.kind = QK_OBJECT,
	.doc_name = "SnapshotInfo",
	.members = M({"id", &qmp_t_str}, {"name", &qmp_t_str}, {"vm-state-size", &qmp_t_int},
		     {"date-sec", &qmp_t_int}, {"date-nsec", &qmp_t_int},
		     {"vm-clock-sec", &qmp_t_int}, {"vm-clock-nsec", &qmp_t_int})};

const struct qmp_cmd qmp_cmds_block[] = {
	{"blockdev-add", cmd_blockdev_add, &t_blockdev_options, NULL, 0,
	 "Open a node (the same options as --blockdev).  Members not listed for a driver are "
	 "refused by the driver (\"Invalid parameter 'x'\")."},
	{"blockdev-del", cmd_blockdev_del, &t_node_name_arg, NULL, 0,
	 "Close a named node.  Refused while an export or a parent node uses it."},
	{"blockdev-reopen", cmd_blockdev_reopen,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"options", &t_reopen_list, false,
			       "the complete new options of each node (same driver and "
			       "node-name)"})},
	 NULL, 0,
	 "Change the options of open nodes (read-only, detect-zeroes, discard, and what the "
	 "driver allows).  Every node is checked to exist first; the nodes are then reopened in "
	 "order (not as one transaction: an error leaves earlier nodes changed)."},
	{"query-named-block-nodes", cmd_query_named_block_nodes,
	 &(const struct qmp_type){.kind = QK_OBJECT,
				  .members = M({"flat", &qmp_t_bool, true,
						"accepted (blockd has no backing chains to omit)"})},
	 &t_node_info_list, 0,
	 "Every node, named or automatically named (QEMU's BlockDeviceInfo members, plus "
	 "blockd's \"children\", \"discard\", \"virtual-size\" and driver details)."},
	{"block_resize", cmd_block_resize,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"device", &qmp_t_str, true, "the node (as node-name)"},
			      {"node-name", &qmp_t_str, true, "the node"},
			      {"size", &qmp_t_int, false, "new size in bytes"})},
	 NULL, 0,
	 "Resize a node (growing a file, a raw window, null-co).  Works under an NBD export, "
	 "unlike qemu-storage-daemon 7.2: connected clients keep the size they negotiated (NBD "
	 "has no resize notice); new clients see the new size."},
	{"blockdev-snapshot", cmd_blockdev_snapshot,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"node", &qmp_t_str, false, "the node to snapshot (its node-name)"},
			      {"overlay", &qmp_t_str, false,
			       "the overlay: a writable qcow2 node added with backing: null, used by "
			       "nothing"})},
	 NULL, 0,
	 "External snapshot: the overlay gets the node as its backing file and takes its place "
	 "under every export and parent node, without stopping them (new requests wait for the "
	 "moment of the switch).  The node stays in the graph as the overlay's backing; its "
	 "exports keep their name and id; query-block-exports names the overlay.  The "
	 "overlay's image should name the node's file as its backing file (qemu-img create -b), "
	 "as with QEMU: the header is not rewritten."},
	{"blockdev-snapshot-internal-sync", cmd_snapshot_internal,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"device", &qmp_t_str, false, "the node (a node-name)"},
			      {"name", &qmp_t_str, false, "the new snapshot's name (not empty)"})},
	 NULL, 0,
	 "Take an internal snapshot of a node whose driver has them (qcow2), under live exports: "
	 "the driver holds new requests back for the moment it takes.  The id is the next free "
	 "number.  Errors as QEMU's: an existing name, a read-only node, a driver without "
	 "internal snapshots."},
	{"blockdev-snapshot-delete-internal-sync", cmd_snapshot_delete_internal,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"device", &qmp_t_str, false, "the node (a node-name)"},
			      {"id", &qmp_t_str, true, "the snapshot's id"},
			      {"name", &qmp_t_str, true, "the snapshot's name"})},
	 &t_snapshot_info, 0,
	 "Delete the internal snapshot matching id and/or name (at least one) and return its "
	 "SnapshotInfo.  Clusters only the snapshot used are freed."},
	{"query-blockstats", cmd_query_blockstats,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"query-nodes", &qmp_t_bool, true,
			       "list every named node (without it the list is empty, as in "
			       "qemu-storage-daemon, which has no devices)"})},
	 &t_node_info_list, 0,
	 "I/O statistics per node: QEMU's BlockDeviceStats members (operations, bytes, "
	 "total_time_ns, failed_*), plus x-zero-* (write-zeroes) and x-recent-* (operations and "
	 "average latency since the previous query-blockstats)."},
	{"block_set_io_throttle", cmd_block_set_io_throttle, &t_throttle_args, NULL,
	 QMP_CMD_BLOCKD,
	 "Set the limits of a throttle filter node's group (QEMU's arguments).  blockd has no "
	 "devices: device/id name a node of driver 'throttle', and the limits apply to its "
	 "whole throttle-group (like qom-set of the group's 'limits')."},
	{"block-export-add", cmd_block_export_add, &t_export_options, NULL, 0,
	 "Export a node (the same options as --export)."},
	{"block-export-del", cmd_block_export_del,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"id", &qmp_t_str, false, "the export"},
			      {"mode", &(const struct qmp_type){.kind = QK_ENUM,
								.values = ENUM("safe", "hard")},
			       true,
			       "safe (default): refused while clients are connected; hard: "
			       "disconnect them"})},
	 NULL, 0,
	 "Remove an export.  BLOCK_EXPORT_DELETED follows when it is gone."},
	{"query-block-exports", cmd_query_block_exports, NULL, &t_export_info_list, 0,
	 "Every export."},
	{"nbd-server-start", cmd_nbd_server_start,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"addr", &t_socket_address_legacy, false,
			       "where to listen; fd: a descriptor number or a getfd name"},
			      {"tls-creds", &qmp_t_str, true, "not supported yet (refused)"},
			      {"tls-authz", &qmp_t_str, true, "not supported yet (refused)"},
			      {"max-connections", &qmp_t_int, true, "0 = unlimited"})},
	 NULL, 0, "Start the NBD server (one per daemon)."},
	{"nbd-server-stop", cmd_nbd_server_stop, NULL, NULL, 0,
	 "Stop the NBD server, disconnecting its clients and removing every NBD export."},
	{NULL},
};
