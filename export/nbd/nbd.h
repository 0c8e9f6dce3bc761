/*
 * nbd.h - the NBD export module's public interface: start and stop the NBD server (the daemon's
 * --nbd-server, QMP nbd-server-start / nbd-server-stop).  Exports are added through the core's
 * export table (struct bd_export_type bd_export_nbd, "--export type=nbd,...").
 * All functions here run on the control thread.
 */
#ifndef BLOCKD_EXPORT_NBD_H
#define BLOCKD_EXPORT_NBD_H

#include "blockd/blockd.h"

/* [control] Start the one NBD server.  opts, as in qemu-storage-daemon's --nbd-server:
 *   {"addr": {"type": "inet", "host": H, "port": P}     (port defaults to 10809)
 *          | {"type": "unix", "path": PATH}
 *          | {"type": "fd", "str": "N"},
 *    "max-connections": N (0 = unlimited, the default),
 *    "tls-creds": ... (refused: no TLS yet), "tls-authz": ... (refused)}
 * QMP's legacy shape {"addr": {"type": T, "data": {...}}} is accepted too.  opts is not
 * consumed.  0, or -errno with err set (-EEXIST if a server is already running). */
int bd_nbd_server_start(json_t *opts, struct bd_err *err);

/* [control] The same, but a running server gets one more listener (the daemon's --nbd-server
 * may be given several times, e.g. TCP and a unix socket; a blockd extension).  The exports are
 * shared by every listener. */
int bd_nbd_server_add_listener(json_t *opts, struct bd_err *err);

/* [control] Stop the server: close the listener, drop every client at once and delete every NBD
 * export (like QMP nbd-server-stop).  A no-op if no server runs. */
void bd_nbd_server_stop(void);

/* [control] Is a server running? */
bool bd_nbd_server_running(void);

extern const struct bd_export_type bd_export_nbd;

#endif /* BLOCKD_EXPORT_NBD_H */
