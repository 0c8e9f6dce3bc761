/*
 * main.c - the blockd daemon: command line (compatible with qemu-storage-daemon's), start-up
 * in option order, --daemonize and --pidfile, signals, orderly shutdown.  [main thread]
 *
 * Start-up is complete when every option has been processed: only then is the pidfile written
 * and a --daemonize parent released.  SIGTERM/SIGINT/SIGHUP: stop accepting clients, let
 * in-flight requests finish, flush every node, close, exit 0.
 */
#include "blockd/internal.h"
#include "export/nbd/nbd.h"
#include "pools/pools.h" /* pools: state directory, start-up and shutdown */
#include "qmp-like/qmp.h"

#include <fcntl.h>
#include <getopt.h>
#include <liburing.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

enum {
	OPT_BLOCKDEV = 256,
	OPT_CHARDEV,
	OPT_CONTROL,
	OPT_DAEMONIZE,
	OPT_EXPORT,
	OPT_MONITOR,
	OPT_NBD_SERVER,
	OPT_OBJECT,
	OPT_PIDFILE,
	OPT_LOG_LEVEL,
	OPT_STATE_DIR, /* pools */
};

static const struct option long_options[] = {
	{"help", no_argument, NULL, 'h'},
	{"version", no_argument, NULL, 'V'},
	{"trace", required_argument, NULL, 'T'},
	{"blockdev", required_argument, NULL, OPT_BLOCKDEV},
	{"chardev", required_argument, NULL, OPT_CHARDEV},
	{"control", required_argument, NULL, OPT_CONTROL},
	{"daemonize", no_argument, NULL, OPT_DAEMONIZE},
	{"export", required_argument, NULL, OPT_EXPORT},
	{"monitor", required_argument, NULL, OPT_MONITOR},
	{"nbd-server", required_argument, NULL, OPT_NBD_SERVER},
	{"object", required_argument, NULL, OPT_OBJECT},
	{"pidfile", required_argument, NULL, OPT_PIDFILE},
	{"log-level", required_argument, NULL, OPT_LOG_LEVEL},
	{"state-dir", required_argument, NULL, OPT_STATE_DIR}, /* pools */
	{NULL, 0, NULL, 0},
};

static const char usage_text[] =
	"Usage: blockd [options]\n"
	"A block storage daemon: opens block nodes and exports them over NBD.\n"
	"The options are those of qemu-storage-daemon and are processed in order.\n"
	"\n"
	"  -h, --help                 print this help and exit\n"
	"  -V, --version              print the version and exit\n"
	"  -T, --trace [[enable=]PATTERN]  accepted for compatibility (no tracing yet)\n"
	"  --blockdev OPTIONS         open a block node: [driver=]DRIVER,node-name=NAME,...\n"
	"                             or a JSON object; drivers: file, host_device, null-co,\n"
	"                             raw, throttle\n"
	"  --object iothread,id=ID    an I/O loop thread exports can run on\n"
	"  --object throttle-group,id=ID,limits.iops-total=N,...\n"
	"  --nbd-server addr.type=inet,addr.host=HOST,addr.port=PORT[,max-connections=N]\n"
	"  --nbd-server addr.type=unix,addr.path=PATH | addr.type=fd,addr.str=FD\n"
	"                             (repeatable: each adds a listener)\n"
	"  --export [type=]nbd,id=ID,node-name=NODE[,name=NAME][,description=TEXT]\n"
	"           [,writable=on|off][,iothread=ID][,allocation-depth=on|off]\n"
	"  --chardev socket,id=ID,path=PATH,server=on,wait=off\n"
	"  --monitor [chardev=]ID[,pretty=on|off]  the QMP control socket on that chardev\n"
	"  --control PATH             the QMP control socket on unix socket PATH (mode 0600)\n"
	"  --pidfile PATH             write the pid once everything is ready\n"
	"  --daemonize                detach once everything is ready\n"
	"  --log-level error|warning|info|debug\n"
	"  --state-dir DIR            storage pool definitions (default /var/lib/blockd)\n"
	"\n"
	"Documentation: docs/user-guide.md\n";

static const char *pidfile_path;
/* pools: the state directory (--state-dir) and whether it was given explicitly */
static const char *state_dir = "/var/lib/blockd";
static bool state_dir_given;
static bool pidfile_written;
static int daemon_pipe = -1;

struct signal_watch {
	struct bd_io io;
	int fd;
	struct signalfd_siginfo info;
};

static struct signal_watch sigwatch = {.fd = -1};

static void signal_arm(void);

static void signal_done(struct bd_io *io, int res)
{
	(void)io;
	if (res == (int)sizeof(sigwatch.info)) {
		bd_log(BD_LOG_INFO, "received signal %u, shutting down",
		       (unsigned)sigwatch.info.ssi_signo);
		bd_loop_quit(bd_loop_main());
		return;
	}
	signal_arm();
}

