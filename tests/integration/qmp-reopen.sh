#!/bin/bash
# qmp-reopen.sh: blockdev-reopen over QMP changes the core's options of a live node (detect-zeroes,
# discard) and the change shows in query-named-block-nodes and in I/O: with detect-zeroes=unmap
# an all-zero write through the NBD export punches a hole in the image.  Refused reopens (a
# driver that cannot switch read-only, an unknown key, another node-name) leave the node as it
# was and the export serving.
source "$(dirname "$0")/../lib/common.sh"
need qemu-io truncate python3
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q()
{
	"$BLOCKCTL" --socket "$T/c.sock" qmp "$@"
}
node_field()
{
	q query-named-block-nodes '{}' | python3 -c '
import json, sys
for n in json.load(sys.stdin):
    if n["node-name"] == sys.argv[1]:
        print(n[sys.argv[2]])' "$1" "$2"
}
blocks()
{
	stat -c %b "$T/img"
}

bd_tmpdir
truncate -s 8M "$T/img"
bd_start --control "$T/c.sock" \
	--blockdev driver=file,node-name=f,filename="$T/img",discard=unmap \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=disk,writable=on
uri=$(bd_nbd_unix_uri "$T/s" disk)
qemu-io -f raw -c "write -P 0x5a 0 4M" "$uri" >/dev/null
sync "$T/img"
full=$(blocks)
assert_eq "$(node_field r detect_zeroes)" off "detect-zeroes before"

q blockdev-reopen '{"options": [{"driver": "raw", "node-name": "r", "file": "f", "discard": "unmap", "detect-zeroes": "unmap"}]}' >"$T/r1" ||
	fail "reopen failed: $(cat "$T/r1")"
assert_eq "$(node_field r detect_zeroes)" unmap "detect-zeroes after"
assert_eq "$(node_field r discard)" unmap "discard after"
# an all-zero write is now a write-zeroes that may unmap: the image loses 1 MiB of blocks
qemu-io -f raw -c "write -P 0 1M 1M" -c "read -P 0 1M 1M" -c "read -P 0x5a 0 1M" "$uri" >"$T/io" ||
	fail "I/O after the reopen: $(cat "$T/io")"
sync "$T/img"
after=$(blocks)
[ "$after" -le $((full - 2048)) ] || fail "no hole was punched: $full -> $after blocks (512 B)"

# refused: read-only on a driver that cannot reopen its file; an unknown key; a renamed node
if q blockdev-reopen '{"options": [{"driver": "file", "node-name": "f", "filename": "'"$T/img"'", "read-only": true}]}' >"$T/r2" 2>&1; then
	fail "read-only switch on a file node was accepted"
fi
if q blockdev-reopen '{"options": [{"driver": "raw", "node-name": "r", "file": "f", "bogus": 1}]}' >"$T/r3" 2>&1; then
	fail "unknown key accepted"
fi
if q blockdev-reopen '{"options": [{"driver": "raw", "node-name": "other", "file": "f"}]}' >"$T/r4" 2>&1; then
	fail "reopen of an unknown node accepted"
fi
assert_eq "$(node_field r detect_zeroes)" unmap "detect-zeroes after refused reopens"
assert_eq "$(node_field f ro)" False "file node still writable"
qemu-io -f raw -c "write -P 0x77 6M 64k" -c "read -P 0x77 6M 64k" "$uri" | grep -q "read 65536/65536" ||
	fail "export stopped serving after refused reopens"
bd_stop
echo ok
