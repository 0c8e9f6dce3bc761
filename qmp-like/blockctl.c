/*
 * blockctl.c - the command-line client of blockd's control socket: raw QMP commands and
 * virsh-like verbs for nodes, exports, statistics and throttling.  Single-threaded, blocking
 * I/O with a timeout; speaks the same protocol any QMP client does (greeting, qmp_capabilities,
 * one command), so it works against qemu-storage-daemon too for the commands both have.
 *
 * The verbs live in one table (name, usage, help, handler, group); pools and volumes add their
 * pool-* / vol-* entries to it.  docs/blockctl.1.md is the manual.
 */
#include "blockd/blockd.h"
#include "qmp-like/blockctl-int.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* ---- output ---- */

static void print_json(json_t *v)
{
	char *text = json_dumps(v, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_ENCODE_ANY);
	if (text) {
		puts(text);
		free(text);
	}
}

/* for blockctl-pool.c */
bool bctl_json(struct ctx *c)
{
	return c->json;
}

void bctl_print_json(json_t *v)
{
	print_json(v);
}

struct table {
	size_t ncols, nrows;
	const char **head;
	char ***cells;
};

static void table_add(struct table *t, ...)
{
	va_list ap;
	char **row = calloc(t->ncols, sizeof(*row));
	t->cells = realloc(t->cells, (t->nrows + 1) * sizeof(*t->cells));
	if (!row || !t->cells)
		bctl_die(1, "out of memory");
	va_start(ap, t);
	for (size_t i = 0; i < t->ncols; i++) {
		const char *s = va_arg(ap, const char *);
		row[i] = strdup(s ? s : "-");
	}
	va_end(ap);
	t->cells[t->nrows++] = row;
}

static void table_print(struct table *t)
{
	size_t w[16] = {0}, total = 0;
	for (size_t i = 0; i < t->ncols; i++)
		w[i] = strlen(t->head[i]);
	for (size_t r = 0; r < t->nrows; r++)
		for (size_t i = 0; i < t->ncols; i++)
			if (strlen(t->cells[r][i]) > w[i])
				w[i] = strlen(t->cells[r][i]);
	for (size_t i = 0; i < t->ncols; i++) {
		printf(" %-*s%s", (int)w[i], t->head[i], i + 1 < t->ncols ? "  " : "\n");
		total += w[i] + 3;
	}
	for (size_t i = 0; i < total; i++)
		putchar('-');
	putchar('\n');
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t i = 0; i < t->ncols; i++) {
			printf(" %-*s%s", (int)w[i], t->cells[r][i], i + 1 < t->ncols ? "  " : "\n");
			free(t->cells[r][i]);
		}
		free(t->cells[r]);
	}
	free(t->cells);
	putchar('\n');
}

static const char *human_size(uint64_t v, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	int u = 0;
	double d = (double)v;
	while (d >= 1024 && u < 6) {
		d /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", v);
	else
		snprintf(buf, len, "%.2f %s", d, units[u]);
	return buf;
}

static const char *num(json_t *v, char *buf, size_t len)
{
	snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
	return buf;
}

/* ---- options from the command line: dotted key=value or JSON, typed by the schema ---- */

static json_t *schema_get(struct ctx *c, const char *name)
{
	if (!c->schema) {
		json_t *list = bctl_execute(c, "query-qmp-schema", NULL), *e;
		size_t i;
		c->schema = json_object();
		json_array_foreach(list, i, e)
		{
			const char *n = json_string_value(json_object_get(e, "name"));
			const char *mt = json_string_value(json_object_get(e, "meta-type"));
			char key[300];
			/* commands and types share no names except by accident: prefix commands */
			snprintf(key, sizeof(key), "%s%s", mt && !strcmp(mt, "command") ? "cmd:" : "",
				 n ? n : "");
			json_object_set(c->schema, key, e);
		}
		json_decref(list);
	}
	return json_object_get(c->schema, name);
}

static bool parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"on", "true", "yes", "1"}, *const no[] = {"off", "false",
										  "no", "0"};
	for (int i = 0; i < 4; i++) {
		if (!strcmp(s, yes[i])) {
			*out = true;
			return true;
		}
		if (!strcmp(s, no[i])) {
			*out = false;
			return true;
		}
	}
	return false;
}

