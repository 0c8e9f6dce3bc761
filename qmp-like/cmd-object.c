/*
 * cmd-object.c - objects: object-add, object-del, and qom-get / qom-set on the properties
 * blockd has (a throttle-group's "limits" and its x- limits).  [control]
 */
#include "filters/throttle.h"
#include "qmp-like/qmp-int.h"

#include <stdlib.h>
#include <string.h>

#define M(...) ((const struct qmp_member[]){__VA_ARGS__, {NULL}})

/* ---- ObjectOptions from the object type table ---- */

static const struct qmp_member object_base[] = {
	{"qom-type", NULL, false, "the object type"},
	{"id", &qmp_t_str, false, "the object's id"},
	{NULL},
};

struct obj_union {
	struct qmp_type t;
	struct qmp_type tag_enum;
	const char **names;
	struct qmp_member base[3];
	struct qmp_variant *variants;
	struct qmp_member **vm;
	struct qmp_type *vt;
	size_t n;
};


static struct qmp_type *build_object_options(void)
{
	struct obj_union *u = calloc(1, sizeof(*u));
	size_t n = 0, nopts = 0;

	if (!u)
		abort();
	while (bd_object_type_table[n]) {
		for (const struct bd_opt_desc *o = bd_object_type_table[n]->options; o && o->name;
		     o++)
			nopts++;
		n++;
	}
	u->n = n;
	u->names = calloc(n + 1, sizeof(*u->names));
	u->variants = calloc(n + 1, sizeof(*u->variants));
	u->vm = calloc(n + 1, sizeof(*u->vm));
	u->vt = calloc(nopts + 1, sizeof(*u->vt));
	if (!u->names || !u->variants || !u->vm || !u->vt)
		abort();
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		const struct bd_object_type *t = bd_object_type_table[i];
		size_t cnt = 0;
		u->names[i] = t->name;
		for (const struct bd_opt_desc *o = t->options; o && o->name; o++)
			cnt++;
		u->vm[i] = calloc(cnt + 1, sizeof(struct qmp_member));
		if (!u->vm[i])
			abort();
		cnt = 0;
		for (const struct bd_opt_desc *o = t->options; o && o->name; o++, cnt++) {
			u->vm[i][cnt].name = o->name;
			u->vm[i][cnt].type = qmp_opt_type(o, &u->vt[k++], &qmp_t_str);
			u->vm[i][cnt].optional = !o->required;
			u->vm[i][cnt].help = o->help;
		}
		u->variants[i].tag_value = t->name;
		u->variants[i].members = u->vm[i];
	}
	u->tag_enum.kind = QK_ENUM;
	u->tag_enum.values = u->names;
	u->base[0] = object_base[0];
	u->base[0].type = &u->tag_enum;
	u->base[1] = object_base[1];
	u->t.kind = QK_OBJECT;
	u->t.doc_name = "ObjectOptions";
	u->t.members = u->base;
	u->t.tag = "qom-type";
	u->t.variants = u->variants;
	return &u->t;
}

static void free_object_options(struct qmp_type *t)
{
	struct obj_union *u = (struct obj_union *)t;
	for (size_t i = 0; i < u->n; i++)
		free(u->vm[i]);
	free(u->vm);
	free(u->vt);
	free(u->variants);
	free(u->names);
	free(u);
}

static const struct qmp_type t_object_options = {
	.kind = QK_DYNAMIC,
	.doc_name = "ObjectOptions",
	.dynamic = &(const struct qmp_dynamic){.build = build_object_options,
					       .free_type = free_object_options,
					       .lenient = true}};

static int cmd_object_add(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *props = json_deep_copy(args);
	int r = bd_object_add(props, err);
	json_decref(props);
	return r;
}

static int cmd_object_del(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return bd_object_del(json_string_value(json_object_get(args, "id")), err);
}

/* ---- qom-get / qom-set ---- */

/* "/objects/ID" or "ID" -> ID of an existing throttle group, or NULL (DeviceNotFound). */
static const char *qom_group(struct qmp_req *req, const char *path, struct bd_err *err)
{
	const char *id = path;
	if (!strncmp(id, "/objects/", 9))
		id += 9;
	if (bd_throttle_group_exists(id))
		return id;
	req->err_class = "DeviceNotFound";
	bd_err_set(err, -ENOENT, "Device '%s' not found", path);
	return NULL;
}

static int cmd_qom_get(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *prop = json_string_value(json_object_get(args, "property"));
	const char *id = qom_group(req, json_string_value(json_object_get(args, "path")), err);
	int64_t v;
	int r;

	if (!id)
		return err->code;
	if (!strcmp(prop, "limits")) {
		req->ret = bd_throttle_group_get_limits(id, err);
		return req->ret ? 0 : err->code;
	}
	if ((r = bd_throttle_group_get_prop(id, prop, &v, err)) < 0)
		return r;
	req->ret = json_integer((json_int_t)v);
	return 0;
}

static int cmd_qom_set(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *prop = json_string_value(json_object_get(args, "property"));
	const char *id = qom_group(req, json_string_value(json_object_get(args, "path")), err);
	json_t *value = json_object_get(args, "value");
	int64_t v;
	int r;

	if (!id)
		return err->code;
	if (!strcmp(prop, "limits")) {
		if (!json_is_object(value))
			return bd_err_set(err, -EINVAL,
					  "Invalid parameter type for 'limits', expected: object");
		return bd_throttle_group_set_limits(id, value, err);
	}
	if ((r = bd_throttle_group_get_prop(id, prop, &v, err)) < 0)
		return r;
	return bd_err_set(err, -EPERM, "Property cannot be set after initialization");
}

static const struct qmp_type t_qom_path_prop = {
	.kind = QK_OBJECT,
	.members = M({"path", &qmp_t_str, false, "the object: ID or /objects/ID"},
		     {"property", &qmp_t_str, false, "\"limits\" or an x- limit (x-iops-total...)"})};

const struct qmp_cmd qmp_cmds_object[] = {
	{"object-add", cmd_object_add, &t_object_options, NULL, 0,
	 "Create an object (the same options as --object): iothread, throttle-group, secret."},
	{"object-del", cmd_object_del,
	 &(const struct qmp_type){.kind = QK_OBJECT,
				  .members = M({"id", &qmp_t_str, false, "the object"})},
	 NULL, 0, "Delete an object; refused while it is in use (an iothread, once anything has used it)."},
	{"qom-get", cmd_qom_get, &t_qom_path_prop, &qmp_t_any, 0,
	 "Read a throttle-group's \"limits\" (ThrottleLimits) or one x- limit."},
	{"qom-set", cmd_qom_set,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"path", &qmp_t_str, false, "the object: ID or /objects/ID"},
			      {"property", &qmp_t_str, false, "\"limits\""},
			      {"value", &qmp_t_any, false,
			       "ThrottleLimits: keys not given keep their value"})},
	 NULL, 0,
	 "Change a throttle-group's \"limits\" at run time (x- limits are read-only after "
	 "creation, as in QEMU)."},
	{NULL},
};
