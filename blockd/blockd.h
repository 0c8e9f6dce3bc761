/*
 * blockd.h - the one public header of the blockd core (libblockd).
 *
 * Everything a driver, filter, export or tool needs from the core: errors, I/O loops, option trees,
 * requests, drivers, nodes, the node graph and objects.  docs/design.md explains the contracts; this
 * header states them briefly at each declaration.  Thread annotations:
 *   [any]     callable from any thread
 *   [control] only on the control thread (the main thread, which also runs the "main" loop)
 *   [loop]    only on the I/O loop that owns the object
 */
#ifndef BLOCKD_H
#define BLOCKD_H

#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

struct io_uring_sqe;

#define BD_VERSION_STRING "0.1.0"
#define BD_MAX_LOOPS 64

/* ----------------------------------------------------------------------------------------------
 * Errors (control path).  Data path results are 0 or -errno, never errno.
 */
struct bd_err {
	int code;       /* -errno, 0 while unset */
	char msg[1024]; /* human readable, no trailing newline */
};

/* [any] Fill err (if non-NULL and still unset) and return code (a negative errno). */
int bd_err_set(struct bd_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* [any] Prefix an already set message with context: "ctx: old message". Returns err->code. */
int bd_err_prefix(struct bd_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* [any] Clear err to the unset state. */
void bd_err_clear(struct bd_err *err);

/* Logging to stderr (or syslog when daemonized).  [any] */
enum bd_log_level { BD_LOG_ERROR, BD_LOG_WARN, BD_LOG_INFO, BD_LOG_DEBUG };
void bd_log(enum bd_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void bd_log_set_level(enum bd_log_level level);

/* ----------------------------------------------------------------------------------------------
 * I/O loops.  Each loop is one thread owning one io_uring.  The main thread runs the "main" loop,
 * which is the control thread.  An iteration: run messages, run deferred work, fire timers, submit
 * all queued SQEs at once and wait, then complete CQEs.
 */
struct bd_loop;

/* An io_uring operation's completion: embed in your own struct, set done, attach to an SQE. */
struct bd_io {
	void (*done)(struct bd_io *io, int res); /* res: CQE result (>= 0 or -errno) */
};

/* Deferred work: runs on the loop later in the same or next iteration, before it sleeps. */
struct bd_defer {
	void (*fn)(struct bd_defer *d);
	struct bd_defer *next; /* core private */
	bool queued;           /* core private */
};

/* A one-shot timer on a loop, CLOCK_MONOTONIC nanoseconds. */
struct bd_timer {
	void (*fire)(struct bd_timer *t);
	uint64_t deadline_ns; /* core private once armed */
	int heap_index;       /* core private, -1 when not armed */
};

/* [control] Create and start a loop thread.  name is copied. NULL on error (err set). */
struct bd_loop *bd_loop_create(const char *name, struct bd_err *err);
/* [control] Ask a loop to stop after its queued messages, join its thread and free it. */
void bd_loop_destroy(struct bd_loop *loop);
/* [control] Set up the main (control) loop on the calling thread; bd_loop_run() then runs it. */
struct bd_loop *bd_loop_main_init(struct bd_err *err);
/* [control] Run the main loop until bd_loop_quit(main loop). */
void bd_loop_run(struct bd_loop *loop);
/* [control] Run one iteration of the calling thread's loop (waits for at least one event): for
 * the control thread collecting its own cancelled operations at shutdown.  Never call it from a
 * completion callback. */
void bd_loop_poll_once(void);
/* [any] Make bd_loop_run() return after the current iteration. */
void bd_loop_quit(struct bd_loop *loop);

/* [any] The loop of the calling thread, or NULL. */
struct bd_loop *bd_loop_current(void);
/* [any] The main (control) loop. */
struct bd_loop *bd_loop_main(void);
/* [any] Small stable index (0 = main) for per-loop arrays of size BD_MAX_LOOPS. */
unsigned bd_loop_index(const struct bd_loop *loop);
const char *bd_loop_name(const struct bd_loop *loop);

/* [any] Run fn(arg) on loop's thread soon.  Messages from one sender run in order. 0 or -ENOMEM. */
int bd_loop_send(struct bd_loop *loop, void (*fn)(void *arg), void *arg);
/* [any] Like bd_loop_send but blocks until fn has run (never call it for the caller's own loop). */
int bd_loop_call(struct bd_loop *loop, void (*fn)(void *arg), void *arg);

/* [loop] An SQE on the loop's ring, never NULL (submits early if the ring is full).  Prepare it with
 * io_uring_prep_*(), then bd_io_attach(sqe, io).  It is submitted before the loop next sleeps. */
struct io_uring_sqe *bd_loop_sqe(struct bd_loop *loop);
void bd_io_attach(struct io_uring_sqe *sqe, struct bd_io *io);

/* [loop] Queue d to run on loop before it sleeps; a no-op if d is already queued. */
void bd_loop_defer(struct bd_loop *loop, struct bd_defer *d);

/* [any] CLOCK_MONOTONIC in nanoseconds. */
uint64_t bd_now_ns(void);
/* [loop] Arm (or re-arm) t to fire at deadline_ns; cancel is a no-op if not armed. */
void bd_timer_arm(struct bd_loop *loop, struct bd_timer *t, uint64_t deadline_ns);
void bd_timer_cancel(struct bd_loop *loop, struct bd_timer *t);
static inline void bd_timer_init(struct bd_timer *t, void (*fire)(struct bd_timer *))
{
	t->fire = fire;
	t->deadline_ns = 0;
	t->heap_index = -1;
}

/* A completion queue from threads that are not loops (a library's callback threads) to one
 * loop (blockd/xqueue.c).  Embed a struct bd_xq_item in what is queued.  bd_xq_new [loop]
 * (what names the user in log messages; deliver runs on the loop for each item, oldest first;
 * 0 or -errno); bd_xq_push [any thread but the loop's]; bd_xq_close [loop]: nothing will be
 * pushed any more (pushes still in progress are waited for); the queue frees itself. */
struct bd_xq_item {
	struct bd_xq_item *next;
};
struct bd_xq;
int bd_xq_new(struct bd_loop *loop, const char *what, void (*deliver)(struct bd_xq_item *it),
	      struct bd_xq **out);
void bd_xq_push(struct bd_xq *q, struct bd_xq_item *it);
void bd_xq_close(struct bd_xq *q);

/* A readiness watch on a file descriptor, for libraries that do their own socket I/O (libiscsi,
 * libnfs, libnbd).  ready() runs on the loop with the poll(2) revents that happened (POLLIN,
 * POLLOUT, POLLERR, POLLHUP); the watch re-arms itself afterwards with the events then wanted.
 * Embed it; the fields are core private. */
struct bd_poll {
	void (*ready)(struct bd_poll *p, int revents);
	void (*stopped)(struct bd_poll *p);
	struct bd_io io, cancel_io;
	struct bd_defer stop_defer;
	struct bd_loop *loop;
	int fd;
	unsigned want, armed;
	bool in_flight, cancel_in_flight, stopping;
};
/* [any] Prepare p (not watching anything yet). */
void bd_poll_init(struct bd_poll *p, void (*ready)(struct bd_poll *p, int revents));
/* [loop] Watch fd for events (POLLIN, POLLOUT) on loop, the calling thread's loop.  Call again
 * whenever the set changes (e.g. POLLOUT while the library has bytes queued); events 0 pauses.
 * Cheap when nothing changes. */
void bd_poll_set(struct bd_loop *loop, struct bd_poll *p, int fd, unsigned events);
/* [loop] Stop watching.  stopped(p) (may be NULL) runs on the loop once the ring no longer refers
 * to p: only then may p be freed or its fd closed.  ready() is not called after bd_poll_stop(). */
void bd_poll_stop(struct bd_poll *p, void (*stopped)(struct bd_poll *p));

/* [control] The I/O loops other than main, for spreading work: the default loop first, then the
 * iothread objects in creation order.  bd_io_loop_next() picks round-robin. */
unsigned bd_io_loop_count(void);
struct bd_loop *bd_io_loop_get(unsigned i);
struct bd_loop *bd_io_loop_next(void);
/* [control] The loop of iothread object id, or NULL.  A loop returned by these functions is
 * marked used: its iothread object can no longer be deleted. */
struct bd_loop *bd_iothread_find(const char *id);

/* ----------------------------------------------------------------------------------------------
 * Option trees.  Options are jansson objects, the same shape whether they came from the dotted
 * command line form (every scalar a string), JSON, or a pool volume.  The getters accept both the
 * JSON type and the string spelling, and mark each key they read as used, so that
 * bd_opts_check_unused() can name any key nobody understood.
 */

/* [any] Parse QEMU's dotted key=value syntax ("a.b=1,c=x,,y" with ",," escaping a comma) into an
 * object.  implied_key, if non-NULL, names the key of a leading bare value ("iothread,id=x").
 * Keys "x.0","x.1" become arrays.  A leading '{' means JSON.  NULL on error (err set). */
json_t *bd_opts_parse(const char *text, const char *implied_key, struct bd_err *err);

/* Getters: return 0 when found, -ENOENT when absent (out untouched), other -errno on a bad value
 * (err names the key).  Sizes accept suffixes k/K, M, G, T, P, E (powers of 1024). */
int bd_opts_str(json_t *opts, const char *key, const char **out, struct bd_err *err);
int bd_opts_bool(json_t *opts, const char *key, bool *out, struct bd_err *err);
int bd_opts_u64(json_t *opts, const char *key, uint64_t *out, struct bd_err *err);
int bd_opts_size(json_t *opts, const char *key, uint64_t *out, struct bd_err *err);
/* Enum: *out is the index of the value in the NULL-terminated names list. */
int bd_opts_enum(json_t *opts, const char *key, const char *const *names, int *out,
		 struct bd_err *err);
/* A sub-object (not copied, borrowed from opts), marked used. */
int bd_opts_obj(json_t *opts, const char *key, json_t **out, struct bd_err *err);
/* [any] Mark a key used without reading it. */
void bd_opts_mark_used(json_t *opts, const char *key);
/* [any] Has a getter (or bd_opts_mark_used) read key? */
bool bd_opts_is_used(json_t *opts, const char *key);
/* [any] Is key one of the getters' used-marks (to skip when walking an object by hand)? */
bool bd_opts_is_mark(const char *key);
/* [any] -EINVAL with "Invalid parameter 'prefix.key'" for the first key not read by a getter
 * (recursing into sub-objects that were read), else 0. */
int bd_opts_check_unused(json_t *opts, const char *prefix, struct bd_err *err);
/* [any] Remove the used-marks the getters leave in opts (before showing or storing it). */
void bd_opts_clear_marks(json_t *opts);

/* ----------------------------------------------------------------------------------------------
 * Requests.  The contract for every driver and every caller:
 *  - bd_submit() returning 0 means req->cb runs exactly once, later, on the request's loop, never
 *    inside bd_submit().  Any other return is -errno: rejected, and the callback never runs.
 *  - Results are 0 or -errno.  A short transfer never leaves the leaf driver.
 *  - Drivers only see requests inside their limits: the core checks range, read-only and op
 *    support, splits at max_transfer, bounces for alignment and emulates what a driver lacks
 *    (write-zeroes by writing zeroes, FUA by a flush, block-status as all data).
 *  - Drivers without native_fua may ignore BD_REQ_FUA; the core follows with a flush.  The core
 *    clears BD_REQ_MAY_UNMAP when the node has discard=ignore.  Everything else in the request is
 *    as the submitter left it when the callback runs.
 */
enum bd_op {
	BD_OP_READ,
	BD_OP_WRITE,
	BD_OP_FLUSH,
	BD_OP_DISCARD,
	BD_OP_WRITE_ZEROES,
	BD_OP_BLOCK_STATUS,
	BD_OP_CACHE, /* prefetch hint */
	BD_OP__COUNT
};
#define BD_OP_BIT(op) (1u << (op))

enum bd_req_flags {
	BD_REQ_FUA = 1u << 0,         /* write/write-zeroes: durable before completion */
	BD_REQ_MAY_UNMAP = 1u << 1,   /* write-zeroes: may deallocate */
	BD_REQ_NO_FALLBACK = 1u << 2, /* write-zeroes: fail with -ENOTSUP rather than write zeroes */
	BD_REQ_BS_ONE = 1u << 3,      /* block-status: one extent is enough */
	/* write: store the data compressed (QEMU's BDRV_REQ_WRITE_COMPRESSED).  Only for nodes
	 * with limits.compress_cluster; offset and length are whole units of it (the length may
	 * end at the image's end instead).  The core checks this (-ENOTSUP, -EINVAL) and keeps
	 * split chunks whole units; a driver may store a unit uncompressed when it does not
	 * compress. */
	BD_REQ_WRITE_COMPRESSED = 1u << 4,
};

/* Block status extent flags. */
enum bd_extent_flags {
	BD_EXT_DATA = 1u << 0, /* not a hole: storage is allocated at the protocol layer */
	BD_EXT_ZERO = 1u << 1, /* reads as zeroes */
};
struct bd_extent {
	uint64_t length;
	uint32_t flags; /* bd_extent_flags */
	uint32_t depth; /* layer of the backing chain that holds it: 1 = this image, 0 = none */
};

struct bd_chan;
struct bd_child;
struct bd_node;
struct bd_req;
typedef void bd_req_cb(struct bd_req *req, int ret);

struct bd_req {
	/* Filled by the submitter. */
	enum bd_op op;
	uint32_t flags;
	uint64_t offset;
	uint64_t len;
	struct iovec *iov; /* READ/WRITE: iovcnt entries adding up to len */
	int iovcnt;
	struct bd_extent *extents; /* BLOCK_STATUS: array of max_extents entries */
	unsigned max_extents;
	unsigned nr_extents; /* BLOCK_STATUS result: >= 1 on success, first at offset */
	bd_req_cb *cb;
	void *opaque;

	/* Owned by the core. */
	struct bd_chan *chan;  /* channel the request was taken from */
	void *priv;            /* driver private area, bd_driver.req_size bytes, zeroed at get */
	struct bd_req *next;   /* free list / queues: any owner of the request may use it */
	struct bd_req *parent; /* core: split or emulated sub-request */
	uint32_t pending;      /* core: outstanding sub-requests */
	int status;            /* core: first error of sub-requests */
	uint32_t core_state;   /* core: emulation step */
	uint32_t core_state_mode; /* core: chunk mode */
	void *bounce;          /* core: bounce buffer */
	size_t bounce_len;
	struct iovec bounce_iov;
	struct bd_defer defer; /* core: deferred completion */
	int orig_op;           /* core: op before an emulation step changed it */
	uint64_t start_ns;     /* core: statistics */
	uint64_t next_off;     /* core: chunked sub-request engine */
	uint64_t end_off;      /* core: chunked sub-request engine */
	int fua_op;            /* core: op to restore after an emulated FUA flush */
	struct iovec *sub_iov; /* core: iovec slice of a split sub-request */
	bool top;              /* core: submitted by bd_submit() (accounted) */
};

/* [loop] A request from ch's pool (never NULL; aborts on out-of-memory like malloc failure in
 * the hot path), fields zeroed.  Give it back with bd_req_put(). */
struct bd_req *bd_req_get(struct bd_chan *ch);
void bd_req_put(struct bd_req *req);

/* [loop] Submit req on ch (ch belongs to the calling loop).  See the contract above. */
int bd_submit(struct bd_chan *ch, struct bd_req *req);

/* [loop] For drivers: complete req with ret.  Must not be called inside the driver's submit();
 * use bd_req_complete_later() there. */
void bd_req_complete(struct bd_req *req, int ret);
/* [loop] A BLOCK_STATUS driver appends an extent of len bytes to req's answer, merged with the
 * last one when flags and depth match.  false when the array is full (nothing added). */
bool bd_req_add_extent(struct bd_req *req, uint64_t len, uint32_t flags, uint32_t depth);

/* [loop] Complete req from a deferred callback on its loop; safe inside submit(). */
void bd_req_complete_later(struct bd_req *req, int ret);

/* Helpers on iovecs. [any] */
size_t bd_iov_size(const struct iovec *iov, int iovcnt);
void bd_iov_memset(const struct iovec *iov, int iovcnt, size_t offset, int c, size_t len);
size_t bd_iov_to_buf(const struct iovec *iov, int iovcnt, size_t offset, void *buf, size_t len);
size_t bd_iov_from_buf(const struct iovec *iov, int iovcnt, size_t offset, const void *buf,
		       size_t len);
bool bd_iov_is_zero(const struct iovec *iov, int iovcnt);
/* Point dst (room for cnt entries) at bytes [off, off+len) of src; returns the entries used. */
int bd_iov_slice(const struct iovec *src, int cnt, uint64_t off, uint64_t len, struct iovec *dst);
bool bd_buf_is_zero(const void *buf, size_t len);
/* Aligned allocation for I/O buffers (alignment >= 4096), freed with free(). */
void *bd_io_alloc(size_t len);

/* ----------------------------------------------------------------------------------------------
 * Drivers.  One ops table for protocols, formats and filters.
 */
enum bd_driver_kind { BD_DRV_PROTOCOL, BD_DRV_FORMAT, BD_DRV_FILTER };

/* Limits a node declares once in open(). */
struct bd_limits {
	uint64_t size;         /* bytes */
	uint32_t ops;          /* BD_OP_BIT() set of ops the driver does itself (not what the core
				* emulates: bd_node_can() says what callers may submit).  Exports
				* may read it, e.g. "answers block status for real". */
	uint32_t req_align;    /* offset/length alignment in bytes, power of two, >= 1.  A request
				* ending at an unaligned end of the image reaches the driver as is
				* (only its tail is short): drivers with req_align > 1 cope */
	uint32_t buf_align;    /* buffer address/length alignment, power of two, >= 1 */
	uint64_t max_transfer; /* read/write bytes per request, 0 = unlimited */
	uint64_t max_discard;  /* discard/write-zeroes bytes per request, 0 = unlimited */
	uint64_t opt_transfer; /* preferred size, advisory (NBD BLOCK_SIZE preferred) */
	bool native_fua;       /* honours BD_REQ_FUA on write and write-zeroes */
	bool read_only;        /* open() fell back to read-only (auto-read-only): the core marks
				* the node read-only */
	bool zeroes_unmap;     /* write-zeroes with MAY_UNMAP can deallocate */
	bool can_resize;
	bool block_status_costly; /* block status costs a server round trip (nbd, gluster):
				   * exports do not ask for it before every read */
	uint32_t compress_cluster; /* > 0: takes BD_REQ_WRITE_COMPRESSED writes in units of this
				    * many bytes (a power of two, a multiple of req_align) */
};

/* Option descriptor: validation, docs and the QMP schema come from these tables. */
enum bd_opt_type {
	BD_OPT_STR,
	BD_OPT_BOOL,
	BD_OPT_INT,
	BD_OPT_SIZE,
	BD_OPT_ENUM,
	BD_OPT_CHILD, /* a node: a node-name string or an inline node object */
	BD_OPT_OBJ,
	BD_OPT_STR_LIST, /* a list of strings ("x.0=a,x.1=b" on the command line) */
	BD_OPT_LIST,     /* a list of anything, e.g. objects ("x.0.host=a,x.0.port=1"); the
			  * driver validates the elements (QEMU's server lists) */
};
struct bd_opt_desc {
	const char *name;
	enum bd_opt_type type;
	bool required;
	const char *const *enum_values; /* BD_OPT_ENUM, NULL terminated */
	const char *help;
};

struct bd_driver {
	const char *name;
	enum bd_driver_kind kind;
	const char *help;
	const struct bd_opt_desc *options; /* terminated by a zero entry */
	size_t node_size;                  /* private per node: bd_node_priv() */
	size_t chan_size;                  /* private per node and loop: bd_chan_priv() */
	size_t req_size;                   /* private per request: req->priv */

	/* [control] Read options (bd_opts_* getters; the core rejects keys left unread), open
	 * children with bd_node_open_child(), fill *limits.  On error set err, return -errno. */
	int (*open)(struct bd_node *node, json_t *opts, struct bd_limits *limits,
		    struct bd_err *err);
	/* [control] Release everything; the node is drained and has no channels left. */
	void (*close)(struct bd_node *node);
	/* [loop] Optional: set up / tear down per-loop state in bd_chan_priv(ch). */
	int (*chan_open)(struct bd_node *node, struct bd_chan *ch);
	void (*chan_close)(struct bd_node *node, struct bd_chan *ch);
	/* [loop] Start req (see the request contract).  -EAGAIN: out of slots, the core retries
	 * after the next completion on this channel. */
	int (*submit)(struct bd_node *node, struct bd_chan *ch, struct bd_req *req);
	/* [control] Optional: change the size (node drained). 0 or -errno. */
	int (*resize)(struct bd_node *node, uint64_t new_size, struct bd_err *err);
	/* [control] Optional: extra key/values for query-named-block-nodes. */
	void (*describe)(struct bd_node *node, json_t *out);
	/* [a worker thread, or control; may block] Optional: create an image (blockdev-create).
	 * opts are QEMU's BlockdevCreateOptions for this driver without "driver".  A format's
	 * file is resolved by the caller on the control thread and passed as file (opts["file"]
	 * names it; mark it used), referenced for the call and used by nothing else (no exports,
	 * no parents), so create() may do I/O on it with bd_node_io_sync() and resize it; NULL
	 * when opts has no "file".  create() must not look up or change the graph. */
	int (*create)(struct bd_node *file, json_t *opts, struct bd_err *err);
	/* [control] Optional: apply changed options to an open, drained node (blockdev-reopen);
	 * without it only the core's own options (read-only, detect-zeroes, discard) change. */
	int (*reopen)(struct bd_node *node, json_t *opts, struct bd_err *err);
	/* [control] Optional: a drain begins / ends.  A driver that holds requests back (throttle)
	 * releases them at once between the two, so that a drain never waits for a bucket. */
	void (*drain_begin)(struct bd_node *node);
	void (*drain_end)(struct bd_node *node);
	/* [control] Optional: internal snapshots (blockdev-snapshot-internal-sync and
	 * -delete-internal-sync).  Called through bd_node_snapshot_*(), which has checked that
	 * the node is writable.  The node is NOT drained (a busy export may never be idle): the
	 * driver holds its own new requests back and waits for those in progress, then resumes
	 * them.  create: id NULL lets the driver choose; -EEXIST for a duplicate id or name.
	 * delete: the snapshot matching id and/or name (at least one given), -ENOENT if none;
	 * *info gets its description (QEMU's SnapshotInfo members: id, name, vm-state-size,
	 * date-sec, date-nsec, vm-clock-sec, vm-clock-nsec). */
	int (*snapshot_create)(struct bd_node *node, const char *id, const char *name,
			       struct bd_err *err);
	int (*snapshot_delete)(struct bd_node *node, const char *id, const char *name,
			       json_t **info, struct bd_err *err);
	/* [control] Optional: take child (the node an external snapshot puts under this one,
	 * bd_child_node()) as the backing file, for blockdev-snapshot.  The node was opened
	 * without a backing (backing: null) and is used by nobody yet.  0 or -errno. */
	int (*attach_backing)(struct bd_node *node, struct bd_child *child, struct bd_err *err);
};

/* [any] Driver lookup in the table the build generates; NULL if unknown. */
const struct bd_driver *bd_driver_find(const char *name);
/* The generated table, NULL terminated. */
extern const struct bd_driver *const bd_driver_table[];

/* ----------------------------------------------------------------------------------------------
 * Nodes and the graph.  Nodes are created, changed and freed on the control thread.
 */
enum bd_discard_mode { BD_DISCARD_IGNORE, BD_DISCARD_UNMAP };
enum bd_detect_zeroes { BD_DZ_OFF, BD_DZ_ON, BD_DZ_UNMAP };

/* Options every node has, parsed by the core before the driver's open(). */
struct bd_node_common {
	bool read_only;
	bool auto_read_only;
	bool force_share;
	bool cache_direct;
	bool cache_no_flush;
	enum bd_discard_mode discard;
	enum bd_detect_zeroes detect_zeroes;
};


/* [control] Open a node from an options tree (blockdev-add / --blockdev).  A top-level node must
 * have node-name; children opened inline get an automatic name.  opts is not consumed.  The new
 * node has one reference, held by the graph if named (released by bd_graph_del()). */
struct bd_node *bd_node_open(json_t *opts, struct bd_err *err);
/* [control] The same with a driver that is not in the table (tests, embedders); opts needs no
 * "driver" key. */
struct bd_node *bd_node_open_driver(const struct bd_driver *drv, json_t *opts,
				    struct bd_err *err);

/* [control] In a driver's open(): open or look up the child named key in opts ("file",
 * "backing", ...).  A string is a node-name; an object opens a node inline.  For a missing key:
 * NULL with -ENOENT in err if required, else NULL with err untouched. */
struct bd_child *bd_node_open_child(struct bd_node *parent, json_t *opts, const char *key,
				    bool required, struct bd_err *err);
struct bd_node *bd_child_node(struct bd_child *child);
/* [loop] The child's channel on the same loop as the parent's channel ch. */
struct bd_chan *bd_child_chan(struct bd_child *child, struct bd_chan *ch);

void *bd_node_priv(struct bd_node *node);
const char *bd_node_name(const struct bd_node *node);
const struct bd_driver *bd_node_driver(const struct bd_node *node);
const struct bd_limits *bd_node_limits(const struct bd_node *node);
const struct bd_node_common *bd_node_common(const struct bd_node *node);
uint64_t bd_node_size(const struct bd_node *node);
bool bd_node_read_only(const struct bd_node *node);
/* Effective capabilities, after the core's emulation: what a caller may submit. */
bool bd_node_can(const struct bd_node *node, enum bd_op op);
/* Does the node (or its leaf) do write-zeroes fast (no fallback to writing buffers)? */
bool bd_node_fast_zero(const struct bd_node *node);

/* [control] Does anything but the graph hold the node (an export, a parent, a job)? */
bool bd_node_in_use(const struct bd_node *node);
/* [control] References: exports and parents hold one each. */
void bd_node_ref(struct bd_node *node);
void bd_node_unref(struct bd_node *node);

/* [loop] The node's channel on the calling loop (created on first use). */
struct bd_chan *bd_node_chan(struct bd_node *node, struct bd_loop *loop);
void *bd_chan_priv(struct bd_chan *ch);
struct bd_node *bd_chan_node(struct bd_chan *ch);
struct bd_loop *bd_chan_loop(struct bd_chan *ch);

/* [control] Named nodes. */
struct bd_node *bd_graph_find(const char *node_name);
/* [control] Delete a named node: -EBUSY (err explains) while exports or parents use it. */
int bd_graph_del(const char *node_name, struct bd_err *err);
/* [control] Iterate named nodes in creation order; NULL starts, returns NULL at the end. */
struct bd_node *bd_graph_next(struct bd_node *prev);
/* [control] Wait until no request is in flight on node (and below).  Runs the main loop's
 * messages while waiting, but never nested I/O on the caller's behalf beyond that. */
void bd_node_drain(struct bd_node *node);
/* [control] blockdev-reopen: opts is the node's whole new option set (same driver and
 * node-name).  Drains the node, lets the driver apply its options, then the core's.  A change
 * of read-only needs the driver's reopen().  0 or -errno (the node is unchanged on error). */
int bd_node_reopen(struct bd_node *node, json_t *opts, struct bd_err *err);
/* [control] Internal snapshots: the driver's snapshot ops after the core's checks (the driver
 * has the op, the node is writable); messages as QEMU's.  delete: *info as the op's. */
int bd_node_snapshot_create(struct bd_node *node, const char *id, const char *name,
			    struct bd_err *err);
int bd_node_snapshot_delete(struct bd_node *node, const char *id, const char *name,
			    json_t **info, struct bd_err *err);
/* [control] External snapshot (blockdev-snapshot): overlay (writable, unused, a driver with
 * attach_backing) gets node as its backing file and takes node's place under every export and
 * parent without stopping them: requests submitted to node go to overlay from now on (node
 * stays in the graph, as overlay's backing).  Waits for the requests already inside node. */
int bd_node_snapshot_external(struct bd_node *node, struct bd_node *overlay, struct bd_err *err);
/* [control] The node that requests submitted to node reach: node itself, or the top overlay
 * of the external snapshots taken of it (what an export of node now serves). */
struct bd_node *bd_node_active_layer(struct bd_node *node);
/* [control] The options the node was opened with (borrowed; marks cleared). */
json_t *bd_node_options(struct bd_node *node);
/* [control] Resize a node (block_resize).  0 or -errno. */
int bd_node_resize(struct bd_node *node, uint64_t new_size, struct bd_err *err);
/* [control] Notifiers for size changes (exports announce them). */
struct bd_node_watch {
	void (*resized)(struct bd_node_watch *w, uint64_t new_size);
	struct bd_node_watch *next; /* core private */
};
void bd_node_watch_add(struct bd_node *node, struct bd_node_watch *w);
void bd_node_watch_del(struct bd_node *node, struct bd_node_watch *w);

/* Statistics per node, summed over channels on read. [control] */
struct bd_node_stats {
	uint64_t ops[BD_OP__COUNT];
	uint64_t bytes[BD_OP__COUNT];
	uint64_t errors[BD_OP__COUNT];
	uint64_t total_ns[BD_OP__COUNT];
};
void bd_node_stats(struct bd_node *node, struct bd_node_stats *out);
/* [control, or any thread that is not an I/O loop] Do one request synchronously on an I/O loop
 * and wait for it: for control-path work (flush at shutdown, wipe, upload, tests).  buf is used
 * for READ/WRITE (any alignment; the core bounces).  Returns 0 or -errno. */
int bd_node_io_sync(struct bd_node *node, enum bd_op op, uint64_t offset, uint64_t len,
		    void *buf, uint32_t flags);
/* [control] A JSON description for query-named-block-nodes. */
json_t *bd_node_describe(struct bd_node *node);

/* ----------------------------------------------------------------------------------------------
 * Events (QMP events such as BLOCK_EXPORT_DELETED, BLOCK_IO_ERROR, BLOCK_IMAGE_CORRUPTED).
 * Anyone emits; the control socket installs the sink that timestamps and broadcasts them.
 */
/* [any] Emit event name with data (consumed; NULL = {}).  Without a sink it is logged at debug
 * level and dropped.  From an I/O loop the event is handed to the main loop by message. */
void bd_event_emit(const char *name, json_t *data);
/* [control] Install the sink; it runs on the main loop. */
void bd_event_set_sink(void (*sink)(const char *name, json_t *data));

/* ----------------------------------------------------------------------------------------------
 * Objects (--object / object-add): iothread, throttle-group, secret.
 */
struct bd_object_type {
	const char *name;
	const struct bd_opt_desc *options;
	/* [control] Create object id from props (the id and qom-type keys are removed). */
	int (*add)(const char *id, json_t *props, struct bd_err *err);
	/* [control] Delete; -EBUSY while in use. */
	int (*del)(const char *id, struct bd_err *err);
};
extern const struct bd_object_type *const bd_object_type_table[];
/* [control] --object parsing entry: props has qom-type and id. */
int bd_object_add(json_t *props, struct bd_err *err);
int bd_object_del(const char *id, struct bd_err *err);

/* ----------------------------------------------------------------------------------------------
 * Exports (--export / block-export-add) and servers.
 */
struct bd_export_type {
	const char *name; /* "nbd", "vhost-user-blk" */
	/* The type's own options beyond the common ones (type, id, node-name, writable,
	 * writethrough, iothread, fixed-iothread): the QMP schema and docs come from here. */
	const struct bd_opt_desc *options;
	/* [control] opts has id, node-name, writable, iothread, ... */
	int (*add)(json_t *opts, struct bd_err *err);
	/* [control] hard: drop clients now; else -EBUSY while clients are connected. */
	int (*del)(const char *id, bool hard, struct bd_err *err);
	/* [control] Stop accepting and close every connection after in-flight requests finish. */
	void (*shutdown)(void);
	/* [control] Append one JSON object per export to list (query-block-exports). */
	void (*query)(json_t *list);
};
extern const struct bd_export_type *const bd_export_type_table[];
const struct bd_export_type *bd_export_type_find(const char *name);
/* [control] Front door for --export: dispatches on opts["type"]. */
int bd_export_add(json_t *opts, struct bd_err *err);

#endif /* BLOCKD_H */
