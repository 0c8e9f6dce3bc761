/*
 * dispatch.c - one client's protocol state: greeting, capabilities negotiation, the command
 * envelope ({"execute", "arguments", "id"}), argument validation and the handler call.  No
 * sockets here: the transport (server.c, or a test's fake) supplies the output through
 * struct qmp_conn_ops.  [control]
 */
#include "qmp-like/qmp-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Every command table. */
const struct qmp_cmd *const qmp_cmd_tables[] = {
	qmp_cmds_control,
	qmp_cmds_block,
	qmp_cmds_job,
	qmp_cmds_object,
	qmp_cmds_pool,
	NULL,
};

const struct qmp_cmd *qmp_cmd_find(const char *name)
{
	for (const struct qmp_cmd *const *tab = qmp_cmd_tables; *tab; tab++)
		for (const struct qmp_cmd *c = *tab; c->name; c++)
			if (!strcmp(c->name, name))
				return c;
	return NULL;
}

json_t *qmp_greeting(void)
{
	return json_pack("{s:{s:{s:{s:i,s:i,s:i},s:s},s:[s]}}", "QMP", "version", "qemu", "micro",
			 QMP_QEMU_MICRO, "minor", QMP_QEMU_MINOR, "major", QMP_QEMU_MAJOR,
			 "package", "blockd " BD_VERSION_STRING, "capabilities", "oob");
}

json_t *qmp_error_msg(const char *cls, const char *desc, json_t *id)
{
	json_t *m = json_pack("{s:{s:s,s:s}}", "error", "class", cls, "desc", desc);
	if (id)
		json_object_set(m, "id", id);
	return m;
}

void qmp_conn_init(struct qmp_conn *c, const struct qmp_conn_ops *ops, void *opaque)
{
	memset(c, 0, sizeof(*c));
	c->ops = ops;
	c->opaque = opaque;
	qmp_stream_init(&c->in, QMP_MAX_INPUT);
}

void qmp_conn_fini(struct qmp_conn *c)
{
	qmp_stream_fini(&c->in);
	while (c->fds) {
		struct qmp_fd *f = c->fds;
		c->fds = f->next;
		close(f->fd);
		free(f);
	}
}

int qmp_conn_take_fd(struct qmp_conn *c)
{
	struct qmp_fd *f = c->fds;
	int fd;
	if (!f)
		return -1;
	c->fds = f->next;
	fd = f->fd;
	free(f);
	return fd;
}

static void send_error(struct qmp_conn *c, const char *cls, const char *desc, json_t *id)
{
	json_t *m = qmp_error_msg(cls, desc, id);
	c->ops->send(c, m);
	json_decref(m);
}

/* The envelope checks of QEMU's qmp_dispatch_check_obj(), with its messages. */
static int check_envelope(json_t *msg, const char **name, bool *oob, json_t **args,
			  struct bd_err *err)
{
	const char *key;
	json_t *val, *exec = NULL, *exec_oob = NULL;

	json_object_foreach(msg, key, val)
	{
		if (!strcmp(key, "execute") || !strcmp(key, "exec-oob")) {
			if (!json_is_string(val))
				return bd_err_set(err, -EINVAL,
						  "QMP input member '%s' must be a string", key);
			if (key[4] == '-')
				exec_oob = val;
			else
				exec = val;
		} else if (!strcmp(key, "arguments")) {
			if (!json_is_object(val))
				return bd_err_set(err, -EINVAL,
						  "QMP input member 'arguments' must be an object");
			*args = val;
		} else if (strcmp(key, "id") != 0) {
			return bd_err_set(err, -EINVAL, "QMP input member '%s' is unexpected", key);
		}
	}
	if (exec && exec_oob)
		return bd_err_set(err, -EINVAL, "QMP input member 'execute' clashes with 'exec-oob'");
	if (!exec && !exec_oob)
		return bd_err_set(err, -EINVAL, "QMP input lacks member 'execute'");
	*name = json_string_value(exec ? exec : exec_oob);
	*oob = exec_oob != NULL;
	return 0;
}

void qmp_conn_handle(struct qmp_conn *c, json_t *msg)
{
	struct bd_err err = {0};
	const struct qmp_cmd *cmd;
	const char *name = NULL;
	json_t *args = NULL, *id, *reply, *empty = NULL;
	bool oob = false;

	if (!json_is_object(msg)) {
		send_error(c, "GenericError", "QMP input must be a JSON object", NULL);
		json_decref(msg);
		return;
	}
	id = json_object_get(msg, "id");
	if (check_envelope(msg, &name, &oob, &args, &err) < 0) {
		send_error(c, "GenericError", err.msg, id);
		goto out;
	}
	if (!c->negotiated && strcmp(name, "qmp_capabilities") != 0) {
		send_error(c, "CommandNotFound",
			   "Expecting capabilities negotiation with 'qmp_capabilities'", id);
		goto out;
	}
	if (c->negotiated && !strcmp(name, "qmp_capabilities")) {
		send_error(c, "CommandNotFound",
			   "Capabilities negotiation is already complete, command ignored", id);
		goto out;
	}
	cmd = qmp_cmd_find(name);
	if (!cmd) {
		snprintf(err.msg, sizeof(err.msg), "The command %s has not been found", name);
		send_error(c, "CommandNotFound", err.msg, id);
		goto out;
	}
	if (oob) {
		snprintf(err.msg, sizeof(err.msg), "The command %s does not support OOB", name);
		send_error(c, "GenericError", err.msg, id);
		goto out;
	}
	if (!args)
		args = empty = json_object();
	if (qmp_args_check(cmd->args, args, &err) < 0) {
		send_error(c, "GenericError", err.msg, id);
		goto out;
	}
	if (c->ops->allowed && !c->ops->allowed(c, name, args)) {
		send_error(c, "GenericError", "command not allowed here", id);
		goto out;
	}

	struct qmp_req req = {.conn = c, .name = name};
	bd_err_clear(&err);
	if (cmd->fn(&req, args, &err) < 0) {
		if (!err.msg[0])
			snprintf(err.msg, sizeof(err.msg), "%s failed", name);
		send_error(c, req.err_class ? req.err_class : "GenericError", err.msg, id);
		json_decref(req.ret);
		goto out;
	}
	reply = json_object();
	json_object_set_new(reply, "return", req.ret ? req.ret : json_object());
	if (id)
		json_object_set(reply, "id", id);
	c->ops->send(c, reply);
	json_decref(reply);
out:
	json_decref(empty);
	json_decref(msg);
}

void qmp_conn_process(struct qmp_conn *c)
{
	char emsg[512];
	json_t *v;
	int r;

	while (!c->closing && !(c->ops->throttled && c->ops->throttled(c))) {
		r = qmp_stream_next(&c->in, &v, emsg, sizeof(emsg));
		if (r == 0)
			break;
		if (r < 0) {
			send_error(c, "GenericError", emsg, NULL);
			continue;
		}
		qmp_conn_handle(c, v);
	}
}

void qmp_conn_input(struct qmp_conn *c, const void *data, size_t len)
{
	qmp_stream_feed(&c->in, data, len);
	qmp_conn_process(c);
}
