/*
 * vmdk-parse.c - pure VMDK parsing for the read-only vmdk driver (formats/vmdk.c) and its fuzzer:
 * the text descriptor, hosted sparse extents (header or streamOptimized footer, grain directory,
 * grain tables), the guest-offset map over a list of extents and the inflation of compressed
 * grains.  No I/O but through a struct ro_src; callable from any thread.
 *
 * Sparse extent (VMware's "hosted sparse extent", little-endian): a 512-byte header "KDMV" with
 * capacity and grain size in sectors, numGTEsPerGT, the grain directory's sector (or -1: the
 * header is in the footer 1536 bytes before the end, streamOptimized), flags (bit 2: GTE 1 means
 * a zero grain; bit 16: compressed grains; bit 17: markers) and the compression algorithm
 * (1 = deflate, zlib-wrapped).  A grain directory entry is the sector of a grain table; a grain
 * table entry the sector of a grain (0 = unallocated).  A compressed grain starts with a marker:
 * 64-bit LBA, 32-bit size, then size bytes of zlib data.
 */
#include "formats/ro-image-int.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define VMDK_FLAG_ZERO_GRAIN (1u << 2)
#define VMDK_FLAG_COMPRESSED (1u << 16)
#define VMDK_FLAG_MARKERS (1u << 17)
#define VMDK_GD_AT_END 0xffffffffffffffffull
#define VMDK_MARKER_EOS 0u
#define VMDK_MARKER_FOOTER 3u
#define VMDK_MAX_EXTENTS 65536u
#define VMDK_MAX_SECTORS (1ull << 53) /* so that offset + length stays below 2^63 bytes */

/* ================================================================================================
 * Descriptor
 */
static char *trim(char *s)
{
	char *e;
	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r'))
		*--e = 0;
	return s;
}

static char *unquote(char *s)
{
	size_t n = strlen(s);
	if (n >= 2 && s[0] == '"' && s[n - 1] == '"') {
		s[n - 1] = 0;
		return s + 1;
	}
	return s;
}

static int parse_extent(char *line, struct vmdk_desc *d, char *msg, size_t msglen)
{
	char *p = line, *end, *name = NULL;
	char type[16];
	uint64_t sectors, offset = 0;
	size_t tl = 0;
	struct vmdk_extent *e;

	if (!strncmp(p, "NOACCESS", 8)) {
		snprintf(msg, msglen, "NOACCESS extents are not supported");
		return -ENOTSUP;
	}
	p += !strncmp(p, "RW", 2) ? 2 : 6; /* RW or RDONLY (checked by the caller) */
	while (*p == ' ' || *p == '\t')
		p++;
	if (!isdigit((unsigned char)*p))
		goto bad;
	errno = 0;
	sectors = strtoull(p, &end, 10);
	if (errno || end == p || sectors == 0 || sectors > VMDK_MAX_SECTORS)
		goto bad;
	p = end;
	while (*p == ' ' || *p == '\t')
		p++;
	while (*p && *p != ' ' && *p != '\t' && tl < sizeof(type) - 1)
		type[tl++] = *p++;
	type[tl] = 0;
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p == '"') {
		name = ++p;
		p = strchr(p, '"');
		if (!p || p == name)
			goto bad;
		*p++ = 0;
		while (*p == ' ' || *p == '\t')
			p++;
		if (*p) {
			if (!isdigit((unsigned char)*p))
				goto bad;
			errno = 0;
			offset = strtoull(p, &end, 10);
			if (errno || offset > VMDK_MAX_SECTORS || *trim(end))
				goto bad;
		}
	} else if (*p) {
		goto bad;
	}
	if (d->n >= VMDK_MAX_EXTENTS) {
		snprintf(msg, msglen, "too many extents (more than %u)", VMDK_MAX_EXTENTS);
		return -EINVAL;
	}
	e = realloc(d->ext, (d->n + 1) * sizeof(*e));
	if (!e) {
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	d->ext = e;
	e = &d->ext[d->n];
	memset(e, 0, sizeof(*e));
	e->sectors = sectors;
	e->offset = offset * 512;
	if (!strcmp(type, "FLAT") || !strcmp(type, "VMFS")) {
		e->type = VMDK_EXT_FLAT;
	} else if (!strcmp(type, "SPARSE") || !strcmp(type, "VMFSSPARSE")) {
		e->type = VMDK_EXT_SPARSE;
	} else if (!strcmp(type, "ZERO")) {
		e->type = VMDK_EXT_ZERO;
		name = NULL;
	} else {
		snprintf(msg, msglen, "Unsupported extent type '%s'", type);
		return -ENOTSUP;
	}
	if (e->type != VMDK_EXT_ZERO) {
		if (!name)
			goto bad;
		e->file = strdup(name);
		if (!e->file) {
			snprintf(msg, msglen, "out of memory");
			return -ENOMEM;
		}
	}
	d->n++;
	return 0;
bad:
	snprintf(msg, msglen, "Invalid extent line: %.200s", line);
	return -EINVAL;
}