static void signal_arm(void)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_read(sqe, sigwatch.fd, &sigwatch.info, sizeof(sigwatch.info), 0);
	sigwatch.io.done = signal_done;
	bd_io_attach(sqe, &sigwatch.io);
}

static int write_pidfile(const char *path, struct bd_err *err)
{
	char tmp[4096], buf[32];
	int fd, len;

	snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return bd_err_set(err, -errno, "cannot create pidfile '%s': %s", path,
				  strerror(errno));
	len = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (write(fd, buf, (size_t)len) != len || close(fd) < 0) {
		int e = errno;
		unlink(tmp);
		return bd_err_set(err, -e, "cannot write pidfile '%s': %s", path, strerror(e));
	}
	if (rename(tmp, path) < 0) {
		int e = errno;
		unlink(tmp);
		return bd_err_set(err, -e, "cannot write pidfile '%s': %s", path, strerror(e));
	}
	pidfile_written = true;
	return 0;
}

/* Fork before any thread exists; the parent waits for the child to report start-up. */
static void daemonize_early(void)
{
	int fds[2];
	pid_t pid;

	if (pipe2(fds, O_CLOEXEC) < 0) {
		fprintf(stderr, "blockd: --daemonize: pipe: %s\n", strerror(errno));
		exit(1);
	}
	pid = fork();
	if (pid < 0) {
		fprintf(stderr, "blockd: --daemonize: fork: %s\n", strerror(errno));
		exit(1);
	}
	if (pid > 0) {
		char status = 1;
		close(fds[1]);
		if (read(fds[0], &status, 1) != 1)
			status = 1;
		_exit(status ? 1 : 0);
	}
	close(fds[0]);
	daemon_pipe = fds[1];
	setsid();
}

static void daemonize_finish(bool ok)
{
	if (daemon_pipe < 0)
		return;
	if (ok) {
		int fd = open("/dev/null", O_RDWR);
		if (fd >= 0) {
			dup2(fd, STDIN_FILENO);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
			if (fd > 2)
				close(fd);
		}
		bd_log_use_syslog(true);
	}
	char status = ok ? 0 : 1;
	if (write(daemon_pipe, &status, 1) != 1) {
		/* the parent is gone: nothing to tell */
	}
	close(daemon_pipe);
	daemon_pipe = -1;
}

static void shutdown_all(void)
{
	uint64_t t0 = bd_now_ns();

#define STEP(what) bd_log(BD_LOG_DEBUG, "shutdown: %s after %llu ms", what, \
			      (unsigned long long)((bd_now_ns() - t0) / 1000000))
	bd_graph_release_held();
	bd_qmp_shutdown();
	STEP("control socket closed");
	bd_pools_shutdown(); /* pools */
	STEP("pools stopped");
	bd_exports_shutdown();
	bd_nbd_server_stop();
	STEP("exports closed");
	for (struct bd_node *n = bd_graph_next(NULL); n; n = bd_graph_next(n)) {
		if (bd_node_read_only(n))
			continue;
		int r = bd_node_io_sync(n, BD_OP_FLUSH, 0, 0, NULL, 0);
		if (r < 0)
			bd_log(BD_LOG_WARN, "flush of node '%s' failed: %s", bd_node_name(n),
			       strerror(-r));
	}
	STEP("nodes flushed");
	bd_graph_close_all();
	STEP("nodes closed");
#undef STEP
	bd_iothreads_destroy_all();
	if (pidfile_written)
		unlink(pidfile_path);
}

static int run_option(int opt, const char *arg, struct bd_err *err)
{
	json_t *o = NULL;
	int r = 0;

	switch (opt) {
	case OPT_BLOCKDEV: {
		o = bd_opts_parse(arg, NULL, err);
		if (!o)
			return err->code;
		struct bd_node *n = bd_node_open(o, err);
		r = n ? 0 : err->code;
		break;
	}
	case OPT_OBJECT:
		o = bd_opts_parse(arg, "qom-type", err);
		if (!o)
			return err->code;
		r = bd_object_add(o, err);
		break;
	case OPT_NBD_SERVER:
		o = bd_opts_parse(arg, NULL, err);
		if (!o)
			return err->code;
		r = bd_nbd_server_add_listener(o, err); /* repeatable: one listener each */
		break;
	case OPT_EXPORT:
		o = bd_opts_parse(arg, "type", err);
		if (!o)
			return err->code;
		r = bd_export_add(o, err);
		break;
	case OPT_CHARDEV:
		o = bd_opts_parse(arg, "backend", err);
		if (!o)
			return err->code;
		r = bd_qmp_chardev_add(o, err);
		break;
	case OPT_MONITOR:
		o = bd_opts_parse(arg, "chardev", err);
		if (!o)
			return err->code;
		r = bd_qmp_monitor_add(o, err);
		break;
	case OPT_CONTROL:
		r = bd_qmp_listen(arg, false, err);
		break;
	default:
		break;
	}
	json_decref(o);
	return r;
}

