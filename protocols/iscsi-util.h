/*
 * iscsi-util.h - libiscsi helpers shared by the iscsi protocol driver (protocols/iscsi.c) and
 * the iscsi / iscsi-direct pool types (pools/iscsi.c): where a LUN is, connecting and logging in
 * with a hard deadline, one SCSI command run to completion, probing a LUN (INQUIRY, READ
 * CAPACITY(16), the Block Limits and Logical Block Provisioning VPD pages), SCSI status to
 * -errno, SendTargets discovery.
 *
 * Threads: the blocking helpers (bd_iscsi_connect, bd_iscsi_wait, bd_iscsi_probe_lun,
 * bd_iscsi_discover) poll(2) the context's socket themselves and may only run where blocking
 * for a bounded time is allowed: the control thread or a worker, never an I/O loop.  Each is
 * bounded by the timeout it is given.
 */
#ifndef BLOCKD_ISCSI_UTIL_H
#define BLOCKD_ISCSI_UTIL_H

#include "blockd/blockd.h"

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#define BD_ISCSI_STR 256
#define BD_ISCSI_DEFAULT_TIMEOUT 30
#define BD_ISCSI_DEFAULT_INITIATOR "iqn.2026-01.org.blockd:initiator"

/* Where a LUN is and how to log in. */
struct bd_iscsi_target {
	char portal[BD_ISCSI_STR];    /* host[:port] */
	char target[BD_ISCSI_STR];    /* target IQN; "" for a discovery session */
	char user[BD_ISCSI_STR];      /* CHAP user, "" = no CHAP */
	char password[BD_ISCSI_STR];  /* CHAP secret */
	char initiator[BD_ISCSI_STR]; /* initiator IQN */
	int lun;
	enum iscsi_header_digest header_digest;
	unsigned timeout; /* seconds, > 0 */
};

/* What a LUN is. */
struct bd_iscsi_lun_info {
	int device_type; /* peripheral device type from INQUIRY (0 = disk) */
	int qualifier;
	char vendor[9], product[17];
	/* the rest only for disks */
	uint64_t size;	      /* bytes */
	uint32_t block_size;  /* logical block, bytes */
	bool lbpme;	      /* thin provisioned (READ CAPACITY 16) */
	bool lbpu, lbpws;     /* UNMAP, WRITE SAME(16) with UNMAP supported (LBP VPD) */
	bool lbprz;	      /* unmapped blocks read as zeroes */
	bool write_protected; /* MODE SENSE: the WP bit */
	bool have_limits;     /* Block Limits VPD page read */
	uint32_t max_xfer_blocks, opt_xfer_blocks;
	uint32_t max_unmap_blocks, max_unmap_desc, unmap_gran_blocks;
	uint64_t max_ws_blocks;
};

/* A blocking wait for one libiscsi callback. */
struct bd_iscsi_wait {
	bool done;
	int status;
	void *data;		/* command_data of the callback */
	struct scsi_task *task; /* set by the caller for SCSI commands (cancelled on timeout) */
};
/* The callback to give libiscsi with a struct bd_iscsi_wait as private data. */
void bd_iscsi_wait_cb(struct iscsi_context *c, int status, void *command_data, void *opaque);
/* Serve c until w is done or deadline_ns (bd_now_ns clock) passes: 0, or -ETIMEDOUT / -EIO
 * (the connection failed).  On failure the task, if any, is cancelled (its callback has run)
 * and the connection is closed: c is good for bd_iscsi_close() / destroy only. */
int bd_iscsi_wait(struct iscsi_context *c, struct bd_iscsi_wait *w, uint64_t deadline_ns);

/* Parse an iscsi:// URL into t (portal, target, lun, user, password).  0 or -EINVAL. */
int bd_iscsi_parse_url(const char *url, struct bd_iscsi_target *t, struct bd_err *err);
/* Format iscsi://host:port/target/lun (no credentials) into buf. */
void bd_iscsi_format_url(const struct bd_iscsi_target *t, char *buf, size_t len);

/* Connect and log in (a normal session to t->target, or a discovery session when
 * t->target is "").  Auto-reconnect is off.  NULL with err set. */
struct iscsi_context *bd_iscsi_connect(const struct bd_iscsi_target *t, struct bd_err *err);
/* Log out (bounded by timeout) and free c. */
void bd_iscsi_close(struct iscsi_context *c, unsigned timeout);

/* INQUIRY, and for disks READ CAPACITY(16) and the VPD pages. */
int bd_iscsi_probe_lun(struct iscsi_context *c, int lun, unsigned timeout,
		       struct bd_iscsi_lun_info *out, struct bd_err *err);
/* REPORT LUNS: a malloc'd array of LUN numbers in *luns. */
int bd_iscsi_report_luns(struct iscsi_context *c, unsigned timeout, int **luns, size_t *n,
			 struct bd_err *err);
/* SendTargets on a discovery session: calls fn for each (target, portal) pair. */
int bd_iscsi_discover(struct iscsi_context *c, unsigned timeout,
		      void (*fn)(void *opaque, const char *target, const char *portal),
		      void *opaque, struct bd_err *err);

/* A finished SCSI command's result: 0, -ENOTSUP (command not supported), -EACCES (write
 * protected), -EAGAIN (worth reissuing: unit attention, busy, task set full, aborted
 * command), -ETIMEDOUT, -EBADE (reservation conflict), -EINVAL (LBA out of range), -EIO. */
int bd_iscsi_status_errno(int status, const struct scsi_task *task);
/* Human readable: "CHECK CONDITION, ILLEGAL_REQUEST/..." */
void bd_iscsi_status_str(int status, const struct scsi_task *task, char *buf, size_t len);

#endif /* BLOCKD_ISCSI_UTIL_H */
