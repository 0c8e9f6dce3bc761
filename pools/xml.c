/*
 * xml.c - libvirt's storage pool and volume XML: parse (libxml2) and format.  Pure functions
 * over a buffer, no globals touched beyond libxml2's own initialisation.  [any thread]
 *
 * The element set follows libvirt's formatstorage documentation; elements blockd does not model
 * are ignored on input (as libvirt does with unknown elements).  Formatting is stable: parsing
 * the output of bd_pool_def_format gives an equal definition.
 */
#include "pools/pools-int.h"

#include <ctype.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *const bd_pool_types[] = {"dir",	 "fs",		 "netfs", "logical",  "disk",
				     "iscsi",	 "iscsi-direct", "scsi",  "mpath",    "rbd",
				     "sheepdog", "gluster",	 "zfs",	  "vstorage", NULL};

/* ---- scaled integers ---- */

int bd_pool_scale(const char *num, const char *unit, uint64_t *out, struct bd_err *err)
{
	uint64_t scale = 1, v = 0;
	const char *p = num;

	if (!num)
		return bd_err_set(err, -EINVAL, "missing number");
	while (isspace((unsigned char)*p))
		p++;
	if (!isdigit((unsigned char)*p))
		return bd_err_set(err, -EINVAL, "invalid number '%s'", num);
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return bd_err_set(err, -ERANGE, "number '%s' is too large", num);
		v = v * 10 + d;
	}
	while (isspace((unsigned char)*p))
		p++;
	if (*p) {
		/* a suffix written into the number ("10G"): allowed when no unit is given */
		if (unit && *unit)
			return bd_err_set(err, -EINVAL, "invalid number '%s'", num);
		unit = p;
	}
	if (unit && *unit && strcasecmp(unit, "b") && strcasecmp(unit, "byte") &&
	    strcasecmp(unit, "bytes")) {
		uint64_t base;
		int power;
		if (!unit[1] || !strcasecmp(unit + 1, "iB"))
			base = 1024;
		else if (tolower((unsigned char)unit[1]) == 'b' && !unit[2])
			base = 1000;
		else
			return bd_err_set(err, -EINVAL, "unknown unit '%s'", unit);
		switch (tolower((unsigned char)unit[0])) {
		case 'k':
			power = 1;
			break;
		case 'm':
			power = 2;
			break;
		case 'g':
			power = 3;
			break;
		case 't':
			power = 4;
			break;
		case 'p':
			power = 5;
			break;
		case 'e':
			power = 6;
			break;
		default:
			return bd_err_set(err, -EINVAL, "unknown unit '%s'", unit);
		}
		while (power--)
			scale *= base;
	}
	if (v && v > UINT64_MAX / scale)
		return bd_err_set(err, -ERANGE, "value '%s %s' is too large", num, unit);
	*out = v * scale;
	return 0;
}

int bd_pool_check_name(const char *what, const char *name, struct bd_err *err)
{
	if (!name || !*name)
		return bd_err_set(err, -EINVAL, "%s name must not be empty", what);
	if (strlen(name) > 255)
		return bd_err_set(err, -EINVAL, "%s name '%.40s...' is too long", what, name);
	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return bd_err_set(err, -EINVAL, "%s name '%s' is not allowed", what, name);
	for (const char *p = name; *p; p++) {
		if (*p == '/')
			return bd_err_set(err, -EINVAL, "%s name '%s' must not contain '/'", what,
					  name);
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			return bd_err_set(err, -EINVAL,
					  "%s name must not contain control characters", what);
	}
	return 0;
}

/* Letters, digits and (lvm) "+_.-", not starting with '-': safe on a command line. */
static bool plain_word(const char *s, bool lvm)
{
	if (!*s || *s == '-' || strlen(s) > 127)
		return false;
	for (; *s; s++)
		if (!isalnum((unsigned char)*s) && !(lvm && strchr("+_.-", *s)))
			return false;
	return true;
}

/* ---- UUIDs ---- */

int bd_uuid_parse(const char *in, char out[37])
{
	int n = 0;
	char hex[33];
	for (const char *p = in; *p; p++) {
		if (*p == '-' || isspace((unsigned char)*p))
			continue;
		if (!isxdigit((unsigned char)*p) || n >= 32)
			return -EINVAL;
		hex[n++] = (char)tolower((unsigned char)*p);
	}
	if (n != 32)
		return -EINVAL;
	snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
	return 0;
}

