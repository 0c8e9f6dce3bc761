#!/bin/bash
# nfs-fault.sh: the NFS server goes away under a workload.  A frozen server (SIGSTOP): requests
# fail with EIO within the node's timeout, and work again once it answers.  A killed server
# (SIGKILL during a write workload): the workload gets EIO at once; a restarted server is
# reconnected to.  Meanwhile a file-backed export of the same daemon keeps serving and the
# control socket answers; blockd still shuts down cleanly with the server gone.
# meson-suite: slow
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/nfs.sh"
need qemu-io nbdinfo
/usr/bin/python3 -c "import nbd" 2>/dev/null || skip "python3-nbd is not installed"
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
_bd_need_blockd
"$BLOCKD" --blockdev driver=nfs,node-name=x 2>&1 | grep -q "Unknown driver" && skip "blockd built without libnfs"
nfs_setup

TIMEOUT=3
truncate -s 64M "$NFS_EXPORT_DIR/disk.img"
truncate -s 64M "$T/local.img"
bd_start --control "$T/c.sock" \
	--blockdev driver=nfs,node-name=n0,server.type=inet,server.host=$NFS_HOST,path=$NFS_EXPORT/disk.img,timeout=$TIMEOUT \
	--blockdev driver=raw,node-name=d0,file=n0 \
	--blockdev driver=file,node-name=f1,filename="$T/local.img" \
	--blockdev driver=raw,node-name=d1,file=f1 \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e0,node-name=d0,name=nfs,writable=on \
	--export type=nbd,id=e1,node-name=d1,name=local,writable=on
qmp() { "$BLOCKCTL" --socket "$T/c.sock" qmp "$@"; }
nuri=$(bd_nbd_unix_uri "$T/s" nfs)
luri=$(bd_nbd_unix_uri "$T/s" local)
now() { date +%s%N; }

local_io()
{
	local out
	out=$(timeout 10 qemu-io -f raw -c "write -P $1 0 1M" -c "read -P $1 0 1M" "$luri" 2>&1) ||
		fail "the file export stopped serving: $out"
	assert_not_contains "$out" "Pattern verification failed"
}

out=$(qemu-io -f raw -c "write -P 0x11 0 4M" -c flush "$nuri" 2>&1) || fail "$out"

# 1. frozen server: EIO after the timeout, not before, not much later
nfs_ganesha_freeze
# one write, timed by the client (libnbd: no flush at disconnect to wait for)
/usr/bin/python3 -c '
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
t = time.monotonic()
try:
    h.pwrite(b"\x22" * 65536, 0)
    print("written")
except nbd.Error as e:
    print("error:", e)
print("ms", int((time.monotonic() - t) * 1000))' "$nuri" >"$T/frozen" 2>&1 &
frozen=$!
sleep 1
local_io 0x31
qmp query-named-block-nodes >/dev/null || fail "the control socket does not answer"
wait "$frozen" || true
ms=$(sed -n 's/^ms //p' "$T/frozen")
echo "frozen server: the request failed after $ms ms (timeout ${TIMEOUT} s)"
assert_contains "$(cat "$T/frozen")" "error:" "a write to the frozen server"
[ "$ms" -ge $((TIMEOUT * 1000 - 500)) ] || fail "failed after $ms ms, before the timeout"
[ "$ms" -le $((TIMEOUT * 1000 + 3000)) ] || fail "failed only after $ms ms"
nfs_ganesha_thaw
out=$(timeout 30 qemu-io -f raw -c "write -P 0x23 0 1M" -c "read -P 0x23 0 1M" "$nuri" 2>&1) ||
	fail "no I/O after the server answers again: $out"
assert_not_contains "$out" "Pattern verification failed"

# 2. killed server during a write workload: EIO at once
# (several rounds: one 64 MiB write can finish within the 0.3 s before the kill)
rounds=()
for i in $(seq 16); do rounds+=(-c "write -P 0x44 0 64M"); done
timeout 60 qemu-io -f raw "${rounds[@]}" "$nuri" >"$T/work" 2>&1 &
work=$!
sleep 0.3
t0=$(now)
nfs_ganesha_kill
wait "$work" || true
t1=$(now)
ms=$(((t1 - t0) / 1000000))
echo "killed server: the workload ended $ms ms after the kill"
assert_contains "$(cat "$T/work")" "Input/output error" "workload against the killed server"
[ "$ms" -le $((TIMEOUT * 1000 + 3000)) ] || fail "the workload took $ms ms to fail"
out=$(timeout 30 qemu-io -f raw -c "read 0 64k" "$nuri" 2>&1) && fail "read from a dead server: $out"
assert_contains "$out" "Input/output error"
local_io 0x32
qmp query-named-block-nodes >/dev/null || fail "the control socket does not answer"

# 3. the server comes back: the node reconnects
nfs_ganesha_start
# the node reconnects on demand (at most 5 attempts a second); the server may take a moment
# after its start to serve NFS: allow a few seconds of EIO
for i in $(seq 20); do
	out=$(timeout 30 qemu-io -f raw -c "write -P 0x55 2M 1M" -c flush -c "read -P 0x55 2M 1M" \
		"$nuri" 2>&1) && break
	sleep 0.5
done
[ "$i" -lt 20 ] || fail "no I/O after the server restarted: $out"
echo "restarted server: I/O works after $i attempt(s)"
assert_not_contains "$out" "Pattern verification failed"
cmp <(head -c $((1 << 20)) /dev/zero | tr '\0' '\125') \
	<(dd if="$NFS_EXPORT_DIR/disk.img" bs=1M skip=2 count=1 status=none) ||
	fail "the server file lacks the bytes written after the restart"

# 4. shutdown with the server gone: bounded, clean exit
nfs_ganesha_kill
t0=$(now)
bd_stop
echo "shutdown with the server gone took $((($(now) - t0) / 1000000)) ms"
echo ok
