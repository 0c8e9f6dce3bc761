#!/bin/bash
# nbd-client-fault.sh - the nbd protocol driver when its server goes away.  qemu-nbd is killed
# with SIGKILL during a write workload (a libnbd writer plus fio at QD16): requests fail with EIO
# at once (reconnect-delay=0), a file-backed export of the same daemon keeps serving, qemu-nbd
# is restarted on the same socket and I/O works again without any QMP command, and every write
# acknowledged before the kill is in the backing file.  With reconnect-delay=10 a write issued
# while the server is down waits and succeeds once it is back.  A stopped (SIGSTOP) server makes
# requests fail with EIO after timeout=3 seconds, and the connection recovers after SIGCONT.  A node
# whose connection went stale before it was ever used serves its first request after a restart.
# Two fio jobs with verify (one on another loop) survive three kills with reconnect-delay=10.
# meson-timeout: 240
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-nbd qemu-io nbdinfo python3 fio truncate
# the libnbd bindings come with Debian's python3 (python3-libnbd), maybe not with another one
PYNBD=
for py in python3 /usr/bin/python3; do
	if "$py" -c 'import nbd' 2>/dev/null; then
		PYNBD=$py
		break
	fi
done
[ -n "$PYNBD" ] || skip "python3-libnbd is not installed"

bd_tmpdir
img=$T/remote.raw
other=$T/local.raw
truncate -s 64M "$img"
truncate -s 16M "$other"
qsock=$T/qemu-nbd.sock

start_server()
{
	rm -f "$qsock"
	bd_spawn qemu-nbd qemu-nbd -t -e 8 -f raw --cache=none --aio=threads -k "$qsock" -x disk "$img"
	QN=$BD_SPAWN_PID
	bd_wait_socket "$qsock"
}
start_server

sock=$T/blockd.sock
bd_start --blockdev driver=nbd,node-name=n0,server.type=unix,server.path="$qsock",export=disk,timeout=3 \
	--blockdev driver=nbd,node-name=n1,server.type=unix,server.path="$qsock",export=disk,reconnect-delay=10 \
	--blockdev driver=nbd,node-name=n2,server.type=unix,server.path="$qsock",export=disk \
	--blockdev driver=file,node-name=f,filename="$other" \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=n0,name=n0,writable=on \
	--export type=nbd,id=e1,node-name=n1,name=n1,writable=on \
	--object iothread,id=io1 \
	--export type=nbd,id=e1b,node-name=n1,name=n1b,writable=on,iothread=io1 \
	--export type=nbd,id=e2,node-name=n2,name=n2 \
	--export type=nbd,id=ef,node-name=f,name=local,writable=on
u0=$(bd_nbd_unix_uri "$sock" n0)
u1=$(bd_nbd_unix_uri "$sock" n1)
u2=$(bd_nbd_unix_uri "$sock" n2)
uf=$(bd_nbd_unix_uri "$sock" local)

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
lt() { python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) < float(sys.argv[2]) else 1)" "$1" "$2"; }

# ---- 1. SIGKILL during a workload, reconnect-delay=0 ---------------------------------------
cat >"$T/writer.py" <<'EOF'
# sequential 4 KiB writes, each with its own pattern; logs every acknowledged one
import nbd, sys, time
h = nbd.NBD()
h.connect_uri(sys.argv[1])
log = open(sys.argv[2], "w")
for i in range(8192):
    try:
        h.pwrite(bytes([i % 251 + 1]) * 4096, i * 4096)
    except nbd.Error as e:
        print("error", e.errno, f"{time.time():.3f}", flush=True)
        sys.exit(0)
    log.write(f"{i}\n")
    log.flush()
    time.sleep(0.0005)
print("no error", flush=True)
EOF
"$PYNBD" "$T/writer.py" "$u0" "$T/acked" >"$T/writer.out" 2>&1 &
writer=$!
fio --name=load --ioengine=nbd --uri="$u0" --rw=randwrite --bs=4k --iodepth=16 --offset=32M \
	--size=32M --time_based --runtime=30 >"$T/fio.out" 2>&1 &
fiopid=$!
bd_on_exit "kill $writer $fiopid"
sleep 1.5
[ -s "$T/acked" ] || fail "the writer got no write through before the kill"
t_kill=$(now)
kill -KILL "$QN"
wait "$QN" 2>/dev/null || true
wait "$writer" || true
fio_rc=0
wait "$fiopid" || fio_rc=$?
cat "$T/writer.out"
read -r what errnum t_err <"$T/writer.out" || true
assert_eq "$what" "error" "the writer saw an error"
assert_match "$errnum" '^(5|EIO)$' "errno of the failed write"
d=$(elapsed "$t_kill" "$t_err")
echo "write failed $d s after the kill"
lt "$d" 2 || fail "the write failed only after $d s (reconnect-delay=0: at once)"
assert_ne "$fio_rc" 0 "fio's exit status"
assert_match "$(cat "$T/fio.out")" "(Input/output error|error=5|err= *5)" "fio's error"

