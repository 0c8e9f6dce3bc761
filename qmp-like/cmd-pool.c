/*
 * cmd-pool.c - storage pool and volume commands (libvirt's virsh pool-* / vol-* operations in
 * QMP form).  Thin wrappers: arguments in, pools/pools.h does the work.  [control]
 */
#include "pools/pools.h"
#include "qmp-like/qmp-int.h"

#include <stdlib.h>
#include <string.h>

#define M(...) ((const struct qmp_member[]){__VA_ARGS__, {NULL}})
#define OBJ(...) (&(const struct qmp_type){.kind = QK_OBJECT, .members = M(__VA_ARGS__)})

static const char *str(json_t *args, const char *key)
{
	return json_string_value(json_object_get(args, key));
}

static bool flag(json_t *args, const char *key)
{
	return json_is_true(json_object_get(args, key));
}

static int build_mode(json_t *args, enum bd_pool_build_mode *mode, struct bd_err *err)
{
	bool ow = flag(args, "overwrite"), no = flag(args, "no-overwrite");
	if (ow && no)
		return bd_err_set(err, -EINVAL,
				  "overwrite and no-overwrite are mutually exclusive");
	*mode = ow ? BD_BUILD_OVERWRITE : no ? BD_BUILD_NO_OVERWRITE : BD_BUILD_DEFAULT;
	return 0;
}

static json_t *name_ret(char *name)
{
	json_t *o = json_pack("{s:s}", "name", name ? name : "");
	free(name);
	return o;
}

/* ---- pools ---- */

static int cmd_pool_define(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	char *name = NULL;
	int r = bd_pool_define_xml(str(args, "xml"), &name, err);
	if (r == 0)
		req->ret = name_ret(name);
	return r;
}

static int cmd_pool_create(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	enum bd_pool_build_mode mode;
	char *name = NULL;
	int r = build_mode(args, &mode, err);
	if (r == 0 &&
	    (r = bd_pool_create_xml(str(args, "xml"), flag(args, "build"), mode, &name, err)) == 0)
		req->ret = name_ret(name);
	return r;
}

/* pool-define-as / pool-create-as: the XML from the arguments. */
static char *xml_from_args(json_t *args, struct bd_err *err)
{
	struct bd_pool_def d = {0};
	struct bd_pool_host host = {0};
	char *dev = NULL;
	d.type = (char *)str(args, "type");
	d.name = (char *)str(args, "name");
	d.perms.mode = d.perms.owner = d.perms.group = -1;
	if (bd_pool_check_name("pool", d.name, err) < 0)
		return NULL;
	if (str(args, "source-host")) {
		host.name = (char *)str(args, "source-host");
		host.port = (int)json_integer_value(json_object_get(args, "source-port"));
		d.source.hosts = &host;
		d.source.nhosts = 1;
	}
	if (str(args, "source-dev")) {
		dev = (char *)str(args, "source-dev");
		d.source.devices = &dev;
		d.source.ndevices = 1;
	}
	d.source.dir = (char *)str(args, "source-path");
	d.source.name = (char *)str(args, "source-name");
	d.source.format = (char *)str(args, "source-format");
	d.source.adapter_name = (char *)str(args, "adapter-name");
	d.source.adapter_wwnn = (char *)str(args, "adapter-wwnn");
	d.source.adapter_wwpn = (char *)str(args, "adapter-wwpn");
	d.source.adapter_parent = (char *)str(args, "adapter-parent");
	if (d.source.adapter_name || d.source.adapter_wwnn)
		d.source.adapter_type = d.source.adapter_wwnn ? "fc_host" : "scsi_host";
	d.source.auth_type = (char *)str(args, "auth-type");
	d.source.auth_username = (char *)str(args, "auth-username");
	d.source.secret_usage = (char *)str(args, "secret-usage");
	d.source.secret_uuid = (char *)str(args, "secret-uuid");
	d.source.initiator_iqn = (char *)str(args, "source-initiator");
	d.source.protocol_ver = (char *)str(args, "source-protocol-ver");
	d.target_path = (char *)str(args, "target");
	char *x = bd_pool_def_format(&d, false);
	if (!x)
		bd_err_set(err, -ENOMEM, "out of memory");
	return x;
}