/* ---- libxml2 helpers ---- */

static xmlNode *child(xmlNode *n, const char *name)
{
	for (xmlNode *c = n ? n->children : NULL; c; c = c->next)
		if (c->type == XML_ELEMENT_NODE && !strcmp((const char *)c->name, name))
			return c;
	return NULL;
}

static char *text_of(xmlNode *n)
{
	if (!n)
		return NULL;
	xmlChar *t = xmlNodeGetContent(n);
	char *s = NULL;
	if (t) {
		/* trim surrounding white space */
		const char *b = (const char *)t;
		while (isspace((unsigned char)*b))
			b++;
		size_t l = strlen(b);
		while (l && isspace((unsigned char)b[l - 1]))
			l--;
		s = strndup(b, l);
		xmlFree(t);
	}
	return s;
}

static char *attr(xmlNode *n, const char *name)
{
	if (!n)
		return NULL;
	xmlChar *v = xmlGetProp(n, (const xmlChar *)name);
	char *s = v ? strdup((const char *)v) : NULL;
	xmlFree(v);
	return s;
}

/* A <capacity unit='..'>N</capacity>-style element. */
static int scaled(xmlNode *n, const char *what, uint64_t *out, bool *has, struct bd_err *err)
{
	if (!n)
		return 0;
	char *num = text_of(n), *unit = attr(n, "unit");
	int r = bd_pool_scale(num, unit, out, err);
	if (r < 0)
		bd_err_prefix(err, "invalid <%s>", what);
	else if (has)
		*has = true;
	free(num);
	free(unit);
	return r;
}

static int parse_long(xmlNode *n, const char *what, int base, long *out, struct bd_err *err)
{
	if (!n)
		return 0;
	char *t = text_of(n), *end;
	long v;
	errno = 0;
	v = t ? strtol(t, &end, base) : 0;
	if (!t || !*t || *end || errno || v < -1) {
		free(t);
		return bd_err_set(err, -EINVAL, "invalid <%s> in <permissions>", what);
	}
	free(t);
	*out = v;
	return 0;
}

static int parse_perms(xmlNode *n, struct bd_pool_perms *p, struct bd_err *err)
{
	int r;
	p->mode = p->owner = p->group = -1;
	if (!n)
		return 0;
	if ((r = parse_long(child(n, "mode"), "mode", 8, &p->mode, err)) < 0 ||
	    (r = parse_long(child(n, "owner"), "owner", 10, &p->owner, err)) < 0 ||
	    (r = parse_long(child(n, "group"), "group", 10, &p->group, err)) < 0)
		return r;
	if (p->mode > 07777)
		return bd_err_set(err, -EINVAL, "invalid <mode> in <permissions>");
	p->label = text_of(child(n, "label"));
	return 0;
}

static xmlDoc *read_doc(const char *buf, size_t len, const char *root, xmlNode **rootp,
			struct bd_err *err)
{
	xmlParserCtxt *ctxt;
	xmlDoc *doc;

