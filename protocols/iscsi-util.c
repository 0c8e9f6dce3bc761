/*
 * iscsi-util.c - libiscsi helpers shared by the iscsi driver and the iscsi pools: URL parsing,
 * connect + login with a hard deadline, blocking SCSI commands, LUN probing, SendTargets,
 * SCSI status to -errno (iscsi-util.h).
 *
 * Threads: the blocking helpers poll(2) the context's own socket and run on the control thread
 * (driver open(), pool operations) or a worker; never on an I/O loop.  Each wait is bounded by
 * a deadline.  The pure helpers (status mapping, URL formatting) run anywhere.
 */
#include "protocols/iscsi-util.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void copy_str(char *dst, const char *src)
{
	snprintf(dst, BD_ISCSI_STR, "%s", src ? src : "");
}

void bd_iscsi_wait_cb(struct iscsi_context *c, int status, void *command_data, void *opaque)
{
	struct bd_iscsi_wait *w = opaque;
	(void)c;
	w->status = status;
	w->data = command_data;
	w->done = true;
}

/* A wait that failed: the command (if any) is cancelled, which runs its callback, and the
 * connection is closed, so that nothing still queued in libiscsi (libiscsi 1.19 leaves the
 * DATA-OUT PDUs of a cancelled write queued, pointing into the task) is ever sent. */
static int give_up(struct iscsi_context *c, struct bd_iscsi_wait *w, int r)
{
	if (w->task && !w->done)
		iscsi_scsi_cancel_task(c, w->task);
	if (iscsi_get_fd(c) >= 0)
		iscsi_disconnect(c);
	w->done = true;
	return r;
}

int bd_iscsi_wait(struct iscsi_context *c, struct bd_iscsi_wait *w, uint64_t deadline_ns)
{
	while (!w->done) {
		uint64_t now = bd_now_ns();
		if (iscsi_get_fd(c) < 0)
			return give_up(c, w, -EIO);
		if (now >= deadline_ns)
			return give_up(c, w, -ETIMEDOUT);
		uint64_t left_ms = (deadline_ns - now) / 1000000 + 1;
		struct pollfd pfd = {.fd = iscsi_get_fd(c), .events = (short)iscsi_which_events(c)};
		int ms = left_ms < 100 ? (int)left_ms : 100;
		int n = pfd.fd >= 0 && pfd.events ? poll(&pfd, 1, ms) : (poll(NULL, 0, ms), 0);
		if (n < 0 && errno != EINTR)
			return -EIO;
		if (iscsi_service(c, n > 0 ? pfd.revents : 0) < 0 && !w->done)
			return give_up(c, w, -EIO);
	}
	return 0;
}

int bd_iscsi_parse_url(const char *url, struct bd_iscsi_target *t, struct bd_err *err)
{
	struct iscsi_context *c = iscsi_create_context(BD_ISCSI_DEFAULT_INITIATOR);
	if (!c)
		return bd_err_set(err, -ENOMEM, "out of memory");
	if (strncmp(url, "iscsi://", 8)) {
		iscsi_destroy_context(c);
		return bd_err_set(err, -EINVAL,
				  "invalid iSCSI URL '%s': expected "
				  "iscsi://[user[%%password]@]host[:port]/target-iqn/lun",
				  url);
	}
	struct iscsi_url *u = iscsi_parse_full_url(c, url);
	if (!u) {
		int r =
		    bd_err_set(err, -EINVAL, "invalid iSCSI URL '%s': %s", url, iscsi_get_error(c));
		iscsi_destroy_context(c);
		return r;
	}
	copy_str(t->portal, u->portal);
	copy_str(t->target, u->target);
	copy_str(t->user, u->user);
	copy_str(t->password, u->passwd);
	t->lun = u->lun;
	iscsi_destroy_url(u);
	iscsi_destroy_context(c);
	return 0;
}

void bd_iscsi_format_url(const struct bd_iscsi_target *t, char *buf, size_t len)
{
	char portal[BD_ISCSI_STR + 8];
	/* libiscsi's portal has a port only when one was given: make it explicit */
	const char *colon = strrchr(t->portal, ':');
	const char *bracket = strrchr(t->portal, ']');
	if (colon && (!bracket || colon > bracket))
		snprintf(portal, sizeof(portal), "%s", t->portal);
	else
		snprintf(portal, sizeof(portal), "%s:3260", t->portal);
	snprintf(buf, len, "iscsi://%s/%s/%d", portal, t->target, t->lun);
}

