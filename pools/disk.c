/*
 * disk.c - the disk pool backend: a partition table on a block device (parted), each partition
 * a volume named after its device node (loop0p1, sdb2).  The kernel here may lack partition
 * table parsers, so after each change the kernel's view is synced with partx (BLKPG), as
 * shared/recipes/disk/parts.sh shows.  [control thread]
 */
#include "pools/pools-int.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dev_of(struct pool *p)
{
	return p->def->source.devices[0];
}

/* parted's label name for a libvirt disk format (dos -> msdos). */
static const char *label_of(struct pool *p)
{
	const char *f = p->def->source.format;
	if (!f || !strcmp(f, "unknown") || !strcmp(f, "dos"))
		return "msdos";
	return f;
}

/* The device node of partition n of dev: "/dev/loop0" -> "/dev/loop0p1", "/dev/sdb" ->
 * "/dev/sdb1". */
static void part_node(const char *dev, unsigned n, char *out, size_t len)
{
	size_t l = strlen(dev);
	snprintf(out, len, "%s%s%u", dev, l && isdigit((unsigned char)dev[l - 1]) ? "p" : "", n);
}

static int run(const char *const argv[], char *out, size_t outlen, struct bd_err *err)
{
	int r = bd_pool_run(argv, out, outlen);
	if (r == -ENOENT)
		return bd_err_set(err, -ENOENT, "cannot run '%s': not installed", argv[0]);
	if (r != 0)
		return bd_err_set(err, -EIO, "'%s %s' failed (status %d): %s", argv[0],
				  argv[1] ? argv[1] : "", r, out ? out : "");
	return 0;
}

static void sync_kernel(struct pool *p)
{
	const char *argv[] = {"partx", "-u", dev_of(p), NULL};
	const char *argv2[] = {"partx", "-a", dev_of(p), NULL};
	char out[1024];
	bd_pool_run(argv, out, sizeof(out));
	bd_pool_run(argv2, out, sizeof(out));
}

static int disk_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	char out[4096];
	int r;
	if (mode != BD_BUILD_OVERWRITE) {
		const char *argv[] = {"blkid", "-p",	 "-o",	    "value",
				      "-s",    "PTTYPE", dev_of(p), NULL};
		r = bd_pool_run(argv, out, sizeof(out));
		if (r == 0 && out[0])
			return bd_err_set(err, -EEXIST,
					  "Storage pool already built: device '%s' already has a "
					  "'%s' partition table (use overwrite to replace it)",
					  dev_of(p), out);
		const char *argv2[] = {"blkid", "-p", "-o", "value", "-s", "TYPE", dev_of(p), NULL};
		r = bd_pool_run(argv2, out, sizeof(out));
		if (r == 0 && out[0])
			return bd_err_set(
			    err, -EEXIST,
			    "device '%s' contains a '%s' file system (use overwrite to "
			    "replace it)",
			    dev_of(p), out);
	}
	const char *argv[] = {"parted", "-s", dev_of(p), "mklabel", label_of(p), NULL};
	if ((r = run(argv, out, sizeof(out), err)) < 0)
		return r;
	sync_kernel(p);
	return 0;
}

static int disk_start(struct pool *p, struct bd_err *err)
{
	struct stat st;
	if (stat(dev_of(p), &st) < 0)
		return bd_err_set(err, -errno, "cannot open device '%s': %s", dev_of(p),
				  strerror(errno));
	if (!S_ISBLK(st.st_mode))
		return bd_err_set(err, -ENOTBLK, "'%s' is not a block device", dev_of(p));
	sync_kernel(p);
	return 0;
}

static int disk_delete(struct pool *p, struct bd_err *err)
{
	char out[1024];
	const char *argv[] = {"wipefs", "-a", "-q", dev_of(p), NULL};
	int r = run(argv, out, sizeof(out), err);
	if (r == 0)
		sync_kernel(p);
	return r;
}

struct seg {
	unsigned num; /* 0 = free space */
	uint64_t start, end, size;
};

/* parted -m ... print free: "N:startB:endB:sizeB:fs:name:flags;" and "1:s:e:z:free;". */
static int list_segs(struct pool *p, struct seg **out, size_t *n, uint64_t *disk_size,
		     struct bd_err *err)
{
	static char buf[1 << 16];
	const char *argv[] = {"parted", "-s", "-m", dev_of(p), "unit", "B", "print", "free", NULL};
	int r = run(argv, buf, sizeof(buf), err);
	*out = NULL;
	*n = 0;
	if (r < 0)
		return r;
	char *save;
	int line = 0;
	for (char *l = strtok_r(buf, "\n", &save); l; l = strtok_r(NULL, "\n", &save), line++) {
		unsigned long long a, b, c;
		unsigned num;
		if (line == 1) {
			char *colon = strchr(l, ':');
			*disk_size = colon ? strtoull(colon + 1, NULL, 10) : 0;
			continue;
		}
		if (line < 2 || sscanf(l, "%u:%lluB:%lluB:%lluB", &num, &a, &b, &c) != 4)
			continue;
		struct seg *ns = realloc(*out, (*n + 1) * sizeof(*ns));
		if (!ns)
			return bd_err_set(err, -ENOMEM, "out of memory");
		*out = ns;
		ns[*n].num = strstr(l, ":free;") ? 0 : num;
		ns[*n].start = a;
		ns[*n].end = b;
		ns[*n].size = c;
		(*n)++;
	}
	return 0;
}

