/*
 * job.c - jobs (QEMU's job model: query-jobs, job-cancel, job-finalize, job-dismiss and the
 * JOB_STATUS_CHANGE events) and the one job type blockd has so far, blockdev-create.
 * [control; the driver's create() runs on a worker thread]
 *
 * A create job: created -> running (the driver's create() on its own thread, so the control
 * socket keeps answering) -> waiting -> pending -> concluded on success, or -> aborting ->
 * concluded on failure or cancel; the result is read with query-jobs and the job removed with
 * job-dismiss (-> null).  Create jobs finalize automatically, as in QEMU.  The worker's result
 * comes back to the main loop by message.
 */
#include "blockd/internal.h"
#include "qmp-like/qmp-int.h"

#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define M(...) ((const struct qmp_member[]){__VA_ARGS__, {NULL}})

extern const struct qmp_type qmp_t_job_status;

enum job_status {
	JS_UNDEFINED,
	JS_CREATED,
	JS_RUNNING,
	JS_PAUSED,
	JS_READY,
	JS_STANDBY,
	JS_WAITING,
	JS_PENDING,
	JS_ABORTING,
	JS_CONCLUDED,
	JS_NULL,
	JS__COUNT
};

static const char *const status_names[] = {"undefined", "created", "running", "paused",
					   "ready",     "standby", "waiting", "pending",
					   "aborting",  "concluded", "null"};

enum job_verb { JV_CANCEL, JV_PAUSE, JV_RESUME, JV_SET_SPEED, JV_COMPLETE, JV_FINALIZE,
		JV_DISMISS, JV__COUNT };
static const char *const verb_names[] = {"cancel",   "pause",    "resume", "set-speed",
					 "complete", "finalize", "dismiss"};

/* Which verb is allowed in which status (QEMU's job model). */
static const bool verb_ok[JV__COUNT][JS__COUNT] = {
	/*                U  C  R  P  Y  S  W  D  X  E  N */
	[JV_CANCEL] = {0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0},
	[JV_PAUSE] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
	[JV_RESUME] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
	[JV_SET_SPEED] = {0, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0},
	[JV_COMPLETE] = {0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0},
	[JV_FINALIZE] = {0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0},
	[JV_DISMISS] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0},
};

struct job {
	char id[128];
	const char *type;
	enum job_status status;
	int ret;
	char *error;
	bool cancelled;
	int64_t progress, total;
	/* create */
	const struct bd_driver *drv;
	json_t *opts;
	struct bd_node *file;
	pthread_t thread;
	bool thread_running;
	struct bd_err err;
	struct job *next;
};

static struct job *jobs;

static void job_set_status(struct job *j, enum job_status s)
{
	j->status = s;
	bd_event_emit("JOB_STATUS_CHANGE",
		      json_pack("{s:s,s:s}", "id", j->id, "status", status_names[s]));
}

static struct job *job_find(const char *id, struct bd_err *err)
{
	for (struct job *j = jobs; j; j = j->next)
		if (!strcmp(j->id, id))
			return j;
	bd_err_set(err, -ENOENT, "Job not found");
	return NULL;
}

static int job_verb_check(struct job *j, enum job_verb v, struct bd_err *err)
{
	if (verb_ok[v][j->status])
		return 0;
	return bd_err_set(err, -EPERM, "Job '%s' in state '%s' cannot accept command verb '%s'",
			  j->id, status_names[j->status], verb_names[v]);
}

static void job_free(struct job *j)
{
	for (struct job **pp = &jobs; *pp; pp = &(*pp)->next) {
		if (*pp == j) {
			*pp = j->next;
			break;
		}
	}
	if (j->file)
		bd_node_unref(j->file);
	json_decref(j->opts);
	free(j->error);
	free(j);
}

/* ---- create ---- */

static void create_finish(void *arg)
{
	struct job *j = arg;

	pthread_join(j->thread, NULL);
	j->thread_running = false;
	if (j->file) {
		bd_node_unref(j->file);
		j->file = NULL;
	}
	j->progress = 1;
	if (j->ret == 0 && j->cancelled)
		j->ret = -ECANCELED;
	if (j->ret < 0) {
		if (j->cancelled)
			j->error = strdup("Operation cancelled");
		else
			j->error = strdup(j->err.msg[0] ? j->err.msg : strerror(-j->ret));
		job_set_status(j, JS_ABORTING);
		job_set_status(j, JS_CONCLUDED);
		return;
	}
	job_set_status(j, JS_WAITING);
	job_set_status(j, JS_PENDING);
	job_set_status(j, JS_CONCLUDED);
}

