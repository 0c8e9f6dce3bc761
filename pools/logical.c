/*
 * logical.c - the logical pool backend: an LVM2 volume group (the lvm2 tools), each logical
 * volume a pool volume.  Without device-mapper in the kernel (no /dev/mapper/control) the
 * tools run with --driverloaded n: metadata changes work, LVs are never activated, and a
 * linear single-segment LV is reached as a window (offset, size) of its physical volume, as
 * shared/recipes/lvm/lvm.sh does.  [control thread]
 */
#include "pools/pools-int.h"

#include <ctype.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *vg_of(struct pool *p)
{
	return p->def->source.name;
}

/* Is device-mapper usable?  The node may exist without the driver (lvm creates it). */
static bool have_dm(void)
{
	int fd = open("/dev/mapper/control", O_RDWR | O_CLOEXEC);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* Run an lvm tool, with --driverloaded n inserted after argv[0] when there is no
 * device-mapper. */
static int lvm(const char **argv, char *out, size_t outlen, struct bd_err *err)
{
	const char *v[32];
	size_t n = 0;
	v[n++] = argv[0];
	if (!have_dm()) {
		v[n++] = "--driverloaded";
		v[n++] = "n";
	}
	for (size_t i = 1; argv[i] && n < 31; i++)
		v[n++] = argv[i];
	v[n] = NULL;
	char errout[4096];
	int r = bd_pool_run2(v, out, outlen, errout, sizeof(errout));
	if (r == -ENOENT)
		return bd_err_set(err, -ENOENT, "cannot run '%s': lvm2 is not installed", argv[0]);
	if (r != 0) {
		/* drop lvm's warnings about the missing device-mapper from the message */
		char msg[1024] = "";
		{
			char *save;
			for (char *l = strtok_r(errout, "\n", &save); l;
			     l = strtok_r(NULL, "\n", &save))
				if (!strstr(l, "WARNING") && !strstr(l, "device-mapper") &&
				    !strstr(l, "/dev/mapper/control") && !strstr(l, "libdevmapper"))
					snprintf(msg + strlen(msg), sizeof(msg) - strlen(msg),
						 "%s ", l);
		}
		return bd_err_set(err, -EIO, "'%s' failed (status %d): %s", argv[0], r, msg);
	}
	/* the report without lvm's warning lines (stderr is merged into out) */
	if (out && outlen) {
		char *w = out;
		for (char *l = out; *l;) {
			char *nl = strchr(l, '\n');
			size_t len = nl ? (size_t)(nl - l + 1) : strlen(l);
			if (!memmem(l, len, "WARNING", 7)) {
				memmove(w, l, len);
				w += len;
			}
			l += len;
		}
		*w = '\0';
	}
	return 0;
}

static int lv_build(struct pool *p, enum bd_pool_build_mode mode, struct bd_err *err)
{
	char out[4096];
	int r;
	if (!p->def->source.ndevices)
		return bd_err_set(err, -EINVAL,
				  "building a logical pool needs <source><device path=...>");
	for (size_t i = 0; i < p->def->source.ndevices && mode != BD_BUILD_OVERWRITE; i++) {
		const char *argv[] = {
		    "blkid", "-p", "-o", "value", "-s", "TYPE", p->def->source.devices[i], NULL};
		if (bd_pool_run(argv, out, sizeof(out)) == 0 && out[0])
			return bd_err_set(
			    err, -EEXIST,
			    "Storage pool already built: device '%s' already contains "
			    "'%s' (use overwrite to replace it)",
			    p->def->source.devices[i], out);
	}
	for (size_t i = 0; i < p->def->source.ndevices; i++) {
		const char *argv[] = {"pvcreate", "-q", "-ff", "-y", p->def->source.devices[i],
				      NULL};
		if ((r = lvm(argv, out, sizeof(out), err)) < 0)
			return r;
	}
	const char *argv[40] = {"vgcreate", "-q", vg_of(p)};
	size_t n = 3;
	for (size_t i = 0; i < p->def->source.ndevices && n < 38; i++)
		argv[n++] = p->def->source.devices[i];
	argv[n] = NULL;
	return lvm(argv, out, sizeof(out), err);
}

static int lv_start(struct pool *p, struct bd_err *err)
{
	char out[4096];
	const char *argv[] = {"vgs", "-q", "--noheadings", "-o", "vg_name", vg_of(p), NULL};
	int r = lvm(argv, out, sizeof(out), NULL);
	if (r < 0)
		return bd_err_set(err, -ENOENT,
				  "volume group '%s' not found (build the pool first)", vg_of(p));
	if (have_dm()) {
		const char *a2[] = {"vgchange", "-q", "-ay", vg_of(p), NULL};
		return lvm(a2, out, sizeof(out), err);
	}
	return 0;
}

static int lv_stop(struct pool *p, struct bd_err *err)
{
	char out[4096];
	if (!have_dm())
		return 0;
	const char *argv[] = {"vgchange", "-q", "-an", vg_of(p), NULL};
	return lvm(argv, out, sizeof(out), err);
}

static int lv_delete(struct pool *p, struct bd_err *err)
{
	char out[4096];
	const char *argv[] = {"vgremove", "-q", "-f", "-y", vg_of(p), NULL};
	int r = lvm(argv, out, sizeof(out), err);
	if (r < 0)
		return r;
	for (size_t i = 0; i < p->def->source.ndevices; i++) {
		const char *a2[] = {"pvremove", "-q", "-y", p->def->source.devices[i], NULL};
		lvm(a2, out, sizeof(out), NULL);
	}
	return 0;
}

static int lv_refresh(struct pool *p, struct bd_err *err)
{
	static char out[1 << 16];
	char vg[128];
	uint64_t extent = 0;
	int r;
	const char *vargv[] = {"vgs",
			       "-q",
			       "--noheadings",
			       "--units",
			       "b",
			       "--nosuffix",
			       "--separator",
			       "|",
			       "-o",
			       "vg_size,vg_free,vg_extent_size",
			       vg_of(p),
			       NULL};
	if ((r = lvm(vargv, out, sizeof(out), err)) < 0)
		return r;
	unsigned long long size = 0, fr = 0, ext = 0;
	if (sscanf(out, " %llu|%llu|%llu", &size, &fr, &ext) == 3) {
		p->def->capacity = size;
		p->def->available = fr;
		p->def->allocation = size - fr;
		extent = ext;
	}
	const char *largv[] = {"lvs",
			       "-q",
			       "--noheadings",
			       "--units",
			       "b",
			       "--nosuffix",
			       "--separator",
			       "|",
			       "-o",
			       "lv_name,lv_size,seg_pe_ranges",
			       vg_of(p),
			       NULL};
	if ((r = lvm(largv, out, sizeof(out), err)) < 0)
		return r;
	bd_pool_vols_clear(p);
	snprintf(vg, sizeof(vg), "%s", vg_of(p));
	char *save;
	for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char name[256], ranges[1024] = "";
		unsigned long long lsize;
		while (*l == ' ')
			l++;
		if (sscanf(l, "%255[^|]|%llu|%1023[^\n]", name, &lsize, ranges) < 2)
			continue;
		char path[600];
		snprintf(path, sizeof(path), "/dev/%s/%s", vg, name);
		struct vol *v = bd_pool_vol_find(p, name);
		if (v) /* a second segment of a multi-segment LV: no window then */
		{
			free(v->dev);
			v->dev = NULL;
			continue;
		}
		v = bd_pool_vol_add(p, name, path, "block", "none", lsize, lsize);
		/* "/dev/loop0:0-1": a window of the PV (pe_start + first * extent) */
		char *colon = strrchr(ranges, ':');
		unsigned long long first, last;
		if (v && !have_dm() && colon && !strchr(ranges, ' ') &&
		    sscanf(colon + 1, "%llu-%llu", &first, &last) == 2) {
			*colon = '\0';
			char pe[64];
			const char *pargv[] = {"pvs",	     "-q", "--noheadings", "--units", "b",
					       "--nosuffix", "-o", "pe_start",	   ranges,    NULL};
			if (lvm(pargv, pe, sizeof(pe), NULL) == 0) {
				v->dev = strdup(ranges);
				v->dev_offset = strtoull(pe, NULL, 10) + first * extent;
			}
		}
	}
	return 0;
}

