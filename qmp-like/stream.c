/*
 * stream.c - the control socket's input parser: a byte stream in, JSON values out.  [any thread:
 * the state is all in struct qmp_stream]
 *
 * jansson reads one value at a time (JSON_DISABLE_EOF_CHECK: it stops after the first value and
 * error.position says how many bytes it used).  A value split across reads shows up as
 * "premature end of input": keep the bytes and wait.  A syntax error drops the input up to the
 * end of its line (QMP clients send one command per line), so the connection stays usable.
 * Input longer than the limit without a complete value is dropped the same way.
 */
#include "qmp-like/qmp-int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void qmp_stream_init(struct qmp_stream *s, size_t max)
{
	memset(s, 0, sizeof(*s));
	s->max = max;
}

void qmp_stream_fini(struct qmp_stream *s)
{
	free(s->buf);
	memset(s, 0, sizeof(*s));
}

static void consume(struct qmp_stream *s, size_t n)
{
	if (n >= s->len) {
		s->len = 0;
	} else {
		memmove(s->buf, s->buf + n, s->len - n);
		s->len -= n;
	}
	s->scanned = 0;
}

void qmp_stream_feed(struct qmp_stream *s, const void *data, size_t len)
{
	if (!len)
		return;
	if (s->skipping) {
		/* Drop bytes up to and including the next newline; keep the rest. */
		const char *nl = memchr(data, '\n', len);
		if (!nl)
			return;
		s->skipping = false;
		len -= (size_t)(nl + 1 - (const char *)data);
		data = nl + 1;
		if (!len)
			return;
	}
	if (s->len + len > s->cap) {
		size_t cap = s->cap ? s->cap : 4096;
		while (cap < s->len + len)
			cap *= 2;
		char *nb = realloc(s->buf, cap);
		if (!nb)
			abort();
		s->buf = nb;
		s->cap = cap;
	}
	memcpy(s->buf + s->len, data, len);
	s->len += len;
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Drop input up to the end of the current line; if there is none yet, skip until it comes. */
static void resync(struct qmp_stream *s, size_t from)
{
	const char *nl = from < s->len ? memchr(s->buf + from, '\n', s->len - from) : NULL;
	if (nl) {
		consume(s, (size_t)(nl + 1 - s->buf));
	} else {
		s->len = 0;
		s->scanned = 0;
		s->skipping = true;
	}
}

int qmp_stream_next(struct qmp_stream *s, json_t **out, char *msg, size_t msglen)
{
	json_error_t jerr;
	size_t start = 0;
	json_t *v;

	*out = NULL;
	while (start < s->len && is_space(s->buf[start]))
		start++;
	if (start)
		consume(s, start);
	if (!s->len)
		return 0;

	/* An object or array cannot end before a closing bracket arrives, and errors show by the
	 * end of a line: don't re-parse a long partial value for every read. */
	if (s->buf[0] == '{' || s->buf[0] == '[') {
		bool closer = false;
		for (size_t i = s->scanned; i < s->len; i++) {
			if (s->buf[i] == '}' || s->buf[i] == ']' || s->buf[i] == '\n') {
				closer = true;
				break;
			}
		}
		if (!closer) {
			s->scanned = s->len;
			goto need_more;
		}
	}

	v = json_loadb(s->buf, s->len, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &jerr);
	if (v) {
		size_t used = (size_t)jerr.position;
		if (used == 0 || used > s->len)
			used = s->len;
		consume(s, used);
		*out = v;
		return 1;
	}
	if (json_error_code(&jerr) == json_error_premature_end_of_input) {
		s->scanned = s->len;
		goto need_more;
	}
	snprintf(msg, msglen, "JSON parse error, %s", jerr.text);
	resync(s, jerr.position > 0 ? (size_t)jerr.position - 1 : 0);
	return -1;

need_more:
	if (s->len > s->max) {
		snprintf(msg, msglen, "JSON parse error, input too long (more than %zu bytes "
				      "without a complete value)",
			 s->max);
		resync(s, s->len);
		return -1;
	}
	return 0;
}
