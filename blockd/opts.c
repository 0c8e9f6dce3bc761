/*
 * opts.c - option trees: QEMU's dotted key=value syntax, typed getters, unused-key checks.  [any]
 *
 * A getter that reads key "k" leaves a mark "\001k" in the same object, so that
 * bd_opts_check_unused() can name every key nobody read, however the tree was built.  Marks never
 * leave the process: bd_opts_clear_marks() strips them before a tree is shown or stored, and the
 * dotted parser refuses keys that start with the mark byte.
 */
#include "blockd/internal.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARK '\001'

static void mark(json_t *opts, const char *key)
{
	char buf[256];
	if (!json_is_object(opts) || strlen(key) + 2 > sizeof(buf))
		return;
	buf[0] = MARK;
	strcpy(buf + 1, key);
	json_object_set_new(opts, buf, json_true());
}

void bd_opts_mark_used(json_t *opts, const char *key)
{
	mark(opts, key);
}

bool bd_opts_is_mark(const char *key)
{
	return key[0] == MARK;
}

#define is_mark bd_opts_is_mark


static bool is_marked(json_t *opts, const char *key)
{
	char buf[256];
	if (strlen(key) + 2 > sizeof(buf))
		return false;
	buf[0] = MARK;
	strcpy(buf + 1, key);
	return json_object_get(opts, buf) != NULL;
}

bool bd_opts_is_used(json_t *opts, const char *key)
{
	return is_marked(opts, key);
}

/* A value that was read as a sub-object: recurse into it. */
static int check_unused(json_t *opts, const char *prefix, struct bd_err *err)
{
	const char *key;
	json_t *val;

	json_object_foreach(opts, key, val)
	{
		char path[512];
		if (is_mark(key)) {
			if (!json_object_get(opts, key + 1))
				return bd_err_set(err, -EINVAL, "Invalid parameter name '%s'",
						  key + 1);
			continue;
		}
		snprintf(path, sizeof(path), "%s%s%s", prefix ? prefix : "",
			 prefix && *prefix ? "." : "", key);
		if (!is_marked(opts, key))
			return bd_err_set(err, -EINVAL, "Invalid parameter '%s'", path);
		if (json_is_object(val)) {
			/* Sub-objects read whole (bd_opts_obj) are checked only if their reader
			 * marked anything inside; a child node's options are checked by the child. */
			bool any = false;
			const char *k2;
			json_t *v2;
			json_object_foreach(val, k2, v2)
			{
				(void)v2;
				if (is_mark(k2)) {
					any = true;
					break;
				}
			}
			if (any) {
				int r = check_unused(val, path, err);
				if (r < 0)
					return r;
			}
		}
	}
	return 0;
}

int bd_opts_check_unused(json_t *opts, const char *prefix, struct bd_err *err)
{
	if (!json_is_object(opts))
		return 0;
	return check_unused(opts, prefix, err);
}

void bd_opts_clear_marks(json_t *opts)
{
	const char *key;
	json_t *val;
	void *tmp;

	if (json_is_array(opts)) {
		size_t i;
		json_array_foreach(opts, i, val) bd_opts_clear_marks(val);
		return;
	}
	if (!json_is_object(opts))
		return;
	json_object_foreach_safe(opts, tmp, key, val)
	{
		if (is_mark(key))
			json_object_del(opts, key);
		else
			bd_opts_clear_marks(val);
	}
}

/* ---- getters ---- */

static json_t *lookup(json_t *opts, const char *key)
{
	if (!json_is_object(opts))
		return NULL;
	json_t *v = json_object_get(opts, key);
	if (v)
		mark(opts, key);
	return v;
}

int bd_opts_str(json_t *opts, const char *key, const char **out, struct bd_err *err)
{
	json_t *v = lookup(opts, key);
	if (!v)
		return -ENOENT;
	if (!json_is_string(v))
		return bd_err_set(err, -EINVAL, "Invalid parameter type for '%s', expected: string",
				  key);
	*out = json_string_value(v);
	return 0;
}

int bd_opts_bool(json_t *opts, const char *key, bool *out, struct bd_err *err)
{
	json_t *v = lookup(opts, key);
	if (!v)
		return -ENOENT;
	if (json_is_boolean(v)) {
		*out = json_is_true(v);
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		if (!strcmp(s, "on") || !strcmp(s, "true") || !strcmp(s, "yes")) {
			*out = true;
			return 0;
		}
		if (!strcmp(s, "off") || !strcmp(s, "false") || !strcmp(s, "no")) {
			*out = false;
			return 0;
		}
	}
	return bd_err_set(err, -EINVAL, "Parameter '%s' expects 'on' or 'off'", key);
}

