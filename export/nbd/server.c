/*
 * server.c - the NBD server: the listener (TCP, unix socket or an inherited fd), accepting on the
 * main loop through io_uring, max-connections, the handshake of each new connection on the main
 * loop (the protocol is the pure state machine of handshake.c; the socket I/O is here), the hand
 * over to an I/O loop (the export's iothread, else round-robin), and the reaping of connections
 * their loops have finished with.  Everything here runs on the main (control) loop, except
 * nbd_server_conn_released(), which the I/O loops call.
 *
 * The handshake runs on the main loop because the export table lives there: lookups need no
 * locks, and a connection meets its I/O loop only once it knows its export.
 */
#include "export/nbd/nbd-int.h"

#include <liburing.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

struct nbd_listener {
	int fd;
	bool tcp;
	bool keep_alive;
	bool busy;    /* an accept is pending */
	bool stopped; /* freed when the pending accept completes */
	char *unix_path;
	struct bd_io io;
	struct bd_timer retry; /* backoff after EMFILE and friends */
	struct nbd_listener *next;
};

static struct {
	struct nbd_listener *lst;     /* the running listeners (linked by next), or NULL */
	struct nbd_listener *zombies; /* stopped listeners waiting for their accept to complete */
	uint64_t max_conns;
	unsigned handshake_seconds;
	struct nbd_conn *conns; /* every connection, either phase */
	unsigned nconns;
	uint64_t next_id;
} srv;

static pthread_mutex_t released_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t released_cond = PTHREAD_COND_INITIALIZER;

static void hs_step(struct nbd_conn *conn);

/* ---- Connection list [control] --------------------------------------------------------------- */

static void conn_link(struct nbd_conn *conn)
{
	conn->prev = NULL;
	conn->next = srv.conns;
	if (srv.conns)
		srv.conns->prev = conn;
	srv.conns = conn;
	srv.nconns++;
}

static void conn_unlink(struct nbd_conn *conn)
{
	if (conn->prev)
		conn->prev->next = conn->next;
	else
		srv.conns = conn->next;
	if (conn->next)
		conn->next->prev = conn->prev;
	srv.nconns--;
}

/* Free the transmission connections whose loops are done with them. */
static void reap(void)
{
	struct nbd_conn *conn, *next;

	for (conn = srv.conns; conn; conn = next) {
		next = conn->next;
		if (conn->phase != NBD_CONN_TRANSMISSION || !atomic_load(&conn->loop_done))
			continue;
		conn_unlink(conn);
		conn->exp->nconns--;
		nbd_export_put(conn->exp);
		free(conn);
	}
}

static void reap_msg(void *arg)
{
	(void)arg;
	reap();
}

void nbd_server_conn_released(void)
{
	pthread_mutex_lock(&released_lock);
	pthread_cond_broadcast(&released_cond);
	pthread_mutex_unlock(&released_lock);
	if (bd_loop_send(bd_loop_main(), reap_msg, NULL) < 0)
		bd_log(BD_LOG_WARN, "nbd: cannot reach the main loop to reap a connection");
}

/* Run fn(conn) on the connection's loop and wait for it. */
static void call_on_loop(struct nbd_conn *conn, void (*fn)(void *))
{
	if (conn->loop == bd_loop_current())
		fn(conn);
	else if (bd_loop_call(conn->loop, fn, conn) < 0)
		bd_log(BD_LOG_ERROR, "nbd: cannot reach the loop of connection %llu",
		       (unsigned long long)conn->id);
}

/* ---- Handshake on the main loop -------------------------------------------------------------- */

static bool hs_lookup(void *ctx, const char *name, struct nbd_export_info *out)
{
	struct nbd_export *e = nbd_export_lookup(name);
	(void)ctx;
	if (!e)
		return false;
	nbd_export_info(e, out);
	return true;
}

static bool hs_nth(void *ctx, unsigned i, struct nbd_export_info *out)
{
	struct nbd_export *e = nbd_export_nth(i);
	(void)ctx;
	if (!e)
		return false;
	nbd_export_info(e, out);
	return true;
}

static const struct nbd_hs_ops hs_ops = {
    .lookup = hs_lookup,
    .nth = hs_nth,
};

