/*
 * iscsi.c - the iscsi and iscsi-direct pool types: the LUNs of one iSCSI target, reached with
 * libiscsi (no kernel initiator on this machine, none needed).  [control thread]
 *
 * Both types read the same XML (<source><host name= port=/>, <device path='TARGET-IQN'/>,
 * optional <auth type='chap' username=...><secret usage|uuid='ID'/></auth> naming a blockd
 * secret object, optional <initiator><iqn name=.../></initiator>, required for iscsi-direct
 * as in libvirt).  A refresh logs in, asks REPORT LUNS, and for each LUN INQUIRY (only disks,
 * peripheral device type 0, become volumes: tgtd's LUN 0 controller is left out) and READ
 * CAPACITY(16).  Volumes are named like libvirt's (unit:0:0:LUN); their path is libvirt's
 * /dev/disk/by-path name for iscsi pools (an identifier only: nothing exists there) and the
 * iscsi:// URL for iscsi-direct.  Volumes open as nodes of the "iscsi" driver (vol_file_opts).
 * LUNs are the target's business: create, delete and resize are refused; wipe writes zeroes
 * (WRITE SAME), unmaps (UNMAP) or random bytes.  Every step is bounded by POOL_TIMEOUT.
 */
#include "pools/pools-int.h"
#include "protocols/iscsi-util.h"
#include "qmp-like/qmp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#define POOL_TIMEOUT 10 /* seconds, each login and command */
#define MAX_LUNS 4096	/* a refresh probes each LUN on the control thread */

static bool is_direct(const struct pool *p)
{
	return !strcmp(p->def->type, "iscsi-direct");
}

/* The pool's secret object id: <secret usage='ID'/> or <secret uuid='ID'/>. */
static const char *secret_id(const struct bd_pool_source *s)
{
	return s->secret_usage ? s->secret_usage : s->secret_uuid;
}

/* Where the pool's target is, and how to log in ("" target: discovery). */
static int target_of(const struct bd_pool_def *d, bool discovery, struct bd_iscsi_target *t,
		     struct bd_err *err)
{
	const struct bd_pool_source *s = &d->source;
	memset(t, 0, sizeof(*t));
	if (!s->nhosts)
		return bd_err_set(err, -EINVAL, "missing <source><host name=...>");
	if (strlen(s->hosts[0].name) > 200)
		return bd_err_set(err, -EINVAL, "host name too long");
	if (strchr(s->hosts[0].name, ':') && s->hosts[0].name[0] != '[')
		snprintf(t->portal, sizeof(t->portal), "[%s]:%d", s->hosts[0].name,
			 s->hosts[0].port ? s->hosts[0].port : 3260);
	else
		snprintf(t->portal, sizeof(t->portal), "%s:%d", s->hosts[0].name,
			 s->hosts[0].port ? s->hosts[0].port : 3260);
	if (!discovery) {
		if (!s->ndevices)
			return bd_err_set(err, -EINVAL,
					  "missing <source><device path='TARGET-IQN'/>");
		if (strlen(s->devices[0]) >= sizeof(t->target))
			return bd_err_set(err, -EINVAL, "target IQN too long");
		snprintf(t->target, sizeof(t->target), "%s", s->devices[0]);
	}
	snprintf(t->initiator, sizeof(t->initiator), "%s",
		 s->initiator_iqn && strlen(s->initiator_iqn) < sizeof(t->initiator)
		     ? s->initiator_iqn
		     : BD_ISCSI_DEFAULT_INITIATOR);
	t->header_digest = ISCSI_HEADER_DIGEST_NONE_CRC32C;
	t->timeout = POOL_TIMEOUT;
	if (s->auth_type) {
		char *pw = NULL;
		int r;
		if (strcmp(s->auth_type, "chap"))
			return bd_err_set(err, -ENOTSUP,
					  "<auth type='%s'> is not supported for iSCSI (only chap)",
					  s->auth_type);
		if ((r = bd_secret_lookup(secret_id(s), &pw, err)) < 0)
			return bd_err_prefix(err, "CHAP secret of user '%s'", s->auth_username);
		bool fits =
		    strlen(pw) < sizeof(t->password) && strlen(s->auth_username) < sizeof(t->user);
		if (fits) {
			snprintf(t->password, sizeof(t->password), "%s", pw);
			snprintf(t->user, sizeof(t->user), "%s", s->auth_username);
		}
		free(pw);
		if (!fits)
			return bd_err_set(err, -EINVAL, "CHAP user or secret too long");
	}
	return 0;
}

