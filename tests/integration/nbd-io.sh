#!/bin/bash
# nbd-io.sh - data through the NBD export with real clients: qemu-io patterns (write -P,
# read -P, write -z, discard, aio_write, several commands per connection, FUA), an nbdcopy round
# trip compared byte for byte, qemu-img compare and convert, nbdcopy with 4 connections.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io qemu-img nbdcopy truncate cmp

bd_tmpdir
img=$T/disk.raw
truncate -s 128M "$img"
sock=$T/nbd.sock
bd_start --blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=r,name=disk,writable=on
uri=$(bd_nbd_unix_uri "$sock" disk)

qio()
{
	local out
	out=$(qemu-io -f raw "$@" "$uri" 2>&1) || fail "qemu-io $*: $out"
	if grep -qiE 'fail|error|mismatch|Pattern verification' <<<"$out"; then
		fail "qemu-io $*: $out"
	fi
}

qio -c 'write -P 0x11 0 1M' -c 'write -P 0x22 1M 64k' -c 'write -P 0x33 3M 4k' -c 'flush'
qio -c 'read -P 0x11 0 1M' -c 'read -P 0x22 1M 64k' -c 'read -P 0 1088k 1984k' -c 'read -P 0x33 3M 4k'
qio -c 'write -z 0 512k' -c 'read -P 0 0 512k' -c 'read -P 0x11 512k 512k'
qio -c 'write -z -u 512k 256k' -c 'read -P 0 512k 256k'
qio -c 'discard 2M 1M' -c 'write -P 0x44 2M 4k' -c 'read -P 0x44 2M 4k'
qio -c 'write -f -P 0x55 8M 128k' -c 'read -P 0x55 8M 128k'
qio -c 'aio_write -P 0x66 16M 64k' -c 'aio_write -P 0x67 17M 64k' -c 'aio_write -P 0x68 18M 1M' \
	-c 'aio_flush' -c 'read -P 0x66 16M 64k' -c 'read -P 0x67 17M 64k' -c 'read -P 0x68 18M 1M'
qio -c 'writev -P 0x77 20M 4k 8k 512' -c 'readv -P 0x77 20M 4k 8k 512'
qio -c 'write -P 0x88 127M 1M' -c 'read -P 0x88 127M 1M'
# unaligned, odd sizes
qio -c 'write -P 0x99 30000001 12345' -c 'read -P 0x99 30000001 12345'
# past the end fails cleanly (qemu's block layer refuses it before the server sees it)
out=$(qemu-io -f raw -c 'read 127M 2M' "$uri" 2>&1 || true)
assert_match "$out" "(Invalid argument|Input/output error)" "read past the end"

# nbdcopy round trip
head -c 32M /dev/urandom >"$T/src.bin"
truncate -s 128M "$T/src.bin"
nbdcopy "$T/src.bin" "$uri"
nbdcopy "$uri" "$T/out.bin"
assert_file_eq "$T/src.bin" "$T/out.bin"
out=$(qemu-img compare -f raw -F raw "$T/src.bin" "$uri" 2>&1) || fail "qemu-img compare: $out"
assert_contains "$out" "identical"

# 4 connections at once (the export advertises multi-conn)
head -c 64M /dev/urandom >"$T/src2.bin"
truncate -s 128M "$T/src2.bin"
nbdcopy --connections=4 --requests=16 "$T/src2.bin" "$uri"
nbdcopy --connections=4 "$uri" "$T/out2.bin"
assert_file_eq "$T/src2.bin" "$T/out2.bin"

# qemu-img convert into the export, with zero detection on the way
qemu-img convert -n -f raw -O raw "$T/src.bin" "$uri"
out=$(qemu-img compare -f raw -F raw "$T/src.bin" "$uri" 2>&1) || fail "qemu-img compare 2: $out"
bd_stop
cmp "$T/src.bin" "$img" || fail "image on disk differs after shutdown"
