#!/bin/bash
# rbd-fault.sh - the OSD stops in the middle of a workload on an rbd node: the requests fail
# with EIO within the node's timeout (not a hang), a file-backed export of the same daemon keeps
# serving meanwhile, and deleting the rbd node while the cluster is unreachable ends in bounded
# time (the close left behind finishes when the OSD is back), and data acknowledged before the
# fault is still there after it.  One-node Ceph from tests/lib/ceph.sh with a bluestore OSD
# (its data survives the OSD restart).
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/ceph.sh"
need fio nbdcopy nbdinfo
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
CEPH_STORE=bluestore ceph_start
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
TMO=5

rbd create --size 64M "$CEPH_POOL/img0"
bd_sparse_image "$T/file.img" 64M
bd_start --object "secret,id=ck,data=$CEPH_KEY" --control "$T/ctl.sock" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=img0,server.0.host=127.0.0.1,server.0.port=$CEPH_MON_PORT,key-secret=ck,timeout=$TMO,cache.direct=on" \
	--blockdev "driver=file,node-name=f0,filename=$T/file.img" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--export type=nbd,id=r0,node-name=r0,writable=on \
	--export type=nbd,id=f0,node-name=f0,writable=on
UR="nbd+unix:///r0?socket=$T/nbd.sock"
UF="nbd+unix:///f0?socket=$T/nbd.sock"
bd_random_file "$T/data" 4096
nbdcopy "$T/data" "$UR"

# a random-write workload on the rbd export; stop the OSD under it
fio --name=w --ioengine=nbd --uri="$UR" --rw=randwrite --bs=4k --iodepth=16 --offset=8M --size=56M \
	--time_based --runtime=120 --output="$T/fio.out" >/dev/null 2>&1 &
FIO=$!
bd_on_exit "kill $FIO"
sleep 2
bd_alive "$FIO" || fail "fio ended before the fault: $(cat "$T/fio.out")"
ceph_osd_stop
s=$(date +%s)
# the file export keeps serving while the rbd requests hang on the dead OSD
for i in 1 2 3; do
	nbdcopy "$T/data" "$UF"
	nbdcopy "$UF" "$T/back"
	cmp -n 4194304 "$T/data" "$T/back" || fail "file export returned wrong data during the fault"
done
rc=0
wait "$FIO" || rc=$?
el=$(($(date +%s) - s))
echo "fio ended ${el}s after the OSD stopped (rc $rc, timeout ${TMO}s)"
[ "$rc" != 0 ] || fail "fio succeeded although the OSD was stopped: $(cat "$T/fio.out")"
grep -q "Input/output error\|err=5\|error=5" "$T/fio.out" ||
	fail "fio did not see EIO: $(tail -5 "$T/fio.out")"
[ "$el" -le $((TMO * 4)) ] || fail "EIO came after ${el}s, more than 4x the timeout"
grep -q "I/O failed" "$BD_LOG" || fail "the daemon did not log the failure"
# reads fail too, and fast enough
s=$(date +%s)
assert_fails timeout 60 nbdcopy "$UR" "$T/back2"
[ $(($(date +%s) - s)) -le $((TMO * 4)) ] || fail "a read during the fault took too long"
assert_eq "$(nbdinfo --size "$UF")" 67108864

# deleting the node whose cluster is gone is bounded
bc export-del r0 --hard >/dev/null
# the export goes once its in-flight requests have failed (at most the timeout)
for i in $(seq 1 $((TMO * 40))); do
	bc qmp query-block-exports | grep -q '"r0"' || break
	sleep 0.1
done
bc qmp query-block-exports | grep -q '"r0"' && fail "export r0 still there $((TMO * 4))s after export-del --hard"
s=$(date +%s)
timeout 120 "$BLOCKCTL" --timeout 120 node-del r0 >/dev/null || fail "node-del of the dead rbd node failed"
el=$(($(date +%s) - s))
echo "node-del with the OSD down: ${el}s"
[ "$el" -le $((TMO + 10)) ] || fail "node-del took ${el}s"
nbdcopy "$UF" "$T/back"
cmp -n 4194304 "$T/data" "$T/back" || fail "file export broken after the rbd node went"
# the cluster comes back: the close that was left behind finishes (nothing leaks)
ceph_osd_start
for i in $(seq 1 120); do
	grep -q "close left behind has finished" "$BD_LOG" && break
	sleep 0.5
done
grep -q "close left behind has finished" "$BD_LOG" || fail "the left-behind close never finished"
# what was acknowledged before the fault (the first 4 MiB, which fio did not touch) is intact
rbd export "$CEPH_POOL/img0" - 2>/dev/null | cmp -n 4194304 - "$T/data" ||
	fail "data acknowledged before the fault is lost"
bd_stop
echo PASS
