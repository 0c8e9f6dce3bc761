/*
 * test-qmp-stream.c - the control socket's stream parser and dispatcher without a socket:
 * values split across reads, pipelined values, recovery after syntax errors and over-long
 * input, the envelope checks and negotiation, argument validation messages.  [single thread]
 */
#include "qmp-like/qmp-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

#define CHECK(cond)                                                                          \
	do {                                                                                 \
		if (!(cond)) {                                                               \
			fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
			failures++;                                                          \
		}                                                                            \
	} while (0)

/* Feed text in pieces of n bytes; collect values as compact JSON and errors as "ERR". */
static char *run_stream(const char *text, size_t n, size_t max)
{
	struct qmp_stream s;
	static char out[65536];
	char msg[256];
	size_t len = strlen(text), olen = 0;
	json_t *v;

	out[0] = '\0';
	qmp_stream_init(&s, max);
	for (size_t off = 0; off < len; off += n) {
		qmp_stream_feed(&s, text + off, len - off < n ? len - off : n);
		int r;
		while ((r = qmp_stream_next(&s, &v, msg, sizeof(msg))) != 0) {
			if (r < 0) {
				olen += (size_t)snprintf(out + olen, sizeof(out) - olen, "ERR;");
				continue;
			}
			char *t = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS);
			olen += (size_t)snprintf(out + olen, sizeof(out) - olen, "%s;", t);
			free(t);
			json_decref(v);
		}
	}
	qmp_stream_fini(&s);
	return out;
}

static void test_stream(void)
{
	const char *in = "{\"a\": 1}\n  {\"b\": [1, 2, {\"c\": \"}\"}]}{\"d\":null}\r\n";
	const char *want = "{\"a\":1};{\"b\":[1,2,{\"c\":\"}\"}]};{\"d\":null};";
	for (size_t n = 1; n <= strlen(in); n++)
		CHECK(!strcmp(run_stream(in, n, 1 << 20), want));

	/* a syntax error drops the rest of its line, then parsing resumes */
	CHECK(!strcmp(run_stream("{\"a\": oops, \"b\": 2}\n{\"x\":1}\n", 4, 1 << 20),
		      "ERR;{\"x\":1};"));
	CHECK(!strcmp(run_stream("{\"bad\n{\"x\":1}\n", 100, 1 << 20), "ERR;{\"x\":1};"));
	/* an unterminated line without newline keeps skipping until the newline */
	CHECK(!strcmp(run_stream("}}}} garbage", 3, 1 << 20), "ERR;"));
	CHECK(!strcmp(run_stream("}}}} garbage\n{\"y\":2}", 3, 1 << 20), "ERR;{\"y\":2};"));
	/* too long without a complete value */
	char big[5000];
	memset(big, 'x', sizeof(big));
	memcpy(big, "{\"k\": \"", 7);
	big[sizeof(big) - 1] = '\0';
	char in2[6000];
	snprintf(in2, sizeof(in2), "%s\n{\"z\":3}\n", big);
	CHECK(!strcmp(run_stream(in2, 512, 1024), "ERR;{\"z\":3};"));
	/* scalars come out as values (the dispatcher refuses them) */
	CHECK(!strcmp(run_stream("1\n\"s\"\n", 100, 1024), "1;\"s\";"));
	/* NUL bytes are errors, not truncation */
	struct qmp_stream s;
	json_t *v;
	char msg[128];
	qmp_stream_init(&s, 1024);
	qmp_stream_feed(&s, "{\"a\0\": 1}\n{\"b\":1}\n", 19);
	CHECK(qmp_stream_next(&s, &v, msg, sizeof(msg)) == -1);
	CHECK(qmp_stream_next(&s, &v, msg, sizeof(msg)) == 1);
	CHECK(json_object_get(v, "b") != NULL);
	json_decref(v);
	qmp_stream_fini(&s);
}

/* ---- the dispatcher with a fake output ---- */

static json_t *replies;

static void sink_send(struct qmp_conn *c, json_t *msg)
{
	json_array_append(replies, msg);
}

static const struct qmp_conn_ops sink_ops = {.send = sink_send};

static json_t *reply(size_t i)
{
	return json_array_get(replies, i);
}

static const char *err_class(size_t i)
{
	return json_string_value(json_object_get(json_object_get(reply(i), "error"), "class"));
}

static const char *err_desc(size_t i)
{
	return json_string_value(json_object_get(json_object_get(reply(i), "error"), "desc"));
}