static int lv_vol_create(struct pool *p, struct bd_vol_def *def, const struct bd_vol_create_opts *o,
			 struct vol *src, struct bd_err *err)
{
	char size[32], out[4096];
	int r;
	if (src)
		return bd_err_set(err, -ENOTSUP,
				  "cloning into a logical pool is not supported yet");
	if (!def->has_capacity || !def->capacity)
		return bd_err_set(err, -EINVAL, "missing required element <capacity> in <volume>");
	for (const char *c = def->name; *c; c++)
		if (def->name[0] == '-' || (!isalnum((unsigned char)*c) && !strchr("+_.-", *c)))
			return bd_err_set(
			    err, -EINVAL,
			    "invalid logical volume name '%s' (letters, digits, +_.- and "
			    "not starting with '-')",
			    def->name);
	snprintf(size, sizeof(size), "%" PRIu64 "b", def->capacity);
	if (have_dm()) {
		const char *argv[] = {"lvcreate", "-q",	     "-y",     "-L", size,
				      "-n",	  def->name, vg_of(p), NULL};
		r = lvm(argv, out, sizeof(out), err);
	} else {
		const char *argv[] = {"lvcreate", "-q", "-y",	   "-an",    "-Zn", "-L",
				      size,	  "-n", def->name, vg_of(p), NULL};
		r = lvm(argv, out, sizeof(out), err);
	}
	if (r < 0)
		return r;
	return lv_refresh(p, err);
}

