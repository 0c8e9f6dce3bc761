#!/bin/bash
# qcow2-subcluster.sh - writes to images with extended L2 entries (subclusters) through an NBD
# export: a matrix of images made by qemu-img (16k/64k/2M clusters, with a raw backing file,
# with QEMU-written data, zero subclusters and compressed clusters, an internal snapshot whose
# clusters are shared) gets random writes of odd sizes and offsets (and write-zeroes) from
# qemu-io; the same commands go to a raw reference.  `qemu-img check` is clean and
# `qemu-img compare` equal.  A 1-byte write into an empty cluster allocates one subcluster only
# (`qemu-img map`), and a second write into the same cluster only its own subclusters.
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir
M=$((1024 * 1024))

# case NAME SIZE CREATE-OPTIONS [BACKING]: prepare the image with QEMU, write through blockd
run_case()
{
	local name=$1 size=$2 opts=$3 backing=${4:-} img="$T/$1.qcow2" ref="$T/$1.ref"
	if [ -n "$backing" ]; then
		qemu-img create -q -f qcow2 -o "$opts" -b "$backing" -F raw "$img" "$size"
	else
		qemu-img create -q -f qcow2 -o "$opts" "$img" "$size"
	fi
	# QEMU writes some data, zeroes (zero subclusters), and maybe a snapshot
	qemu-io -f qcow2 -c "write -q -P 0x21 1000 100k" -c "write -q -z 300k 40k" \
		-c "write -q -P 0x22 $((size / 2)) 3k" "$img" >/dev/null
	case $name in
	*snap*) qemu-img snapshot -c s0 "$img" ;;
	esac
	qemu-img convert -f qcow2 -O raw "$img" "$ref"
	python3 - "$size" "$RANDOM" >"$T/cmds" <<'EOF'
import random, sys
size, seed = int(sys.argv[1]), int(sys.argv[2])
r = random.Random(seed)
for i in range(120):
    n = r.choice([1, 511, 513, 2047, 4096, 5000, 65537, 200000, r.randrange(1, 300000)])
    off = r.randrange(0, size - n)
    if r.random() < 0.15:
        print("write -q -z %d %d" % (off, n))
    else:
        print("write -q -P %d %d %d" % (r.randrange(1, 255), off, n))
EOF
	local args=()
	while read -r c; do args+=(-c "$c"); done <"$T/cmds"
	bd_start --nbd-server addr.type=unix,addr.path="$T/s-$name" \
		--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
		--export type=nbd,id=e,node-name=q,writable=on
	qemu-io -f raw "${args[@]}" "$(bd_nbd_unix_uri "$T/s-$name" q)" >/dev/null ||
		fail "$name: writes through blockd failed"
	bd_stop
	qemu-io -f raw "${args[@]}" "$ref" >/dev/null
	local chk
	chk=$(qemu-img check "$img" 2>&1) || fail "$name: qemu-img check: $chk"
	assert_contains "$chk" "No errors were found"
	assert_not_contains "$chk" "leaked"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$img" || fail "$name: data differs from the reference"
	echo "$name: clean, equal"
}

qemu-img create -q -f raw "$T/base.raw" 12M
qemu-io -f raw -c "write -q -P 0x5a 0 12M" "$T/base.raw" >/dev/null
run_case ext64k $((16 * M)) "extended_l2=on,cluster_size=64k"
run_case ext16k $((16 * M)) "extended_l2=on,cluster_size=16k"
run_case ext2m $((16 * M)) "extended_l2=on,cluster_size=2M"
run_case ext64k-backing $((16 * M)) "extended_l2=on,cluster_size=64k" "$T/base.raw"
run_case ext32k-snap $((16 * M)) "extended_l2=on,cluster_size=32k"
run_case ext64k-snap-backing $((16 * M)) "extended_l2=on,cluster_size=64k" "$T/base.raw"
# compressed clusters (QEMU writes them with extended L2 entries too)
qemu-img convert -c -f raw -O qcow2 -o extended_l2=on,cluster_size=64k "$T/base.raw" "$T/comp.qcow2"
cp "$T/comp.qcow2" "$T/ext64k-comp.qcow2"
qemu-img convert -f qcow2 -O raw "$T/comp.qcow2" "$T/ext64k-comp.ref"
bd_start --nbd-server addr.type=unix,addr.path="$T/s-comp" \
	--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$T/ext64k-comp.qcow2" \
	--export type=nbd,id=e,node-name=q,writable=on
