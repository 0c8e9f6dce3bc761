/*
 * standalone-main.c - a main() for the libFuzzer harnesses (tests/fuzz/fuzz-*.c) without libFuzzer:
 * the "fuzz-smoke" tests.  Single-threaded, deterministic.
 *
 * Usage: fuzz-NAME [FILE|DIR]...
 *   Feeds every FILE, and every regular file of every DIR (sorted by name), to
 *   LLVMFuzzerTestOneInput(), then feeds deterministic mutations of them (bit flips, interesting
 *   bytes, truncations, splices) and a few random inputs.  Each input sits in its own malloc'd
 *   buffer of exactly its size, so AddressSanitizer builds catch reads past the end.
 * Environment: BD_FUZZ_MUTATIONS (mutated inputs in total, default 2000), BD_FUZZ_SEED (default 1),
 *   BD_FUZZ_VERBOSE=1 (print each input's name before running it).
 * Exits 0 when every input returned; a crash or a sanitizer report ends the process non-zero.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* asprintf, scandir */
#endif
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

#define FUZZ_MAX_INPUT (1u << 20)

struct input {
	char *name;
	uint8_t *data;
	size_t size;
};

static struct input *inputs;
static size_t nr_inputs, cap_inputs;
static int verbose;
static uint64_t rng_state;

static uint64_t rng(void)
{
	/* xorshift64*: deterministic across platforms */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 2685821657736338717ull;
}

static void add_input(const char *name, const uint8_t *data, size_t size)
{
	if (nr_inputs == cap_inputs) {
		cap_inputs = cap_inputs ? cap_inputs * 2 : 64;
		inputs = realloc(inputs, cap_inputs * sizeof(*inputs));
		if (!inputs) {
			perror("realloc");
			exit(2);
		}
	}
	inputs[nr_inputs].name = strdup(name);
	inputs[nr_inputs].data = malloc(size ? size : 1);
	if (!inputs[nr_inputs].name || !inputs[nr_inputs].data) {
		perror("malloc");
		exit(2);
	}
	if (size)
		memcpy(inputs[nr_inputs].data, data, size);
	inputs[nr_inputs].size = size;
	nr_inputs++;
}

static void load_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		exit(2);
	}
	uint8_t *buf = malloc(FUZZ_MAX_INPUT);
	if (!buf) {
		perror("malloc");
		exit(2);
	}
	size_t n = fread(buf, 1, FUZZ_MAX_INPUT, f);
	if (ferror(f)) {
		fprintf(stderr, "%s: read error\n", path);
		exit(2);
	}
	fclose(f);
	add_input(path, buf, n);
	free(buf);
}

static int only_files(const struct dirent *d)
{
	return d->d_name[0] != '.';
}

static void load_path(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		exit(2);
	}
	if (!S_ISDIR(st.st_mode)) {
		load_file(path);
		return;
	}
	struct dirent **names;
	int n = scandir(path, &names, only_files, alphasort);
	if (n < 0) {
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		exit(2);
	}
	for (int i = 0; i < n; i++) {
		char *p;
		if (asprintf(&p, "%s/%s", path, names[i]->d_name) < 0)
			exit(2);
		if (stat(p, &st) == 0 && S_ISREG(st.st_mode))
			load_file(p);
		free(p);
		free(names[i]);
	}
	free(names);
}

static void run_one(const char *what, const uint8_t *data, size_t size)
{
	/* An exact-size copy, so that a read past the end is a heap overflow under ASan. */
	uint8_t *copy = malloc(size ? size : 1);
	if (!copy) {
		perror("malloc");
		exit(2);
	}
	if (size)
		memcpy(copy, data, size);
	if (verbose) {
		fprintf(stderr, "input %s (%zu bytes)\n", what, size);
		fflush(stderr);
	}
	LLVMFuzzerTestOneInput(size ? copy : NULL, size);
	free(copy);
}

static const uint8_t interesting[] = {0x00, 0x01, 0x7f, 0x80, 0xff, 0xfe, 0x10, 0x20, 0x40};