struct iscsi_context *bd_iscsi_connect(const struct bd_iscsi_target *t, struct bd_err *err)
{
	struct iscsi_context *c = iscsi_create_context(t->initiator);
	struct bd_iscsi_wait w = {0};
	uint64_t deadline = bd_now_ns() + (uint64_t)t->timeout * 1000000000ull;
	bool discovery = !t->target[0];
	int r;

	if (!c) {
		bd_err_set(err, -ENOMEM, "cannot create an iSCSI context");
		return NULL;
	}
	iscsi_set_noautoreconnect(c, 1);
	if (getenv("BD_ISCSI_DEBUG")) {
		iscsi_set_log_level(c, atoi(getenv("BD_ISCSI_DEBUG")));
		iscsi_set_log_fn(c, iscsi_log_to_stderr);
	}
	iscsi_set_session_type(c, discovery ? ISCSI_SESSION_DISCOVERY : ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(c, t->header_digest);
	if (!discovery)
		iscsi_set_targetname(c, t->target);
	if (t->user[0])
		iscsi_set_initiator_username_pwd(c, t->user, t->password);
	/* Connect, then log in, as two steps for both session types: iscsi_full_connect_async
	 * allocates a task that libiscsi 1.19 never frees when the login is abandoned (timeout,
	 * connection lost), which LeakSanitizer reported; with no LUN to probe it does no more. */
	r = iscsi_connect_async(c, t->portal, bd_iscsi_wait_cb, &w);
	if (r == 0)
		r = bd_iscsi_wait(c, &w, deadline);
	if (r == 0 && w.status == SCSI_STATUS_GOOD) {
		w = (struct bd_iscsi_wait){0};
		r = iscsi_login_async(c, bd_iscsi_wait_cb, &w);
		if (r == 0)
			r = bd_iscsi_wait(c, &w, deadline);
	}
	if (r == -ETIMEDOUT) {
		bd_err_set(err, -ETIMEDOUT, "cannot log in to %s at %s: no answer within %u s",
			   discovery ? "the discovery service" : t->target, t->portal, t->timeout);
	} else if (r < 0 || w.status != SCSI_STATUS_GOOD) {
		const char *e = iscsi_get_error(c);
		/* libiscsi overwrites the socket error with its reconnect bookkeeping */
		if (e && strstr(e, "reconnect_if_loggedin"))
			e = "connection refused or closed";
		bool auth = e && (strstr(e, "uthentication") || strstr(e, "CHAP"));
		bd_err_set(err, auth ? -EACCES : -EIO, "cannot log in to %s at %s: %s%s",
			   discovery ? "the discovery service" : t->target, t->portal,
			   e && *e ? e : "connection failed",
			   auth ? (t->user[0] ? " (wrong CHAP user or password?)"
					      : " (the target wants CHAP: give user and "
						"password-secret)")
				: "");
	} else {
		return c;
	}
	iscsi_destroy_context(c);
	return NULL;
}

void bd_iscsi_close(struct iscsi_context *c, unsigned timeout)
{
	if (!c)
		return;
	if (iscsi_is_logged_in(c) && iscsi_get_fd(c) >= 0) {
		struct bd_iscsi_wait w = {0};
		uint64_t deadline =
		    bd_now_ns() + (uint64_t)(timeout < 5 ? timeout : 5) * 1000000000ull;
		if (iscsi_logout_async(c, bd_iscsi_wait_cb, &w) == 0)
			bd_iscsi_wait(c, &w, deadline);
	}
	iscsi_destroy_context(c);
}

/* Run a task created with bd_iscsi_wait_cb/&w to completion. */
static int run_task(struct iscsi_context *c, struct bd_iscsi_wait *w, unsigned timeout,
		    const char *what, struct bd_err *err)
{
	if (!w->task)
		return bd_err_set(err, -ENOMEM, "%s: cannot queue the command: %s", what,
				  iscsi_get_error(c));
	int r = bd_iscsi_wait(c, w, bd_now_ns() + (uint64_t)timeout * 1000000000ull);
	if (r == -ETIMEDOUT)
		return bd_err_set(err, r, "%s: no answer within %u s", what, timeout);
	if (r < 0)
		return bd_err_set(err, r, "%s: connection failed: %s", what, iscsi_get_error(c));
	if (w->status != SCSI_STATUS_GOOD) {
		char s[128];
		bd_iscsi_status_str(w->status, w->task, s, sizeof(s));
		return bd_err_set(err, bd_iscsi_status_errno(w->status, w->task), "%s: %s", what,
				  s);
	}
	return 0;
}

static void free_task(struct bd_iscsi_wait *w)
{
	if (w->task)
		scsi_free_scsi_task(w->task);
	w->task = NULL;
}

/* A VPD page (or the standard INQUIRY for evpd 0): the unmarshalled data, task in w. */
static void *inquiry(struct iscsi_context *c, int lun, int evpd, int page, unsigned timeout,
		     struct bd_iscsi_wait *w, struct bd_err *err)
{
	*w = (struct bd_iscsi_wait){0};
	w->task = iscsi_inquiry_task(c, lun, evpd, page, 255, bd_iscsi_wait_cb, w);
	if (run_task(c, w, timeout, "INQUIRY", err) < 0)
		return NULL;
	void *d = scsi_datain_unmarshall(w->task);
	if (!d)
		bd_err_set(err, -EIO, "INQUIRY page 0x%02x: malformed answer", page);
	return d;
}

int bd_iscsi_probe_lun(struct iscsi_context *c, int lun, unsigned timeout,
		       struct bd_iscsi_lun_info *out, struct bd_err *err)
{
	struct bd_iscsi_wait w;
	struct bd_err e2 = {0};
	int r;

