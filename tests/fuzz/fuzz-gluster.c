/*
 * fuzz-gluster.c - libFuzzer harness for the gluster driver's location parsers
 * (protocols/gluster-conn.c): the input is tried as a gluster:// URI and, when it is JSON, as
 * QEMU's BlockdevOptionsGluster.  An accepted location must print and convert back to options
 * that parse again to the same URI text.  Pure functions: no connection is made.  Without gfapi
 * in the build the harness does nothing.
 */
#include "blockd/blockd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifdef BD_HAVE_POOL_GLUSTER
#include "protocols/gluster-int.h"

static void check(int cond, const char *what)
{
	if (!cond) {
		fprintf(stderr, "fuzz-gluster: invariant broken: %s\n", what);
		abort();
	}
}

static void roundtrip(struct gl_loc *loc)
{
	char a[8192], b[8192];
	struct gl_loc l2;
	struct bd_err err = {0};
	json_t *o = gl_loc_to_json(loc);

	check(o != NULL, "location converts to options");
	json_object_del(o, "driver");
	check(gl_loc_parse(o, &l2, false, &err) == 0, "options of a location parse");
	check(!strcmp(gl_loc_str(loc, a, sizeof(a)), gl_loc_str(&l2, b, sizeof(b))),
	      "options round trip");
	gl_loc_free(&l2);
	json_decref(o);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *s = malloc(size + 1);
	struct gl_loc loc;
	struct bd_err err = {0};
	json_error_t je;

	if (!s)
		return 0;
	if (size)
		memcpy(s, data, size);
	s[size] = '\0';
	if (gl_uri_parse(s, &loc, &err) == 0) {
		roundtrip(&loc);
		gl_loc_free(&loc);
	}
	json_t *o = json_loadb((const char *)data, size, 0, &je);
	if (o && json_is_object(o)) {
		bd_err_clear(&err);
		if (gl_loc_parse(o, &loc, true, &err) == 0) {
			roundtrip(&loc);
			gl_loc_free(&loc);
		}
	}
	json_decref(o);
	free(s);
	return 0;
}
#else
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	(void)data;
	(void)size;
	return 0;
}
#endif
