/*
 * pool.c - the pool registry: persistent definitions in the state directory, the pool
 * lifecycle (define, build, start, destroy, delete, undefine, autostart, refresh), the dir and
 * fs backends, POOL_LIFECYCLE events and the pool queries.  [control thread]
 *
 * State directory layout (--state-dir, default /var/lib/blockd):
 *   pools/NAME.xml            one persistent pool definition each (libvirt's pool XML)
 *   pools/autostart/NAME      marker: the pool is started when the daemon starts
 * Every file is written atomically: temporary file, fsync, rename, fsync of the directory.
 */
#include "pools/pools-int.h"

#include <dirent.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

static struct pool *pools;
static char *state_dir; /* STATE/pools */
static char *auto_dir;	/* STATE/pools/autostart */

const char *bd_pool_state_name(enum pool_state s)
{
	static const char *const names[] = {"inactive", "building", "running", "degraded",
					    "inaccessible"};
	return names[s];
}

static void emit(struct pool *p, const char *event)
{
	bd_event_emit("POOL_LIFECYCLE", json_pack("{s:s,s:s,s:s}", "pool", p->def->name, "uuid",
						  p->def->uuid, "event", event));
}

/* ---- helpers (running programs: pool-run.c) ---- */

static int fsync_dir(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	int r = fsync(fd) < 0 ? -errno : 0;
	close(fd);
	return r;
}

static int write_atomic(const char *dir, const char *name, const char *data, struct bd_err *err)
{
	char path[4096], tmp[4096];
	size_t len = strlen(data), off = 0;
	int fd, e;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", dir, name);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return bd_err_set(err, -errno, "cannot write '%s': %s", tmp, strerror(errno));
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			goto fail;
		off += (size_t)n;
	}
	if (fsync(fd) < 0)
		goto fail;
	close(fd);
	if (rename(tmp, path) < 0) {
		e = errno;
		unlink(tmp);
		return bd_err_set(err, -e, "cannot rename '%s': %s", tmp, strerror(e));
	}
	fsync_dir(dir);
	return 0;
fail:
	e = errno;
	close(fd);
	unlink(tmp);
	return bd_err_set(err, -e, "cannot write '%s': %s", tmp, strerror(e));
}

static int remove_durable(const char *dir, const char *name)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (unlink(path) < 0 && errno != ENOENT)
		return -errno;
	fsync_dir(dir);
	return 0;
}

int bd_pool_mkdir_p(const char *path, mode_t mode)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static void gen_uuid(char out[37])
{
	unsigned char b[16];
	int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, b, sizeof(b)) != (ssize_t)sizeof(b)) {
		for (int i = 0; i < 16; i++)
			b[i] = (unsigned char)(rand() ^ (int)bd_now_ns());
	}
	if (fd >= 0)
		close(fd);
	b[6] = (b[6] & 0x0f) | 0x40;
	b[8] = (b[8] & 0x3f) | 0x80;
	snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
		 b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
}

/* Every backend of this build.  A build without a library (librbd, gfapi, ...) leaves its
 * backend out: the type is then listed as unsupported. */
static const struct pool_backend *const backends[] = {
	&bd_pool_backend_dir,
	&bd_pool_backend_fs,
	&bd_pool_backend_disk,
	&bd_pool_backend_logical,
#ifdef BD_HAVE_POOL_ISCSI
	&bd_pool_backend_iscsi,
	&bd_pool_backend_iscsi_direct,
#endif
#ifdef BD_HAVE_POOL_RBD
	&bd_pool_backend_rbd,
#endif
#ifdef BD_HAVE_POOL_GLUSTER
	&bd_pool_backend_gluster,
#endif
#ifdef BD_HAVE_POOL_NETFS_GLUSTER
	&bd_pool_backend_netfs_gluster,
#endif
#ifdef BD_HAVE_POOL_NETFS_NFS
	&bd_pool_backend_netfs_nfs,
#endif
	NULL,
};

