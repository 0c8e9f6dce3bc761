#!/bin/bash
# qcow2-corrupt.sh - damaged and hostile images: blockd refuses them with a clear error, or
# serves them without ever writing outside the metadata rules.  An L2 entry aimed at the L1
# table (with the COPIED flag, so that a guest write would land on metadata) makes the write
# fail with EIO, logs "image is corrupt" (BLOCK_IMAGE_CORRUPTED), marks the image corrupt, and
# leaves the L1 table untouched; headers with tables past the end of the file, overlapping
# metadata, unknown incompatible features and a corrupt bit are refused (read-write).
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir

# patch IMG OFFSET HEX: write bytes at an offset
patch()
{
	python3 -c 'import sys
f = open(sys.argv[1], "r+b"); f.seek(int(sys.argv[2])); f.write(bytes.fromhex(sys.argv[3]))' "$@"
}
# be64 IMG OFFSET: read a big-endian u64
be64()
{
	python3 -c 'import sys, struct
f = open(sys.argv[1], "rb"); f.seek(int(sys.argv[2])); print(struct.unpack(">Q", f.read(8))[0])' "$@"
}

expect_refused()
{
	local img=$1 want=$2 ro=${3:-off}
	assert_fails "$BLOCKD" --blockdev "driver=qcow2,node-name=q,read-only=$ro,file.driver=file,file.filename=$img"
	assert_contains "$BD_OUT" "$want"
}

img=$T/a.qcow2
fresh()
{
	qemu-img create -q -f qcow2 "$img" 4M
	qemu-io -f qcow2 -c 'write -P 0x11 0 64k' "$img" >/dev/null
}

# 1. An L2 entry pointing at the L1 table's cluster, COPIED: a guest write must not land there;
# BLOCK_IMAGE_CORRUPTED reaches QMP clients.
fresh
l1=$(be64 "$img" 40)
l2=$(($(be64 "$img" "$l1") & 0x00fffffffffffe00))
patch "$img" "$l2" "$(printf '%016x' $(((1 << 63) | l1)))"
cp "$img" "$T/before.qcow2"
bd_start --blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
	--control "$T/c" \
	--nbd-server addr.type=unix,addr.path="$T/s" --export type=nbd,id=e,node-name=q,writable=on
# a QMP client collects the events
python3 - "$T/c" "$T/events" <<'PY' &
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
f.write('{"execute": "qmp_capabilities"}\n')
f.flush()
with open(sys.argv[2], "w") as out:
    for line in f:
        out.write(line)
        out.flush()
        if "BLOCK_IMAGE_CORRUPTED" in line:
            break
PY
evpid=$!
bd_wait_for 10 grep -q '"return"' "$T/events"
out=$(qemu-io -f raw -c 'write -P 0x22 0 4k' "$(bd_nbd_unix_uri "$T/s" q)" 2>&1) || true
assert_contains "$out" "error"
bd_wait_for 5 grep -q BLOCK_IMAGE_CORRUPTED "$T/events"
kill $evpid 2>/dev/null || true
ev=$(grep BLOCK_IMAGE_CORRUPTED "$T/events")
assert_contains "$ev" '"node-name": "q"'
assert_contains "$ev" '"fatal": true'
assert_contains "$ev" 'active L1 table'
bd_stop
assert_file_contains "$T/blockd.log" "image is corrupt"
cmp -s -i "$l1:$l1" -n 65536 "$img" "$T/before.qcow2" || fail "the L1 table was modified"
# the corrupt bit is now set: QEMU and blockd refuse read-write, allow read-only
expect_refused "$img" "Image is corrupt; cannot be opened read/write"
qemu-img info "$img" | grep -q "corrupt: true" || fail "corrupt bit not set"

# 1b. A COPIED flag forged on a cluster shared with an internal snapshot: blockd must copy it
# on write (its refcount is 2), so the snapshot keeps its data.
qemu-img create -q -f qcow2 "$img" 4M
qemu-io -f qcow2 -c 'write -P 0x33 0 128k' "$img" >/dev/null
qemu-img snapshot -c s1 "$img"
l1=$(be64 "$img" 40)
l2=$(($(be64 "$img" "$l1") & 0x00fffffffffffe00))
e0=$(be64 "$img" "$l2")
patch "$img" "$l2" "$(printf '%016x' $((e0 | (1 << 63))))"
bd_start --blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
	--nbd-server addr.type=unix,addr.path="$T/s" --export type=nbd,id=e,node-name=q,writable=on
qemu-io -f raw -c 'write -P 0x44 0 4k' "$(bd_nbd_unix_uri "$T/s" q)" >/dev/null
bd_stop
assert_file_contains "$T/blockd.2.log" "OFLAG_COPIED data cluster"
out=$(qemu-img convert -l snapshot.name=s1 -O raw "$img" "$T/s1.raw" 2>&1 &&
	qemu-io -f raw -r -c 'read -P 0x33 0 128k' "$T/s1.raw")
assert_not_contains "$out" "verification failed"
out=$(qemu-io -f qcow2 -r -c 'read -P 0x44 0 4k' -c 'read -P 0x33 4k 124k' "$img")
assert_not_contains "$out" "verification failed"

# 2. L1 table past the end of the file.
fresh
patch "$img" 40 "0000000100000000"
expect_refused "$img" "past the end of the file" on

# 3. Refcount table overlapping the header.
fresh
patch "$img" 48 "0000000000000000"
expect_refused "$img" "Invalid reference count table offset" on

# 4. L1 table on top of the refcount table (a refcount loop in disguise).
fresh
patch "$img" 40 "$(printf '%016x' "$(be64 "$img" 48)")"
expect_refused "$img" "overlaps" on

# 5. Unknown incompatible feature, named through the feature name table when present.
fresh
patch "$img" 72 "0000000000000100"
expect_refused "$img" "Unsupported qcow2 feature(s)" on

# 6. An absurd size / L1 size.
fresh
patch "$img" 24 "7fffffffffffffff"
expect_refused "$img" "" on
fresh
patch "$img" 36 "ffffffff"
expect_refused "$img" "L1 table too large" on

# 7. Refcount block pointing at an L2 table.
fresh
rt=$(be64 "$img" 48)
patch "$img" "$((rt + 8))" "$(printf '%016x' "$l2")"
expect_refused "$img" "" on

# 8. Not qcow2 at all.
head -c 1M /dev/urandom >"$T/junk"
expect_refused "$T/junk" "Image is not in qcow2 format" on
echo "qcow2 corrupt: OK"
