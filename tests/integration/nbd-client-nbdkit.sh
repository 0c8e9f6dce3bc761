#!/bin/bash
# nbd-client-nbdkit.sh - the nbd protocol driver against nbdkit servers with awkward properties:
# block-size constraints enforced with errors (minimum 4 KiB, maximum 1 MiB: unaligned and large
# requests through blockd must be aligned and split, and the bytes come out right); errors the
# server injects (EIO on reads, ENOSPC on writes) reach the client as such while the connection
# and the daemon stay up; a server that accepts but never answers the handshake fails the open
# after `timeout` seconds.
# meson-timeout: 120
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need nbdkit qemu-io nbdinfo nbdcopy python3
nbdkit --filter=blocksize-policy null --dump-plugin >/dev/null 2>&1 ||
	skip "nbdkit has no blocksize-policy filter"
nbdkit --filter=error null --dump-plugin >/dev/null 2>&1 || skip "nbdkit has no error filter"

bd_tmpdir
ks=$T/kit.sock
es=$T/err.sock
bd_spawn nbdkit-bs nbdkit -f -U "$ks" --filter=blocksize-policy memory 32M \
	blocksize-minimum=4096 blocksize-preferred=65536 blocksize-maximum=1M \
	blocksize-error-policy=error
kit=$BD_SPAWN_PID
bd_spawn nbdkit-err nbdkit -f -U "$es" --filter=error memory 8M \
	error-pread=EIO error-pread-rate=100% error-pread-file="$T/fail-reads" \
	error-pwrite=ENOSPC error-pwrite-rate=100% error-pwrite-file="$T/fail-writes"
kerr=$BD_SPAWN_PID
bd_wait_socket "$ks"
bd_wait_socket "$es"

sock=$T/blockd.sock
bd_start --blockdev driver=nbd,node-name=k,server.type=unix,server.path="$ks" \
	--blockdev driver=nbd,node-name=e,server.type=unix,server.path="$es" \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=ek,node-name=k,name=k,writable=on \
	--export type=nbd,id=ee,node-name=e,name=e,writable=on
uk=$(bd_nbd_unix_uri "$sock" k)
ue=$(bd_nbd_unix_uri "$sock" e)

# ---- block sizes: the server rejects misaligned or oversized requests with EINVAL -----------
info=$(nbdinfo "$uk")
echo "$info"
assert_match "$info" "block_size_minimum: 4096" "minimum block size passed on"
assert_match "$info" "block_size_preferred: 65536" "preferred block size passed on"
out=$(qemu-io -f raw -c 'write -P 0x61 1048577 7' -c 'write -P 0x62 100 5000' \
	-c 'write -P 0x63 2M 5M' -c 'write -P 0x64 12345678 3000000' "$uk" 2>&1) ||
	fail "writes through a 4k/1M server: $out"
assert_not_contains "$out" "failed"
nbdcopy "nbd+unix:///?socket=$ks" "$T/kit.raw"
python3 - "$T/kit.raw" <<'EOF'
import sys
d = open(sys.argv[1], "rb").read()
M = 1 << 20
want = bytearray(32 * M)
for off, ln, b in ((1048577, 7, 0x61), (100, 5000, 0x62), (2 * M, 5 * M, 0x63),
                   (12345678, 3000000, 0x64)):
    want[off:off + ln] = bytes([b]) * ln
assert d == bytes(want), "the server holds other bytes than were written"
EOF
nbdcopy "$uk" "$T/kit-through.raw"
assert_file_eq "$T/kit-through.raw" "$T/kit.raw"

# ---- errors the server answers: passed through, nothing else breaks -------------------------
qemu-io -f raw -c 'write -P 0x71 0 64k' "$ue" >/dev/null
touch "$T/fail-reads"
assert_fails qemu-io -r -f raw -c 'read 0 4k' "$ue"
assert_contains "$BD_OUT" "Input/output error"
rm "$T/fail-reads"
touch "$T/fail-writes"
assert_fails qemu-io -f raw -c 'write -P 0x72 0 4k' "$ue"
assert_contains "$BD_OUT" "No space left on device"
rm "$T/fail-writes"
out=$(qemu-io -r -f raw -c 'read -P 0x71 0 64k' "$ue" 2>&1) || fail "after the errors: $out"
assert_not_contains "$out" "Pattern verification failed"
if grep -q "lost the connection" "$BD_LOG"; then
	fail "an error answer dropped the connection"
fi
bd_alive "$BD_PID" || fail "blockd died"
bd_stop

# ---- a server that accepts and never speaks: open fails after timeout=2 ---------------------
mute=$T/mute.sock
bd_spawn mute python3 -c '
import socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1]); s.listen(8)
conns = []
while True:
    c, _ = s.accept(); conns.append(c)
' "$mute"
bd_wait_socket "$mute"
t0=$(date +%s)
assert_exit 1 "$BLOCKD" --blockdev driver=nbd,node-name=m,server.type=unix,server.path="$mute",timeout=2
t1=$(date +%s)
assert_contains "$BD_OUT" "no answer to the NBD handshake"
[ $((t1 - t0)) -ge 1 ] && [ $((t1 - t0)) -le 5 ] || fail "the open took $((t1 - t0)) s, timeout=2"

bd_kill "$kit"
bd_kill "$kerr"