static bool parse_int(const char *s, long long *out)
{
	char *end;
	errno = 0;
	long double v = strtold(s, &end);
	if (end == s || errno)
		return false;
	long double mult = 1;
	switch (*end) {
	case 'k': case 'K': mult = 1024.0L; end++; break;
	case 'M': mult = 1024.0L * 1024; end++; break;
	case 'G': mult = 1024.0L * 1024 * 1024; end++; break;
	case 'T': mult = 1024.0L * 1024 * 1024 * 1024; end++; break;
	case 'P': mult = 1024.0L * 1024 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (*end)
		return false;
	*out = (long long)(v * mult);
	return true;
}

static void convert(struct ctx *c, json_t *obj, const char *tname, const char *root);

/* A string value, as the type wants it. */
static json_t *convert_scalar(struct ctx *c, const char *s, const char *tname, const char *root)
{
	json_t *t = schema_get(c, tname);
	const char *mt = json_string_value(json_object_get(t, "meta-type"));
	if (!t)
		return NULL;
	if (!strcmp(mt, "alternate")) {
		json_t *m;
		size_t i;
		json_array_foreach(json_object_get(t, "members"), i, m)
		{
			const char *at = json_string_value(json_object_get(m, "type"));
			if (!strcmp(at, "str"))
				return NULL; /* the string itself fits */
		}
		json_array_foreach(json_object_get(t, "members"), i, m)
		{
			json_t *v = convert_scalar(c, s, json_string_value(json_object_get(m, "type")),
						   root);
			if (v)
				return v;
		}
		return NULL;
	}
	if (!strcmp(mt, "builtin")) {
		const char *jt = json_string_value(json_object_get(t, "json-type"));
		long long i;
		bool b;
		if (!strcmp(jt, "int") && parse_int(s, &i))
			return json_integer(i);
		if (!strcmp(jt, "boolean") && parse_bool(s, &b))
			return json_boolean(b);
		if (!strcmp(jt, "number"))
			return json_real(strtod(s, NULL));
	}
	return NULL;
}

static const char *member_type(struct ctx *c, json_t *t, json_t *obj, const char *key)
{
	json_t *m;
	size_t i;
	json_array_foreach(json_object_get(t, "members"), i, m)
		if (!strcmp(json_string_value(json_object_get(m, "name")), key))
			return json_string_value(json_object_get(m, "type"));
	const char *tag = json_string_value(json_object_get(t, "tag"));
	const char *tv = tag ? json_string_value(json_object_get(obj, tag)) : NULL;
	json_t *v;
	if (!tv)
		return NULL;
	json_array_foreach(json_object_get(t, "variants"), i, v)
	{
		if (strcmp(json_string_value(json_object_get(v, "case")), tv))
			continue;
		return member_type(c, schema_get(c, json_string_value(json_object_get(v, "type"))),
				   obj, key);
	}
	return NULL;
}

/* The object type to use for an object value of type tname (alternates, open dicts). */
static const char *object_branch(struct ctx *c, const char *tname, const char *root)
{
	json_t *t = schema_get(c, tname);
	const char *mt = json_string_value(json_object_get(t, "meta-type"));
	if (!t)
		return NULL;
	if (!strcmp(mt, "alternate")) {
		json_t *m;
		size_t i;
		json_array_foreach(json_object_get(t, "members"), i, m)
		{
			const char *at = json_string_value(json_object_get(m, "type"));
			json_t *a = schema_get(c, at);
			if (a && !strcmp(json_string_value(json_object_get(a, "meta-type")), "object"))
				/* an empty object branch is an inline node: BlockdevOptions again */
				return json_array_size(json_object_get(a, "members")) ? at : root;
		}
		return NULL;
	}
	return !strcmp(mt, "object") ? tname : NULL;
}

static void convert(struct ctx *c, json_t *obj, const char *tname, const char *root)
{
	json_t *t = schema_get(c, tname);
	const char *key;
	json_t *val;
	void *tmp;
	if (!t || !json_is_object(obj))
		return;
	json_object_foreach_safe(obj, tmp, key, val)
	{
		const char *mt = member_type(c, t, obj, key);
		if (!mt)
			continue;
		if (json_is_string(val)) {
			json_t *nv = convert_scalar(c, json_string_value(val), mt, root);
			if (nv)
				json_object_set_new(obj, key, nv);
		} else if (json_is_object(val)) {
			const char *b = object_branch(c, mt, root);
			if (b)
				convert(c, val, b, root);
		} else if (json_is_array(val)) {
			json_t *at = schema_get(c, mt), *e;
			const char *el = json_string_value(json_object_get(at, "element-type"));
			size_t i;
			if (!el)
				continue;
			json_array_foreach(val, i, e)
			{
				if (json_is_string(e)) {
					json_t *nv = convert_scalar(c, json_string_value(e), el, root);
					if (nv)
						json_array_set_new(val, i, nv);
				} else if (json_is_object(e)) {
					const char *b = object_branch(c, el, root);
					if (b)
						convert(c, e, b, root);
				}
			}
		}
	}
}

/* "a=1,b.c=x" or JSON -> the arguments of cmd, typed by cmd's schema. */
static json_t *parse_args(struct ctx *c, const char *cmd, const char *text, const char *implied)
{
	struct bd_err err = {0};
	json_t *o = bd_opts_parse(text, implied, &err);
	if (!o)
		bctl_die(2, "%s", err.msg);
	if (text[0] != '{') {
		char key[300];
		snprintf(key, sizeof(key), "cmd:%s", cmd);
		const char *root = json_string_value(json_object_get(schema_get(c, key), "arg-type"));
		if (root)
			convert(c, o, root, root);
	}
	return o;
}

/* ---- verbs ---- */

struct verb {
	const char *name;
	const char *group;
	const char *usage;
	const char *summary;
	const char *help;
	int (*fn)(struct ctx *c, int argc, char **argv);
	int min_args, max_args;
};

static int v_qmp(struct ctx *c, int argc, char **argv)
{
	json_t *msg, *args = NULL, *ret;
	const char *cmd;
	json_error_t e;

	if (argv[0][0] == '{') {
		msg = json_loads(argv[0], 0, &e);
		if (!msg || !json_is_object(msg))
			bctl_die(2, "the command is not a JSON object: %s", msg ? "" : e.text);
		cmd = json_string_value(json_object_get(msg, "execute"));
		if (!cmd)
			bctl_die(2, "the command has no \"execute\" member");
		args = json_incref(json_object_get(msg, "arguments"));
		char *name = strdup(cmd);
		json_decref(msg);
		ret = bctl_execute(c, name, args);
		free(name);
	} else {
		if (argc > 1) {
			args = json_loads(argv[1], 0, &e);
			if (!args || !json_is_object(args))
				bctl_die(2, "the arguments are not a JSON object: %s", args ? "" : e.text);
		}
		ret = bctl_execute(c, argv[0], args);
	}
	json_decref(args);
	print_json(ret);
	json_decref(ret);
	return 0;
}

static int v_node_list(struct ctx *c, int argc, char **argv)
{
	json_t *ret = bctl_execute(c, "query-named-block-nodes", NULL), *n;
	size_t i;
	if (c->json) {
		print_json(ret);
		json_decref(ret);
		return 0;
	}
	struct table t = {5, 0, (const char *[]){"Name", "Driver", "Size", "Access", "File"}};
	json_array_foreach(ret, i, n)
	{
		char sz[64];
		json_t *img = json_object_get(n, "image");
		json_t *vs = json_object_get(img, "virtual-size");
		if (!vs)
			vs = json_object_get(n, "virtual-size");
		table_add(&t, json_string_value(json_object_get(n, "node-name")),
			  json_string_value(json_object_get(n, "drv")),
			  human_size((uint64_t)json_integer_value(vs), sz, sizeof(sz)),
			  json_is_true(json_object_get(n, "ro")) ? "ro" : "rw",
			  json_string_value(json_object_get(n, "file")));
	}
	table_print(&t);
	json_decref(ret);
	return 0;
}

static int v_node_add(struct ctx *c, int argc, char **argv)
{
	json_t *args = parse_args(c, "blockdev-add", argv[0], "driver");
	json_decref(bctl_execute(c, "blockdev-add", args));
	printf("Node %s added\n", json_string_value(json_object_get(args, "node-name")) ?: "");
	json_decref(args);
	return 0;
}

static int v_node_del(struct ctx *c, int argc, char **argv)
{
	json_t *args = json_pack("{s:s}", "node-name", argv[0]);
	json_decref(bctl_execute(c, "blockdev-del", args));
	json_decref(args);
	printf("Node %s deleted\n", argv[0]);
	return 0;
}

static int v_node_resize(struct ctx *c, int argc, char **argv)
{
	long long size;
	if (!parse_int(argv[1], &size) || size < 0)
		bctl_die(2, "invalid size '%s'", argv[1]);
	json_t *args = json_pack("{s:s,s:I}", "node-name", argv[0], "size", (json_int_t)size);
	json_decref(bctl_execute(c, "block_resize", args));
	json_decref(args);
	printf("Node %s resized\n", argv[0]);
	return 0;
}

static int v_export_list(struct ctx *c, int argc, char **argv)
{
	json_t *ret = bctl_execute(c, "query-block-exports", NULL), *e;
	size_t i;
	if (c->json) {
		print_json(ret);
		json_decref(ret);
		return 0;
	}
	struct table t = {6, 0,
			  (const char *[]){"Id", "Type", "Node", "Name", "Access", "Clients"}};
	json_array_foreach(ret, i, e)
	{
		char cl[32] = "-";
		json_t *w = json_object_get(e, "writable");
		if (json_object_get(e, "clients"))
			num(json_object_get(e, "clients"), cl, sizeof(cl));
		table_add(&t, json_string_value(json_object_get(e, "id")),
			  json_string_value(json_object_get(e, "type")),
			  json_string_value(json_object_get(e, "node-name")),
			  json_string_value(json_object_get(e, "name")),
			  !w ? "-" : json_is_true(w) ? "rw" : "ro", cl);
	}
	table_print(&t);
	json_decref(ret);
	return 0;
}

static int v_export_add(struct ctx *c, int argc, char **argv)
{
	json_t *args = parse_args(c, "block-export-add", argv[0], "type");
	json_decref(bctl_execute(c, "block-export-add", args));
	printf("Export %s added\n", json_string_value(json_object_get(args, "id")) ?: "");
	json_decref(args);
	return 0;
}

static int v_export_del(struct ctx *c, int argc, char **argv)
{
	bool hard = false;
	const char *id = NULL;
	for (int i = 0; i < argc; i++) {
		if (!strcmp(argv[i], "--hard"))
			hard = true;
		else if (!id)
			id = argv[i];
		else
			bctl_die(2, "unexpected argument '%s'", argv[i]);
	}
	if (!id)
		bctl_die(2, "export-del needs an export id");
	json_t *args = json_pack("{s:s,s:s}", "id", id, "mode", hard ? "hard" : "safe");
	json_decref(bctl_execute(c, "block-export-del", args));
	json_decref(args);
	printf("Export %s deleted\n", id);
	return 0;
}

static int v_stats(struct ctx *c, int argc, char **argv)
{
	json_t *args = json_pack("{s:b}", "query-nodes", 1);
	json_t *ret = bctl_execute(c, "query-blockstats", args), *e, *out = json_array();
	size_t i;
	json_decref(args);
	json_array_foreach(ret, i, e)
	{
		if (argc > 0 &&
		    strcmp(json_string_value(json_object_get(e, "node-name")) ?: "", argv[0]))
			continue;
		json_array_append(out, e);
	}
	json_decref(ret);
	if (argc > 0 && !json_array_size(out))
		bctl_die(1, "no node named '%s'", argv[0]);
	if (c->json) {
		print_json(out);
		json_decref(out);
		return 0;
	}
	struct table t = {9, 0,
			  (const char *[]){"Node", "Reads", "Read bytes", "Writes", "Written",
					   "Flushes", "Errors", "Avg read lat", "Avg write lat"}};
	json_array_foreach(out, i, e)
	{
		json_t *s = json_object_get(e, "stats");
		char a[32], b[32], d[32], f[32], g[32], h[32], k[32];
		json_int_t rd = json_integer_value(json_object_get(s, "rd_operations"));
		json_int_t wr = json_integer_value(json_object_get(s, "wr_operations"));
		json_int_t errs = json_integer_value(json_object_get(s, "failed_rd_operations")) +
				  json_integer_value(json_object_get(s, "failed_wr_operations")) +
				  json_integer_value(json_object_get(s, "failed_flush_operations"));
		snprintf(g, sizeof(g), "%" JSON_INTEGER_FORMAT, errs);
		snprintf(h, sizeof(h), "%.1f us",
			 rd ? (double)json_integer_value(json_object_get(s, "rd_total_time_ns")) /
				      (double)rd / 1000.0
			    : 0.0);
		snprintf(k, sizeof(k), "%.1f us",
			 wr ? (double)json_integer_value(json_object_get(s, "wr_total_time_ns")) /
				      (double)wr / 1000.0
			    : 0.0);
		table_add(&t, json_string_value(json_object_get(e, "node-name")),
			  num(json_object_get(s, "rd_operations"), a, sizeof(a)),
			  human_size((uint64_t)json_integer_value(json_object_get(s, "rd_bytes")), b,
				     sizeof(b)),
			  num(json_object_get(s, "wr_operations"), d, sizeof(d)),
			  human_size((uint64_t)json_integer_value(json_object_get(s, "wr_bytes")), f,
				     32),
			  num(json_object_get(s, "flush_operations"), (char[32]){0}, 32), g, h, k);
	}
	table_print(&t);
	json_decref(out);
	return 0;
}

static int v_throttle_set(struct ctx *c, int argc, char **argv)
{
	json_t *limits = json_object();
	for (int i = 1; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		long long v;
		if (!eq)
			bctl_die(2, "expected KEY=VALUE, got '%s'", argv[i]);
		*eq = '\0';
		if (!parse_int(eq + 1, &v))
			bctl_die(2, "invalid number '%s' for %s", eq + 1, argv[i]);
		json_object_set_new(limits, argv[i], json_integer(v));
	}
	json_t *args = json_pack("{s:s,s:s,s:o}", "path", argv[0], "property", "limits", "value",
				 limits);
	json_decref(bctl_execute(c, "qom-set", args));
	json_decref(args);
	printf("Throttle group %s updated\n", argv[0]);
	return 0;
}

static int v_throttle_get(struct ctx *c, int argc, char **argv)
{
	json_t *args = json_pack("{s:s,s:s}", "path", argv[0], "property", "limits");
	json_t *ret = bctl_execute(c, "qom-get", args);
	json_decref(args);
	if (c->json) {
		print_json(ret);
	} else {
		struct table t = {2, 0, (const char *[]){"Limit", "Value"}};
		const char *k;
		json_t *v;
		json_object_foreach(ret, k, v)
		{
			char b[32];
			table_add(&t, k, num(v, b, sizeof(b)));
		}
		table_print(&t);
	}
	json_decref(ret);
	return 0;
}

static int v_version(struct ctx *c, int argc, char **argv)
{
	json_t *ret = bctl_execute(c, "query-version", NULL);
	if (c->json) {
		print_json(ret);
	} else {
		json_t *q = json_object_get(ret, "qemu");
		printf("blockctl %s\nserver: %s (QMP dialect of QEMU %" JSON_INTEGER_FORMAT
		       ".%" JSON_INTEGER_FORMAT ".%" JSON_INTEGER_FORMAT ")\n",
		       BD_VERSION_STRING, json_string_value(json_object_get(ret, "package")),
		       json_integer_value(json_object_get(q, "major")),
		       json_integer_value(json_object_get(q, "minor")),
		       json_integer_value(json_object_get(q, "micro")));
	}
	json_decref(ret);
	return 0;
}

static int v_help(struct ctx *c, int argc, char **argv);

/* The verbs, by group.  Pools and volumes add "pool-*" and "vol-*" entries here. */
static const struct verb verbs[] = {
	{"qmp", "Raw protocol", "qmp JSON | qmp COMMAND [ARGUMENTS-JSON]",
	 "run any command and print its return value as JSON",
	 "Runs one control-socket command.  JSON is a whole command ({\"execute\": ..., "
	 "\"arguments\": ...}); or give the command name and, optionally, its arguments as a JSON "
	 "object.  The return value is printed as JSON; an error is printed on stderr and the "
	 "exit status is 1.",
	 v_qmp, 1, 2},
	{"node-list", "Nodes", "node-list [--json]", "list the block nodes",
	 "Lists every node: name, driver, size, access (rw/ro) and file.", v_node_list, 0, 0},
	{"node-add", "Nodes", "node-add OPTIONS",
	 "open a node (blockdev-add)",
	 "OPTIONS as for blockd --blockdev: driver=DRIVER,node-name=NAME,KEY=VALUE,... (dotted "
	 "keys for children: file.driver=file,file.filename=/x) or a JSON object.  Values are "
	 "converted to the types the daemon's schema gives (sizes accept k/M/G/T suffixes).",
	 v_node_add, 1, 1},
	{"node-del", "Nodes", "node-del NAME", "close a node (blockdev-del)",
	 "Closes a named node.  Refused while an export or another node uses it.", v_node_del, 1,
	 1},
	{"node-resize", "Nodes", "node-resize NAME SIZE", "resize a node (block_resize)",
	 "SIZE in bytes, or with a k/M/G/T suffix (powers of 1024).", v_node_resize, 2, 2},
	{"export-list", "Exports", "export-list [--json]", "list the exports",
	 "Lists every export: id, type, node, export name, access and connected clients.",
	 v_export_list, 0, 0},
	{"export-add", "Exports", "export-add OPTIONS", "add an export (block-export-add)",
	 "OPTIONS as for blockd --export: type=nbd,id=ID,node-name=NODE[,name=NAME]"
	 "[,writable=on] or a JSON object.  The NBD server must be running.",
	 v_export_add, 1, 1},
	{"export-del", "Exports", "export-del ID [--hard]", "remove an export (block-export-del)",
	 "Removes an export.  Without --hard it is refused while clients are connected; with "
	 "--hard they are disconnected.",
	 v_export_del, 1, 2},
	{"stats", "Statistics and throttling", "stats [NODE] [--json]",
	 "I/O statistics per node (query-blockstats)",
	 "Operations, bytes, errors and average latency (since the node was opened) of every "
	 "named node, or of NODE.  --json prints the daemon's full statistics.",
	 v_stats, 0, 1},
	{"throttle-set", "Statistics and throttling", "throttle-set GROUP KEY=VALUE...",
	 "change a throttle group's limits",
	 "Sets limits of throttle-group GROUP at run time (qom-set of its \"limits\"); keys are "
	 "ThrottleLimits names: iops-total, iops-read, iops-write, bps-total, bps-read, "
	 "bps-write, their -max and -max-length variants, iops-size.  Limits not given keep "
	 "their value; 0 means unlimited.",
	 v_throttle_set, 2, 64},
	{"throttle-get", "Statistics and throttling", "throttle-get GROUP [--json]",
	 "show a throttle group's limits", "Prints every limit of throttle-group GROUP.",
	 v_throttle_get, 1, 1},
	{"version", "Other", "version [--json]", "the daemon's version",
	 "Prints blockctl's version and the daemon's (query-version).", v_version, 0, 0},
	{"help", "Other", "help [VERB]", "this list, or one verb's help",
	 "Without VERB, lists the verbs; with it, explains VERB.", v_help, 0, 1},
	{NULL},
};

static void usage(FILE *out)
{
	const char *group = NULL;
	fprintf(out,
		"Usage: %s [--socket PATH] [--timeout SECONDS] [--json] VERB [ARGS...]\n"
		"Control a running blockd through its control socket (default: $BLOCKD_SOCKET, "
		"else %s).\n",
		bctl_prog, DEFAULT_SOCKET);
	for (const struct verb *v = verbs; v->name; v++) {
		if (!group || strcmp(group, v->group)) {
			group = v->group;
			fprintf(out, "\n %s:\n", group);
		}
		fprintf(out, "    %-14s %s\n", v->name, v->summary);
	}
	/* pools */
	for (size_t i = 0; bctl_pool_verb_at(i); i++) {
		const struct bctl_pool_verb *v = bctl_pool_verb_at(i);
		if (!group || strcmp(group, v->group)) {
			group = v->group;
			fprintf(out, "\n %s:\n", group);
		}
		fprintf(out, "    %-14s %s\n", v->name, v->summary);
	}
	fprintf(out, "\n'%s help VERB' or '%s VERB --help' explains a verb.  Listing verbs "
		     "accept --json.\n",
		bctl_prog, bctl_prog);
}

static const struct verb *verb_find(const char *name)
{
	for (const struct verb *v = verbs; v->name; v++)
		if (!strcmp(v->name, name))
			return v;
	return NULL;
}

static void verb_help_text(const char *usage, const char *summary, const char *help)
{
	printf("Usage: %s [global options] %s\n\n  %s.\n\n", bctl_prog, usage, summary);
	/* wrap the help at 76 columns */
	const char *p = help;
	while (*p) {
		size_t n = strlen(p);
		if (n > 74) {
			n = 74;
			while (n > 0 && p[n] != ' ')
				n--;
			if (n == 0)
				n = 74;
		}
		printf("  %.*s\n", (int)n, p);
		p += n;
		while (*p == ' ')
			p++;
	}
}

static void verb_help(const struct verb *v)
{
	verb_help_text(v->usage, v->summary, v->help);
}

static int v_help(struct ctx *c, int argc, char **argv)
{
	if (argc == 0) {
		usage(stdout);
		return 0;
	}
	const struct verb *v = verb_find(argv[0]);
	const struct bctl_pool_verb *pv = bctl_pool_verb_find(argv[0]); /* pools */
	if (pv) {
		verb_help_text(pv->usage, pv->summary, pv->help);
		return 0;
	}
	if (!v)
		bctl_die(2, "unknown verb '%s'; see '%s help'", argv[0], bctl_prog);
	verb_help(v);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"socket", required_argument, NULL, 's'}, {"timeout", required_argument, NULL, 't'},
		{"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},      {NULL, 0, NULL, 0},
	};
	struct ctx c = {.fd = -1, .timeout_ms = 30000};
	int ch;

	c.socket_path = getenv("BLOCKD_SOCKET");
	if (!c.socket_path || !*c.socket_path)
		c.socket_path = DEFAULT_SOCKET;
	while ((ch = getopt_long(argc, argv, "+s:t:jhV", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			c.socket_path = optarg;
			break;
		case 't': {
			char *end;
			double t = strtod(optarg, &end);
			if (*end || t <= 0)
				bctl_die(2, "invalid --timeout '%s'", optarg);
			c.timeout_ms = (int)(t * 1000);
			break;
		}
		case 'j':
			c.json = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("blockctl %s\n", BD_VERSION_STRING);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 2;
	}
	const struct verb *v = verb_find(argv[optind]);
	const struct bctl_pool_verb *pv = v ? NULL : bctl_pool_verb_find(argv[optind]);
	if (pv) { /* pools: virsh-style verbs parse their own arguments */
		for (int i = optind + 1; i < argc; i++)
			if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
				verb_help_text(pv->usage, pv->summary, pv->help);
				return 0;
			}
		int n = 0;
		char **pargv = calloc((size_t)argc + 1, sizeof(char *));
		if (!pargv)
			bctl_die(1, "out of memory");
		for (int i = optind + 1; i < argc; i++) {
			if (!strcmp(argv[i], "--json"))
				c.json = true;
			else
				pargv[n++] = argv[i];
		}
		bctl_connect(&c);
		int pr = bctl_pool_run(&c, pv, n, pargv);
		free(pargv);
		json_decref(c.schema);
		free(c.buf);
		if (c.fd >= 0)
			close(c.fd);
		return pr;
	}
	if (!v)
		bctl_die(2, "unknown verb '%s'; see '%s --help'", argv[optind], bctl_prog);
	/* The verb's own arguments: --help and --json anywhere, the rest positional. */
	int vargc = 0;
	char **vargv = calloc((size_t)argc + 1, sizeof(char *));
	if (!vargv)
		bctl_die(1, "out of memory");
	for (int i = optind + 1; i < argc; i++) {
		if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			verb_help(v);
			free(vargv);
			return 0;
		}
		if (!strcmp(argv[i], "--json"))
			c.json = true;
		else
			vargv[vargc++] = argv[i];
	}
	int extra = !strcmp(v->name, "export-del") ? 1 : 0; /* --hard is positional here */
	if (vargc < v->min_args || vargc > v->max_args + extra) {
		fprintf(stderr, "%s: error: wrong number of arguments\nUsage: %s %s\n", bctl_prog, bctl_prog,
			v->usage);
		free(vargv);
		return 2;
	}
	if (v->fn != v_help)
		bctl_connect(&c);
	int r = v->fn(&c, vargc, vargv);
	free(vargv);
	json_decref(c.schema);
	free(c.buf);
	if (c.fd >= 0)
		close(c.fd);
	return r;
}
