#!/bin/bash
# qcow2-read-matrix.sh - images made by qemu-img/qemu-io (cluster sizes 512 B..2 MiB, compat 0.10
# and 1.1, refcount widths, zero and discarded clusters, compressed zlib/zstd, backing chains of
# qcow2 and raw) read through a blockd NBD export give exactly the bytes of
# `qemu-img convert -O raw`; block status reports depth for qemu:allocation-depth where the
# server offers it.
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io nbdcopy nbdinfo
bd_tmpdir

# read_cmp IMG [EXTRA-BLOCKDEV-OPTS]: export IMG read-only, copy it out, compare with qemu-img.
read_cmp()
{
	local img=$1 extra=${2:-}
	qemu-img convert -O raw "$img" "$T/want.raw"
	bd_start --blockdev "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=$img$extra" \
		--nbd-server addr.type=unix,addr.path="$T/s" --export type=nbd,id=e,node-name=q
	rm -f "$T/got.raw"
	nbdcopy "$(bd_nbd_unix_uri "$T/s" q)" "$T/got.raw"
	bd_stop
	assert_file_eq "$T/got.raw" "$T/want.raw"
	rm -f "$T/want.raw" "$T/got.raw"
}

n=0
for opts in "cluster_size=512,compat=0.10" "cluster_size=1024,refcount_bits=2" \
	"cluster_size=4096,refcount_bits=1" "cluster_size=65536" "cluster_size=65536,compat=0.10" \
	"cluster_size=262144,refcount_bits=32" "cluster_size=2M,refcount_bits=64" \
	"cluster_size=32768,lazy_refcounts=on,refcount_bits=8"; do
	n=$((n + 1))
	img=$T/m$n.qcow2
	qemu-img create -q -f qcow2 -o "$opts" "$img" 13M
	qemu-io -f qcow2 -c 'write -P 0x11 0 100k' -c 'write -P 0x22 1M 3M' -c 'write -z 2M 64k' \
		-c 'write -P 0x33 12287k 1k' -c 'discard 1536k 512k' -c 'write -P 0x44 5000k 3k' \
		-c 'write -z -u 3M 128k' -c 'write -P 0x55 9M 17k' "$img" >/dev/null
	read_cmp "$img"
done

# Compressed clusters (zlib, and zstd when qemu-img has it).
head -c 3M /dev/urandom >"$T/src.raw"
yes hello | head -c 2M >>"$T/src.raw"
truncate -s 9M "$T/src.raw"
qemu-img convert -c -O qcow2 "$T/src.raw" "$T/cz.qcow2"
read_cmp "$T/cz.qcow2"
if qemu-img convert -c -O qcow2 -o compression_type=zstd "$T/src.raw" "$T/cs.qcow2" 2>/dev/null; then
	read_cmp "$T/cs.qcow2"
fi
qemu-img convert -c -O qcow2 -o cluster_size=4096,compat=0.10 "$T/src.raw" "$T/c4.qcow2"
read_cmp "$T/c4.qcow2"

# Backing chain: raw <- qcow2 <- qcow2 (4k clusters) <- qcow2 v2, shorter backing files.
head -c 4M /dev/urandom >"$T/base.raw"
qemu-img create -q -f qcow2 -b base.raw -F raw "$T/base.qcow2" 6M
qemu-io -f qcow2 -c 'write -P 0x55 1M 1M' "$T/base.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=4096 -b base.qcow2 -F qcow2 "$T/mid.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x66 1536k 1M' -c 'write -z 512k 64k' "$T/mid.qcow2" >/dev/null
qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 "$T/top.qcow2" 8M 2>/dev/null ||
	qemu-img create -q -f qcow2 -o compat=0.10 -b mid.qcow2 -F qcow2 "$T/top.qcow2" 8M
qemu-io -f qcow2 -c 'write -P 0x77 3000k 5k' -c 'write -P 0x78 7M 4k' "$T/top.qcow2" >/dev/null
read_cmp "$T/top.qcow2"
# ... and the same chain with the backing given explicitly as a node.
qemu-img convert -O raw "$T/top.qcow2" "$T/want.raw"
bd_start --blockdev "driver=file,node-name=mf,filename=$T/mid.qcow2,read-only=on" \
	--blockdev "driver=qcow2,node-name=mid,file=mf,read-only=on" \
	--blockdev "driver=qcow2,node-name=q,read-only=on,backing=mid,file.driver=file,file.filename=$T/top.qcow2" \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=q,allocation-depth=on
nbdcopy "$(bd_nbd_unix_uri "$T/s" q)" "$T/got.raw"
# allocation depth: 3000k is in top (1), 1536k in mid (2), 1M in base.qcow2 (3), 0 in base.raw
# (4), 7.5M past the end of base.qcow2 (6M): zeroes of that short layer (3), as QEMU counts.
if map=$(nbdinfo --map=qemu:allocation-depth "$(bd_nbd_unix_uri "$T/s" q)" 2>&1); then
	echo "$map"
	depth_at()
	{
		echo "$map" | awk -v o="$1" '$1 <= o && o < $1 + $2 { print $3; exit }'
	}
	assert_eq "$(depth_at $((3000 * 1024)))" 1 "depth at 3000k"
	assert_eq "$(depth_at $((1536 * 1024 + 4096)))" 2 "depth at 1536k"
	assert_eq "$(depth_at $((1024 * 1024)))" 3 "depth at 1M"
	assert_eq "$(depth_at 0)" 4 "depth at 0"
	assert_eq "$(depth_at $((7 * 1024 * 1024 + 512 * 1024)))" 3 "depth at 7.5M"
else
	echo "$map"
	fail "qemu:allocation-depth is not offered"
fi
bd_stop
assert_file_eq "$T/got.raw" "$T/want.raw"

# The same maps as QEMU's own NBD server gives for the same chain.
if command -v qemu-nbd >/dev/null; then
	bd_spawn qemu-nbd qemu-nbd -r -A -t -k "$T/qs" -f qcow2 "$T/top.qcow2"
	bd_wait_socket "$T/qs"
	qdepth=$(nbdinfo --map=qemu:allocation-depth "nbd+unix:///?socket=$T/qs" | awk '{print $1, $2, $3}')
	bd_kill "$BD_SPAWN_PID"
	bd_start --blockdev "driver=qcow2,node-name=q,read-only=on,file.driver=file,file.filename=$T/top.qcow2" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,allocation-depth=on
	bdepth=$(nbdinfo --map=qemu:allocation-depth "$(bd_nbd_unix_uri "$T/s" q)" | awk '{print $1, $2, $3}')
	bd_stop
	assert_eq "$bdepth" "$qdepth" "qemu:allocation-depth, blockd vs qemu-nbd"
fi
echo "qcow2 read matrix: OK"
