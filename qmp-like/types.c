/*
 * types.c - the type descriptors behind argument validation, query-qmp-schema and the command
 * reference in docs/control-protocol.md: all three read the same tables.  [control; the doc
 * writer any]
 *
 * Validation follows QEMU's QObject input visitor and its messages.  The schema follows QEMU's
 * query-qmp-schema (SchemaInfo): types get numeric names, like QEMU's masked names; identical
 * types share one entry.
 */
#include "qmp-like/qmp-int.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const struct qmp_type qmp_t_str = {.kind = QK_STR};
const struct qmp_type qmp_t_int = {.kind = QK_INT};
const struct qmp_type qmp_t_size = {.kind = QK_SIZE};
const struct qmp_type qmp_t_bool = {.kind = QK_BOOL};
const struct qmp_type qmp_t_number = {.kind = QK_NUMBER};
const struct qmp_type qmp_t_any = {.kind = QK_ANY};
const struct qmp_type qmp_t_null = {.kind = QK_NULL};
const struct qmp_type qmp_t_empty = {.kind = QK_OBJECT,
				     .members = (const struct qmp_member[]){{NULL}}};
const struct qmp_type qmp_t_dict = {.kind = QK_OBJECT, .open = true,
				    .members = (const struct qmp_member[]){{NULL}}};
const struct qmp_type qmp_t_str_list = {.kind = QK_ARRAY, .element = &qmp_t_str};

/* ---- validation ---- */

static const char *expected_name(enum qmp_kind k)
{
	switch (k) {
	case QK_STR:
	case QK_ENUM:
		return "string";
	case QK_INT:
	case QK_SIZE:
		return "integer";
	case QK_BOOL:
		return "boolean";
	case QK_NUMBER:
		return "number";
	case QK_NULL:
		return "null";
	case QK_OBJECT:
	case QK_DYNAMIC:
		return "object";
	case QK_ARRAY:
		return "array";
	default:
		return "value";
	}
}

static int bad_type(const char *path, enum qmp_kind k, struct bd_err *err)
{
	if (!path || !*path)
		return bd_err_set(err, -EINVAL, "Invalid parameter type, expected: %s",
				  expected_name(k));
	return bd_err_set(err, -EINVAL, "Invalid parameter type for '%s', expected: %s", path,
			  expected_name(k));
}

static void join(char *out, size_t outlen, const char *path, const char *name)
{
	if (path && *path)
		snprintf(out, outlen, "%s.%s", path, name);
	else
		snprintf(out, outlen, "%s", name);
}

static const struct qmp_member *find_member(const struct qmp_member *m, const char *name)
{
	for (; m && m->name; m++)
		if (!strcmp(m->name, name))
			return m;
	return NULL;
}

static int check_members(const struct qmp_member *members, json_t *obj, const char *path,
			 struct bd_err *err)
{
	char sub[512];
	for (const struct qmp_member *m = members; m && m->name; m++) {
		json_t *v = json_object_get(obj, m->name);
		join(sub, sizeof(sub), path, m->name);
		if (!v) {
			if (!m->optional)
				return bd_err_set(err, -EINVAL, "Parameter '%s' is missing", sub);
			continue;
		}
		int r = qmp_type_check(m->type, v, sub, err);
		if (r < 0)
			return r;
	}
	return 0;
}

static int check_object(const struct qmp_type *t, json_t *v, const char *path, bool lenient,
			struct bd_err *err)
{
	const struct qmp_variant *var = NULL;
	const char *key;
	json_t *val;
	char sub[512];
	int r;

