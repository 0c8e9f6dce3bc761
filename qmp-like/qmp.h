/*
 * qmp.h - the control socket's public interface: a QMP-compatible JSON protocol on unix sockets
 * (qemu-storage-daemon's --chardev/--monitor, and blockd's --control PATH), the named file
 * descriptors passed with getfd, and secret objects.  docs/control-protocol.md describes the
 * protocol.  Every function here runs on the control thread (the main loop).
 */
#ifndef BLOCKD_QMP_H
#define BLOCKD_QMP_H

#include "blockd/blockd.h"

#include <stdio.h>

/* [control] --chardev: opts as parsed with implied key "backend" ({"backend": "socket", "id": ..,
 * "path": .., "server": "on", "wait": "off"}).  Records the chardev; the socket is created by
 * the --monitor that names it.  0 or -errno with err set. */
int bd_qmp_chardev_add(json_t *opts, struct bd_err *err);

/* [control] --monitor: opts as parsed with implied key "chardev" ({"chardev": ID, "mode":
 * "control", "pretty": "on|off"}).  Starts listening on the chardev's socket. */
int bd_qmp_monitor_add(json_t *opts, struct bd_err *err);

/* [control] --control PATH: listen on a unix socket at path (mode 0600, an existing socket file
 * is replaced).  0 or -errno with err set. */
int bd_qmp_listen(const char *path, bool pretty, struct bd_err *err);

/* [control] At exit: close every listener (removing its socket file) and every client, close
 * the named file descriptors, wait for running jobs.  Safe to call when nothing was started. */
void bd_qmp_shutdown(void);

/* [control] Take the file descriptor a client passed with getfd under name.  Ownership moves to
 * the caller (the name is forgotten; close the fd when done), as in QEMU's monitor_get_fd().
 * Returns the fd, or -ENOENT if no such name. */
int bd_qmp_fd_lookup(const char *name);

/* [control] The bytes of secret object id (--object secret,id=ID,data=..|file=..), as a new
 * NUL-terminated string in *out (free() it).  0, or -ENOENT with err set. */
int bd_secret_lookup(const char *id, char **out, struct bd_err *err);

extern const struct bd_object_type bd_objtype_secret;

/* [any] Write the command and event reference of docs/control-protocol.md (markdown),
 * generated from the same table as the dispatcher and query-qmp-schema. */
void bd_qmp_write_doc(FILE *out);

#endif /* BLOCKD_QMP_H */