static void test_dispatch(void)
{
	struct qmp_conn c;
	replies = json_array();
	qmp_conn_init(&c, &sink_ops, NULL);
	const char *in = "{\"execute\":\"query-version\"}\n"
			 "{\"execute\":\"qmp_capabilities\"}\n"
			 "{\"execute\":\"qmp_capabilities\"}\n"
			 "{\"execute\":\"query-version\",\"id\":[1,{\"x\":2}]}\n"
			 "{\"execute\":\"nope\"}\n"
			 "{\"execute\":\"query-version\",\"bogus\":1}\n"
			 "{\"arguments\":{}}\n"
			 "{\"execute\":\"blockdev-del\",\"arguments\":{\"node-name\":5}}\n"
			 "{\"execute\":\"blockdev-del\",\"arguments\":{}}\n"
			 "{\"execute\":\"block-export-del\",\"arguments\":{\"id\":\"e\",\"mode\":\"x\"}}\n"
			 "{\"execute\":\"blockdev-add\",\"arguments\":{\"driver\":\"null-co\","
			 "\"node-name\":\"n\",\"cache\":{\"direct\":1}}}\n"
			 "{\"execute\":\"query-version\",\"exec-oob\":\"query-version\"}\n"
			 "[]\n";
	qmp_conn_input(&c, in, strlen(in));
	CHECK(json_array_size(replies) == 13);
	CHECK(!strcmp(err_class(0), "CommandNotFound"));
	CHECK(json_is_object(json_object_get(reply(1), "return")));
	CHECK(!strcmp(err_class(2), "CommandNotFound"));
	CHECK(json_object_get(reply(3), "return") != NULL);
	CHECK(json_is_array(json_object_get(reply(3), "id")));
	CHECK(!strcmp(err_class(4), "CommandNotFound"));
	CHECK(!strcmp(err_desc(4), "The command nope has not been found"));
	CHECK(!strcmp(err_desc(5), "QMP input member 'bogus' is unexpected"));
	CHECK(!strcmp(err_desc(6), "QMP input lacks member 'execute'"));
	CHECK(!strcmp(err_desc(7), "Invalid parameter type for 'node-name', expected: string"));
	CHECK(!strcmp(err_desc(8), "Parameter 'node-name' is missing"));
	CHECK(!strcmp(err_desc(9), "Parameter 'mode' does not accept value 'x'"));
	CHECK(!strcmp(err_desc(10), "Invalid parameter type for 'cache.direct', expected: boolean"));
	CHECK(!strcmp(err_desc(11), "QMP input member 'execute' clashes with 'exec-oob'"));
	CHECK(!strcmp(err_desc(12), "QMP input must be a JSON object"));
	qmp_conn_fini(&c);
	json_decref(replies);
}

static void test_schema(void)
{
	json_t *s = qmp_schema_build(), *e;
	size_t i;
	json_t *names = json_object();
	int commands = 0, events = 0;

	json_array_foreach(s, i, e)
	{
		const char *n = json_string_value(json_object_get(e, "name"));
		const char *mt = json_string_value(json_object_get(e, "meta-type"));
		CHECK(n && mt);
		if (!strcmp(mt, "command"))
			commands++;
		else if (!strcmp(mt, "event"))
			events++;
		else
			json_object_set_new(names, n, json_true()); /* types: unique names */
	}
	/* every command's types resolve, and every command of the table is there */
	json_array_foreach(s, i, e)
	{
		const char *mt = json_string_value(json_object_get(e, "meta-type"));
		if (!strcmp(mt, "command")) {
			CHECK(json_object_get(names, json_string_value(json_object_get(e, "arg-type"))));
			CHECK(json_object_get(names, json_string_value(json_object_get(e, "ret-type"))));
			CHECK(qmp_cmd_find(json_string_value(json_object_get(e, "name"))));
		}
	}
	int table = 0;
	for (const struct qmp_cmd *const *t = qmp_cmd_tables; *t; t++)
		for (const struct qmp_cmd *c = *t; c->name; c++)
			table++;
	CHECK(commands == table);
	CHECK(events >= 4);
	json_decref(names);
	json_decref(s);
}

int main(void)
{
	bd_log_set_level(BD_LOG_ERROR);
	test_stream();
	test_dispatch();
	test_schema();
	if (failures)
		fprintf(stderr, "%d failures\n", failures);
	return failures ? 1 : 0;
}
