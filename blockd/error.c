/*
 * error.c - control-path errors (struct bd_err) and logging.  [any thread]
 *
 * An error is set once, by the function that knows what went wrong, and callers add context with
 * bd_err_prefix() as it travels up: "node 'n1': Could not open 'x': No such file or directory".
 */
#include "blockd/blockd.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <time.h>

static enum bd_log_level log_level = BD_LOG_INFO;
static bool log_to_syslog;

int bd_err_set(struct bd_err *err, int code, const char *fmt, ...)
{
	if (code > 0)
		code = -code;
	if (code == 0)
		code = -EIO;
	if (err && err->code == 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int bd_err_prefix(struct bd_err *err, const char *fmt, ...)
{
	char prefix[512];
	size_t plen, olen, cap;
	va_list ap;

	if (!err)
		return -EIO;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	cap = sizeof(err->msg) - 1;
	plen = strlen(prefix);
	olen = strlen(err->msg);
	if (plen + 2 + olen > cap)
		olen = cap - plen - 2; /* keep the context, cut the tail */
	memmove(err->msg + plen + 2, err->msg, olen);
	memcpy(err->msg, prefix, plen);
	err->msg[plen] = ':';
	err->msg[plen + 1] = ' ';
	err->msg[plen + 2 + olen] = '\0';
	if (err->code == 0)
		err->code = -EIO;
	return err->code;
}

void bd_err_clear(struct bd_err *err)
{
	err->code = 0;
	err->msg[0] = '\0';
}

void bd_log_set_level(enum bd_log_level level)
{
	log_level = level;
}

void bd_log_use_syslog(bool on);
void bd_log_use_syslog(bool on)
{
	log_to_syslog = on;
	if (on)
		openlog("blockd", LOG_PID, LOG_DAEMON);
}

void bd_log(enum bd_log_level level, const char *fmt, ...)
{
	static const char *const names[] = {"error", "warning", "info", "debug"};
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char line[2048];
	va_list ap;

	if (level > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_to_syslog) {
		syslog(prio[level], "%s", line);
		return;
	}
	fprintf(stderr, "blockd: %s: %s\n", names[level], line);
}
