#!/bin/bash
# rbd-driver.sh - the rbd protocol driver against a one-node Ceph cluster (tests/lib/ceph.sh):
# monitors and key given as options (no ceph.conf for blockd), data written through the NBD
# export and read back both through blockd and with the rbd tool, discard and write-zeroes,
# resize, a snapshot opened read-only, blockdev-create, the legacy filename, and a wrong key
# refused with a clear message.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/ceph.sh"
need nbdcopy nbdinfo qemu-io
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
ceph_start
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
U="nbd+unix:///r0?socket=$T/nbd.sock"
MIB=1048576

rbd create --size 64M "$CEPH_POOL/img0"
# blockd gets no ceph.conf: everything comes from the options
SERVER="server.0.host=127.0.0.1,server.0.port=$CEPH_MON_PORT"
bd_start --object "secret,id=ck,data=$CEPH_KEY" --control "$T/ctl.sock" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=img0,$SERVER,user=admin,key-secret=ck,timeout=20" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--export type=nbd,id=e0,node-name=r0,writable=on
assert_eq "$(nbdinfo --size "$U")" $((64 * MIB))
out=$(bc qmp query-named-block-nodes)
assert_contains "$out" '"layering"'
assert_contains "$out" '"object-size": 4194304'

# write through NBD, read back through blockd and with rbd export
bd_random_file "$T/data" 8192
nbdcopy "$T/data" "$U" || fail "nbdcopy to blockd failed"
nbdcopy "$U" "$T/back" 2>"$T/nbdcopy.err" || fail "nbdcopy from blockd failed: $(cat "$T/nbdcopy.err")"
cmp -n $((8 * MIB)) "$T/data" "$T/back" || fail "data read back through blockd differs"
rm -f "$T/exported"; rbd export "$CEPH_POOL/img0" "$T/exported" >/dev/null 2>&1
cmp -n $((8 * MIB)) "$T/data" "$T/exported" || fail "rbd export differs from what was written"
assert_eq "$(stat -c %s "$T/exported")" $((64 * MIB))

# unaligned write, then write-zeroes and discard (discard=unmap on the node for real discards)
qemu-io -f raw "$U" -c "write -P 0x5a 1000 3000" >/dev/null
qemu-io -f raw "$U" -c "read -P 0x5a 1000 3000" | grep -q "read 3000/3000" || fail "unaligned write lost"
qemu-io -f raw "$U" -c "write -z 1M 1M" -c "write -z -u 2M 2M" >/dev/null
qemu-io -f raw "$U" -c "discard 4M 1M" >/dev/null
rm -f "$T/exported"; rbd export "$CEPH_POOL/img0" "$T/exported" >/dev/null 2>&1
cmp -n $((3 * MIB)) -i $((1 * MIB)) "$T/exported" /dev/zero || fail "write-zeroes did not zero 1M..4M"
cmp -n $((1 * MIB)) -i $((5 * MIB)) "$T/data" "$T/exported" || fail "data after the zeroed range changed"
qemu-io -f raw "$U" -c "read -P 0 1M 3M" | grep -q "read 3145728/3145728" || fail "zeroes not read back"

# resize through block_resize: rbd sees it, NBD clients see it
bc node-resize r0 96M >/dev/null
assert_eq "$(rbd info --format json "$CEPH_POOL/img0" | python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])')" $((96 * MIB))
assert_eq "$(nbdinfo --size "$U")" $((96 * MIB))

