/*
 * blockctl-pool.c - blockctl's storage pool and volume verbs, with virsh's names, arguments
 * (positional or --name VALUE, in virsh's order), messages and table layout, so that a virsh
 * storage tutorial works with blockctl in its place.  Single-threaded.
 */
#include "blockd/blockd.h"
#include "pools/pools.h"
#include "qmp-like/blockctl-int.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

/* ---- arguments ---- */

static bool has_opt(const struct bctl_pool_verb *v, const char *name, bool *is_flag)
{
	for (const char *const *o = v->opts; o && *o; o++)
		if (!strcmp(*o + 1, name)) {
			*is_flag = (*o)[0] == '!';
			return true;
		}
	for (const char *const *p = v->pos; p && *p; p++)
		if (!strcmp(*p, name)) {
			*is_flag = false;
			return true;
		}
	return false;
}

/* argv -> {name: "value" | true}.  Exits 2 on a usage error. */
static json_t *parse_argv(const struct bctl_pool_verb *v, int argc, char **argv)
{
	json_t *a = json_object();
	int npos = 0;
	for (int i = 0; i < argc; i++) {
		const char *s = argv[i];
		if (!strncmp(s, "--", 2) && s[2]) {
			char name[128];
			const char *eq = strchr(s + 2, '=');
			bool is_flag;
			snprintf(name, sizeof(name), "%.*s", eq ? (int)(eq - s - 2) : 127, s + 2);
			if (!has_opt(v, name, &is_flag))
				bctl_die(2, "command '%s' doesn't support option --%s", v->name,
					 name);
			if (is_flag) {
				json_object_set_new(a, name, json_true());
			} else if (eq) {
				json_object_set_new(a, name, json_string(eq + 1));
			} else {
				if (i + 1 >= argc)
					bctl_die(2, "expected syntax: --%s <string>", name);
				json_object_set_new(a, name, json_string(argv[++i]));
			}
			continue;
		}
		/* the next positional not given as an option */
		const char *const *p = v->pos;
		int k = 0;
		while (p && p[k] && json_object_get(a, p[k]))
			k++;
		if (!p || !p[k])
			bctl_die(2, "unexpected data '%s'", s);
		json_object_set_new(a, p[k], json_string(s));
		npos++;
	}
	for (int k = 0; k < v->required; k++)
		if (!json_object_get(a, v->pos[k]))
			bctl_die(2, "command '%s' requires <%s> option", v->name, v->pos[k]);
	return a;
}

static const char *sa(json_t *a, const char *k)
{
	return json_string_value(json_object_get(a, k));
}

static bool fa(json_t *a, const char *k)
{
	return json_is_true(json_object_get(a, k));
}

static uint64_t size_arg(json_t *a, const char *k)
{
	struct bd_err err = {0};
	uint64_t v;
	if (bd_pool_scale(sa(a, k), NULL, &v, &err) < 0)
		bctl_die(2,
			 "Scaled numeric value '%s' for <%s> option is malformed or out of range",
			 sa(a, k), k);
	return v;
}

static char *read_file(const char *path)
{
	FILE *f = strcmp(path, "-") ? fopen(path, "re") : stdin;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	if (!f)
		bctl_die(1, "Failed to open file '%s': %m", path);
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? cap * 2 : 65536;
			if (cap > (64u << 20))
				bctl_die(1, "file '%s' is too large", path);
			buf = realloc(buf, cap);
			if (!buf)
				bctl_die(1, "out of memory");
		}
		size_t n = fread(buf + len, 1, cap - len - 1, f);
		if (n == 0)
			break;
		len += n;
	}
	if (f != stdin)
		fclose(f);
	buf[len] = '\0';
	return buf;
}

/* ---- output: virsh's layout ---- */

/* vshPrettyCapacity: "%.2lf %s" in binary units. */
static const char *pretty(uint64_t v, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
	double d = (double)v;
	int u = 0;
	while (d >= 1024 && u < 6) {
		d /= 1024;
		u++;
	}
	snprintf(buf, len, "%.2lf %s", d, units[u]);
	return buf;
}

struct vtable {
	size_t ncols, nrows;
	char **cells; /* row-major, header first */
};

static void vt_row(struct vtable *t, const char *const *cells)
{
	t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(char *));
	if (!t->cells)
		bctl_die(1, "out of memory");
	for (size_t i = 0; i < t->ncols; i++)
		t->cells[t->nrows * t->ncols + i] = strdup(cells[i] ? cells[i] : "-");
	t->nrows++;
}

/* virsh's vshTable: a space, the cell, padding to the column's width plus two spaces (not
 * after the last column); under the header a line of dashes as wide as the columns plus three
 * each. */
static void vt_print(struct vtable *t)
{
	size_t w[16] = {0}, total = 0;
	for (size_t r = 0; r < t->nrows; r++)
		for (size_t i = 0; i < t->ncols; i++) {
			size_t l = strlen(t->cells[r * t->ncols + i]);
			if (l > w[i])
				w[i] = l;
		}
	for (size_t r = 0; r < t->nrows; r++) {
		for (size_t i = 0; i < t->ncols; i++) {
			const char *s = t->cells[r * t->ncols + i];
			printf(" %s", s);
			if (i + 1 < t->ncols)
				printf("%*s", (int)(w[i] - strlen(s) + 2), "");
			free(t->cells[r * t->ncols + i]);
		}
		putchar('\n');
		if (r == 0) {
			for (size_t i = 0; i < t->ncols; i++)
				total += w[i] + 3;
			for (size_t i = 0; i < total; i++)
				putchar('-');
			putchar('\n');
		}
	}
	free(t->cells);
	putchar('\n');
}