/* The backend for type (and for netfs, the source format; NULL = any backend of the type). */
static const struct pool_backend *backend_for_format(const char *type, const char *format)
{
	for (size_t i = 0; backends[i]; i++) {
		const struct pool_backend *be = backends[i];
		if (strcmp(be->type, type))
			continue;
		if (!be->netfs_format || !format)
			return be;
		if (!strcmp(be->netfs_format, !strcmp(format, "auto") ? "nfs" : format))
			return be;
	}
	return NULL;
}

static const struct pool_backend *backend_for(const struct bd_pool_def *def)
{
	const char *fmt = def->source.format;
	if (!strcmp(def->type, "netfs") && !fmt)
		fmt = "nfs";
	return backend_for_format(def->type, fmt);
}

static struct pool *find_pool(const char *key)
{
	char canon[37];
	for (struct pool *p = pools; p; p = p->next)
		if (!strcmp(p->def->name, key))
			return p;
	if (bd_uuid_parse(key, canon) == 0)
		for (struct pool *p = pools; p; p = p->next)
			if (!strcmp(p->def->uuid, canon))
				return p;
	return NULL;
}

static struct pool *lookup(const char *key, struct bd_err *err)
{
	struct pool *p = key ? find_pool(key) : NULL;
	if (!p)
		bd_err_set(err, -ENOENT,
			   "Storage pool not found: no storage pool with matching name "
			   "or uuid '%s'",
			   key ? key : "");
	return p;
}

static int save_def(struct pool *p, struct bd_err *err)
{
	char name[300];
	char *xml;
	int r;
	if (!state_dir)
		return bd_err_set(err, -ENOTSUP,
				  "persistent storage pools are disabled: no state directory");
	xml = bd_pool_def_format(p->def, false);
	if (!xml)
		return bd_err_set(err, -ENOMEM, "out of memory");
	snprintf(name, sizeof(name), "%s.xml", p->def->name);
	r = write_atomic(state_dir, name, xml, err);
	free(xml);
	return r;
}

static int save_autostart(struct pool *p, struct bd_err *err)
{
	if (!auto_dir)
		return bd_err_set(err, -ENOTSUP,
				  "persistent storage pools are disabled: no state directory");
	if (p->autostart)
		return write_atomic(auto_dir, p->def->name, p->def->name, err);
	int r = remove_durable(auto_dir, p->def->name);
	if (r < 0)
		return bd_err_set(err, r, "cannot remove autostart marker of '%s': %s",
				  p->def->name, strerror(-r));
	return 0;
}

static void pool_free(struct pool *p)
{
	bd_pool_vols_clear(p);
	free(p->vols);
	bd_pool_def_free(p->def);
	free(p);
}

static void unlink_pool(struct pool *p)
{
	for (struct pool **pp = &pools; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			break;
		}
	pool_free(p);
}

void bd_pool_norm_path(const char *in, char *out, size_t len)
{
	char *rp = realpath(in, NULL);
	snprintf(out, len, "%s", rp ? rp : in);
	free(rp);
	size_t l = strlen(out);
	while (l > 1 && out[l - 1] == '/')
		out[--l] = '\0';
}

/* Two pools must not share a directory, a device or a volume group. */
static int check_duplicate(const struct bd_pool_def *d, const struct pool *self, struct bd_err *err)
{
	char a[4096], b[4096];
	for (struct pool *p = pools; p; p = p->next) {
		if (p == self)
			continue;
		const struct bd_pool_def *o = p->def;
		bool file_a =
		    !strcmp(d->type, "dir") || !strcmp(d->type, "fs") || !strcmp(d->type, "netfs");
		bool file_b =
		    !strcmp(o->type, "dir") || !strcmp(o->type, "fs") || !strcmp(o->type, "netfs");
		if (file_a && file_b && d->target_path && o->target_path) {
			bd_pool_norm_path(d->target_path, a, sizeof(a));
			bd_pool_norm_path(o->target_path, b, sizeof(b));
			if (!strcmp(a, b))
				return bd_err_set(err, -EEXIST,
						  "Storage source conflict with pool: '%s' (target "
						  "path '%s' is already used)",
						  o->name, a);
		}
		for (size_t i = 0; i < d->source.ndevices; i++)
			for (size_t j = 0; j < o->source.ndevices; j++) {
				bd_pool_norm_path(d->source.devices[i], a, sizeof(a));
				bd_pool_norm_path(o->source.devices[j], b, sizeof(b));
				if (!strcmp(a, b))
					return bd_err_set(err, -EEXIST,
							  "Storage source conflict with pool: '%s' "
							  "(device '%s' is already used)",
							  o->name, a);
			}
		if (!strcmp(d->type, "logical") && !strcmp(o->type, "logical") && d->source.name &&
		    o->source.name && !strcmp(d->source.name, o->source.name))
			return bd_err_set(err, -EEXIST,
					  "Storage source conflict with pool: '%s' (volume group "
					  "'%s')",
					  o->name, d->source.name);
	}
	return 0;
}