	if (len > (64u << 20) || len > INT32_MAX)
		return bd_err_set(err, -EINVAL, "XML document too large"), NULL;
	ctxt = xmlNewParserCtxt();
	if (!ctxt)
		return bd_err_set(err, -ENOMEM, "out of memory"), NULL;
	doc = xmlCtxtReadMemory(ctxt, buf, (int)len, "pool.xml", NULL,
				XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
	if (!doc) {
		const xmlError *e = xmlCtxtGetLastError(ctxt);
		char msg[256] = "malformed document";
		if (e && e->message) {
			snprintf(msg, sizeof(msg), "%s", e->message);
			size_t l = strlen(msg);
			while (l && msg[l - 1] == '\n')
				msg[--l] = '\0';
		}
		bd_err_set(err, -EINVAL, "invalid XML (line %d): %s", e ? e->line : 0, msg);
		xmlFreeParserCtxt(ctxt);
		return NULL;
	}
	xmlFreeParserCtxt(ctxt);
	*rootp = xmlDocGetRootElement(doc);
	if (!*rootp || strcmp((const char *)(*rootp)->name, root)) {
		bd_err_set(err, -EINVAL, "unexpected root element <%s>, expecting <%s>",
			   *rootp ? (const char *)(*rootp)->name : "", root);
		xmlFreeDoc(doc);
		return NULL;
	}
	return doc;
}

static int append_str(char ***arr, size_t *n, char *s)
{
	char **na = realloc(*arr, (*n + 1) * sizeof(**arr));
	if (!na) {
		free(s);
		return -ENOMEM;
	}
	*arr = na;
	na[(*n)++] = s;
	return 0;
}

static int parse_source(xmlNode *src, struct bd_pool_source *s, struct bd_err *err)
{
	xmlNode *c, *n;
	if (!src)
		return 0;
	for (c = src->children; c; c = c->next) {
		if (c->type != XML_ELEMENT_NODE)
			continue;
		const char *cn = (const char *)c->name;
		if (!strcmp(cn, "host")) {
			char *name = attr(c, "name"), *port = attr(c, "port");
			struct bd_pool_host *nh;
			if (!name) {
				free(port);
				return bd_err_set(err, -EINVAL,
						  "missing 'name' attribute of source <host>");
			}
			int p = 0;
			if (port) {
				char *end;
				long v = strtol(port, &end, 10);
				if (!*port || *end || v <= 0 || v > 65535) {
					free(name);
					free(port);
					return bd_err_set(err, -EINVAL,
							  "invalid port of source <host>");
				}
				p = (int)v;
				free(port);
			}
			nh = realloc(s->hosts, (s->nhosts + 1) * sizeof(*nh));
			if (!nh) {
				free(name);
				return bd_err_set(err, -ENOMEM, "out of memory");
			}
			s->hosts = nh;
			nh[s->nhosts].name = name;
			nh[s->nhosts++].port = p;
		} else if (!strcmp(cn, "device")) {
			char *path = attr(c, "path");
			if (!path)
				return bd_err_set(err, -EINVAL,
						  "missing 'path' attribute of source <device>");
			if (append_str(&s->devices, &s->ndevices, path) < 0)
				return bd_err_set(err, -ENOMEM, "out of memory");
		} else if (!strcmp(cn, "dir") && !s->dir) {
			s->dir = attr(c, "path");
			if (!s->dir)
				return bd_err_set(err, -EINVAL,
						  "missing 'path' attribute of source <dir>");
		} else if (!strcmp(cn, "adapter") && !s->adapter_type && !s->adapter_name) {
			s->adapter_type = attr(c, "type");
			s->adapter_name = attr(c, "name");
			s->adapter_parent = attr(c, "parent");
			s->adapter_wwnn = attr(c, "wwnn");
			s->adapter_wwpn = attr(c, "wwpn");
		} else if (!strcmp(cn, "name") && !s->name) {
			s->name = text_of(c);
		} else if (!strcmp(cn, "format") && !s->format) {
			s->format = attr(c, "type");
			if (!s->format)
				return bd_err_set(err, -EINVAL,
						  "missing 'type' attribute of source <format>");
		} else if (!strcmp(cn, "auth") && !s->auth_type) {
			s->auth_type = attr(c, "type");
			s->auth_username = attr(c, "username");
			if (!s->auth_type)
				return bd_err_set(err, -EINVAL,
						  "missing 'type' attribute of source <auth>");
			if (!s->auth_username)
				return bd_err_set(err, -EINVAL,
						  "missing 'username' attribute of source <auth>");
			n = child(c, "secret");
			if (!n)
				return bd_err_set(err, -EINVAL,
						  "missing <secret> in source <auth>");
			s->secret_usage = attr(n, "usage");
			char *u = attr(n, "uuid");
			if (u) {
				char canon[37];
				if (bd_uuid_parse(u, canon) < 0) {
					free(u);
					return bd_err_set(err, -EINVAL,
							  "invalid uuid of <secret> in <auth>");
				}
				free(u);
				s->secret_uuid = strdup(canon);
			}
			if (!s->secret_usage && !s->secret_uuid)
				return bd_err_set(err, -EINVAL,
						  "<secret> in <auth> needs 'usage' or 'uuid'");
		} else if (!strcmp(cn, "initiator") && !s->initiator_iqn) {
			s->initiator_iqn = attr(child(c, "iqn"), "name");
			if (!s->initiator_iqn)
				return bd_err_set(
				    err, -EINVAL,
				    "missing <iqn name='...'/> in source <initiator>");
		} else if (!strcmp(cn, "vendor") && !s->vendor) {
			s->vendor = attr(c, "name");
		} else if (!strcmp(cn, "product") && !s->product) {
			s->product = attr(c, "name");
		} else if (!strcmp(cn, "protocol") && !s->protocol_ver) {
			s->protocol_ver = attr(c, "ver");
		}
	}
	return 0;
}

int bd_pool_def_parse(const char *buf, size_t len, struct bd_pool_def **out, struct bd_err *err)
{
	xmlNode *root, *n;
	xmlDoc *doc = read_doc(buf, len, "pool", &root, err);
	struct bd_pool_def *d;
	int r = -EINVAL;

	if (!doc)
		return err->code;
	d = calloc(1, sizeof(*d));
	if (!d) {
		xmlFreeDoc(doc);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	d->type = attr(root, "type");
	if (!d->type) {
		bd_err_set(err, -EINVAL, "missing 'type' attribute of <pool>");
		goto fail;
	}
	bool known = false;
	for (int i = 0; bd_pool_types[i]; i++)
		known |= !strcmp(bd_pool_types[i], d->type);
	if (!known) {
		bd_err_set(err, -EINVAL, "unknown storage pool type '%s'", d->type);
		goto fail;
	}
	d->name = text_of(child(root, "name"));
	if (!d->name || !*d->name) {
		bd_err_set(err, -EINVAL, "missing required element <name> in <pool>");
		goto fail;
	}
	if ((r = bd_pool_check_name("pool", d->name, err)) < 0)
		goto fail;
	r = -EINVAL;
	if ((n = child(root, "uuid"))) {
		char *u = text_of(n);
		int ur = u ? bd_uuid_parse(u, d->uuid) : -EINVAL;
		free(u);
		if (ur < 0) {
			bd_err_set(err, -EINVAL, "invalid <uuid> in <pool>");
			goto fail;
		}
	}
	if (scaled(child(root, "capacity"), "capacity", &d->capacity, NULL, err) < 0 ||
	    scaled(child(root, "allocation"), "allocation", &d->allocation, NULL, err) < 0 ||
	    scaled(child(root, "available"), "available", &d->available, NULL, err) < 0)
		goto fail;
	if (parse_source(child(root, "source"), &d->source, err) < 0)
		goto fail;
	n = child(root, "target");
	d->target_path = text_of(child(n, "path"));
	if (d->target_path && !*d->target_path) {
		free(d->target_path);
		d->target_path = NULL;
	}
	if (parse_perms(child(n, "permissions"), &d->perms, err) < 0)
		goto fail;
	if (d->target_path && d->target_path[0] != '/') {
		bd_err_set(err, -EINVAL, "<target><path> must be absolute, not '%s'",
			   d->target_path);
		goto fail;
	}

	/* what each type needs (libvirt's pool type options) */
	const char *t = d->type;
	if ((!strcmp(t, "dir") || !strcmp(t, "fs") || !strcmp(t, "netfs")) && !d->target_path) {
		bd_err_set(err, -EINVAL, "missing required element <target><path> for a '%s' pool",
			   t);
		goto fail;
	}
	if ((!strcmp(t, "fs") || !strcmp(t, "disk") || !strcmp(t, "iscsi")) &&
	    !d->source.ndevices) {
		bd_err_set(err, -EINVAL,
			   "missing required element <source><device path=...> for a '%s' pool", t);
		goto fail;
	}
	if ((!strcmp(t, "netfs") || !strcmp(t, "iscsi") || !strcmp(t, "gluster")) &&
	    !d->source.nhosts) {
		bd_err_set(err, -EINVAL, "missing required element <source><host> for a '%s' pool",
			   t);
		goto fail;
	}
	if (!strcmp(t, "netfs") && !d->source.dir) {
		bd_err_set(err, -EINVAL,
			   "missing required element <source><dir> for a 'netfs' pool");
		goto fail;
	}
	if ((!strcmp(t, "rbd") || !strcmp(t, "sheepdog") || !strcmp(t, "zfs") ||
	     !strcmp(t, "vstorage")) &&
	    !d->source.name) {
		bd_err_set(err, -EINVAL, "missing required element <source><name> for a '%s' pool",
			   t);
		goto fail;
	}
	/* what reaches command lines (mkfs.FORMAT, mount, parted, lvm) must be plain */
	if (!strcmp(t, "fs") || !strcmp(t, "disk") || !strcmp(t, "logical")) {
		for (size_t i = 0; i < d->source.ndevices; i++)
			if (d->source.devices[i][0] != '/') {
				bd_err_set(err, -EINVAL,
					   "<source><device path=...> must be absolute, not '%s'",
					   d->source.devices[i]);
				goto fail;
			}
		if (d->source.format && !plain_word(d->source.format, false)) {
			bd_err_set(err, -EINVAL, "invalid <source><format type='%s'>",
				   d->source.format);
			goto fail;
		}
	}
	if (!strcmp(t, "logical") && d->source.name && !plain_word(d->source.name, true)) {
		bd_err_set(err, -EINVAL,
			   "invalid volume group name '%s' in <source><name> (letters, digits, "
			   "+_.- and not starting with '-')",
			   d->source.name);
		goto fail;
	}
	if (!strcmp(t, "logical") && !d->source.name && !plain_word(d->name, true)) {
		bd_err_set(err, -EINVAL,
			   "pool name '%s' cannot be a volume group name: give "
			   "<source><name>",
			   d->name);
		goto fail;
	}
	if (!strcmp(t, "logical") && !d->source.name)
		d->source.name = strdup(d->name); /* libvirt: the VG is named like the pool */
	if (!strcmp(t, "logical") && !d->target_path) {
		char p[300];
		snprintf(p, sizeof(p), "/dev/%s", d->source.name);
		d->target_path = strdup(p);
	}
	if (!strcmp(t, "disk") && !d->target_path)
		d->target_path = strdup("/dev");
	xmlFreeDoc(doc);
	*out = d;
	return 0;
fail:
	xmlFreeDoc(doc);
	bd_pool_def_free(d);
	return err->code ? err->code : r;
}

static void free_perms(struct bd_pool_perms *p)
{
	free(p->label);
}

void bd_pool_def_free(struct bd_pool_def *d)
{
	if (!d)
		return;
	struct bd_pool_source *s = &d->source;
	for (size_t i = 0; i < s->nhosts; i++)
		free(s->hosts[i].name);
	free(s->hosts);
	for (size_t i = 0; i < s->ndevices; i++)
		free(s->devices[i]);
	free(s->devices);
	free(s->dir);
	free(s->adapter_type);
	free(s->adapter_name);
	free(s->adapter_parent);
	free(s->adapter_wwnn);
	free(s->adapter_wwpn);
	free(s->name);
	free(s->format);
	free(s->auth_type);
	free(s->auth_username);
	free(s->secret_usage);
	free(s->secret_uuid);
	free(s->initiator_iqn);
	free(s->vendor);
	free(s->product);
	free(s->protocol_ver);
	free(d->type);
	free(d->name);
	free(d->target_path);
	free_perms(&d->perms);
	free(d);
}

/* ---- formatting ---- */

static void esc(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '&':
			fputs("&amp;", f);
			break;
		case '<':
			fputs("&lt;", f);
			break;
		case '>':
			fputs("&gt;", f);
			break;
		case '\'':
			fputs("&apos;", f);
			break;
		case '"':
			fputs("&quot;", f);
			break;
		default:
			fputc(*s, f);
		}
	}
}