static int parse_u64(const char *s, bool suffixes, uint64_t *out)
{
	char *end;
	unsigned long long v;

	while (isspace((unsigned char)*s))
		s++;
	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 0);
	if (errno)
		return -ERANGE;
	if (suffixes && *end) {
		static const char units[] = "bkmgtpe";
		double frac = 0;
		/* "1.5G" */
		if (*end == '.') {
			char *fend;
			double f = strtod(end, &fend);
			if (fend == end + 1)
				return -EINVAL;
			frac = f;
			end = fend;
		}
		const char *u = strchr(units, tolower((unsigned char)*end));
		if (!u || !*end)
			return -EINVAL;
		unsigned shift = (unsigned)(u - units) * 10;
		if (end[1])
			return -EINVAL;
		long double total = ((long double)v + frac) * (long double)(1ull << shift);
		if (shift && (v >> (64 - shift)))
			return -ERANGE;
		if (total >= 18446744073709551615.0L)
			return -ERANGE;
		*out = (uint64_t)total;
		return 0;
	}
	if (*end)
		return -EINVAL;
	*out = v;
	return 0;
}

static int get_number(json_t *opts, const char *key, uint64_t *out, bool size,
		      struct bd_err *err)
{
	json_t *v = lookup(opts, key);
	int r;

	if (!v)
		return -ENOENT;
	if (json_is_integer(v)) {
		json_int_t i = json_integer_value(v);
		if (i < 0)
			return bd_err_set(err, -EINVAL,
					  "Parameter '%s' expects a non-negative number", key);
		*out = (uint64_t)i;
		return 0;
	}
	if (json_is_real(v) && size) {
		double d = json_real_value(v);
		if (d < 0 || d >= 18446744073709551615.0)
			return bd_err_set(err, -EINVAL, "Parameter '%s' is out of range", key);
		*out = (uint64_t)d;
		return 0;
	}
	if (json_is_string(v)) {
		r = parse_u64(json_string_value(v), size, out);
		if (r == 0)
			return 0;
		if (r == -ERANGE)
			return bd_err_set(err, -EINVAL, "Parameter '%s' is out of range", key);
	}
	return bd_err_set(err, -EINVAL, "Parameter '%s' expects %s", key,
			  size ? "a size value" : "a number");
}

int bd_opts_u64(json_t *opts, const char *key, uint64_t *out, struct bd_err *err)
{
	return get_number(opts, key, out, false, err);
}

int bd_opts_size(json_t *opts, const char *key, uint64_t *out, struct bd_err *err)
{
	return get_number(opts, key, out, true, err);
}

int bd_opts_enum(json_t *opts, const char *key, const char *const *names, int *out,
		 struct bd_err *err)
{
	const char *s;
	int r = bd_opts_str(opts, key, &s, err);
	if (r < 0) {
		/* booleans in JSON form for on/off enums */
		json_t *v = json_object_get(opts, key);
		if (r == -EINVAL && v && json_is_boolean(v)) {
			s = json_is_true(v) ? "on" : "off";
			bd_err_clear(err);
		} else {
			return r;
		}
	}
	for (int i = 0; names[i]; i++) {
		if (!strcmp(names[i], s)) {
			*out = i;
			return 0;
		}
	}
	char list[512] = "";
	for (int i = 0; names[i]; i++) {
		size_t len = strlen(list);
		snprintf(list + len, sizeof(list) - len, "%s'%s'", i ? ", " : "", names[i]);
	}
	return bd_err_set(err, -EINVAL, "Parameter '%s' does not accept value '%s' (expected %s)",
			  key, s, list);
}

int bd_opts_obj(json_t *opts, const char *key, json_t **out, struct bd_err *err)
{
	json_t *v = lookup(opts, key);
	if (!v)
		return -ENOENT;
	if (!json_is_object(v))
		return bd_err_set(err, -EINVAL, "Invalid parameter type for '%s', expected: object",
				  key);
	*out = v;
	return 0;
}

/* ---- QEMU's dotted syntax ---- */

static bool all_digit_keys(json_t *obj, size_t *n)
{
	const char *key;
	json_t *val;
	size_t count = json_object_size(obj);

	if (!count)
		return false;
	json_object_foreach(obj, key, val)
	{
		(void)val;
		char *end;
		if (!isdigit((unsigned char)key[0]))
			return false;
		unsigned long idx = strtoul(key, &end, 10);
		if (*end || idx >= count || (key[0] == '0' && key[1]))
			return false;
	}
	*n = count;
	return true;
}

