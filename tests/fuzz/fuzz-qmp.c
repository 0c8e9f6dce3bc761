/*
 * fuzz-qmp.c - libFuzzer harness for the control socket's parser and dispatcher: the input is
 * a client's byte stream, fed in chunks (so values split across reads are exercised) to a
 * connection whose output goes to a fake sink.  Commands run for real when they are safe
 * without I/O loops and without touching the file system (null-co nodes, objects, queries,
 * jobs, fds); the others are refused by the connection's filter.  Everything created is
 * deleted after each input.  [single thread]
 */
#include "qmp-like/qmp-int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t out_bytes;
static char *objects[64];
static int nobjects;

static void fake_send(struct qmp_conn *c, json_t *msg)
{
	char *text = json_dumps(msg, JSON_PRESERVE_ORDER);
	if (!text)
		abort();
	/* every reply is valid JSON with exactly one of return/error/event/QMP */
	json_t *back = json_loads(text, 0, NULL);
	if (!back)
		abort();
	int kinds = !!json_object_get(back, "return") + !!json_object_get(back, "error") +
		    !!json_object_get(back, "event") + !!json_object_get(back, "QMP");
	if (kinds != 1)
		abort();
	json_decref(back);
	out_bytes += strlen(text);
	free(text);
}

static bool safe_driver(json_t *args)
{
	const char *drv = json_string_value(json_object_get(args, "driver"));
	json_t *file = json_object_get(args, "file");
	if (!drv)
		return true; /* refused by validation anyway */
	if (!strcmp(drv, "null-co"))
		return true;
	if (!strcmp(drv, "raw"))
		return !file || json_is_string(file) ||
		       (json_is_object(file) && safe_driver(file));
	return false;
}

static bool fake_allowed(struct qmp_conn *c, const char *cmd, json_t *args)
{
	static const char *const plain[] = {
		"qmp_capabilities", "query-version", "query-commands", "query-qmp-schema",
		"query-named-block-nodes", "query-block-exports", "query-blockstats",
		"query-jobs", "query-block-jobs", "blockdev-del", "block_resize", "object-del",
		"qom-get", "qom-set", "job-cancel", "job-finalize", "job-dismiss",
		"block-export-del", "getfd", "closefd", "block_set_io_throttle", NULL};
	for (int i = 0; plain[i]; i++)
		if (!strcmp(cmd, plain[i]))
			return true;
	if (!strcmp(cmd, "blockdev-add"))
		return safe_driver(args);
	if (!strcmp(cmd, "blockdev-reopen")) {
		json_t *o;
		size_t i;
		json_array_foreach(json_object_get(args, "options"), i, o)
			if (!safe_driver(o))
				return false;
		return true;
	}
	if (!strcmp(cmd, "object-add")) {
		const char *t = json_string_value(json_object_get(args, "qom-type"));
		const char *id = json_string_value(json_object_get(args, "id"));
		if (!t || !id || (strcmp(t, "secret") && strcmp(t, "throttle-group")))
			return false;
		if (json_object_get(args, "file"))
			return false;
		if (nobjects < 64)
			objects[nobjects++] = strdup(id);
		return nobjects < 64;
	}
	return false;
}

static const struct qmp_conn_ops fake_ops = {
	.send = fake_send,
	.allowed = fake_allowed,
};

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	bd_log_set_level(BD_LOG_ERROR);
	return 0;
}

static void cleanup(void)
{
	struct bd_err err;
	bool progress = true;

	while (progress) {
		progress = false;
		for (struct bd_node *n = bd_graph_next(NULL); n; n = bd_graph_next(n)) {
			bd_err_clear(&err);
			if (bd_graph_del(bd_node_name(n), &err) == 0) {
				progress = true;
				break;
			}
		}
	}
	for (int i = 0; i < nobjects; i++) {
		bd_err_clear(&err);
		bd_object_del(objects[i], &err);
		free(objects[i]);
	}
	nobjects = 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qmp_conn c;
	size_t chunk = size ? 1 + data[0] % 97 : 1;

	qmp_conn_init(&c, &fake_ops, NULL);
	json_t *g = qmp_greeting();
	fake_send(&c, g);
	json_decref(g);
	for (size_t off = 0; off < size; off += chunk) {
		size_t n = size - off < chunk ? size - off : chunk;
		qmp_conn_input(&c, data + off, n);
	}
	qmp_conn_fini(&c);
	cleanup();
	return 0;
}
