/*
 * pools.h - storage pools and volumes, the way libvirt's storage driver manages them: libvirt's
 * pool and volume XML (parsed and written with libxml2), definitions kept in a state directory,
 * the pool lifecycle (define, build, start, destroy, delete, undefine, autostart, refresh) and
 * the volume lifecycle (create, clone, delete, resize, wipe, upload, download, open as a node).
 * docs/pools.md is the operator's manual.
 *
 * Threads: the XML functions are pure functions over a buffer [any]; everything else runs on the
 * control thread [control] and may block for a bounded time (mkfs, mount).
 * Errors: -errno with err filled, messages naming the pool and volume.
 */
#ifndef BLOCKD_POOLS_H
#define BLOCKD_POOLS_H

#include "blockd/blockd.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------------------------------------
 * The XML model.  Strings are malloc'd (NULL = absent).
 */
struct bd_pool_perms {
	long mode;  /* -1 = unset */
	long owner; /* uid, -1 = unset */
	long group; /* gid, -1 = unset */
	char *label;
};

struct bd_pool_host {
	char *name;
	int port; /* 0 = unset */
};

struct bd_pool_source {
	struct bd_pool_host *hosts;
	size_t nhosts;
	char **devices; /* <device path='...'/> */
	size_t ndevices;
	char *dir;
	char *adapter_type, *adapter_name, *adapter_parent, *adapter_wwnn, *adapter_wwpn;
	char *name;
	char *format; /* <format type='...'/> */
	char *auth_type, *auth_username, *secret_usage, *secret_uuid;
	char *initiator_iqn;
	char *vendor, *product;
	char *protocol_ver;
};

struct bd_pool_def {
	char *type; /* dir, fs, netfs, logical, disk, iscsi, ... */
	char *name;
	char uuid[37]; /* canonical 8-4-4-4-12, "" = none given */
	uint64_t capacity, allocation, available;
	struct bd_pool_source source;
	char *target_path;
	struct bd_pool_perms perms;
};

struct bd_vol_def {
	char *type; /* file, block, dir, ... (NULL: file) */
	char *name;
	char *key;
	uint64_t capacity, allocation, physical;
	bool has_capacity, has_allocation, has_physical;
	char *path;
	char *format; /* raw, qcow2, ... */
	struct bd_pool_perms perms;
	char *compat;
	bool lazy_refcounts, extended_l2;
	uint64_t cluster_size; /* 0 = default */
	char *backing_path;
	char *backing_format;
};

/* [any] libvirt's scaled integers: num with unit (NULL or "" = bytes); b/byte/bytes; k/K/KiB
 * = 1024, KB = 1000, and the same for M, G, T, P, E.  0 or -EINVAL/-ERANGE with err set. */
int bd_pool_scale(const char *num, const char *unit, uint64_t *out, struct bd_err *err);

/* [any] Parse pool XML from buf (len bytes, need not be NUL terminated).  0 and *out (free
 * with bd_pool_def_free), or -EINVAL with err naming the bad or missing element. */
int bd_pool_def_parse(const char *buf, size_t len, struct bd_pool_def **out, struct bd_err *err);
/* [any] The XML text (malloc'd).  Parsing it gives the same definition. */
char *bd_pool_def_format(const struct bd_pool_def *def, bool with_sizes);
void bd_pool_def_free(struct bd_pool_def *def);

int bd_vol_def_parse(const char *buf, size_t len, struct bd_vol_def **out, struct bd_err *err);
char *bd_vol_def_format(const struct bd_vol_def *def);
void bd_vol_def_free(struct bd_vol_def *def);

/* [any] Is name acceptable as a pool or volume name (no '/', not "." or "..", no control
 * characters, at most 255 bytes)?  0 or -EINVAL with err set. */
int bd_pool_check_name(const char *what, const char *name, struct bd_err *err);

/* ---------------------------------------------------------------------------------------------
 * The daemon's pools.  [control]
 */

/* Load the definitions in state_dir/pools (creating the directories) and start the autostart
 * pools (a failure to start one is logged, not fatal).  0 or -errno. */
int bd_pools_init(const char *state_dir, struct bd_err *err);
/* At exit: forget everything (running pools stay as they are on disk; fs pools stay mounted
 * as libvirt leaves them).  Safe when bd_pools_init was not called. */
void bd_pools_shutdown(void);

enum bd_pool_build_mode { BD_BUILD_DEFAULT, BD_BUILD_OVERWRITE, BD_BUILD_NO_OVERWRITE };

/* Pool lifecycle.  pool is a name or a UUID.  *name_out (optional) gets the pool's name. */
int bd_pool_define_xml(const char *xml, char **name_out, struct bd_err *err);
int bd_pool_create_xml(const char *xml, bool build, enum bd_pool_build_mode mode, char **name_out,
		       struct bd_err *err);