static int cmd_pool_define_as(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	char *name = NULL, *xml = xml_from_args(args, err);
	int r;
	if (!xml)
		return err->code;
	if (flag(args, "print-xml")) {
		req->ret = json_pack("{s:s}", "xml", xml);
		free(xml);
		return 0;
	}
	r = bd_pool_define_xml(xml, &name, err);
	free(xml);
	if (r == 0)
		req->ret = name_ret(name);
	return r;
}

static int cmd_pool_create_as(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	enum bd_pool_build_mode mode;
	char *name = NULL, *xml;
	int r = build_mode(args, &mode, err);
	if (r < 0 || !(xml = xml_from_args(args, err)))
		return err->code;
	if (flag(args, "print-xml")) {
		req->ret = json_pack("{s:s}", "xml", xml);
		free(xml);
		return 0;
	}
	r = bd_pool_create_xml(xml, flag(args, "build"), mode, &name, err);
	free(xml);
	if (r == 0)
		req->ret = name_ret(name);
	return r;
}

static int cmd_pool_build(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	enum bd_pool_build_mode mode;
	int r = build_mode(args, &mode, err);
	return r < 0 ? r : bd_pool_build(str(args, "pool"), mode, err);
}

static int cmd_pool_start(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	enum bd_pool_build_mode mode;
	int r = build_mode(args, &mode, err);
	return r < 0 ? r : bd_pool_start(str(args, "pool"), flag(args, "build"), mode, err);
}

static int cmd_pool_destroy(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_pool_destroy(str(args, "pool"), err);
}

static int cmd_pool_delete(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_pool_delete(str(args, "pool"), err);
}

static int cmd_pool_undefine(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_pool_undefine(str(args, "pool"), err);
}

static int cmd_pool_autostart(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_pool_set_autostart(str(args, "pool"), !flag(args, "disable"), err);
}

static int cmd_pool_refresh(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_pool_refresh(str(args, "pool"), err);
}

static int cmd_query_pools(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *all = bd_pool_list(), *p, *out = json_array(),
	       *types = json_object_get(args, "type");
	size_t i;
	bool want_inactive = flag(args, "inactive"), want_active = flag(args, "active");
	bool want_all = flag(args, "all") || (!want_inactive && !want_active);
	if (!json_object_get(args, "all") && !want_inactive && !want_active)
		want_all = true;
	json_array_foreach(all, i, p)
	{
		bool active = json_is_true(json_object_get(p, "active"));
		bool persistent = json_is_true(json_object_get(p, "persistent"));
		bool autostart = json_is_true(json_object_get(p, "autostart"));
		if (!want_all && !((want_active && active) || (want_inactive && !active)))
			continue;
		if ((flag(args, "persistent") && !persistent) ||
		    (flag(args, "transient") && persistent) ||
		    (flag(args, "autostart") && !autostart) ||
		    (flag(args, "no-autostart") && autostart))
			continue;
		if (json_array_size(types)) {
			json_t *t;
			size_t k;
			bool match = false;
			json_array_foreach(types, k, t) match |= !strcmp(
			    json_string_value(t), json_string_value(json_object_get(p, "type")));
			if (!match)
				continue;
		}
		json_array_append(out, p);
	}
	json_decref(all);
	req->ret = out;
	return 0;
}

static int cmd_pool_info(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = bd_pool_info(str(args, "pool"), err);
	return req->ret ? 0 : err->code;
}

static int cmd_pool_dumpxml(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	char *x = bd_pool_dumpxml(str(args, "pool"), flag(args, "inactive"), err);
	if (!x)
		return err->code;
	req->ret = json_pack("{s:s}", "xml", x);
	free(x);
	return 0;
}

static int cmd_pool_capabilities(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = bd_pool_capabilities();
	return 0;
}

static int cmd_find_sources(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	char *x = bd_pool_find_sources(str(args, "type"), str(args, "spec"), err);
	if (!x)
		return err->code;
	req->ret = json_pack("{s:s}", "xml", x);
	free(x);
	return 0;
}

/* ---- volumes ---- */