static int isc_check(struct pool *p, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	if (!s->nhosts)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><host> for a '%s' pool",
				  p->def->type);
	if (!s->ndevices)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><device path=...> for a '%s' "
				  "pool",
				  p->def->type);
	if (is_direct(p) && !s->initiator_iqn)
		return bd_err_set(err, -EINVAL,
				  "missing required element <source><initiator><iqn name=...> for "
				  "an 'iscsi-direct' pool");
	if (s->auth_type && strcmp(s->auth_type, "chap"))
		return bd_err_set(err, -ENOTSUP,
				  "<auth type='%s'> is not supported for iSCSI (only chap)",
				  s->auth_type);
	return 0;
}

static void vol_url(const struct bd_iscsi_target *t, int lun, char *buf, size_t len)
{
	struct bd_iscsi_target u = *t;
	u.lun = lun;
	bd_iscsi_format_url(&u, buf, len);
}

static int isc_refresh(struct pool *p, struct bd_err *err)
{
	struct bd_iscsi_target t;
	int r, *luns = NULL;
	size_t n = 0;
	bool cleared = false;

	if ((r = isc_check(p, err)) < 0 || (r = target_of(p->def, false, &t, err)) < 0)
		return r;
	t.lun = 0;
	struct iscsi_context *c = bd_iscsi_connect(&t, err);
	if (!c)
		return err->code;
	if ((r = bd_iscsi_report_luns(c, t.timeout, &luns, &n, err)) < 0)
		goto out;
	if (n > MAX_LUNS) {
		bd_log(BD_LOG_WARN, "pool '%s': %s reports %zu LUNs; listing the first %d",
		       p->def->name, t.target, n, MAX_LUNS);
		n = MAX_LUNS;
	}
	bd_pool_vols_clear(p);
	cleared = true;
	p->def->capacity = p->def->allocation = p->def->available = 0;
	for (size_t i = 0; i < n; i++) {
		struct bd_iscsi_lun_info info;
		struct bd_err e2 = {0};
		if (bd_iscsi_probe_lun(c, luns[i], t.timeout, &info, &e2) < 0) {
			if (iscsi_get_fd(c) < 0) { /* the session is gone: no partial list */
				r = bd_err_set(err, e2.code, "%s", e2.msg);
				goto out;
			}
			bd_log(BD_LOG_WARN, "pool '%s': LUN %d of %s left out: %s", p->def->name,
			       luns[i], t.target, e2.msg);
			continue;
		}
		if (info.device_type != SCSI_INQUIRY_PERIPHERAL_DEVICE_TYPE_DIRECT_ACCESS ||
		    info.qualifier != 0)
			continue; /* the controller LUN, tapes, ... */
		char name[64], url[BD_ISCSI_STR * 2 + 32], path[BD_ISCSI_STR * 3];
		snprintf(name, sizeof(name), "unit:0:0:%d", luns[i]);
		if (bd_pool_vol_find(p, name))
			continue; /* a target that lists a LUN twice */
		vol_url(&t, luns[i], url, sizeof(url));
		if (is_direct(p))
			snprintf(path, sizeof(path), "%s", url);
		else
			snprintf(path, sizeof(path), "%s/ip-%s-iscsi-%s-lun-%d",
				 p->def->target_path ? p->def->target_path : "/dev/disk/by-path",
				 t.portal, t.target, luns[i]);
		struct vol *v = bd_pool_vol_add(p, name, path, is_direct(p) ? "network" : "block",
						"raw", info.size, info.size);
		if (!v) {
			r = bd_err_set(err, -ENOMEM, "out of memory");
			goto out;
		}
		if (!is_direct(p))
			v->dev = strdup(url); /* for the in-use check: what the node names */
		p->def->capacity += info.size;
		p->def->allocation += info.size;
	}
	bd_pool_vols_sort(p);
	r = 0;
out:
	if (r < 0 && cleared) /* no half list */
		bd_pool_vols_clear(p);
	free(luns);
	bd_iscsi_close(c, t.timeout);
	if (r < 0)
		bd_err_prefix(err, "target %s at %s", t.target, t.portal);
	return r;
}

static int lun_of(const struct vol *v)
{
	const char *c = strrchr(v->name, ':');
	return c ? atoi(c + 1) : -1;
}