static int lv_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	char out[4096], lv[600];
	snprintf(lv, sizeof(lv), "%s/%s", vg_of(p), v->name);
	const char *argv[] = {"lvremove", "-q", "-f", "-y", lv, NULL};
	return lvm(argv, out, sizeof(out), err);
}

static int lv_vol_resize(struct pool *p, struct vol *v, uint64_t cap, unsigned flags,
			 struct bd_err *err)
{
	char out[4096], lv[600], size[32];
	snprintf(lv, sizeof(lv), "%s/%s", vg_of(p), v->name);
	snprintf(size, sizeof(size), "%" PRIu64 "b", cap);
	const char *argv[] = {"lvresize", "-q", "-f", "-y", "-L", size, lv, NULL};
	return lvm(argv, out, sizeof(out), err);
}

/* <sources> with one <source> per volume group: its physical volumes, name and format. */
char *bd_pool_logical_find_sources(struct bd_err *err)
{
	static char out[1 << 16];
	const char *argv[] = {"pvs", "-q", "--noheadings",    "--separator",
			      "|",   "-o", "pv_name,vg_name", NULL};
	char *res = NULL;
	size_t len = 0;
	if (lvm(argv, out, sizeof(out), err) < 0)
		return NULL;
	FILE *f = open_memstream(&res, &len);
	if (!f) {
		bd_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	/* group the PVs by VG (pvs lists them in VG order) */
	char vgs[64][128];
	int nvg = 0;
	char *save;
	for (char *l = strtok_r(out, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
		char pv[512], vg[128];
		while (*l == ' ')
			l++;
		if (sscanf(l, "%511[^|]|%127s", pv, vg) != 2)
			continue;
		int k;
		for (k = 0; k < nvg && strcmp(vgs[k], vg); k++)
			;
		if (k == nvg && nvg < 64)
			snprintf(vgs[nvg++], sizeof(vgs[0]), "%s", vg);
	}
	fprintf(f, "<sources>\n");
	for (int k = 0; k < nvg; k++) {
		fprintf(f, "  <source>\n");
		const char *a2[] = {"pvs", "-q", "--noheadings", "-o", "pv_name", "-S", NULL, NULL};
		char sel[160], pvs[8192];
		snprintf(sel, sizeof(sel), "vg_name=%.127s", vgs[k]);
		a2[6] = sel;
		if (lvm(a2, pvs, sizeof(pvs), NULL) == 0) {
			char *s2;
			for (char *l = strtok_r(pvs, "\n", &s2); l; l = strtok_r(NULL, "\n", &s2)) {
				while (*l == ' ')
					l++;
				if (*l)
					fprintf(f, "    <device path='%s'/>\n", l);
			}
		}
		fprintf(f, "    <name>%s</name>\n    <format type='lvm2'/>\n  </source>\n", vgs[k]);
	}
	fprintf(f, "</sources>\n");
	fclose(f);
	return res;
}

const struct pool_backend bd_pool_backend_logical = {
    .type = "logical",
    .buildable = true,
    .build = lv_build,
    .start = lv_start,
    .stop = lv_stop,
    .delete = lv_delete,
    .refresh = lv_refresh,
    .vol_create = lv_vol_create,
    .vol_delete = lv_vol_delete,
    .vol_resize = lv_vol_resize,
};
