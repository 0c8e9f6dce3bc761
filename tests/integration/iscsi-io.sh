#!/bin/bash
# iscsi-io.sh - the iscsi driver against a real tgtd: a node from an iscsi:// URL and one from
# QEMU's portal/target/lun keys, exported over NBD; data written with nbdcopy and qemu-io is
# compared with the LUN's backing file and read back; discard (UNMAP) punches holes, write-zeroes
# (WRITE SAME) zeroes, FUA and flush work; bad options and non-disk LUNs give clear errors.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/tgtd.sh"
need nbdcopy nbdinfo qemu-io cmp
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }

tgtd_start
IQN=iqn.2026-01.test.blockd:io
tgtd_target 1 "$IQN"
truncate -s 64M "$T/lun1.img"
truncate -s 32M "$T/lun2.img"
tgtd_lun 1 1 "$T/lun1.img" thin
tgtd_lun 1 2 "$T/lun2.img"
P=127.0.0.1:$TGTD_PORT

bd_start --control "$T/ctl.sock" --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--blockdev "driver=iscsi,node-name=i1,filename=iscsi://$P/$IQN/1,discard=unmap,timeout=10" \
	--export type=nbd,id=e1,node-name=i1,writable=on
U1=$(bd_nbd_unix_uri "$T/nbd.sock" i1)

# the size comes from READ CAPACITY(16), the block limits from the VPD pages
assert_eq "$(nbdinfo --size "$U1")" 67108864
info=$(nbdinfo "$U1")
assert_contains "$info" "can_trim: true"
assert_contains "$info" "block_size_minimum: 512"
desc=$(bc qmp query-named-block-nodes)
assert_contains "$desc" "\"url\": \"iscsi://$P/$IQN/1\""
assert_contains "$desc" '"unmap": true'

# nbdcopy: 8 MiB at offset 0, byte-compared with the backing file, and read back
bd_random_file "$T/data" 8192
nbdcopy "$T/data" "$U1"
cmp -n 8388608 "$T/data" "$T/lun1.img" || fail "the LUN's backing file differs from what was written"
nbdcopy "$U1" "$T/back"
cmp -n 8388608 "$T/data" "$T/back" || fail "read back differs"
# unaligned and FUA writes through qemu-io (the core does read-modify-write on 512 B blocks)
qemu-io -f raw -c "write -P 0x5a 1000 3000" -c "write -f -P 0x6b 1M 64k" -c flush "$U1" >/dev/null
cmp <(head -c 3000 /dev/zero | tr '\0' 'Z') <(tail -c +1001 "$T/lun1.img" | head -c 3000) ||
	fail "unaligned write not in the backing file"
cmp <(head -c 65536 /dev/zero | tr '\0' 'k') <(tail -c +1048577 "$T/lun1.img" | head -c 65536) ||
	fail "FUA write not in the backing file"
qemu-io -f raw -c "read -P 0x5a 1000 3000" -c "read -P 0x6b 1M 64k" "$U1" | grep -q "read 65536" ||
	fail "qemu-io read-back failed"

# discard = UNMAP on a thin LUN: tgtd punches a hole; write-zeroes = WRITE SAME(16)
before=$(du -k "$T/lun1.img" | cut -f1)
qemu-io -f raw -c "discard 2M 4M" "$U1" >/dev/null
after=$(du -k "$T/lun1.img" | cut -f1)
[ "$after" -lt "$before" ] || fail "discard did not deallocate ($before -> $after KiB)"
cmp -n 4194304 <(tail -c +2097153 "$T/lun1.img") /dev/zero || fail "discarded range is not zero"
qemu-io -f raw -c "write -P 0x77 7M 1M" -c "write -z 7M 512k" -c "write -z -u 7680k 512k" "$U1" >/dev/null
cmp -n 1048576 <(tail -c +7340033 "$T/lun1.img") /dev/zero || fail "write-zeroes left data"

