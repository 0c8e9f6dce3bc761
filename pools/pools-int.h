/*
 * pools-int.h - internals of the pools module: the pool registry, the backend ops table and
 * the volume cache.  [control unless stated]
 */
#ifndef BLOCKD_POOLS_INT_H
#define BLOCKD_POOLS_INT_H

#include "pools/pools.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/types.h>

extern const char *const bd_pool_types[];

/* [any] Canonical 8-4-4-4-12 lower-case form of a UUID (dashes optional on input). */
int bd_uuid_parse(const char *in, char out[37]);

enum pool_state { POOL_INACTIVE, POOL_BUILDING, POOL_RUNNING, POOL_DEGRADED, POOL_INACCESSIBLE };

struct vol {
	char *name;
	char *path;
	char *format; /* raw, qcow2, ... */
	char *type;   /* file, block */
	uint64_t capacity, allocation, physical;
	char *backing_path;
	char *backing_format;
	char *compat;
	bool backing_odd; /* a backing file is named but unreadable or unprintable */
	uint64_t cluster_size;
	bool lazy_refcounts, extended_l2;
	/* logical volumes without device-mapper: the bytes are a window of this device */
	char *dev;
	uint64_t dev_offset;
	/* refresh cache: unchanged files are not probed again */
	ino_t ino;
	int64_t mtime_ns;
	uint64_t size;
	bool seen;
};

struct pool;

/* A pool backend (one per supported type). */
struct pool_backend {
	const char *type;
	bool buildable;
	bool file_vols; /* volumes are files in target_path (dir, fs) */
	/* [control] Each returns 0 or -errno with err set.  NULL = nothing to do. */
	int (*check)(struct pool *p, struct bd_err *err); /* define-time validation */
	int (*build)(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err);
	int (*start)(struct pool *p, struct bd_err *err);
	int (*stop)(struct pool *p, struct bd_err *err);
	int (*delete)(struct pool *p, struct bd_err *err);
	int (*refresh)(struct pool *p, struct bd_err *err);
	int (*vol_create)(struct pool *p, struct bd_vol_def *def,
			  const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err);
	int (*vol_delete)(struct pool *p, struct vol *v, struct bd_err *err);
	/* Optional: remove v's snapshots, before vol_delete when vol-delete has
	 * delete-snapshots (without it the flag is refused as unsupported). */
	int (*vol_delete_snapshots)(struct pool *p, struct vol *v, struct bd_err *err);
	int (*vol_resize)(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			  struct bd_err *err);
	/* Optional, for volumes that are neither files nor block devices at v->path (rbd
	 * images, iSCSI LUNs, files on a gluster or NFS server): the options of the protocol
	 * node that reaches v, i.e. the "file" child of the volume's format node, as a new JSON
	 * object ({"driver": "rbd", "pool": ..., "image": ...}).  NULL with err set. */
	json_t *(*vol_file_opts)(struct pool *p, struct vol *v, struct bd_err *err);
	/* Optional: wipe v with algorithm alg (zero, trim, random, ...), for backends whose
	 * volumes have no local fd.  Without it wipe/upload/download need v->path to be a local
	 * file or block device. */
	int (*vol_wipe)(struct pool *p, struct vol *v, const char *alg, struct bd_err *err);
	/* Optional: find-storage-pool-sources for this type: malloc'd <sources> XML, or NULL
	 * with err set.  spec is the optional <source> XML the caller gave (may be NULL). */
	char *(*find_sources)(const char *spec, struct bd_err *err);
	/* netfs only: the <source><format type=.../> this backend serves (glusterfs, nfs); a
	 * netfs pool without a format is served by the "nfs" one.  NULL for other types. */
	const char *netfs_format;
};

struct pool {
	struct bd_pool_def *def;
	const struct pool_backend *be; /* NULL: type not supported yet */
	enum pool_state state;
	bool persistent;
	bool autostart;
	struct vol **vols;
	size_t nvols, capvols;
	bool vols_sorted;
	struct pool *next;
};

/* The backends, one file each; the table in pool.c lists them. */
extern const struct pool_backend bd_pool_backend_dir, bd_pool_backend_fs, bd_pool_backend_disk,
    bd_pool_backend_logical;
/* Network pool types (pools/iscsi.c, rbd.c, gluster.c, netfs-gluster.c, netfs-nfs.c), built with
 * their libraries (BD_HAVE_POOL_* from pools/meson.build). */
extern const struct pool_backend bd_pool_backend_iscsi, bd_pool_backend_iscsi_direct,
    bd_pool_backend_rbd, bd_pool_backend_gluster, bd_pool_backend_netfs_gluster,
    bd_pool_backend_netfs_nfs;