static int cmd_vol_create(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	uint64_t id = 0;
	struct bd_vol_create_opts o = {.prealloc_metadata = flag(args, "prealloc-metadata"),
				       .from_pool = str(args, "input-pool"),
				       .from_vol = str(args, "input-vol"),
				       .job_id = flag(args, "async") ? &id : NULL};
	char *name = NULL;
	int r = bd_vol_create_xml(str(args, "pool"), str(args, "xml"), &o, &name, err);
	if (r == 0) {
		req->ret = name_ret(name);
		if (flag(args, "async"))
			json_object_set_new(req->ret, "job", json_integer((json_int_t)id));
	}
	return r;
}

static int cmd_vol_create_as(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	struct bd_vol_create_opts o = {.prealloc_metadata = flag(args, "prealloc-metadata")};
	struct bd_vol_def *d = calloc(1, sizeof(*d));
	json_t *a = json_object_get(args, "allocation");
	const char *fmt = str(args, "format"), *bv = str(args, "backing-vol"),
		   *bf = str(args, "backing-vol-format");
	if (!d)
		return bd_err_set(err, -ENOMEM, "out of memory");
	d->name = strdup(str(args, "name"));
	d->capacity = (uint64_t)json_integer_value(json_object_get(args, "capacity"));
	d->has_capacity = true;
	if (a) {
		d->allocation = (uint64_t)json_integer_value(a);
		d->has_allocation = true;
	}
	d->format = fmt ? strdup(fmt) : NULL;
	d->backing_path = bv ? strdup(bv) : NULL;
	d->backing_format = bf ? strdup(bf) : NULL;
	d->perms.mode = d->perms.owner = d->perms.group = -1;
	if (str(args, "compat"))
		d->compat = strdup(str(args, "compat"));
	if (fmt && !strcmp(fmt, "qcow2") && !d->compat)
		d->compat = strdup("1.1");
	if (flag(args, "print-xml")) {
		char *x = bd_vol_def_format(d);
		bd_vol_def_free(d);
		req->ret = json_pack("{s:s}", "xml", x ? x : "");
		free(x);
		return 0;
	}
	char *name = strdup(d->name);
	int r = bd_vol_create_def(str(args, "pool"), d, &o, err);
	if (r == 0)
		req->ret = name_ret(name);
	else
		free(name);
	return r;
}

static int cmd_vol_clone(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	uint64_t id = 0;
	struct bd_vol_create_opts o = {.prealloc_metadata = flag(args, "prealloc-metadata"),
				       .from_pool = str(args, "pool"),
				       .from_vol = str(args, "vol"),
				       .job_id = flag(args, "async") ? &id : NULL};
	struct bd_vol_def *d = calloc(1, sizeof(*d));
	if (!d)
		return bd_err_set(err, -ENOMEM, "out of memory");
	d->name = strdup(str(args, "newname"));
	d->perms.mode = d->perms.owner = d->perms.group = -1;
	const char *target =
	    str(args, "target-pool") ? str(args, "target-pool") : str(args, "pool");
	int r = bd_vol_create_def(target, d, &o, err);
	if (r == 0) {
		req->ret = json_pack("{s:s}", "name", str(args, "newname"));
		if (flag(args, "async"))
			json_object_set_new(req->ret, "job", json_integer((json_int_t)id));
	}
	return r;
}

static int cmd_vol_delete(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_vol_delete_flags(str(args, "pool"), str(args, "vol"),
				   flag(args, "delete-snapshots") ? BD_VOL_DELETE_SNAPSHOTS : 0, err);
}

static int cmd_vol_resize(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	unsigned f = (flag(args, "delta") ? BD_RESIZE_DELTA : 0) |
		     (flag(args, "shrink") ? BD_RESIZE_SHRINK : 0) |
		     (flag(args, "allocate") ? BD_RESIZE_ALLOCATE : 0);
	return bd_vol_resize(str(args, "pool"), str(args, "vol"),
			     (uint64_t)json_integer_value(json_object_get(args, "capacity")), f,
			     err);
}

/* async: the reply {"job": N} comes at once, POOL_VOLUME_JOB_COMPLETED at the end (N = 0:
 * nothing left to wait for). */
static int job_ret(struct qmp_req *req, json_t *args, int r, uint64_t id)
{
	if (r == 0 && flag(args, "async"))
		req->ret = json_pack("{s:I}", "job", (json_int_t)id);
	return r;
}