	if (!json_is_object(v))
		return bad_type(path, QK_OBJECT, err);
	if ((r = check_members(t->members, v, path, err)) < 0)
		return r;
	if (t->tag) {
		json_t *tv = json_object_get(v, t->tag);
		/* The tag is a member of the base (an enum), so it was checked above. */
		if (json_is_string(tv)) {
			for (var = t->variants; var && var->tag_value; var++)
				if (!strcmp(var->tag_value, json_string_value(tv)))
					break;
			if (var && !var->tag_value)
				var = NULL;
		}
		if (var && (r = check_members(var->members, v, path, err)) < 0)
			return r;
	}
	if (t->open || lenient)
		return 0;
	json_object_foreach(v, key, val)
	{
		if (find_member(t->members, key) || (var && find_member(var->members, key)))
			continue;
		join(sub, sizeof(sub), path, key);
		return bd_err_set(err, -EINVAL, "Parameter '%s' is unexpected", sub);
	}
	return 0;
}

int qmp_type_check(const struct qmp_type *t, json_t *v, const char *path, struct bd_err *err)
{
	switch (t->kind) {
	case QK_STR:
		return json_is_string(v) ? 0 : bad_type(path, t->kind, err);
	case QK_INT:
		return json_is_integer(v) ? 0 : bad_type(path, t->kind, err);
	case QK_SIZE:
		if (!json_is_integer(v))
			return bad_type(path, t->kind, err);
		if (json_integer_value(v) < 0)
			return bd_err_set(err, -EINVAL,
					  "Parameter '%s' expects uint64 (a non-negative integer)",
					  path);
		return 0;
	case QK_BOOL:
		return json_is_boolean(v) ? 0 : bad_type(path, t->kind, err);
	case QK_NUMBER:
		return json_is_number(v) ? 0 : bad_type(path, t->kind, err);
	case QK_NULL:
		return json_is_null(v) ? 0 : bad_type(path, t->kind, err);
	case QK_ANY:
		return 0;
	case QK_ENUM:
		if (!json_is_string(v))
			return bad_type(path, t->kind, err);
		for (const char *const *e = t->values; *e; e++)
			if (!strcmp(*e, json_string_value(v)))
				return 0;
		return bd_err_set(err, -EINVAL, "Parameter '%s' does not accept value '%s'", path,
				  json_string_value(v));
	case QK_ARRAY: {
		size_t i;
		json_t *e;
		char sub[512];
		if (!json_is_array(v))
			return bad_type(path, t->kind, err);
		json_array_foreach(v, i, e)
		{
			snprintf(sub, sizeof(sub), "%s[%zu]", path, i);
			int r = qmp_type_check(t->element, e, sub, err);
			if (r < 0)
				return r;
		}
		return 0;
	}
	case QK_ALTERNATE: {
		/* QEMU picks the branch by the JSON type of the value. */
		for (const struct qmp_type *const *a = t->alts; *a; a++) {
			bool match = false;
			switch ((*a)->kind) {
			case QK_STR:
			case QK_ENUM:
				match = json_is_string(v);
				break;
			case QK_INT:
			case QK_SIZE:
			case QK_NUMBER:
				match = json_is_number(v);
				break;
			case QK_BOOL:
				match = json_is_boolean(v);
				break;
			case QK_NULL:
				match = json_is_null(v);
				break;
			case QK_OBJECT:
			case QK_DYNAMIC:
				match = json_is_object(v);
				break;
			case QK_ARRAY:
				match = json_is_array(v);
				break;
			case QK_ANY:
			case QK_ALTERNATE:
				match = true;
				break;
			}
			if (match)
				return qmp_type_check(*a, v, path, err);
		}
		if (!path || !*path)
			return bd_err_set(err, -EINVAL, "Invalid parameter type");
		return bd_err_set(err, -EINVAL, "Invalid parameter type for '%s'", path);
	}
	case QK_OBJECT:
		return check_object(t, v, path, false, err);
	case QK_DYNAMIC: {
		struct qmp_type *dt = t->dynamic->build();
		int r = check_object(dt, v, path, t->dynamic->lenient, err);
		t->dynamic->free_type(dt);
		return r;
	}
	}
	return 0;
}

int qmp_args_check(const struct qmp_type *type, json_t *args, struct bd_err *err)
{
	if (!type) {
		const char *key;
		json_t *val;
		json_object_foreach(args, key, val)
			return bd_err_set(err, -EINVAL, "Parameter '%s' is unexpected", key);
		return 0;
	}
	return qmp_type_check(type, args, "", err);
}

