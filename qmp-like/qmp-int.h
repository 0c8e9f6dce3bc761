/*
 * qmp-int.h - internals of the control socket module (qmp-like/): the stream parser, the type
 * descriptors that drive argument validation, query-qmp-schema and the docs, the command table,
 * and the per-connection dispatcher.  Everything runs on the control thread (main loop) unless
 * a comment says otherwise.
 */
#ifndef BLOCKD_QMP_INT_H
#define BLOCKD_QMP_INT_H

#include "blockd/blockd.h"
#include "qmp-like/qmp.h"

#include <stdbool.h>
#include <stddef.h>

/* ---------------------------------------------------------------------------------------------
 * Stream parser: bytes in, JSON values out.  [any thread; no globals]
 */
struct qmp_stream {
	char *buf;
	size_t len, cap;
	size_t max;       /* longest value accepted; longer input is discarded with an error */
	size_t scanned;   /* bytes already known not to finish the value being read */
	bool skipping;    /* after an error: discard up to the next newline */
};

void qmp_stream_init(struct qmp_stream *s, size_t max);
void qmp_stream_fini(struct qmp_stream *s);
/* Append bytes.  Never fails (too much input turns into an error from qmp_stream_next()). */
void qmp_stream_feed(struct qmp_stream *s, const void *data, size_t len);
/* The next value: 1 and *out (owned by the caller), 0 when more input is needed, -1 on a syntax
 * error (msg filled, the bad input up to the end of its line dropped; call again). */
int qmp_stream_next(struct qmp_stream *s, json_t **out, char *msg, size_t msglen);

/* ---------------------------------------------------------------------------------------------
 * Types: a small QAPI.  One descriptor gives argument validation (with QEMU's messages), the
 * query-qmp-schema entry and the reference in docs/control-protocol.md.
 */
enum qmp_kind {
	QK_STR,
	QK_INT,    /* int64 */
	QK_SIZE,   /* uint64 */
	QK_BOOL,
	QK_NUMBER, /* int or real */
	QK_ANY,
	QK_NULL,
	QK_ENUM,
	QK_OBJECT,
	QK_ARRAY,
	QK_ALTERNATE,
	QK_DYNAMIC, /* generated at run time from the core's tables (blockdev-add, object-add) */
};

struct qmp_type;

struct qmp_member {
	const char *name;
	const struct qmp_type *type;
	bool optional;
	const char *help;
};

struct qmp_variant {
	const char *tag_value;
	const struct qmp_member *members; /* NULL-name terminated */
};

struct qmp_dynamic;

struct qmp_type {
	enum qmp_kind kind;
	const char *doc_name;                  /* name in the docs ("BlockdevOptions") */
	const char *const *values;             /* QK_ENUM, NULL terminated */
	const struct qmp_member *members;      /* QK_OBJECT, NULL-name terminated */
	const char *tag;                       /* QK_OBJECT union: the discriminator member */
	const struct qmp_variant *variants;    /* ... its variants, NULL-tag terminated */
	bool open;                             /* QK_OBJECT: unknown members are not refused */
	const struct qmp_type *element;        /* QK_ARRAY */
	const struct qmp_type *const *alts;    /* QK_ALTERNATE, NULL terminated */
	const struct qmp_dynamic *dynamic;     /* QK_DYNAMIC */
};

/* A type built from the core's tables each time it is needed (drivers, object types). */
struct qmp_dynamic {
	/* A new QK_OBJECT union type; free it with free_type. */
	struct qmp_type *(*build)(void);
	void (*free_type)(struct qmp_type *t);
	/* Validate only what the type says, leaving unknown keys to the core (its own messages). */
	bool lenient;
};

struct bd_opt_desc;
/* The QMP type of a driver's or object type's option descriptor; an enum needs scratch (which
 * must live as long as the result); child references map to child_type. */
const struct qmp_type *qmp_opt_type(const struct bd_opt_desc *o, struct qmp_type *scratch,
				    const struct qmp_type *child_type);
extern const struct qmp_type qmp_t_str, qmp_t_int, qmp_t_size, qmp_t_bool, qmp_t_number,
	qmp_t_any, qmp_t_null, qmp_t_empty, qmp_t_dict, qmp_t_str_list;

/* Validate value against type; path names the value in messages ("options.size").  0, or
 * -EINVAL with QEMU's wording ("Invalid parameter type for 'x', expected: integer",
 * "Parameter 'x' is missing", "Parameter 'x' is unexpected", "Parameter 'x' does not accept
 * value 'y'"). */
int qmp_type_check(const struct qmp_type *type, json_t *value, const char *path,
		   struct bd_err *err);
/* Validate a command's arguments object (members of an object type, no path prefix). */
int qmp_args_check(const struct qmp_type *type, json_t *args, struct bd_err *err);

/* ---------------------------------------------------------------------------------------------
 * Commands.
 */
struct qmp_conn;