static void elem_text(FILE *f, int indent, const char *name, const char *val)
{
	if (!val)
		return;
	fprintf(f, "%*s<%s>", indent, "", name);
	esc(f, val);
	fprintf(f, "</%s>\n", name);
}

static void elem_attr(FILE *f, int indent, const char *name, const char *an, const char *val)
{
	if (!val)
		return;
	fprintf(f, "%*s<%s %s='", indent, "", name, an);
	esc(f, val);
	fputs("'/>\n", f);
}

static void attr_opt(FILE *f, const char *an, const char *val)
{
	if (!val)
		return;
	fprintf(f, " %s='", an);
	esc(f, val);
	fputc('\'', f);
}

static void format_perms(FILE *f, int indent, const struct bd_pool_perms *p)
{
	if (p->mode < 0 && p->owner < 0 && p->group < 0 && !p->label)
		return;
	fprintf(f, "%*s<permissions>\n", indent, "");
	if (p->mode >= 0)
		fprintf(f, "%*s<mode>0%lo</mode>\n", indent + 2, "", p->mode);
	if (p->owner >= 0)
		fprintf(f, "%*s<owner>%ld</owner>\n", indent + 2, "", p->owner);
	if (p->group >= 0)
		fprintf(f, "%*s<group>%ld</group>\n", indent + 2, "", p->group);
	elem_text(f, indent + 2, "label", p->label);
	fprintf(f, "%*s</permissions>\n", indent, "");
}