/* pool.c */
const char *bd_pool_state_name(enum pool_state s);
/* The pool named or with UUID key, which must be running (else NULL, err set). */
struct pool *bd_pool_lookup_running(const char *key, struct bd_err *err);
/* Iterate every pool: first, then p->next. */
struct pool *bd_pool_first(void);
/* pool.c: helpers the backends share */
int bd_pool_mkdir_p(const char *path, mode_t mode);
/* Run argv: 0, -ENOENT if it is not installed, -EIO with its output in err if it fails. */
int bd_pool_run_checked(const char *const argv[], struct bd_err *err);
/* path resolved (realpath when it exists) without trailing slashes, for comparisons */
void bd_pool_norm_path(const char *in, char *out, size_t len);
/* Capacity/allocation/available of p from statvfs of its target. */
void bd_pool_update_space(struct pool *p);
/* dirfs.c: the file system on dev (blkid's TYPE), "" if none; -errno if dev cannot be read. */
int bd_pool_probe_fs(const char *dev, char *out, size_t len, struct bd_err *err);
/* vol.c: the file-based backends' volume operations and refresh (dir and fs pools) */
int bd_pool_dir_refresh(struct pool *p, struct bd_err *err);
int bd_pool_dir_vol_create(struct pool *p, struct bd_vol_def *def,
			   const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err);
int bd_pool_dir_vol_delete(struct pool *p, struct vol *v, struct bd_err *err);
int bd_pool_dir_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			   struct bd_err *err);
void bd_pool_vols_clear(struct pool *p);
struct vol_task;

/* vol-probe.c: [any] what a volume's file holds, from its first bytes.  Pure: the only I/O is
 * the caller's read callback (file offset, buffer, length -> bytes read or -errno), used for a
 * backing file name outside the given bytes and for a vpc footer at the end of the file. */
#define BD_VOL_PROBE_HEADER 4096   /* bytes of the file's start a caller passes (fewer if short) */
#define BD_VOL_PROBE_NAME_MAX 1024 /* backing file names are shorter (QEMU's limit) */
typedef long (*bd_vol_probe_read_fn)(void *opaque, uint64_t off, void *buf, size_t len);
struct bd_vol_probe {
	const char *format; /* raw, qcow2, qcow, vmdk, qed, vdi, vpc (static strings) */
	uint64_t capacity;  /* virtual size in bytes (raw: the file size); at most INT64_MAX */
	const char *compat; /* qcow2: "0.10" or "1.1", else NULL */
	uint64_t cluster_size;
	bool lazy_refcounts, extended_l2;
	bool has_backing; /* the header names a backing file */
	bool backing_odd; /* ... which could not be read, or is not printable UTF-8 */
	char backing_path[BD_VOL_PROBE_NAME_MAX]; /* "" when none or odd */
	char backing_format[64];                  /* "" when not given */
};
/* h: the first n bytes of the file of size bytes; rd may be NULL (then no reads). */
void bd_vol_probe(const unsigned char *h, size_t n, uint64_t size, bd_vol_probe_read_fn rd,
		  void *opaque, struct bd_vol_probe *r);
/* [control] Copy a probe result into v's format fields (capacity included).  0 or -ENOMEM. */
int bd_vol_probe_set(struct vol *v, const struct bd_vol_probe *r);

/* vol.c: the volume cache and lookups, shared with vol-create.c */
struct vol *bd_vol_new(const char *dir, const char *name);
/* (Re)read v's file (force: even if inode, size and mtime did not change). */
int bd_vol_stat(struct vol *v, int dirfd, const char *name, bool force);
int bd_vol_append(struct pool *p, struct vol *v);
/* After a change: reread the volume (file pools) or the whole pool (v may be freed). */
void bd_vol_after_change(struct pool *p, struct vol *v);
/* The volume's bytes: an open fd, the offset of byte 0 in it and the byte count. */
int bd_vol_fd(struct vol *v, int flags, uint64_t *base, uint64_t *size, struct bd_err *err);
/* A volume by name in pool, or by path/key in any pool when pool is NULL (*pp its pool). */
struct vol *bd_vol_lookup(const char *pool, const char *name, struct pool **pp,
			  struct bd_err *err);
/* bd_vol_lookup() for an operation on the volume's bytes: -EBUSY while a task runs on it. */
struct vol *bd_vol_find_idle(const char *pool, const char *name, struct pool **pp,
			     struct bd_err *err);
