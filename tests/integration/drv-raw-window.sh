#!/bin/bash
# drv-raw-window.sh: raw offset/size windows put the bytes at the right place of the file and
# never outside; invalid windows are refused with QEMU's messages.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io nbdinfo nbdcopy cmp dd

bd_tmpdir
IMG=$T/disk.img
bd_random_file "$T/orig.img" 4096 # 4 MiB
cp "$T/orig.img" "$IMG"

qio()
{
	local out
	out=$(qemu-io -f raw "$URI" "$@" 2>&1) || fail "qemu-io $*: $out"
	if grep -qE "failed|error|Pattern verification" <<<"$out"; then
		fail "qemu-io $*: $out"
	fi
}

for direct in off on; do
	echo "== window offset=1M size=1M, cache.direct=$direct"
	bd_start --blockdev "driver=file,node-name=f,filename=$IMG,cache.direct=$direct" \
		--blockdev driver=raw,node-name=r,file=f,offset=1M,size=1M \
		--blockdev driver=raw,node-name=r2,file=f,offset=3584K \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=r,name=r,writable=on \
		--export type=nbd,id=e2,node-name=r2,name=r2,writable=on
	URI=$(bd_nbd_unix_uri "$T/s" r)
	URI2=$(bd_nbd_unix_uri "$T/s" r2)
	assert_eq "$(nbdinfo --size "$URI")" 1048576 "window size"
	assert_eq "$(nbdinfo --size "$URI2")" 524288 "window size (offset only)"

	# reads see the file's bytes of the window
	nbdcopy "$URI" "$T/win.img"
	dd if="$IMG" of="$T/expect.img" bs=1M skip=1 count=1 status=none
	assert_file_eq "$T/win.img" "$T/expect.img"

	# writes land inside the window
	qio -c "write -P 0x11 0 4096" -c "write -P 0x22 1044480 4096" -c "write -P 0x33 5000 3"
	URI=$URI2 qio -c "write -P 0x44 524287 1"
	# beyond the window: refused (by the client or the export), nothing lands after it
	out=$(qemu-io -f raw "$URI" -c "write -P 0x99 1048576 512" 2>&1 || true)
	assert_match "$out" "(failed|out of|Invalid|error)" "write beyond the window"
	bd_stop

	cp "$T/orig.img" "$T/expect.img"
	qemu-io -f raw -c "write -P 0x11 1M 4096" -c "write -P 0x22 2093056 4096" \
		-c "write -P 0x33 1053576 3" -c "write -P 0x44 4194303 1" "$T/expect.img" >/dev/null
	assert_file_eq "$IMG" "$T/expect.img"
	cp "$IMG" "$T/orig.img"
done

echo "== invalid windows"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG" \
	--blockdev driver=raw,node-name=r,file=f,offset=5M
assert_contains "$BD_OUT" "Offset (5242880) cannot be greater than size of the containing file (4194304)"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG" \
	--blockdev driver=raw,node-name=r,file=f,offset=3M,size=2M
assert_contains "$BD_OUT" "has to be smaller or equal to the actual size of the containing file"
assert_exit 1 "$BLOCKD" --blockdev "driver=file,node-name=f,filename=$IMG" \
	--blockdev driver=raw,node-name=r,file=f,size=1000
assert_contains "$BD_OUT" "Specified size is not multiple of 512"
assert_exit 1 "$BLOCKD" --blockdev driver=raw,node-name=r,file=nosuchnode
assert_contains "$BD_OUT" "nosuchnode"
echo "PASS"