cmds=(-c "write -q -P 0x31 70000 3000" -c "write -q -P 0x32 $((5 * M - 100)) 200" -c "write -q -z 200k 2k")
qemu-io -f raw "${cmds[@]}" "$(bd_nbd_unix_uri "$T/s-comp" q)" >/dev/null || fail "comp: writes"
bd_stop
qemu-io -f raw "${cmds[@]}" "$T/ext64k-comp.ref" >/dev/null
chk=$(qemu-img check "$T/ext64k-comp.qcow2" 2>&1) || fail "comp: qemu-img check: $chk"
qemu-img compare -q -f raw -F qcow2 "$T/ext64k-comp.ref" "$T/ext64k-comp.qcow2" || fail "comp: data differs"

# subcluster granularity: 64k clusters have 2k subclusters
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "$T/g.qcow2" 1M
bd_start --nbd-server addr.type=unix,addr.path="$T/s-g" \
	--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$T/g.qcow2" \
	--export type=nbd,id=e,node-name=q,writable=on
qemu-io -f raw -c "write -q -P 0x41 10000 1" -c "write -q -P 0x42 40000 3000" \
	"$(bd_nbd_unix_uri "$T/s-g" q)" >/dev/null || fail "granularity: writes"
bd_stop
map=$(qemu-img map --output=json "$T/g.qcow2")
python3 - "$map" <<'EOF' || fail "granularity: unexpected map $map"
import json, sys
m = json.loads(sys.argv[1])
data = [(e["start"], e["start"] + e["length"]) for e in m if e["data"]]
# byte 10000 lies in subcluster 4 [8192, 10240); 40000..43000 in subclusters 19..20 [38912, 43008)
assert data == [(8192, 10240), (38912, 43008)], data
EOF
qemu-img check -q "$T/g.qcow2" || fail "granularity: check"
# internal snapshots made by blockd on an extended-L2 image: writes after the snapshot copy the
# shared clusters, deleting it frees them
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
if [ -x "$BLOCKCTL" ]; then
	qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k "$T/sn.qcow2" 4M
	qemu-img create -q -f raw "$T/sn.ref" 4M
	bd_start --control "$T/c-sn" --nbd-server addr.type=unix,addr.path="$T/s-sn" \
		--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$T/sn.qcow2" \
		--export type=nbd,id=e,node-name=q,writable=on
	u=$(bd_nbd_unix_uri "$T/s-sn" q)
	c1=(-c "write -q -P 0x51 1000 300k")
	c2=(-c "write -q -P 0x52 5000 3000" -c "write -q -P 0x53 200k 1")
	qemu-io -f raw "${c1[@]}" "$u" >/dev/null
	"$BLOCKCTL" --socket "$T/c-sn" qmp blockdev-snapshot-internal-sync '{"device": "q", "name": "a"}' >/dev/null
	qemu-io -f raw "${c2[@]}" "$u" >/dev/null
	qemu-img convert -U -f qcow2 -l snapshot.name=a -O raw "$T/sn.qcow2" "$T/sn-a.raw"
	"$BLOCKCTL" --socket "$T/c-sn" qmp blockdev-snapshot-delete-internal-sync '{"device": "q", "name": "a"}' >/dev/null
	bd_stop
	qemu-io -f raw "${c1[@]}" "$T/sn.ref" >/dev/null
	cmp "$T/sn.ref" "$T/sn-a.raw" || fail "ext snapshot: the snapshot's data"
	qemu-io -f raw "${c2[@]}" "$T/sn.ref" >/dev/null
	chk=$(qemu-img check "$T/sn.qcow2" 2>&1) || fail "ext snapshot: qemu-img check: $chk"
	assert_not_contains "$chk" "leaked"
	qemu-img compare -q -f raw -F qcow2 "$T/sn.ref" "$T/sn.qcow2" || fail "ext snapshot: data differs"
fi
echo ok
