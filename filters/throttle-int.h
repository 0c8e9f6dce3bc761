/*
 * throttle-int.h - between throttle-group.c (groups and their scheduling) and throttle.c (the
 * filter driver).  Private to filters/.
 *
 * A group is shared by every channel of every throttle node naming it; each such channel is a
 * member.  Members live on different I/O loops, so the group's buckets, its round-robin list
 * and the members' counts of queued requests sit behind the group's mutex, held only for the
 * arithmetic.  Queued requests themselves, and each member's timers, belong to the member's loop.
 */
#ifndef BLOCKD_THROTTLE_INT_H
#define BLOCKD_THROTTLE_INT_H

#include "blockd/blockd.h"
#include "filters/throttle-math.h"

struct thr_group;
struct thr_member;

/* Called on the member's loop, outside any lock, for a queued request the bucket now lets go.
 * Never called inside thr_member_submit(). */
typedef void thr_release_fn(void *opaque, struct bd_req *req);

/* [control] Look up group id and count one more user (a throttle node).  NULL with err set
 * ("Throttle group 'x' does not exist") if there is none. */
struct thr_group *thr_group_use(const char *id, struct bd_err *err);
/* [control] The user is gone (its node closed, so its members are closed too). */
void thr_group_unuse(struct thr_group *g);
const char *thr_group_id(const struct thr_group *g);

/* [loop] A new member of g on loop (the caller's).  NULL on out-of-memory. */
struct thr_member *thr_member_new(struct thr_group *g, struct bd_loop *loop,
				  thr_release_fn *release, void *opaque);
/* [loop] Leave the group.  Requests still queued (there should be none: the node is drained
 * first) are handed back through fail(opaque, req) so the caller can complete them. */
void thr_member_close(struct thr_member *m, thr_release_fn *fail);

/* [loop] Ask to send req (req->len bytes) in direction dir.  true: it may go now (it was
 * accounted; send it).  false: it was queued (linked through req->next) and will come back
 * through the release callback on this loop, in order within its direction. */
bool thr_member_submit(struct thr_member *m, struct bd_req *req, enum thr_dir dir);

/* [control] A drain of a member node begins (limits off, queued requests released at once) or
 * ends (limits on again).  Nests. */
void thr_group_drain(struct thr_group *g, bool begin);

#endif /* BLOCKD_THROTTLE_INT_H */
