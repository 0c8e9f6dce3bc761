/*
 * object.c - objects (--object / object-add): the dispatcher, the id registry, and the
 * iothread object type with the default I/O loop.  [control]
 */
#include "blockd/internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct object_entry {
	char id[128];
	const struct bd_object_type *type;
	struct object_entry *next;
};

static struct object_entry *objects;

struct iothread {
	char id[128];
	struct bd_loop *loop;
	struct iothread *next;
};

static struct iothread *iothreads;
static struct bd_loop *default_loop;

bool bd_id_valid(const char *s, size_t max_len)
{
	/* QEMU's id rules: a letter first, then letters, digits, '-', '.', '_' */
	size_t len = strlen(s);
	if (len == 0 || len > max_len || !isalpha((unsigned char)s[0]))
		return false;
	for (size_t i = 1; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (!isalnum(c) && c != '-' && c != '.' && c != '_')
			return false;
	}
	return true;
}

int bd_object_add(json_t *props, struct bd_err *err)
{
	const char *type_name = NULL, *id = NULL;
	const struct bd_object_type *type = NULL;
	json_t *copy;
	int r;

	if (bd_opts_str(props, "qom-type", &type_name, err) < 0)
		return err && err->code ? err->code
					: bd_err_set(err, -EINVAL, "Parameter 'qom-type' is missing");
	if (bd_opts_str(props, "id", &id, err) < 0)
		return err && err->code ? err->code
					: bd_err_set(err, -EINVAL, "Parameter 'id' is missing");
	if (!bd_id_valid(id, 127))
		return bd_err_set(err, -EINVAL, "Invalid object id '%s'", id);
	for (const struct bd_object_type *const *t = bd_object_type_table; *t; t++)
		if (!strcmp((*t)->name, type_name))
			type = *t;
	if (!type)
		return bd_err_set(err, -EINVAL, "Invalid parameter value for 'qom-type': '%s'",
				  type_name);
	for (struct object_entry *e = objects; e; e = e->next)
		if (!strcmp(e->id, id))
			return bd_err_set(err, -EEXIST,
					  "attempt to add duplicate property '%s' to object "
					  "(type 'container')",
					  id);

	copy = json_deep_copy(props);
	json_object_del(copy, "qom-type");
	json_object_del(copy, "id");
	bd_opts_clear_marks(copy);
	r = type->add(id, copy, err);
	json_decref(copy);
	if (r < 0)
		return bd_err_prefix(err, "object '%s'", id);

	struct object_entry *e = calloc(1, sizeof(*e));
	if (!e)
		abort();
	snprintf(e->id, sizeof(e->id), "%s", id);
	e->type = type;
	e->next = objects;
	objects = e;
	return 0;
}

int bd_object_del(const char *id, struct bd_err *err)
{
	for (struct object_entry **pp = &objects; *pp; pp = &(*pp)->next) {
		struct object_entry *e = *pp;
		if (strcmp(e->id, id))
			continue;
		int r = e->type->del ? e->type->del(id, err)
				     : bd_err_set(err, -ENOTSUP, "object '%s' cannot be deleted", id);
		if (r < 0)
			return r;
		*pp = e->next;
		free(e);
		return 0;
	}
	return bd_err_set(err, -ENOENT, "object '%s' not found", id);
}

/* ---- iothread ---- */

static int iothread_add(const char *id, json_t *props, struct bd_err *err)
{
	static const char *const tuning[] = {"poll-max-ns", "poll-grow", "poll-shrink",
					     "aio-max-batch", NULL};
	struct iothread *t;
	uint64_t v;
	int r;

	/* QEMU's polling knobs: accepted for command-line compatibility; an io_uring loop
	 * has no polling phase to tune. */
	for (int i = 0; tuning[i]; i++)
		if ((r = bd_opts_u64(props, tuning[i], &v, err)) < 0 && r != -ENOENT)
			return r;
	if ((r = bd_opts_check_unused(props, NULL, err)) < 0)
		return r;
	t = calloc(1, sizeof(*t));
	if (!t)
		return bd_err_set(err, -ENOMEM, "out of memory");
	snprintf(t->id, sizeof(t->id), "%s", id);
	t->loop = bd_loop_create(id, err);
	if (!t->loop) {
		free(t);
		return err ? err->code : -EIO;
	}
	bd_io_loop_register(t->loop);
	t->next = iothreads;
	iothreads = t;
	return 0;
}

static int iothread_del(const char *id, struct bd_err *err)
{
	for (struct iothread **pp = &iothreads; *pp; pp = &(*pp)->next) {
		struct iothread *t = *pp;
		if (strcmp(t->id, id))
			continue;
		/* Exports keep loop pointers for their connections and queues, and nodes keep a
		 * channel per loop: once handed out, a loop lives as long as the daemon. */
		if (bd_loop_was_used(t->loop))
			return bd_err_set(err, -EBUSY,
					  "iothread '%s' is in use (it has served exports) and "
					  "cannot be deleted while the daemon runs",
					  id);
		*pp = t->next;
		bd_io_loop_unregister(t->loop);
		bd_loop_destroy(t->loop);
		free(t);
		return 0;
	}
	return bd_err_set(err, -ENOENT, "iothread '%s' not found", id);
}

const struct bd_object_type bd_objtype_iothread = {
	.name = "iothread",
	.add = iothread_add,
	.del = iothread_del,
};

struct bd_loop *bd_iothread_find(const char *id)
{
	for (struct iothread *t = iothreads; t; t = t->next) {
		if (!strcmp(t->id, id)) {
			bd_loop_mark_used(t->loop);
			return t->loop;
		}
	}
	return NULL;
}

const char *bd_iothread_id_of(const struct bd_loop *loop)
{
	for (struct iothread *t = iothreads; t; t = t->next)
		if (t->loop == loop)
			return t->id;
	return NULL;
}

int bd_default_io_loop_create(struct bd_err *err)
{
	if (default_loop)
		return 0;
	default_loop = bd_loop_create("io0", err);
	if (!default_loop)
		return err ? err->code : -EIO;
	bd_io_loop_register(default_loop);
	return 0;
}

struct bd_loop *bd_default_io_loop(void)
{
	return default_loop;
}

void bd_iothreads_destroy_all(void)
{
	while (iothreads) {
		struct iothread *t = iothreads;
		iothreads = t->next;
		bd_io_loop_unregister(t->loop);
		bd_loop_destroy(t->loop);
		free(t);
	}
	if (default_loop) {
		bd_io_loop_unregister(default_loop);
		bd_loop_destroy(default_loop);
		default_loop = NULL;
	}
	while (objects) {
		struct object_entry *e = objects;
		objects = e->next;
		free(e);
	}
}
