/*
 * fuzz-poolxml.c - libFuzzer harness for libvirt pool and volume XML (pools/xml.c).  The input
 * is parsed as pool XML and as volume XML; whatever is accepted is formatted, parsed again and
 * formatted again, and the two texts must be equal (formatting is stable).  Scaled integers
 * are fed from the input too.  Pure functions over a buffer: no I/O, no globals.
 */
#include "pools/pools.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-poolxml: invariant broken: %s\n", what);
		abort();
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct bd_err err = {0};
	struct bd_pool_def *p = NULL, *p2 = NULL;
	struct bd_vol_def *v = NULL, *v2 = NULL;

	if (bd_pool_def_parse((const char *)data, size, &p, &err) == 0) {
		for (int sizes = 0; sizes < 2; sizes++) {
			char *x = bd_pool_def_format(p, sizes), *x2 = NULL;
			check(x != NULL, "pool formats");
			bd_err_clear(&err);
			check(bd_pool_def_parse(x, strlen(x), &p2, &err) == 0,
			      "pool output parses");
			x2 = bd_pool_def_format(p2, sizes);
			check(x2 && !strcmp(x, x2), "pool format is stable");
			free(x);
			free(x2);
			bd_pool_def_free(p2);
			p2 = NULL;
		}
		bd_pool_def_free(p);
	} else {
		check(err.code < 0 && err.msg[0], "pool error has a message");
	}
	bd_err_clear(&err);
	if (bd_vol_def_parse((const char *)data, size, &v, &err) == 0) {
		char *x = bd_vol_def_format(v), *x2 = NULL;
		check(x != NULL, "volume formats");
		bd_err_clear(&err);
		check(bd_vol_def_parse(x, strlen(x), &v2, &err) == 0, "volume output parses");
		x2 = bd_vol_def_format(v2);
		check(x2 && !strcmp(x, x2), "volume format is stable");
		free(x);
		free(x2);
		bd_vol_def_free(v2);
		bd_vol_def_free(v);
	} else {
		check(err.code < 0 && err.msg[0], "volume error has a message");
	}
	/* scaled integers: "NUM UNIT" split at the first space of a short input */
	if (size < 64) {
		char buf[64], *sp;
		uint64_t out;
		if (size)
			memcpy(buf, data, size);
		buf[size] = '\0';
		sp = strchr(buf, ' ');
		if (sp)
			*sp++ = '\0';
		bd_err_clear(&err);
		bd_pool_scale(buf, sp, &out, &err);
	}
	return 0;
}
