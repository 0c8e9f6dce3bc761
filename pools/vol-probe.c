/*
 * vol-probe.c - what a pool volume's file holds: the format signature, virtual size and backing
 * file that a refresh lists (qcow2, qcow, vmdk sparse and descriptor, qed, vdi, vpc, else raw).
 * [any thread: a pure parser; the caller's read callback does the only I/O]
 *
 * The bytes are guest-controlled (a volume handed to a VM can be rewritten into any header), so
 * the parser trusts nothing: every offset and length is checked against the header buffer or
 * the file size in 64-bit arithmetic, loops advance by at least 8 bytes, and at most two
 * callback reads happen (backing file names outside the header), each at most 1 KiB.  A header
 * that is only partly valid still gets its format (the format driver refuses it on open with
 * its own error); a backing file name that cannot be read or shown sets backing_odd, which
 * makes bd_vol_open() ask for an explicit format.  bd_vol_probe_set() copies a result into a
 * cached volume (control thread).
 */
#include "pools/pools-int.h"

#include <stdlib.h>
#include <string.h>

static uint32_t be32(const unsigned char *b)
{
	return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t be64(const unsigned char *b)
{
	return (uint64_t)be32(b) << 32 | be32(b + 4);
}

static uint32_t le32(const unsigned char *b)
{
	return (uint32_t)b[3] << 24 | (uint32_t)b[2] << 16 | (uint32_t)b[1] << 8 | b[0];
}

static uint64_t le64(const unsigned char *b)
{
	return (uint64_t)le32(b + 4) << 32 | le32(b);
}

/* Sizes are shown as JSON integers (signed 64 bits): a hostile header cannot go negative. */
static uint64_t clamp_size(uint64_t v)
{
	return v > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : v;
}

/* Valid UTF-8 without control characters (nor NUL): safe in JSON and XML output. */
static bool printable(const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n;) {
		unsigned c = s[i], k;
		uint32_t cp;
		if (c < 0x20 || c == 0x7f)
			return false;
		if (c < 0x80) {
			i++;
			continue;
		}
		if (c >= 0xc2 && c <= 0xdf)
			k = 1, cp = c & 0x1f;
		else if (c >= 0xe0 && c <= 0xef)
			k = 2, cp = c & 0x0f;
		else if (c >= 0xf0 && c <= 0xf4)
			k = 3, cp = c & 0x07;
		else
			return false;
		if (k >= n - i)
			return false;
		for (unsigned j = 1; j <= k; j++) {
			if ((s[i + j] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (s[i + j] & 0x3f);
		}
		if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp < 0xa0))
			return false;
		i += k + 1;
	}
	return true;
}

/* The backing file name of len bytes at off: from the header buffer when it lies there, else
 * through the callback.  Sets backing_odd when it cannot be read or shown. */
static void read_backing(struct bd_vol_probe *r, const unsigned char *h, size_t n, uint64_t size,
			 uint64_t off, uint64_t len, bd_vol_probe_read_fn rd, void *opaque)
{
	unsigned char buf[BD_VOL_PROBE_NAME_MAX];
	long got = -1;

	r->has_backing = true;
	if (len == 0 || len >= sizeof(buf) || off > size || len > size - off) {
		r->backing_odd = true;
		return;
	}
	if (off < n && len <= n - off) {
		memcpy(buf, h + off, (size_t)len);
		got = (long)len;
	} else if (rd) {
		got = rd(opaque, off, buf, (size_t)len);
	}
	if (got != (long)len || !printable(buf, (size_t)len)) {
		r->backing_odd = true;
		return;
	}
	memcpy(r->backing_path, buf, (size_t)len);
	r->backing_path[len] = '\0';
}

/* A backing format name as QEMU spells them (letters, digits, '_', '-', '.'). */
static void set_backing_format(struct bd_vol_probe *r, const unsigned char *s, size_t len)
{
	if (len == 0 || len >= sizeof(r->backing_format))
		return;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-' || s[i] == '.'))
			return;
	memcpy(r->backing_format, s, len);
	r->backing_format[len] = '\0';
}

