#!/bin/bash
# qmp-iothread.sh: object-add / object-del of iothreads over QMP.  An iothread nothing has used
# is deleted (its thread goes away); one an export was given is refused with a clear error and
# keeps working; an unknown id is an error.
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo truncate
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q()
{
	"$BLOCKCTL" --socket "$T/c.sock" qmp "$@"
}
threads()
{
	ls /proc/"$(cat "$T/blockd.pid")"/task | wc -l
}

bd_tmpdir
truncate -s 8M "$T/img"
bd_start --control "$T/c.sock" \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--nbd-server addr.type=unix,addr.path="$T/s"

before=$(threads)
q object-add '{"qom-type": "iothread", "id": "spare"}' >/dev/null
[ "$(threads)" -gt "$before" ] || fail "object-add did not start a thread"
q object-del '{"id": "spare"}' >/dev/null || fail "an unused iothread was not deleted"
[ "$(threads)" = "$before" ] || fail "the deleted iothread's thread is still there"

q object-add '{"qom-type": "iothread", "id": "busy"}' >/dev/null
q block-export-add '{"type": "nbd", "id": "e", "node-name": "f", "name": "disk", "iothread": "busy"}' >/dev/null
if q object-del '{"id": "busy"}' >"$T/err" 2>&1; then
	fail "an iothread an export uses was deleted"
fi
grep -q "in use" "$T/err" || fail "unclear error: $(cat "$T/err")"
assert_eq "$(nbdinfo --size "$(bd_nbd_unix_uri "$T/s" disk)")" 8388608 "the export on the kept iothread"
if q object-del '{"id": "nonexistent"}' >"$T/err2" 2>&1; then
	fail "deleting an unknown object succeeded"
fi
bd_stop
echo ok
