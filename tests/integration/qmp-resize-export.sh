#!/bin/bash
# qmp-resize-export.sh: block_resize of a node under a live NBD export (qemu-storage-daemon 7.2
# refuses this): the image file grows, a new client sees the new size and can write past the
# old end, the data before it is intact, and a client connected across the resize keeps working.
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo qemu-io truncate
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"

bd_tmpdir
truncate -s 16M "$T/img"
bd_start --control "$T/c.sock" \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=disk,writable=on
uri=$(bd_nbd_unix_uri "$T/s" disk)
qemu-io -f raw -c "write -P 0x11 15M 1M" "$uri" >/dev/null

# a client that stays connected across the resize
qemu-io -f raw "$uri" <<'EOF2' >"$T/long" 2>&1 &
read -P 0x11 15M 1M
sleep 1500
read -P 0x11 15M 1M
write -P 0x22 0 64k
EOF2
long=$!
sleep 0.5

"$BLOCKCTL" --socket "$T/c.sock" qmp block_resize '{"node-name": "r", "size": 33554432}' >"$T/r" ||
	fail "block_resize failed: $(cat "$T/r")"
assert_eq "$(stat -c %s "$T/img")" 33554432 "image file size after the resize"
assert_eq "$(nbdinfo --size "$uri")" 33554432 "export size seen by a new client"
qemu-io -f raw -c "write -P 0x33 30M 1M" -c "read -P 0x33 30M 1M" -c "read -P 0x11 15M 1M" \
	"$uri" >"$T/new" 2>&1 || fail "I/O past the old end failed: $(cat "$T/new")"
grep -q "read 1048576/1048576 bytes at offset 31457280" "$T/new" || fail "$(cat "$T/new")"

wait "$long" || fail "the client connected across the resize failed: $(cat "$T/long")"
[ "$(grep -c "read 1048576/1048576" "$T/long")" = 2 ] || fail "$(cat "$T/long")"
grep -q "wrote 65536/65536" "$T/long" || fail "$(cat "$T/long")"
bd_stop
echo ok