static int cmd_vol_wipe(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	uint64_t id = 0;
	int r = bd_vol_wipe(str(args, "pool"), str(args, "vol"), str(args, "algorithm"),
			    flag(args, "async") ? &id : NULL, err);
	return job_ret(req, args, r, id);
}

/* upload/download: a file on the daemon's host, or a descriptor passed with getfd (consumed) */
static int file_or_fd(json_t *args, const char **file, int *fd, struct bd_err *err)
{
	const char *name = str(args, "fd");
	*file = str(args, "file");
	*fd = -1;
	if (!!name == !!*file)
		return bd_err_set(err, -EINVAL, "exactly one of 'file' and 'fd' is needed");
	if (name && (*fd = bd_qmp_fd_lookup(name)) < 0)
		return bd_err_set(err, -ENOENT, "File descriptor named '%s' not found", name);
	return 0;
}

static int cmd_vol_upload(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	uint64_t id = 0;
	const char *file;
	int fd, r = file_or_fd(args, &file, &fd, err);
	if (r < 0)
		return r;
	r = bd_vol_upload(str(args, "pool"), str(args, "vol"), file, fd,
			  (uint64_t)json_integer_value(json_object_get(args, "offset")),
			  (uint64_t)json_integer_value(json_object_get(args, "length")),
			  flag(args, "async") ? &id : NULL, err);
	return job_ret(req, args, r, id);
}

static int cmd_vol_download(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	uint64_t id = 0;
	const char *file;
	int fd, r = file_or_fd(args, &file, &fd, err);
	if (r < 0)
		return r;
	r = bd_vol_download(str(args, "pool"), str(args, "vol"), file, fd,
			    (uint64_t)json_integer_value(json_object_get(args, "offset")),
			    (uint64_t)json_integer_value(json_object_get(args, "length")),
			    flag(args, "sparse"), flag(args, "async") ? &id : NULL, err);
	return job_ret(req, args, r, id);
}

static int cmd_query_volume_jobs(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	(void)args;
	(void)err;
	req->ret = bd_vol_jobs();
	return 0;
}

static int cmd_query_volumes(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = bd_vol_list(str(args, "pool"), err);
	return req->ret ? 0 : err->code;
}

static int cmd_vol_info(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = bd_vol_info(str(args, "pool"), str(args, "vol"), err);
	return req->ret ? 0 : err->code;
}

static int cmd_vol_dumpxml(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	char *x = bd_vol_dumpxml(str(args, "pool"), str(args, "vol"), err);
	if (!x)
		return err->code;
	req->ret = json_pack("{s:s}", "xml", x);
	free(x);
	return 0;
}

static int cmd_vol_open(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_vol_open(str(args, "pool"), str(args, "vol"), str(args, "node-name"),
			   str(args, "format"), flag(args, "read-only"), err);
}

/* ---- the table ---- */

#define POOL_ARG                                                                                   \
	{                                                                                          \
		"pool", &qmp_t_str, false, "the pool's name or UUID"                               \
	}
#define VOL_ARGS                                                                                   \
	{"pool", &qmp_t_str, true, "the pool (without it, vol is a volume's path or key)"},        \
	{                                                                                          \
		"vol", &qmp_t_str, false, "the volume's name (or path/key without pool)"           \
	}
#define BUILD_ARGS                                                                                 \
	{"overwrite", &qmp_t_bool, true, "build even over existing data (mkfs)"},                  \
	{                                                                                          \
		"no-overwrite", &qmp_t_bool, true, "refuse to build over existing data"            \
	}
