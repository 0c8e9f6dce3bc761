/*
 * cmd-control.c - the protocol's own commands (qmp_capabilities, query-version, query-commands,
 * query-qmp-schema, quit, getfd, closefd) and the table of events.  [control]
 */
#include "qmp-like/qmp-int.h"

#include <ctype.h>
#include <string.h>
#include <unistd.h>

#define M(...) ((const struct qmp_member[]){__VA_ARGS__, {NULL}})

static const struct qmp_type t_capability = {
	.kind = QK_ENUM, .values = (const char *const[]){"oob", NULL}};
static const struct qmp_type t_capability_list = {.kind = QK_ARRAY, .element = &t_capability};

const struct qmp_type qmp_t_job_status = {
	.kind = QK_ENUM,
	.doc_name = "JobStatus",
	.values = (const char *const[]){"undefined", "created", "running", "paused", "ready",
					"standby", "waiting", "pending", "aborting", "concluded",
					"null", NULL}};

static int cmd_qmp_capabilities(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *enable = json_object_get(args, "enable"), *v;
	size_t i;
	bool oob = false;

	json_array_foreach(enable, i, v)
		if (!strcmp(json_string_value(v), "oob"))
			oob = true;
	req->conn->negotiated = true;
	req->conn->oob = oob;
	return 0;
}

static int cmd_query_version(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *g = qmp_greeting();
	req->ret = json_incref(json_object_get(json_object_get(g, "QMP"), "version"));
	json_decref(g);
	return 0;
}

static int cmd_query_commands(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_array();
	for (const struct qmp_cmd *const *tab = qmp_cmd_tables; *tab; tab++)
		for (const struct qmp_cmd *c = *tab; c->name; c++)
			json_array_append_new(list, json_pack("{s:s}", "name", c->name));
	req->ret = list;
	return 0;
}

static int cmd_query_qmp_schema(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = qmp_schema_build();
	return 0;
}

static int cmd_quit(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	bd_log(BD_LOG_INFO, "quit requested on the control socket");
	qmp_request_quit(req->conn);
	return 0;
}

static int cmd_getfd(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *name = json_string_value(json_object_get(args, "fdname"));
	int fd;

	if (isdigit((unsigned char)name[0]))
		return bd_err_set(err, -EINVAL,
				  "Parameter 'fdname' expects a name not starting with a digit");
	if (!name[0] || strlen(name) > 127)
		return bd_err_set(err, -EINVAL, "Parameter 'fdname' expects a name of 1 to 127 "
						"characters");
	fd = qmp_conn_take_fd(req->conn);
	if (fd < 0)
		return bd_err_set(err, -EINVAL, "No file descriptor supplied via SCM_RIGHTS");
	return qmp_fd_add(name, fd, err);
}

static int cmd_closefd(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	return qmp_fd_close(json_string_value(json_object_get(args, "fdname")), err);
}

static const struct qmp_type t_version_triple = {
	.kind = QK_OBJECT,
	.members = M({"major", &qmp_t_int}, {"minor", &qmp_t_int}, {"micro", &qmp_t_int})};
static const struct qmp_type t_version_info = {
	.kind = QK_OBJECT,
	.doc_name = "VersionInfo",
	.members = M({"qemu", &t_version_triple}, {"package", &qmp_t_str})};
static const struct qmp_type t_command_info = {.kind = QK_OBJECT,
					       .members = M({"name", &qmp_t_str})};
static const struct qmp_type t_command_info_list = {.kind = QK_ARRAY,
						    .element = &t_command_info};
static const struct qmp_type t_schema_list = {.kind = QK_ARRAY, .element = &qmp_t_any};
static const struct qmp_type t_fdname = {
	.kind = QK_OBJECT,
	.members = M({"fdname", &qmp_t_str, false, "the name the descriptor is known by"})};

