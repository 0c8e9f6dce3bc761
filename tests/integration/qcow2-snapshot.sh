#!/bin/bash
# qcow2-snapshot.sh - internal snapshots through QMP under a live, busy NBD export:
# blockdev-snapshot-internal-sync while a writer keeps writing, `qemu-img snapshot -l` lists
# them, `qemu-img convert -l` reads each snapshot as of its moment, QEMU's errors (duplicate
# name, read-only node, a driver without snapshots, unknown snapshot), and
# blockdev-snapshot-delete-internal-sync returns the SnapshotInfo and frees the clusters only
# the snapshot held: `qemu-img check` clean with no leaks, the active image equal to a raw
# reference.
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q()
{
	"$BLOCKCTL" --socket "$T/c" qmp "$@"
}
M=$((1024 * 1024))

qemu-img create -q -f qcow2 "$T/img.qcow2" 16M
qemu-img create -q -f raw "$T/ro.raw" 1M
qemu-img create -q -f qcow2 "$T/ro.qcow2" 1M
bd_start --control "$T/c" --nbd-server addr.type=unix,addr.path="$T/s"
q blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"q\", \"file\": {\"driver\": \"file\", \"filename\": \"$T/img.qcow2\"}}" >/dev/null
q blockdev-add "{\"driver\": \"raw\", \"node-name\": \"r\", \"file\": {\"driver\": \"file\", \"filename\": \"$T/ro.raw\"}}" >/dev/null
q blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"qro\", \"read-only\": true, \"file\": {\"driver\": \"file\", \"filename\": \"$T/ro.qcow2\"}}" >/dev/null
q block-export-add '{"type": "nbd", "id": "e", "node-name": "q", "writable": true}' >/dev/null
URI=$(bd_nbd_unix_uri "$T/s" q)

# A busy writer in the second half (8M..16M, 64k chunks, pattern changing every pass) for as
# long as $T/busy exists.
writer()
{
	local pass=0 cmds
	while [ -e "$T/busy" ]; do
		cmds=()
		for ((i = 0; i < 128; i++)); do
			cmds+=(-c "write -q -P $((0x40 + pass % 32)) $((8 * M + i * 65536)) 64k")
		done
		qemu-io -f raw "${cmds[@]}" "$URI" >/dev/null || {
			echo "writer failed" >"$T/writer.err"
			return
		}
		pass=$((pass + 1))
	done
}

qemu-io -f raw -c "write -q -P 0x11 0 8M" "$URI" >/dev/null
touch "$T/busy"
writer &
WPID=$!
bd_on_exit "rm -f '$T/busy'; kill $WPID 2>/dev/null"
sleep 0.5
q blockdev-snapshot-internal-sync '{"device": "q", "name": "s1"}' >/dev/null
# after s1: the first 4M change, then s2, then 1M of them again
qemu-io -f raw -c "write -q -P 0x33 0 4M" "$URI" >/dev/null
sleep 0.3
q blockdev-snapshot-internal-sync '{"device": "q", "name": "s2"}' >/dev/null
qemu-io -f raw -c "write -q -P 0x44 2M 1M" "$URI" >/dev/null

# QEMU's errors
out=$(q blockdev-snapshot-internal-sync '{"device": "q", "name": "s1"}' 2>&1) && fail "duplicate name accepted"
assert_contains "$out" "Snapshot with name 's1' already exists on device 'q'"
out=$(q blockdev-snapshot-internal-sync '{"device": "q", "name": ""}' 2>&1) && fail "empty name accepted"
assert_contains "$out" "Name is empty"
out=$(q blockdev-snapshot-internal-sync '{"device": "r", "name": "x"}' 2>&1) && fail "raw accepted"
assert_contains "$out" "does not support internal snapshots"
out=$(q blockdev-snapshot-internal-sync '{"device": "qro", "name": "x"}' 2>&1) && fail "read-only accepted"
assert_contains "$out" "is read only"
out=$(q blockdev-snapshot-internal-sync '{"device": "nope", "name": "x"}' 2>&1) && fail "unknown node accepted"
assert_contains "$out" "Cannot find device"
out=$(q blockdev-snapshot-delete-internal-sync '{"device": "q", "name": "nope"}' 2>&1) && fail "unknown snapshot deleted"
assert_contains "$out" "does not exist"
out=$(q blockdev-snapshot-delete-internal-sync '{"device": "q"}' 2>&1) && fail "delete without id or name accepted"
assert_contains "$out" "Name or id must be provided"