static json_t *isc_vol_file_opts(struct pool *p, struct vol *v, struct bd_err *err)
{
	const struct bd_pool_source *s = &p->def->source;
	struct bd_iscsi_target t;
	char url[BD_ISCSI_STR * 2 + 32];
	if (target_of(p->def, false, &t, err) < 0)
		return NULL;
	vol_url(&t, lun_of(v), url, sizeof(url));
	json_t *o = json_pack("{s:s,s:s}", "driver", "iscsi", "filename", url);
	if (s->initiator_iqn)
		json_object_set_new(o, "initiator-name", json_string(s->initiator_iqn));
	if (s->auth_type) {
		json_object_set_new(o, "user", json_string(s->auth_username));
		json_object_set_new(o, "password-secret", json_string(secret_id(s)));
	}
	return o;
}

static int isc_vol_delete(struct pool *p, struct vol *v, struct bd_err *err)
{
	return bd_err_set(err, -ENOTSUP,
			  "volumes of a '%s' pool are the target's LUNs: they cannot be deleted "
			  "through the pool (use the target's own tools)",
			  p->def->type);
}

/* Run one command on c and turn its status into an error. */
static int run(struct iscsi_context *c, struct bd_iscsi_wait *w, const char *what,
	       struct bd_err *err)
{
	if (!w->task)
		return bd_err_set(err, -ENOMEM, "%s: %s", what, iscsi_get_error(c));
	int r = bd_iscsi_wait(c, w, bd_now_ns() + POOL_TIMEOUT * 1000000000ull);
	if (r == 0 && w->status != SCSI_STATUS_GOOD) {
		char s[128];
		bd_iscsi_status_str(w->status, w->task, s, sizeof(s));
		r = bd_err_set(err, bd_iscsi_status_errno(w->status, w->task), "%s: %s", what, s);
	} else if (r < 0) {
		r = bd_err_set(err, r, "%s: %s", what,
			       r == -ETIMEDOUT ? "no answer in time" : iscsi_get_error(c));
	}
	scsi_free_scsi_task(w->task);
	w->task = NULL;
	if (r == -EAGAIN)
		r = -EIO;
	return r;
}

static int wipe_lun(struct iscsi_context *c, int lun, const struct bd_iscsi_lun_info *in,
		    const char *alg, struct bd_err *err)
{
	uint32_t bs = in->block_size;
	uint64_t blocks = in->size / bs;
	bool trim = !strcmp(alg, "trim"), rnd = !strcmp(alg, "random");
	if (trim && !in->lbpu)
		return bd_err_set(err, -ENOTSUP,
				  "the LUN does not support UNMAP (not thin provisioned): use the "
				  "zero algorithm");
	/* chunks: 1 MiB for data, else the target's limits (at most 64 MiB per command) */
	uint64_t chunk = (rnd ? (1u << 20) : (64u << 20)) / bs;
	if (trim && in->max_unmap_blocks && in->max_unmap_blocks < chunk)
		chunk = in->max_unmap_blocks;
	if (!trim && !rnd && in->max_ws_blocks && in->max_ws_blocks < chunk)
		chunk = in->max_ws_blocks;
	if (!chunk)
		chunk = 1;
	unsigned char *buf = calloc(1, rnd ? chunk * bs : bs);
	if (!buf)
		return bd_err_set(err, -ENOMEM, "out of memory");
	int r = 0;
	bool ws_ok = true;
	for (uint64_t lba = 0; lba < blocks && r == 0;) {
		uint32_t nb = (uint32_t)(blocks - lba < chunk ? blocks - lba : chunk);
		struct bd_iscsi_wait w = {0};
		if (trim) {
			struct unmap_list ul = {lba, nb};
			w.task = iscsi_unmap_task(c, lun, 0, 0, &ul, 1, bd_iscsi_wait_cb, &w);
			r = run(c, &w, "UNMAP", err);
		} else if (!rnd && ws_ok) {
			w.task = iscsi_writesame16_task(c, lun, lba, buf, bs, nb, 0, 0, 0, 0,
							bd_iscsi_wait_cb, &w);
			r = run(c, &w, "WRITE SAME(16)", err);
			if (r == -ENOTSUP) { /* no WRITE SAME: write zero buffers */
				bd_err_clear(err);
				ws_ok = false;
				unsigned char *z = calloc(1, (1u << 20));
				if (!z) {
					r = bd_err_set(err, -ENOMEM, "out of memory");
					break;
				}
				free(buf);
				buf = z;
				chunk = (1u << 20) / bs;
				r = 0;
				continue;
			}
		} else {
			if (rnd && getrandom(buf, (size_t)nb * bs, 0) < 0) {
				r = bd_err_set(err, -errno, "getrandom: %s", strerror(errno));
				break;
			}
			w.task = iscsi_write16_task(c, lun, lba, buf, nb * bs, (int)bs, 0, 0, 0, 0,
						    0, bd_iscsi_wait_cb, &w);
			r = run(c, &w, "WRITE(16)", err);
		}
		lba += nb;
	}
	if (r == 0) {
		struct bd_iscsi_wait w = {0};
		w.task = iscsi_synchronizecache16_task(c, lun, 0, 0, 0, 0, bd_iscsi_wait_cb, &w);
		r = run(c, &w, "SYNCHRONIZE CACHE(16)", err);
	}
	free(buf);
	return r;
}

