#!/bin/bash
# iscsi-pool.sh - iscsi and iscsi-direct pools on a real tgtd: define/start/refresh list the
# target's disk LUNs (not the LUN 0 controller) with READ CAPACITY's sizes, a volume opens as an
# iscsi node and its bytes land in the LUN's backing file, wipe zeroes/trims, create/delete are
# refused, find-storage-pool-sources lists the targets (SendTargets), CHAP comes from a secret
# object named by <secret usage=...>.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/tgtd.sh"
need nbdinfo qemu-io cmp
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }

tgtd_start
IQN=iqn.2026-01.test.blockd:pool
IQN2=iqn.2026-01.test.blockd:chap
tgtd_target 1 "$IQN"
truncate -s 48M "$T/a.img"
truncate -s 20M "$T/b.img"
truncate -s 16M "$T/c.img"
tgtd_lun 1 1 "$T/a.img" thin
tgtd_lun 1 2 "$T/b.img"
tgtd_target 2 "$IQN2"
tgtd_lun 2 1 "$T/c.img"
tgtd_chap 2 bduser s3cret-pw

bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--object secret,id=chapsecret,data=s3cret-pw --object secret,id=badsecret,data=wrong

# ---- iscsi-direct
cat >"$T/direct.xml" <<EOF
<pool type='iscsi-direct'>
  <name>idirect</name>
  <source>
    <host name='127.0.0.1' port='$TGTD_PORT'/>
    <device path='$IQN'/>
    <initiator><iqn name='iqn.2026-01.test.blockd:initiator'/></initiator>
  </source>
</pool>
EOF
assert_eq "$(bc pool-define "$T/direct.xml")" "Pool idirect defined from $T/direct.xml"
assert_eq "$(bc pool-start idirect)" "Pool idirect started"
out=$(bc vol-list idirect --details)
assert_contains "$out" "unit:0:0:1"
assert_contains "$out" "unit:0:0:2"
assert_not_contains "$out" "unit:0:0:0"
assert_contains "$out" "iscsi://127.0.0.1:$TGTD_PORT/$IQN/1"
assert_contains "$out" "48.00 MiB"
assert_contains "$out" "20.00 MiB"
assert_contains "$(bc pool-info idirect)" "68.00 MiB"
assert_contains "$(bc vol-info unit:0:0:2 --pool idirect)" "20.00 MiB"

# open a volume as a node, write through NBD, compare with the backing file
bc vol-open unit:0:0:2 v2 --pool idirect >/dev/null
bc export-add type=nbd,id=ev2,node-name=v2,writable=on >/dev/null
U=$(bd_nbd_unix_uri "$T/nbd.sock" v2)
assert_eq "$(nbdinfo --size "$U")" 20971520
qemu-io -f raw -c "write -P 0x3c 4M 1M" "$U" >/dev/null
cmp <(head -c 1048576 /dev/zero | tr '\0' '<') <(tail -c +4194305 "$T/b.img" | head -c 1048576) ||
	fail "volume data not in the LUN's backing file"
# in use: no wipe, no refresh losing it
assert_fails bc vol-wipe unit:0:0:2 --pool idirect
assert_contains "$BD_OUT" "in use"
assert_fails bc pool-destroy idirect
assert_contains "$BD_OUT" "in use"
bc export-del ev2 >/dev/null
bc node-del v2 >/dev/null

# wipe: zero (WRITE SAME) and trim (UNMAP, only on the thin LUN)
head -c 2M /dev/urandom | dd of="$T/a.img" conv=notrunc status=none
bc vol-wipe unit:0:0:1 --pool idirect >/dev/null
cmp -n 50331648 "$T/a.img" /dev/zero || fail "zero wipe left data"
head -c 2M /dev/urandom | dd of="$T/a.img" conv=notrunc status=none
bc vol-wipe unit:0:0:1 --pool idirect --algorithm trim >/dev/null
cmp -n 2097152 "$T/a.img" /dev/zero || fail "trim wipe left data"
assert_fails bc vol-wipe unit:0:0:2 --pool idirect --algorithm trim
assert_contains "$BD_OUT" "UNMAP"

# LUNs are the target's: no create, delete, resize
assert_fails bc vol-create-as idirect newvol 1M
assert_contains "$BD_OUT" "cannot create volumes"
assert_fails bc vol-delete unit:0:0:1 --pool idirect
assert_contains "$BD_OUT" "cannot be deleted"

