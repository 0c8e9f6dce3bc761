/*
 * blockctl-int.h - what blockctl's files share: the connection to the control socket
 * (blockctl-conn.c), the pool and volume verb table (blockctl-pool.c) and the output helpers
 * (blockctl.c).  Single-threaded.
 */
#ifndef BLOCKD_BLOCKCTL_INT_H
#define BLOCKD_BLOCKCTL_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#define DEFAULT_SOCKET "/run/blockd/control.sock"

struct ctx {
	const char *socket_path;
	int timeout_ms; /* per reply; -1 = wait for ever */
	bool json;
	int fd;
	char *buf;
	size_t len, cap;
	json_t *schema; /* query-qmp-schema, fetched on demand */
	/* while set, bctl_read_msg() calls idle(c) every idle_ms instead of timing out */
	void (*idle)(struct ctx *c);
	int idle_ms;
	void *idle_arg;
};

extern const char *bctl_prog;

/* blockctl-conn.c: the connection.  Errors print "blockctl: error: ..." and exit. */
void bctl_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
void bctl_connect(struct ctx *c);
json_t *bctl_read_msg(struct ctx *c);
void bctl_send_msg(struct ctx *c, json_t *msg);
/* Run one command: its "return" value (new reference), or exit 1 with the error. */
json_t *bctl_execute(struct ctx *c, const char *cmd, json_t *args);
/* Pass fd to the daemon under fdname (getfd with SCM_RIGHTS). */
void bctl_send_fd(struct ctx *c, int fd, const char *fdname);
/* The data of the next event name whose "job" member is job (new reference). */
json_t *bctl_wait_event(struct ctx *c, const char *name, json_int_t job);
/* The same for a volume job, printing its progress (query-volume-jobs, on a second
 * connection) on stderr once a second when progress is true. */
json_t *bctl_wait_vol_job(struct ctx *c, json_int_t job, bool progress);

/* blockctl.c */
bool bctl_json(struct ctx *c);
void bctl_print_json(json_t *v);

/* blockctl-pool.c: the storage pool and volume verbs */
struct bctl_pool_verb {
	const char *name;
	const char *group;
	const char *usage;
	const char *summary;
	const char *help;
	int (*fn)(struct ctx *c, json_t *a);
	const char *const *pos;	 /* positional argument names, in order */
	const char *const *opts; /* "--name" takes a value, "!name" is a flag */
	int required;		 /* how many positionals are required */
};
const struct bctl_pool_verb *bctl_pool_verb_find(const char *name);
const struct bctl_pool_verb *bctl_pool_verb_at(size_t i);
int bctl_pool_run(struct ctx *c, const struct bctl_pool_verb *v, int argc, char **argv);

#endif /* BLOCKD_BLOCKCTL_INT_H */
