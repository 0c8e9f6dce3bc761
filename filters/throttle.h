/*
 * throttle.h - the public API of the throttle module (filters/): throttle-group objects and the
 * "throttle" filter driver.  The object type and the driver are reached through the generated
 * tables (bd_objtype_throttle_group, bd_drv_throttle); this header is for the control socket
 * (qom-set / qom-get of a group's "limits" and x- properties, block_set_io_throttle).
 */
#ifndef BLOCKD_THROTTLE_H
#define BLOCKD_THROTTLE_H

#include "blockd/blockd.h"

extern const struct bd_object_type bd_objtype_throttle_group;
extern const struct bd_driver bd_drv_throttle;

/* [control] Change the limits of group group_id at run time, like QEMU's qom-set of the group's
 * "limits" property: limits is a ThrottleLimits object ({"iops-total": 100, "bps-read-max": ...},
 * integers or decimal strings), borrowed.  Keys not given keep their value; the result is
 * validated as a whole (QEMU's messages) and installed atomically with empty buckets.  Queued
 * requests of every node in the group are re-examined at once.  0, or -ENOENT (no such group)
 * or -EINVAL with err set. */
int bd_throttle_group_set_limits(const char *group_id, json_t *limits, struct bd_err *err);

/* [control] The limits of group group_id as a new ThrottleLimits object with all 19 keys (like
 * QEMU's qom-get of "limits"), owned by the caller.  NULL with -ENOENT in err if no such group. */
json_t *bd_throttle_group_get_limits(const char *group_id, struct bd_err *err);

/* [control] One x- property of a group ("x-iops-total", ...) for qom-get: 0 and *value, or
 * -ENOENT (no such group) / -EINVAL (no such property) with err set.  Like QEMU, x- properties
 * cannot be set after creation: use bd_throttle_group_set_limits(). */
int bd_throttle_group_get_prop(const char *group_id, const char *prop, int64_t *value,
			       struct bd_err *err);

/* [control] Does a throttle-group with this id exist? */
bool bd_throttle_group_exists(const char *group_id);

#endif /* BLOCKD_THROTTLE_H */
