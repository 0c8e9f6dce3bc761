/*
 * pool-run.c - running the external tools of the pool backends (mkfs, mount, parted, lvm,
 * blkid, ...): fork and exec without a shell, stdout and stderr collected into bounded
 * buffers, the exit status returned.  A tool that does not finish within the tool timeout
 * (BLOCKD_POOL_TOOL_TIMEOUT seconds, default 600: a mount of a dead server, a wedged lvm) is
 * killed with its process group and the call fails with -ETIMEDOUT, so that the control
 * thread is never held forever.  [control thread]
 */
#include "pools/pools-int.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define POOL_TOOL_TIMEOUT_DEFAULT 600

static unsigned tool_timeout(void)
{
	const char *e = getenv("BLOCKD_POOL_TOOL_TIMEOUT");
	char *end;
	unsigned long v;

	if (!e || !*e)
		return POOL_TOOL_TIMEOUT_DEFAULT;
	v = strtoul(e, &end, 10);
	return *end || v == 0 || v > 86400 ? POOL_TOOL_TIMEOUT_DEFAULT : (unsigned)v;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Append up to what fits of r bytes to out (NUL terminated, outlen > 0). */
static void collect(char *out, size_t outlen, size_t *n, const char *data, size_t r)
{
	if (!out || !outlen)
		return;
	if (r > outlen - 1 - *n)
		r = outlen - 1 - *n;
	memcpy(out + *n, data, r);
	*n += r;
	out[*n] = '\0';
}

static void trim(char *out, size_t n)
{
	while (n && (out[n - 1] == '\n' || out[n - 1] == ' '))
		out[--n] = '\0';
}

int bd_pool_run2(const char *const argv[], char *out, size_t outlen, char *errout, size_t errlen)
{
	int po[2], pe[2] = {-1, -1};
	pid_t pid;
	int st;
	size_t n = 0, ne = 0;
	unsigned timeout = tool_timeout();
	int64_t deadline = now_ms() + (int64_t)timeout * 1000;
	bool timed_out = false;

	if (out && outlen)
		out[0] = '\0';
	if (errout && errlen)
		errout[0] = '\0';
	if (pipe2(po, O_CLOEXEC) < 0)
		return -errno;
	if (errout && pipe2(pe, O_CLOEXEC) < 0) {
		int e = errno;
		close(po[0]);
		close(po[1]);
		return -e;
	}
	pid = fork();
	if (pid < 0) {
		int e = errno;
		close(po[0]);
		close(po[1]);
		if (pe[0] >= 0) {
			close(pe[0]);
			close(pe[1]);
		}
		return -e;
	}
	if (pid == 0) {
		sigset_t all;
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		setpgid(0, 0); /* its own group: a timeout kills its helpers too */
		int nul = open("/dev/null", O_RDONLY);
		if (nul >= 0)
			dup2(nul, 0);
		dup2(po[1], 1);
		dup2(pe[1] >= 0 ? pe[1] : po[1], 2);
		setenv("LVM_SUPPRESS_FD_WARNINGS", "1", 1);
		execvp(argv[0], (char *const *)argv);
		_exit(127);
	}
	close(po[1]);
	if (pe[1] >= 0)
		close(pe[1]);
	struct pollfd pfd[2] = {{.fd = po[0], .events = POLLIN}, {.fd = pe[0], .events = POLLIN}};
	int open_fds = pe[0] >= 0 ? 2 : 1;
	while (open_fds) {
		char tmp[4096];
		int64_t left = deadline - now_ms();
		int pr = left > 0 ? poll(pfd, 2, left > 1000000 ? 1000000 : (int)left) : 0;
		if (pr < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (pr == 0 && now_ms() >= deadline) {
			timed_out = true;
			kill(-pid, SIGKILL);
			kill(pid, SIGKILL);
			for (int i = 0; i < 2; i++)
				if (pfd[i].fd >= 0)
					close(pfd[i].fd);
			break;
		}
		for (int i = 0; i < 2; i++) {
			if (pfd[i].fd < 0 || !(pfd[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t r = read(pfd[i].fd, tmp, sizeof(tmp));
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0) {
				close(pfd[i].fd);
				pfd[i].fd = -1;
				open_fds--;
				continue;
			}
			if (i == 0)
				collect(out, outlen, &n, tmp, (size_t)r);
			else
				collect(errout, errlen, &ne, tmp, (size_t)r);
		}
	}
	if (out && outlen)
		trim(out, n);
	if (errout && errlen)
		trim(errout, ne);
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (timed_out) {
		bd_log(BD_LOG_WARN, "pool: '%s' did not finish within %u s: killed", argv[0],
		       timeout);
		return -ETIMEDOUT;
	}
	if (WIFEXITED(st))
		return WEXITSTATUS(st) == 127 ? -ENOENT : WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

int bd_pool_run(const char *const argv[], char *out, size_t outlen)
{
	return bd_pool_run2(argv, out, outlen, NULL, 0);
}

int bd_pool_run_checked(const char *const argv[], struct bd_err *err)
{
	char out[2048];
	int r = bd_pool_run(argv, out, sizeof(out));
	if (r == -ENOENT)
		return bd_err_set(err, -ENOENT, "cannot run '%s': not installed", argv[0]);
	if (r == -ETIMEDOUT)
		return bd_err_set(err, r,
				  "'%s' did not finish within %u s (BLOCKD_POOL_TOOL_TIMEOUT): "
				  "killed",
				  argv[0], tool_timeout());
	if (r < 0)
		return bd_err_set(err, r, "cannot run '%s': %s", argv[0], strerror(-r));
	if (r > 0) {
		char *nl;
		while ((nl = strchr(out, '\n')))
			*nl = ' ';
		return bd_err_set(err, -EIO, "'%s' failed (status %d): %s", argv[0], r, out);
	}
	return 0;
}
