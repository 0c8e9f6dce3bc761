#!/bin/bash
# nbd-readonly.sh - a read-only NBD export (the default: writable=off) refuses writes, write
# zeroes and trims with EPERM and still serves reads; the image is untouched.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io nbdinfo truncate

bd_tmpdir
img=$T/disk.raw
truncate -s 16M "$img"
head -c 1M /dev/urandom | dd of="$img" conv=notrunc status=none
cp "$img" "$T/orig.raw"
sock=$T/nbd.sock
bd_start --blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=r,name=disk
uri=$(bd_nbd_unix_uri "$sock" disk)

assert_exit 0 nbdinfo --is read-only "$uri"
assert_exit 2 nbdinfo --can write "$uri"
for cmd in 'write -P 0x11 0 4k' 'write -z 0 4k' 'discard 0 4k'; do
	# qemu-io opens read-write; the server tells it the export is read-only, so qemu may
	# refuse before sending; force it by opening without checks through the nbd driver.
	out=$(qemu-io -f raw -c "$cmd" "$uri" 2>&1 || true)
	assert_match "$out" "(Operation not permitted|read-only|Read-only|Permission denied)" "$cmd"
done
out=$(qemu-io -r -f raw -c 'read 0 1M' "$uri" 2>&1) || fail "read: $out"
assert_contains "$out" "read 1048576/1048576"
bd_stop
cmp "$img" "$T/orig.raw" || fail "read-only image changed"