/* -EBUSY (err set) if a node or export uses v. */
int bd_vol_check_unused(struct pool *p, struct vol *v, struct bd_err *err);
/* vol-create.c */
int bd_vol_create_qcow2(const char *path, struct bd_vol_def *def, bool prealloc,
			struct bd_err *err);
/* [control] A task's end for file volumes: list a clone or remove its file; reread. */
void bd_vol_task_finished(struct vol_task *t);
/* [control] The same after closing the task's src/dst graph nodes. */
void bd_vol_node_task_finished(struct vol_task *t);

/* vol-task.c: the data phase of wipe, upload, download and clone. */
enum vol_task_kind { VT_WIPE, VT_UPLOAD, VT_DOWNLOAD, VT_CLONE, VT_CONVERT };
struct vol_task {
	enum vol_task_kind kind;
	const char *op; /* wipe, upload, download, clone: the event's "operation" */
	int in, out;    /* owned by the task (closed when it ends); VT_WIPE: out only */
	uint64_t in_off, out_off;
	uint64_t len;      /* bytes (UINT64_MAX: to the end of the source stream) */
	uint64_t out_base; /* VT_UPLOAD: where the volume starts in out */
	uint64_t limit;    /* VT_UPLOAD: offset in out the data must not pass (0 = none) */
	int alg;           /* VT_WIPE: bd_vol_wipe_alg_find() */
	bool punch;        /* VT_WIPE zero/trim: may punch holes */
	bool sparse;       /* VT_DOWNLOAD: leave zero blocks as holes */
	bool dense;        /* copies: write the source's holes too (a used destination) */
	char *path;        /* VT_CLONE/CONVERT: the new file (removed by finish on failure) */
	/* VT_CONVERT: the data moves through these graph nodes (closed by finish) */
	struct bd_node *src, *dst;
	char src_node[48], dst_node[48];
	/* [control] after the run, inline or when reaped: result says how it went */
	void (*finish)(struct vol_task *t);
	/* results */
	int result;
	struct bd_err err;
	uint64_t copied;
	atomic_uint_fast64_t progress;
	/* core of the list */
	uint64_t id;
	char *pool, *vol;
	pthread_t th;
	atomic_bool done;
	struct vol_task *next;
};
struct vol_task *bd_vol_task_new(enum vol_task_kind kind, const char *op);
void bd_vol_task_free(struct vol_task *t);
/* Run t inline (job_id NULL; the error in err) or on a worker thread (*job_id gets its number,
 * POOL_VOLUME_JOB_COMPLETED reports the end).  Consumes t, also on failure. */
int bd_vol_task_start(struct vol_task *t, const char *pool, const char *vol, uint64_t *job_id,
		      struct bd_err *err);
/* Is an operation running on the volume / on any volume of the pool?  Join them all. */
bool bd_vol_task_busy(const char *pool, const char *vol);
bool bd_pool_has_tasks(const char *pool);
void bd_pool_tasks_shutdown(void);
/* Wipe algorithms: an index, or -1 if name is unknown; the list for messages; passes. */
int bd_vol_wipe_alg_find(const char *name);
const char *bd_vol_wipe_alg_names(void);
unsigned bd_vol_wipe_alg_passes(int alg);
/* Is fd a pipe or socket (streamed in order) rather than a file or block device? */
bool bd_vol_fd_is_stream(int fd);
/* logical.c: find-storage-pool-sources for type logical (malloc'd XML, NULL with err). */
char *bd_pool_logical_find_sources(struct bd_err *err);
void bd_vol_free(struct vol *v);
struct vol *bd_pool_vol_find(struct pool *p, const char *name);
void bd_pool_vols_sort(struct pool *p);
/* Add a volume to p's cache (for backends whose volumes are not files); NULL on ENOMEM. */
struct vol *bd_pool_vol_add(struct pool *p, const char *name, const char *path, const char *type,
			    const char *format, uint64_t capacity, uint64_t allocation);
/* Is path used by a node of the graph (as a file name anywhere in its options)?  The node's
 * name in *node when so. */
bool bd_pool_path_in_use(const char *path, bool prefix, const char **node);
/* [control] Run argv (no shell), output collected in out (may be NULL).  Exit status, or
 * -errno if it could not run; -ETIMEDOUT (the tool and its process group killed) when it ran
 * longer than BLOCKD_POOL_TOOL_TIMEOUT seconds (default 600). */
int bd_pool_run(const char *const argv[], char *out, size_t outlen);
/* The same with stdout in out and stderr in errout (when errout is non-NULL). */
int bd_pool_run2(const char *const argv[], char *out, size_t outlen, char *errout, size_t errlen);

#endif /* BLOCKD_POOLS_INT_H */