struct action {
	int opt;
	const char *arg;
	const char *name;
};

int main(int argc, char **argv)
{
	struct action *actions = calloc((size_t)argc + 1, sizeof(*actions));
	int nactions = 0, c, r;
	bool daemonize = false;
	struct bd_err err = {0};
	sigset_t sigs;

	if (!actions)
		return 1;
	opterr = 0;
	int longindex = -1;
	while ((c = getopt_long(argc, argv, "+hVT:", long_options, &longindex)) != -1) {
		switch (c) {
		case 'h':
			fputs(usage_text, stdout);
			free(actions);
			return 0;
		case 'V':
			printf("blockd %s\n", BD_VERSION_STRING);
			free(actions);
			return 0;
		case 'T':
			break;
		case OPT_DAEMONIZE:
			daemonize = true;
			break;
		case OPT_PIDFILE:
			pidfile_path = optarg;
			break;
		case OPT_STATE_DIR: /* pools */
			state_dir = optarg;
			state_dir_given = true;
			break;
		case OPT_LOG_LEVEL: {
			static const char *const lv[] = {"error", "warning", "info", "debug", NULL};
			int i;
			for (i = 0; lv[i] && strcmp(lv[i], optarg); i++)
				;
			if (!lv[i]) {
				fprintf(stderr, "blockd: --log-level: unknown level '%s'\n", optarg);
				free(actions);
				return 1;
			}
			bd_log_set_level((enum bd_log_level)i);
			break;
		}
		case '?':
			if (optopt > 0 && optopt < 128)
				fprintf(stderr, "blockd: option '-%c' is not recognised or lacks its "
						"argument; see --help\n",
					optopt);
			else
				fprintf(stderr, "blockd: option '%s' is not recognised or lacks its "
						"argument; see --help\n",
					argv[optind - 1]);
			free(actions);
			return 1;
		default:
			actions[nactions].opt = c;
			actions[nactions].arg = optarg;
			/* the option's name as in the table: "--blockdev" */
			actions[nactions].name = longindex >= 0 ? long_options[longindex].name : "?";
			nactions++;
			break;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "blockd: unexpected argument '%s'; see --help\n", argv[optind]);
		free(actions);
		return 1;
	}

	if (daemonize)
		daemonize_early();

	/* Signals arrive through a signalfd on the main loop; threads created from here on
	 * inherit the blocked mask. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (!bd_loop_main_init(&err) || bd_default_io_loop_create(&err) < 0) {
		fprintf(stderr, "blockd: %s\n", err.msg);
		daemonize_finish(false);
		return 1;
	}
	sigwatch.fd = signalfd(-1, &sigs, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigwatch.fd < 0) {
		fprintf(stderr, "blockd: signalfd: %s\n", strerror(errno));
		daemonize_finish(false);
		return 1;
	}
	signal_arm();

	for (int i = 0; i < nactions; i++) {
		bd_err_clear(&err);
		r = run_option(actions[i].opt, actions[i].arg, &err);
		if (r < 0) {
			/* the option as the user spelt it, then the reason */
			fprintf(stderr, "blockd: --%s %s: %s\n", actions[i].name,
				actions[i].arg ? actions[i].arg : "", err.msg);
			shutdown_all();
			daemonize_finish(false);
			free(actions);
			close(sigwatch.fd);
			return 1;
		}
	}
	free(actions);

	/* pools: load the definitions and start the autostart pools (begin) */
	bd_err_clear(&err);
	if (bd_pools_init(state_dir, &err) < 0) {
		if (state_dir_given) {
			fprintf(stderr, "blockd: --state-dir %s: %s\n", state_dir, err.msg);
			shutdown_all();
			daemonize_finish(false);
			close(sigwatch.fd);
			return 1;
		}
		bd_log(BD_LOG_WARN, "storage pools disabled: %s", err.msg);
	}
	/* pools (end) */

	if (pidfile_path && write_pidfile(pidfile_path, &err) < 0) {
		fprintf(stderr, "blockd: --pidfile: %s\n", err.msg);
		shutdown_all();
		daemonize_finish(false);
		close(sigwatch.fd);
		return 1;
	}
	daemonize_finish(true);
	bd_log(BD_LOG_DEBUG, "ready");

	bd_loop_run(bd_loop_main());

	shutdown_all();
	close(sigwatch.fd);
	return 0;
}