/* ---- query-qmp-schema ---- */

struct schema {
	json_t *list;  /* the SchemaInfo array */
	json_t *index; /* canonical text of an entry without its name -> its name */
	unsigned next;
};

/* Add entry (consumed) unless an identical one exists; return its name (stable while the
 * schema is being built). */
static const char *schema_add(struct schema *s, json_t *entry, const char *fixed_name)
{
	char *key = json_dumps(entry, JSON_COMPACT | JSON_SORT_KEYS);
	json_t *have;
	char name[96];

	if (!key)
		abort();
	have = json_object_get(s->index, key);
	if (have) {
		free(key);
		json_decref(entry);
		return json_string_value(have);
	}
	if (fixed_name)
		snprintf(name, sizeof(name), "%s", fixed_name);
	else
		snprintf(name, sizeof(name), "%u", s->next++);
	json_object_set_new(entry, "name", json_string(name));
	json_array_append_new(s->list, entry);
	json_object_set_new(s->index, key, json_string(name));
	have = json_object_get(s->index, key);
	free(key);
	return json_string_value(have);
}

static const char *schema_type(struct schema *s, const struct qmp_type *t);

static json_t *schema_members(struct schema *s, const struct qmp_member *members)
{
	json_t *arr = json_array();
	for (const struct qmp_member *m = members; m && m->name; m++) {
		json_t *o = json_pack("{s:s,s:s}", "name", m->name, "type",
				      schema_type(s, m->type));
		if (m->optional)
			json_object_set_new(o, "default", json_null());
		json_array_append_new(arr, o);
	}
	return arr;
}

static const char *schema_object(struct schema *s, const struct qmp_type *t)
{
	json_t *e = json_object();
	json_object_set_new(e, "meta-type", json_string("object"));
	json_object_set_new(e, "members", schema_members(s, t->members));
	if (t->tag) {
		json_t *vars = json_array();
		json_object_set_new(e, "tag", json_string(t->tag));
		for (const struct qmp_variant *v = t->variants; v && v->tag_value; v++) {
			json_t *ve = json_object();
			json_object_set_new(ve, "meta-type", json_string("object"));
			json_object_set_new(ve, "members", schema_members(s, v->members));
			json_array_append_new(vars, json_pack("{s:s,s:s}", "case", v->tag_value,
							      "type", schema_add(s, ve, NULL)));
		}
		json_object_set_new(e, "variants", vars);
	}
	return schema_add(s, e, NULL);
}

static const char *schema_type(struct schema *s, const struct qmp_type *t)
{
	json_t *e;

	switch (t->kind) {
	case QK_STR:
		return "str";
	case QK_INT:
	case QK_SIZE:
		return "int";
	case QK_BOOL:
		return "bool";
	case QK_NUMBER:
		return "number";
	case QK_ANY:
		return "any";
	case QK_NULL:
		return "null";
	case QK_ENUM: {
		json_t *vals = json_array(), *mem = json_array();
		for (const char *const *v = t->values; *v; v++) {
			json_array_append_new(vals, json_string(*v));
			json_array_append_new(mem, json_pack("{s:s}", "name", *v));
		}
		e = json_pack("{s:s,s:o,s:o}", "meta-type", "enum", "values", vals, "members", mem);
		return schema_add(s, e, NULL);
	}
	case QK_ARRAY: {
		char name[80];
		const char *el = schema_type(s, t->element);
		snprintf(name, sizeof(name), "[%s]", el);
		e = json_pack("{s:s,s:s}", "meta-type", "array", "element-type", el);
		return schema_add(s, e, name); /* named after the element, as in QEMU */
	}
	case QK_ALTERNATE: {
		json_t *mem = json_array();
		for (const struct qmp_type *const *a = t->alts; *a; a++) {
			json_array_append_new(mem, json_pack("{s:s}", "type", schema_type(s, *a)));
		}
		e = json_pack("{s:s,s:o}", "meta-type", "alternate", "members", mem);
		return schema_add(s, e, NULL);
	}
	case QK_OBJECT:
		return schema_object(s, t);
	case QK_DYNAMIC: {
		struct qmp_type *dt = t->dynamic->build();
		const char *n = schema_object(s, dt);
		t->dynamic->free_type(dt);
		return n;
	}
	}
	return "any";
}