static int disk_refresh(struct pool *p, struct bd_err *err)
{
	struct seg *s;
	size_t n;
	uint64_t dsize = 0, used = 0, free_b = 0;
	int r = list_segs(p, &s, &n, &dsize, err);
	if (r < 0)
		return r;
	bd_pool_vols_clear(p);
	for (size_t i = 0; i < n; i++) {
		char node[512];
		if (!s[i].num) {
			free_b += s[i].size;
			continue;
		}
		used += s[i].size;
		part_node(dev_of(p), s[i].num, node, sizeof(node));
		const char *name = strrchr(node, '/') + 1;
		bd_pool_vol_add(p, name, node, "block", "none", s[i].size, s[i].size);
	}
	free(s);
	p->def->capacity = dsize;
	p->def->allocation = used;
	p->def->available = free_b;
	return 0;
}

static int disk_vol_create(struct pool *p, struct bd_vol_def *def,
			   const struct bd_vol_create_opts *o, struct vol *src, struct bd_err *err)
{
	struct seg *s;
	size_t n;
	uint64_t dsize;
	unsigned next = 1;
	char node[512], start[32], end[32], out[4096];
	int r;

	if (src)
		return bd_err_set(err, -ENOTSUP, "cloning into a disk pool is not supported yet");
	if (!def->has_capacity || !def->capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	if ((r = list_segs(p, &s, &n, &dsize, err)) < 0)
		return r;
	for (size_t i = 0; i < n; i++)
		if (s[i].num >= next)
			next = s[i].num + 1;
	part_node(dev_of(p), next, node, sizeof(node));
	if (strcmp(def->name, strrchr(node, '/') + 1)) {
		free(s);
		return bd_err_set(err, -EINVAL,
				  "disk pool volumes are named after their partition: the next one "
				  "is '%s', not '%s'",
				  strrchr(node, '/') + 1, def->name);
	}
	/* the first free segment that holds the volume, starting at a 1 MiB boundary */
	const uint64_t align = 1 << 20;
	uint64_t at = UINT64_MAX, cap = (def->capacity + 511) & ~511ull;
	for (size_t i = 0; i < n && at == UINT64_MAX; i++) {
		if (s[i].num)
			continue;
		uint64_t b = (s[i].start + align - 1) & ~(align - 1);
		if (b <= s[i].end && s[i].end - b + 1 >= cap)
			at = b;
	}
	free(s);
	if (at == UINT64_MAX)
		return bd_err_set(err, -ENOSPC, "no free space of %" PRIu64 " bytes on '%s'", cap,
				  dev_of(p));
	snprintf(start, sizeof(start), "%" PRIu64 "B", at);
	snprintf(end, sizeof(end), "%" PRIu64 "B", at + cap - 1);
	const char *argv[] = {"parted", "-s", dev_of(p), "mkpart", "primary", start, end, NULL};
	if ((r = run(argv, out, sizeof(out), err)) < 0)
		return r;
	sync_kernel(p);
	for (int i = 0; i < 50 && access(node, F_OK) < 0; i++)
		usleep(20000);
	return disk_refresh(p, err);
}

static int disk_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	const char *num = v->name + strlen(v->name);
	char out[4096];
	while (num > v->name && isdigit((unsigned char)num[-1]))
		num--;
	const char *argv[] = {"parted", "-s", dev_of(p), "rm", num, NULL};
	int r = run(argv, out, sizeof(out), err);
	if (r < 0)
		return r;
	const char *argv2[] = {"partx", "-d", "--nr", num, dev_of(p), NULL};
	bd_pool_run(argv2, out, sizeof(out));
	return 0;
}

static int disk_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			   struct bd_err *err)
{
	return bd_err_set(err, -ENOTSUP, "resizing partitions of a disk pool is not supported");
}

const struct pool_backend bd_pool_backend_disk = {
    .type = "disk",
    .buildable = true,
    .build = disk_build,
    .start = disk_start,
    .delete = disk_delete,
    .refresh = disk_refresh,
    .vol_create = disk_vol_create,
    .vol_delete = disk_vol_delete,
    .vol_resize = disk_vol_resize,
};