/* Add or replace the definition def (consumed).  *out the pool. */
static int add_def(struct bd_pool_def *def, bool persistent, struct pool **out, struct bd_err *err)
{
	struct pool *p = find_pool(def->name), *byuuid = NULL;
	int r;

	if (def->uuid[0])
		for (struct pool *q = pools; q; q = q->next)
			if (!strcmp(q->def->uuid, def->uuid))
				byuuid = q;
	if (byuuid && byuuid != p) {
		r = bd_err_set(err, -EEXIST, "pool '%s' already exists with uuid %s",
			       byuuid->def->name, def->uuid);
		goto fail;
	}
	if (p && def->uuid[0] && strcmp(p->def->uuid, def->uuid)) {
		r = bd_err_set(err, -EEXIST, "pool '%s' is already defined with uuid %s",
			       p->def->name, p->def->uuid);
		goto fail;
	}
	if (p && (p->state != POOL_INACTIVE || !persistent)) {
		r = bd_err_set(err, -EBUSY, "pool '%s' already exists and is %s", p->def->name,
			       p->state != POOL_INACTIVE ? "active" : "defined");
		goto fail;
	}
	if ((r = check_duplicate(def, p, err)) < 0)
		goto fail;
	const struct pool_backend *be = backend_for(def);
	if (!def->uuid[0]) {
		if (p)
			memcpy(def->uuid, p->def->uuid, sizeof(def->uuid));
		else
			gen_uuid(def->uuid);
	}
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto fail;
		}
		p->def = def;
		/* keep the list in definition order; listing sorts by name */
		struct pool **pp = &pools;
		while (*pp)
			pp = &(*pp)->next;
		*pp = p;
	} else {
		bd_pool_def_free(p->def);
		p->def = def;
	}
	p->be = be;
	p->persistent = persistent;
	if (be && be->check && (r = be->check(p, err)) < 0)
		return r; /* keep the definition: it parsed; start will fail the same way */
	*out = p;
	return 0;
fail:
	bd_pool_def_free(def);
	return r;
}

/* "dir, fs, ..." from the backend table (netfs once, with its formats). */
static void supported_types(char *buf, size_t len)
{
	size_t used = 0;
	buf[0] = 0;
	for (size_t i = 0; backends[i] && used < len; i++) {
		const struct pool_backend *be = backends[i];
		if (be->netfs_format) {
			bool seen = false;
			for (size_t j = 0; j < i; j++)
				seen |= !strcmp(backends[j]->type, be->type);
			if (seen)
				continue;
		}
		used += (size_t)snprintf(buf + used, len - used, "%s%s", used ? ", " : "",
					 be->type);
	}
}

static int unsupported(struct pool *p, struct bd_err *err)
{
	char types[256];
	supported_types(types, sizeof(types));
	if (!strcmp(p->def->type, "netfs"))
		return bd_err_set(err, -ENOTSUP,
				  "netfs pools with source format '%s' are not supported by this "
				  "blockd; the pool '%s' can be defined but not built or started",
				  p->def->source.format ? p->def->source.format : "auto",
				  p->def->name);
	return bd_err_set(err, -ENOTSUP,
			  "storage pool type '%s' is not supported yet by blockd (supported: %s); "
			  "the pool '%s' can be defined but not built or started",
			  p->def->type, types, p->def->name);
}