char *bd_pool_def_format(const struct bd_pool_def *d, bool with_sizes)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	const struct bd_pool_source *s = &d->source;
	if (!f)
		return NULL;
	fprintf(f, "<pool type='");
	esc(f, d->type);
	fprintf(f, "'>\n");
	elem_text(f, 2, "name", d->name);
	if (d->uuid[0])
		elem_text(f, 2, "uuid", d->uuid);
	if (with_sizes) {
		fprintf(f, "  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", d->capacity);
		fprintf(f, "  <allocation unit='bytes'>%" PRIu64 "</allocation>\n", d->allocation);
		fprintf(f, "  <available unit='bytes'>%" PRIu64 "</available>\n", d->available);
	}
	fprintf(f, "  <source>\n");
	for (size_t i = 0; i < s->nhosts; i++) {
		fprintf(f, "    <host");
		attr_opt(f, "name", s->hosts[i].name);
		if (s->hosts[i].port)
			fprintf(f, " port='%d'", s->hosts[i].port);
		fprintf(f, "/>\n");
	}
	for (size_t i = 0; i < s->ndevices; i++)
		elem_attr(f, 4, "device", "path", s->devices[i]);
	elem_attr(f, 4, "dir", "path", s->dir);
	if (s->adapter_type || s->adapter_name) {
		fprintf(f, "    <adapter");
		attr_opt(f, "type", s->adapter_type);
		attr_opt(f, "name", s->adapter_name);
		attr_opt(f, "parent", s->adapter_parent);
		attr_opt(f, "wwnn", s->adapter_wwnn);
		attr_opt(f, "wwpn", s->adapter_wwpn);
		fprintf(f, "/>\n");
	}
	elem_text(f, 4, "name", s->name);
	elem_attr(f, 4, "format", "type", s->format);
	if (s->initiator_iqn) {
		fprintf(f, "    <initiator>\n");
		elem_attr(f, 6, "iqn", "name", s->initiator_iqn);
		fprintf(f, "    </initiator>\n");
	}
	if (s->auth_type) {
		fprintf(f, "    <auth");
		attr_opt(f, "type", s->auth_type);
		attr_opt(f, "username", s->auth_username);
		fprintf(f, ">\n      <secret");
		attr_opt(f, "usage", s->secret_usage);
		attr_opt(f, "uuid", s->secret_uuid);
		fprintf(f, "/>\n    </auth>\n");
	}
	elem_attr(f, 4, "vendor", "name", s->vendor);
	elem_attr(f, 4, "product", "name", s->product);
	elem_attr(f, 4, "protocol", "ver", s->protocol_ver);
	fprintf(f, "  </source>\n");
	if (d->target_path || d->perms.mode >= 0 || d->perms.owner >= 0 || d->perms.group >= 0 ||
	    d->perms.label) {
		fprintf(f, "  <target>\n");
		elem_text(f, 4, "path", d->target_path);
		format_perms(f, 4, &d->perms);
		fprintf(f, "  </target>\n");
	}
	fprintf(f, "</pool>\n");
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}