static void hs_maybe_free(struct nbd_conn *conn)
{
	if (!conn->closing || conn->rx_busy || conn->tx_busy)
		return;
	bd_timer_cancel(bd_loop_main(), &conn->hs_timer);
	if (conn->hs.state == NBD_HS_DONE && conn->hs.exp.handle)
		nbd_export_put(conn->hs.exp.handle);
	nbd_hs_free(&conn->hs);
	if (conn->fd >= 0)
		close(conn->fd);
	free(conn->rx);
	conn_unlink(conn);
	free(conn);
}

static void hs_close(struct nbd_conn *conn, const char *why)
{
	if (conn->closing)
		return;
	bd_log(BD_LOG_DEBUG, "nbd: connection %llu closed during the handshake: %s",
	       (unsigned long long)conn->id, why);
	conn->closing = true;
	if (conn->rx_busy || conn->tx_busy)
		shutdown(conn->fd, SHUT_RDWR); /* the pending I/O completes, then it is freed */
	hs_maybe_free(conn);
}

static void hs_timeout(struct bd_timer *t)
{
	struct nbd_conn *conn = nbd_container_of(t, struct nbd_conn, hs_timer);
	bd_log(BD_LOG_INFO, "nbd: connection %llu: handshake timed out",
	       (unsigned long long)conn->id);
	hs_close(conn, "handshake timeout");
}

static void hs_rx_done(struct bd_io *io, int res)
{
	struct nbd_conn *conn = nbd_container_of(io, struct nbd_conn, rx_io);
	size_t used;

	conn->rx_busy = false;
	if (conn->closing) {
		hs_maybe_free(conn);
		return;
	}
	if (res == -EINTR || res == -EAGAIN) {
		hs_step(conn);
		return;
	}
	if (res <= 0) {
		hs_close(conn, res ? "receive error" : "client closed the connection");
		return;
	}
	conn->rx_tail += (uint32_t)res;
	used = nbd_hs_input(&conn->hs, conn->rx + conn->rx_head, conn->rx_tail - conn->rx_head);
	conn->rx_head += (uint32_t)used;
	if (conn->hs.state == NBD_HS_DONE) /* keep the export until the hand over */
		nbd_export_get(conn->hs.exp.handle);
	hs_step(conn);
}

static void hs_tx_done(struct bd_io *io, int res)
{
	struct nbd_conn *conn = nbd_container_of(io, struct nbd_conn, tx_io);

	conn->tx_busy = false;
	if (conn->closing) {
		hs_maybe_free(conn);
		return;
	}
	if (res == -EINTR || res == -EAGAIN) {
		hs_step(conn);
		return;
	}
	if (res <= 0) {
		hs_close(conn, "send error");
		return;
	}
	nbd_hs_consumed(&conn->hs, (size_t)res);
	hs_step(conn);
}

static void enter_transmission(struct nbd_conn *conn)
{
	struct nbd_export *exp = conn->hs.exp.handle;
	struct nbd_hs *hs = &conn->hs;

	bd_timer_cancel(bd_loop_main(), &conn->hs_timer);
	if (exp->deleted) {
		/* deleted while the GO reply was on its way */
		hs_close(conn, "export deleted");
		return;
	}
	conn->exp = exp; /* the reference taken at NBD_HS_DONE moves here */
	conn->node = exp->node;
	conn->writethrough = exp->writethrough;
	memset(&conn->sess, 0, sizeof(conn->sess));
	conn->sess.size = hs->exp.size;
	conn->sess.tflags = hs->tflags;
	conn->sess.structured = hs->structured || hs->extended;
	conn->sess.extended = hs->extended;
	conn->sess.contexts = hs->contexts;
	conn->sess.min_block = hs->exp.min_block;
	nbd_hs_free(hs);
	hs->exp.handle = NULL;
	exp->nconns++;
	conn->phase = NBD_CONN_TRANSMISSION;
	conn->loop = exp->loop ? exp->loop : bd_io_loop_next();
	bd_log(BD_LOG_DEBUG, "nbd: connection %llu: export '%s' on loop %s%s%s",
	       (unsigned long long)conn->id, exp->name, bd_loop_name(conn->loop),
	       conn->sess.structured ? ", structured replies" : "",
	       conn->sess.extended ? ", extended headers" : "");
	if (bd_loop_send(conn->loop, nbd_conn_start, conn) < 0) {
		exp->nconns--;
		conn->exp = NULL;
		conn->phase = NBD_CONN_HANDSHAKE;
		hs->state = NBD_HS_CLOSE;
		hs->exp.handle = NULL;
		nbd_export_put(exp);
		hs_close(conn, "out of memory");
	}
}

