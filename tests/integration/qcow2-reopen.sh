#!/bin/bash
# qcow2-reopen.sh - blockdev-reopen of qcow2 nodes: read-only to read-write, then writes
# through an export; back to read-only (writes refused, the lazy dirty bit cleared: QEMU
# finds the image clean while blockd still has it open); the L2 cache size and discard
# options change; lazy-refcounts and load-snapshot changes are refused.
# QEMU checks the image and its data at the end.
# meson-timeout: 120
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q()
{
	"$BLOCKCTL" --socket "$T/c" qmp "$@"
}

qemu-img create -q -f qcow2 -o lazy_refcounts=on "$T/img.qcow2" 8M
qemu-io -f qcow2 -c "write -q -P 0x11 0 1M" "$T/img.qcow2" >/dev/null
F="{\"driver\": \"file\", \"node-name\": \"f\", \"filename\": \"$T/img.qcow2\""
Q='{"driver": "qcow2", "node-name": "q", "file": "f"'

bd_start --control "$T/c" --nbd-server addr.type=unix,addr.path="$T/s"
# (the file driver cannot change read-only while open: the file node stays read-write)
q blockdev-add "$F}" >/dev/null
q blockdev-add "$Q, \"read-only\": true}" >/dev/null
q block-export-add '{"type": "nbd", "id": "e", "node-name": "q", "writable": true}' >"$T/out" 2>&1 || true
URI=$(bd_nbd_unix_uri "$T/s" q)

# read-write
q blockdev-reopen "{\"options\": [$Q, \"read-only\": false}]}" >/dev/null
q block-export-del '{"id": "e"}' >/dev/null 2>&1 || true
sleep 0.2
q block-export-add '{"type": "nbd", "id": "e2", "node-name": "q", "writable": true}' >/dev/null
qemu-io -f raw -c "write -q -P 0x22 512k 1M" -c "write -q -P 0x23 6M 100k" "$URI" >/dev/null ||
	fail "writes after the reopen to read-write"
# lazy refcounts: the image is marked dirty while open read-write
python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(72); sys.exit(0 if struct.unpack(">Q", f.read(8))[0] & 1 else 1)' "$T/img.qcow2" ||
	fail "lazy image not dirty while open read-write"

# refused changes
out=$(q blockdev-reopen "{\"options\": [$Q, \"lazy-refcounts\": false}]}" 2>&1) && fail "lazy-refcounts change accepted"
assert_contains "$out" "Cannot change lazy-refcounts"
out=$(q blockdev-reopen "{\"options\": [$Q, \"read-only\": true, \"load-snapshot\": \"x\"}]}" 2>&1) && fail "load-snapshot change accepted"
assert_contains "$out" "Cannot change load-snapshot"
# options that change: the L2 cache (a smaller one still reads right) and discard
q blockdev-reopen "{\"options\": [$Q, \"l2-cache-size\": 65536, \"pass-discard-request\": true}]}" >/dev/null
qemu-io -f raw -c "read -q -P 0x22 512k 1M" -c "read -q -P 0x11 0 512k" "$URI" >"$T/r1" 2>&1
assert_not_contains "$(cat "$T/r1")" "failed"

# back to read-only: writes refused, the image clean on disk while still open
q blockdev-reopen "{\"options\": [$Q, \"read-only\": true}]}" >/dev/null
if qemu-io -f raw -c "write -q -P 0x33 0 4k" "$URI" >"$T/w" 2>&1 && ! grep -q "failed" "$T/w"; then
	fail "write accepted on a read-only node"
fi
qemu-img check -U "$T/img.qcow2" >"$T/chk" 2>&1 || fail "not clean after the reopen to read-only: $(cat "$T/chk")"
python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(72); sys.exit(1 if struct.unpack(">Q", f.read(8))[0] & 1 else 0)' "$T/img.qcow2" ||
	fail "dirty bit still set after the reopen to read-only"
q block-export-del '{"id": "e2"}' >/dev/null
sleep 0.2
q blockdev-del '{"node-name": "q"}' >/dev/null
q blockdev-del '{"node-name": "f"}' >/dev/null
bd_stop

qemu-img check -q "$T/img.qcow2" || fail "qemu-img check"
qemu-img create -q -f raw "$T/ref.raw" 8M
qemu-io -f raw -c "write -q -P 0x11 0 1M" -c "write -q -P 0x22 512k 1M" -c "write -q -P 0x23 6M 100k" \
	"$T/ref.raw" >/dev/null
qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$T/img.qcow2" || fail "data differs"
echo ok
