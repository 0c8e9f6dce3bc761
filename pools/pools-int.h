/*
 * pools-int.h - internals of the pools module: the pool registry, the backend ops table and
 * the volume cache.  [control unless stated]
 */
#ifndef BLOCKD_POOLS_INT_H
#define BLOCKD_POOLS_INT_H

#include "pools/pools.h"

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
/* vol.c: the file-based backends' volume operations and refresh (dir and fs pools) */
int bd_pool_dir_refresh(struct pool *p, struct bd_err *err);
int bd_pool_dir_vol_create(struct pool *p, struct bd_vol_def *def,
			   const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err);
int bd_pool_dir_vol_delete(struct pool *p, struct vol *v, struct bd_err *err);
int bd_pool_dir_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			   struct bd_err *err);
void bd_pool_vols_clear(struct pool *p);
/* vol.c: does a volume of pool have a worker-thread operation running?  Join them all. */
bool bd_pool_has_tasks(const char *pool);
void bd_pool_tasks_shutdown(void);
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
 * -errno if it could not run. */
int bd_pool_run(const char *const argv[], char *out, size_t outlen);
/* The same with stdout in out and stderr in errout (when errout is non-NULL). */
int bd_pool_run2(const char *const argv[], char *out, size_t outlen, char *errout, size_t errlen);

#endif /* BLOCKD_POOLS_INT_H */