#define AS_ARGS                                                                                    \
	{"name", &qmp_t_str, false, "the pool's name"},                                            \
	    {"type", &qmp_t_str, false, "the pool type (dir, fs, disk, logical, ...)"},            \
	    {"source-host", &qmp_t_str, true, "source host name"},                                 \
	    {"source-port", &qmp_t_int, true, "source host port"},                                 \
	    {"source-path", &qmp_t_str, true, "source directory (<source><dir>)"},                 \
	    {"source-dev", &qmp_t_str, true, "source device (<source><device>)"},                  \
	    {"source-name", &qmp_t_str, true, "source name (volume group, ...)"},                  \
	    {"source-format", &qmp_t_str, true, "source format (ext4, xfs, gpt, lvm2...)"},        \
	    {"source-initiator", &qmp_t_str, true, "iSCSI initiator IQN"},                         \
	    {"source-protocol-ver", &qmp_t_str, true, "NFS protocol version"},                     \
	    {"auth-type", &qmp_t_str, true, "chap or ceph"},                                       \
	    {"auth-username", &qmp_t_str, true, "auth user name"},                                 \
	    {"secret-usage", &qmp_t_str, true, "the secret's usage"},                              \
	    {"secret-uuid", &qmp_t_str, true, "the secret's UUID"},                                \
	    {"adapter-name", &qmp_t_str, true, "SCSI adapter name"},                               \
	    {"adapter-wwnn", &qmp_t_str, true, "FC adapter WWNN"},                                 \
	    {"adapter-wwpn", &qmp_t_str, true, "FC adapter WWPN"},                                 \
	    {"adapter-parent", &qmp_t_str, true, "FC adapter parent"},                             \
	    {"target", &qmp_t_str, true, "the target path"},                                       \
	{                                                                                          \
		"print-xml", &qmp_t_bool, true, "only return the XML"                              \
	}

#define ASYNC_ARG                                                                                  \
	{                                                                                          \
		"async", &qmp_t_bool, true,                                                        \
		    "move the data on a worker thread: returns {job}, then the event "             \
		    "POOL_VOLUME_JOB_COMPLETED"                                                    \
	}

static const struct qmp_type t_xml_ret = {.kind = QK_OBJECT,
					  .members = M({"xml", &qmp_t_str, false, "libvirt XML"})};
static const struct qmp_type t_name_ret = {.kind = QK_OBJECT,
					   .members = M({"name", &qmp_t_str, false, "the name"})};

