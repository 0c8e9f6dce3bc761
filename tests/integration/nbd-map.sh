#!/bin/bash
# nbd-map.sh - block status through NBD: nbdinfo --map (base:allocation) shows the data and the
# holes of a sparse image, qemu:allocation-depth is offered only with allocation-depth=on and
# maps the image, qemu-img map agrees, and reads of holes come back as zeroes.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo qemu-img nbdcopy truncate

bd_tmpdir
img=$T/sparse.raw
truncate -s 64M "$img"
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=4 conv=notrunc status=none
head -c 1M /dev/urandom | dd of="$img" bs=1M seek=40 conv=notrunc status=none
sock=$T/nbd.sock
bd_start --blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=r,name=disk,allocation-depth=on \
	--export type=nbd,id=e1,node-name=r,name=plain
uri=$(bd_nbd_unix_uri "$sock" disk)

map=$(nbdinfo --map "$uri")
echo "$map"
# holes where nothing was written, data where it was
data=$(awk '$4 == "data" { s += $2 } END { print s + 0 }' <<<"$map")
holes=$(awk '$3 == 3 { s += $2 } END { print s + 0 }' <<<"$map")
assert_eq "$data" 2097152 "data bytes in the map"
assert_eq "$holes" $((62 * 1048576)) "hole,zero bytes in the map"
assert_match "$(awk '$1 == 4194304 { print $4 }' <<<"$map")" "data" "data at 4M"
assert_match "$(awk '$1 == 0 { print $4 }' <<<"$map")" "hole" "hole at 0"
total=$(awk '{ s += $2 } END { print s }' <<<"$map")
assert_eq "$total" 67108864 "the map covers the export"

dmap=$(nbdinfo --map=qemu:allocation-depth "$uri")
echo "$dmap"
dtotal=$(awk '{ s += $2 } END { print s }' <<<"$dmap")
assert_eq "$dtotal" 67108864 "the depth map covers the export"
assert_contains "$dmap" "local" "raw on file: allocated in this layer"

out=$(nbdinfo --json "$(bd_nbd_unix_uri "$sock" plain)")
assert_not_contains "$out" "allocation-depth" "no depth context without allocation-depth=on"
assert_fails nbdinfo --map=qemu:allocation-depth "$(bd_nbd_unix_uri "$sock" plain)"

qmap=$(qemu-img map --output=json -f raw "$uri")
echo "$qmap"
assert_contains "$qmap" '"start": 4194304, "length": 1048576, "depth": 0, "present": true, "zero": false, "data": true'
assert_contains "$qmap" '"start": 0, "length": 4194304, "depth": 0, "present": true, "zero": true, "data": false'

# structured reads of holes return zeroes
nbdcopy "$uri" "$T/copy.raw"
cmp "$img" "$T/copy.raw" || fail "copy differs"
bd_stop
