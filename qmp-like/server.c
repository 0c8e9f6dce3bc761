/*
 * server.c - the control socket's transport: unix-socket listeners (--chardev/--monitor and
 * --control), clients, events, named file descriptors.  [control: everything runs on the main
 * loop]
 *
 * Every socket operation is an io_uring request on the main loop (accept, recvmsg, send), so
 * a slow or dead client never blocks the daemon.  Each client has one receive and at most one
 * send in flight.  Output waits in a per-client queue: above QMP_OUT_HIGH bytes the client's
 * input is not read (pipelined commands wait), and a client whose queue would pass QMP_OUT_MAX
 * (it does not read its events) is disconnected.  File descriptors arrive with SCM_RIGHTS on
 * any message and wait on the connection for getfd.
 */
#include "blockd/internal.h"
#include "qmp-like/qmp-int.h"

#include <fcntl.h>
#include <liburing.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define QMP_OUT_HIGH (256u << 10)
#define QMP_OUT_MAX (8u << 20)
#define QMP_RX_BUF 16384
#define QMP_MAX_FDS_IN 16    /* per message */
#define QMP_MAX_FDS_HELD 64  /* per connection, not yet claimed by getfd */
#define QMP_MAX_CLIENTS 512

struct listener {
	int fd;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	bool pretty;
	bool accepting;
	bool closing;
	struct bd_io io;
	struct bd_timer retry;
	struct listener *next;
};

struct outbuf {
	struct outbuf *next;
	size_t len, off;
	char data[];
};

struct client {
	struct qmp_conn conn;
	int fd;
	bool dead;
	bool rx_busy, rx_paused, tx_busy;
	unsigned in_dispatch;
	struct bd_io rx_io, tx_io;
	struct msghdr msg;
	struct iovec iov;
	_Alignas(struct cmsghdr) char cmsg_buf[CMSG_SPACE(sizeof(int) * QMP_MAX_FDS_IN)];
	char rx[QMP_RX_BUF];
	struct outbuf *out_head, *out_tail;
	size_t out_bytes;
	unsigned nfds;
	struct bd_defer free_defer;
	struct client *next;
};

struct chardev {
	char id[128];
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	bool used;
	struct chardev *next;
};

struct named_fd {
	char name[128];
	int fd;
	struct named_fd *next;
};

static struct listener *listeners;
static struct client *clients;
static unsigned nclients;
static struct chardev *chardevs;
static struct named_fd *named_fds;
static bool sink_installed;
static bool quitting;

static void client_close(struct client *cl);
static void client_kick_tx(struct client *cl);
static void client_arm_rx(struct client *cl);
static void rx_done(struct bd_io *io, int res);
static void tx_done(struct bd_io *io, int res);

/* ---- output ---- */

static bool enqueue_text(struct client *cl, const char *text, size_t len)
{
	if (cl->dead)
		return false;
	if (cl->out_bytes + len + 2 > QMP_OUT_MAX) {
		bd_log(BD_LOG_WARN, "control socket: client %d does not read its output; "
				    "disconnecting it",
		       cl->fd);
		client_close(cl);
		return false;
	}
	struct outbuf *b = malloc(sizeof(*b) + len + 2);
	if (!b)
		abort();
	memcpy(b->data, text, len);
	b->data[len] = '\r';
	b->data[len + 1] = '\n';
	b->len = len + 2;
	b->off = 0;
	b->next = NULL;
	if (cl->out_tail)
		cl->out_tail->next = b;
	else
		cl->out_head = b;
	cl->out_tail = b;
	cl->out_bytes += b->len;
	client_kick_tx(cl);
	return true;
}

static size_t dump_flags(bool pretty)
{
	return JSON_PRESERVE_ORDER | (pretty ? JSON_INDENT(4) : 0);
}

static void conn_send(struct qmp_conn *c, json_t *msg)
{
	struct client *cl = c->opaque;
	char *text = json_dumps(msg, dump_flags(c->pretty));
	if (!text)
		abort();
	enqueue_text(cl, text, strlen(text));
	free(text);
}

static bool conn_throttled(struct qmp_conn *c)
{
	struct client *cl = c->opaque;
	return cl->dead || cl->out_bytes >= QMP_OUT_HIGH;
}

