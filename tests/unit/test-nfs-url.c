/*
 * test-nfs-url.c - unit test of nfs:// URL handling shared by the nfs driver and netfs pools
 * (protocols/nfs-sync.c): how a URL splits into host, directory to mount and file, which
 * arguments are accepted and into what settings, and which URLs are refused with which
 * message.  Skipped (77) in a build without libnfs.
 */
#include "blockd/blockd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if __has_include(<nfsc/libnfs.h>)
#include "protocols/nfs-sync.h"

/* present only when the nfs driver is built (weak: NULL otherwise) */
extern int bd_nfs_url_split(const char *url, struct bd_nfs_conn *c, char **host, char **dir,
			    char **file, struct bd_err *err) __attribute__((weak));

static int failures;
#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "FAIL %s:%d: %s\n", __FILE__, __LINE__, #cond);            \
			failures++;                                                                \
		}                                                                                  \
	} while (0)

static void conn_init(struct bd_nfs_conn *c)
{
	memset(c, 0, sizeof(*c));
	c->uid = c->gid = c->tcp_syncnt = -1;
	c->timeout = BD_NFS_DEFAULT_TIMEOUT;
}

static void ok(const char *url, const char *host, const char *dir, const char *file)
{
	struct bd_nfs_conn c;
	struct bd_err err = {0};
	char *h, *d, *f;

	conn_init(&c);
	int r = bd_nfs_url_split(url, &c, &h, &d, &f, &err);
	if (r < 0) {
		fprintf(stderr, "FAIL: '%s' refused: %s\n", url, err.msg);
		failures++;
		return;
	}
	if (strcmp(h, host) || strcmp(d, dir) || strcmp(f, file)) {
		fprintf(stderr, "FAIL: '%s' split into '%s' '%s' '%s'\n", url, h, d, f);
		failures++;
	}
	free(h);
	free(d);
	free(f);
}

static void bad(const char *url, const char *msg)
{
	struct bd_nfs_conn c;
	struct bd_err err = {0};
	char *h, *d, *f;

	conn_init(&c);
	int r = bd_nfs_url_split(url, &c, &h, &d, &f, &err);
	if (r == 0) {
		fprintf(stderr, "FAIL: '%s' accepted\n", url);
		failures++;
		free(h);
		free(d);
		free(f);
		return;
	}
	if (!strstr(err.msg, msg)) {
		fprintf(stderr, "FAIL: '%s': message '%s' lacks '%s'\n", url, err.msg, msg);
		failures++;
	}
}

int main(void)
{
	if (!bd_driver_find("nfs") || !bd_nfs_url_split) {
		printf("SKIP: built without the nfs driver\n");
		return 77;
	}
	ok("nfs://127.0.0.1/export/disk.img", "127.0.0.1", "/export", "disk.img");
	ok("nfs://server.example/a/b/c.qcow2", "server.example", "/a/b", "c.qcow2");
	ok("nfs://host/disk.img", "host", "/", "disk.img");
	ok("nfs://host/export/disk.img?timeout=5", "host", "/export", "disk.img");

	struct bd_nfs_conn c;
	struct bd_err err = {0};
	char *h, *d, *f;
	conn_init(&c);
	CHECK(bd_nfs_url_split("nfs://srv/e/f?uid=7&gid=8&tcp-syncnt=3&readahead=65536&pagecache=16"
			       "&debug=2&nfsport=2049&mountport=2050&version=3&timeout=9",
			       &c, &h, &d, &f, &err) == 0);
	CHECK(c.uid == 7 && c.gid == 8 && c.tcp_syncnt == 3 && c.readahead == 65536 &&
	      c.pagecache == 16 && c.debug == 2 && c.nfsport == 2049 && c.mountport == 2050 &&
	      c.timeout == 9);
	if (err.code == 0) {
		free(h);
		free(d);
		free(f);
	}

	bad("file:///x", "is not an nfs:// URL");
	bad("nfs:///export/x", "invalid nfs URL");
	bad("nfs://host", "invalid nfs URL");
	bad("nfs://host/export/", "invalid nfs URL");
	bad("nfs://host/export/x?foo=1", "'foo' is not supported");
	bad("nfs://host/export/x?uid", "has no value");
	bad("nfs://host/export/x?uid=abc", "must be a number");
	bad("nfs://host/export/x?uid=-1", "must be a number");
	bad("nfs://host/export/x?timeout=0", "out of range");
	bad("nfs://host/export/x?readahead=2097152", "out of range");
	bad("nfs://host/export/x?uid=1&uid=2", "given twice");
	bad("nfs://host/export/x?version=4", "only NFSv3");
	bad("nfs://host/e/../x", "must not contain '..'");
	bad("nfs://host/e/..", "must not contain '..'");
	bad("nfs://host/e/x\n", "control character");

	if (failures)
		return 1;
	printf("ok\n");
	return 0;
}

#else
int main(void)
{
	printf("SKIP: built without libnfs\n");
	return 77;
}
#endif