/* Decide the next I/O of a connection in the handshake. */
static void hs_step(struct nbd_conn *conn)
{
	struct io_uring_sqe *sqe;

	if (conn->closing) {
		hs_maybe_free(conn);
		return;
	}
	if (conn->hs.out_len) {
		if (conn->tx_busy)
			return;
		sqe = bd_loop_sqe(bd_loop_main());
		io_uring_prep_send(sqe, conn->fd, conn->hs.out, conn->hs.out_len, MSG_NOSIGNAL);
		bd_io_attach(sqe, &conn->tx_io);
		conn->tx_busy = true;
		return;
	}
	if (conn->rx_busy || conn->tx_busy)
		return;
	switch (conn->hs.state) {
	case NBD_HS_DONE:
		enter_transmission(conn);
		return;
	case NBD_HS_CLOSE:
		hs_close(conn, conn->hs.why ? conn->hs.why : "handshake failed");
		return;
	default:
		break;
	}
	if (conn->rx_head == conn->rx_tail) {
		conn->rx_head = conn->rx_tail = 0;
	} else if (conn->rx_head) {
		memmove(conn->rx, conn->rx + conn->rx_head, conn->rx_tail - conn->rx_head);
		conn->rx_tail -= conn->rx_head;
		conn->rx_head = 0;
	}
	sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_recv(sqe, conn->fd, conn->rx + conn->rx_tail, NBD_RX_BUF - conn->rx_tail, 0);
	bd_io_attach(sqe, &conn->rx_io);
	conn->rx_busy = true;
}

static void conn_accepted(struct nbd_listener *l, int fd)
{
	struct nbd_conn *conn;
	int one = 1;

	if (srv.max_conns && srv.nconns >= srv.max_conns) {
		bd_log(BD_LOG_INFO, "nbd: refusing a connection: max-connections (%llu) reached",
		       (unsigned long long)srv.max_conns);
		close(fd);
		return;
	}
	if (l->tcp) {
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (l->keep_alive)
			setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	}
	conn = calloc(1, sizeof(*conn));
	if (conn)
		conn->rx = malloc(NBD_RX_BUF);
	if (!conn || !conn->rx || nbd_hs_init(&conn->hs, &hs_ops, conn) < 0) {
		bd_log(BD_LOG_WARN, "nbd: out of memory for a new connection");
		if (conn) {
			nbd_hs_free(&conn->hs);
			free(conn->rx);
		}
		free(conn);
		close(fd);
		return;
	}
	conn->fd = fd;
	conn->tcp = l->tcp;
	conn->id = ++srv.next_id;
	conn->phase = NBD_CONN_HANDSHAKE;
	atomic_init(&conn->loop_done, false);
	conn->rx_io.done = hs_rx_done;
	conn->tx_io.done = hs_tx_done;
	bd_timer_init(&conn->hs_timer, hs_timeout);
	conn_link(conn);
	if (srv.handshake_seconds)
		bd_timer_arm(bd_loop_main(), &conn->hs_timer,
			     bd_now_ns() + (uint64_t)srv.handshake_seconds * 1000000000ull);
	bd_log(BD_LOG_DEBUG, "nbd: connection %llu accepted", (unsigned long long)conn->id);
	hs_step(conn);
}

/* ---- Listener -------------------------------------------------------------------------------- */

static void listener_free(struct nbd_listener *l)
{
	struct nbd_listener **pp;

	for (pp = &srv.zombies; *pp; pp = &(*pp)->next) {
		if (*pp == l) {
			*pp = l->next;
			break;
		}
	}
	if (l->fd >= 0)
		close(l->fd);
	free(l->unix_path);
	free(l);
}

static void accept_arm(struct nbd_listener *l)
{
	struct io_uring_sqe *sqe = bd_loop_sqe(bd_loop_main());
	io_uring_prep_accept(sqe, l->fd, NULL, NULL, SOCK_CLOEXEC);
	bd_io_attach(sqe, &l->io);
	l->busy = true;
}

static void accept_retry(struct bd_timer *t)
{
	struct nbd_listener *l = nbd_container_of(t, struct nbd_listener, retry);
	if (!l->stopped && !l->busy)
		accept_arm(l);
}

