/*
 * secret.c - the "secret" object type (--object secret,id=ID,data=...|file=...[,format=raw|
 * base64]) and bd_secret_lookup() for drivers that need a password or key.  [control]
 *
 * Secrets are kept in memory only, decoded; the memory is wiped when the object is deleted.
 * Encrypted secrets (keyid=, iv=) are not supported yet.
 */
#include "qmp-like/qmp-int.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct secret {
	char id[128];
	char *data; /* NUL-terminated; may contain NULs before len */
	size_t len;
	struct secret *next;
};

static struct secret *secrets;

static int b64_value(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	return -1;
}

/* Decode base64 (whitespace ignored, '=' padding optional at the end).  NULL if invalid. */
static char *b64_decode(const char *in, size_t inlen, size_t *outlen)
{
	char *out = malloc(inlen / 4 * 3 + 4);
	unsigned acc = 0, bits = 0;
	size_t n = 0, pad = 0;

	if (!out)
		abort();
	for (size_t i = 0; i < inlen; i++) {
		int c = (unsigned char)in[i];
		if (c == ' ' || c == '\n' || c == '\r' || c == '\t')
			continue;
		if (c == '=') {
			pad++;
			continue;
		}
		int v = b64_value(c);
		if (v < 0 || pad) {
			free(out);
			return NULL;
		}
		acc = (acc << 6) | (unsigned)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[n++] = (char)((acc >> bits) & 0xff);
		}
	}
	if (pad > 2 || bits >= 6) {
		free(out);
		return NULL;
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

static int read_file(const char *path, char **out, size_t *outlen, struct bd_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 4096, len = 0;
	char *buf;

	if (fd < 0)
		return bd_err_set(err, -errno, "Unable to read %s: %s", path, strerror(errno));
	buf = malloc(cap);
	if (!buf)
		abort();
	for (;;) {
		if (len + 1 >= cap) {
			if (cap >= (1u << 20)) {
				close(fd);
				free(buf);
				return bd_err_set(err, -EFBIG, "Secret file %s is too large", path);
			}
			cap *= 2;
			char *nb = realloc(buf, cap);
			if (!nb)
				abort();
			buf = nb;
		}
		ssize_t r = read(fd, buf + len, cap - len - 1);
		if (r < 0) {
			int e = errno;
			close(fd);
			free(buf);
			return bd_err_set(err, -e, "Unable to read %s: %s", path, strerror(e));
		}
		if (r == 0)
			break;
		len += (size_t)r;
	}
	close(fd);
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;
}

static void secret_free(struct secret *s)
{
	if (s->data) {
		memset(s->data, 0, s->len);
		free(s->data);
	}
	free(s);
}

static int secret_add(const char *id, json_t *props, struct bd_err *err)
{
	static const char *const formats[] = {"raw", "base64", NULL};
	const char *data = NULL, *file = NULL, *keyid = NULL;
	int format = 0, r;
	char *raw = NULL;
	size_t rawlen = 0;

	if ((r = bd_opts_str(props, "data", &data, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_str(props, "file", &file, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_enum(props, "format", formats, &format, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_str(props, "keyid", &keyid, err)) < 0 && r != -ENOENT)
		return r;
	if (keyid || json_object_get(props, "iv"))
		return bd_err_set(err, -ENOTSUP, "encrypted secrets (keyid, iv) are not supported");
	if ((r = bd_opts_check_unused(props, NULL, err)) < 0)
		return r;
	if (data && file)
		return bd_err_set(err, -EINVAL, "'data' and 'file' are mutually exclusive");
	if (!data && !file)
		return bd_err_set(err, -EINVAL, "Either 'data' or 'file' must be provided");
	if (data) {
		rawlen = strlen(data);
		raw = malloc(rawlen + 1);
		if (!raw)
			abort();
		memcpy(raw, data, rawlen + 1);
	} else if ((r = read_file(file, &raw, &rawlen, err)) < 0) {
		return r;
	}
	struct secret *s = calloc(1, sizeof(*s));
	if (!s)
		abort();
	snprintf(s->id, sizeof(s->id), "%s", id);
	if (format == 1) {
		s->data = b64_decode(raw, rawlen, &s->len);
		memset(raw, 0, rawlen);
		free(raw);
		if (!s->data) {
			free(s);
			return bd_err_set(err, -EINVAL, "Invalid base64 data in secret '%s'", id);
		}
	} else {
		s->data = raw;
		s->len = rawlen;
	}
	s->next = secrets;
	secrets = s;
	return 0;
}

static int secret_del(const char *id, struct bd_err *err)
{
	for (struct secret **pp = &secrets; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id))
			continue;
		struct secret *s = *pp;
		*pp = s->next;
		secret_free(s);
		return 0;
	}
	return bd_err_set(err, -ENOENT, "object '%s' not found", id);
}

int bd_secret_lookup(const char *id, char **out, struct bd_err *err)
{
	for (struct secret *s = secrets; s; s = s->next) {
		if (strcmp(s->id, id))
			continue;
		*out = malloc(s->len + 1);
		if (!*out)
			abort();
		memcpy(*out, s->data, s->len);
		(*out)[s->len] = '\0';
		return 0;
	}
	return bd_err_set(err, -ENOENT, "No secret with id '%s'", id);
}

void qmp_secrets_clear(void)
{
	while (secrets) {
		struct secret *s = secrets;
		secrets = s->next;
		secret_free(s);
	}
}

static const char *const secret_formats[] = {"raw", "base64", NULL};

static const struct bd_opt_desc secret_options[] = {
	{"data", BD_OPT_STR, false, NULL, "the secret itself"},
	{"file", BD_OPT_STR, false, NULL, "a file holding the secret"},
	{"format", BD_OPT_ENUM, false, secret_formats, "raw (default) or base64"},
	{"keyid", BD_OPT_STR, false, NULL, "not supported (encrypted secrets)"},
	{"iv", BD_OPT_STR, false, NULL, "not supported (encrypted secrets)"},
	{NULL},
};

const struct bd_object_type bd_objtype_secret = {
	.name = "secret",
	.options = secret_options,
	.add = secret_add,
	.del = secret_del,
};