const struct qmp_cmd qmp_cmds_pool[] = {
    {"pool-define", cmd_pool_define, OBJ({"xml", &qmp_t_str, false, "libvirt pool XML"}),
     &t_name_ret, QMP_CMD_BLOCKD,
     "Define a persistent storage pool from libvirt's pool XML (virsh pool-define); it is "
     "written to the state directory."},
    {"pool-define-as", cmd_pool_define_as, OBJ(AS_ARGS), &qmp_t_any, QMP_CMD_BLOCKD,
     "Define a persistent pool from arguments (virsh pool-define-as)."},
    {"pool-create", cmd_pool_create,
     OBJ({"xml", &qmp_t_str, false, "libvirt pool XML"},
	 {"build", &qmp_t_bool, true, "build before starting"}, BUILD_ARGS),
     &t_name_ret, QMP_CMD_BLOCKD,
     "Create and start a transient pool from XML (virsh pool-create); it vanishes when "
     "stopped."},
    {"pool-create-as", cmd_pool_create_as,
     OBJ(AS_ARGS, {"build", &qmp_t_bool, true, "build before starting"}, BUILD_ARGS), &qmp_t_any,
     QMP_CMD_BLOCKD, "Create and start a transient pool from arguments."},
    {"pool-build", cmd_pool_build, OBJ(POOL_ARG, BUILD_ARGS), NULL, QMP_CMD_BLOCKD,
     "Build a pool: create its directory; mkfs for fs pools (refused over an existing "
     "file system unless overwrite)."},
    {"pool-start", cmd_pool_start,
     OBJ(POOL_ARG, {"build", &qmp_t_bool, true, "build first"}, BUILD_ARGS), NULL, QMP_CMD_BLOCKD,
     "Start (activate) a defined pool: mount for fs pools, then refresh."},
    {"pool-destroy", cmd_pool_destroy, OBJ(POOL_ARG), NULL, QMP_CMD_BLOCKD,
     "Stop a pool (umount for fs pools); a transient pool is forgotten.  Refused while a "
     "node uses one of its volumes."},
    {"pool-delete", cmd_pool_delete, OBJ(POOL_ARG), NULL, QMP_CMD_BLOCKD,
     "Delete an inactive pool's storage (its directory, which must be empty)."},
    {"pool-undefine", cmd_pool_undefine, OBJ(POOL_ARG), NULL, QMP_CMD_BLOCKD,
     "Remove an inactive pool's persistent definition."},
    {"pool-autostart", cmd_pool_autostart,
     OBJ(POOL_ARG, {"disable", &qmp_t_bool, true, "turn autostart off"}), NULL, QMP_CMD_BLOCKD,
     "Start the pool whenever blockd starts (or not, with disable)."},
    {"pool-refresh", cmd_pool_refresh, OBJ(POOL_ARG), NULL, QMP_CMD_BLOCKD,
     "Rescan a running pool's volumes and space (incremental)."},
    {"query-pools", cmd_query_pools,
     OBJ({"all", &qmp_t_bool, true, "active and inactive (the default)"},
	 {"active", &qmp_t_bool, true, "only active pools"},
	 {"inactive", &qmp_t_bool, true, "only inactive pools"},
	 {"persistent", &qmp_t_bool, true, "only persistent pools"},
	 {"transient", &qmp_t_bool, true, "only transient pools"},
	 {"autostart", &qmp_t_bool, true, "only autostart pools"},
	 {"no-autostart", &qmp_t_bool, true, "only pools without autostart"},
	 {"type", &qmp_t_str_list, true, "only these pool types"}),
     &qmp_t_any, QMP_CMD_BLOCKD,
     "List pools (virsh pool-list): name, uuid, type, state, active, persistent, "
     "autostart, capacity, allocation, available (bytes, active pools), target."},
    {"pool-info", cmd_pool_info, OBJ(POOL_ARG), &qmp_t_any, QMP_CMD_BLOCKD,
     "One pool, as in query-pools."},
    {"pool-dumpxml", cmd_pool_dumpxml,
     OBJ(POOL_ARG, {"inactive", &qmp_t_bool, true, "the definition without run-time sizes"}),
     &t_xml_ret, QMP_CMD_BLOCKD, "The pool's XML."},
    {"pool-capabilities", cmd_pool_capabilities, NULL, &qmp_t_any, QMP_CMD_BLOCKD,
     "Every libvirt pool type with whether blockd supports it: {xml, types: [{type, "
     "supported, buildable}]}."},
    {"find-storage-pool-sources", cmd_find_sources,
     OBJ({"type", &qmp_t_str, false, "pool type"},
	 {"spec", &qmp_t_str, true, "source XML (unused by the fs probe)"}),
     &t_xml_ret, QMP_CMD_BLOCKD,
     "Probe for pool sources (fs: devices with a file system; logical: volume groups)."},

    {"vol-create", cmd_vol_create,
     OBJ(POOL_ARG, {"xml", &qmp_t_str, false, "libvirt volume XML"},
	 {"prealloc-metadata", &qmp_t_bool, true, "qcow2: preallocate metadata"},
	 {"input-vol", &qmp_t_str, true, "create from this volume (vol-create-from)"},
	 {"input-pool", &qmp_t_str, true, "the input volume's pool (default: pool)"}, ASYNC_ARG),
     &qmp_t_any, QMP_CMD_BLOCKD, "Create a volume from XML (virsh vol-create, -from)."},
    {"vol-create-as", cmd_vol_create_as,
     OBJ(POOL_ARG, {"name", &qmp_t_str, false, "the volume's name"},
	 {"capacity", &qmp_t_size, false, "bytes"},
	 {"allocation", &qmp_t_size, true, "bytes to allocate up front (raw)"},
	 {"format", &qmp_t_str, true, "raw (default) or qcow2"},
	 {"compat", &qmp_t_str, true, "qcow2: 0.10 or 1.1 (default)"},
	 {"backing-vol", &qmp_t_str, true, "qcow2: backing volume (name in pool, or path)"},
	 {"backing-vol-format", &qmp_t_str, true, "the backing volume's format"},
	 {"prealloc-metadata", &qmp_t_bool, true, "qcow2: preallocate metadata"},
	 {"print-xml", &qmp_t_bool, true, "only return the XML"}),
     &qmp_t_any, QMP_CMD_BLOCKD, "Create a volume from arguments (virsh vol-create-as)."},
    {"vol-clone", cmd_vol_clone,
     OBJ(VOL_ARGS, {"newname", &qmp_t_str, false, "the new volume"},
	 {"target-pool", &qmp_t_str, true, "create the clone in this pool"},
	 {"prealloc-metadata", &qmp_t_bool, true, "qcow2: preallocate metadata"}, ASYNC_ARG),
     &qmp_t_any, QMP_CMD_BLOCKD, "Copy a volume (virsh vol-clone)."},
    {"vol-delete", cmd_vol_delete,
     OBJ(VOL_ARGS, {"delete-snapshots", &qmp_t_bool, true, "remove its snapshots too (rbd)"}),
     NULL, QMP_CMD_BLOCKD,
     "Delete a volume; refused while a node uses it."},
    {"vol-resize", cmd_vol_resize,
     OBJ(VOL_ARGS, {"capacity", &qmp_t_size, false, "new capacity (or delta) in bytes"},
	 {"delta", &qmp_t_bool, true, "capacity is a change"},
	 {"shrink", &qmp_t_bool, true, "allow shrinking"},
	 {"allocate", &qmp_t_bool, true, "allocate the new space (raw)"}),
     NULL, QMP_CMD_BLOCKD, "Change a volume's capacity (virsh vol-resize)."},
    {"vol-wipe", cmd_vol_wipe,
     OBJ(VOL_ARGS,
	 {"algorithm", &qmp_t_str, true,
	  "zero (default), trim, random, nnsa, dod, bsi, gutmann, schneier, pfitzner7 or "
	  "pfitzner33"},
	 ASYNC_ARG),
     &qmp_t_any, QMP_CMD_BLOCKD, "Wipe a volume's data (virsh vol-wipe)."},
    {"vol-upload", cmd_vol_upload,
     OBJ(VOL_ARGS, {"file", &qmp_t_str, true, "a file on the daemon's host to read"},
	 {"fd", &qmp_t_str, true,
	  "instead of file: a descriptor passed with getfd (a file, pipe or socket)"},
	 {"offset", &qmp_t_size, true, "where in the volume"},
	 {"length", &qmp_t_size, true, "bytes (default: the whole file)"}, ASYNC_ARG),
     &qmp_t_any, QMP_CMD_BLOCKD, "Copy a file's bytes into the volume (virsh vol-upload)."},
    {"vol-download", cmd_vol_download,
     OBJ(VOL_ARGS, {"file", &qmp_t_str, true, "a file on the daemon's host to write"},
	 {"fd", &qmp_t_str, true,
	  "instead of file: a descriptor passed with getfd (a file, pipe or socket)"},
	 {"offset", &qmp_t_size, true, "where in the volume"},
	 {"length", &qmp_t_size, true, "bytes (default: to the end)"},
	 {"sparse", &qmp_t_bool, true, "leave zero blocks as holes"}, ASYNC_ARG),
     &qmp_t_any, QMP_CMD_BLOCKD, "Copy the volume's bytes into a file (virsh vol-download)."},
    {"query-volume-jobs", cmd_query_volume_jobs, NULL, &qmp_t_any, QMP_CMD_BLOCKD,
     "The running volume jobs (wipe, upload, download, clone) with their progress: "
     "[{job, pool, vol, operation, done, total}] in bytes (total 0 when unknown)."},
    {"query-volumes", cmd_query_volumes, OBJ(POOL_ARG), &qmp_t_any, QMP_CMD_BLOCKD,
     "The volumes of a running pool (virsh vol-list): name, path, key, type, format, "
     "capacity, allocation, physical."},
    {"vol-info", cmd_vol_info, OBJ(VOL_ARGS), &qmp_t_any, QMP_CMD_BLOCKD,
     "One volume, as in query-volumes, plus its pool."},
    {"vol-dumpxml", cmd_vol_dumpxml, OBJ(VOL_ARGS), &t_xml_ret, QMP_CMD_BLOCKD,
     "The volume's XML."},
    {"vol-open", cmd_vol_open,
     OBJ(VOL_ARGS, {"node-name", &qmp_t_str, false, "the new node's name"},
	 {"read-only", &qmp_t_bool, true, "open read-only"},
	 {"format", &qmp_t_str, true,
	  "the format driver (default: the probed format where a forged header cannot reach "
	  "other files: raw, qcow2 or qed backed inside a pool, vdi, vpc)"}),
     NULL, QMP_CMD_BLOCKD,
     "Open a volume as a graph node: a format node (raw, qcow2; vmdk, vdi, vpc and qed "
     "read-only) over a file or host_device node; delete it with blockdev-del."},
    {NULL},
};
