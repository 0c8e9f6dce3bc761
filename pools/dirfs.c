/*
 * dirfs.c - the pool backends whose volumes are files: dir (a directory) and fs (a file system
 * on a block device, made by mkfs on build and mounted on start).  [control thread]
 */
#include "pools/pools-int.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the dir backend ---- */

static int dir_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	const struct bd_pool_perms *pm = &p->def->perms;
	mode_t m = pm->mode >= 0 ? (mode_t)pm->mode : 0711;
	int r = bd_pool_mkdir_p(p->def->target_path, m);
	if (r < 0)
		return bd_err_set(err, r, "cannot create directory '%s': %s", p->def->target_path,
				  strerror(-r));
	if (pm->mode >= 0 && chmod(p->def->target_path, m) < 0)
		return bd_err_set(err, -errno, "cannot set mode of '%s': %s", p->def->target_path,
				  strerror(errno));
	if ((pm->owner >= 0 || pm->group >= 0) &&
	    chown(p->def->target_path, (uid_t)pm->owner, (gid_t)pm->group) < 0)
		return bd_err_set(err, -errno, "cannot set owner of '%s': %s", p->def->target_path,
				  strerror(errno));
	return 0;
}

static int dir_start(struct pool *p, struct bd_err *err)
{
	struct stat st;
	if (stat(p->def->target_path, &st) < 0)
		return bd_err_set(err, -errno,
				  "cannot open directory '%s': %s (build the pool "
				  "first)",
				  p->def->target_path, strerror(errno));
	if (!S_ISDIR(st.st_mode))
		return bd_err_set(err, -ENOTDIR, "'%s' is not a directory", p->def->target_path);
	return 0;
}

static int dir_delete(struct pool *p, struct bd_err *err)
{
	if (rmdir(p->def->target_path) < 0 && errno != ENOENT)
		return bd_err_set(err, -errno, "cannot remove directory '%s': %s",
				  p->def->target_path, strerror(errno));
	return 0;
}

static int dir_refresh(struct pool *p, struct bd_err *err)
{
	int r = bd_pool_dir_refresh(p, err);
	bd_pool_update_space(p);
	return r;
}

const struct pool_backend bd_pool_backend_dir = {
    .type = "dir",
    .buildable = true,
    .file_vols = true,
    .build = dir_build,
    .start = dir_start,
    .delete = dir_delete,
    .refresh = dir_refresh,
    .vol_create = bd_pool_dir_vol_create,
    .vol_delete = bd_pool_dir_vol_delete,
    .vol_resize = bd_pool_dir_vol_resize,
};

/* ---- the fs backend: a file system on a block device, mounted on the target ---- */

static const char *fs_format(struct pool *p)
{
	const char *f = p->def->source.format;
	return f && strcmp(f, "auto") ? f : NULL;
}

/* The file system type on dev ("" when none is found), or -errno. */
int bd_pool_probe_fs(const char *dev, char *out, size_t len, struct bd_err *err)
{
	const char *argv[] = {"blkid", "-p", "-o", "value", "-s", "TYPE", dev, NULL};
	int r = bd_pool_run(argv, out, len);
	if (r == -ENOENT)
		return bd_err_set(err, -ENOENT, "cannot run 'blkid': not installed");
	if (r == 2 || (r == 0 && !out[0])) {
		/* no signature; blkid -p also reports partition tables as PTTYPE */
		out[0] = '\0';
		return 0;
	}
	if (r != 0)
		return bd_err_set(err, -EIO, "cannot probe '%s': %s", dev, out);
	return 0;
}

static bool fs_mounted(const char *target)
{
	char want[4096], line[8192];
	bool found = false;
	FILE *f = fopen("/proc/self/mounts", "re");
	bd_pool_norm_path(target, want, sizeof(want));
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f)) {
		char dev[4096], mnt[4096];
		if (sscanf(line, "%4095s %4095s", dev, mnt) == 2 && !strcmp(mnt, want))
			found = true;
	}
	fclose(f);
	return found;
}

static int fs_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	const char *dev = p->def->source.devices[0];
	const char *fmt = fs_format(p) ? fs_format(p) : "ext4";
	char found[256];
	char mkfs[64];
	int r;

	if ((r = dir_build(p, mode, err)) < 0)
		return r;
	if (fs_mounted(p->def->target_path))
		return bd_err_set(err, -EBUSY, "'%s' is mounted: destroy the pool before building",
				  p->def->target_path);
	if (mode != BD_BUILD_OVERWRITE) {
		if ((r = bd_pool_probe_fs(dev, found, sizeof(found), err)) < 0)
			return r;
		if (found[0])
			return bd_err_set(err, -EEXIST,
					  "Storage pool already built: device '%s' already "
					  "contains a '%s' file system (use overwrite to "
					  "replace it)",
					  dev, found);
	}
	snprintf(mkfs, sizeof(mkfs), "mkfs.%s", fmt);
	if (!strcmp(fmt, "xfs")) {
		const char *argv[] = {mkfs, "-q", "-f", dev, NULL};
		return bd_pool_run_checked(argv, err);
	}
	if (!strncmp(fmt, "ext", 3)) {
		const char *argv[] = {
		    mkfs, "-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1", dev, NULL};
		return bd_pool_run_checked(argv, err);
	}
	const char *argv[] = {mkfs, dev, NULL};
	return bd_pool_run_checked(argv, err);
}

static int fs_start(struct pool *p, struct bd_err *err)
{
	int r;
	if ((r = dir_start(p, err)) < 0)
		return r;
	if (fs_mounted(p->def->target_path))
		return 0;
	if (fs_format(p)) {
		const char *argv[] = {
		    "mount", "-t", fs_format(p), p->def->source.devices[0], p->def->target_path,
		    NULL};
		return bd_pool_run_checked(argv, err);
	}
	const char *argv[] = {"mount", p->def->source.devices[0], p->def->target_path, NULL};
	return bd_pool_run_checked(argv, err);
}

static int fs_stop(struct pool *p, struct bd_err *err)
{
	if (!fs_mounted(p->def->target_path))
		return 0;
	const char *argv[] = {"umount", p->def->target_path, NULL};
	return bd_pool_run_checked(argv, err);
}

const struct pool_backend bd_pool_backend_fs = {
    .type = "fs",
    .buildable = true,
    .file_vols = true,
    .build = fs_build,
    .start = fs_start,
    .stop = fs_stop,
    .delete = dir_delete,
    .refresh = dir_refresh,
    .vol_create = bd_pool_dir_vol_create,
    .vol_delete = bd_pool_dir_vol_delete,
    .vol_resize = bd_pool_dir_vol_resize,
};

