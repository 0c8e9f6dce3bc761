/*
 * qcow2-reopen.c - blockdev-reopen of a qcow2 node: read-only to read-write and back, the L2
 * cache size and the discard options, while exports keep their connections (requests are held
 * back by q2_freeze() for the moment it takes).  What cannot change is refused before anything
 * changes: lazy-refcounts, load-snapshot, the children.
 *
 * Threading: control thread (the core has drained the node).
 */
#include "formats/qcow2-int.h"

#include <stdlib.h>
#include <string.h>

struct reopen_opts {
	uint64_t l2cache; /* 0: unchanged */
	bool has_lazy, lazy;
	bool pass_req, pass_other;
};

/* Read and check every option; nothing changes here. */
static int read_opts(struct q2 *s, json_t *opts, struct reopen_opts *o, struct bd_err *err)
{
	struct bd_node *node = s->node;
	const char *str;
	uint64_t ignored;
	bool b;
	int r;

	memset(o, 0, sizeof(*o));
	if ((r = bd_opts_size(opts, "l2-cache-size", &o->l2cache, err)) < 0 && r != -ENOENT)
		return r;
	if (r == -ENOENT && (r = bd_opts_size(opts, "cache-size", &o->l2cache, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_size(opts, "refcount-cache-size", &ignored, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_u64(opts, "cache-clean-interval", &ignored, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "lazy-refcounts", &o->lazy, err)) < 0 && r != -ENOENT)
		return r;
	o->has_lazy = r == 0;
	if (o->has_lazy && s->writable && o->lazy != s->lazy)
		return bd_err_set(err, -ENOTSUP, "Cannot change lazy-refcounts of node '%s' while "
						 "it is open read-write",
				  bd_node_name(node));
	o->pass_req = bd_node_common(node)->discard == BD_DISCARD_UNMAP;
	if ((r = bd_opts_bool(opts, "pass-discard-request", &o->pass_req, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "pass-discard-other", &o->pass_other, err)) < 0 &&
	    r != -ENOENT)
		return r;
	if ((r = bd_opts_bool(opts, "pass-discard-snapshot", &b, err)) < 0 && r != -ENOENT)
		return r;
	if ((r = bd_opts_str(opts, "overlap-check", &str, err)) < 0 && r != -ENOENT)
		return r;
	if (r == 0 && strcmp(str, "none") && strcmp(str, "constant") && strcmp(str, "cached") &&
	    strcmp(str, "all"))
		return bd_err_set(err, -EINVAL,
				  "Unsupported value '%s' for qcow2 option 'overlap-check'", str);
	if ((r = bd_opts_bool(opts, "discard-no-unref", &b, err)) < 0 && r != -ENOENT)
		return r;
	if (r == 0 && b)
		return bd_err_set(err, -ENOTSUP, "discard-no-unref is not supported");
	r = bd_opts_str(opts, "load-snapshot", &str, err);
	if (r < 0 && r != -ENOENT)
		return r;
	const struct q2_snapinfo *ls = s->loaded_snap >= 0 ? &s->snaps[s->loaded_snap] : NULL;
	if ((r == 0) != (ls != NULL) ||
	    (ls && strcmp(str, ls->id) && strcmp(str, ls->name)))
		return bd_err_set(err, -ENOTSUP, "Cannot change load-snapshot of node '%s'",
				  bd_node_name(node));
	if (!s->backing) {
		/* no backing child: only "none" can be repeated */
		json_t *v = json_object_get(opts, "backing");
		if (v && !json_is_null(v) && !(json_is_string(v) && !json_string_value(v)[0]))
			return bd_err_set(err, -ENOTSUP, "Cannot change the child 'backing'");
		if (v)
			bd_opts_mark_used(opts, "backing");
	}
	if (!bd_node_common(node)->read_only && s->writable == false) {
		if (ls)
			return bd_err_set(err, -EINVAL, "load-snapshot requires read-only=on");
		if (s->broken || (s->h.incompatible & Q2_INCOMPAT_CORRUPT))
			return bd_err_set(err, -EACCES,
					  "qcow2: Image is corrupt; cannot be opened read/write");
	}
	return 0;
}

/* A new L2 cache of n slots (the node is frozen: nothing pinned or loading). */
static int resize_cache(struct q2 *s, unsigned n, struct bd_err *err)
{
	struct q2_l2slot *ns = calloc(n, sizeof(*ns));

	if (!ns)
		return bd_err_set(err, -ENOMEM, "out of memory");
	for (unsigned i = 0; i < n; i++) {
		ns[i].tab = bd_io_alloc(s->cs);
		if (!ns[i].tab) {
			for (unsigned k = 0; k < i; k++)
				free(ns[k].tab);
			free(ns);
			return bd_err_set(err, -ENOMEM, "out of memory");
		}
	}
	for (unsigned i = 0; i < s->nslots; i++)
		free(s->slots[i].tab);
	free(s->slots);
	s->slots = ns;
	s->nslots = n;
	return 0;
}

int q2_reopen(struct bd_node *node, json_t *opts, struct bd_err *err)
{
	struct q2 *s = bd_node_priv(node);
	bool want_ro = bd_node_common(node)->read_only; /* the new value (the core set it) */
	struct reopen_opts o;
	int r = read_opts(s, opts, &o, err);

	if (r < 0)
		return r;
	q2_freeze(s);
	if (!want_ro && !s->writable) {
		s->writable = true;
		r = q2_make_writable(s, o.has_lazy, o.lazy, bd_node_size(q2_fnode(s)), err);
		if (r < 0) {
			s->writable = false;
			s->lazy = false;
			goto out;
		}
	} else if (want_ro && s->writable) {
		/* like a clean close: pending frees applied, the dirty bit of lazy refcounts
		 * cleared, the reserved room given back */
		q2_apply_frees_sync(s);
		if (s->lazy) {
			s->h.incompatible &= ~Q2_INCOMPAT_DIRTY;
			r = q2_write_header_fixed(s, err);
			if (r < 0)
				goto out;
			s->lazy = false;
		}
		q2_give_back_room(s);
		s->writable = false;
	}
	s->pass_discard_request = o.pass_req;
	s->pass_discard_other = o.pass_other;
	if (o.l2cache) {
		unsigned n = (unsigned)(o.l2cache / s->cs);
		if (n < Q2_MIN_SLOTS)
			n = Q2_MIN_SLOTS;
		if (n != s->nslots)
			r = resize_cache(s, n, err);
	}
out:
	q2_thaw(s);
	return r;
}