int bd_pool_build(const char *pool, enum bd_pool_build_mode mode, struct bd_err *err);
int bd_pool_start(const char *pool, bool build, enum bd_pool_build_mode mode, struct bd_err *err);
int bd_pool_destroy(const char *pool, struct bd_err *err);
int bd_pool_delete(const char *pool, struct bd_err *err);
int bd_pool_undefine(const char *pool, struct bd_err *err);
int bd_pool_set_autostart(const char *pool, bool autostart, struct bd_err *err);
int bd_pool_refresh(const char *pool, struct bd_err *err);

/* Queries: new JSON values (NULL with err on error). */
json_t *bd_pool_list(void); /* [{name, uuid, type, state, active, persistent, autostart,
			     *   capacity, allocation, available, target, volumes}] */
json_t *bd_pool_info(const char *pool, struct bd_err *err);
char *bd_pool_dumpxml(const char *pool, bool inactive, struct bd_err *err);
json_t *bd_pool_capabilities(void); /* {xml, types: [{type, supported, buildable}]} */
char *bd_pool_find_sources(const char *type, const char *spec_xml, struct bd_err *err);

/* Volumes.  vol is a name in pool; with pool NULL, a key or path in any pool. */
struct bd_vol_create_opts {
	bool prealloc_metadata;
	const char *from_pool, *from_vol; /* create-from / clone: the source volume */
	/* clone / create-from into a file pool: copy on a worker thread, *job_id gets the job's
	 * number and POOL_VOLUME_JOB_COMPLETED (operation "clone") reports the end; the new
	 * volume is listed from then on (a failed copy is removed).  NULL: copy inline. */
	uint64_t *job_id;
};
int bd_vol_create_xml(const char *pool, const char *xml, const struct bd_vol_create_opts *o,
		      char **name_out, struct bd_err *err);
/* Create from a definition (consumed on success and failure). */
int bd_vol_create_def(const char *pool, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
		      struct bd_err *err);
int bd_vol_delete(const char *pool, const char *vol, struct bd_err *err);
/* vol-delete flags (libvirt's VIR_STORAGE_VOL_DELETE_*); bd_vol_delete() is flags 0. */
enum bd_vol_delete_flags {
	BD_VOL_DELETE_SNAPSHOTS = 1u << 0, /* remove the volume's snapshots too (rbd) */
};
int bd_vol_delete_flags(const char *pool, const char *vol, unsigned flags, struct bd_err *err);

enum bd_vol_resize_flags {
	BD_RESIZE_DELTA = 1u << 0,
	BD_RESIZE_SHRINK = 1u << 1,
	BD_RESIZE_ALLOCATE = 1u << 2,
};
int bd_vol_resize(const char *pool, const char *vol, uint64_t capacity, unsigned flags,
		  struct bd_err *err);
/* Wipe, upload, download: with job_id NULL the operation is done when the call returns; else
 * the data is moved on a worker thread, *job_id gets the job's number (0: already done) and
 * the POOL_VOLUME_JOB_COMPLETED event {job, pool, vol, operation, bytes[, error]} reports the
 * end.  Meanwhile the volume refuses other changes (-EBUSY) and bd_vol_jobs() shows progress.
 * algorithm: zero (default), trim, random, nnsa, dod, bsi, gutmann, schneier, pfitzner7,
 * pfitzner33 (virsh vol-wipe's list; the patterns of scrub(1)). */
int bd_vol_wipe(const char *pool, const char *vol, const char *algorithm, uint64_t *job_id,
		struct bd_err *err);
/* Copy between the volume's bytes and a file on the daemon's host or a file descriptor the
 * client passed (fd >= 0, consumed: a file, or a pipe/socket streamed in order; then file is
 * ignored).  length 0 = the whole source (an upload stream: up to its end). */
int bd_vol_upload(const char *pool, const char *vol, const char *file, int fd, uint64_t offset,
		  uint64_t length, uint64_t *job_id, struct bd_err *err);
int bd_vol_download(const char *pool, const char *vol, const char *file, int fd,
		    uint64_t offset, uint64_t length, bool sparse, uint64_t *job_id,
		    struct bd_err *err);
/* The running volume jobs: [{job, pool, vol, operation, done, total}] (bytes; total 0 when
 * unknown, e.g. an upload from a pipe). */
json_t *bd_vol_jobs(void);

json_t *bd_vol_list(const char *pool, struct bd_err *err); /* [{name, path, type, key,
							    *   format, capacity, allocation}] */
json_t *bd_vol_info(const char *pool, const char *vol, struct bd_err *err);
char *bd_vol_dumpxml(const char *pool, const char *vol, struct bd_err *err);
/* Open the volume as graph node node_name (a format node over a file/host_device node).
 * format NULL: the probed format where that is safe (see docs/pools.md), else -EPERM. */
int bd_vol_open(const char *pool, const char *vol, const char *node_name, const char *format,
		bool read_only, struct bd_err *err);

#endif /* BLOCKD_POOLS_H */