static void *create_thread(void *arg)
{
	struct job *j = arg;
	j->ret = j->drv->create(j->file, j->opts, &j->err);
	if (j->ret > 0)
		j->ret = 0;
	if (bd_loop_send(bd_loop_main(), create_finish, j) < 0)
		abort();
	return NULL;
}

static bool id_wellformed(const char *id)
{
	if (!isalpha((unsigned char)id[0]) || strlen(id) > 127)
		return false;
	for (const char *p = id + 1; *p; p++)
		if (!isalnum((unsigned char)*p) && *p != '-' && *p != '.' && *p != '_')
			return false;
	return true;
}

static int cmd_blockdev_create(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	const char *id = json_string_value(json_object_get(args, "job-id"));
	json_t *options = json_object_get(args, "options");
	const char *drvname = json_string_value(json_object_get(options, "driver"));
	const struct bd_driver *drv = bd_driver_find(drvname);
	json_t *file;
	struct job *j;

	if (!id_wellformed(id))
		return bd_err_set(err, -EINVAL, "Invalid job ID '%s'", id);
	for (j = jobs; j; j = j->next)
		if (!strcmp(j->id, id))
			return bd_err_set(err, -EEXIST, "Job ID '%s' already in use", id);
	if (!drv || !drv->create)
		return bd_err_set(err, -ENOTSUP, "Driver does not support blockdev-create");
	j = calloc(1, sizeof(*j));
	if (!j)
		abort();
	snprintf(j->id, sizeof(j->id), "%s", id);
	j->type = "create";
	j->total = 1;
	j->drv = drv;
	j->opts = json_deep_copy(options);
	json_object_del(j->opts, "driver");
	/* A format's image lives in a node: keep it open while the job runs. */
	file = json_object_get(j->opts, "file");
	if (json_is_string(file)) {
		j->file = bd_graph_find(json_string_value(file));
		if (!j->file) {
			bd_err_set(err, -ENOENT, "Cannot find device='' nor node-name='%s'",
				   json_string_value(file));
			json_decref(j->opts);
			free(j);
			return -ENOENT;
		}
		/* create() rewrites and resizes the file from a worker thread: nothing else may
		 * use it meanwhile (QEMU refuses this through its permission system) */
		if (bd_node_in_use(j->file)) {
			bd_err_set(err, -EBUSY,
				   "Node '%s' is in use (by an export, a parent or another job)",
				   json_string_value(file));
			json_decref(j->opts);
			free(j);
			return -EBUSY;
		}
		bd_node_ref(j->file);
	}
	j->next = jobs;
	jobs = j;
	job_set_status(j, JS_CREATED);
	job_set_status(j, JS_RUNNING);
	if (pthread_create(&j->thread, NULL, create_thread, j) != 0) {
		j->ret = -EAGAIN;
		j->error = strdup("cannot start a thread for the job");
		job_set_status(j, JS_ABORTING);
		job_set_status(j, JS_CONCLUDED);
		return 0;
	}
	j->thread_running = true;
	return 0;
}

/* ---- job-* ---- */

static int cmd_query_jobs(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	json_t *list = json_array();
	/* oldest first */
	size_t n = 0;
	for (struct job *j = jobs; j; j = j->next)
		n++;
	for (size_t i = n; i-- > 0;) {
		struct job *j = jobs;
		for (size_t k = 0; k < i; k++)
			j = j->next;
		json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", j->id, "type", j->type,
				      "status", status_names[j->status], "current-progress",
				      (json_int_t)j->progress, "total-progress",
				      (json_int_t)j->total);
		if (j->error)
			json_object_set_new(o, "error", json_string(j->error));
		json_array_append_new(list, o);
	}
	req->ret = list;
	return 0;
}

static int cmd_job_cancel(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	struct job *j = job_find(json_string_value(json_object_get(args, "id")), err);
	if (!j)
		return err->code;
	if (job_verb_check(j, JV_CANCEL, err) < 0)
		return err->code;
	/* The worker cannot be interrupted: the job concludes as cancelled when it returns. */
	j->cancelled = true;
	return 0;
}

static int cmd_job_finalize(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	struct job *j = job_find(json_string_value(json_object_get(args, "id")), err);
	if (!j)
		return err->code;
	if (job_verb_check(j, JV_FINALIZE, err) < 0)
		return err->code;
	job_set_status(j, JS_CONCLUDED);
	return 0;
}

static int cmd_job_dismiss(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	struct job *j = job_find(json_string_value(json_object_get(args, "id")), err);
	if (!j)
		return err->code;
	if (job_verb_check(j, JV_DISMISS, err) < 0)
		return err->code;
	job_set_status(j, JS_NULL);
	job_free(j);
	return 0;
}