json_t *qmp_schema_build(void)
{
	struct schema s = {.list = json_array(), .index = json_object(), .next = 1};
	static const char *const builtins[][2] = {
		{"str", "string"}, {"int", "int"},   {"number", "number"}, {"bool", "boolean"},
		{"null", "null"},  {"any", "value"},
	};
	const char *argn, *retn;

	/* "0" is the empty object, as in QEMU */
	json_t *empty = json_pack("{s:s,s:[]}", "meta-type", "object", "members");
	schema_add(&s, empty, "0");
	for (const struct qmp_cmd *const *tab = qmp_cmd_tables; *tab; tab++) {
		for (const struct qmp_cmd *c = *tab; c->name; c++) {
			argn = c->args ? schema_type(&s, c->args) : "0";
			retn = c->ret ? schema_type(&s, c->ret) : "0";
			json_array_append_new(s.list,
					      json_pack("{s:s,s:s,s:s,s:s}", "name", c->name,
							"meta-type", "command", "arg-type", argn,
							"ret-type", retn));
		}
	}
	for (const struct qmp_event_desc *ev = qmp_events; ev->name; ev++) {
		argn = ev->data ? schema_type(&s, ev->data) : "0";
		json_array_append_new(s.list, json_pack("{s:s,s:s,s:s}", "name", ev->name,
							"meta-type", "event", "arg-type", argn));
	}
	for (size_t i = 0; i < sizeof(builtins) / sizeof(builtins[0]); i++)
		json_array_append_new(s.list, json_pack("{s:s,s:s,s:s}", "name", builtins[i][0],
							"meta-type", "builtin", "json-type",
							builtins[i][1]));
	json_decref(s.index);
	return s.list;
}

/* ---- the reference in docs/control-protocol.md ---- */

static void doc_type(FILE *out, const struct qmp_type *t)
{
	switch (t->kind) {
	case QK_STR:
		fputs("string", out);
		break;
	case QK_INT:
		fputs("int", out);
		break;
	case QK_SIZE:
		fputs("size (uint64)", out);
		break;
	case QK_BOOL:
		fputs("bool", out);
		break;
	case QK_NUMBER:
		fputs("number", out);
		break;
	case QK_ANY:
		fputs("any", out);
		break;
	case QK_NULL:
		fputs("null", out);
		break;
	case QK_ENUM:
		for (const char *const *v = t->values; *v; v++)
			fprintf(out, "%s`%s`", v == t->values ? "" : " \\| ", *v);
		break;
	case QK_ARRAY:
		fputs("array of ", out);
		doc_type(out, t->element);
		break;
	case QK_ALTERNATE:
		for (const struct qmp_type *const *a = t->alts; *a; a++) {
			if (a != t->alts)
				fputs(" or ", out);
			doc_type(out, *a);
		}
		break;
	case QK_OBJECT:
	case QK_DYNAMIC:
		fputs(t->doc_name ? t->doc_name : "object", out);
		break;
	}
}

static void doc_members(FILE *out, const struct qmp_member *m, const char *prefix)
{
	for (; m && m->name; m++) {
		fprintf(out, "| `%s%s` | ", prefix, m->name);
		doc_type(out, m->type);
		fprintf(out, " | %s | %s |\n", m->optional ? "optional" : "**required**",
			m->help ? m->help : "");
		if (m->type->kind == QK_OBJECT && m->type->members && m->type->members->name &&
		    !m->type->doc_name) {
			char sub[128];
			snprintf(sub, sizeof(sub), "%s%s.", prefix, m->name);
			doc_members(out, m->type->members, sub);
		}
	}
}