/* Turn objects whose keys are exactly 0..n-1 into arrays, recursively. */
static json_t *listify(json_t *obj)
{
	const char *key;
	json_t *val;
	size_t n;

	if (!json_is_object(obj))
		return obj;
	json_object_foreach(obj, key, val)
	{
		if (!json_is_object(val))
			continue;
		/* listify() takes a reference and returns one: the same value, or the array
		 * that replaces it (then the object's own reference goes with set_new) */
		json_t *nv = listify(json_incref(val));
		if (nv != val)
			json_object_set_new(obj, key, nv);
		else
			json_decref(nv);
	}
	if (all_digit_keys(obj, &n)) {
		json_t *arr = json_array();
		for (size_t i = 0; i < n; i++) {
			char k[32];
			snprintf(k, sizeof(k), "%zu", i);
			json_array_append(arr, json_object_get(obj, k));
		}
		json_decref(obj);
		return arr;
	}
	return obj;
}

static int set_dotted(json_t *root, const char *key, const char *value, struct bd_err *err)
{
	json_t *cur = root;
	const char *p = key;

	if (!*key)
		return bd_err_set(err, -EINVAL, "Invalid parameter ''");
	for (;;) {
		const char *dot = strchr(p, '.');
		size_t len = dot ? (size_t)(dot - p) : strlen(p);
		char part[256];

		if (len == 0 || len >= sizeof(part))
			return bd_err_set(err, -EINVAL, "Invalid parameter '%s'", key);
		memcpy(part, p, len);
		part[len] = '\0';
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)part[i];
			if (!(isalnum(c) || c == '-' || c == '_'))
				return bd_err_set(err, -EINVAL, "Invalid parameter '%s'", key);
		}
		json_t *next = json_object_get(cur, part);
		if (!dot) {
			if (next && json_is_object(next))
				return bd_err_set(err, -EINVAL,
						  "Parameters '%s.*' used inconsistently", key);
			json_object_set_new(cur, part, json_string(value));
			return 0;
		}
		if (!next) {
			next = json_object();
			json_object_set_new(cur, part, next);
		} else if (!json_is_object(next)) {
			return bd_err_set(err, -EINVAL, "Parameters '%.*s' used inconsistently",
					  (int)(dot - key), key);
		}
		cur = next;
		p = dot + 1;
	}
}

json_t *bd_opts_parse(const char *text, const char *implied_key, struct bd_err *err)
{
	json_t *root;
	const char *p = text;
	bool first = true;
	size_t cap = strlen(text) + 1;
	char *key = malloc(cap), *val = malloc(cap);

	if (!key || !val) {
		free(key);
		free(val);
		bd_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '{') {
		json_error_t jerr;
		root = json_loads(p, JSON_REJECT_DUPLICATES, &jerr);
		free(key);
		free(val);
		if (!root) {
			bd_err_set(err, -EINVAL, "JSON parse error at column %d: %s", jerr.column,
				   jerr.text);
			return NULL;
		}
		if (!json_is_object(root)) {
			json_decref(root);
			bd_err_set(err, -EINVAL, "expected a JSON object");
			return NULL;
		}
		return root;
	}

	root = json_object();
	while (*p) {
		size_t kl = 0, vl = 0;
		bool has_eq = false;

		/* key: up to '=' or ',' */
		while (*p && *p != '=' && *p != ',')
			key[kl++] = *p++;
		key[kl] = '\0';
		if (*p == '=') {
			has_eq = true;
			p++;
			/* value: up to a single ',' (",," is a literal comma) */
			while (*p) {
				if (*p == ',') {
					if (p[1] == ',') {
						val[vl++] = ',';
						p += 2;
						continue;
					}
					break;
				}
				val[vl++] = *p++;
			}
			val[vl] = '\0';
		}
		if (*p == ',')
			p++;
		if (!has_eq) {
			if (first && implied_key && kl) {
				/* implied key: the bare value may itself contain ",," escapes */
				strcpy(val, key);
				strcpy(key, implied_key);
			} else {
				bd_err_set(err, -EINVAL, "Expected '=' after parameter '%s'", key);
				goto fail;
			}
		}
		first = false;
		if (set_dotted(root, key, val, err) < 0)
			goto fail;
	}
	free(key);
	free(val);
	return listify(root);
fail:
	free(key);
	free(val);
	json_decref(root);
	return NULL;
}