static int cmd_query_block_jobs(struct qmp_req *req, json_t *args, struct bd_err *err)
{
	req->ret = json_array(); /* no block jobs (mirror, stream, ...) yet */
	return 0;
}

void qmp_jobs_shutdown(void)
{
	/* Wait for workers (create() takes a bounded time), let their messages run, free. */
	for (int i = 0; i < 10000; i++) {
		bool running = false;
		for (struct job *j = jobs; j; j = j->next)
			running |= j->thread_running;
		if (!running)
			break;
		bd_loop_poll_once();
		usleep(1000);
	}
	for (struct job *j = jobs, *next; j; j = next) {
		next = j->next;
		if (!j->thread_running)
			job_free(j);
	}
}

/* ---- BlockdevCreateOptions: the driver names ---- */

struct create_type {
	struct qmp_type t;
	struct qmp_type drv_enum;
	struct qmp_member members[2];
	const char **names;
};

static struct qmp_type *build_create_options(void)
{
	struct create_type *c = calloc(1, sizeof(*c));
	size_t n = 0;
	if (!c)
		abort();
	while (bd_driver_table[n])
		n++;
	c->names = calloc(n + 1, sizeof(*c->names));
	if (!c->names)
		abort();
	for (size_t i = 0; i < n; i++)
		c->names[i] = bd_driver_table[i]->name;
	c->drv_enum.kind = QK_ENUM;
	c->drv_enum.values = c->names;
	c->members[0].name = "driver";
	c->members[0].type = &c->drv_enum;
	c->members[0].help = "the driver; the other members are the driver's create options";
	c->t.kind = QK_OBJECT;
	c->t.doc_name = "BlockdevCreateOptions";
	c->t.members = c->members;
	c->t.open = true;
	return &c->t;
}

static void free_create_options(struct qmp_type *t)
{
	struct create_type *c = (struct create_type *)t;
	free(c->names);
	free(c);
}

static const struct qmp_type t_create_options = {
	.kind = QK_DYNAMIC,
	.doc_name = "BlockdevCreateOptions",
	.dynamic = &(const struct qmp_dynamic){.build = build_create_options,
					       .free_type = free_create_options,
					       .lenient = true}};

static const struct qmp_type t_job_id = {
	.kind = QK_OBJECT, .members = M({"id", &qmp_t_str, false, "the job"})};

static const struct qmp_type t_job_info = {
	.kind = QK_OBJECT,
	.doc_name = "JobInfo",
	.members = M({"id", &qmp_t_str}, {"type", &qmp_t_str}, {"status", &qmp_t_job_status},
		     {"current-progress", &qmp_t_int}, {"total-progress", &qmp_t_int},
		     {"error", &qmp_t_str, true})};
static const struct qmp_type t_job_info_list = {.kind = QK_ARRAY, .element = &t_job_info};
static const struct qmp_type t_any_list = {.kind = QK_ARRAY, .element = &qmp_t_any};

const struct qmp_cmd qmp_cmds_job[] = {
	{"blockdev-create", cmd_blockdev_create,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"job-id", &qmp_t_str, false, "the new job's id"},
			      {"options", &t_create_options, false,
			       "what to create: the driver and its create options"})},
	 NULL, 0,
	 "Create an image as a job (watch JOB_STATUS_CHANGE or query-jobs; job-dismiss it when "
	 "concluded).  The driver's create runs on a worker thread.  Drivers without create "
	 "support give \"Driver does not support blockdev-create\"."},
	{"query-jobs", cmd_query_jobs, NULL, &t_job_info_list, 0, "Every job, oldest first."},
	{"job-cancel", cmd_job_cancel,
	 &(const struct qmp_type){
		 .kind = QK_OBJECT,
		 .members = M({"id", &qmp_t_str, false, "the job"},
			      {"force", &qmp_t_bool, true, "accepted"})},
	 NULL, 0,
	 "Cancel a job.  A create that is already running finishes its work first, then "
	 "concludes with the error \"Operation cancelled\"."},
	{"job-finalize", cmd_job_finalize, &t_job_id, NULL, 0,
	 "Finalize a pending job (create jobs finalize by themselves)."},
	{"job-dismiss", cmd_job_dismiss, &t_job_id, NULL, 0, "Remove a concluded job."},
	{"query-block-jobs", cmd_query_block_jobs, NULL, &t_any_list, 0,
	 "Block jobs (none yet: blockdev-create is a job, not a block job)."},
	{NULL},
};
