#!/bin/bash
# iscsi-fault.sh - tgtd killed (SIGKILL) in the middle of a write workload: the request that
# finds the target gone fails with EIO within the node's timeout, another export keeps serving
# meanwhile, and when tgtd comes back with the same target the driver reconnects on its own (no
# QMP action) and I/O works again; every write that was acknowledged is in the LUN's file.
# meson-suite: slow
# meson-timeout: 180
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/tgtd.sh"
need qemu-io cmp python3
# libnbd's Python binding belongs to the system Python (not to a python3 earlier in PATH)
PYNBD=
for py in /usr/bin/python3 python3; do
	if "$py" -c "import nbd" 2>/dev/null; then
		PYNBD=$py
		break
	fi
done
[ -n "$PYNBD" ] || skip "libnbd's Python binding (python3-libnbd) is not installed"
bd_tmpdir

TIMEOUT=8
tgtd_start
IQN=iqn.2026-01.test.blockd:fault
define_target()
{
	tgtd_target 1 "$IQN"
	tgtd_lun 1 1 "$T/lun1.img"
}
truncate -s 32M "$T/lun1.img"
define_target
truncate -s 16M "$T/other.img"

bd_start --nbd-server "addr.type=unix,addr.path=$T/nbd.sock" \
	--blockdev "driver=iscsi,node-name=i0,filename=iscsi://127.0.0.1:$TGTD_PORT/$IQN/1,timeout=$TIMEOUT" \
	--blockdev "driver=file,node-name=f0,filename=$T/other.img" \
	--export type=nbd,id=e0,node-name=i0,writable=on \
	--export type=nbd,id=e1,node-name=f0,writable=on
U=$(bd_nbd_unix_uri "$T/nbd.sock" i0)
UF=$(bd_nbd_unix_uri "$T/nbd.sock" f0)

# the workload: 64 KiB writes cycling over 32 MiB, each acknowledged one logged, until an error
cat >"$T/writer.py" <<'EOF'
import sys, time, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[2])
acked = open(sys.argv[1], "w")
i = 0
while True:
    off = (i % 512) * 65536
    pat = i % 251 + 1
    t0 = time.monotonic()
    try:
        h.pwrite(bytes([pat]) * 65536, off)
    except nbd.Error as e:
        acked.write("ERR %d %d %.3f %s\n" % (off, pat, time.monotonic() - t0, e))
        acked.flush()
        break
    acked.write("%d %d\n" % (off, pat))
    acked.flush()
    i += 1
EOF
"$PYNBD" "$T/writer.py" "$T/acked" "$U" &
writer=$!
bd_on_exit "kill $writer"
for i in $(seq 1 100); do
	[ "$(cat "$T/acked" 2>/dev/null | wc -l)" -ge 200 ] && break
	sleep 0.05
done
[ "$(wc -l <"$T/acked")" -ge 200 ] || fail "the workload did not get going"
tgtd_kill
killed=$(date +%s.%N)

# meanwhile the other export serves at once, several times over
for i in 1 2 3; do
	s=$(date +%s.%N)
	qemu-io -f raw -c "write -P 0x0f 0 1M" -c "read -P 0x0f 0 1M" "$UF" | grep -q "read 1048576" ||
		fail "the file export stopped serving"
	python3 -c "import sys; d=$(date +%s.%N)-$s; sys.exit(d > 2)" || fail "file export stalled"
	sleep 0.5
done

# the writer's request fails with EIO within the timeout
wait "$writer" || true
grep -q '^ERR' "$T/acked" || fail "the workload saw no error"
err=$(grep '^ERR' "$T/acked")
echo "writer: $err (killed at $killed)"
assert_contains "$err" "Input/output error"
secs=$(echo "$err" | cut -d' ' -f4)
python3 -c "import sys; sys.exit(not ($secs <= $TIMEOUT + 1.5))" ||
	fail "EIO after $secs s, more than the timeout of $TIMEOUT s"
echo "EIO after $secs s (timeout $TIMEOUT s)"

# tgtd back with the same target: I/O works again without any QMP action
tgtd_restart
define_target
restarted=$(date +%s.%N)
back=
for i in $(seq 1 40); do
	if qemu-io -f raw -c "read 0 64k" "$U" 2>/dev/null | grep -q "read 65536"; then
		back=$i
		break
	fi
	sleep 0.5
