#!/bin/bash
# iscsi-chap.sh - CHAP for the iscsi driver against tgtd: the password from a secret object
# (password-secret), or in the URL; a wrong password, a missing one and a missing secret object
# are refused with clear errors; the daemon keeps serving.
# meson-suite: slow
# meson-timeout: 120
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/tgtd.sh"
need nbdinfo qemu-io cmp
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }

tgtd_start
IQN=iqn.2026-01.test.blockd:chap
tgtd_target 1 "$IQN"
truncate -s 16M "$T/lun1.img"
tgtd_lun 1 1 "$T/lun1.img"
tgtd_chap 1 chapuser 'pa55-w0rd'
P=127.0.0.1:$TGTD_PORT
echo -n 'pa55-w0rd' >"$T/pw"

bd_start --control "$T/ctl.sock" --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--object "secret,id=pw,file=$T/pw" --object secret,id=bad,data=nope \
	--blockdev "driver=iscsi,node-name=c1,portal=$P,target=$IQN,lun=1,user=chapuser,password-secret=pw" \
	--export type=nbd,id=e1,node-name=c1,writable=on
U=$(bd_nbd_unix_uri "$T/nbd.sock" c1)
qemu-io -f raw -c "write -P 0x43 1M 256k" "$U" >/dev/null
cmp <(head -c 262144 /dev/zero | tr '\0' 'C') <(tail -c +1048577 "$T/lun1.img" | head -c 262144) ||
	fail "data written over a CHAP session is not in the backing file"

# the password in the URL works too (user%password@)
bc node-add "driver=iscsi,node-name=c2,read-only=on,filename=iscsi://chapuser%pa55-w0rd@$P/$IQN/1" >/dev/null
bc export-add type=nbd,id=e2,node-name=c2 >/dev/null
qemu-io -r -f raw -c "read -P 0x43 1M 256k" "$(bd_nbd_unix_uri "$T/nbd.sock" c2)" | grep -q "read 262144" ||
	fail "read over the URL-credential session"

# refusals
assert_fails bc node-add "driver=iscsi,node-name=x1,portal=$P,target=$IQN,lun=1,user=chapuser,password-secret=bad,timeout=5"
assert_contains "$BD_OUT" "cannot log in to $IQN"
assert_contains "$BD_OUT" "wrong CHAP user or password"
assert_fails bc node-add "driver=iscsi,node-name=x2,portal=$P,target=$IQN,lun=1,timeout=5"
assert_contains "$BD_OUT" "the target wants CHAP"
assert_fails bc node-add "driver=iscsi,node-name=x3,portal=$P,target=$IQN,lun=1,user=chapuser,password-secret=nosuch"
assert_contains "$BD_OUT" "nosuch"
assert_fails bc node-add "driver=iscsi,node-name=x4,portal=$P,target=$IQN,lun=1,user=chapuser"
assert_contains "$BD_OUT" "without a password"
assert_fails bc node-add "driver=iscsi,node-name=x5,portal=$P,target=$IQN,lun=1,password-secret=pw"
assert_contains "$BD_OUT" "needs 'user'"

# still serving
qemu-io -f raw -c "read -P 0x43 1M 256k" "$U" | grep -q "read 262144" || fail "c1 stopped serving"
bd_stop