/* ---- volumes ---- */

int bd_vol_def_parse(const char *buf, size_t len, struct bd_vol_def **out, struct bd_err *err)
{
	xmlNode *root, *n, *t;
	xmlDoc *doc = read_doc(buf, len, "volume", &root, err);
	struct bd_vol_def *d;

	if (!doc)
		return err->code;
	d = calloc(1, sizeof(*d));
	if (!d) {
		xmlFreeDoc(doc);
		return bd_err_set(err, -ENOMEM, "out of memory");
	}
	d->type = attr(root, "type");
	d->name = text_of(child(root, "name"));
	if (!d->name || !*d->name) {
		bd_err_set(err, -EINVAL, "missing required element <name> in <volume>");
		goto fail;
	}
	if (bd_pool_check_name("volume", d->name, err) < 0)
		goto fail;
	d->key = text_of(child(root, "key"));
	if (scaled(child(root, "capacity"), "capacity", &d->capacity, &d->has_capacity, err) < 0 ||
	    scaled(child(root, "allocation"), "allocation", &d->allocation, &d->has_allocation,
		   err) < 0 ||
	    scaled(child(root, "physical"), "physical", &d->physical, &d->has_physical, err) < 0)
		goto fail;
	t = child(root, "target");
	d->path = text_of(child(t, "path"));
	if ((n = child(t, "format"))) {
		d->format = attr(n, "type");
		if (!d->format) {
			bd_err_set(err, -EINVAL, "missing 'type' attribute of <target><format>");
			goto fail;
		}
	}
	if (parse_perms(child(t, "permissions"), &d->perms, err) < 0)
		goto fail;
	d->compat = text_of(child(t, "compat"));
	if (d->compat && strcmp(d->compat, "0.10") && strcmp(d->compat, "1.1")) {
		bd_err_set(err, -EINVAL, "invalid <compat> '%s' (0.10 or 1.1)", d->compat);
		goto fail;
	}
	if (scaled(child(t, "clusterSize"), "clusterSize", &d->cluster_size, NULL, err) < 0)
		goto fail;
	if ((n = child(t, "features"))) {
		d->lazy_refcounts = child(n, "lazy_refcounts") != NULL;
		d->extended_l2 = child(n, "extended_l2") != NULL;
	}
	if ((n = child(root, "backingStore"))) {
		d->backing_path = text_of(child(n, "path"));
		if (!d->backing_path || !*d->backing_path) {
			bd_err_set(err, -EINVAL, "missing required element <backingStore><path>");
			goto fail;
		}
		if ((t = child(n, "format")))
			d->backing_format = attr(t, "type");
	}
	xmlFreeDoc(doc);
	*out = d;
	return 0;
fail:
	xmlFreeDoc(doc);
	bd_vol_def_free(d);
	return err->code ? err->code : -EINVAL;
}

