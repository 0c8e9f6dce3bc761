#!/bin/bash
# qcow2-external-snapshot.sh - blockdev-snapshot puts a qcow2 overlay over a live node: one NBD
# connection keeps writing across the switch (and succeeds), writes after it land in the
# overlay (the base image keeps the old data), reads through the export show the right bytes,
# `qemu-img info --backing-chain` names the base, both images are clean, and the active chain
# equals a raw reference.  QEMU's refusals (overlay in use, overlay with a backing file), and
# the overlay can be removed again once nothing uses the base.
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

qemu-img create -q -f qcow2 "$T/base.qcow2" 16M
qemu-io -f qcow2 -c "write -q -P 0x11 0 8M" "$T/base.qcow2" >/dev/null
# the overlay names the base as its backing file (created without opening it: -u)
qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 "$T/ov.qcow2" 16M
qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 "$T/ov2.qcow2" 16M

bd_start --control "$T/c" --nbd-server addr.type=unix,addr.path="$T/s"
q blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"base\", \"file\": {\"driver\": \"file\", \"filename\": \"$T/base.qcow2\"}}" >/dev/null
q block-export-add '{"type": "nbd", "id": "e", "node-name": "base", "name": "disk", "writable": true}' >/dev/null
URI=$(bd_nbd_unix_uri "$T/s" disk)

# one connection writing 64k chunks of 8M..16M with short pauses, for about 3 seconds
wcmds=()
for ((i = 0; i < 300; i++)); do
	wcmds+=(-c "write -q -P $((0x40 + i % 16)) $((8 * M + (i % 128) * 65536)) 64k" -c "sleep 10")
done
qemu-io -f raw "${wcmds[@]}" "$URI" >"$T/writer.log" 2>&1 &
WPID=$!
bd_on_exit "kill $WPID 2>/dev/null"
sleep 1

q blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"ov\", \"backing\": null, \"file\": {\"driver\": \"file\", \"filename\": \"$T/ov.qcow2\"}}" >/dev/null
q blockdev-add "{\"driver\": \"qcow2\", \"node-name\": \"ov2\", \"file\": {\"driver\": \"file\", \"filename\": \"$T/ov2.qcow2\"}, \"backing\": {\"driver\": \"raw\", \"file\": {\"driver\": \"null-co\", \"size\": 16777216}}}" >/dev/null
# an overlay that has a backing file already is refused
out=$(q blockdev-snapshot '{"node": "base", "overlay": "ov2"}' 2>&1) && fail "overlay with a backing accepted"
assert_contains "$out" "already has a backing image"
q blockdev-snapshot '{"node": "base", "overlay": "ov"}' >/dev/null
# after the switch: the base has an overlay, the overlay is in use
out=$(q blockdev-snapshot '{"node": "base", "overlay": "ov2"}' 2>&1) && fail "second snapshot of base accepted"
assert_contains "$out" "already has an overlay"
out=$(q blockdev-del '{"node-name": "ov"}' 2>&1) && fail "overlay deleted under its export"
assert_contains "$out" "busy"
out=$(q blockdev-del '{"node-name": "base"}' 2>&1) && fail "base deleted under its overlay"
assert_contains "$out" "busy"

# new writes through the (unchanged) export land in the overlay
qemu-io -f raw -c "write -q -P 0x22 0 4M" "$URI" >/dev/null || fail "write after the snapshot"
wait "$WPID" || fail "the writer's connection failed across the snapshot: $(cat "$T/writer.log")"
qemu-io -f raw -c "write -q -P 0x33 8M 8M" "$URI" >/dev/null
qemu-io -f raw -c "read -q -P 0x22 0 4M" -c "read -q -P 0x11 4M 4M" -c "read -q -P 0x33 8M 8M" \
	"$URI" >"$T/read.log" 2>&1 || fail "reads through the export: $(cat "$T/read.log")"
assert_not_contains "$(cat "$T/read.log")" "Pattern verification failed"
info=$(q query-named-block-nodes '{}')
assert_contains "$info" '"ov"'
# the export now serves the overlay, and says so (as QEMU does)
exports=$(q query-block-exports '{}')
assert_contains "$exports" '"node-name": "ov"'

# the overlay goes away with the export; then the base is free again
q block-export-del '{"id": "e"}' >/dev/null
sleep 0.3
q blockdev-del '{"node-name": "ov"}' >/dev/null
q blockdev-del '{"node-name": "ov2"}' >/dev/null
q blockdev-del '{"node-name": "base"}' >/dev/null
bd_stop

chain=$(qemu-img info --backing-chain "$T/ov.qcow2")
assert_contains "$chain" "backing file: base.qcow2"
assert_contains "$chain" "image: $T/base.qcow2"
qemu-img check -q "$T/ov.qcow2" || fail "overlay not clean"
qemu-img check -q "$T/base.qcow2" || fail "base not clean"
# the base kept the data it had before the switch in the first half
qemu-io -f qcow2 -c "read -q -P 0x11 0 8M" "$T/base.qcow2" | grep -q "verification failed" &&
	fail "base changed after the snapshot"
# the overlay holds the later writes (0..4M and the second half), not the rest
map=$(qemu-img map --output=json -f qcow2 "$T/ov.qcow2")
python3 - "$map" <<'EOF' || fail "overlay allocation unexpected: $map"
import json, sys
m = json.loads(sys.argv[1])
top = sorted((e["start"], e["start"] + e["length"]) for e in m if e["depth"] == 0 and e["data"])
M = 1 << 20
merged = []
for a, b in top:
    if merged and merged[-1][1] == a:
        merged[-1] = (merged[-1][0], b)
    else:
        merged.append((a, b))
assert merged == [(0, 4 * M), (8 * M, 16 * M)], merged
EOF
qemu-img create -q -f raw "$T/ref.raw" 16M
qemu-io -f raw -c "write -q -P 0x22 0 4M" -c "write -q -P 0x11 4M 4M" -c "write -q -P 0x33 8M 8M" \
	"$T/ref.raw" >/dev/null
qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$T/ov.qcow2" || fail "active chain differs from the reference"
echo ok
