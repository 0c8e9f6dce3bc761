#!/bin/bash
# pool-fs.sh - fs pools on a loop device, with ext4 and xfs: build makes the file system (and
# refuses to build over an existing one without --overwrite), start mounts it, volumes live in
# it, destroy unmounts it; the pool comes back mounted after a restart when it is autostarted.
# meson-suite: slow
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
need_root
need losetup blkid mount umount mkfs.ext4 mkfs.xfs
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
start() { bd_start --state-dir "$T/var" --control "$T/ctl.sock"; }

# One loop device per file system, detached (exactly the one we got) at exit.
truncate -s 512M "$T/disk.img" # xfsprogs refuses file systems below 300 MiB
LOOP=$(losetup --find --show "$T/disk.img") || skip "losetup cannot attach a loop device"
bd_on_exit "umount '$T/mnt' 2>/dev/null; losetup -d '$LOOP'"

start
for fs in ext4 xfs; do
	wipefs -a -q "$LOOP" 2>/dev/null || dd if=/dev/zero of="$LOOP" bs=1M count=4 status=none
	bc pool-define-as fsp fs --source-dev "$LOOP" --source-format "$fs" --target "$T/mnt" >/dev/null
	assert_eq "$(bc pool-build fsp)" "Pool fsp built"
	assert_eq "$(blkid -p -o value -s TYPE "$LOOP")" "$fs"
	# the file system is there now: building again needs --overwrite
	assert_fails bc pool-build fsp
	assert_contains "$BD_OUT" "already contains a '$fs' file system"
	assert_fails bc pool-build fsp --no-overwrite
	assert_eq "$(bc pool-build fsp --overwrite)" "Pool fsp built"
	assert_eq "$(bc pool-start fsp)" "Pool fsp started"
	grep -q " $T/mnt $fs " /proc/self/mounts || fail "$fs not mounted on $T/mnt"
	assert_match "$(bc pool-info fsp --bytes | grep Capacity)" '^Capacity:       [0-9]+$'
	bc vol-create-as fsp v1 64M >/dev/null
	assert_eq "$(stat -c %s "$T/mnt/v1")" 67108864
	assert_contains "$(bc vol-list fsp)" " v1 "
	assert_fails bc pool-build fsp --overwrite
	assert_contains "$BD_OUT" "active"
	bc pool-autostart fsp >/dev/null

	# restart: the autostart pool is mounted (still, or again) and lists its volume
	bd_stop
	umount "$T/mnt"
	start
	grep -q " $T/mnt $fs " /proc/self/mounts || fail "$fs not mounted again after restart"
	assert_contains "$(bc vol-list fsp)" " v1 "

	assert_eq "$(bc pool-destroy fsp)" "Pool fsp destroyed"
	! grep -q " $T/mnt " /proc/self/mounts || fail "$fs still mounted after pool-destroy"
	assert_eq "$(bc pool-delete fsp)" "Pool fsp deleted"
	assert_not_exists "$T/mnt"
	bc pool-undefine fsp >/dev/null
done

# find-storage-pool-sources sees the device and its file system
out=$(bc find-storage-pool-sources fs)
assert_contains "$out" "<device path='$LOOP'/>"
bd_stop
