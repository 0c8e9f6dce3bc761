/*
 * event.c - events from anywhere to the control socket's sink.  [any thread; sink on main]
 */
#include "blockd/internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pending_event {
	char name[64];
	json_t *data;
};

static void (*event_sink)(const char *name, json_t *data);

void bd_event_set_sink(void (*sink)(const char *name, json_t *data))
{
	event_sink = sink;
}

static void deliver(void *arg)
{
	struct pending_event *e = arg;
	if (event_sink) {
		event_sink(e->name, e->data);
	} else {
		char *text = json_dumps(e->data, JSON_COMPACT);
		bd_log(BD_LOG_DEBUG, "event %s %s", e->name, text ? text : "");
		free(text);
	}
	json_decref(e->data);
	free(e);
}

void bd_event_emit(const char *name, json_t *data)
{
	struct pending_event *e = calloc(1, sizeof(*e));
	struct bd_loop *main_loop = bd_loop_main();

	if (!data)
		data = json_object();
	if (!e) {
		json_decref(data);
		return;
	}
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->data = data;
	if (!main_loop || bd_loop_current() == main_loop) {
		deliver(e);
		return;
	}
	if (bd_loop_send(main_loop, deliver, e) < 0) {
		json_decref(data);
		free(e);
	}
}