static void accept_done(struct bd_io *io, int res)
{
	struct nbd_listener *l = nbd_container_of(io, struct nbd_listener, io);

	l->busy = false;
	if (l->stopped) {
		if (res >= 0)
			close(res);
		listener_free(l);
		return;
	}
	if (res < 0) {
		switch (-res) {
		case EMFILE:
		case ENFILE:
		case ENOBUFS:
		case ENOMEM:
			bd_log(BD_LOG_WARN, "nbd: accept: %s; retrying in 100 ms", strerror(-res));
			bd_timer_arm(bd_loop_main(), &l->retry, bd_now_ns() + 100000000ull);
			return;
		case EINVAL:
		case EBADF:
		case ENOTSOCK:
		case EOPNOTSUPP:
			bd_log(BD_LOG_ERROR, "nbd: accept: %s; no longer accepting",
			       strerror(-res));
			return;
		default: /* ECONNABORTED, EINTR, EPERM (firewall), ...: next one */
			break;
		}
	} else {
		conn_accepted(l, res);
	}
	accept_arm(l);
}

static void listener_stop(struct nbd_listener *l)
{
	l->stopped = true;
	bd_timer_cancel(bd_loop_main(), &l->retry);
	if (l->unix_path)
		unlink(l->unix_path);
	if (!l->busy) {
		listener_free(l);
		return;
	}
	/* Wakes the pending accept (it fails with EINVAL); freed when its completion arrives. */
	shutdown(l->fd, SHUT_RDWR);
	close(l->fd);
	l->fd = -1;
	l->next = srv.zombies;
	srv.zombies = l;
}

static int listen_fd_setup(struct nbd_listener *l, int fd, struct bd_err *err)
{
	if (listen(fd, SOMAXCONN) < 0) {
		int e = -errno;
		close(fd);
		return bd_err_set(err, e, "listen: %s", strerror(-e));
	}
	l->fd = fd;
	return 0;
}

static int open_inet(struct nbd_listener *l, json_t *addr, struct bd_err *err)
{
	const char *host = NULL, *port = NULL, *to = NULL;
	char portbuf[32];
	uint64_t port_num;
	bool numeric = false, v4 = true, v6 = true, ka = false;
	bool v4_set = false, v6_set = false;
	struct addrinfo hints, *res = NULL, *ai;
	int r, fd = -1, e = 0;

	r = bd_opts_str(addr, "host", &host, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.host' is missing");
	if (r < 0)
		return r;
	r = bd_opts_u64(addr, "port", &port_num, NULL);
	if (r == 0) {
		snprintf(portbuf, sizeof(portbuf), "%llu", (unsigned long long)port_num);
		port = portbuf;
	} else if (r == -ENOENT) {
		port = "10809";
	} else {
		bd_err_clear(err);
		r = bd_opts_str(addr, "port", &port, err);
		if (r < 0)
			return r;
	}
	if ((r = bd_opts_bool(addr, "numeric", &numeric, err)) < 0 && r != -ENOENT)
		return r;
	r = bd_opts_bool(addr, "ipv4", &v4, err);
	if (r < 0 && r != -ENOENT)
		return r;
	v4_set = r == 0;
	r = bd_opts_bool(addr, "ipv6", &v6, err);
	if (r < 0 && r != -ENOENT)
		return r;
	v6_set = r == 0;
	if ((r = bd_opts_bool(addr, "keep-alive", &ka, err)) < 0 && r != -ENOENT)
		return r;
	r = bd_opts_str(addr, "to", &to, err);
	if (r == 0)
		return bd_err_set(err, -EINVAL, "addr.to (port ranges) is not supported");
	if (r != -ENOENT)
		return r;
	if (v4_set && v6_set && !v4 && !v6)
		return bd_err_set(err, -EINVAL, "addr.ipv4 and addr.ipv6 are both off");

	memset(&hints, 0, sizeof(hints));
	hints.ai_flags = AI_PASSIVE | (numeric ? AI_NUMERICHOST : 0);
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_family = AF_UNSPEC;
	if (v4_set && !v4)
		hints.ai_family = AF_INET6;
	else if (v6_set && !v6)
		hints.ai_family = AF_INET;
	else if (v4_set && v4 && !v6_set)
		hints.ai_family = AF_INET;
	else if (v6_set && v6 && !v4_set)
		hints.ai_family = AF_INET6;
	r = getaddrinfo(*host ? host : NULL, port, &hints, &res);
	if (r)
		return bd_err_set(err, -EINVAL, "address resolution failed for %s:%s: %s", host,
				  port, gai_strerror(r));
	for (ai = res; ai; ai = ai->ai_next) {
		int one = 1;
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
		if (fd < 0) {
			e = -errno;
			continue;
		}
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (ai->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0)
			break;
		e = -errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0)
		return bd_err_set(err, e ? e : -EADDRNOTAVAIL, "Failed to bind socket to %s:%s: %s",
				  host, port, strerror(e ? -e : EADDRNOTAVAIL));
	l->tcp = true;
	l->keep_alive = ka;
	return listen_fd_setup(l, fd, err);
}

static int open_unix(struct nbd_listener *l, json_t *addr, struct bd_err *err)
{
	const char *path;
	struct sockaddr_un sa;
	struct stat st;
	bool b;
	int r, fd, e;

	r = bd_opts_str(addr, "path", &path, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.path' is missing");
	if (r < 0)
		return r;
	if ((r = bd_opts_bool(addr, "abstract", &b, err)) == 0 && b)
		return bd_err_set(err, -EINVAL, "abstract unix sockets are not supported");
	if (r < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(addr, "tight", &b, err)) < 0 && r != -ENOENT)
		return r;
	if (strlen(path) >= sizeof(sa.sun_path))
		return bd_err_set(err, -ENAMETOOLONG, "unix socket path too long: %s", path);
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	strcpy(sa.sun_path, path);
	/* Like QEMU: a stale socket from an earlier run goes. */
	if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode))
		unlink(path);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return bd_err_set(err, -errno, "socket: %s", strerror(errno));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		e = -errno;
		close(fd);
		return bd_err_set(err, e, "Failed to bind socket to %s: %s", path, strerror(-e));
	}
	l->unix_path = strdup(path);
	if (!l->unix_path) {
		close(fd);
		unlink(path);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	return listen_fd_setup(l, fd, err);
}