#define QCOW2_EXT_BACKING_FORMAT 0xE2792ACAu

static void probe_qcow2(struct bd_vol_probe *r, const unsigned char *h, size_t n, uint64_t size,
			bd_vol_probe_read_fn rd, void *opaque)
{
	uint32_t version = be32(h + 4), cbits = be32(h + 20);
	uint64_t boff = be64(h + 8), blen = be32(h + 16), hlen = 72;

	r->format = "qcow2";
	r->capacity = clamp_size(be64(h + 24));
	if (cbits >= 9 && cbits <= 21)
		r->cluster_size = 1ull << cbits;
	r->compat = version >= 3 ? "1.1" : "0.10";
	if (version >= 3) {
		hlen = 104;
		if (n >= 104) {
			uint64_t incompat = be64(h + 72), compat = be64(h + 80);
			r->extended_l2 = incompat & (1u << 4);
			r->lazy_refcounts = compat & 1;
			hlen = be32(h + 100);
			if (hlen < 104)
				hlen =
				    UINT64_MAX; /* corrupt: no extensions (the driver refuses it) */
		}
	}
	if (boff)
		read_backing(r, h, n, size, boff, blen, rd, opaque);
	/* Header extensions, inside the buffer only: type, length, data padded to 8 bytes.  The
	 * offset is 64-bit and grows by at least 8 each turn (a length near 4 GiB ends the walk
	 * instead of wrapping back to the same extension). */
	for (uint64_t off = hlen; off <= n && n - off >= 8;) {
		uint32_t type = be32(h + off);
		uint64_t len = be32(h + off + 4);
		if (type == 0 || len > n - off - 8)
			break;
		if (type == QCOW2_EXT_BACKING_FORMAT)
			set_backing_format(r, h + off + 8, (size_t)len);
		off += 8 + ((len + 7) & ~7ull);
	}
}

#define QED_F_BACKING_FILE 1u
#define QED_F_BACKING_FORMAT_NO_PROBE 4u

static void probe_qed(struct bd_vol_probe *r, const unsigned char *h, size_t n, uint64_t size,
		      bd_vol_probe_read_fn rd, void *opaque)
{
	uint64_t features = le64(h + 16);

	r->format = "qed";
	r->capacity = clamp_size(le64(h + 48));
	if (features & QED_F_BACKING_FILE) {
		read_backing(r, h, n, size, le32(h + 56), le32(h + 60), rd, opaque);
		if (features & QED_F_BACKING_FORMAT_NO_PROBE)
			strcpy(r->backing_format, "raw");
	}
}

/* A VHD footer's virtual size, by the rule QEMU (and blockd's vpc driver) use: the CHS
 * geometry, except for creators known to size by current_size or a maximal geometry.
 * f has at least 64 bytes. */
static uint64_t vpc_size(const unsigned char *f)
{
	uint64_t cur = be64(f + 48);
	uint64_t chs = (uint64_t)((unsigned)f[56] << 8 | f[57]) * f[58] * f[59];
	static const char *const by_size[] = {"win ", "qem2", "d2v ", "CTXS", "tap"};
	bool use_chs = chs != 65535ull * 16 * 255;
	for (size_t i = 0; i < sizeof(by_size) / sizeof(by_size[0]); i++)
		if (!memcmp(f + 28, by_size[i], strlen(by_size[i])))
			use_chs = false;
	return clamp_size(use_chs ? chs * 512 : cur & ~511ull);
}

/* The virtual size of a vmdk descriptor: its extent lines ("RW 2097152 SPARSE ...") add up.
 * Each count is bounded, and so is the sum (at most 2^54 sectors). */
