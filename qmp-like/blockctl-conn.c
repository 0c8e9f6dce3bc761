/*
 * blockctl-conn.c - blockctl's connection to the control socket: the QMP greeting and
 * capabilities, commands and their replies, events, descriptors passed with SCM_RIGHTS, and
 * waiting for a volume job with its progress.  Single-threaded, blocking with a timeout.
 */
#include "qmp-like/blockctl-int.h"

#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

const char *bctl_prog = "blockctl";

void bctl_die(int code, const char *fmt, ...)
{
	va_list ap;
	fprintf(stderr, "%s: error: ", bctl_prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	exit(code);
}

/* ---- the connection ---- */

json_t *bctl_read_msg(struct ctx *c)
{
	for (;;) {
		size_t start = 0;
		while (start < c->len && strchr(" \t\r\n", c->buf[start]))
			start++;
		if (start) {
			memmove(c->buf, c->buf + start, c->len - start);
			c->len -= start;
		}
		if (c->len) {
			json_error_t e;
			json_t *v = json_loadb(c->buf, c->len, JSON_DISABLE_EOF_CHECK, &e);
			if (v) {
				size_t used = (size_t)e.position;
				if (used > c->len || used == 0)
					used = c->len;
				memmove(c->buf, c->buf + used, c->len - used);
				c->len -= used;
				return v;
			}
			if (json_error_code(&e) != json_error_premature_end_of_input)
				bctl_die(1, "bad reply from %s: %s", c->socket_path, e.text);
		}
		if (c->len + 65536 > c->cap) {
			c->cap = c->cap ? c->cap * 2 : 131072;
			c->buf = realloc(c->buf, c->cap);
			if (!c->buf)
				bctl_die(1, "out of memory");
		}
		struct pollfd p = {.fd = c->fd, .events = POLLIN};
		int r = poll(&p, 1, c->idle ? c->idle_ms : c->timeout_ms);
		if (r == 0 && c->idle) {
			c->idle(c);
			continue;
		}
		if (r == 0)
			bctl_die(1, "timed out waiting for %s", c->socket_path);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			bctl_die(1, "poll: %s", strerror(errno));
		}
		ssize_t n = read(c->fd, c->buf + c->len, c->cap - c->len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			bctl_die(1, "reading from %s: %s", c->socket_path, strerror(errno));
		}
		if (n == 0)
			bctl_die(1, "%s closed the connection", c->socket_path);
		c->len += (size_t)n;
	}
}

void bctl_send_msg(struct ctx *c, json_t *msg)
{
	char *text = json_dumps(msg, JSON_COMPACT);
	size_t len, off = 0;
	if (!text)
		bctl_die(1, "out of memory");
	len = strlen(text);
	text[len] = '\n'; /* json_dumps' NUL becomes the newline */
	len++;
	while (off < len) {
		ssize_t n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			bctl_die(1, "writing to %s: %s", c->socket_path, strerror(errno));
		}
		off += (size_t)n;
	}
	free(text);
}

/* Run one command; the "return" value (new reference), or exit with the error. */
json_t *bctl_execute(struct ctx *c, const char *cmd, json_t *args)
{
	json_t *msg = json_pack("{s:s}", "execute", cmd), *reply, *ret;
	if (args)
		json_object_set(msg, "arguments", args);
	bctl_send_msg(c, msg);
	json_decref(msg);
	for (;;) {
		reply = bctl_read_msg(c);
		if (!json_object_get(reply, "event"))
			break;
		json_decref(reply);
	}
	json_t *error = json_object_get(reply, "error");
	if (error) {
		const char *desc = json_string_value(json_object_get(error, "desc"));
		const char *cls = json_string_value(json_object_get(error, "class"));
		fprintf(stderr, "%s: error: %s%s%s%s\n", bctl_prog, desc ? desc : "unknown error",
			cls && strcmp(cls, "GenericError") ? " (" : "",
			cls && strcmp(cls, "GenericError") ? cls : "",
			cls && strcmp(cls, "GenericError") ? ")" : "");
		json_decref(reply);
		exit(1);
	}
	ret = json_incref(json_object_get(reply, "return"));
	json_decref(reply);
	if (!ret)
		bctl_die(1, "reply without \"return\" from %s", c->socket_path);
	return ret;
}

void bctl_connect(struct ctx *c)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(c->socket_path) >= sizeof(sa.sun_path))
		bctl_die(1, "socket path '%s' is too long", c->socket_path);
	strcpy(sa.sun_path, c->socket_path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		bctl_die(1, "socket: %s", strerror(errno));
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		bctl_die(1, "cannot connect to %s: %s (is blockd running with --control %s?)",
			 c->socket_path, strerror(errno), c->socket_path);
	json_t *greeting = bctl_read_msg(c);
	if (!json_object_get(greeting, "QMP"))
		bctl_die(1, "%s did not greet like a QMP server", c->socket_path);
	json_decref(greeting);
	json_decref(bctl_execute(c, "qmp_capabilities", NULL));
}