/* One mutation of buf (len bytes, capacity cap) in place; returns the new length. */
static size_t mutate(uint8_t *buf, size_t len, size_t cap)
{
	unsigned nmut = 1 + rng() % 4;
	for (unsigned m = 0; m < nmut; m++) {
		switch (rng() % 7) {
		case 0: /* flip a bit */
			if (len)
				buf[rng() % len] ^= (uint8_t)(1u << (rng() % 8));
			break;
		case 1: /* interesting byte */
			if (len)
				buf[rng() % len] = interesting[rng() % sizeof(interesting)];
			break;
		case 2: /* random byte */
			if (len)
				buf[rng() % len] = (uint8_t)rng();
			break;
		case 3: /* truncate */
			if (len)
				len = rng() % len;
			break;
		case 4: { /* interesting 32-bit big-endian value (protocols are big-endian) */
			static const uint32_t v[] = {0, 1, 0x7fffffff, 0x80000000, 0xffffffff,
						     0xfffffffe, 512, 4096, 65536, 0x2000000};
			if (len >= 4) {
				size_t at = rng() % (len - 3);
				uint32_t x = v[rng() % (sizeof(v) / sizeof(v[0]))];
				buf[at] = (uint8_t)(x >> 24);
				buf[at + 1] = (uint8_t)(x >> 16);
				buf[at + 2] = (uint8_t)(x >> 8);
				buf[at + 3] = (uint8_t)x;
			}
			break;
		}
		case 5: { /* append random bytes */
			size_t add = 1 + rng() % 64;
			if (len + add > cap)
				add = cap - len;
			for (size_t i = 0; i < add; i++)
				buf[len + i] = (uint8_t)rng();
			len += add;
			break;
		}
		case 6: { /* splice: copy a chunk of another input over this one */
			if (!nr_inputs || !len)
				break;
			const struct input *o = &inputs[rng() % nr_inputs];
			if (!o->size)
				break;
			size_t from = rng() % o->size, at = rng() % len;
			size_t n = 1 + rng() % (o->size - from);
			if (at + n > cap)
				n = cap - at;
			memcpy(buf + at, o->data + from, n);
			if (at + n > len)
				len = at + n;
			break;
		}
		}
	}
	return len;
}

int main(int argc, char **argv)
{
	const char *s;
	unsigned long mutations = 2000;
	if ((s = getenv("BD_FUZZ_MUTATIONS")))
		mutations = strtoul(s, NULL, 0);
	rng_state = 1;
	if ((s = getenv("BD_FUZZ_SEED")))
		rng_state = strtoull(s, NULL, 0);
	if (!rng_state)
		rng_state = 1;
	verbose = (s = getenv("BD_FUZZ_VERBOSE")) && *s == '1';

	if (LLVMFuzzerInitialize)
		LLVMFuzzerInitialize(&argc, &argv);

	for (int i = 1; i < argc; i++)
		load_path(argv[i]);
	size_t corpus = nr_inputs;

	/* The corpus as is. */
	for (size_t i = 0; i < corpus; i++)
		run_one(inputs[i].name, inputs[i].data, inputs[i].size);

	/* The empty input, and a few random ones of various sizes. */
	run_one("(empty)", NULL, 0);
	static uint8_t rnd[8192];
	for (unsigned i = 0; i < 32; i++) {
		size_t len = (size_t)(rng() % (i < 16 ? 64 : sizeof(rnd)));
		for (size_t j = 0; j < len; j++)
			rnd[j] = (uint8_t)rng();
		run_one("(random)", rnd, len);
	}

	/* Mutations of corpus inputs (or of random data when there is no corpus). */
	size_t cap = 64 * 1024;
	uint8_t *buf = malloc(cap);
	if (!buf) {
		perror("malloc");
		return 2;
	}
	for (unsigned long m = 0; m < mutations; m++) {
		size_t len;
		const char *name = "(mutation of random data)";
		if (corpus) {
			const struct input *in = &inputs[rng() % corpus];
			len = in->size < cap / 2 ? in->size : cap / 2;
			memcpy(buf, in->data, len);
			name = in->name;
		} else {
			len = rng() % 512;
			for (size_t j = 0; j < len; j++)
				buf[j] = (uint8_t)rng();
		}
		len = mutate(buf, len, cap);
		if (verbose)
			fprintf(stderr, "mutation %lu of ", m);
		run_one(name, buf, len);
	}
	free(buf);

	printf("%s: %zu corpus inputs, 33 fixed inputs, %lu mutations: ok\n", argv[0], corpus,
	       mutations);
	for (size_t i = 0; i < nr_inputs; i++) {
		free(inputs[i].name);
		free(inputs[i].data);
	}
	free(inputs);
	return 0;
}
