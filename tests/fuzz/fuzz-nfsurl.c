/*
 * fuzz-nfsurl.c - libFuzzer harness for nfs:// URLs as the nfs driver and the netfs pool read
 * them (protocols/nfs-sync.c: the strict check of the arguments, then libnfs's own parser).
 * Accepted URLs must split into a host, an absolute directory and a plain file name; rejected
 * ones must say why.  A build without libnfs has no nfs driver: every input is then a no-op.
 * No I/O: the parser only fills a scratch libnfs context.
 */
#include "blockd/blockd.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* protocols/nfs-sync.c, present only with libnfs (weak: NULL otherwise) */
extern int bd_nfs_url_fuzz(const char *url) __attribute__((weak));

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* bd_driver_find() links the driver table, and with it the nfs driver's files */
	if (!bd_driver_find("nfs") || !bd_nfs_url_fuzz || size > 4096)
		return 0;
	char *s = malloc(size + 1);
	if (!s)
		return 0;
	if (size)
		memcpy(s, data, size);
	s[size] = '\0';
	bd_nfs_url_fuzz(s);
	free(s);
	return 0;
}
