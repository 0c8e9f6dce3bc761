/*
 * netfs-gluster.c - the netfs pool backend for <format type='glusterfs'/>: a GlusterFS volume
 * mounted with the glusterfs FUSE client on the pool's target, its files the pool's volumes
 * (the dir pool's volume code in vol.c).  [control thread]
 *
 * libvirt's XML: <pool type='netfs'><source><host name='HOST'/><dir path='/VOLUME'/>
 * <format type='glusterfs'/></source><target><path>/mnt/x</path></target></pool>.
 * build creates the target directory; start runs `mount -t glusterfs HOST:/VOLUME TARGET`
 * (with direct-io-mode=1, as libvirt does; HOST's port when given); stop unmounts; delete
 * removes the (empty) target directory.  A target that is already a glusterfs mount of the
 * same source is taken as is.
 */
#include "pools/pools-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

/* HOST:/DIR, the mount source. */
static int ng_source(struct pool *p, char *out, size_t len, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	const char *dir = s->dir;
	if (!s->nhosts)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><host> for a 'netfs' pool");
	if (!dir || !*dir)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><dir> for a 'netfs' pool");
	const char *h = s->hosts[0].name;
	if (!*h || h[0] == '-' || strpbrk(h, "/:?# ,"))
		return bd_err_set(err, -EINVAL, "invalid <source><host name='%s'>", h);
	if (strchr(dir, ',') || strstr(dir, ".."))
		return bd_err_set(err, -EINVAL, "invalid <source><dir path='%s'>", dir);
	snprintf(out, len, "%s:%s%s", h, dir[0] == '/' ? "" : "/", dir);
	return 0;
}

static int ng_check(struct pool *p, struct bd_err *err)
{
	char src[1024];
	return ng_source(p, src, sizeof(src), err);
}

/* Is target a mount point, and of what?  fstype/source get the mount's (may be NULL). */
static bool mounted(const char *target, char *fstype, size_t flen, char *source, size_t slen)
{
	char want[4096], line[8192];
	bool found = false;
	char *rp = realpath(target, NULL);
	snprintf(want, sizeof(want), "%s", rp ? rp : target);
	free(rp);
	size_t l = strlen(want);
	while (l > 1 && want[l - 1] == '/')
		want[--l] = '\0';
	FILE *f = fopen("/proc/self/mounts", "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		char dev[4096], mnt[4096], type[256];
		if (sscanf(line, "%4095s %4095s %255s", dev, mnt, type) == 3 &&
		    !strcmp(mnt, want)) {
			found = true;
			if (fstype)
				snprintf(fstype, flen, "%s", type);
			if (source)
				snprintf(source, slen, "%s", dev);
		}
	}
	fclose(f);
	return found;
}

static int ng_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	const char *t = p->def->target_path;
	char buf[4096];
	(void)mode;
	snprintf(buf, sizeof(buf), "%s", t);
	for (char *c = buf + 1; *c; c++) {
		if (*c != '/')
			continue;
		*c = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return bd_err_set(err, -errno, "cannot create directory '%s': %s", buf,
					  strerror(errno));
		*c = '/';
	}
	mode_t m = p->def->perms.mode >= 0 ? (mode_t)p->def->perms.mode : 0755;
	if (mkdir(buf, m) < 0 && errno != EEXIST)
		return bd_err_set(err, -errno, "cannot create directory '%s': %s", buf,
				  strerror(errno));
	return 0;
}

static int ng_start(struct pool *p, struct bd_err *err)
{
	const char *t = p->def->target_path;
	char src[1024], type[256], msrc[4096], opts[64];
	struct stat st;
	int r;

	if ((r = ng_source(p, src, sizeof(src), err)) < 0)
		return r;
	if (stat(t, &st) < 0 || !S_ISDIR(st.st_mode))
		return bd_err_set(err, -ENOENT,
				  "cannot open directory '%s': %s (build the pool first)", t,
				  strerror(errno ? errno : ENOTDIR));
	if (mounted(t, type, sizeof(type), msrc, sizeof(msrc))) {
		if (!strcmp(type, "fuse.glusterfs") && !strcmp(msrc, src))
			return 0; /* mounted already (a restart): take it */
		return bd_err_set(err, -EBUSY, "'%s' is already a mount point (%s of %s)", t, type,
				  msrc);
	}
	int port = p->def->source.hosts[0].port;
	if (port)
		snprintf(opts, sizeof(opts), "direct-io-mode=1,volfile-server-port=%d", port);
	else
		snprintf(opts, sizeof(opts), "direct-io-mode=1");
	const char *argv[] = {"mount", "-t", "glusterfs", "-o", opts, src, t, NULL};
	if ((r = bd_pool_run_checked(argv, err)) < 0)
		return bd_err_prefix(err, "cannot mount %s on '%s'", src, t);
	return 0;
}

static int ng_stop(struct pool *p, struct bd_err *err)
{
	const char *t = p->def->target_path;
	if (!mounted(t, NULL, 0, NULL, 0))
		return 0;
	const char *argv[] = {"umount", t, NULL};
	return bd_pool_run_checked(argv, err);
}

static int ng_delete(struct pool *p, struct bd_err *err)
{
	if (rmdir(p->def->target_path) < 0 && errno != ENOENT)
		return bd_err_set(err, -errno, "cannot remove directory '%s': %s",
				  p->def->target_path, strerror(errno));
	return 0;
}

static int ng_refresh(struct pool *p, struct bd_err *err)
{
	struct statvfs sv;
	int r = bd_pool_dir_refresh(p, err);
	if (statvfs(p->def->target_path, &sv) == 0) {
		p->def->capacity = (uint64_t)sv.f_blocks * sv.f_frsize;
		p->def->available = (uint64_t)sv.f_bavail * sv.f_frsize;
		p->def->allocation = ((uint64_t)sv.f_blocks - sv.f_bfree) * sv.f_frsize;
	}
	return r;
}

const struct pool_backend bd_pool_backend_netfs_gluster = {
    .type = "netfs",
    .buildable = true,
    .file_vols = true,
    .check = ng_check,
    .build = ng_build,
    .start = ng_start,
    .stop = ng_stop,
    .delete = ng_delete,
    .refresh = ng_refresh,
    .vol_create = bd_pool_dir_vol_create,
    .vol_delete = bd_pool_dir_vol_delete,
    .vol_resize = bd_pool_dir_vol_resize,
    .netfs_format = "glusterfs",
};