# QEMU's keys instead of a URL, through QMP; LUN 2 is not thin: no trim
bc node-add "driver=iscsi,node-name=i2,transport=tcp,portal=$P,target=$IQN,lun=2,header-digest=none" >/dev/null
bc export-add type=nbd,id=e2,node-name=i2,writable=on >/dev/null
U2=$(bd_nbd_unix_uri "$T/nbd.sock" i2)
assert_eq "$(nbdinfo --size "$U2")" 33554432
qemu-io -f raw -c "write -P 0x42 31M 1M" "$U2" >/dev/null
cmp <(head -c 1048576 /dev/zero | tr '\0' 'B') <(tail -c +32505857 "$T/lun2.img") ||
	fail "LUN 2 data not in its backing file"
qemu-io -f raw -c "write -z 31M 512k" "$U2" >/dev/null
cmp -n 524288 <(tail -c +32505857 "$T/lun2.img") /dev/zero || fail "LUN 2 write-zeroes"

# a second export of i1 on an iothread: its requests go to the session's home loop by message
bc qmp object-add '{"qom-type": "iothread", "id": "io1"}' >/dev/null
bc export-add type=nbd,id=e1b,node-name=i1,name=i1b,writable=on,iothread=io1 >/dev/null
U1B=$(bd_nbd_unix_uri "$T/nbd.sock" i1b)
bd_random_file "$T/data2" 4096
nbdcopy "$T/data2" "$U1B"
cmp -n 4194304 "$T/data2" "$T/lun1.img" || fail "write through the iothread export"
nbdcopy "$U1" "$T/back2" # and read through the first
cmp -n 4194304 "$T/data2" "$T/back2" || fail "read back through the home loop"
bc export-del e1b >/dev/null

# a write-protected LUN (tgtd readonly=1): refused writable, read-only works, auto-read-only
# falls back to read-only
truncate -s 8M "$T/ro.img"
tgtd_lun 1 3 "$T/ro.img"
tgtadm_ --mode logicalunit --op update --tid 1 --lun 3 --params readonly=1
assert_fails bc node-add "driver=iscsi,node-name=r0,portal=$P,target=$IQN,lun=3"
assert_contains "$BD_OUT" "write protected"
bc node-add "driver=iscsi,node-name=r1,portal=$P,target=$IQN,lun=3,read-only=on" >/dev/null
bc node-add "driver=iscsi,node-name=r2,portal=$P,target=$IQN,lun=3,auto-read-only=on" >/dev/null
assert_contains "$(bc node-list)" "r2     iscsi    8.00 MiB    ro"
bc node-del r1 >/dev/null
bc node-del r2 >/dev/null

# errors an operator understands
assert_fails bc node-add "driver=iscsi,node-name=x0,portal=$P,target=$IQN,lun=0"
assert_contains "$BD_OUT" "LUN 0 of $IQN is not a disk"
assert_fails bc node-add "driver=iscsi,node-name=x7,portal=$P,target=$IQN,lun=7"
assert_contains "$BD_OUT" "no such LUN"
assert_fails bc node-add "driver=iscsi,node-name=x1,portal=$P,target=iqn.2026-01.test.blockd:nope,lun=1,timeout=5"
assert_contains "$BD_OUT" "cannot log in to iqn.2026-01.test.blockd:nope"
assert_fails bc node-add "driver=iscsi,node-name=x2,filename=iscsi://$P/$IQN/1,lun=1"
assert_contains "$BD_OUT" "cannot be combined"
assert_fails bc node-add "driver=iscsi,node-name=x3,filename=http://$P/$IQN/1"
assert_contains "$BD_OUT" "invalid iSCSI URL"
assert_fails bc node-add "driver=iscsi,node-name=x4,portal=$P,lun=1"
assert_contains "$BD_OUT" "Parameter 'target' is missing"
assert_fails bc node-add "driver=iscsi,node-name=x5,portal=$P,target=$IQN,lun=1,transport=iser"
assert_contains "$BD_OUT" "iser"
# nothing listens there: refused within the timeout, the daemon goes on
port=$(bd_free_port)
assert_fails bc node-add "driver=iscsi,node-name=x6,portal=127.0.0.1:$port,target=$IQN,lun=1,timeout=3"
assert_contains "$BD_OUT" "cannot log in to $IQN at 127.0.0.1:$port: connection refused"
assert_eq "$(nbdinfo --size "$U1")" 67108864

bc export-del e2 >/dev/null
bc node-del i2 >/dev/null
bd_stop