const struct qmp_cmd qmp_cmds_control[] = {
	{"qmp_capabilities", cmd_qmp_capabilities,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"enable", &t_capability_list, true,
			       "capabilities to enable: \"oob\" (accepted; no command runs "
			       "out of band)"})},
	 NULL, QMP_CMD_BEFORE_CAPS,
	 "Leave capabilities negotiation mode.  Every other command is refused with "
	 "CommandNotFound until this one has run; afterwards it is itself refused."},
	{"query-version", cmd_query_version, NULL, &t_version_info, 0,
	 "The QEMU QMP dialect blockd speaks (7.2.0) and blockd's own version in \"package\"."},
	{"query-commands", cmd_query_commands, NULL, &t_command_info_list, 0,
	 "Every command this daemon accepts."},
	{"query-qmp-schema", cmd_query_qmp_schema, NULL, &t_schema_list, 0,
	 "The schema of every command and event (QEMU's SchemaInfo format), generated from the "
	 "table the dispatcher validates arguments with."},
	{"quit", cmd_quit, NULL, NULL, 0,
	 "Stop the daemon after the reply has been sent, as on SIGTERM (exports finish in-flight "
	 "requests, nodes are flushed and closed)."},
	{"getfd", cmd_getfd, &t_fdname, NULL, QMP_CMD_BLOCKD,
	 "Name the file descriptor passed with this command (SCM_RIGHTS), e.g. a listening socket "
	 "for nbd-server-start addr.type=fd, addr.str=NAME.  A name given again replaces the "
	 "old descriptor.  Descriptors belong to the daemon, not to the connection."},
	{"closefd", cmd_closefd, &t_fdname, NULL, QMP_CMD_BLOCKD,
	 "Close a descriptor named with getfd."},
	{NULL},
};

/* ---- events ---- */

static const struct qmp_type t_io_op = {.kind = QK_ENUM,
					.values = (const char *const[]){"read", "write", NULL}};
static const struct qmp_type t_error_action = {
	.kind = QK_ENUM, .values = (const char *const[]){"ignore", "report", "stop", NULL}};

const struct qmp_event_desc qmp_events[] = {
	{"BLOCK_EXPORT_DELETED",
	 &(const struct qmp_type){.kind = QK_OBJECT,
				  .members = M({"id", &qmp_t_str, false, "the export's id"})},
	 "An export is gone: after block-export-del once its last client left, at once with "
	 "mode=hard, or when nbd-server-stop removed it."},
	{"BLOCK_IMAGE_CORRUPTED",
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"device", &qmp_t_str, false, "empty: blockd has no devices"},
			      {"node-name", &qmp_t_str, true, "the node"},
			      {"msg", &qmp_t_str, false, "what is wrong"},
			      {"offset", &qmp_t_int, true, "where (host offset in the image)"},
			      {"size", &qmp_t_int, true, "how many bytes"},
			      {"fatal", &qmp_t_bool, false,
			       "true when the image was made read-only/unusable"})},
	 "A format driver found metadata corruption."},
	{"BLOCK_IO_ERROR",
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"device", &qmp_t_str, false, "empty: blockd has no devices"},
			      {"node-name", &qmp_t_str, true, "the node"},
			      {"operation", &t_io_op, false, "read or write"},
			      {"action", &t_error_action, false,
			       "what was done (blockd reports the error to the client)"},
			      {"nospace", &qmp_t_bool, true, "the error was ENOSPC"},
			      {"reason", &qmp_t_str, false, "strerror() of the error"})},
	 "A request failed with an I/O error."},
	{"JOB_STATUS_CHANGE",
	 &(const struct qmp_type){.kind = QK_OBJECT,
				  .members = M({"id", &qmp_t_str, false, "the job"},
					       {"status", &qmp_t_job_status, false,
						"its new status"})},
	 "A job (blockdev-create) changed status: created, running, waiting, pending, concluded "
	 "(aborting before concluded on failure or cancel), and null after job-dismiss."},
	/* pools: libvirt's storage pool lifecycle events */
	{"POOL_LIFECYCLE",
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"pool", &qmp_t_str, false, "the pool's name"},
			      {"uuid", &qmp_t_str, false, "the pool's UUID"},
			      {"event", &qmp_t_str, false,
			       "Defined, Undefined, Started, Stopped, Created (built) or Deleted"})},
	 "A storage pool's lifecycle changed (libvirt's VIR_STORAGE_POOL_EVENT_* names)."},
	{"POOL_VOLUME_JOB_COMPLETED",
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"job", &qmp_t_int, false, "the number the command returned"},
			      {"pool", &qmp_t_str, false, "the pool"},
			      {"vol", &qmp_t_str, false, "the volume"},
			      {"operation", &qmp_t_str, false, "wipe, upload or download"},
			      {"error", &qmp_t_str, true, "why it failed (absent on success)"})},
	 "A vol-wipe, vol-upload or vol-download run with async finished."},
	{NULL},
};