struct qmp_req {
	struct qmp_conn *conn;
	const char *name;
	json_t *ret;            /* set by the handler (owned); NULL means {} */
	const char *err_class;  /* set by the handler for a class other than GenericError */
};

/* A handler: 0 and req->ret, or -errno with err set (and maybe req->err_class). */
typedef int qmp_handler(struct qmp_req *req, json_t *args, struct bd_err *err);

enum qmp_cmd_flags {
	QMP_CMD_BEFORE_CAPS = 1u << 0, /* allowed before negotiation (qmp_capabilities only) */
	QMP_CMD_BLOCKD = 1u << 1,      /* blockd's own: not in qemu-storage-daemon 7.2 */
};

struct qmp_cmd {
	const char *name;
	qmp_handler *fn;
	const struct qmp_type *args; /* QK_OBJECT (or QK_DYNAMIC); NULL = no arguments */
	const struct qmp_type *ret;  /* NULL = empty object */
	unsigned flags;
	const char *help;
};

struct qmp_event_desc {
	const char *name;
	const struct qmp_type *data;
	const char *help;
};

/* The command tables, one per file, each terminated by a zero entry, all listed in
 * qmp_cmd_tables[] (dispatch.c); events are listed in qmp_events[] (cmd-control.c). */
extern const struct qmp_cmd qmp_cmds_control[];
extern const struct qmp_cmd qmp_cmds_pool[];
extern const struct qmp_cmd qmp_cmds_block[];
extern const struct qmp_cmd qmp_cmds_object[];
extern const struct qmp_cmd qmp_cmds_job[];
extern const struct qmp_cmd *const qmp_cmd_tables[];
extern const struct qmp_event_desc qmp_events[];

const struct qmp_cmd *qmp_cmd_find(const char *name);

/* query-qmp-schema: a new array. */
json_t *qmp_schema_build(void);

/* ---------------------------------------------------------------------------------------------
 * Connections: the protocol state of one client, independent of the socket, so that tests and
 * the fuzz harness can feed bytes and collect output.
 */
struct qmp_conn_ops {
	/* Queue one message (borrowed) for the client. */
	void (*send)(struct qmp_conn *c, json_t *msg);
	/* Is the client's output queue so full that input should wait?  NULL = never. */
	bool (*throttled)(struct qmp_conn *c);
	/* May this command run on this connection?  NULL = all (the fuzz harness filters). */
	bool (*allowed)(struct qmp_conn *c, const char *cmd, json_t *args);
};

struct qmp_fd {
	int fd;
	struct qmp_fd *next;
};

struct qmp_conn {
	const struct qmp_conn_ops *ops;
	struct qmp_stream in;
	bool negotiated;
	bool oob;
	bool pretty;
	bool closing;        /* no more input is processed */
	bool quit_after_send;
	struct qmp_fd *fds;  /* received with SCM_RIGHTS, not yet claimed by getfd (newest first) */
	void *opaque;
	struct qmp_conn *next; /* the server's list of negotiated and other clients */
};

#define QMP_MAX_INPUT (1u << 20)

void qmp_conn_init(struct qmp_conn *c, const struct qmp_conn_ops *ops, void *opaque);
void qmp_conn_fini(struct qmp_conn *c);
/* The greeting message (new reference). */
json_t *qmp_greeting(void);
/* Feed bytes and dispatch every complete command (stops early while throttled). */
void qmp_conn_input(struct qmp_conn *c, const void *data, size_t len);
/* Dispatch what is buffered (after the output queue drained). */
void qmp_conn_process(struct qmp_conn *c);
/* Handle one parsed message (consumed). */
void qmp_conn_handle(struct qmp_conn *c, json_t *msg);
/* Take the newest fd received on c (-1 if none). */
int qmp_conn_take_fd(struct qmp_conn *c);

/* ---------------------------------------------------------------------------------------------
 * Glue between files.
 */
/* server.c: broadcast an event to every negotiated client (the core's event sink). */
void qmp_event_sink(const char *name, json_t *data);
/* server.c: ask the daemon to exit once c's pending output is sent. */
void qmp_request_quit(struct qmp_conn *c);
/* server.c: the named-fd registry of getfd/closefd. */
int qmp_fd_add(const char *name, int fd, struct bd_err *err);
int qmp_fd_close(const char *name, struct bd_err *err);
void qmp_fds_close_all(void);
/* job.c */
void qmp_jobs_shutdown(void);
/* cmd-block.c: QEMU-style "Cannot find device='' nor node-name='x'" lookup. */
struct bd_node *qmp_find_node(const char *device, const char *node_name, struct bd_err *err);
/* secret.c: delete every secret (tests). */
void qmp_secrets_clear(void);
/* The version blockd reports as its QMP dialect (QEMU's numbers). */
#define QMP_QEMU_MAJOR 7
#define QMP_QEMU_MINOR 2
#define QMP_QEMU_MICRO 0

/* Helpers. */
json_t *qmp_error_msg(const char *cls, const char *desc, json_t *id);

#endif /* BLOCKD_QMP_INT_H */