static const struct qmp_conn_ops client_ops = {
	.send = conn_send,
	.throttled = conn_throttled,
};

static void tx_done(struct bd_io *io, int res)
{
	struct client *cl = bd_container_of(io, struct client, tx_io);
	cl->tx_busy = false;
	if (cl->dead) {
		client_close(cl);
		return;
	}
	if (res < 0) {
		bd_log(BD_LOG_DEBUG, "control socket: send: %s", strerror(-res));
		client_close(cl);
		return;
	}
	struct outbuf *b = cl->out_head;
	b->off += (size_t)res;
	cl->out_bytes -= (size_t)res;
	if (b->off == b->len) {
		cl->out_head = b->next;
		if (!cl->out_head)
			cl->out_tail = NULL;
		free(b);
	}
	if (!cl->out_head && cl->conn.quit_after_send) {
		bd_loop_quit(bd_loop_main());
		cl->conn.quit_after_send = false;
	}
	client_kick_tx(cl);
	if (cl->rx_paused && cl->out_bytes < QMP_OUT_HIGH / 2) {
		cl->rx_paused = false;
		cl->in_dispatch++;
		qmp_conn_process(&cl->conn);
		cl->in_dispatch--;
		if (cl->dead) {
			client_close(cl);
			return;
		}
		if (conn_throttled(&cl->conn))
			cl->rx_paused = true;
		else
			client_arm_rx(cl);
	}
}