void bd_vol_def_free(struct bd_vol_def *d)
{
	if (!d)
		return;
	free(d->type);
	free(d->name);
	free(d->key);
	free(d->path);
	free(d->format);
	free_perms(&d->perms);
	free(d->compat);
	free(d->backing_path);
	free(d->backing_format);
	free(d);
}

char *bd_vol_def_format(const struct bd_vol_def *d)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);
	if (!f)
		return NULL;
	fprintf(f, "<volume type='");
	esc(f, d->type ? d->type : "file");
	fprintf(f, "'>\n");
	elem_text(f, 2, "name", d->name);
	elem_text(f, 2, "key", d->key);
	if (d->has_capacity)
		fprintf(f, "  <capacity unit='bytes'>%" PRIu64 "</capacity>\n", d->capacity);
	if (d->has_allocation)
		fprintf(f, "  <allocation unit='bytes'>%" PRIu64 "</allocation>\n", d->allocation);
	if (d->has_physical)
		fprintf(f, "  <physical unit='bytes'>%" PRIu64 "</physical>\n", d->physical);
	if (d->path || d->format || d->compat || d->cluster_size || d->lazy_refcounts ||
	    d->extended_l2 || d->perms.mode >= 0 || d->perms.owner >= 0 || d->perms.group >= 0 ||
	    d->perms.label) {
		fprintf(f, "  <target>\n");
		elem_text(f, 4, "path", d->path);
		elem_attr(f, 4, "format", "type", d->format);
		format_perms(f, 4, &d->perms);
		elem_text(f, 4, "compat", d->compat);
		if (d->cluster_size)
			fprintf(f, "    <clusterSize unit='B'>%" PRIu64 "</clusterSize>\n",
				d->cluster_size);
		if (d->lazy_refcounts || d->extended_l2) {
			fprintf(f, "    <features>\n");
			if (d->lazy_refcounts)
				fprintf(f, "      <lazy_refcounts/>\n");
			if (d->extended_l2)
				fprintf(f, "      <extended_l2/>\n");
			fprintf(f, "    </features>\n");
		}
		fprintf(f, "  </target>\n");
	}
	if (d->backing_path) {
		fprintf(f, "  <backingStore>\n");
		elem_text(f, 4, "path", d->backing_path);
		elem_attr(f, 4, "format", "type", d->backing_format);
		fprintf(f, "  </backingStore>\n");
	}
	fprintf(f, "</volume>\n");
	if (fclose(f) != 0) {
		free(buf);
		return NULL;
	}
	return buf;
}
