#!/bin/bash
# nbd-listeners.sh: --nbd-server given twice (a blockd extension) serves the same exports on TCP
# and on a unix socket; data written through one reads back through the other; a bad second
# listener fails start-up with a clear error.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo qemu-io truncate

bd_tmpdir
truncate -s 16M "$T/img"
port=$(bd_free_port)
bd_start --blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$port" \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=disk,writable=on

tcp="nbd://127.0.0.1:$port/disk"
unix=$(bd_nbd_unix_uri "$T/s" disk)
assert_eq "$(nbdinfo --size "$tcp")" 16777216 "size over TCP"
assert_eq "$(nbdinfo --size "$unix")" 16777216 "size over the unix socket"
qemu-io -f raw -c "write -P 0x5a 1M 64k" "$tcp" >/dev/null
qemu-io -f raw -c "read -P 0x5a 1M 64k" "$unix" | grep -q "read 65536/65536" ||
	fail "data written over TCP did not read back over the unix socket"
bd_stop
[ ! -e "$T/s" ] || fail "the unix socket was not removed at exit"

# A second listener that cannot be opened: exit 1, one line naming the option.
if "$BLOCKD" --nbd-server addr.type=unix,addr.path="$T/s2" \
	--nbd-server addr.type=unix,addr.path=/nonexistent-dir/s 2>"$T/err"; then
	fail "blockd started with an impossible listener"
fi
grep -q -- "--nbd-server addr.type=unix,addr.path=/nonexistent-dir/s" "$T/err" ||
	fail "error does not name the option: $(cat "$T/err")"
[ "$(wc -l <"$T/err")" = 1 ] || fail "more than one error line: $(cat "$T/err")"
[ ! -e "$T/s2" ] || fail "the first listener's socket was left behind"
echo ok