static const char *const vmdk_types[] = {
    "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
    "streamOptimized",	"vmfs",		  "vmfsSparse",		  NULL,
};

int vmdk_desc_parse(const char *text, size_t len, struct vmdk_desc *d, char *msg, size_t msglen)
{
	char *buf, *line, *save = NULL;
	bool have_type = false;
	int r = 0;

	memset(d, 0, sizeof(*d));
	buf = malloc(len + 1);
	if (!buf) {
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	memcpy(buf, text, len);
	buf[len] = 0; /* a NUL inside ends the text */
	for (line = strtok_r(buf, "\n", &save); line && r == 0;
	     line = strtok_r(NULL, "\n", &save)) {
		char *l = trim(line), *eq;
		if (!*l || *l == '#')
			continue;
		if ((!strncmp(l, "RW", 2) && (l[2] == ' ' || l[2] == '\t')) ||
		    (!strncmp(l, "RDONLY", 6) && (l[6] == ' ' || l[6] == '\t')) ||
		    (!strncmp(l, "NOACCESS", 8) && (l[8] == ' ' || l[8] == '\t'))) {
			r = parse_extent(l, d, msg, msglen);
			continue;
		}
		eq = strchr(l, '=');
		if (!eq)
			continue;
		*eq = 0;
		char *key = trim(l), *val = unquote(trim(eq + 1));
		if (!strcmp(key, "createType")) {
			snprintf(d->create_type, sizeof(d->create_type), "%s", val);
			have_type = true;
		} else if (!strcmp(key, "parentFileNameHint") && *val) {
			free(d->parent_hint);
			d->parent_hint = strdup(val);
			if (!d->parent_hint) {
				snprintf(msg, msglen, "out of memory");
				r = -ENOMEM;
			}
		} else if (!strcmp(key, "CID")) {
			d->cid = (uint32_t)strtoul(val, NULL, 16);
		} else if (!strcmp(key, "parentCID")) {
			d->parent_cid = (uint32_t)strtoul(val, NULL, 16);
			d->has_parent_cid = true;
		}
	}
	free(buf);
	if (r == 0 && !have_type) {
		snprintf(msg, msglen, "invalid VMDK image descriptor (no createType)");
		r = -EINVAL;
	}
	if (r == 0) {
		bool known = false;
		for (int i = 0; vmdk_types[i]; i++)
			known |= !strcmp(vmdk_types[i], d->create_type);
		if (!known) {
			snprintf(msg, msglen, "Unsupported image type '%s'", d->create_type);
			r = -ENOTSUP;
		}
	}
	if (r < 0)
		vmdk_desc_free(d);
	return r;
}

void vmdk_desc_free(struct vmdk_desc *d)
{
	for (unsigned i = 0; i < d->n; i++) {
		free(d->ext[i].file);
		vmdk_sparse_free(&d->ext[i].sp);
	}
	free(d->ext);
	free(d->parent_hint);
	d->ext = NULL;
	d->parent_hint = NULL;
	d->n = 0;
}

/* ================================================================================================
 * Sparse extents
 */
int vmdk_sparse_parse(const struct ro_src *src, struct vmdk_sparse *sp, char *msg, size_t msglen)
{
	uint8_t hb[512], f[1536];
	const uint8_t *h = hb;
	uint32_t flags, comp;
	uint64_t gd, overhead, ngd, span, meta = 0;
	uint8_t *raw = NULL;
	int r = 0;

	memset(sp, 0, sizeof(*sp));
	if (ro_src_read(src, 0, hb, sizeof(hb)) < 0 || memcmp(hb, "KDMV", 4)) {
		snprintf(msg, msglen, "not a VMDK sparse extent (no KDMV magic)");
		return -EINVAL;
	}
	if (ro_le64(hb + 56) == VMDK_GD_AT_END) {
		/* streamOptimized: the real header is in the footer. */
		if (src->size < 2048 || ro_src_read(src, src->size - 1536, f, sizeof(f)) < 0 ||
		    ro_le32(f + 8) != 0 || ro_le32(f + 12) != VMDK_MARKER_FOOTER ||
		    memcmp(f + 512, "KDMV", 4) || ro_le64(f + 1024) != 0 ||
		    ro_le32(f + 1032) != 0 || ro_le32(f + 1036) != VMDK_MARKER_EOS) {
			snprintf(msg, msglen, "Invalid footer (streamOptimized image)");
			return -EINVAL;
		}
		h = f + 512;
		if (ro_le64(h + 56) == VMDK_GD_AT_END) {
			snprintf(msg, msglen, "Invalid footer: no grain directory");
			return -EINVAL;
		}
	}
	sp->version = ro_le32(h + 4);
	flags = ro_le32(h + 8);
	sp->capacity = ro_le64(h + 12);
	sp->grain = ro_le64(h + 20);
	sp->gtes = ro_le32(h + 44);
	gd = ro_le64(h + 56);
	overhead = ro_le64(h + 64);
	comp = ro_le16(h + 77);
	sp->zero_gte = flags & VMDK_FLAG_ZERO_GRAIN;
	sp->compressed = comp == 1;
	sp->markers = flags & VMDK_FLAG_MARKERS;
	if (sp->version < 1 || sp->version > 3) {
		snprintf(msg, msglen, "Unsupported VMDK version %" PRIu32, sp->version);
		return -ENOTSUP;
	}
	if (comp > 1) {
		snprintf(msg, msglen, "Unsupported VMDK compression algorithm %" PRIu32, comp);
		return -ENOTSUP;
	}
	if (sp->gtes == 0 || sp->gtes > 512) {
		snprintf(msg, msglen, "Image is corrupt: grain table size %" PRIu32 " (1..512)",
			 sp->gtes);
		return -EINVAL;
	}
	if (sp->grain == 0 || sp->grain > 0x200000 ||
	    (sp->compressed && sp->grain > (64u << 20) / 512)) {
		snprintf(msg, msglen,
			 "Invalid granularity %" PRIu64 " sectors, image may be corrupt",
			 sp->grain);
		return -EINVAL;
	}
	if (sp->capacity > VMDK_MAX_SECTORS) {
		snprintf(msg, msglen, "Image is corrupt: capacity %" PRIu64 " sectors",
			 sp->capacity);
		return -EINVAL;
	}
	if (overhead > src->size / 512) {
		snprintf(msg, msglen, "File truncated, expecting at least %" PRIu64 " bytes",
			 overhead * 512);
		return -EINVAL;
	}
	span = (uint64_t)sp->gtes * sp->grain;
	ngd = sp->capacity / span + (sp->capacity % span ? 1 : 0);
	if (ngd > (32u << 20)) {
		snprintf(msg, msglen, "L1 size too big");
		return -EINVAL;
	}
	if (gd > src->size / 512 || ngd * 4 > src->size - gd * 512) {
		snprintf(msg, msglen,
			 "Image is corrupt: grain directory (%" PRIu64 " entries at sector %" PRIu64
			 ") lies past the end of the file",
			 ngd, gd);
		return -EINVAL;
	}
	uint64_t doff = ro_le64(h + 28), dsz = ro_le64(h + 36);
	if (doff && dsz && doff <= src->size / 512 && dsz <= (1u << 20) / 512 &&
	    dsz * 512 <= src->size - doff * 512) {
		sp->desc_off = doff * 512;
		sp->desc_size = dsz * 512;
	}
	sp->ngd = ngd;
	sp->gt = calloc(ngd ? ngd : 1, sizeof(*sp->gt));
	raw = malloc(ngd * 4 > (uint64_t)sp->gtes * 4 ? ngd * 4 : (uint64_t)sp->gtes * 4);
	if (!sp->gt || !raw) {
		free(raw);
		vmdk_sparse_free(sp);
		snprintf(msg, msglen, "out of memory");
		return -ENOMEM;
	}
	r = ro_src_read(src, gd * 512, raw, ngd * 4);
	if (r < 0) {
		snprintf(msg, msglen, "Could not read the grain directory: %s", strerror(-r));
		goto fail;
	}
	uint32_t *gde = malloc(ngd ? ngd * 4 : 1);
	if (!gde) {
		r = -ENOMEM;
		snprintf(msg, msglen, "out of memory");
		goto fail;
	}
	for (uint64_t i = 0; i < ngd; i++)
		gde[i] = ro_le32(raw + 4 * i);
	for (uint64_t i = 0; i < ngd && r == 0; i++) {
		uint64_t gt = (uint64_t)gde[i] * 512, gtb = (uint64_t)sp->gtes * 4;
		if (!gde[i])
			continue;
		if (gt > src->size || gtb > src->size - gt) {
			snprintf(msg, msglen,
				 "Image is corrupt: grain table %" PRIu64 " (sector %" PRIu32
				 ") lies past the end of the file",
				 i, gde[i]);
			r = -EINVAL;
			break;
		}
		meta += gtb;
		if (meta > RO_MAX_META_BYTES) {
			snprintf(msg, msglen, "the grain tables need more than %llu MiB of memory",
				 RO_MAX_META_BYTES >> 20);
			r = -EFBIG;
			break;
		}
		sp->gt[i] = malloc(gtb);
		if (!sp->gt[i]) {
			snprintf(msg, msglen, "out of memory");
			r = -ENOMEM;
			break;
		}
		r = ro_src_read(src, gt, raw, gtb);
		if (r < 0) {
			snprintf(msg, msglen, "Could not read a grain table: %s", strerror(-r));
			break;
		}
		for (uint32_t k = 0; k < sp->gtes; k++) {
			uint32_t e = ro_le32(raw + 4ull * k);
			sp->gt[i][k] = e;
			if (e == 0 || (e == 1 && sp->zero_gte))
				continue;
			if ((uint64_t)e * 512 >= src->size) {
				snprintf(msg, msglen,
					 "Image is corrupt: grain %" PRIu64 " (sector %" PRIu32
					 ") lies past the end of the file",
					 i * sp->gtes + k, e);
				r = -EINVAL;
				break;
			}
		}
		if (r == 0 && bd_buf_is_zero(raw, gtb)) {
			/* Preallocated but empty (QEMU's monolithicSparse): keep nothing. */
			free(sp->gt[i]);
			sp->gt[i] = NULL;
			meta -= gtb;
		}
	}
	free(gde);
	if (r < 0)
		goto fail;
	free(raw);
	return 0;
fail:
	free(raw);
	vmdk_sparse_free(sp);
	return r;
}

void vmdk_sparse_free(struct vmdk_sparse *sp)
{
	if (sp->gt) {
		for (uint64_t i = 0; i < sp->ngd; i++)
			free(sp->gt[i]);
		free(sp->gt);
	}
	sp->gt = NULL;
	sp->ngd = 0;
}

/* ================================================================================================
 * Map and inflation
 */
static const struct vmdk_extent *find_extent(const struct vmdk_map *m, uint64_t off)
{
	unsigned lo = 0, hi = m->n;

	while (lo < hi) {
		unsigned mid = lo + (hi - lo) / 2;
		const struct vmdk_extent *e = &m->ext[mid];
		if (off < e->start)
			hi = mid;
		else if (off - e->start >= e->sectors * 512)
			lo = mid + 1;
		else
			return e;
	}
	return NULL;
}

static int gte_kind(const struct vmdk_sparse *sp, uint32_t e)
{
	return e == 0			  ? RO_UNALLOC
	       : (e == 1 && sp->zero_gte) ? RO_ZERO
	       : sp->compressed		  ? RO_COMPRESSED
					  : RO_DATA;
}

int vmdk_map(const void *fmt, uint64_t off, uint64_t len, struct ro_seg *seg)
{
	const struct vmdk_map *m = fmt;
	const struct vmdk_extent *e = find_extent(m, off);
	uint64_t rel, rem, n;

	if (!e)
		return -EIO;
	rel = off - e->start;
	rem = e->sectors * 512 - rel;
	if (len > rem)
		len = rem;
	seg->len = len;
	switch (e->type) {
	case VMDK_EXT_ZERO:
		seg->kind = RO_ZERO;
		return 0;
	case VMDK_EXT_FLAT:
		seg->kind = RO_DATA;
		seg->recurse = true;
		seg->child = e->child;
		seg->host = e->offset + rel;
		return 0;
	case VMDK_EXT_SPARSE:
		break;
	}
	const struct vmdk_sparse *sp = &e->sp;
	uint64_t gb = sp->grain * 512, gi = rel / gb, in = rel % gb;
	uint64_t gdi = gi / sp->gtes, gti = gi % sp->gtes;

	if (rel >= sp->capacity * 512 || gdi >= sp->ngd || !sp->gt[gdi]) {
		seg->kind = RO_UNALLOC;
		if (rel < sp->capacity * 512) {
			n = (sp->gtes - gti) * gb - in;
			if (n < len)
				seg->len = n;
		}
		return 0;
	}
	uint32_t gte = sp->gt[gdi][gti];
	seg->kind = (enum ro_kind)gte_kind(sp, gte);
	n = gb - in;
	seg->child = e->child;
	if (seg->kind == RO_DATA) {
		seg->host = (uint64_t)gte * 512 + in;
	} else if (seg->kind == RO_COMPRESSED) {
		seg->host = (uint64_t)gte * 512;
		seg->grain_off = in;
		seg->grain_size = gb;
	} else {
		while (n < len && gti + 1 < sp->gtes &&
		       gte_kind(sp, sp->gt[gdi][gti + 1]) == (int)seg->kind) {
			gti++;
			n += gb;
		}
	}
	if (n < len)
		seg->len = n;
	return 0;
}

int vmdk_inflate(const void *fmt, const struct ro_seg *seg, const uint8_t *in, size_t inlen,
		 uint8_t *out)
{
	const struct vmdk_map *m = fmt;
	const uint8_t *data = in;
	size_t dlen = inlen;
	bool markers = false;
	z_stream z;
	int zr;

	for (unsigned i = 0; i < m->n; i++)
		if (m->ext[i].type == VMDK_EXT_SPARSE && m->ext[i].child == seg->child)
			markers = m->ext[i].sp.markers;
	if (markers) {
		if (inlen < 12)
			return -EIO;
		dlen = ro_le32(in + 8);
		data = in + 12;
		if (dlen == 0 || dlen > inlen - 12)
			return -EIO;
	}
	memset(&z, 0, sizeof(z));
	if (inflateInit(&z) != Z_OK)
		return -EIO;
	z.next_in = (Bytef *)(uintptr_t)data;
	z.avail_in = (uInt)(dlen > UINT32_MAX ? UINT32_MAX : dlen);
	z.next_out = out;
	z.avail_out = (uInt)seg->grain_size;
	zr = inflate(&z, Z_FINISH);
	size_t got = seg->grain_size - z.avail_out;
	inflateEnd(&z);
	if (zr != Z_STREAM_END)
		return -EIO;
	/* A short last grain (capacity not a multiple of the grain) reads zeroes after its end. */
	memset(out + got, 0, seg->grain_size - got);
	return 0;
}