# a LUN added on the target appears at refresh
truncate -s 8M "$T/d.img"
tgtd_lun 1 3 "$T/d.img"
bc pool-refresh idirect >/dev/null
assert_contains "$(bc vol-list idirect --details)" "unit:0:0:3"

# iscsi-direct needs the initiator IQN, as in libvirt
sed "/initiator/d; s/idirect/idirect2/; s/$IQN'/$IQN2'/" "$T/direct.xml" >"$T/direct2.xml"
assert_fails bc pool-define "$T/direct2.xml"
assert_contains "$BD_OUT" "initiator"
assert_fails bc pool-start idirect2 # kept defined (it parsed), but cannot start
assert_contains "$BD_OUT" "initiator"
bc pool-undefine idirect2 >/dev/null

# ---- iscsi with CHAP
cat >"$T/chap.xml" <<EOF
<pool type='iscsi'>
  <name>ichap</name>
  <source>
    <host name='127.0.0.1' port='$TGTD_PORT'/>
    <device path='$IQN2'/>
    <auth type='chap' username='bduser'><secret usage='chapsecret'/></auth>
  </source>
  <target><path>/dev/disk/by-path</path></target>
</pool>
EOF
bc pool-define "$T/chap.xml" >/dev/null
bc pool-start ichap >/dev/null
out=$(bc vol-list ichap --details)
assert_contains "$out" "/dev/disk/by-path/ip-127.0.0.1:$TGTD_PORT-iscsi-$IQN2-lun-1"
assert_contains "$out" "16.00 MiB"
bc vol-open unit:0:0:1 c1 --pool ichap >/dev/null
bc export-add type=nbd,id=ec1,node-name=c1,writable=on >/dev/null
U=$(bd_nbd_unix_uri "$T/nbd.sock" c1)
qemu-io -f raw -c "write -P 0x61 0 64k" "$U" >/dev/null
cmp <(head -c 65536 /dev/zero | tr '\0' 'a') <(head -c 65536 "$T/c.img") || fail "CHAP volume data"
assert_fails bc vol-wipe unit:0:0:1 --pool ichap
assert_contains "$BD_OUT" "in use"
bc export-del ec1 >/dev/null
bc node-del c1 >/dev/null
bc pool-destroy ichap >/dev/null
# the wrong secret: refused with a clear error
sed 's/chapsecret/badsecret/' "$T/chap.xml" >"$T/chap-bad.xml"
bc pool-undefine ichap >/dev/null
bc pool-define "$T/chap-bad.xml" >/dev/null
assert_fails bc pool-start ichap
assert_contains "$BD_OUT" "cannot log in to $IQN2"
assert_contains "$BD_OUT" "CHAP"
bc pool-undefine ichap >/dev/null
# a secret that does not exist
sed 's/chapsecret/nosuchsecret/; s/ichap/ichap2/' "$T/chap.xml" >"$T/chap-none.xml"
bc pool-define "$T/chap-none.xml" >/dev/null
assert_fails bc pool-start ichap2
assert_contains "$BD_OUT" "nosuchsecret"
bc pool-undefine ichap2 >/dev/null

# ---- discovery
printf "<source><host name='127.0.0.1' port='%s'/></source>" "$TGTD_PORT" >"$T/spec.xml"
out=$(bc find-storage-pool-sources iscsi "$T/spec.xml")
assert_contains "$out" "<device path='$IQN'/>"
assert_contains "$out" "<device path='$IQN2'/>"
assert_contains "$out" "<host name='127.0.0.1' port='$TGTD_PORT'/>"
assert_contains "$(bc find-storage-pool-sources iscsi-direct "$T/spec.xml")" "$IQN"
assert_fails bc find-storage-pool-sources iscsi
assert_contains "$BD_OUT" "needs a source"

# ---- the target gone: refresh fails at once with a clear error, the daemon goes on
tgtd_kill
assert_fails bc pool-refresh idirect
assert_contains "$BD_OUT" "connection refused"
tgtd_restart
tgtd_target 1 "$IQN"
tgtd_lun 1 1 "$T/a.img" thin
tgtd_lun 1 2 "$T/b.img"
tgtd_lun 1 3 "$T/d.img"
bc pool-refresh idirect >/dev/null
assert_contains "$(bc vol-list idirect)" "unit:0:0:3"

# ---- persistence: a restart finds the pool and its LUNs again
bc pool-autostart idirect >/dev/null
bd_stop
bd_start --state-dir "$T/var" --control "$T/ctl.sock"
assert_contains "$(bc vol-list idirect)" "unit:0:0:3"
bc pool-destroy idirect >/dev/null
bd_stop