void bd_pool_update_space(struct pool *p)
{
	struct statvfs sv;
	if (p->def->target_path && statvfs(p->def->target_path, &sv) == 0) {
		p->def->capacity = (uint64_t)sv.f_blocks * sv.f_frsize;
		p->def->available = (uint64_t)sv.f_bavail * sv.f_frsize;
		p->def->allocation = ((uint64_t)sv.f_blocks - sv.f_bfree) * sv.f_frsize;
	}
}

/* ---- lifecycle ---- */

static int do_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	if (!p->be)
		return unsupported(p, err);
	if (p->state != POOL_INACTIVE)
		return bd_err_set(err, -EBUSY, "storage pool '%s' is already active", p->def->name);
	if (!p->be->build)
		return 0;
	p->state = POOL_BUILDING;
	int r = p->be->build(p, mode, err);
	p->state = POOL_INACTIVE;
	return r;
}

static int do_start(struct pool *p, struct bd_err *err)
{
	int r;
	if (!p->be)
		return unsupported(p, err);
	if (p->state != POOL_INACTIVE)
		return bd_err_set(err, -EBUSY, "storage pool '%s' is already active", p->def->name);
	if (p->be->start && (r = p->be->start(p, err)) < 0)
		return r;
	p->state = POOL_RUNNING;
	if (p->be->refresh && (r = p->be->refresh(p, err)) < 0) {
		if (p->be->stop)
			p->be->stop(p, NULL);
		p->state = POOL_INACTIVE;
		bd_pool_vols_clear(p);
		return r;
	}
	return 0;
}

static int check_not_in_use(struct pool *p, struct bd_err *err)
{
	const char *node;
	if (p->be && p->be->file_vols && p->def->target_path &&
	    bd_pool_path_in_use(p->def->target_path, true, &node))
		return bd_err_set(err, -EBUSY,
				  "storage pool '%s' is in use: node '%s' has a volume of it open",
				  p->def->name, node);
	if (p->be && !p->be->file_vols) {
		for (size_t i = 0; i < p->nvols; i++)
			if (bd_pool_path_in_use(p->vols[i]->path, false, &node))
				return bd_err_set(err, -EBUSY,
						  "storage pool '%s' is in use: node '%s' has its "
						  "volume '%s' open",
						  p->def->name, node, p->vols[i]->name);
		for (size_t i = 0; i < p->def->source.ndevices; i++)
			if (bd_pool_path_in_use(p->def->source.devices[i], false, &node))
				return bd_err_set(err, -EBUSY,
						  "storage pool '%s' is in use: node '%s' uses its "
						  "device '%s'",
						  p->def->name, node, p->def->source.devices[i]);
	}
	return 0;
}

int bd_pool_define_xml(const char *xml, char **name_out, struct bd_err *err)
{
	struct bd_pool_def *def;
	struct pool *p;
	int r;
	if ((r = bd_pool_def_parse(xml, strlen(xml), &def, err)) < 0)
		return r;
	bool existed = find_pool(def->name) != NULL;
	if ((r = add_def(def, true, &p, err)) < 0)
		return r;
	if ((r = save_def(p, err)) < 0) {
		if (!existed)
			unlink_pool(p);
		return r;
	}
	emit(p, "Defined");
	if (name_out)
		*name_out = strdup(p->def->name);
	return 0;
}

int bd_pool_create_xml(const char *xml, bool build, enum bd_pool_build_mode mode, char **name_out,
		       struct bd_err *err)
{
	struct bd_pool_def *def;
	struct pool *p;
	int r;
	if ((r = bd_pool_def_parse(xml, strlen(xml), &def, err)) < 0)
		return r;
	if (find_pool(def->name)) {
		r = bd_err_set(err, -EEXIST, "pool '%s' already exists", def->name);
		bd_pool_def_free(def);
		return r;
	}
	if ((r = add_def(def, false, &p, err)) < 0)
		return r; /* add_def freed def and added nothing */
	if ((build && (r = do_build(p, mode, err)) < 0) || (r = do_start(p, err)) < 0) {
		unlink_pool(p);
		return r;
	}
	emit(p, "Started");
	if (name_out)
		*name_out = strdup(p->def->name);
	return 0;
}