static int isc_vol_wipe(struct pool *p, struct vol *v, const char *alg, struct bd_err *err)
{
	struct bd_iscsi_target t;
	struct bd_iscsi_lun_info info;
	int r;
	if ((r = target_of(p->def, false, &t, err)) < 0)
		return r;
	t.lun = lun_of(v);
	struct iscsi_context *c = bd_iscsi_connect(&t, err);
	if (!c)
		return err->code;
	if ((r = bd_iscsi_probe_lun(c, t.lun, t.timeout, &info, err)) == 0)
		r = wipe_lun(c, t.lun, &info, alg, err);
	bd_iscsi_close(c, t.timeout);
	return r;
}

/* ---- find-storage-pool-sources ---- */

struct found {
	FILE *f;
	const char *host;
	int port;
};

static void xml_attr(FILE *f, const char *s)
{
	for (; *s; s++)
		if (*s == '\'' || *s == '&' || *s == '<' || *s == '"' || *s == '>')
			fprintf(f, "&#%d;", *s);
		else
			fputc(*s, f);
}

static void found_one(void *opaque, const char *target, const char *portal)
{
	struct found *fd = opaque;
	(void)portal; /* libvirt lists the host it asked, once per target */
	fprintf(fd->f, "  <source>\n    <host name='");
	xml_attr(fd->f, fd->host);
	fprintf(fd->f, "' port='%d'/>\n    <device path='", fd->port);
	xml_attr(fd->f, target);
	fprintf(fd->f, "'/>\n  </source>\n");
}

static char *isc_find_sources(const char *spec, struct bd_err *err)
{
	const char *src = spec ? strstr(spec, "<source") : NULL;
	if (!src) {
		bd_err_set(err, -EINVAL,
			   "iSCSI discovery needs a source: <source><host name='...' "
			   "[port='...']/></source>");
		return NULL;
	}
	/* parse the <source> with the pool parser, wrapped in a pool of type iscsi-direct */
	char *xml = NULL;
	if (asprintf(&xml, "<pool type='iscsi-direct'><name>discovery</name>%s</pool>", src) < 0) {
		bd_err_set(err, -ENOMEM, "out of memory");
		return NULL;
	}
	struct bd_pool_def *def = NULL;
	int r = bd_pool_def_parse(xml, strlen(xml), &def, err);
	free(xml);
	if (r < 0)
		return NULL;
	struct bd_iscsi_target t;
	char *res = NULL;
	if (target_of(def, true, &t, err) == 0) {
		struct iscsi_context *c = bd_iscsi_connect(&t, err);
		if (c) {
			size_t len = 0;
			struct found fd = {open_memstream(&res, &len), def->source.hosts[0].name,
					   def->source.hosts[0].port ? def->source.hosts[0].port
								     : 3260};
			if (!fd.f) {
				bd_err_set(err, -ENOMEM, "out of memory");
			} else {
				fprintf(fd.f, "<sources>\n");
				r = bd_iscsi_discover(c, t.timeout, found_one, &fd, err);
				fprintf(fd.f, "</sources>\n");
				fclose(fd.f);
				if (r < 0) {
					free(res);
					res = NULL;
				}
			}
			bd_iscsi_close(c, t.timeout);
		}
	}
	bd_pool_def_free(def);
	return res;
}

const struct pool_backend bd_pool_backend_iscsi = {
    .type = "iscsi",
    .check = isc_check,
    .refresh = isc_refresh,
    .vol_delete = isc_vol_delete,
    .vol_file_opts = isc_vol_file_opts,
    .vol_wipe = isc_vol_wipe,
    .find_sources = isc_find_sources,
};

const struct pool_backend bd_pool_backend_iscsi_direct = {
    .type = "iscsi-direct",
    .check = isc_check,
    .refresh = isc_refresh,
    .vol_delete = isc_vol_delete,
    .vol_file_opts = isc_vol_file_opts,
    .vol_wipe = isc_vol_wipe,
    .find_sources = isc_find_sources,
};
