/*
 * test-qmp-doc.c - docs/control-protocol.md's command reference is generated from the command
 * table (bd_qmp_write_doc); this test fails when the file is out of date.
 *   test-qmp-doc                 check $SRC_DIR/docs/control-protocol.md
 *   test-qmp-doc --write FILE    rewrite the generated part of FILE
 * The generated part runs from the line "<!-- BEGIN GENERATED REFERENCE -->" to
 * "<!-- END GENERATED REFERENCE -->".
 */
#include "qmp-like/qmp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BEGIN "<!-- BEGIN GENERATED REFERENCE -->\n"
#define END "<!-- END GENERATED REFERENCE -->\n"

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	long n;
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = calloc(1, (size_t)n + 1);
	if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		buf = NULL;
	}
	fclose(f);
	return buf;
}

int main(int argc, char **argv)
{
	char path[4096], *doc, *gen = NULL;
	size_t genlen = 0;
	FILE *mem = open_memstream(&gen, &genlen);
	bool write = argc == 3 && !strcmp(argv[1], "--write");

	bd_log_set_level(BD_LOG_ERROR);
	bd_qmp_write_doc(mem);
	fclose(mem);
	if (write) {
		snprintf(path, sizeof(path), "%s", argv[2]);
	} else {
		const char *src = getenv("SRC_DIR");
		if (!src) {
			printf("SKIP: SRC_DIR is not set\n");
			return 77;
		}
		snprintf(path, sizeof(path), "%s/docs/control-protocol.md", src);
	}
	doc = slurp(path);
	if (!doc) {
		fprintf(stderr, "cannot read %s\n", path);
		return 1;
	}
	char *b = strstr(doc, BEGIN), *e = b ? strstr(b, END) : NULL;
	if (!b || !e) {
		fprintf(stderr, "%s lacks the generated-reference markers\n", path);
		return 1;
	}
	b += strlen(BEGIN);
	if (write) {
		FILE *f = fopen(path, "wb");
		if (!f)
			return 1;
		fwrite(doc, 1, (size_t)(b - doc), f);
		fwrite(gen, 1, genlen, f);
		fputs(e, f);
		fclose(f);
		free(doc);
		free(gen);
		return 0;
	}
	int ok = (size_t)(e - b) == genlen && !memcmp(b, gen, genlen);
	if (!ok)
		fprintf(stderr, "%s: the command reference is out of date; run\n"
				"  BUILD/tests/test-qmp-doc --write docs/control-protocol.md\n",
			path);
	free(doc);
	free(gen);
	return ok ? 0 : 1;
}