int bd_pool_build(const char *key, enum bd_pool_build_mode mode, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	int r;
	if (!p)
		return err->code;
	if ((r = do_build(p, mode, err)) < 0)
		return bd_err_prefix(err, "pool '%s'", p->def->name);
	emit(p, "Created");
	return 0;
}

int bd_pool_start(const char *key, bool build, enum bd_pool_build_mode mode, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	int r;
	if (!p)
		return err->code;
	if (build && (r = do_build(p, mode, err)) < 0)
		return bd_err_prefix(err, "pool '%s'", p->def->name);
	if (build)
		emit(p, "Created");
	if ((r = do_start(p, err)) < 0)
		return bd_err_prefix(err, "pool '%s'", p->def->name);
	emit(p, "Started");
	return 0;
}

int bd_pool_destroy(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	int r;
	if (!p)
		return err->code;
	if (p->state == POOL_INACTIVE)
		return bd_err_set(err, -EINVAL, "storage pool '%s' is not active", p->def->name);
	if (bd_pool_has_tasks(p->def->name))
		return bd_err_set(err, -EBUSY,
				  "storage pool '%s' has volume operations in progress",
				  p->def->name);
	if ((r = check_not_in_use(p, err)) < 0)
		return r;
	if (p->be && p->be->stop && (r = p->be->stop(p, err)) < 0)
		return bd_err_prefix(err, "pool '%s'", p->def->name);
	p->state = POOL_INACTIVE;
	bd_pool_vols_clear(p);
	emit(p, "Stopped");
	if (!p->persistent) {
		emit(p, "Undefined");
		unlink_pool(p);
	}
	return 0;
}

int bd_pool_delete(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	int r;
	if (!p)
		return err->code;
	if (!p->be)
		return unsupported(p, err);
	if (p->state != POOL_INACTIVE)
		return bd_err_set(err, -EBUSY, "storage pool '%s' is still active", p->def->name);
	if ((r = check_not_in_use(p, err)) < 0)
		return r;
	if (p->be->delete &&(r = p->be->delete (p, err)) < 0)
		return bd_err_prefix(err, "pool '%s'", p->def->name);
	emit(p, "Deleted");
	return 0;
}

int bd_pool_undefine(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	char name[300];
	int r;
	if (!p)
		return err->code;
	if (!p->persistent)
		return bd_err_set(err, -EINVAL,
				  "storage pool '%s' is transient: destroy it instead",
				  p->def->name);
	if (p->state != POOL_INACTIVE)
		return bd_err_set(err, -EBUSY, "storage pool '%s' is still active", p->def->name);
	if (state_dir) {
		snprintf(name, sizeof(name), "%s.xml", p->def->name);
		if ((r = remove_durable(state_dir, name)) < 0)
			return bd_err_set(err, r, "cannot remove definition of '%s': %s",
					  p->def->name, strerror(-r));
		remove_durable(auto_dir, p->def->name);
	}
	emit(p, "Undefined");
	unlink_pool(p);
	return 0;
}

int bd_pool_set_autostart(const char *key, bool autostart, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	if (!p)
		return err->code;
	if (!p->persistent)
		return bd_err_set(err, -EINVAL, "cannot set autostart for transient pool '%s'",
				  p->def->name);
	bool old = p->autostart;
	p->autostart = autostart;
	int r = save_autostart(p, err);
	if (r < 0)
		p->autostart = old;
	return r;
}

/* Errors of a refresh that mean the pool's storage is not reachable any more. */
static bool storage_gone(int r)
{
	switch (-r) {
	case ENOENT:
	case ENOTDIR:
	case EACCES:
	case EIO:
	case ENXIO:
	case ENODEV:
	case ENOTCONN:
	case ESTALE:
	case ETIMEDOUT:
	case EHOSTUNREACH:
	case ECONNREFUSED:
		return true;
	default:
		return false;
	}
}