static uint64_t vmdk_descriptor_size(const unsigned char *t, size_t len)
{
	static const char *const access[] = {"RW", "RDONLY", "NOACCESS"};
	uint64_t sectors = 0;

	for (size_t i = 0; i < len;) {
		const unsigned char *line = t + i, *end = memchr(line, '\n', len - i);
		size_t l = end ? (size_t)(end - line) : len - i, p = 0;
		i += l + 1;
		for (size_t a = 0; a < 3 && !p; a++) {
			size_t al = strlen(access[a]);
			if (l > al && !memcmp(line, access[a], al) &&
			    (line[al] == ' ' || line[al] == '\t'))
				p = al;
		}
		if (!p)
			continue;
		while (p < l && (line[p] == ' ' || line[p] == '\t'))
			p++;
		uint64_t c = 0;
		size_t digits = 0;
		while (p < l && line[p] >= '0' && line[p] <= '9' && digits < 16) {
			c = c * 10 + (uint64_t)(line[p++] - '0');
			digits++;
		}
		if (!digits || (p < l && line[p] >= '0' && line[p] <= '9') || c >= (1ull << 50))
			continue;
		sectors += c;
		if (sectors > (1ull << 54))
			sectors = 1ull << 54;
	}
	return sectors * 512;
}

void bd_vol_probe(const unsigned char *h, size_t n, uint64_t size, bd_vol_probe_read_fn rd,
		  void *opaque, struct bd_vol_probe *r)
{
	memset(r, 0, sizeof(*r));
	r->format = "raw";
	r->capacity = clamp_size(size);
	if (n > size)
		n = (size_t)size; /* the file is what it is: never read past its end */
	if (n >= 72 && !memcmp(h, "QFI\xfb", 4)) {
		uint32_t version = be32(h + 4);
		if (version >= 2) {
			probe_qcow2(r, h, n, size, rd, opaque);
		} else if (version == 1) {
			r->format = "qcow"; /* QEMU's qcow (v1): listed, not opened by blockd */
			r->capacity = clamp_size(be64(h + 24));
		}
	} else if (n >= 20 && !memcmp(h, "KDMV", 4)) {
		/* monolithicSparse / streamOptimized: the capacity in sectors at 12 */
		r->format = "vmdk";
		uint64_t sectors = le64(h + 12);
		r->capacity = sectors >= (1ull << 54) ? (uint64_t)INT64_MAX : sectors * 512;
	} else if (n >= 21 && !memcmp(h, "# Disk DescriptorFile", 21)) {
		r->format = "vmdk"; /* a descriptor: the extents' sectors add up */
		r->capacity = vmdk_descriptor_size(h, n);
	} else if (n >= 64 && !memcmp(h, "QED\0", 4)) {
		probe_qed(r, h, n, size, rd, opaque);
	} else if (n >= 0x178 && le32(h + 0x40) == 0xbeda107fu) {
		r->format = "vdi";
		r->capacity = clamp_size(le64(h + 0x170));
	} else if (n >= 64 && !memcmp(h, "conectix", 8)) {
		r->format = "vpc"; /* dynamic: a copy of the footer at 0 */
		r->capacity = vpc_size(h);
	}
	/* A fixed VHD (its footer only at the end) stays raw, as in QEMU's and libvirt's probes:
	 * a guest writes its raw volume's last sector freely, so that footer proves nothing. */
}

static int set_str(char **dst, const char *s)
{
	free(*dst);
	*dst = s && *s ? strdup(s) : NULL;
	return s && *s && !*dst ? -ENOMEM : 0;
}

int bd_vol_probe_set(struct vol *v, const struct bd_vol_probe *r)
{
	int e = 0;
	e |= set_str(&v->format, r->format);
	e |= set_str(&v->compat, r->compat);
	e |= set_str(&v->backing_path, r->backing_path);
	e |= set_str(&v->backing_format, r->backing_format);
	v->capacity = r->capacity;
	v->cluster_size = r->cluster_size;
	v->lazy_refcounts = r->lazy_refcounts;
	v->extended_l2 = r->extended_l2;
	v->backing_odd = r->backing_odd;
	return e ? -ENOMEM : 0;
}