static int open_fd(struct nbd_listener *l, json_t *addr, struct bd_err *err)
{
	const char *s;
	char *end;
	long v;
	int r, acc = 0, fd;
	socklen_t len = sizeof(acc);
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);

	r = bd_opts_str(addr, "str", &s, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.str' is missing");
	if (r < 0)
		return r;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < 0 || v > 1 << 30)
		return bd_err_set(err, -EINVAL, "addr.str '%s' is not a file descriptor number", s);
	fd = (int)v;
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0)
		return bd_err_set(err, -errno, "fd %d: not a socket: %s", fd, strerror(errno));
	if (!acc && listen(fd, SOMAXCONN) < 0)
		return bd_err_set(err, -errno, "fd %d: listen: %s", fd, strerror(errno));
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0)
		l->tcp = ss.ss_family == AF_INET || ss.ss_family == AF_INET6;
	l->fd = fd;
	return 0;
}

/* Open one more listener with opts (the --nbd-server / nbd-server-start options).  The server
 * settings (max-connections, handshake-max-seconds) take the values given, else keep theirs. */
static int server_listen(json_t *opts, struct bd_err *err)
{
	static const char *const types[] = {"inet", "unix", "fd", "vsock", NULL};
	struct nbd_listener *l;
	json_t *addr, *data;
	uint64_t maxc = srv.lst ? srv.max_conns : 0;
	uint64_t hsec = srv.lst ? srv.handshake_seconds : NBD_HANDSHAKE_SECONDS;
	const char *s;
	int r, type;

	if (bd_opts_str(opts, "tls-creds", &s, NULL) == 0)
		return bd_err_set(err, -ENOTSUP,
				  "NBD server: TLS (tls-creds) is not supported yet");
	if (bd_opts_str(opts, "tls-authz", &s, NULL) == 0)
		return bd_err_set(err, -ENOTSUP, "NBD server: tls-authz is not supported yet");
	r = bd_opts_u64(opts, "max-connections", &maxc, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_u64(opts, "handshake-max-seconds", &hsec, err);
	if (r < 0 && r != -ENOENT)
		return r;
	r = bd_opts_obj(opts, "addr", &addr, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr' is missing");
	if (r < 0)
		return r;
	r = bd_opts_enum(addr, "type", types, &type, err);
	if (r == -ENOENT)
		return bd_err_set(err, -EINVAL, "Parameter 'addr.type' is missing");
	if (r < 0)
		return r;
	/* QMP's legacy SocketAddressLegacy wraps the fields in "data". */
	if (bd_opts_obj(addr, "data", &data, NULL) == 0)
		addr = data;

	l = calloc(1, sizeof(*l));
	if (!l)
		return bd_err_set(err, -ENOMEM, "out of memory");
	l->fd = -1;
	l->io.done = accept_done;
	bd_timer_init(&l->retry, accept_retry);
	switch (type) {
	case 0:
		r = open_inet(l, addr, err);
		break;
	case 1:
		r = open_unix(l, addr, err);
		break;
	case 2:
		r = open_fd(l, addr, err);
		break;
	default:
		r = bd_err_set(err, -ENOTSUP, "NBD server: vsock addresses are not supported");
		break;
	}
	if (r == 0)
		r = bd_opts_check_unused(opts, "", err);
	if (r < 0) {
		if (l->unix_path)
			unlink(l->unix_path);
		if (l->fd >= 0 && type != 2)
			close(l->fd);
		free(l->unix_path);
		free(l);
		return r;
	}
	l->next = srv.lst;
	srv.lst = l;
	srv.max_conns = maxc;
	srv.handshake_seconds = hsec > 3600 ? 3600 : (unsigned)hsec;
	accept_arm(l);
	bd_log(BD_LOG_DEBUG, "nbd: server listening");
	return 0;
}

int bd_nbd_server_start(json_t *opts, struct bd_err *err)
{
	if (srv.lst)
		return bd_err_set(err, -EEXIST, "NBD server already running");
	return server_listen(opts, err);
}

int bd_nbd_server_add_listener(json_t *opts, struct bd_err *err)
{
	return server_listen(opts, err);
}

static void stop_listeners(void)
{
	while (srv.lst) {
		struct nbd_listener *l = srv.lst;
		srv.lst = l->next;
		l->next = NULL;
		listener_stop(l);
	}
}

bool bd_nbd_server_running(void)
{
	return srv.lst != NULL;
}

/* [control] Hard-close every handshake connection. */
static void close_handshakes(void)
{
	struct nbd_conn *conn, *next;

	for (conn = srv.conns; conn; conn = next) {
		next = conn->next;
		if (conn->phase == NBD_CONN_HANDSHAKE)
			hs_close(conn, "server stopping");
	}
}

void nbd_server_kill_conns(struct nbd_export *exp, bool hard)
{
	struct nbd_conn *conn;

	for (conn = srv.conns; conn; conn = conn->next) {
		if (conn->phase != NBD_CONN_TRANSMISSION || (exp && conn->exp != exp))
			continue;
		if (atomic_load(&conn->loop_done))
			continue;
		call_on_loop(conn, hard ? nbd_conn_kill : nbd_conn_drain);
	}
	reap();
}

void bd_nbd_server_stop(void)
{
	stop_listeners();
	close_handshakes();
	nbd_export_del_all(); /* drops every client */
}

/* Transmission connections still on their loops (not counting ones on the calling loop, which
 * cannot progress while we wait). */
static unsigned busy_conns(void)
{
	struct nbd_conn *conn;
	unsigned n = 0;

	for (conn = srv.conns; conn; conn = conn->next)
		if (conn->phase == NBD_CONN_TRANSMISSION && !atomic_load(&conn->loop_done) &&
		    conn->loop != bd_loop_current())
			n++;
	return n;
}

static void wait_conns(unsigned seconds)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += seconds;
	pthread_mutex_lock(&released_lock);
	while (busy_conns()) {
		if (pthread_cond_timedwait(&released_cond, &released_lock, &ts) == ETIMEDOUT)
			break;
	}
	pthread_mutex_unlock(&released_lock);
}

void nbd_server_shutdown(void)
{
	stop_listeners();
	close_handshakes();
	/* Let in-flight requests finish (their replies go out), flush, close. */
	nbd_server_kill_conns(NULL, false);
	wait_conns(10);
	if (busy_conns()) {
		bd_log(BD_LOG_WARN, "nbd: %u connections still busy after 10 s; dropping them",
		       busy_conns());
		nbd_server_kill_conns(NULL, true);
		wait_conns(5);
	}
	reap();
}