int bd_pool_refresh(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	int r;
	if (!p)
		return err->code;
	if (p->state != POOL_RUNNING && p->state != POOL_INACCESSIBLE)
		return bd_err_set(err, -EINVAL, "storage pool '%s' is not active", p->def->name);
	if (!p->be->file_vols && bd_pool_has_tasks(p->def->name))
		return bd_err_set(err, -EBUSY,
				  "storage pool '%s' has volume operations in progress",
				  p->def->name);
	if (p->be->refresh && (r = p->be->refresh(p, err)) < 0) {
		if (!storage_gone(r))
			return bd_err_prefix(err, "pool '%s'", p->def->name);
		/* the storage went away under a running pool (directory removed, file system
		 * unmounted, VG gone, server down): libvirt's "inaccessible" state, until a
		 * refresh finds it again or the pool is destroyed */
		if (p->state != POOL_INACCESSIBLE)
			bd_log(BD_LOG_WARN, "pool '%s' is inaccessible: %s", p->def->name,
			       err->msg);
		p->state = POOL_INACCESSIBLE;
		bd_pool_vols_clear(p);
		return bd_err_prefix(err, "pool '%s' is inaccessible", p->def->name);
	}
	if (p->state == POOL_INACCESSIBLE)
		bd_log(BD_LOG_INFO, "pool '%s' is accessible again", p->def->name);
	p->state = POOL_RUNNING;
	return 0;
}

/* ---- queries ---- */

static json_t *pool_json(struct pool *p)
{
	json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:b,s:b,s:b}", "name", p->def->name, "uuid",
			      p->def->uuid, "type", p->def->type, "state",
			      bd_pool_state_name(p->state), "active", p->state != POOL_INACTIVE,
			      "persistent", p->persistent, "autostart", p->autostart);
	if (p->state != POOL_INACTIVE) {
		json_object_set_new(o, "capacity", json_integer((json_int_t)p->def->capacity));
		json_object_set_new(o, "allocation", json_integer((json_int_t)p->def->allocation));
		json_object_set_new(o, "available", json_integer((json_int_t)p->def->available));
		json_object_set_new(o, "volumes", json_integer((json_int_t)p->nvols));
	}
	if (p->def->target_path)
		json_object_set_new(o, "target", json_string(p->def->target_path));
	json_object_set_new(o, "supported", json_boolean(p->be != NULL));
	return o;
}

static int cmp_json_name(const void *a, const void *b)
{
	return strcmp(json_string_value(json_object_get(*(json_t *const *)a, "name")),
		      json_string_value(json_object_get(*(json_t *const *)b, "name")));
}

json_t *bd_pool_list(void)
{
	size_t n = 0, i = 0;
	for (struct pool *p = pools; p; p = p->next)
		n++;
	json_t **arr = calloc(n + 1, sizeof(*arr)), *list = json_array();
	for (struct pool *p = pools; p; p = p->next)
		arr[i++] = pool_json(p);
	qsort(arr, n, sizeof(*arr), cmp_json_name);
	for (i = 0; i < n; i++)
		json_array_append_new(list, arr[i]);
	free(arr);
	return list;
}

json_t *bd_pool_info(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	return p ? pool_json(p) : NULL;
}

char *bd_pool_dumpxml(const char *key, bool inactive, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	if (!p)
		return NULL;
	char *x = bd_pool_def_format(p->def, !inactive);
	if (!x)
		bd_err_set(err, -ENOMEM, "out of memory");
	return x;
}

