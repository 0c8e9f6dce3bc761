#!/bin/bash
# pool-logical.sh - a logical (LVM2) pool on a loop device: build makes the PV and the VG,
# volumes are LVs (created, resized, deleted with the lvm2 tools).  This kernel has no
# device-mapper, so the tools run with --driverloaded n and an LV's bytes are reached as a
# window of its PV: the test checks that window against the extents lvm reports.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
need_root
need losetup pvcreate vgcreate lvcreate lvs pvs vgs blkid
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
export LVM_SUPPRESS_FD_WARNINGS=1
export LVM_SYSTEM_DIR=$T/lvm # metadata backups and archives stay in $T
mkdir -p "$LVM_SYSTEM_DIR"
bc() { "$BLOCKCTL" "$@"; }
start() { bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock"; }
VG=bdvg$$

truncate -s 256M "$T/pv.img"
LOOP=$(losetup --find --show "$T/pv.img") || skip "losetup cannot attach a loop device"
bd_on_exit "vgremove -q -f -y $VG; pvremove -q -y '$LOOP'; losetup -d '$LOOP'"

start
printf "<pool type='logical'><name>%s</name><source><device path='%s'/><format type='lvm2'/></source><target><path>/dev/%s</path></target></pool>" \
	"$VG" "$LOOP" "$VG" >"$T/pool.xml"
assert_eq "$(bc pool-define "$T/pool.xml")" "Pool $VG defined from $T/pool.xml"
assert_fails bc pool-start "$VG" # no VG yet
assert_contains "$BD_OUT" "not found"
assert_eq "$(bc pool-start "$VG" --build)" "Pool $VG started"
assert_eq "$(vgs --noheadings -o vg_name "$VG" 2>/dev/null | tr -d ' ')" "$VG"
assert_contains "$(bc pool-info "$VG")" "Capacity:       252.00 MiB"
out=$(bc find-storage-pool-sources logical)
assert_contains "$out" "<device path='$LOOP'/>"
assert_contains "$out" "<name>$VG</name>"
# building again over the PV needs overwrite (and an inactive pool)
bc pool-destroy "$VG" >/dev/null
assert_fails bc pool-build "$VG"
assert_contains "$BD_OUT" "LVM2_member"
bc pool-start "$VG" >/dev/null

assert_eq "$(bc vol-create-as "$VG" lv0 16M)" "Vol lv0 created"
assert_eq "$(bc vol-create-as "$VG" lv1 8M)" "Vol lv1 created"
out=$(bc vol-list "$VG" --details)
assert_contains "$out" " lv0    /dev/$VG/lv0   block   16.00 MiB"
assert_contains "$out" " lv1    /dev/$VG/lv1   block   8.00 MiB"
assert_eq "$(bc vol-resize lv0 32M --pool "$VG")" "Size of volume 'lv0' successfully changed to 32M"
assert_eq "$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/lv0" 2>/dev/null | tr -d ' ')" 33554432
assert_fails bc vol-resize lv0 16M --pool "$VG"
assert_contains "$BD_OUT" "shrink"
bc vol-resize lv0 24M --pool "$VG" --shrink >/dev/null
assert_eq "$(lvs --noheadings --units b --nosuffix -o lv_size "$VG/lv0" 2>/dev/null | tr -d ' ')" 25165824

# the bytes of lv1 are where lvm says its extents are
head -c 65536 /dev/urandom >"$T/data"
bc vol-upload lv1 "$T/data" --pool "$VG" >/dev/null
pe_start=$(pvs --noheadings --units b --nosuffix -o pe_start "$LOOP" 2>/dev/null | tr -d ' ')
ext=$(vgs --noheadings --units b --nosuffix -o vg_extent_size "$VG" 2>/dev/null | tr -d ' ')
range=$(lvs --noheadings -o seg_pe_ranges "$VG/lv1" 2>/dev/null | tr -d ' ')
first=${range##*:}
first=${first%-*}
off=$((pe_start + first * ext))
cmp -n 65536 "$T/data" <(tail -c +$((off + 1)) "$T/pv.img") || fail "lv1's data is not at offset $off"
bc vol-download lv1 "$T/back" --pool "$VG" --length 65536 >/dev/null
assert_file_eq "$T/data" "$T/back"
# a clone is a new LV with the same bytes (written in full: a reused extent keeps old data)
assert_eq "$(bc vol-clone lv1 lv2 --pool "$VG")" "Vol lv2 cloned from lv1"
assert_contains "$(lvs --noheadings -o lv_name "$VG" 2>/dev/null)" lv2
bc vol-download lv1 "$T/lv1.all" --pool "$VG" >/dev/null
bc vol-download lv2 "$T/lv2.all" --pool "$VG" >/dev/null
assert_eq "$(stat -c %s "$T/lv2.all")" 8388608
assert_file_eq "$T/lv1.all" "$T/lv2.all"
bc vol-delete lv2 --pool "$VG" >/dev/null
bc vol-export lv1 --pool "$VG" >/dev/null
if command -v nbdinfo >/dev/null; then
	assert_eq "$(nbdinfo --size "nbd+unix:///lv1?socket=$T/nbd.sock")" 8388608
fi
bc export-del lv1 --hard >/dev/null
bc node-del lv1 >/dev/null

# restart keeps the definition
bd_stop
start
bc pool-start "$VG" >/dev/null
assert_contains "$(bc vol-list "$VG")" lv1
assert_eq "$(bc vol-delete lv0 --pool "$VG")" "Vol lv0 deleted"
bc vol-delete lv1 --pool "$VG" >/dev/null
assert_eq "$(lvs --noheadings "$VG" 2>/dev/null | wc -l)" 0
bc pool-destroy "$VG" >/dev/null
assert_eq "$(bc pool-delete "$VG")" "Pool $VG deleted"
vgs "$VG" >/dev/null 2>&1 && fail "VG $VG still exists"
bc pool-undefine "$VG" >/dev/null
bd_stop