static void client_kick_tx(struct client *cl)
{
	struct outbuf *b = cl->out_head;
	if (cl->tx_busy || cl->dead || !b)
		return;
	struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_send(sqe, cl->fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
	bd_io_attach(sqe, &cl->tx_io);
	cl->tx_busy = true;
}

/* ---- input ---- */

static void take_fds(struct client *cl)
{
	for (struct cmsghdr *h = CMSG_FIRSTHDR(&cl->msg); h; h = CMSG_NXTHDR(&cl->msg, h)) {
		if (h->cmsg_level != SOL_SOCKET || h->cmsg_type != SCM_RIGHTS)
			continue;
		size_t n = (h->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int fds[QMP_MAX_FDS_IN];
		if (n > QMP_MAX_FDS_IN)
			n = QMP_MAX_FDS_IN;
		memcpy(fds, CMSG_DATA(h), n * sizeof(int));
		for (size_t i = 0; i < n; i++) {
			if (cl->nfds >= QMP_MAX_FDS_HELD) {
				close(fds[i]);
				continue;
			}
			struct qmp_fd *f = malloc(sizeof(*f));
			if (!f)
				abort();
			f->fd = fds[i];
			f->next = cl->conn.fds;
			cl->conn.fds = f;
			cl->nfds++;
		}
	}
}

static void rx_done(struct bd_io *io, int res)
{
	struct client *cl = bd_container_of(io, struct client, rx_io);
	cl->rx_busy = false;
	if (cl->dead) {
		/* fds that raced with the close */
		if (res > 0)
			take_fds(cl);
		client_close(cl);
		return;
	}
	if (res <= 0) {
		if (res < 0)
			bd_log(BD_LOG_DEBUG, "control socket: recv: %s", strerror(-res));
		client_close(cl);
		return;
	}
	take_fds(cl);
	cl->in_dispatch++;
	qmp_conn_input(&cl->conn, cl->rx, (size_t)res);
	cl->in_dispatch--;
	if (cl->dead) {
		client_close(cl);
		return;
	}
	if (conn_throttled(&cl->conn))
		cl->rx_paused = true;
	else
		client_arm_rx(cl);
}

static void client_arm_rx(struct client *cl)
{
	if (cl->dead || cl->rx_busy || cl->rx_paused)
		return;
	memset(&cl->msg, 0, sizeof(cl->msg));
	cl->iov.iov_base = cl->rx;
	cl->iov.iov_len = sizeof(cl->rx);
	cl->msg.msg_iov = &cl->iov;
	cl->msg.msg_iovlen = 1;
	cl->msg.msg_control = cl->cmsg_buf;
	cl->msg.msg_controllen = sizeof(cl->cmsg_buf);
	struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_recvmsg(sqe, cl->fd, &cl->msg, MSG_CMSG_CLOEXEC);
	bd_io_attach(sqe, &cl->rx_io);
	cl->rx_busy = true;
}

/* ---- client life cycle ---- */

static void client_free(struct bd_defer *d)
{
	struct client *cl = bd_container_of(d, struct client, free_defer);
	if (cl->rx_busy || cl->tx_busy || cl->in_dispatch)
		return; /* a completion or the dispatcher will come back here */
	for (struct client **pp = &clients; *pp; pp = &(*pp)->next) {
		if (*pp == cl) {
			*pp = cl->next;
			nclients--;
			break;
		}
	}
	if (cl->conn.quit_after_send)
		bd_loop_quit(bd_loop_main());
	close(cl->fd);
	while (cl->out_head) {
		struct outbuf *b = cl->out_head;
		cl->out_head = b->next;
		free(b);
	}
	qmp_conn_fini(&cl->conn);
	free(cl);
}

/* Start closing: no more input, cancel what is in flight; freed once nothing is pending. */
static void client_close(struct client *cl)
{
	if (!cl->dead) {
		cl->dead = true;
		cl->conn.closing = true;
		shutdown(cl->fd, SHUT_RDWR);
		if (cl->rx_busy || cl->tx_busy) {
			struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
			io_uring_prep_cancel_fd(sqe, cl->fd, IORING_ASYNC_CANCEL_ALL);
			bd_io_attach(sqe, NULL);
		}
	}
	if (!cl->rx_busy && !cl->tx_busy && !cl->in_dispatch)
		bd_loop_defer(bd_loop_main(), &cl->free_defer);
}

static void client_new(struct listener *l, int fd)
{
	struct client *cl = calloc(1, sizeof(*cl));
	if (!cl)
		abort();
	cl->fd = fd;
	qmp_conn_init(&cl->conn, &client_ops, cl);
	cl->conn.pretty = l->pretty;
	cl->free_defer.fn = client_free;
	cl->rx_io.done = rx_done;
	cl->tx_io.done = tx_done;
	cl->next = clients;
	clients = cl;
	nclients++;
	json_t *g = qmp_greeting();
	conn_send(&cl->conn, g);
	json_decref(g);
	client_arm_rx(cl);
}

/* ---- listeners ---- */

static void listener_arm(struct listener *l);

static void accept_retry(struct bd_timer *t)
{
	struct listener *l = bd_container_of(t, struct listener, retry);
	listener_arm(l);
}

static void accept_done(struct bd_io *io, int res)
{
	struct listener *l = bd_container_of(io, struct listener, io);
	l->accepting = false;
	if (l->closing)
		return;
	if (res < 0) {
		if (res != -EINTR && res != -ECONNABORTED && res != -EAGAIN) {
			bd_log(BD_LOG_WARN, "control socket %s: accept: %s", l->path,
			       strerror(-res));
			bd_timer_arm(bd_loop_main(), &l->retry, bd_now_ns() + 100000000ull);
			return;
		}
	} else if (nclients >= QMP_MAX_CLIENTS || quitting) {
		bd_log(BD_LOG_WARN, "control socket %s: too many clients, refusing one", l->path);
		close(res);
	} else {
		client_new(l, res);
	}
	listener_arm(l);
}

static void listener_arm(struct listener *l)
{
	if (l->accepting || l->closing)
		return;
	struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
	bd_io_attach(sqe, &l->io);
	l->accepting = true;
}

int bd_qmp_listen(const char *path, bool pretty, struct bd_err *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct stat st;
	int fd;

	if (strlen(path) >= sizeof(sa.sun_path))
		return bd_err_set(err, -ENAMETOOLONG, "UNIX socket path '%s' is too long", path);
	for (struct listener *l = listeners; l; l = l->next)
		if (!strcmp(l->path, path))
			return bd_err_set(err, -EEXIST, "control socket '%s' is already open",
					  path);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return bd_err_set(err, -errno, "Failed to create socket: %s", strerror(errno));
	/* A stale socket from an earlier run is replaced (as QEMU does); other files are not. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int e = errno;
		close(fd);
		return bd_err_set(err, -e, "Failed to bind socket to %s: %s", path, strerror(e));
	}
	/* Nobody can connect before listen(): make it private first. */
	if (chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
		int e = errno;
		close(fd);
		unlink(path);
		return bd_err_set(err, -e, "Failed to listen on socket %s: %s", path, strerror(e));
	}
	struct listener *l = calloc(1, sizeof(*l));
	if (!l)
		abort();
	l->fd = fd;
	l->pretty = pretty;
	snprintf(l->path, sizeof(l->path), "%s", path);
	l->io.done = accept_done;
	bd_timer_init(&l->retry, accept_retry);
	l->next = listeners;
	listeners = l;
	if (!sink_installed) {
		bd_event_set_sink(qmp_event_sink);
		sink_installed = true;
	}
	listener_arm(l);
	return 0;
}

/* ---- --chardev / --monitor ---- */

static int opt_onoff(json_t *o, const char *key, bool *out, struct bd_err *err)
{
	int r = bd_opts_bool(o, key, out, err);
	if (r == -ENOENT)
		return 0;
	return r;
}

int bd_qmp_chardev_add(json_t *opts, struct bd_err *err)
{
	const char *backend = NULL, *id = NULL, *path = NULL;
	bool server = false, wait = true;
	int r;

	if (bd_opts_str(opts, "backend", &backend, err) < 0)
		return err->code ? err->code
				 : bd_err_set(err, -EINVAL, "Parameter 'backend' is missing");
	if (strcmp(backend, "socket"))
		return bd_err_set(err, -EINVAL,
				  "chardev backend '%s' is not supported (only 'socket' with "
				  "path=)",
				  backend);
	if ((r = bd_opts_str(opts, "id", &id, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'id' is missing") : r;
	if ((r = bd_opts_str(opts, "path", &path, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL,
						 "chardev '%s': only unix sockets are supported: "
						 "path= is missing",
						 id)
				    : r;
	if ((r = opt_onoff(opts, "server", &server, err)) < 0 ||
	    (r = opt_onoff(opts, "wait", &wait, err)) < 0)
		return r;
	if (!server)
		return bd_err_set(err, -EINVAL, "chardev '%s': only server=on is supported", id);
	if ((r = bd_opts_check_unused(opts, NULL, err)) < 0)
		return bd_err_prefix(err, "chardev '%s'", id);
	/* wait=on would block start-up until a client connects: blockd never waits. */
	for (struct chardev *c = chardevs; c; c = c->next)
		if (!strcmp(c->id, id))
			return bd_err_set(err, -EEXIST, "attempt to add duplicate property '%s' to "
							"object (type 'container')",
					  id);
	struct chardev *c = calloc(1, sizeof(*c));
	if (!c)
		abort();
	snprintf(c->id, sizeof(c->id), "%s", id);
	snprintf(c->path, sizeof(c->path), "%s", path);
	c->next = chardevs;
	chardevs = c;
	return 0;
}

int bd_qmp_monitor_add(json_t *opts, struct bd_err *err)
{
	static const char *const modes[] = {"control", "readline", NULL};
	const char *id = NULL;
	bool pretty = false;
	int mode = 0, r;

	if ((r = bd_opts_str(opts, "chardev", &id, err)) < 0)
		return r == -ENOENT ? bd_err_set(err, -EINVAL, "Parameter 'chardev' is missing") : r;
	if ((r = bd_opts_enum(opts, "mode", modes, &mode, err)) < 0 && r != -ENOENT)
		return r;
	if (mode != 0)
		return bd_err_set(err, -EINVAL, "Only mode=control is supported");
	if ((r = opt_onoff(opts, "pretty", &pretty, err)) < 0)
		return r;
	const char *mid;
	if ((r = bd_opts_str(opts, "id", &mid, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_check_unused(opts, NULL, err)) < 0)
		return r;
	for (struct chardev *c = chardevs; c; c = c->next) {
		if (strcmp(c->id, id))
			continue;
		if (c->used)
			return bd_err_set(err, -EBUSY, "chardev '%s' is already in use", id);
		r = bd_qmp_listen(c->path, pretty, err);
		if (r == 0)
			c->used = true;
		return r;
	}
	return bd_err_set(err, -ENOENT, "chardev \"%s\" not found", id);
}

/* ---- events ---- */

void qmp_event_sink(const char *name, json_t *data)
{
	struct timespec ts;
	char *text[2] = {NULL, NULL};

	clock_gettime(CLOCK_REALTIME, &ts);
	json_t *ev = json_object();
	json_object_set_new(ev, "timestamp",
			    json_pack("{s:I,s:I}", "seconds", (json_int_t)ts.tv_sec, "microseconds",
				      (json_int_t)(ts.tv_nsec / 1000)));
	json_object_set_new(ev, "event", json_string(name));
	json_object_set_new(ev, "data", data ? json_incref(data) : json_object());
	for (struct client *cl = clients, *next; cl; cl = next) {
		next = cl->next;
		if (cl->dead || !cl->conn.negotiated)
			continue;
		int p = cl->conn.pretty ? 1 : 0;
		if (!text[p])
			text[p] = json_dumps(ev, dump_flags(p));
		if (text[p])
			enqueue_text(cl, text[p], strlen(text[p]));
	}
	free(text[0]);
	free(text[1]);
	json_decref(ev);
}

void qmp_request_quit(struct qmp_conn *c)
{
	struct client *cl = c->opaque;
	quitting = true;
	if (c->ops != &client_ops || !cl) {
		bd_loop_quit(bd_loop_main());
		return;
	}
	/* The reply goes out first: tx_done() (or the close) ends the main loop. */
	c->quit_after_send = true;
}

/* ---- named file descriptors (getfd / closefd) ---- */

int qmp_fd_add(const char *name, int fd, struct bd_err *err)
{
	for (struct named_fd *n = named_fds; n; n = n->next) {
		if (!strcmp(n->name, name)) {
			close(n->fd); /* QEMU replaces a name given again */
			n->fd = fd;
			return 0;
		}
	}
	struct named_fd *n = calloc(1, sizeof(*n));
	if (!n)
		abort();
	snprintf(n->name, sizeof(n->name), "%s", name);
	n->fd = fd;
	n->next = named_fds;
	named_fds = n;
	return 0;
}

int qmp_fd_close(const char *name, struct bd_err *err)
{
	for (struct named_fd **pp = &named_fds; *pp; pp = &(*pp)->next) {
		struct named_fd *n = *pp;
		if (strcmp(n->name, name))
			continue;
		*pp = n->next;
		close(n->fd);
		free(n);
		return 0;
	}
	return bd_err_set(err, -ENOENT, "File descriptor named '%s' not found", name);
}

int bd_qmp_fd_lookup(const char *name)
{
	for (struct named_fd **pp = &named_fds; *pp; pp = &(*pp)->next) {
		struct named_fd *n = *pp;
		if (strcmp(n->name, name))
			continue;
		int fd = n->fd;
		*pp = n->next;
		free(n);
		return fd;
	}
	return -ENOENT;
}

void qmp_fds_close_all(void)
{
	while (named_fds) {
		struct named_fd *n = named_fds;
		named_fds = n->next;
		close(n->fd);
		free(n);
	}
}

/* ---- shutdown ---- */

void bd_qmp_shutdown(void)
{
	bool pending;

	quitting = true;
	if (sink_installed) {
		bd_event_set_sink(NULL);
		sink_installed = false;
	}
	for (struct listener *l = listeners; l; l = l->next) {
		l->closing = true;
		bd_timer_cancel(bd_loop_main(), &l->retry);
		shutdown(l->fd, SHUT_RDWR);
		if (l->accepting) {
			struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
			io_uring_prep_cancel_fd(sqe, l->fd, IORING_ASYNC_CANCEL_ALL);
			bd_io_attach(sqe, NULL);
		}
	}
	for (struct client *cl = clients; cl; cl = cl->next)
		client_close(cl);
	/* Let the cancellations complete so that no request still points at freed memory. */
	for (int i = 0; i < 2000; i++) {
		pending = clients != NULL;
		for (struct listener *l = listeners; l; l = l->next)
			pending |= l->accepting;
		if (!pending)
			break;
		bd_loop_poll_once();
		if (i > 10)
			usleep(1000);
	}
	while (listeners) {
		struct listener *l = listeners;
		listeners = l->next;
		close(l->fd);
		unlink(l->path);
		free(l);
	}
	while (chardevs) {
		struct chardev *c = chardevs;
		chardevs = c->next;
		free(c);
	}
	qmp_jobs_shutdown();
	qmp_fds_close_all();
	qmp_secrets_clear();
}