json_t *bd_pool_capabilities(void)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	json_t *types = json_array();
	fprintf(f, "<storagepoolCapabilities>\n");
	for (int i = 0; bd_pool_types[i]; i++) {
		const struct pool_backend *be = backend_for_format(bd_pool_types[i], NULL);
		fprintf(f, "  <pool type='%s' supported='%s'>\n", bd_pool_types[i],
			be ? "yes" : "no");
		bool parts = !strcmp(bd_pool_types[i], "disk") ||
			     !strcmp(bd_pool_types[i], "logical");
		bool luns = !strncmp(bd_pool_types[i], "iscsi", 5); /* the target's LUNs only */
		if (be && parts) {
			if (!strcmp(bd_pool_types[i], "disk"))
				fprintf(f,
					"    <poolOptions>\n      <defaultFormat type='dos'/>\n"
					"      <enum name='sourceFormatType'>\n"
					"        <value>dos</value>\n        <value>gpt</value>\n"
					"      </enum>\n    </poolOptions>\n");
			else
				fprintf(f, "    <poolOptions>\n      <defaultFormat type='lvm2'/>\n"
					   "      <enum name='sourceFormatType'>\n"
					   "        <value>lvm2</value>\n      </enum>\n"
					   "    </poolOptions>\n");
			fprintf(f,
				"    <volOptions>\n      <defaultFormat type='none'/>\n"
				"      <enum name='targetFormatType'>\n"
				"        <value>none</value>\n      </enum>\n    </volOptions>\n");
		} else if (be && !luns) {
			if (!strcmp(bd_pool_types[i], "fs"))
				fprintf(f,
					"    <poolOptions>\n      <defaultFormat type='auto'/>\n"
					"      <enum name='sourceFormatType'>\n"
					"        <value>auto</value>\n        <value>ext2</value>\n"
					"        <value>ext3</value>\n        <value>ext4</value>\n"
					"        <value>xfs</value>\n        <value>btrfs</value>\n"
					"      </enum>\n    </poolOptions>\n");
			fprintf(f, "    <volOptions>\n      <defaultFormat type='raw'/>\n"
				   "      <enum name='targetFormatType'>\n"
				   "        <value>raw</value>\n        <value>qcow2</value>\n"
				   "      </enum>\n    </volOptions>\n");
		}
		fprintf(f, "  </pool>\n");
		json_array_append_new(types, json_pack("{s:s,s:b,s:b}", "type", bd_pool_types[i],
						       "supported", be != NULL, "buildable",
						       be ? be->buildable : false));
	}
	fprintf(f, "</storagepoolCapabilities>\n");
	fclose(f);
	json_t *o = json_pack("{s:s,s:o}", "xml", buf ? buf : "", "types", types);
	free(buf);
	return o;
}

char *bd_pool_find_sources(const char *type, const char *spec, struct bd_err *err)
{
	char out[65536];
	if (!strcmp(type, "fs")) {
		/* block devices carrying a file system, from blkid's cache-less probe */
		const char *argv[] = {"blkid", "-c", "/dev/null", "-o", "device", NULL};
		int r = bd_pool_run(argv, out, sizeof(out));
		if (r < 0 || (r != 0 && r != 2)) {
			bd_err_set(err, -EIO, "cannot list devices with blkid");
			return NULL;
		}
		char *res = NULL;
		size_t len = 0;
		FILE *f = open_memstream(&res, &len);
		fprintf(f, "<sources>\n");
		for (char *save, *line = strtok_r(out, "\n", &save); line;
		     line = strtok_r(NULL, "\n", &save)) {
			char fmt[64];
			if (bd_pool_probe_fs(line, fmt, sizeof(fmt), NULL) < 0 || !fmt[0])
				continue;
			fprintf(f, "  <source>\n    <device path='");
			for (char *c = line; *c; c++)
				if (*c == '\'' || *c == '&' || *c == '<')
					fprintf(f, "&#%d;", *c);
				else
					fputc(*c, f);
			fprintf(f, "'/>\n    <format type='%s'/>\n  </source>\n", fmt);
		}
		fprintf(f, "</sources>\n");
		fclose(f);
		return res;
	}
	if (!strcmp(type, "logical"))
		return bd_pool_logical_find_sources(err);
	/* netfs: the spec's <format type=.../> picks the backend (nfs by default) */
	char fmt[32] = "nfs";
	const char *f = spec ? strstr(spec, "<format") : NULL;
	if (f && (f = strstr(f, "type=")) && (f[5] == '\'' || f[5] == '"')) {
		const char *end = strchr(f + 6, f[5]);
		if (end && (size_t)(end - f - 6) < sizeof(fmt))
			snprintf(fmt, sizeof(fmt), "%.*s", (int)(end - f - 6), f + 6);
	}
	const struct pool_backend *be =
	    backend_for_format(type, !strcmp(type, "netfs") ? fmt : NULL);
	if (be && be->find_sources)
		return be->find_sources(spec, err);
	bd_err_set(err, -ENOTSUP,
		   "find-storage-pool-sources is not supported for pool type '%s' (supported: fs, "
		   "logical)",
		   type);
	return NULL;
}