static void doc_object(FILE *out, const struct qmp_type *t)
{
	if (!t->members || !t->members->name) {
		if (!t->tag) {
			fputs("No arguments.\n", out);
			return;
		}
	}
	fputs("| argument | type | | description |\n|---|---|---|---|\n", out);
	doc_members(out, t->members, "");
	for (const struct qmp_variant *v = t->variants; v && v->tag_value; v++) {
		if (!v->members || !v->members->name)
			continue;
		char pre[128];
		snprintf(pre, sizeof(pre), "(%s=%s) ", t->tag, v->tag_value);
		doc_members(out, v->members, pre);
	}
	if (t->open)
		fputs("\nOther members are passed on unchecked.\n", out);
}

void bd_qmp_write_doc(FILE *out)
{
	fputs("<!-- generated from qmp-like/ by bd_qmp_write_doc(): do not edit by hand; "
	      "tests/unit/test-qmp-doc checks it, `test-qmp-doc --write FILE` refreshes it -->\n",
	      out);
	for (const struct qmp_cmd *const *tab = qmp_cmd_tables; *tab; tab++) {
		for (const struct qmp_cmd *c = *tab; c->name; c++) {
			fprintf(out, "\n### `%s`%s\n\n%s\n\n", c->name,
				(c->flags & QMP_CMD_BLOCKD) ? " (blockd)" : "",
				c->help ? c->help : "");
			if (!c->args) {
				fputs("No arguments.\n", out);
			} else if (c->args->kind == QK_DYNAMIC) {
				/* Only the base: the variants follow the driver/object/export
				 * tables, which other modules extend (query-qmp-schema has them). */
				struct qmp_type *dt = c->args->dynamic->build();
				struct qmp_type base = *dt;
				struct qmp_member mem[32] = {{NULL}};
				for (int i = 0; i < 31 && dt->members[i].name; i++) {
					mem[i] = dt->members[i];
					if (dt->tag && !strcmp(mem[i].name, dt->tag))
						mem[i].type = &qmp_t_str;
				}
				base.members = mem;
				base.variants = NULL;
				doc_object(out, &base);
				fprintf(out, "\nThe other members depend on `%s`: see the driver, "
					     "object or export documentation, or query-qmp-schema.\n",
					dt->tag ? dt->tag : "the type");
				c->args->dynamic->free_type(dt);
			} else {
				doc_object(out, c->args);
			}
		}
	}
	fputs("\n## Events\n", out);
	for (const struct qmp_event_desc *ev = qmp_events; ev->name; ev++) {
		fprintf(out, "\n### `%s`\n\n%s\n\n", ev->name, ev->help ? ev->help : "");
		if (ev->data && ev->data->members && ev->data->members->name) {
			fputs("| data member | type | | description |\n|---|---|---|---|\n", out);
			doc_members(out, ev->data->members, "");
		}
	}
}

const struct qmp_type *qmp_opt_type(const struct bd_opt_desc *o, struct qmp_type *scratch,
				    const struct qmp_type *child_type)
{
	switch (o->type) {
	case BD_OPT_STR:
		return &qmp_t_str;
	case BD_OPT_CHILD:
		return child_type;
	case BD_OPT_BOOL:
		return &qmp_t_bool;
	case BD_OPT_INT:
		return &qmp_t_int;
	case BD_OPT_SIZE:
		return &qmp_t_size;
	case BD_OPT_ENUM:
		if (!o->enum_values)
			return &qmp_t_str;
		scratch->kind = QK_ENUM;
		scratch->values = o->enum_values;
		return scratch;
	case BD_OPT_OBJ:
		return &qmp_t_dict;
	case BD_OPT_STR_LIST:
		return &qmp_t_str_list;
	case BD_OPT_LIST:
		return &qmp_t_any;
	}
	return &qmp_t_any;
}
