#!/bin/bash
# qcow2-write.sh - images written by blockd through NBD are images QEMU trusts: pattern writes,
# partial-cluster writes (copy-on-write from zeroes, from a backing file and from compressed
# clusters), write-zeroes (with and without unmap), discard (also with extended L2 entries);
# two exports of the node on two loops so that requests are handed to the node's owner loop.
# Afterwards `qemu-img check` is clean and `qemu-img compare` matches a raw image that received
# the same writes via qemu-io.
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io
bd_tmpdir

# The same command list goes to blockd (through NBD, alternating between two exports) and to
# a raw reference image (qemu-io directly).
gen_cmds()
{
	local seed=$1 lo=$2 hi=$3 i off len
	RANDOM=$seed
	for ((i = 0; i < 60; i++)); do
		len=$((1 + (RANDOM * 32768 + RANDOM) % 200000))
		off=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo - len)))
		case $((RANDOM % 6)) in
		0) echo "write -z $off $len" ;;
		1) echo "write -z -u $off $len" ;;
		*) echo "write -P $((RANDOM % 255 + 1)) $off $len" ;;
		esac
	done
}

run_case()
{
	local name=$1 create=$2 size=$3 seed=$4 backing=${5:-} extra=${6:-}
	local img=$T/$name.qcow2 ref=$T/$name.ref
	echo "== $name: $create"
	if [ -n "$backing" ]; then
		qemu-img create -q -f qcow2 -o "$create" -b "$backing" -F raw "$img" "$size"
		qemu-img convert -O raw "$img" "$ref"
	else
		qemu-img create -q -f qcow2 -o "$create" "$img" "$size"
		qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -c -P 0x6b 2M 256k' "$img" \
			>/dev/null 2>&1 || qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' "$img" >/dev/null
		qemu-img convert -O raw "$img" "$ref"
	fi
	# connection a writes the lower half, b the upper half (disjoint, so the result is
	# deterministic), concurrently, each on its own loop; they share L2 tables and refcounts
	local vsize half
	vsize=$(stat -c %s "$ref")
	half=$((vsize / 2))
	gen_cmds "$seed" 0 "$half" >"$T/cmds.a"
	gen_cmds "$((seed + 1000))" "$half" "$vsize" >"$T/cmds.b"
	bd_start --object iothread,id=t1 \
		--blockdev "driver=qcow2,node-name=q,discard=unmap,file.driver=file,file.filename=$img$extra" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e1,node-name=q,name=a,writable=on \
		--export type=nbd,id=e2,node-name=q,name=b,writable=on,iothread=t1
	local args_a=() args_b=() args_r=()
	while read -r line; do args_a+=(-c "$line"); args_r+=(-c "$line"); done <"$T/cmds.a"
	while read -r line; do args_b+=(-c "$line"); args_r+=(-c "$line"); done <"$T/cmds.b"
	qemu-io -f raw "${args_a[@]}" -c flush "$(bd_nbd_unix_uri "$T/s" a)" >"$T/qa.log" 2>&1 &
	local pa=$!
	qemu-io -f raw "${args_b[@]}" -c flush "$(bd_nbd_unix_uri "$T/s" b)" >"$T/qb.log" 2>&1 || {
		cat "$T/qb.log"
		fail "qemu-io b failed"
	}
	wait $pa || {
		cat "$T/qa.log"
		fail "qemu-io a failed"
	}
	# discard: contents afterwards are undefined; read what blockd says and apply to ref
	qemu-io -f raw -c "discard 64k 1M" -c "discard 3M 700k" "$(bd_nbd_unix_uri "$T/s" a)" >/dev/null
	qemu-img convert -f raw -O raw "$(bd_nbd_unix_uri "$T/s" a)" "$T/after.raw"
	bd_stop
	# the reference: the same writes, then what blockd reads in the discarded ranges
	qemu-io -f raw "${args_r[@]}" "$ref" >/dev/null
	dd if="$T/after.raw" of="$ref" bs=64k skip=1 seek=1 count=16 conv=notrunc status=none
	dd if="$T/after.raw" of="$ref" bs=1k skip=3072 seek=3072 count=700 conv=notrunc status=none
	local rc=0
	qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
	cat "$T/check.log"
	[ "$rc" = 0 ] || fail "$name: qemu-img check exited $rc"
	qemu-img compare -f raw -F raw "$T/after.raw" "$ref" || fail "$name: blockd read other bytes"
	qemu-img compare -f raw -F qcow2 "$T/after.raw" "$img" || fail "$name: QEMU reads other bytes"
}

run_case c64k "cluster_size=65536" 32M 1
run_case c512v2 "cluster_size=512,compat=0.10" 8M 2
run_case c4k1 "cluster_size=4096,refcount_bits=1" 16M 3
run_case c2m "cluster_size=2M,refcount_bits=64" 32M 4
run_case lazy "cluster_size=65536,lazy_refcounts=on" 16M 5
head -c 6M /dev/urandom >"$T/back.raw"
run_case backed "cluster_size=16384" 8M 6 "$T/back.raw"
# extended L2 entries: write-zeroes set subcluster zero bits, discard drops whole clusters
run_case ext64k "cluster_size=65536,extended_l2=on" 16M 8
run_case ext32k-backed "cluster_size=32768,extended_l2=on" 8M 9 "$T/back.raw"
# O_DIRECT on the image file: metadata sector writes go through the core's read-modify-write
if [ "$(stat -f -c %T "$T")" != tmpfs ]; then
	run_case direct "cluster_size=4096" 8M 7 "" ",cache.direct=on"
fi
echo "qcow2 write: OK"