# blockd is alive, and the file-backed export keeps serving during the outage
bd_alive "$BD_PID" || fail "blockd died"
out=$(qemu-io -f raw -c 'write -P 0x6b 0 1M' -c 'read -P 0x6b 0 1M' "$uf" 2>&1) || fail "local: $out"
assert_not_contains "$out" "Pattern verification failed"
cmp -n 1048576 <(head -c 1M /dev/zero | tr '\0' '\153') "$other" || fail "local file content"
# and the dead one fails at once rather than hanging
t0=$(now)
assert_fails qemu-io -r -f raw -c 'read 0 4k' "$u0"
assert_contains "$BD_OUT" "Input/output error"
lt "$(elapsed "$t0" "$(now)")" 2 || fail "a read while disconnected did not fail at once"

# ---- 2. the server comes back on the same socket: I/O works again, acked writes are there --
start_server
# n2 was never used: its connection from startup went stale while the server was down, and the
# first request after the restart must not see that
out=$(qemu-io -r -f raw -c 'read 0 4k' "$u2" 2>&1) || fail "first read through the unused node: $out"
assert_not_contains "$out" "error"
bd_wait_for 15 qemu-io -r -f raw -c 'read 0 4k' "$u0"
out=$(qemu-io -f raw -c 'write -P 0x3c 40M 64k' -c 'read -P 0x3c 40M 64k' "$u0" 2>&1) ||
	fail "I/O after the restart: $out"
assert_not_contains "$out" "Pattern verification failed"
n=$(wc -l <"$T/acked")
echo "$n writes acknowledged before the kill"
python3 - "$img" "$T/acked" <<'EOF' || fail "an acknowledged write is missing from the backing file"
import sys
d = open(sys.argv[1], "rb").read()
bad = [i for i in map(int, open(sys.argv[2])) if d[i * 4096:(i + 1) * 4096] != bytes([i % 251 + 1]) * 4096]
if bad:
    print("missing:", bad[:10], file=sys.stderr)
    sys.exit(1)
EOF
grep -q "reconnected to unix:$qsock" "$BD_LOG" || fail "no reconnection in the log"

# ---- 3. reconnect-delay=10: a request waits for the server ----------------------------------
bd_wait_for 15 qemu-io -r -f raw -c 'read 0 4k' "$u1"
kill -KILL "$QN"
wait "$QN" 2>/dev/null || true
t0=$(now)
qemu-io -f raw -c 'write -P 0x2d 48M 128k' "$u1" >"$T/delayed.out" 2>&1 &
delayed=$!
sleep 2
bd_alive "$delayed" || fail "the write did not wait for the server: $(cat "$T/delayed.out")"
start_server
wait "$delayed" || fail "the delayed write failed: $(cat "$T/delayed.out")"
d=$(elapsed "$t0" "$(now)")
echo "delayed write done after $d s"
lt 2 "$d" || fail "the delayed write did not wait"
cmp -n 131072 -i 0:$((48 << 20)) <(head -c 128k /dev/zero | tr '\0' '\055') "$img" ||
	fail "the delayed write is not in the backing file"

# ---- 4. a server that stops answering: EIO after timeout=3, then recovery -------------------
bd_wait_for 15 qemu-io -r -f raw -c 'read 0 4k' "$u0"
kill -STOP "$QN"
t0=$(now)
assert_fails qemu-io -r -f raw -c 'read 1M 4k' "$u0"
d=$(elapsed "$t0" "$(now)")
kill -CONT "$QN"
echo "read against a stopped server failed after $d s: $BD_OUT"
assert_contains "$BD_OUT" "Input/output error"
lt 2.5 "$d" || fail "the read failed too early ($d s)"
lt "$d" 6 || fail "the read failed too late ($d s, timeout=3)"
grep -q "no answer from unix:$qsock" "$BD_LOG" || fail "no timeout message in the log"
bd_wait_for 15 qemu-io -r -f raw -c 'read -P 0x2d 48M 128k' "$u0"

# ---- 5. reconnect-delay=10 under load: three kills during two verifying fio jobs ------------
# (one through an export on another loop, forwarded to the connection's loop); every request
# waits for the server and is resent, so both jobs finish without an error and verify their data
bd_wait_for 15 qemu-io -r -f raw -c 'read 0 4k' "$u1"
u1b=$(bd_nbd_unix_uri "$sock" n1b)
fio --name=v --ioengine=nbd --uri="$u1" --rw=randwrite --bs=4k --iodepth=16 --size=16M \
	--verify=crc32c --do_verify=1 --rate_iops=1500 >"$T/fio-v.out" 2>&1 &
fv=$!
fio --name=w --ioengine=nbd --uri="$u1b" --rw=randwrite --bs=64k --iodepth=8 --offset=32M \
	--size=16M --verify=crc32c --do_verify=1 --rate_iops=150 >"$T/fio-w.out" 2>&1 &
fw=$!
bd_on_exit "kill $fv $fw"
for i in 1 2 3; do
	sleep 0.8
	kill -KILL "$QN"
	wait "$QN" 2>/dev/null || true
	sleep 0.3
	start_server
done
wait "$fv" || fail "fio through n1 failed: $(tail -20 "$T/fio-v.out")"
wait "$fw" || fail "fio through n1b failed: $(tail -20 "$T/fio-w.out")"
assert_match "$(cat "$T/fio-v.out")" "err= 0" "fio v"
assert_match "$(cat "$T/fio-w.out")" "err= 0" "fio w"
assert_not_contains "$(cat "$T/fio-v.out" "$T/fio-w.out")" "verify:"
echo "two verifying fio jobs survived three server kills"

bd_stop
bd_kill "$QN"
