#!/bin/bash
# drv-file-lock.sh: image locking is QEMU's: while blockd has an image open writable, qemu-img
# (without -U) and a second blockd cannot open it, qemu-img -U can; while qemu-storage-daemon
# writes to an image, blockd cannot open it; read-only opens coexist; locking=off disables.
#
# The image is a qcow2 file (blockd serves its bytes with driver=file): qemu-img's qcow2 driver
# refuses to share "write" on its file, so `qemu-img info` sees blockd's write lock.  On a raw
# image `qemu-img info` shares everything and succeeds, exactly as it does against a QEMU guest.
# meson-timeout: 90
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io

bd_tmpdir
IMG=$T/disk.qcow2
qemu-img create -q -f qcow2 "$IMG" 64M

echo "== blockd writable vs qemu-img and qemu-io"
bd_start --blockdev "driver=file,node-name=f,filename=$IMG" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,writable=on
W1=$BD_PID
assert_fails qemu-img info "$IMG"
assert_contains "$BD_OUT" "Failed to get shared \"write\" lock"
assert_ok qemu-img info -U "$IMG"
assert_fails qemu-img check "$IMG"
assert_contains "$BD_OUT" "lock"
assert_fails qemu-io -f raw -c "write 0 512" "$IMG"
assert_contains "$BD_OUT" "Failed to get \"write\" lock"
# a raw image: qemu-img info shares everything and gets in, writers do not
bd_sparse_image "$T/raw.img" 1M
bd_start --blockdev "driver=file,node-name=f,filename=$T/raw.img"
RAW=$BD_PID
assert_ok qemu-img info "$T/raw.img"
assert_fails qemu-io -f raw -c "write 0 512" "$T/raw.img"
assert_contains "$BD_OUT" "lock"
bd_stop "$RAW"

echo "== a second blockd, writable and read-only"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG"
assert_contains "$BD_OUT" "Failed to get \"write\" lock"
assert_contains "$BD_OUT" "Is another process using the image [$IMG]?"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on"
assert_contains "$BD_OUT" "Failed to get shared \"write\" lock"
# force-share (read-only) is let in, like qemu-img -U
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on,force-share=on"
bd_stop
# locking=off is let in
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,locking=off"
bd_stop
bd_stop "$W1"

echo "== after blockd exits the image is free"
assert_ok qemu-img info "$IMG"

echo "== two read-only blockd coexist, let readers in and keep writers out"
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on"
R1=$BD_PID
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on"
R2=$BD_PID
assert_ok qemu-img info "$IMG"
assert_ok qemu-img check "$IMG"
assert_fails qemu-io -f raw -c "write 0 512" "$IMG"
assert_contains "$BD_OUT" "lock"
bd_stop "$R2"
bd_stop "$R1"

echo "== blockd with locking=off holds no locks"
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,locking=off"
assert_ok qemu-io -f raw -c "write 0 512" "$IMG"
bd_stop

if command -v qemu-storage-daemon >/dev/null 2>&1; then
	echo "== qemu-storage-daemon writable vs blockd"
	bd_spawn qsd qemu-storage-daemon --blockdev "driver=file,node-name=f,filename=$IMG" \
		--nbd-server addr.type=unix,addr.path="$T/qsd.sock" \
		--export type=nbd,id=e,node-name=f,writable=on
	QSD=$BD_SPAWN_PID
	bd_wait_socket "$T/qsd.sock"
	# qsd's NBD export shares write but not resize: blockd (which takes resize) is refused
	assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG"
	assert_contains "$BD_OUT" "lock"
	assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on"
	assert_contains "$BD_OUT" "Failed to get shared \"write\" lock"
	bd_start --blockdev "driver=file,node-name=f,filename=$IMG,read-only=on,force-share=on"
	bd_stop
	bd_kill "$QSD"
else
	echo "qemu-storage-daemon not installed: its part is skipped"
fi
echo "PASS"