static json_t *run(struct ctx *c, const char *cmd, json_t *args)
{
	json_t *r = bctl_execute(c, cmd, args);
	json_decref(args);
	return r;
}

/* Run a data-moving command on the daemon's worker thread (so the control socket stays
 * responsive for other clients) and wait for its completion event.  The command's return. */
static json_t *run_job(struct ctx *c, const char *cmd, json_t *args)
{
	json_object_set_new(args, "async", json_true());
	json_t *r = run(c, cmd, args);
	json_int_t job = json_integer_value(json_object_get(r, "job"));
	if (job <= 0)
		return r;
	json_t *ev = bctl_wait_vol_job(c, job, !bctl_json(c) && isatty(STDERR_FILENO));
	const char *e = json_string_value(json_object_get(ev, "error"));
	if (e)
		bctl_die(1, "%s: %s", cmd, e);
	json_decref(ev);
	return r;
}

static void done(json_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void done(json_t *r, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n\n");
	json_decref(r); /* after printing: the arguments may point into r */
}

/* ---- pool verbs ---- */

static int p_define(struct ctx *c, json_t *a)
{
	char *xml = read_file(sa(a, "file"));
	json_t *r = run(c, "pool-define", json_pack("{s:s}", "xml", xml));
	free(xml);
	done(r, "Pool %s defined from %s", json_string_value(json_object_get(r, "name")),
	     sa(a, "file"));
	return 0;
}

static int p_create(struct ctx *c, json_t *a)
{
	char *xml = read_file(sa(a, "file"));
	json_t *args =
	    json_pack("{s:s,s:b,s:b,s:b}", "xml", xml, "build", fa(a, "build"), "overwrite",
		      fa(a, "overwrite"), "no-overwrite", fa(a, "no-overwrite"));
	free(xml);
	json_t *r = run(c, "pool-create", args);
	done(r, "Pool %s created from %s", json_string_value(json_object_get(r, "name")),
	     sa(a, "file"));
	return 0;
}

static const char *const as_map[][2] = {
    {"name", "name"},
    {"type", "type"},
    {"source-host", "source-host"},
    {"source-path", "source-path"},
    {"source-dev", "source-dev"},
    {"source-name", "source-name"},
    {"target", "target"},
    {"source-format", "source-format"},
    {"source-initiator", "source-initiator"},
    {"auth-type", "auth-type"},
    {"auth-username", "auth-username"},
    {"secret-usage", "secret-usage"},
    {"secret-uuid", "secret-uuid"},
    {"adapter-name", "adapter-name"},
    {"adapter-wwnn", "adapter-wwnn"},
    {"adapter-wwpn", "adapter-wwpn"},
    {"adapter-parent", "adapter-parent"},
    {"source-protocol-ver", "source-protocol-ver"},
};

static json_t *as_args(json_t *a, bool create)
{
	json_t *o = json_object();
	for (size_t i = 0; i < sizeof(as_map) / sizeof(as_map[0]); i++)
		if (sa(a, as_map[i][0]))
			json_object_set_new(o, as_map[i][1], json_string(sa(a, as_map[i][0])));
	if (sa(a, "source-port"))
		json_object_set_new(o, "source-port", json_integer(atoi(sa(a, "source-port"))));
	if (fa(a, "print-xml"))
		json_object_set_new(o, "print-xml", json_true());
	if (create)
		for (const char *const *f =
			 (const char *const[]){"build", "overwrite", "no-overwrite", NULL};
		     *f; f++)
			if (fa(a, *f))
				json_object_set_new(o, *f, json_true());
	return o;
}

static int p_define_as(struct ctx *c, json_t *a)
{
	json_t *r = run(c, "pool-define-as", as_args(a, false));
	if (fa(a, "print-xml")) {
		fputs(json_string_value(json_object_get(r, "xml")), stdout);
		json_decref(r);
		return 0;
	}
	done(r, "Pool %s defined", sa(a, "name"));
	return 0;
}

static int p_create_as(struct ctx *c, json_t *a)
{
	json_t *r = run(c, "pool-create-as", as_args(a, true));
	if (fa(a, "print-xml")) {
		fputs(json_string_value(json_object_get(r, "xml")), stdout);
		json_decref(r);
		return 0;
	}
	done(r, "Pool %s created", sa(a, "name"));
	return 0;
}

static int p_build(struct ctx *c, json_t *a)
{
	done(run(c, "pool-build",
		 json_pack("{s:s,s:b,s:b}", "pool", sa(a, "pool"), "overwrite", fa(a, "overwrite"),
			   "no-overwrite", fa(a, "no-overwrite"))),
	     "Pool %s built", sa(a, "pool"));
	return 0;
}

static int p_start(struct ctx *c, json_t *a)
{
	done(run(c, "pool-start",
		 json_pack("{s:s,s:b,s:b,s:b}", "pool", sa(a, "pool"), "build", fa(a, "build"),
			   "overwrite", fa(a, "overwrite"), "no-overwrite", fa(a, "no-overwrite"))),
	     "Pool %s started", sa(a, "pool"));
	return 0;
}

/* msg is "Pool NAME <msg>" */
static int p_simple(struct ctx *c, json_t *a, const char *cmd, const char *msg)
{
	json_t *r = run(c, cmd, json_pack("{s:s}", "pool", sa(a, "pool")));
	json_decref(r);
	printf("Pool %s %s\n\n", sa(a, "pool"), msg);
	return 0;
}

static int p_destroy(struct ctx *c, json_t *a)
{
	return p_simple(c, a, "pool-destroy", "destroyed");
}

static int p_delete(struct ctx *c, json_t *a)
{
	return p_simple(c, a, "pool-delete", "deleted");
}

static int p_undefine(struct ctx *c, json_t *a)
{
	return p_simple(c, a, "pool-undefine", "has been undefined");
}

static int p_refresh(struct ctx *c, json_t *a)
{
	return p_simple(c, a, "pool-refresh", "refreshed");
}

static int p_autostart(struct ctx *c, json_t *a)
{
	bool dis = fa(a, "disable");
	done(
	    run(c, "pool-autostart", json_pack("{s:s,s:b}", "pool", sa(a, "pool"), "disable", dis)),
	    dis ? "Pool %s unmarked as autostarted" : "Pool %s marked as autostarted",
	    sa(a, "pool"));
	return 0;
}

static int p_list(struct ctx *c, json_t *a)
{
	json_t *args = json_object(), *list, *p;
	size_t i;
	static const char *const fl[] = {"inactive",  "all",	      "persistent", "transient",
					 "autostart", "no-autostart", NULL};
	for (const char *const *f = fl; *f; f++)
		if (fa(a, *f))
			json_object_set_new(args, *f, json_true());
	if (!fa(a, "inactive") && !fa(a, "all"))
		json_object_set_new(args, "active", json_true());
	if (sa(a, "type")) {
		json_t *types = json_array();
		char *t = strdup(sa(a, "type")), *save;
		for (char *s = strtok_r(t, ",", &save); s; s = strtok_r(NULL, ",", &save))
			json_array_append_new(types, json_string(s));
		free(t);
		json_object_set_new(args, "type", types);
	}
	list = run(c, "query-pools", args);
	if (bctl_json(c)) {
		bctl_print_json(list);
		json_decref(list);
		return 0;
	}
	if (fa(a, "name") || fa(a, "uuid")) {
		json_array_foreach(list, i, p)
		{
			if (fa(a, "uuid") && fa(a, "name"))
				printf("%s %s\n", json_string_value(json_object_get(p, "uuid")),
				       json_string_value(json_object_get(p, "name")));
			else
				printf("%s\n", json_string_value(json_object_get(
						   p, fa(a, "uuid") ? "uuid" : "name")));
		}
		printf("\n");
		json_decref(list);
		return 0;
	}
	bool det = fa(a, "details");
	struct vtable t = {det ? 7 : 3, 0, NULL};
	if (det)
		vt_row(&t, (const char *const[]){"Name", "State", "Autostart", "Persistent",
						 "Capacity", "Allocation", "Available"});
	else
		vt_row(&t, (const char *const[]){"Name", "State", "Autostart"});
	json_array_foreach(list, i, p)
	{
		bool active = json_is_true(json_object_get(p, "active"));
		const char *as = json_is_true(json_object_get(p, "autostart")) ? "yes" : "no";
		const char *name = json_string_value(json_object_get(p, "name"));
		if (!det) {
			vt_row(&t, (const char *const[]){name, active ? "active" : "inactive", as});
			continue;
		}
		char c1[32] = "-", c2[32] = "-", c3[32] = "-";
		if (active) {
			pretty((uint64_t)json_integer_value(json_object_get(p, "capacity")), c1,
			       32);
			pretty((uint64_t)json_integer_value(json_object_get(p, "allocation")), c2,
			       32);
			pretty((uint64_t)json_integer_value(json_object_get(p, "available")), c3,
			       32);
		}
		vt_row(&t, (const char *const[]){
			       name, json_string_value(json_object_get(p, "state")), as,
			       json_is_true(json_object_get(p, "persistent")) ? "yes" : "no", c1,
			       c2, c3});
	}
	vt_print(&t);
	json_decref(list);
	return 0;
}

static int p_info(struct ctx *c, json_t *a)
{
	json_t *p = run(c, "pool-info", json_pack("{s:s}", "pool", sa(a, "pool")));
	char b[64];
	if (bctl_json(c)) {
		bctl_print_json(p);
		json_decref(p);
		return 0;
	}
	printf("%-15s %s\n", "Name:", json_string_value(json_object_get(p, "name")));
	printf("%-15s %s\n", "UUID:", json_string_value(json_object_get(p, "uuid")));
	printf("%-15s %s\n", "State:", json_string_value(json_object_get(p, "state")));
	printf("%-15s %s\n",
	       "Persistent:", json_is_true(json_object_get(p, "persistent")) ? "yes" : "no");
	printf("%-15s %s\n",
	       "Autostart:", json_is_true(json_object_get(p, "autostart")) ? "yes" : "no");
	if (json_is_true(json_object_get(p, "active"))) {
		static const char *const k[] = {"capacity", "allocation", "available"};
		static const char *const l[] = {"Capacity:", "Allocation:", "Available:"};
		for (int i = 0; i < 3; i++) {
			uint64_t v = (uint64_t)json_integer_value(json_object_get(p, k[i]));
			if (fa(a, "bytes"))
				printf("%-15s %" PRIu64 "\n", l[i], v);
			else
				printf("%-15s %s\n", l[i], pretty(v, b, sizeof(b)));
		}
	}
	printf("\n");
	json_decref(p);
	return 0;
}

static int p_dumpxml(struct ctx *c, json_t *a)
{
	json_t *r =
	    run(c, "pool-dumpxml",
		json_pack("{s:s,s:b}", "pool", sa(a, "pool"), "inactive", fa(a, "inactive")));
	fputs(json_string_value(json_object_get(r, "xml")), stdout);
	printf("\n");
	json_decref(r);
	return 0;
}

static int p_capabilities(struct ctx *c, json_t *a)
{
	json_t *r = run(c, "pool-capabilities", NULL);
	if (bctl_json(c))
		bctl_print_json(r);
	else
		printf("%s\n", json_string_value(json_object_get(r, "xml")));
	json_decref(r);
	return 0;
}

static int p_find_sources(struct ctx *c, json_t *a)
{
	json_t *args = json_pack("{s:s}", "type", sa(a, "type"));
	if (sa(a, "srcSpec")) {
		char *x = read_file(sa(a, "srcSpec"));
		json_object_set_new(args, "spec", json_string(x));
		free(x);
	}
	json_t *r = run(c, "find-storage-pool-sources", args);
	printf("%s\n", json_string_value(json_object_get(r, "xml")));
	json_decref(r);
	return 0;
}

static int p_name_uuid(struct ctx *c, json_t *a, const char *key)
{
	json_t *p = run(c, "pool-info", json_pack("{s:s}", "pool", sa(a, "pool")));
	printf("%s\n\n", json_string_value(json_object_get(p, key)));
	json_decref(p);
	return 0;
}

static int p_name(struct ctx *c, json_t *a)
{
	return p_name_uuid(c, a, "name");
}

static int p_uuid(struct ctx *c, json_t *a)
{
	return p_name_uuid(c, a, "uuid");
}

/* ---- volume verbs ---- */

static json_t *vol_args(json_t *a)
{
	json_t *o = json_pack("{s:s}", "vol", sa(a, "vol"));
	if (sa(a, "pool"))
		json_object_set_new(o, "pool", json_string(sa(a, "pool")));
	return o;
}

static int v_create(struct ctx *c, json_t *a)
{
	char *xml = read_file(sa(a, "file"));
	json_t *args = json_pack("{s:s,s:s,s:b}", "pool", sa(a, "pool"), "xml", xml,
				 "prealloc-metadata", fa(a, "prealloc-metadata"));
	free(xml);
	json_t *r = run(c, "vol-create", args);
	done(r, "Vol %s created from %s", json_string_value(json_object_get(r, "name")),
	     sa(a, "file"));
	return 0;
}

static int v_create_from(struct ctx *c, json_t *a)
{
	char *xml = read_file(sa(a, "file"));
	json_t *args =
	    json_pack("{s:s,s:s,s:s,s:b}", "pool", sa(a, "pool"), "xml", xml, "input-vol",
		      sa(a, "vol"), "prealloc-metadata", fa(a, "prealloc-metadata"));
	if (sa(a, "inputpool"))
		json_object_set_new(args, "input-pool", json_string(sa(a, "inputpool")));
	free(xml);
	json_t *r = run_job(c, "vol-create", args);
	done(r, "Vol %s created from input vol %s", json_string_value(json_object_get(r, "name")),
	     sa(a, "vol"));
	return 0;
}

static int v_create_as(struct ctx *c, json_t *a)
{
	json_t *args = json_pack("{s:s,s:s,s:I}", "pool", sa(a, "pool"), "name", sa(a, "name"),
				 "capacity", (json_int_t)size_arg(a, "capacity"));
	if (sa(a, "allocation"))
		json_object_set_new(args, "allocation",
				    json_integer((json_int_t)size_arg(a, "allocation")));
	static const char *const s[] = {"format", "backing-vol", "backing-vol-format", NULL};
	for (const char *const *k = s; *k; k++)
		if (sa(a, *k))
			json_object_set_new(args, *k, json_string(sa(a, *k)));
	if (fa(a, "prealloc-metadata"))
		json_object_set_new(args, "prealloc-metadata", json_true());
	if (fa(a, "print-xml")) {
		json_object_set_new(args, "print-xml", json_true());
		json_t *r = run(c, "vol-create-as", args);
		fputs(json_string_value(json_object_get(r, "xml")), stdout);
		json_decref(r);
		return 0;
	}
	done(run(c, "vol-create-as", args), "Vol %s created", sa(a, "name"));
	return 0;
}

static int v_clone(struct ctx *c, json_t *a)
{
	json_t *args = vol_args(a);
	json_object_set_new(args, "newname", json_string(sa(a, "newname")));
	if (fa(a, "prealloc-metadata"))
		json_object_set_new(args, "prealloc-metadata", json_true());
	done(run_job(c, "vol-clone", args), "Vol %s cloned from %s", sa(a, "newname"),
	     sa(a, "vol"));
	return 0;
}

static int v_delete(struct ctx *c, json_t *a)
{
	json_t *args = vol_args(a);
	if (fa(a, "delete-snapshots"))
		json_object_set_new(args, "delete-snapshots", json_true());
	done(run(c, "vol-delete", args), "Vol %s deleted", sa(a, "vol"));
	return 0;
}

static int v_wipe(struct ctx *c, json_t *a)
{
	json_t *args = vol_args(a);
	if (sa(a, "algorithm"))
		json_object_set_new(args, "algorithm", json_string(sa(a, "algorithm")));
	json_decref(run_job(c, "vol-wipe", args));
	printf("Vol %s wiped\n\n", sa(a, "vol"));
	return 0;
}

static int v_resize(struct ctx *c, json_t *a)
{
	json_t *args = vol_args(a);
	const char *cap = sa(a, "capacity");
	bool neg = cap[0] == '-';
	json_t *tmp = json_pack("{s:s}", "capacity", neg ? cap + 1 : cap);
	uint64_t v = size_arg(tmp, "capacity");
	json_decref(tmp);
	json_object_set_new(args, "capacity", json_integer((json_int_t)v));
	if (neg && !fa(a, "delta"))
		bctl_die(2, "negative size requires --delta");
	if (fa(a, "delta") || neg)
		json_object_set_new(args, "delta", json_true());
	if (fa(a, "shrink") || neg)
		json_object_set_new(args, "shrink", json_true());
	if (fa(a, "allocate"))
		json_object_set_new(args, "allocate", json_true());
	done(run(c, "vol-resize", args), "Size of volume '%s' successfully changed to %s",
	     sa(a, "vol"), cap);
	return 0;
}

static int v_updown(struct ctx *c, json_t *a, const char *cmd)
{
	json_t *args = vol_args(a);
	bool up = !strcmp(cmd, "vol-upload");
	const char *file = sa(a, "file");
	/* blockctl opens FILE ("-": stdin/stdout) with the caller's rights and passes the
	 * descriptor; the daemon streams pipes and sockets */
	int fd = !strcmp(file, "-") ? dup(up ? STDIN_FILENO : STDOUT_FILENO)
				    : open(file, up ? O_RDONLY : O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		bctl_die(1, "cannot open '%s': %s", file, strerror(errno));
	bctl_send_fd(c, fd, "blockctl-vol-data");
	close(fd);
	json_object_set_new(args, "fd", json_string("blockctl-vol-data"));
	if (sa(a, "offset"))
		json_object_set_new(args, "offset",
				    json_integer((json_int_t)size_arg(a, "offset")));
	if (sa(a, "length"))
		json_object_set_new(args, "length",
				    json_integer((json_int_t)size_arg(a, "length")));
	if (fa(a, "sparse") && !up)
		json_object_set_new(args, "sparse", json_true());
	json_decref(run_job(c, cmd, args));
	return 0;
}

static int v_upload(struct ctx *c, json_t *a)
{
	return v_updown(c, a, "vol-upload");
}

static int v_download(struct ctx *c, json_t *a)
{
	return v_updown(c, a, "vol-download");
}

static int v_list(struct ctx *c, json_t *a)
{
	json_t *list = run(c, "query-volumes", json_pack("{s:s}", "pool", sa(a, "pool"))), *v;
	size_t i;
	if (bctl_json(c)) {
		bctl_print_json(list);
		json_decref(list);
		return 0;
	}
	bool det = fa(a, "details");
	struct vtable t = {det ? 5 : 2, 0, NULL};
	if (det)
		vt_row(&t, (const char *const[]){"Name", "Path", "Type", "Capacity", "Allocation"});
	else
		vt_row(&t, (const char *const[]){"Name", "Path"});
	json_array_foreach(list, i, v)
	{
		const char *n = json_string_value(json_object_get(v, "name"));
		const char *p = json_string_value(json_object_get(v, "path"));
		if (!det) {
			vt_row(&t, (const char *const[]){n, p});
			continue;
		}
		char c1[32], c2[32];
		pretty((uint64_t)json_integer_value(json_object_get(v, "capacity")), c1, 32);
		pretty((uint64_t)json_integer_value(json_object_get(v, "allocation")), c2, 32);
		vt_row(&t, (const char *const[]){
			       n, p, json_string_value(json_object_get(v, "type")), c1, c2});
	}
	vt_print(&t);
	json_decref(list);
	return 0;
}

static int v_info(struct ctx *c, json_t *a)
{
	json_t *v = run(c, "vol-info", vol_args(a));
	char b[64];
	if (bctl_json(c)) {
		bctl_print_json(v);
		json_decref(v);
		return 0;
	}
	printf("%-15s %s\n", "Name:", json_string_value(json_object_get(v, "name")));
	printf("%-15s %s\n", "Type:", json_string_value(json_object_get(v, "type")));
	uint64_t cap = (uint64_t)json_integer_value(json_object_get(v, "capacity"));
	uint64_t al = (uint64_t)json_integer_value(
	    json_object_get(v, fa(a, "physical") ? "physical" : "allocation"));
	const char *al_label = fa(a, "physical") ? "Physical:" : "Allocation:";
	if (fa(a, "bytes")) {
		printf("%-15s %" PRIu64 " bytes\n", "Capacity:", cap);
		printf("%-15s %" PRIu64 " bytes\n", al_label, al);
	} else {
		printf("%-15s %s\n", "Capacity:", pretty(cap, b, sizeof(b)));
		printf("%-15s %s\n", al_label, pretty(al, b, sizeof(b)));
	}
	printf("\n");
	json_decref(v);
	return 0;
}

static int v_dumpxml(struct ctx *c, json_t *a)
{
	json_t *r = run(c, "vol-dumpxml", vol_args(a));
	fputs(json_string_value(json_object_get(r, "xml")), stdout);
	printf("\n");
	json_decref(r);
	return 0;
}

static int v_field(struct ctx *c, json_t *a, const char *key)
{
	json_t *v = run(c, "vol-info", vol_args(a));
	printf("%s\n\n", json_string_value(json_object_get(v, key)));
	json_decref(v);
	return 0;
}

static int v_path(struct ctx *c, json_t *a)
{
	return v_field(c, a, "path");
}

static int v_key(struct ctx *c, json_t *a)
{
	return v_field(c, a, "key");
}

static int v_name(struct ctx *c, json_t *a)
{
	return v_field(c, a, "name");
}

static int v_pool(struct ctx *c, json_t *a)
{
	return v_field(c, a, "pool");
}

static int v_open(struct ctx *c, json_t *a)
{
	json_t *args = vol_args(a);
	json_object_set_new(args, "node-name", json_string(sa(a, "node-name")));
	if (fa(a, "read-only"))
		json_object_set_new(args, "read-only", json_true());
	if (sa(a, "format"))
		json_object_set_new(args, "format", json_string(sa(a, "format")));
	done(run(c, "vol-open", args), "Node %s opened on volume %s", sa(a, "node-name"),
	     sa(a, "vol"));
	return 0;
}

static int v_export(struct ctx *c, json_t *a)
{
	const char *node = sa(a, "node-name") ? sa(a, "node-name") : sa(a, "vol");
	const char *name = sa(a, "name") ? sa(a, "name") : sa(a, "vol");
	json_t *args = vol_args(a);
	json_object_set_new(args, "node-name", json_string(node));
	if (!fa(a, "writable"))
		json_object_set_new(args, "read-only", json_true());
	if (sa(a, "format"))
		json_object_set_new(args, "format", json_string(sa(a, "format")));
	json_decref(run(c, "vol-open", args));
	json_decref(run(c, "block-export-add",
			json_pack("{s:s,s:s,s:s,s:s,s:b}", "type", "nbd", "id", name, "node-name",
				  node, "name", name, "writable", fa(a, "writable"))));
	printf("Volume %s exported over NBD as '%s' (node %s)\n\n", sa(a, "vol"), name, node);
	return 0;
}

/* ---- the table ---- */

#define P(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NOPT ((const char *const *)NULL)
#define BUILD_FLAGS "!overwrite", "!no-overwrite"
#define AS_OPTS                                                                                    \
	"-source-port", "-source-format", "-source-initiator", "-auth-type", "-auth-username",     \
	    "-secret-usage", "-secret-uuid", "-adapter-name", "-adapter-wwnn", "-adapter-wwpn",    \
	    "-adapter-parent", "-source-protocol-ver", "!print-xml"
#define AS_POS "name", "type", "source-host", "source-path", "source-dev", "source-name", "target"

static const struct bctl_pool_verb verbs[] = {
    {"pool-autostart", "Storage pools", "pool-autostart POOL [--disable]", "autostart a pool",
     "Starts the pool whenever blockd starts (--disable: no more).", p_autostart, P("pool"),
     P("!disable"), 1},
    {"pool-build", "Storage pools", "pool-build POOL [--overwrite | --no-overwrite]",
     "build a pool",
     "Creates the pool's directory; for an fs pool also makes the file system, refused "
     "over an existing one unless --overwrite.",
     p_build, P("pool"), P(BUILD_FLAGS), 1},
    {"pool-capabilities", "Storage pools", "pool-capabilities", "pool types blockd supports",
     "Prints libvirt's storagepoolCapabilities XML: every pool type, supported or not.",
     p_capabilities, NULL, NOPT, 0},
    {"pool-create", "Storage pools", "pool-create FILE [--build] [--overwrite|--no-overwrite]",
     "create a transient pool from XML", "Creates and starts a pool that vanishes when stopped.",
     p_create, P("file"), P("!build", BUILD_FLAGS), 1},
    {"pool-create-as", "Storage pools",
     "pool-create-as NAME TYPE [SOURCE-HOST] [SOURCE-PATH] [SOURCE-DEV] [SOURCE-NAME] "
     "[--target DIR] [--build] ...",
     "create a transient pool from arguments", "As pool-define-as, then started.", p_create_as,
     P(AS_POS), P(AS_OPTS, "!build", BUILD_FLAGS), 2},
    {"pool-define", "Storage pools", "pool-define FILE", "define a pool from XML",
     "Defines a persistent pool from libvirt pool XML (FILE or - for stdin).", p_define, P("file"),
     NOPT, 1},
    {"pool-define-as", "Storage pools",
     "pool-define-as NAME TYPE [SOURCE-HOST] [SOURCE-PATH] [SOURCE-DEV] [SOURCE-NAME] "
     "[--target DIR] [--source-format F] [--print-xml] ...",
     "define a pool from arguments",
     "Defines a persistent pool, as virsh pool-define-as: e.g. pool-define-as p1 dir "
     "--target /srv/images; pool-define-as p2 fs --source-dev /dev/sdb1 --target /mnt/p2.",
     p_define_as, P(AS_POS), P(AS_OPTS), 2},
    {"pool-delete", "Storage pools", "pool-delete POOL", "delete a pool's storage",
     "Removes an inactive pool's (empty) directory.", p_delete, P("pool"), NOPT, 1},
    {"pool-destroy", "Storage pools", "pool-destroy POOL", "stop a pool",
     "Stops a pool (unmounts an fs pool); refused while a node uses its volumes.", p_destroy,
     P("pool"), NOPT, 1},
    {"pool-dumpxml", "Storage pools", "pool-dumpxml POOL [--inactive]", "a pool's XML",
     "Prints the pool's XML.", p_dumpxml, P("pool"), P("!inactive"), 1},
    {"pool-info", "Storage pools", "pool-info POOL [--bytes]", "pool information",
     "Name, UUID, state, persistence, autostart and space.", p_info, P("pool"), P("!bytes"), 1},
    {"pool-list", "Storage pools",
     "pool-list [--inactive | --all] [--persistent] [--transient] [--autostart] "
     "[--no-autostart] [--type TYPES] [--details] [--name] [--uuid]",
     "list pools", "Lists active pools (all with --all), as virsh pool-list.", p_list, NULL,
     P("!inactive", "!all", "!persistent", "!transient", "!autostart", "!no-autostart", "-type",
       "!details", "!name", "!uuid"),
     0},
    {"pool-name", "Storage pools", "pool-name UUID", "a pool's name from its UUID",
     "Prints the name.", p_name, P("pool"), NOPT, 1},
    {"pool-refresh", "Storage pools", "pool-refresh POOL", "rescan a pool",
     "Rescans the pool's volumes and space.", p_refresh, P("pool"), NOPT, 1},
    {"pool-start", "Storage pools", "pool-start POOL [--build] [--overwrite|--no-overwrite]",
     "start a pool", "Starts a defined pool (building it first with --build).", p_start, P("pool"),
     P("!build", BUILD_FLAGS), 1},
    {"pool-undefine", "Storage pools", "pool-undefine POOL", "undefine a pool",
     "Removes an inactive pool's definition.", p_undefine, P("pool"), NOPT, 1},
    {"pool-uuid", "Storage pools", "pool-uuid POOL", "a pool's UUID", "Prints the UUID.", p_uuid,
     P("pool"), NOPT, 1},
    {"find-storage-pool-sources", "Storage pools", "find-storage-pool-sources TYPE [SRCSPEC]",
     "discover pool sources",
     "Probes for sources of pools of TYPE: fs (block devices with a file system), logical "
     "(volume groups), iscsi and iscsi-direct (targets of the portal in SRCSPEC's <host>), "
     "netfs (exports of the NFS server in SRCSPEC's <host>), gluster (volumes of the server).",
     p_find_sources,
     P("type", "srcSpec"), NOPT, 1},
    {"vol-clone", "Storage volumes", "vol-clone VOL NEWNAME [--pool POOL] [--prealloc-metadata]",
     "clone a volume", "Copies VOL into a new volume NEWNAME of the same pool.", v_clone,
     P("vol", "newname"), P("-pool", "!prealloc-metadata"), 2},
    {"vol-create", "Storage volumes", "vol-create POOL FILE [--prealloc-metadata]",
     "create a volume from XML", "Creates a volume from libvirt volume XML.", v_create,
     P("pool", "file"), P("!prealloc-metadata"), 2},
    {"vol-create-as", "Storage volumes",
     "vol-create-as POOL NAME CAPACITY [--allocation SIZE] [--format raw|qcow2] "
     "[--backing-vol VOL] [--backing-vol-format F] [--prealloc-metadata] [--print-xml]",
     "create a volume from arguments",
     "CAPACITY and SIZE take libvirt's suffixes (10G = 10 GiB, 10GB = 10^10 bytes).", v_create_as,
     P("pool", "name", "capacity"),
     P("-allocation", "-format", "-backing-vol", "-backing-vol-format", "!prealloc-metadata",
       "!print-xml"),
     3},
    {"vol-create-from", "Storage volumes",
     "vol-create-from POOL FILE VOL [--inputpool POOL] [--prealloc-metadata]",
     "create a volume from XML, copying another", "The new volume gets VOL's data.", v_create_from,
     P("pool", "file", "vol"), P("-inputpool", "!prealloc-metadata"), 3},
    {"vol-delete", "Storage volumes", "vol-delete VOL [--pool POOL] [--delete-snapshots]",
     "delete a volume",
     "Deletes a volume; refused while a node uses it.  --delete-snapshots removes its "
     "snapshots first (rbd).",
     v_delete, P("vol"), P("-pool", "!delete-snapshots"), 1},
    {"vol-download", "Storage volumes",
     "vol-download VOL FILE [--pool POOL] [--offset N] [--length N] [--sparse]",
     "copy a volume into a file",
     "blockctl creates FILE (\"-\": standard output) and passes it to the daemon, which "
     "writes the bytes; progress goes to standard error on a terminal.",
     v_download,
     P("vol", "file"), P("-pool", "-offset", "-length", "!sparse"), 2},
    {"vol-dumpxml", "Storage volumes", "vol-dumpxml VOL [--pool POOL]", "a volume's XML",
     "Prints the volume's XML.", v_dumpxml, P("vol"), P("-pool"), 1},
    {"vol-export", "Storage volumes",
     "vol-export VOL --pool POOL [--node-name NODE] [--name EXPORT] [--writable] "
     "[--format FMT]",
     "export a volume over NBD in one step",
     "Opens the volume as a node (vol-open) and adds an NBD export for it (the NBD server "
     "must be running).  Read-only unless --writable.  --format as for vol-open.",
     v_export, P("vol"), P("-pool", "-node-name", "-name", "!writable", "-format"), 1},
    {"vol-info", "Storage volumes", "vol-info VOL [--pool POOL] [--bytes] [--physical]",
     "volume information", "Name, type, capacity and allocation.", v_info, P("vol"),
     P("-pool", "!bytes", "!physical"), 1},
    {"vol-key", "Storage volumes", "vol-key VOL [--pool POOL]", "a volume's key",
     "Prints the key (the path, for file pools).", v_key, P("vol"), P("-pool"), 1},
    {"vol-list", "Storage volumes", "vol-list POOL [--details]", "list a pool's volumes",
     "Lists the volumes as virsh vol-list.", v_list, P("pool"), P("!details"), 1},
    {"vol-name", "Storage volumes", "vol-name KEY", "a volume's name from its key or path",
     "Prints the name.", v_name, P("vol"), NOPT, 1},
    {"vol-open", "Storage volumes",
     "vol-open VOL NODE-NAME --pool POOL [--read-only] [--format FMT]",
     "open a volume as a graph node",
     "The node can then be exported or used by other nodes.  FMT overrides the probed "
     "format, which is needed for vmdk and for qcow2/qed images backed outside every pool.",
     v_open, P("vol", "node-name"), P("-pool", "!read-only", "-format"), 2},
    {"vol-path", "Storage volumes", "vol-path VOL [--pool POOL]", "a volume's path",
     "Prints the path.", v_path, P("vol"), P("-pool"), 1},
    {"vol-pool", "Storage volumes", "vol-pool VOL", "the pool of a volume key or path",
     "Prints the pool's name.", v_pool, P("vol"), NOPT, 1},
    {"vol-resize", "Storage volumes",
     "vol-resize VOL CAPACITY [--pool POOL] [--allocate] [--delta] [--shrink]", "resize a volume",
     "CAPACITY takes libvirt's suffixes; a leading '-' with --delta shrinks by that much.  "
     "Shrinking needs --shrink.",
     v_resize, P("vol", "capacity"), P("-pool", "!allocate", "!delta", "!shrink"), 2},
    {"vol-upload", "Storage volumes",
     "vol-upload VOL FILE [--pool POOL] [--offset N] "
     "[--length N]",
     "copy a file into a volume",
     "blockctl opens FILE (\"-\": standard input) and passes it to the daemon, which reads "
     "it to its end or --length; progress goes to standard error on a terminal.",
     v_upload,
     P("vol", "file"), P("-pool", "-offset", "-length", "!sparse"), 2},
    {"vol-wipe", "Storage volumes", "vol-wipe VOL [--pool POOL] [--algorithm ALG]",
     "wipe a volume",
     "Overwrites the volume's data.  ALG: zero (default), trim, random, nnsa, dod, bsi, "
     "gutmann, schneier, pfitzner7, pfitzner33 (virsh's list; the patterns of scrub(1)).",
     v_wipe, P("vol"), P("-pool", "-algorithm"), 1},
    {NULL},
};

const struct bctl_pool_verb *bctl_pool_verb_find(const char *name)
{
	for (const struct bctl_pool_verb *v = verbs; v->name; v++)
		if (!strcmp(v->name, name))
			return v;
	return NULL;
}

const struct bctl_pool_verb *bctl_pool_verb_at(size_t i)
{
	return i < sizeof(verbs) / sizeof(verbs[0]) - 1 ? &verbs[i] : NULL;
}

int bctl_pool_run(struct ctx *c, const struct bctl_pool_verb *v, int argc, char **argv)
{
	json_t *a = parse_argv(v, argc, argv);
	/* --pool given as a positional where the verb's first positional is "pool" */
	int r = v->fn(c, a);
	json_decref(a);
	return r;
}
