#!/bin/bash
# drv-null.sh: null-co sizes (default 1 GiB like QEMU), read-zeroes, block status, latency-ns, and
# every op accepted.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io nbdinfo

bd_tmpdir
bd_start --blockdev driver=null-co,node-name=n0 \
	--blockdev driver=null-co,node-name=n1,size=64M,read-zeroes=on \
	--blockdev driver=null-co,node-name=n2,size=1048576,latency-ns=200000000 \
	--blockdev driver=null-co,node-name=n3,size=3T \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e0,node-name=n0,writable=on \
	--export type=nbd,id=e1,node-name=n1,writable=on \
	--export type=nbd,id=e2,node-name=n2,writable=on \
	--export type=nbd,id=e3,node-name=n3
U0=$(bd_nbd_unix_uri "$T/s" n0)
U1=$(bd_nbd_unix_uri "$T/s" n1)
U2=$(bd_nbd_unix_uri "$T/s" n2)
U3=$(bd_nbd_unix_uri "$T/s" n3)

assert_eq "$(nbdinfo --size "$U0")" 1073741824 "default size"
assert_eq "$(nbdinfo --size "$U1")" 67108864 "size=64M"
assert_eq "$(nbdinfo --size "$U2")" 1048576 "size=1048576"
assert_eq "$(nbdinfo --size "$U3")" 3298534883328 "size=3T"

out=$(qemu-io -f raw "$U1" -c "write -P 0x55 0 1M" -c "read -P 0 0 1M" -c "write -z 0 1M" \
	-c "discard 0 1M" -c "flush" -c "write -f -P 1 1 3" 2>&1)
assert_not_contains "$out" "failed"
assert_not_contains "$out" "verification"
assert_contains "$(nbdinfo --map "$U1")" "hole,zero"
out=$(qemu-io -f raw "$U0" -c "write -P 0x55 0 64k" -c "read 0 64k" 2>&1)
assert_not_contains "$out" "failed"

# latency-ns: a read takes at least that long
start=$(date +%s%N)
out=$(qemu-io -f raw "$U2" -c "read 0 4096" 2>&1)
end=$(date +%s%N)
assert_not_contains "$out" "failed"
[ $(((end - start) / 1000000)) -ge 200 ] || fail "latency-ns=200ms but the read took $(((end - start) / 1000000)) ms"
bd_stop

assert_exit 1 "$BLOCKD" --blockdev driver=null-co,node-name=n,size=abc
assert_exit 1 "$BLOCKD" --blockdev driver=null-co,node-name=n,filename=x
echo "PASS"
