#!/bin/bash
# throttle-data.sh: data goes through a throttle node unchanged (writes, reads, write-zeroes,
# discard, flush) over NBD onto a file, and a generous limit still lets a copy finish.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io

bd_tmpdir
bd_sparse_image "$T/img" 16M
bd_random_file "$T/data" 8192
bd_start --object throttle-group,id=tg,x-bps-total=$((64 * 1024 * 1024)),x-iops-total=2000 \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=t,name=t,writable=on
URI=$(bd_nbd_unix_uri "$T/s" t)

# 8 MiB of random data in, then out again.
assert_ok qemu-img convert -n -f raw -O raw "$T/data" "$URI"
assert_ok qemu-img convert -f raw -O raw "$URI" "$T/out"
head -c $((8 * 1024 * 1024)) "$T/out" >"$T/out8"
assert_file_eq "$T/data" "$T/out8"

# write-zeroes, discard and flush pass through (and count as writes without failing).
assert_ok qemu-io -f raw "$URI" -c "write -z 0 1M" -c "discard 1M 1M" -c "flush" \
	-c "read -P 0 0 1M" -c "write -P 0x5a 4M 64k" -c "read -P 0x5a 4M 64k"

bd_stop
cmp -n $((1024 * 1024)) "$T/img" /dev/zero || fail "write-zeroes did not reach the file"