	memset(out, 0, sizeof(*out));
	/* consume unit attentions (power on, reset) with TEST UNIT READY first; a LUN that is
	 * not ready yet is no error here */
	for (int i = 0; i < 8; i++) {
		w = (struct bd_iscsi_wait){0};
		w.task = iscsi_testunitready_task(c, lun, bd_iscsi_wait_cb, &w);
		r = run_task(c, &w, timeout, "TEST UNIT READY", &e2);
		free_task(&w);
		if (r == -ETIMEDOUT || r == -EIO)
			return bd_err_set(err, r, "LUN %d: %s%s", lun, e2.msg,
					  strstr(e2.msg, "LOGICAL_UNIT_NOT_SUPPORTED")
					      ? " (no such LUN on the target)"
					      : "");
		bd_err_clear(&e2);
		if (r != -EAGAIN)
			break;
	}
	struct scsi_inquiry_standard *std = inquiry(c, lun, 0, 0, timeout, &w, err);
	if (!std) {
		free_task(&w);
		return err->code ? err->code : -EIO;
	}
	out->device_type = std->device_type;
	out->qualifier = std->qualifier;
	snprintf(out->vendor, sizeof(out->vendor), "%s", std->vendor_identification);
	snprintf(out->product, sizeof(out->product), "%s", std->product_identification);
	free_task(&w);
	if (out->device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS)
		return 0;

	w = (struct bd_iscsi_wait){0};
	w.task = iscsi_readcapacity16_task(c, lun, bd_iscsi_wait_cb, &w);
	if ((r = run_task(c, &w, timeout, "READ CAPACITY(16)", err)) < 0) {
		free_task(&w);
		return r;
	}
	struct scsi_readcapacity16 *rc = scsi_datain_unmarshall(w.task);
	if (!rc || rc->block_length < 512 || rc->block_length > 65536 ||
	    (rc->block_length & (rc->block_length - 1)) ||
	    rc->returned_lba >= UINT64_MAX / rc->block_length) {
		free_task(&w);
		return bd_err_set(err, -EIO, "READ CAPACITY(16): malformed or absurd answer");
	}
	out->block_size = rc->block_length;
	out->size = (rc->returned_lba + 1) * rc->block_length;
	out->lbpme = rc->lbpme;
	out->lbprz = rc->lbprz;
	free_task(&w);

	/* MODE SENSE(6): the WP bit of the device-specific parameter (no answer: writable) */
	w = (struct bd_iscsi_wait){0};
	w.task =
	    iscsi_modesense6_task(c, lun, 1, SCSI_MODESENSE_PC_CURRENT,
				  SCSI_MODEPAGE_RETURN_ALL_PAGES, 0, 255, bd_iscsi_wait_cb, &w);
	if (run_task(c, &w, timeout, "MODE SENSE(6)", &e2) == 0) {
		struct scsi_mode_sense *ms = scsi_datain_unmarshall(w.task);
		if (ms)
			out->write_protected = ms->device_specific_parameter & 0x80;
	} else if (iscsi_get_fd(c) < 0) {
		free_task(&w);
		return bd_err_set(err, e2.code, "LUN %d: %s", lun, e2.msg);
	}
	bd_err_clear(&e2);
	free_task(&w);

