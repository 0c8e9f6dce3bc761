#!/bin/bash
# drv-file-zero-discard.sh: discard=unmap punches holes in the file (fewer allocated blocks, holes
# in nbdinfo --map); write-zeroes reads back zeroes, keeps the allocation without may-unmap and
# punches with it; discard=ignore leaves the file alone; block status reports data and holes.
# meson-timeout: 120
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-io nbdinfo stat

bd_tmpdir
IMG=$T/disk.img
MiB=1048576

blocks_kib()
{
	# allocated KiB of the image
	echo $(($(stat -c '%b * %B' "$1") / 1024))
}

qio()
{
	local out
	out=$(qemu-io -f raw "$URI" "$@" 2>&1) || fail "qemu-io $*: $out"
	if grep -qE "failed|error|Pattern verification" <<<"$out"; then
		fail "qemu-io $*: $out"
	fi
}

start()
{
	bd_start --blockdev "driver=file,node-name=f,filename=$IMG,$1" \
		--blockdev "driver=raw,node-name=r,file=f,$2" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=r,name=r,writable=on
	URI=$(bd_nbd_unix_uri "$T/s" r)
}

for direct in off on; do
	echo "== cache.direct=$direct, discard=unmap"
	bd_sparse_image "$IMG" 16M
	start "cache.direct=$direct,discard=unmap" "discard=unmap"
	qio -c "write -P 0xaa 0 8M"
	qio -c "flush"
	before=$(blocks_kib "$IMG")
	[ "$before" -ge 8192 ] || fail "8 MiB written but only $before KiB allocated"

	# block status: data then hole
	map=$(nbdinfo --map "$URI")
	echo "$map"
	assert_match "$(head -1 <<<"$map")" "^ +0 +8388608 +0 +data" "map of the data"
	assert_match "$(tail -1 <<<"$map")" "^ +8388608 +8388608 +3 +hole,zero" "map of the hole"

	# discard punches
	qio -c "discard 1M 2M"
	qio -c "read -P 0 1M 2M"
	after=$(blocks_kib "$IMG")
	[ "$after" -le $((before - 2000)) ] || fail "discard did not punch: $before KiB -> $after KiB"
	nbdinfo --map "$URI" | grep -qE "^ +1048576 +2097152 +3 +hole,zero" ||
		fail "discarded range is not a hole: $(nbdinfo --map "$URI")"

	# write-zeroes without may-unmap: zeroes, allocation kept
	before=$(blocks_kib "$IMG")
	qio -c "write -z 4M 1M"
	qio -c "read -P 0 4M 1M" -c "read -P 0xaa 5M 1M" -c "read -P 0xaa 3M 1M"
	after=$(blocks_kib "$IMG")
	[ "$after" -ge $((before - 16)) ] || fail "write-zeroes without unmap deallocated: $before -> $after"

	# write-zeroes with may-unmap punches
	before=$(blocks_kib "$IMG")
	qio -c "write -z -u 6M 1M"
	qio -c "read -P 0 6M 1M" -c "read -P 0xaa 7M 1M"
	after=$(blocks_kib "$IMG")
	[ "$after" -le $((before - 1000)) ] || fail "write-zeroes with unmap did not punch: $before -> $after"

	# write-zeroes with FUA, and unaligned
	qio -c "write -P 0xbb 9M 1M" -c "write -z -f 9M 512k" -c "write -z 9961473 1000"
	qio -c "read -P 0 9M 512k" -c "read -P 0xbb 9961472 1" -c "read -P 0 9961473 1000" \
		-c "read -P 0xbb 9962473 86103"
	bd_stop
	# the file holds the same
	qemu-io -f raw -c "read -P 0 1M 2M" -c "read -P 0xaa 3M 1M" -c "read -P 0 4M 1M" \
		-c "read -P 0 6M 1M" -c "read -P 0 9M 512k" "$IMG" | grep -q "verification" &&
		fail "file content wrong"
done

echo "== discard=ignore"
bd_sparse_image "$IMG" 16M
start "discard=ignore" "discard=ignore"
qio -c "write -P 0xaa 0 4M" -c "flush"
before=$(blocks_kib "$IMG")
qio -c "discard 0 4M"
qio -c "read -P 0xaa 0 4M"
qio -c "write -z -u 0 1M"
qio -c "read -P 0 0 1M"
after=$(blocks_kib "$IMG")
[ "$after" -ge $((before - 16)) ] || fail "discard=ignore deallocated: $before -> $after"
bd_stop
echo "PASS"
