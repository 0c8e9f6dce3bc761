#!/bin/bash
# rbd-pool.sh - the rbd pool type against a one-node Ceph cluster (tests/lib/ceph.sh): libvirt's
# pool XML with <host> and <auth> naming a secret object, volumes created, listed, resized (grow
# and shrink), cloned through a protected snapshot, wiped, opened and exported, deleted with
# delete-snapshots, and the refresh of a pool of 1,000 images timed.
# meson-suite: slow
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/ceph.sh"
need nbdcopy nbdinfo
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import rados, rbd' 2>/dev/null || skip "python3-rbd is not installed"
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
ceph_start
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
MIB=1048576
size_of() { rbd info --format json "$CEPH_POOL/$1" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["size"])'; }

bd_start --object "secret,id=client.admin-key,data=$CEPH_KEY" --state-dir "$T/var" \
	--control "$T/ctl.sock" --nbd-server "addr.type=unix,addr.path=$T/nbd.sock"
cat >"$T/pool.xml" <<XML
<pool type='rbd'>
  <name>cp</name>
  <source>
    <name>$CEPH_POOL</name>
    <host name='127.0.0.1' port='$CEPH_MON_PORT'/>
    <auth type='ceph' username='admin'>
      <secret usage='client.admin-key'/>
    </auth>
  </source>
</pool>
XML
assert_eq "$(bc pool-define "$T/pool.xml")" "Pool cp defined from $T/pool.xml"
assert_eq "$(bc pool-start cp)" "Pool cp started"
assert_contains "$(bc pool-dumpxml cp)" "<secret usage='client.admin-key'/>"

rbd create --size 8M "$CEPH_POOL/outside"
bc pool-refresh cp >/dev/null
assert_contains "$(bc vol-list cp)" "outside"
assert_eq "$(bc vol-create-as cp v1 16M)" "Vol v1 created"
assert_eq "$(size_of v1)" $((16 * MIB))
out=$(bc vol-list cp --details)
assert_contains "$out" " v1        rbd:$CEPH_POOL/v1        network   16.00 MiB"
assert_contains "$(bc vol-dumpxml v1 --pool cp)" "<format type='raw'/>"

# resize: grow, refuse to shrink without the flag, shrink with it
bc vol-resize v1 32M --pool cp >/dev/null
assert_eq "$(size_of v1)" $((32 * MIB))
assert_fails bc vol-resize v1 24M --pool cp
assert_contains "$BD_OUT" "shrink"
bc vol-resize v1 24M --pool cp --shrink >/dev/null
assert_eq "$(size_of v1)" $((24 * MIB))
assert_contains "$(bc vol-info v1 --pool cp)" "24.00 MiB"

# open a volume and do I/O through NBD; data seen by rbd
bc vol-export v1 --pool cp --writable >/dev/null
U="nbd+unix:///v1?socket=$T/nbd.sock"
assert_eq "$(nbdinfo --size "$U")" $((24 * MIB))
bd_random_file "$T/data" 4096
nbdcopy "$T/data" "$U"
rbd export "$CEPH_POOL/v1" - 2>/dev/null | cmp -n $((4 * MIB)) - "$T/data" || fail "volume data not in the image"
assert_fails bc vol-delete v1 --pool cp
assert_contains "$BD_OUT" "in use by node"
bc export-del v1 --hard >/dev/null
bc node-del v1 >/dev/null

# clone: snapshot + protect + clone (the clone has the data, the source a protected snapshot)
assert_eq "$(bc vol-clone v1 v2 --pool cp)" "Vol v2 cloned from v1"
assert_contains "$(rbd info "$CEPH_POOL/v2")" "parent: $CEPH_POOL/v1@libvirt-"
assert_contains "$(rbd snap ls "$CEPH_POOL/v1")" "libvirt-"
rbd export "$CEPH_POOL/v2" - 2>/dev/null | cmp -n $((4 * MIB)) - "$T/data" || fail "clone lacks the data"

# wipe the clone: zeroes, parent untouched
bc vol-wipe v2 --pool cp >/dev/null
rbd export "$CEPH_POOL/v2" - 2>/dev/null | cmp -n $((24 * MIB)) - /dev/zero || fail "wiped clone is not zero"
rbd export "$CEPH_POOL/v1" - 2>/dev/null | cmp -n $((4 * MIB)) - "$T/data" || fail "wipe of the clone changed its parent"
bc vol-wipe v2 --pool cp --algorithm trim >/dev/null

# delete: a volume with snapshots needs delete-snapshots; clones block unprotecting
assert_fails bc vol-delete v1 --pool cp
assert_contains "$BD_OUT" "has snapshots"
assert_fails bc vol-delete v1 --pool cp --delete-snapshots
assert_contains "$BD_OUT" "clones of it exist"
assert_eq "$(bc vol-delete v2 --pool cp)" "Vol v2 deleted"
assert_eq "$(bc vol-delete v1 --pool cp --delete-snapshots)" "Vol v1 deleted"
rbd info "$CEPH_POOL/v1" >/dev/null 2>&1 && fail "image v1 still exists"
assert_not_contains "$(bc vol-list cp)" " v1 "

# refresh of a pool with 1,000 images: listed with sizes, without opening each image
/usr/bin/python3 - "$CEPH_CONF" "$CEPH_POOL" <<'PY'
import sys, rados, rbd
with rados.Rados(conffile=sys.argv[1]) as c:
    with c.open_ioctx(sys.argv[2]) as io:
        r = rbd.RBD()
        for i in range(1000):
            r.create(io, "many%04d" % i, (i + 1) * 1048576)
PY
s=$(date +%s%N)
bc pool-refresh cp >/dev/null
ms=$((($(date +%s%N) - s) / 1000000))
echo "refresh of 1,001 images: $ms ms"
echo "$ms" >"${BD_RBD_REFRESH_OUT:-/dev/null}"
n=$(bc qmp query-volumes '{"pool":"cp"}' | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
assert_eq "$n" 1001
assert_contains "$(bc vol-info many0999 --pool cp)" "1000.00 MiB"
assert_contains "$(bc vol-info many0006 --pool cp)" "7.00 MiB"
[ "$ms" -lt 10000 ] || fail "refresh of 1,000 images took $ms ms"
# for comparison: opening every image, as 'rbd ls -l' (and libvirt's refresh) do
s=$(date +%s%N)
rbd ls -l "$CEPH_POOL" >/dev/null
echo "rbd ls -l (opens each image): $((($(date +%s%N) - s) / 1000000)) ms"

# the daemon stops with the pool running, and autostarts it again (the secret comes first)
bc pool-autostart cp >/dev/null
bd_stop
bd_start --object "secret,id=client.admin-key,data=$CEPH_KEY" --state-dir "$T/var" \
	--control "$T/ctl.sock" --nbd-server "addr.type=unix,addr.path=$T/nbd.sock"
assert_contains "$(bc pool-info cp)" "running"
assert_contains "$(bc vol-list cp)" "many0999"
bc pool-destroy cp >/dev/null
bc pool-undefine cp >/dev/null
bd_stop
echo PASS
