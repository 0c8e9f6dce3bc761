/*
 * fuzz-volprobe.c - libFuzzer harness for the pool volume probe (pools/vol-probe.c), which reads
 * guest-writable image headers (qcow2, qcow, vmdk sparse and descriptor, qed, vdi, vpc) during a
 * pool refresh on the control thread.  The input is the whole file: the probe gets its first
 * BD_VOL_PROBE_HEADER bytes and a read callback over the rest, as vol.c gives it a file.  The
 * last input byte also picks a variant: a file 1 TiB larger than the input (reads past the
 * input are short), and a probe without a callback.  Invariants: the callback is asked for
 * ranges inside the file only and at most twice; the format is a known name; capacity fits in
 * int64; the backing names are NUL-terminated printable strings; an odd backing name is not
 * reported.  The result is then copied into a volume and freed (leaks show under ASan).  No I/O.
 */
#include "pools/pools-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-volprobe: invariant broken: %s\n", what);
		abort();
	}
}

struct mem_file {
	const uint8_t *data;
	size_t len;    /* bytes that exist */
	uint64_t size; /* the file size the probe is told */
	unsigned reads;
};

static long mem_read(void *opaque, uint64_t off, void *buf, size_t len)
{
	struct mem_file *f = opaque;

	f->reads++;
	check(f->reads <= 2, "at most two callback reads");
	check(len > 0 && len <= 1024, "callback read length");
	check(off <= f->size && len <= f->size - off, "callback read inside the file");
	if (off >= f->len)
		return 0;
	size_t n = f->len - (size_t)off < len ? f->len - (size_t)off : len;
	memcpy(buf, f->data + off, n);
	return (long)n;
}

static void check_string(const char *s, size_t cap, const char *what)
{
	size_t l = strnlen(s, cap);
	check(l < cap, what);
	for (size_t i = 0; i < l; i++)
		check((unsigned char)s[i] >= 0x20 && s[i] != 0x7f, what);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const formats[] = {"raw", "qcow2", "qcow", "vmdk", "qed", "vdi", "vpc"};
	struct mem_file f = {.data = data, .len = size, .size = size};
	struct bd_vol_probe r;
	bool known = false;

	if (size > (1u << 20))
		return 0;
	unsigned variant = size ? data[size - 1] % 4 : 0;
	if (variant == 1)
		f.size += 1ull << 40;
	size_t n = size < BD_VOL_PROBE_HEADER ? size : BD_VOL_PROBE_HEADER;
	bd_vol_probe(data, n, f.size, variant == 2 ? NULL : mem_read, &f, &r);

	check(r.format != NULL, "a format");
	for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++)
		known |= !strcmp(r.format, formats[i]);
	check(known, "a known format name");
	check(r.capacity <= (uint64_t)INT64_MAX, "capacity fits in int64");
	if (!strcmp(r.format, "raw"))
		check(r.capacity == (f.size > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : f.size),
		      "raw capacity is the file size");
	check_string(r.backing_path, sizeof(r.backing_path), "backing path");
	check_string(r.backing_format, sizeof(r.backing_format), "backing format");
	check(!r.backing_odd || (r.has_backing && !r.backing_path[0]), "odd backing not shown");
	check(!r.backing_path[0] || r.has_backing, "backing path only with a backing file");
	check(!r.cluster_size || (r.cluster_size >= 512 && r.cluster_size <= (2u << 20) &&
				  !(r.cluster_size & (r.cluster_size - 1))),
	      "cluster size");

	struct vol *v = calloc(1, sizeof(*v));
	if (v) {
		if (bd_vol_probe_set(v, &r) == 0) {
			check(!strcmp(v->format, r.format), "format copied");
			check(!v->backing_path || !strcmp(v->backing_path, r.backing_path),
			      "backing path copied");
		}
		bd_vol_free(v);
	}
	return 0;
}
