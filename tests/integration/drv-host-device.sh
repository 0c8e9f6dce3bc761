#!/bin/bash
# drv-host-device.sh: host_device on a loop device: size, reads and writes (with and without
# cache.direct), write-zeroes and discard reaching the backing file, and the driver type checks
# (host_device refuses a regular file, file refuses a block device).
# meson-timeout: 120
# meson-parallel: false
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need_root
need losetup qemu-io nbdinfo nbdcopy cmp
[ -e /dev/loop-control ] || skip "no loop device support (/dev/loop-control)"

bd_tmpdir
BACK=$T/back.img
bd_random_file "$BACK" 16384 # 16 MiB
cp "$BACK" "$T/orig.img"
LOOP=$(losetup --find --show "$BACK" 2>/dev/null) || skip "cannot attach a loop device"
# detach exactly that device at exit
bd_on_exit "losetup -d $LOOP"

qio()
{
	local out
	out=$(qemu-io -f raw "$URI" "$@" 2>&1) || fail "qemu-io $*: $out"
	if grep -qE "failed|error|Pattern verification" <<<"$out"; then
		fail "qemu-io $*: $out"
	fi
}

echo "== type checks"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$LOOP"
assert_contains "$BD_OUT" "to be a regular file"
assert_exit 1 "$BLOCKD" --blockdev "driver=host_device,node-name=f,filename=$BACK"
assert_contains "$BD_OUT" "to be a block device"

for direct in off on; do
	echo "== host_device $LOOP, cache.direct=$direct"
	bd_start --blockdev "driver=host_device,node-name=d,filename=$LOOP,cache.direct=$direct,discard=unmap" \
		--blockdev driver=raw,node-name=r,file=d,discard=unmap \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=r,name=r,writable=on
	URI=$(bd_nbd_unix_uri "$T/s" r)
	assert_eq "$(nbdinfo --size "$URI")" 16777216 "device size"
	nbdcopy "$URI" "$T/out.img"
	assert_file_eq "$T/out.img" "$T/orig.img"
	qio -c "write -P 0x11 0 64k" -c "write -P 0x22 1 3" -c "write -f -P 0x33 1M 1M" \
		-c "write -z 4M 1M" -c "write -z -u 6M 1M" -c "discard 8M 1M" -c "flush"
	qio -c "read -P 0x11 0 1" -c "read -P 0x22 1 3" -c "read -P 0x11 4 65532" \
		-c "read -P 0x33 1M 1M" -c "read -P 0 4M 1M" -c "read -P 0 6M 1M"
	bd_stop
	# the loop device wrote through to its backing file
	sync
	cp "$T/orig.img" "$T/expect.img"
	qemu-io -f raw -c "write -P 0x11 0 64k" -c "write -P 0x22 1 3" -c "write -P 0x33 1M 1M" \
		-c "write -z 4M 1M" -c "write -z 6M 1M" "$T/expect.img" >/dev/null
	# the discarded MiB is unspecified: take it from the device
	dd if="$LOOP" of="$T/expect.img" bs=1M skip=8 seek=8 count=1 conv=notrunc status=none
	cmp "$LOOP" "$T/expect.img" || fail "device content differs"
	cp "$T/expect.img" "$T/orig.img"
done

echo "== locking on the device"
bd_start --blockdev "driver=host_device,node-name=d,filename=$LOOP"
assert_exit 1 "$BLOCKD" --blockdev "driver=host_device,node-name=d,filename=$LOOP"
assert_contains "$BD_OUT" "lock"
bd_stop
echo "PASS"
