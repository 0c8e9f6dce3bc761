/*
 * fuzz-rbdopts.c - libFuzzer harness for the rbd driver's option parsers (protocols/rbd-conn.c):
 * the legacy filename "rbd:pool[/ns]/image[@snap][:key=value...]" (the input after "rbd:") and
 * the monitor list built from QEMU's server array (the input as JSON).  Accepted filenames must
 * give a non-empty pool and image; accepted server lists a non-empty mon_host without spaces or
 * ';'.  Pure functions: no cluster is contacted.  Built empty when blockd has no librbd.
 */
#include "blockd/blockd.h"
#ifdef BD_HAVE_POOL_RBD
#include "protocols/rbd-conn.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef BD_HAVE_POOL_RBD
static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-rbdopts: invariant broken: %s\n", what);
		abort();
	}
}

static int nonempty(json_t *o, const char *key)
{
	const char *s = json_string_value(json_object_get(o, key));
	return s && *s;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
#ifdef BD_HAVE_POOL_RBD
	struct bd_err err = {0};
	char *fn = malloc(size + 5);
	json_t *opts = json_object(), *extra = json_object(), *j;

	if (!fn)
		abort();
	memcpy(fn, "rbd:", 4);
	if (size)
		memcpy(fn + 4, data, size);
	fn[size + 4] = '\0';
	if (bd_rbd_parse_filename(fn, opts, extra, &err) == 0) {
		check(nonempty(opts, "pool"), "accepted filename has a pool");
		check(nonempty(opts, "image"), "accepted filename has an image");
	} else {
		check(err.code < 0 && err.msg[0], "a refused filename has a message");
	}
	free(fn);
	json_decref(opts);
	json_decref(extra);

	j = size ? json_loadb((const char *)data, size, JSON_DECODE_ANY, NULL) : NULL;
	if (j) {
		bd_err_clear(&err);
		char *mon = bd_rbd_mon_host(j, &err);
		if (mon) {
			check(*mon && !strpbrk(mon, " ;"), "mon_host is a plain address list");
			free(mon);
		} else {
			check(err.code < 0 && err.msg[0], "a refused server list has a message");
		}
		json_decref(j);
	}
#else
	(void)data;
	(void)size;
#endif
	return 0;
}