/* ---- volumes: lookups shared with vol.c are in vol.c; here the pool side ---- */

struct pool *bd_pool_lookup_running(const char *key, struct bd_err *err)
{
	struct pool *p = lookup(key, err);
	if (p && p->state == POOL_INACCESSIBLE) {
		bd_err_set(err, -EIO,
			   "storage pool '%s' is inaccessible (pool-refresh it once its storage "
			   "is back, or destroy it)",
			   p->def->name);
		return NULL;
	}
	if (p && p->state != POOL_RUNNING) {
		bd_err_set(err, -EINVAL, "storage pool '%s' is not active", p->def->name);
		return NULL;
	}
	return p;
}

struct pool *bd_pool_first(void)
{
	return pools;
}

/* ---- start-up and shutdown ---- */

int bd_pools_init(const char *dir, struct bd_err *err)
{
	char path[4096];
	int r;
	DIR *d;
	struct dirent *de;

	snprintf(path, sizeof(path), "%s/pools", dir);
	if ((r = bd_pool_mkdir_p(path, 0700)) < 0)
		return bd_err_set(err, r, "cannot create state directory '%s': %s", path,
				  strerror(-r));
	state_dir = strdup(path);
	snprintf(path, sizeof(path), "%s/pools/autostart", dir);
	if ((r = bd_pool_mkdir_p(path, 0700)) < 0)
		return bd_err_set(err, r, "cannot create state directory '%s': %s", path,
				  strerror(-r));
	auto_dir = strdup(path);
	d = opendir(state_dir);
	if (!d)
		return bd_err_set(err, -errno, "cannot open '%s': %s", state_dir, strerror(errno));
	while ((de = readdir(d))) {
		size_t l = strlen(de->d_name);
		struct bd_err e = {0};
		struct bd_pool_def *def;
		struct pool *p;
		char *buf;
		size_t blen = 0;
		if (de->d_name[0] == '.' || l < 5 || strcmp(de->d_name + l - 4, ".xml"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", state_dir, de->d_name);
		FILE *f = fopen(path, "re");
		if (!f)
			continue;
		buf = malloc(1 << 20);
		if (buf)
			blen = fread(buf, 1, 1 << 20, f);
		fclose(f);
		if (!buf)
			continue;
		if (bd_pool_def_parse(buf, blen, &def, &e) < 0) {
			bd_log(BD_LOG_ERROR, "pools: ignoring '%s': %s", path, e.msg);
			free(buf);
			continue;
		}
		free(buf);
		if (add_def(def, true, &p, &e) < 0) {
			bd_log(BD_LOG_ERROR, "pools: ignoring '%s': %s", path, e.msg);
			continue;
		}
		snprintf(path, sizeof(path), "%s/%s", auto_dir, p->def->name);
		p->autostart = access(path, F_OK) == 0;
	}
	closedir(d);
	for (struct pool *p = pools; p; p = p->next) {
		struct bd_err e = {0};
		if (!p->autostart)
			continue;
		if (do_start(p, &e) < 0)
			bd_log(BD_LOG_ERROR, "pools: cannot autostart pool '%s': %s", p->def->name,
			       e.msg);
		else
			emit(p, "Started");
	}
	return 0;
}

void bd_pools_shutdown(void)
{
	bd_pool_tasks_shutdown();
	while (pools) {
		struct pool *p = pools;
		pools = p->next;
		pool_free(p);
	}
	free(state_dir);
	free(auto_dir);
	state_dir = auto_dir = NULL;
}
