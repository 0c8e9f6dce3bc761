#!/bin/bash
# meson-suite: slow
# meson-timeout: 300
# blockd is killed (SIGKILL) and restarted while a QEMU guest writes to its vhost-user-blk disk
# through two queues.  QEMU's chardev has reconnect=1; with in-flight tracking (GET/SET_INFLIGHT_FD)
# the new blockd resubmits what the old one left in flight: the guest sees no I/O error and its
# data is intact, in the guest and in the image.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
vub_guest_need

cat >"$T/test.sh" <<'GUEST'
d=vda
dd if=/dev/urandom of=/tmp/pat bs=1M count=16 2>/dev/null
err=0
r=1
while [ $r -le 12 ]; do
	echo "GUEST: round $r"
	taskset 1 dd if=/tmp/pat of=/dev/$d bs=64k count=128 oflag=direct 2>/tmp/e1 || { err=1; cat /tmp/e1; }  &
	taskset 2 dd if=/tmp/pat of=/dev/$d bs=64k count=128 skip=128 seek=128 oflag=direct 2>/tmp/e2 || { err=1; cat /tmp/e2; }
	wait
	r=$((r+1))
done
dd if=/dev/$d of=/tmp/back bs=1M count=16 iflag=direct 2>/dev/null || err=1
cmp /tmp/pat /tmp/back && echo "GUEST: readback OK" || echo "GUEST: readback MISMATCH"
echo "GUEST: md5 $(md5sum < /tmp/pat | cut -d' ' -f1)"
dmesg | grep -i "I/O error" && err=1
echo "GUEST: errors $err"
GUEST
vub_guest_build "$T/test.sh"

bd_sparse_image "$T/img" 64M
# A throttle filter keeps requests in flight inside blockd, so that every kill hits some: at
# 150 IOPS a round's 256 writes take about 1.7 s, and each kill comes 0.5 s into a round,
# when both dd processes have requests waiting in the bucket (kills right at a round's start
# sometimes found nothing in flight under ASan and TCG).
args=(--object throttle-group,id=tg,x-iops-total=150
	--blockdev driver=file,node-name=f,filename="$T/img"
	--blockdev driver=raw,node-name=r,file=f
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=r
	--export type=vhost-user-blk,id=v,node-name=t,addr.type=unix,addr.path="$T/vub.sock",writable=on,num-queues=2)
# vub-guest-reconnect-packed.sh runs this with packed virtqueues; the queue start line (debug) shows
# which ring type the guest uses
[ -z "${VUB_GUEST_DEVOPTS:-}" ] || args+=(--log-level debug)
bd_start "${args[@]}"
first=$BD_PID

VUB_CHARDEV_OPTS=",reconnect=1" vub_guest_start "$T/vub.sock" 2 "${VUB_GUEST_DEVOPTS:-}"
bd_wait_for 120 grep -aq "GUEST: round 3" "$T/guest.log"
sleep 0.5
kill -KILL "$first"
wait "$first" 2>/dev/null || true
_bd_forget_pid "$first"
echo "killed blockd (pid $first) during round 3"
sleep 0.5
bd_start "${args[@]}"
bd_wait_for 120 grep -aq "GUEST: round 7" "$T/guest.log"
# and once more, while the guest is writing
sleep 0.5
kill -KILL "$BD_PID"
wait "$BD_PID" 2>/dev/null || true
_bd_forget_pid "$BD_PID"
echo "killed blockd again during round 7"
bd_start "${args[@]}"
vub_guest_wait
grep -q "GUEST: errors 0" "$T/guest.out" || fail "the guest saw I/O errors"
assert_eq "$(vub_guest_line readback)" OK "guest read back"
want=$(vub_guest_line md5)
got=$(dd if="$T/img" bs=1M count=16 status=none | md5sum | cut -d' ' -f1)
assert_eq "$got" "$want" "image contents"
grep -h "resubmitting" "$T"/blockd*.log || fail "no in-flight request was resubmitted"
if [ "${VUB_GUEST_DEVOPTS:-}" = ",packed=on" ]; then
	grep -q "start num=.* packed=1" "$T"/blockd*.log || fail "the guest did not use packed rings"
fi
bd_stop
