/*
 * blkop.c - a static helper inside the test guest: issue one block-layer operation on a disk
 * and print "GUEST: OP DEV: OK" or the error.  (Runs in the guest, not part of blockd.)
 * usage: blkop DEV zeroout|secdiscard|discard|flush|size [OFFSET LENGTH]
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	uint64_t range[2] = {0, 0}, size = 0;
	int fd, rc;

	if (argc < 3) {
		fprintf(stderr, "usage: blkop DEV OP [OFFSET LENGTH]\n");
		return 2;
	}
	if (argc > 4) {
		range[0] = strtoull(argv[3], NULL, 0);
		range[1] = strtoull(argv[4], NULL, 0);
	}
	fd = open(argv[1], O_RDWR);
	if (fd < 0)
		fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		printf("GUEST: %s %s: open: %s\n", argv[2], argv[1], strerror(errno));
		return 1;
	}
	if (!strcmp(argv[2], "zeroout"))
		rc = ioctl(fd, BLKZEROOUT, range);
	else if (!strcmp(argv[2], "secdiscard"))
		rc = ioctl(fd, BLKSECDISCARD, range);
	else if (!strcmp(argv[2], "discard"))
		rc = ioctl(fd, BLKDISCARD, range);
	else if (!strcmp(argv[2], "size")) {
		rc = ioctl(fd, BLKGETSIZE64, &size);
		if (!rc) {
			printf("GUEST: size %s: %llu\n", argv[1], (unsigned long long)size);
			return 0;
		}
	} else
		rc = fsync(fd);
	printf("GUEST: %s %s: %s\n", argv[2], argv[1], rc ? strerror(errno) : "OK");
	return rc ? 1 : 0;
}
