#!/bin/bash
# pool-disk.sh - a disk pool on a loop device: build writes a partition table (refused over an
# existing one without --overwrite), volumes are partitions named after their device node
# (made visible with partx: this kernel has no partition table parser), a partition exported
# over NBD is in use and cannot be deleted, delete wipes the table.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
need_root
need losetup parted partx blkid wipefs
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
start() { bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock"; }

truncate -s 256M "$T/disk.img"
LOOP=$(losetup --find --show "$T/disk.img") || skip "losetup cannot attach a loop device"
bd_on_exit "losetup -d '$LOOP'"
N=$(basename "$LOOP")

start
assert_eq "$(bc pool-define-as dk disk --source-dev "$LOOP" --source-format gpt)" "Pool dk defined"
assert_fails bc pool-start dk # no partition table yet
assert_eq "$(bc pool-build dk)" "Pool dk built"
assert_eq "$(blkid -p -o value -s PTTYPE "$LOOP")" gpt
assert_fails bc pool-build dk
assert_contains "$BD_OUT" "already has a 'gpt' partition table"
assert_eq "$(bc pool-build dk --overwrite)" "Pool dk built"
assert_eq "$(bc pool-start dk)" "Pool dk started"

assert_fails bc vol-create-as dk foo 64M
assert_contains "$BD_OUT" "named after their partition: the next one is '${N}p1'"
assert_eq "$(bc vol-create-as dk "${N}p1" 64M)" "Vol ${N}p1 created"
assert_eq "$(bc vol-create-as dk "${N}p2" 32M)" "Vol ${N}p2 created"
bd_wait_for 5 test -b "${LOOP}p2"
assert_eq "$(blockdev --getsize64 "${LOOP}p1")" 67108864
out=$(bc vol-list dk --details)
assert_contains "$out" " ${N}p1   ${LOOP}p1   block   64.00 MiB"
assert_contains "$out" " ${N}p2   ${LOOP}p2   block   32.00 MiB"
assert_contains "$(bc pool-info dk)" "Capacity:       256.00 MiB"
assert_fails bc vol-resize "${N}p1" 128M --pool dk
assert_contains "$BD_OUT" "not supported"

# data through the volume, and the volume over NBD
head -c 65536 /dev/urandom >"$T/data"
bc vol-upload "${N}p2" "$T/data" --pool dk >/dev/null
cmp -n 65536 "$T/data" "${LOOP}p2" || fail "upload did not reach the partition"
bc vol-export "${N}p2" --pool dk >/dev/null
if command -v nbdinfo >/dev/null; then
	assert_eq "$(nbdinfo --size "nbd+unix:///${N}p2?socket=$T/nbd.sock")" 33554432
fi
assert_fails bc vol-delete "${N}p2" --pool dk
assert_contains "$BD_OUT" "in use"
assert_fails bc pool-destroy dk
bc export-del "${N}p2" --hard >/dev/null
bc node-del "${N}p2" >/dev/null

# restart: the definition survives; the partitions are still there
bd_stop
start
bc pool-start dk >/dev/null
assert_contains "$(bc vol-list dk)" "${N}p2"
assert_eq "$(bc vol-delete "${N}p1" --pool dk)" "Vol ${N}p1 deleted"
assert_not_contains "$(bc vol-list dk)" "${N}p1 "
bc vol-delete "${N}p2" --pool dk >/dev/null
assert_eq "$(bc pool-destroy dk)" "Pool dk destroyed"
assert_eq "$(bc pool-delete dk)" "Pool dk deleted"
assert_eq "$(blkid -p -o value -s PTTYPE "$LOOP" || true)" ""
assert_eq "$(bc pool-undefine dk)" "Pool dk has been undefined"
bd_stop