# QEMU lists them (read-only, sharing the image with the running daemon)
list=$(qemu-img snapshot -U -l "$T/img.qcow2")
assert_contains "$list" "s1"
assert_contains "$list" "s2"
info=$(q query-named-block-nodes '{}')
assert_contains "$info" '"name": "s2"'

# each snapshot reads as of its moment
qemu-img convert -U -f qcow2 -l snapshot.name=s1 -O raw "$T/img.qcow2" "$T/s1.raw"
qemu-img convert -U -f qcow2 -l snapshot.name=s2 -O raw "$T/img.qcow2" "$T/s2.raw"
python3 - "$T/s1.raw" "$T/s2.raw" <<'EOF' || fail "snapshot contents wrong"
import sys
M = 1 << 20
s1 = open(sys.argv[1], 'rb').read()
s2 = open(sys.argv[2], 'rb').read()
assert len(s1) == len(s2) == 16 * M, "sizes"
assert s1[:8 * M] == b'\x11' * (8 * M), "s1 first half"
assert s2[:4 * M] == b'\x33' * (4 * M) and s2[4 * M:8 * M] == b'\x11' * (4 * M), "s2 first half"
# the half the writer was busy with: every 64k chunk whole (one pattern or zeroes)
for img, nm in ((s1, "s1"), (s2, "s2")):
    for o in range(8 * M, 16 * M, 65536):
        c = img[o:o + 65536]
        assert c == bytes([c[0]]) * 65536, "%s: torn chunk at %d" % (nm, o)
        assert c[0] == 0 or 0x40 <= c[0] < 0x60, "%s: odd byte at %d" % (nm, o)
EOF

# delete s1 by name while the writer is still busy: the SnapshotInfo comes back
out=$(q blockdev-snapshot-delete-internal-sync '{"device": "q", "name": "s1"}')
assert_contains "$out" '"name": "s1"'
assert_contains "$out" '"id": "1"'
assert_contains "$out" '"vm-clock-nsec"'
rm -f "$T/busy"
wait "$WPID"
[ ! -e "$T/writer.err" ] || fail "the writer failed during the snapshots"
list=$(qemu-img snapshot -U -l "$T/img.qcow2")
assert_not_contains "$list" "s1"
assert_contains "$list" "s2"
# s2 still reads as before after s1 went away
qemu-img convert -U -f qcow2 -l snapshot.name=s2 -O raw "$T/img.qcow2" "$T/s2b.raw"
cmp "$T/s2.raw" "$T/s2b.raw" || fail "s2 changed when s1 was deleted"

# a known final state in the busy half, then delete s2 by id
qemu-io -f raw -c "write -q -P 0x55 8M 8M" "$URI" >/dev/null
out=$(q blockdev-snapshot-delete-internal-sync '{"device": "q", "id": "2"}')
assert_contains "$out" '"name": "s2"'
q block-export-del '{"id": "e"}' >/dev/null
sleep 0.3
q blockdev-del '{"node-name": "q"}' >/dev/null
bd_stop

qemu-img snapshot -l "$T/img.qcow2" | grep -q . && fail "snapshots left: $(qemu-img snapshot -l "$T/img.qcow2")"
chk=$(qemu-img check --output=json "$T/img.qcow2") || fail "qemu-img check: $chk"
assert_not_contains "$chk" '"corruptions"'
assert_not_contains "$chk" '"leaks"'
# every cluster is the active image's again: 16M of data (+ metadata) allocated, no more
alloc=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated-clusters"])' <<<"$chk")
assert_eq "$alloc" 256
qemu-img create -q -f raw "$T/ref.raw" 16M
qemu-io -f raw -c "write -q -P 0x33 0 4M" -c "write -q -P 0x44 2M 1M" -c "write -q -P 0x11 4M 4M" \
	-c "write -q -P 0x55 8M 8M" "$T/ref.raw" >/dev/null
qemu-img compare -q "$T/ref.raw" "$T/img.qcow2" || fail "active image differs from the reference"
echo "ok"
