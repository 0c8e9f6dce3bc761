/*
 * export.c - the front door for exports: dispatch --export / block-export-add on "type", and
 * shut every export type down at exit; the node an export serves after external snapshots.
 * [control]
 */
#include "blockd/internal.h"

#include <stdatomic.h>
#include <string.h>

struct bd_node *bd_node_active_layer(struct bd_node *node)
{
	/* fwd 2: forwarding (1 is the moment of the switch, still held on node) */
	for (unsigned depth = 0; node && depth < 1024; depth++) {
		if (atomic_load_explicit(&node->fwd, memory_order_acquire) != 2 || !node->fwd_to)
			break;
		node = node->fwd_to;
	}
	return node;
}

const struct bd_export_type *bd_export_type_find(const char *name)
{
	for (const struct bd_export_type *const *t = bd_export_type_table; *t; t++)
		if (!strcmp((*t)->name, name))
			return *t;
	return NULL;
}

int bd_export_add(json_t *opts, struct bd_err *err)
{
	const char *type_name;
	const struct bd_export_type *type;
	int r = bd_opts_str(opts, "type", &type_name, err);

	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'type' is missing");
	if (r < 0)
		return r;
	type = bd_export_type_find(type_name);
	if (!type)
		return bd_err_set(err, -EINVAL, "Invalid parameter value for 'type': '%s'",
				  type_name);
	return type->add(opts, err);
}

void bd_exports_shutdown(void)
{
	for (const struct bd_export_type *const *t = bd_export_type_table; *t; t++)
		if ((*t)->shutdown)
			(*t)->shutdown();
}
