#!/bin/bash
# drv-file-io.sh: the file driver reads and writes the right bytes through raw and NBD, with and
# without cache.direct (O_DIRECT: unaligned and 1-byte-offset writes go through the core's
# read-modify-write), with aio=io_uring / threads / native, with FUA writes, and on an image whose
# size is not a multiple of the O_DIRECT alignment.
# meson-timeout: 180
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io qemu-img nbdcopy nbdinfo cmp

bd_tmpdir
IMG=$T/disk.img
SRC=$T/src.img

qio()
{
	# qemu-io on the export; fails the test (with its output) on any error
	local out
	out=$(qemu-io -f raw "$URI" "$@" 2>&1) || fail "qemu-io $*: $out"
	if grep -qE "failed|error|Pattern verification" <<<"$out"; then
		fail "qemu-io $*: $out"
	fi
}

run_case()
{
	local opts=$1
	echo "== file options: $opts"
	bd_random_file "$SRC" 8192 # 8 MiB
	cp "$SRC" "$IMG"
	bd_start --blockdev "driver=file,node-name=f,filename=$IMG,$opts" \
		--blockdev driver=raw,node-name=r,file=f \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=r,name=r,writable=on
	URI=$(bd_nbd_unix_uri "$T/s" r)

	assert_eq "$(nbdinfo --size "$URI")" 8388608 "export size"
	# the export shows the file's bytes
	nbdcopy "$URI" "$T/out.img"
	assert_file_eq "$T/out.img" "$SRC"

	# aligned, unaligned, 1-byte offsets, FUA, crossing block boundaries
	qio -c "write -P 0x11 0 64k" -c "write -P 0x22 1 1" -c "write -P 0x33 4095 2" \
		-c "write -f -P 0x44 100000 3000" -c "write -P 0x55 1048575 70000" \
		-c "write -P 0x66 8388607 1" -c "flush"
	qio -c "read -P 0x11 0 1" -c "read -P 0x22 1 1" -c "read -P 0x11 2 4093" \
		-c "read -P 0x33 4095 2" -c "read -P 0x11 4097 61439" \
		-c "read -P 0x44 100000 3000" -c "read -P 0x55 1048575 70000" \
		-c "read -P 0x66 8388607 1"
	# a whole-image copy in, then out again
	bd_random_file "$T/src2.img" 8192
	nbdcopy "$T/src2.img" "$URI"
	nbdcopy "$URI" "$T/out2.img"
	assert_file_eq "$T/out2.img" "$T/src2.img"
	qio -c "write -P 0x77 12345 54321"
	bd_stop

	# the bytes landed in the file itself
	local expect=$T/expect.img
	cp "$T/src2.img" "$expect"
	qemu-io -f raw -c "write -P 0x77 12345 54321" "$expect" >/dev/null
	assert_file_eq "$IMG" "$expect"
}

run_case "aio=io_uring"
run_case "cache.direct=on"
run_case "cache.direct=on,aio=threads"
run_case "aio=threads"
run_case "aio=native,cache.direct=on,aio-max-batch=16,x-check-cache-dropped=on"

# An image whose size is not a multiple of the O_DIRECT alignment: the tail reads and writes.
echo "== unaligned image size with cache.direct=on"
bd_random_file "$IMG" 10
head -c 10000 "$IMG" >"$SRC"
cp "$SRC" "$IMG"
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,cache.direct=on" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=r,writable=on
URI=$(bd_nbd_unix_uri "$T/s" r)
# the node shows the last block whole: the size is rounded up to the O_DIRECT alignment
esize=$(nbdinfo --size "$URI")
[ "$esize" -ge 10000 ] && [ $((esize % 512)) = 0 ] && [ "$esize" -le 12288 ] ||
	fail "unaligned image: export size $esize"
nbdcopy "$URI" "$T/out.img"
cmp -n 10000 "$T/out.img" "$SRC" || fail "unaligned image: bytes differ"
tail -c +10001 "$T/out.img" | cmp -n $((esize - 10000)) - /dev/zero || fail "tail is not zero"
qio -c "write -P 0x5a 9990 10" -c "write -P 0xa5 8190 4"
qio -c "read -P 0x5a 9990 10" -c "read -P 0xa5 8190 4"
bd_stop
cp "$SRC" "$T/expect.img"
qemu-io -f raw -c "write -P 0x5a 9990 10" -c "write -P 0xa5 8190 4" "$T/expect.img" >/dev/null
# O_DIRECT writes whole blocks at the end: the file may have grown to the alignment, with zeroes
cmp -n 10000 "$IMG" "$T/expect.img" || fail "unaligned tail: bytes differ"
size=$(stat -c %s "$IMG")
[ "$size" -ge 10000 ] || fail "file shrank to $size"
if [ "$size" -gt 10000 ]; then
	tail -c +10001 "$IMG" | cmp -n $((size - 10000)) - /dev/zero || fail "padding is not zero"
fi
# Another process truncates the file under blockd: reads inside the lost part fail with an I/O
# error (no hang, no stale data), reads of what is left still work.
echo "== file truncated under blockd"
bd_random_file "$IMG" 8192
bd_start --blockdev "driver=file,node-name=f,filename=$IMG,locking=off" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=r,writable=on
URI=$(bd_nbd_unix_uri "$T/s" r)
truncate -s 4M "$IMG"
out=$(qemu-io -f raw "$URI" -c "read 6M 4k" 2>&1 || true)
assert_contains "$out" "read failed"
out=$(qemu-io -f raw "$URI" -c "read 4190208 8192" 2>&1 || true)
assert_contains "$out" "read failed"
qio -c "read 1M 64k"
bd_stop
echo "PASS"