json_t *bctl_wait_event(struct ctx *c, const char *name, json_int_t job)
{
	for (;;) {
		json_t *m = bctl_read_msg(c);
		const char *ev = json_string_value(json_object_get(m, "event"));
		json_t *data = json_object_get(m, "data");
		if (ev && !strcmp(ev, name) &&
		    json_integer_value(json_object_get(data, "job")) == job) {
			json_incref(data);
			json_decref(m);
			return data;
		}
		json_decref(m);
	}
}

void bctl_send_fd(struct ctx *c, int fd, const char *fdname)
{
	json_t *msg = json_pack("{s:s,s:{s:s}}", "execute", "getfd", "arguments", "fdname", fdname);
	char *text = json_dumps(msg, JSON_COMPACT);
	json_decref(msg);
	if (!text)
		bctl_die(1, "out of memory");
	/* the descriptor travels with the command's first byte, the rest follows */
	union {
		struct cmsghdr h;
		char b[CMSG_SPACE(sizeof(int))];
	} u;
	memset(&u, 0, sizeof(u));
	struct iovec iov = {.iov_base = text, .iov_len = 1};
	struct msghdr mh = {
	    .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.b, .msg_controllen = sizeof(u.b)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	ssize_t n;
	while ((n = sendmsg(c->fd, &mh, MSG_NOSIGNAL)) < 0 && errno == EINTR) {
	}
	if (n != 1)
		bctl_die(1, "passing a file descriptor to %s: %s", c->socket_path,
			 n < 0 ? strerror(errno) : "short write");
	size_t len = strlen(text), off = 1;
	text[len++] = '\n';
	while (off < len) {
		n = send(c->fd, text + off, len - off, MSG_NOSIGNAL);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			bctl_die(1, "writing to %s: %s", c->socket_path, strerror(errno));
		off += (size_t)n;
	}
	free(text);
	for (;;) {
		json_t *reply = bctl_read_msg(c);
		if (json_object_get(reply, "event")) {
			json_decref(reply);
			continue;
		}
		json_t *e = json_object_get(reply, "error");
		if (e)
			bctl_die(1, "getfd: %s", json_string_value(json_object_get(e, "desc")));
		json_decref(reply);
		return;
	}
}

/* ---- waiting for a volume job, with its progress ---- */

struct progress {
	struct ctx side; /* a second connection for query-volume-jobs */
	json_int_t job;
	bool shown;
};

static void human(uint64_t v, char *buf, size_t len)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
	double d = (double)v;
	int u = 0;
	while (d >= 1024 && u < 5) {
		d /= 1024;
		u++;
	}
	snprintf(buf, len, u ? "%.1f %s" : "%.0f %s", d, units[u]);
}

static void show_progress(struct ctx *c)
{
	struct progress *p = c->idle_arg;
	if (p->side.fd < 0)
		bctl_connect(&p->side);
	json_t *jobs = bctl_execute(&p->side, "query-volume-jobs", NULL), *j;
	size_t i;
	json_array_foreach(jobs, i, j)
	{
		if (json_integer_value(json_object_get(j, "job")) != p->job)
			continue;
		uint64_t done = (uint64_t)json_integer_value(json_object_get(j, "done"));
		uint64_t total = (uint64_t)json_integer_value(json_object_get(j, "total"));
		char d[32], t[32];
		human(done, d, sizeof(d));
		human(total, t, sizeof(t));
		if (total)
			fprintf(stderr, "\r%s: %3.0f%% (%s of %s)  ",
				json_string_value(json_object_get(j, "operation")),
				100.0 * (double)done / (double)total, d, t);
		else
			fprintf(stderr, "\r%s: %s  ",
				json_string_value(json_object_get(j, "operation")), d);
		p->shown = true;
	}
	json_decref(jobs);
}

json_t *bctl_wait_vol_job(struct ctx *c, json_int_t job, bool progress)
{
	struct progress p = {
	    .side = {.socket_path = c->socket_path, .timeout_ms = c->timeout_ms, .fd = -1},
	    .job = job};
	if (progress) {
		c->idle = show_progress;
		c->idle_ms = 1000;
		c->idle_arg = &p;
	} else {
		/* a long job: no reply timeout while waiting for its end */
		c->idle = NULL;
	}
	int saved = c->timeout_ms;
	c->timeout_ms = -1;
	json_t *ev = bctl_wait_event(c, "POOL_VOLUME_JOB_COMPLETED", job);
	c->timeout_ms = saved;
	c->idle = NULL;
	if (p.shown)
		fputc('\n', stderr);
	if (p.side.fd >= 0)
		close(p.side.fd);
	free(p.side.buf);
	return ev;
}