# a snapshot: written data after it is not in it; it opens read-only only
rm -f "$T/before"; rbd export "$CEPH_POOL/img0" "$T/before" >/dev/null 2>&1
rbd snap create "$CEPH_POOL/img0@s1"
head -c $MIB /dev/urandom >"$T/new"
nbdcopy "$T/new" "$U" # overwrite the first MiB
assert_fails bc node-add "{\"driver\":\"rbd\",\"node-name\":\"s1\",\"pool\":\"$CEPH_POOL\",\"image\":\"img0\",\"snapshot\":\"s1\",\"server\":[{\"host\":\"127.0.0.1\",\"port\":\"$CEPH_MON_PORT\"}],\"key-secret\":\"ck\"}"
assert_contains "$BD_OUT" "read-only"
bc node-add "{\"driver\":\"rbd\",\"node-name\":\"s1\",\"read-only\":true,\"pool\":\"$CEPH_POOL\",\"image\":\"img0\",\"snapshot\":\"s1\",\"server\":[{\"host\":\"127.0.0.1\",\"port\":\"$CEPH_MON_PORT\"}],\"key-secret\":\"ck\"}" >/dev/null
bc export-add type=nbd,id=s1,node-name=s1 >/dev/null
US="nbd+unix:///s1?socket=$T/nbd.sock"
assert_eq "$(nbdinfo --size "$US")" $((96 * MIB))
nbdcopy "$US" "$T/snap"
cmp "$T/before" "$T/snap" || fail "snapshot does not hold the data from before it"
nbdcopy "$U" "$T/back" 2>"$T/nbdcopy.err" || fail "nbdcopy from blockd failed: $(cat "$T/nbdcopy.err")"
cmp -n $MIB "$T/new" "$T/back" || fail "image does not hold the new data"
bc export-del s1 --hard >/dev/null
bc node-del s1 >/dev/null

# blockdev-create, then the legacy filename form (with a ceph.conf this time)
bc qmp blockdev-create "{\"job-id\":\"c1\",\"options\":{\"driver\":\"rbd\",\"location\":{\"pool\":\"$CEPH_POOL\",\"image\":\"made\",\"server\":[{\"host\":\"127.0.0.1\",\"port\":\"$CEPH_MON_PORT\"}],\"key-secret\":\"ck\"},\"size\":33554432,\"cluster-size\":1048576}}" >/dev/null
for i in $(seq 1 100); do
	rbd info "$CEPH_POOL/made" >/dev/null 2>&1 && break
	sleep 0.1
done
info=$(rbd info --format json "$CEPH_POOL/made")
assert_contains "$info" '"size":33554432'
assert_contains "$info" '"object_size":1048576'
bc node-add "{\"driver\":\"rbd\",\"node-name\":\"m\",\"filename\":\"rbd:$CEPH_POOL/made:conf=$CEPH_CONF:id=admin\"}" >/dev/null
bc export-add type=nbd,id=m,node-name=m,writable=on >/dev/null
UM="nbd+unix:///m?socket=$T/nbd.sock"
assert_eq "$(nbdinfo --size "$UM")" 33554432
nbdcopy "$T/new" "$UM"
rbd export "$CEPH_POOL/made" - 2>/dev/null | cmp -n $MIB - "$T/new" || fail "legacy filename node wrote elsewhere"
bc export-del m --hard >/dev/null
bc node-del m >/dev/null
bd_stop

# a wrong key is refused at open, with the reason: at once over msgr2 (the conf's mon host has
# the v2 address) ...
BAD=AQBqlwJrDVo6AhAAjz4g1nxHiGIoK03jgZknwA==
assert_fails "$BLOCKD" --object "secret,id=bad,data=$BAD" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=img0,conf=$CEPH_CONF,key-secret=bad,timeout=10"
assert_contains "$BD_OUT" "rbd 'r0': cannot connect to the Ceph cluster as client.admin: Permission denied (the cephx user or key was refused)"
# ... and after the timeout over the legacy protocol (a bare host:port that is not 3300)
s=$(date +%s)
assert_fails "$BLOCKD" --object "secret,id=bad,data=$BAD" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=img0,$SERVER,key-secret=bad,timeout=3"
assert_contains "$BD_OUT" "refused cephx key"
[ $(($(date +%s) - s)) -lt 10 ] || fail "a refused key over v1 took longer than the timeout"
# a missing image names it
assert_fails "$BLOCKD" --object "secret,id=ck,data=$CEPH_KEY" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=nosuch,$SERVER,key-secret=ck"
assert_contains "$BD_OUT" "nosuch"
# bad options
assert_fails "$BLOCKD" --blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=img0,server.0.host=127.0.0.1,server.0.port=99999"
assert_contains "$BD_OUT" "server.0"
assert_fails "$BLOCKD" --blockdev "driver=rbd,node-name=r0,filename=rbd:onlypool"
assert_contains "$BD_OUT" "rbd:pool"
echo "PASS"
