#!/bin/bash
# qcow2-compress.sh - the compress filter over qcow2 (zlib and zstd, 64k and 4k clusters): a
# whole image written with nbdcopy (compressible, incompressible and zero clusters), then
# unaligned writes with qemu-io (heads and tails pass through uncompressed) and a second pass
# over compressed clusters; `qemu-img check` is clean with no leaks and reports compressed
# clusters, the file is much smaller than the data, `qemu-img compare` equals a raw reference.
# A compress filter over a driver without compressed writes is refused with QEMU's message.
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io nbdcopy python3
bd_tmpdir
M=$((1024 * 1024))

python3 - "$T/data.raw" <<'EOF'
import os, random, sys
random.seed(7)
b = bytearray()
for i in range(32 * 16):
    k = i % 4
    if k == 0:
        b += bytes([i % 251 + 1]) * 65536
    elif k == 1:
        b += random.randbytes(65536)
    elif k == 2:
        b += ((b'blockd compress %06d ' % i) * 2900)[:65536]
    else:
        b += bytes(65536)
b = b[:32 << 20]
b += bytes((32 << 20) - len(b))
open(sys.argv[1], 'wb').write(b)
EOF

run_case()
{
	local name=$1 opts=$2 img="$T/$1.qcow2" ref="$T/$1.ref"
	qemu-img create -q -f qcow2 -o "$opts" "$img" 32M
	cp "$T/data.raw" "$ref"
	bd_start --nbd-server addr.type=unix,addr.path="$T/s-$name" \
		--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
		--blockdev driver=compress,node-name=c,file=q \
		--export type=nbd,id=e,node-name=c,writable=on
	local uri
	uri=$(bd_nbd_unix_uri "$T/s-$name" c)
	nbdcopy "$T/data.raw" "$uri" || fail "$name: nbdcopy"
	# unaligned writes: head, whole clusters and tail in one request; inside one cluster
	local cmds=(-c "write -q -P 0x61 $((3 * M + 1000)) $((300 * 1024))"
		-c "write -q -P 0x62 $((5 * M + 4096)) 512"
		-c "write -q -P 0x63 $((31 * M)) 1M"
		-c "write -q -z $((7 * M)) 256k")
	qemu-io -f raw "${cmds[@]}" "$uri" >/dev/null || fail "$name: qemu-io"
	qemu-io -f raw "${cmds[@]}" "$ref" >/dev/null
	# a second pass over compressed clusters: they lose their references
	nbdcopy "$T/data.raw" "$uri" || fail "$name: nbdcopy 2"
	qemu-io -f raw -c "write -q -P 0x64 $((9 * M)) 2M" "$uri" >/dev/null
	cp "$T/data.raw" "$ref"
	qemu-io -f raw -c "write -q -P 0x64 $((9 * M)) 2M" "$ref" >/dev/null
	bd_stop
	local chk
	chk=$(qemu-img check "$img" 2>&1) || fail "$name: qemu-img check: $chk"
	assert_contains "$chk" "No errors were found"
	assert_not_contains "$chk" "leaked"
	assert_match "$chk" "(6[5-9]|7[0-9])\.[0-9]+% compressed clusters"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$img" || fail "$name: data differs"
	local sz
	sz=$(stat -c %s "$img")
	# 32M of data, a quarter incompressible and a quarter zeroes: the rest compresses
	[ "$sz" -lt $((14 * M)) ] || fail "$name: image is $sz bytes, not compressed"
	echo "$name: $(echo "$chk" | tail -2 | head -1), file $sz bytes"
}

run_case zlib64k "cluster_size=65536"
run_case zlib4k "cluster_size=4096"
run_case zstd64k "compression_type=zstd"

# refused over a driver without compressed writes
qemu-img create -q -f raw "$T/r.raw" 1M
bd_start --control "$T/c" --blockdev "driver=raw,node-name=r,file.driver=file,file.filename=$T/r.raw"
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
out=$("$BLOCKCTL" --socket "$T/c" qmp blockdev-add '{"driver": "compress", "node-name": "c", "file": "r"}' 2>&1) &&
	fail "compress over raw accepted"
assert_contains "$out" "Compression is not supported for underlying format: raw"
bd_stop
echo ok