done
[ -n "$back" ] || fail "no I/O after tgtd came back"
echo "I/O again $(python3 -c "print(round($(date +%s.%N) - $restarted, 1))") s after tgtd came back"

# every acknowledged write is in the file: the last acknowledged pattern of each block (the
# failed write's block may hold either its old or its new pattern)
python3 - "$T/acked" "$T/lun1.img" <<'EOF' || fail "acknowledged data lost"
import sys
last = {}
failed = None
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "ERR":
        failed = (int(f[1]), int(f[2]))
        continue
    last[int(f[0])] = int(f[1])
img = open(sys.argv[2], "rb")
bad = 0
for off, pat in last.items():
    img.seek(off)
    blk = img.read(65536)
    ok = blk == bytes([pat]) * 65536
    if not ok and failed and failed[0] == off:
        ok = blk == bytes([failed[1]]) * 65536
    if not ok:
        bad += 1
print("%d blocks checked, %d bad" % (len(last), bad))
sys.exit(bad != 0)
EOF

# a short outage: a write submitted while tgtd is down waits for the new session and succeeds
# (it is issued once the driver has logged in again, within its deadline)
tgtd_kill
sleep 0.3
qemu-io -f raw -c "write -P 0x71 9M 64k" "$U" >"$T/short.out" 2>&1 &
short=$!
sleep 1
tgtd_restart
define_target
wait "$short" || { cat "$T/short.out"; fail "the write during a short outage failed"; }
cmp <(head -c 65536 /dev/zero | tr '\0' 'q') <(tail -c +9437185 "$T/lun1.img" | head -c 65536) ||
	fail "the write during a short outage is not in the backing file"

# an orderly stop (tgtd closes the connection, the socket stays readable): detected, no busy
# loop while the target is away, back when it is
t0=$(awk '{print $14 + $15}' "/proc/$BD_PID/stat")
tgtd_stop
sleep 3
t1=$(awk '{print $14 + $15}' "/proc/$BD_PID/stat")
[ $((t1 - t0)) -lt 100 ] || fail "blockd used $((t1 - t0)) CPU ticks in 3 s with the target away"
tgtd_restart
define_target
back=
for i in $(seq 1 40); do
	if qemu-io -f raw -c "read 0 64k" "$U" 2>/dev/null | grep -q "read 65536"; then
		back=$i
		break
	fi
	sleep 0.5
done
[ -n "$back" ] || fail "no I/O after an orderly tgtd restart"
grep -q "lost: the target closed the connection" "$BD_LOG" || fail "the orderly close was not logged"

# a hung target (SIGSTOP: the connection stays up, nothing answers): the request fails with
# EIO within the timeout, the session is dropped and re-established once tgtd runs again
kill -STOP "$TGTD_PID"
bd_on_exit "kill -CONT $TGTD_PID"
s=$(date +%s.%N)
out=$(timeout 60 qemu-io -f raw -c "aio_write -P 0x55 8M 64k" -c aio_flush "$U" 2>&1 || true)
assert_contains "$out" "Input/output error"
qemu-io -f raw -c "read -P 0x0f 0 1M" "$UF" | grep -q "read 1048576" || fail "the file export stopped serving"
kill -CONT "$TGTD_PID"
echo "hung target: EIO and the client gone after $(python3 -c "print(round($(date +%s.%N) - $s, 1))") s"
restarted=$(date +%s.%N)
back=
for i in $(seq 1 60); do
	if qemu-io -f raw -c "read 0 64k" "$U" 2>/dev/null | grep -q "read 65536"; then
		back=$i
		break
	fi
	sleep 0.5
done
[ -n "$back" ] || fail "no I/O after tgtd was continued"
echo "I/O again $(python3 -c "print(round($(date +%s.%N) - $restarted, 1))") s after SIGCONT"

# and the node writes again, durably
qemu-io -f raw -c "write -P 0x99 5M 1M" -c flush "$U" >/dev/null
cmp <(head -c 1048576 /dev/zero | tr '\0' '\231') <(tail -c +5242881 "$T/lun1.img" | head -c 1048576) ||
	fail "write after the reconnect not in the backing file"
bd_stop