	/* the optional VPD pages: absent ones are no error */
	bool have_b0 = false, have_b2 = false;
	struct scsi_inquiry_supported_pages *sp = inquiry(c, lun, 1, 0x00, timeout, &w, &e2);
	if (sp)
		for (int i = 0; i < sp->num_pages; i++) {
			have_b0 |= sp->pages[i] == SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS;
			have_b2 |= sp->pages[i] == SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING;
		}
	free_task(&w);
	if (have_b0) {
		struct scsi_inquiry_block_limits *bl =
		    inquiry(c, lun, 1, SCSI_INQUIRY_PAGECODE_BLOCK_LIMITS, timeout, &w, &e2);
		if (bl) {
			out->have_limits = true;
			out->max_xfer_blocks = bl->max_xfer_len;
			out->opt_xfer_blocks = bl->opt_xfer_len;
			out->max_unmap_blocks = bl->max_unmap;
			out->max_unmap_desc = bl->max_unmap_bdc;
			out->unmap_gran_blocks = bl->opt_unmap_gran;
			out->max_ws_blocks = bl->max_ws_len;
		}
		free_task(&w);
	}
	if (have_b2 && out->lbpme) {
		struct scsi_inquiry_logical_block_provisioning *lbp = inquiry(
		    c, lun, 1, SCSI_INQUIRY_PAGECODE_LOGICAL_BLOCK_PROVISIONING, timeout, &w, &e2);
		if (lbp) {
			out->lbpu = lbp->lbpu;
			out->lbpws = lbp->lbpws;
			out->lbprz = out->lbprz || lbp->lbprz;
		}
		free_task(&w);
	}
	return 0;
}

int bd_iscsi_report_luns(struct iscsi_context *c, unsigned timeout, int **luns, size_t *n,
			 struct bd_err *err)
{
	int alloc = 64;
	for (int tries = 0; tries < 3; tries++) {
		struct bd_iscsi_wait w = {0};
		w.task = iscsi_reportluns_task(c, 0, alloc, bd_iscsi_wait_cb, &w);
		int r = run_task(c, &w, timeout, "REPORT LUNS", err);
		if (r < 0) {
			free_task(&w);
			return r;
		}
		/* the first 4 bytes give the list length: ask again if it did not fit */
		if (w.task->datain.size >= 4) {
			const unsigned char *d = w.task->datain.data;
			uint32_t need = ((uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 |
					 (uint32_t)d[2] << 8 | d[3]) +
					8;
			if (need > (uint32_t)alloc && need <= 1u << 20 && tries < 2) {
				alloc = (int)need;
				free_task(&w);
				continue;
			}
		}
		struct scsi_reportluns_list *l = scsi_datain_unmarshall(w.task);
		if (!l) {
			free_task(&w);
			return bd_err_set(err, -EIO, "REPORT LUNS: malformed answer");
		}
		*luns = calloc(l->num ? l->num : 1, sizeof(int));
		if (!*luns) {
			free_task(&w);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
		*n = 0;
		for (uint32_t i = 0; i < l->num; i++)
			(*luns)[(*n)++] = l->luns[i] & 0x3fff; /* flat/peripheral addressing */
		free_task(&w);
		return 0;
	}
	return bd_err_set(err, -EIO, "REPORT LUNS: the list keeps growing");
}

struct discover {
	struct bd_iscsi_wait w;
	void (*fn)(void *opaque, const char *target, const char *portal);
	void *opaque;
	bool orphaned;
};

/* libiscsi frees the list after the callback: use it here */
static void discover_cb(struct iscsi_context *c, int status, void *command_data, void *opaque)
{
	struct discover *d = opaque;
	if (d->orphaned) { /* bd_iscsi_discover gave up waiting: the context is going away */
		free(d);
		return;
	}
	if (status == SCSI_STATUS_GOOD)
		for (struct iscsi_discovery_address *a = command_data; a; a = a->next)
			for (struct iscsi_target_portal *p = a->portals; p; p = p->next)
				d->fn(d->opaque, a->target_name, p->portal);
	bd_iscsi_wait_cb(c, status, NULL, &d->w);
}

int bd_iscsi_discover(struct iscsi_context *c, unsigned timeout,
		      void (*fn)(void *opaque, const char *target, const char *portal),
		      void *opaque, struct bd_err *err)
{
	/* on the heap: a callback that comes after a timeout (when the context is destroyed)
	 * must find it */
	struct discover *d = calloc(1, sizeof(*d));
	if (!d)
		return bd_err_set(err, -ENOMEM, "out of memory");
	d->fn = fn;
	d->opaque = opaque;
	if (iscsi_discovery_async(c, discover_cb, d) < 0) {
		free(d);
		return bd_err_set(err, -EIO, "SendTargets failed: %s", iscsi_get_error(c));
	}
	int r = bd_iscsi_wait(c, &d->w, bd_now_ns() + (uint64_t)timeout * 1000000000ull);
	if (r < 0) {
		d->orphaned = true; /* the callback has not run: it frees d when it does */
	} else {
		int st = d->w.status;
		free(d);
		if (st != SCSI_STATUS_GOOD)
			return bd_err_set(err, -EIO, "SendTargets failed: %s", iscsi_get_error(c));
		return 0;
	}
	if (r == -ETIMEDOUT)
		return bd_err_set(err, r, "SendTargets: no answer within %u s", timeout);
	return bd_err_set(err, -EIO, "SendTargets failed: %s", iscsi_get_error(c));
}

int bd_iscsi_status_errno(int status, const struct scsi_task *task)
{
	switch (status) {
	case SCSI_STATUS_GOOD:
	case SCSI_STATUS_CONDITION_MET:
		return 0;
	case SCSI_STATUS_BUSY:
	case SCSI_STATUS_TASK_SET_FULL:
	case SCSI_STATUS_TASK_ABORTED:
		return -EAGAIN;
	case SCSI_STATUS_RESERVATION_CONFLICT:
		return -EBADE;
	case SCSI_STATUS_TIMEOUT:
		return -ETIMEDOUT;
	case SCSI_STATUS_CHECK_CONDITION:
		if (!task)
			return -EIO;
		switch (task->sense.key) {
		case SCSI_SENSE_ILLEGAL_REQUEST:
			if (task->sense.ascq == SCSI_SENSE_ASCQ_INVALID_OPERATION_CODE ||
			    task->sense.ascq == SCSI_SENSE_ASCQ_INVALID_FIELD_IN_CDB)
				return -ENOTSUP;
			if (task->sense.ascq == SCSI_SENSE_ASCQ_LBA_OUT_OF_RANGE)
				return -EINVAL;
			return -EIO;
		case SCSI_SENSE_UNIT_ATTENTION:
		case SCSI_SENSE_COMMAND_ABORTED:
			return -EAGAIN;
		case SCSI_SENSE_DATA_PROTECTION:
			return -EACCES;
		case SCSI_SENSE_RECOVERED_ERROR:
			return 0;
		default:
			return -EIO;
		}
	default:
		return -EIO;
	}
}

void bd_iscsi_status_str(int status, const struct scsi_task *task, char *buf, size_t len)
{
	switch (status) {
	case SCSI_STATUS_CHECK_CONDITION:
		if (task)
			snprintf(buf, len, "CHECK CONDITION, %s/%s",
				 scsi_sense_key_str(task->sense.key),
				 scsi_sense_ascq_str(task->sense.ascq));
		else
			snprintf(buf, len, "CHECK CONDITION");
		break;
	case SCSI_STATUS_BUSY:
		snprintf(buf, len, "BUSY");
		break;
	case SCSI_STATUS_RESERVATION_CONFLICT:
		snprintf(buf, len, "RESERVATION CONFLICT");
		break;
	case SCSI_STATUS_TASK_SET_FULL:
		snprintf(buf, len, "TASK SET FULL");
		break;
	case SCSI_STATUS_CANCELLED:
		snprintf(buf, len, "cancelled");
		break;
	case SCSI_STATUS_TIMEOUT:
		snprintf(buf, len, "timed out");
		break;
	case SCSI_STATUS_ERROR:
		snprintf(buf, len, "connection error");
		break;
	default:
		snprintf(buf, len, "SCSI status 0x%x", (unsigned)status);
	}
}
