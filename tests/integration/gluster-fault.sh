#!/bin/bash
# gluster-fault.sh - the gluster driver when the server goes away during a workload: with
# glusterd and the brick stopped (SIGSTOP) requests fail with EIO within the node's timeout
# while a file export on the same I/O loop keeps serving; after SIGCONT the data flushed before
# the fault and the last acknowledged write are there; with the brick killed requests fail at
# once; blockd still exits cleanly and promptly.
# meson-suite: slow
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/gluster.sh"
need nbdcopy qemu-io python3
# libnbd's python binding (Debian's python3-libnbd), for a client that sends exactly one request
NBDPY=
for py in python3 /usr/bin/python3; do
	"$py" -c 'import nbd' 2>/dev/null && NBDPY=$py && break
done
[ -n "$NBDPY" ] || skip "libnbd's python module (python3-libnbd) is not installed"
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/c.sock
bc() { "$BLOCKCTL" "$@"; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }
TMO=3

gl_start
gl_volume gvf
BRICK=$GL_DIR/bricks/gvf
GD=$(cat "$GL_DIR/glusterd.pid")
BP=$(gl_brick_pids gvf)
[ -n "$BP" ] || fail "no brick pid for gvf"

truncate -s 64M "$T/local.img"
bd_start --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$T/s" \
	--blockdev driver=file,node-name=f,filename="$T/local.img" \
	--export type=nbd,id=ef,node-name=f,name=f,writable=on
bc qmp blockdev-create '{"job-id":"c1","options":{"driver":"gluster","location":{"volume":"gvf","path":"/d.img","server":[{"type":"inet","host":"127.0.0.1"}]},"size":67108864}}' >/dev/null
for i in $(seq 100); do [[ "$(bc qmp query-jobs)" == *concluded* ]] && break; sleep 0.1; done
bc qmp job-dismiss '{"id":"c1"}' >/dev/null
bc node-add driver=gluster,node-name=g,filename=gluster://127.0.0.1/gvf/d.img,timeout=$TMO >/dev/null
bc export-add type=nbd,id=eg,node-name=g,name=g,writable=on >/dev/null
G=$(bd_nbd_unix_uri "$T/s" g)
F=$(bd_nbd_unix_uri "$T/s" f)

# data flushed before the fault
bd_random_file "$T/a" 4096
nbdcopy --flush "$T/a" "$G"

# a workload: flushed 64 KiB writes at 8 MiB, each with its own pattern; the outcome logged
cat >"$T/wl.sh" <<-EOF
	for i in \$(seq 1 150); do
	    out=\$(qemu-io -f raw -c "write -P \$i 8M 64k" -c flush "$G" 2>&1)
	    case \$out in *failed* | *rror*) echo "fail \$i" ;; *) echo "ok \$i" ;; esac
	done
EOF
bd_spawn wl bash "$T/wl.sh"
WL=$BD_SPAWN_PID
bd_wait_for 30 grep -q "^ok 3" "$T/wl.log"

# the server stops answering
kill -STOP "$GD" $BP
t0=$(now_ms)
out=$("$NBDPY" -c 'import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); h.pread(65536, 40 << 20)' "$G" 2>&1) || true # one request
t1=$(now_ms)
assert_contains "$out" "Input/output error" "read while the server is stopped"
echo "read failed after $((t1 - t0)) ms (timeout ${TMO} s)"
[ $((t1 - t0)) -lt $(((TMO + 2) * 1000)) ] || fail "EIO came after $((t1 - t0)) ms, timeout is $TMO s"
[ $((t1 - t0)) -ge $(((TMO - 1) * 1000)) ] || fail "EIO came too early ($((t1 - t0)) ms)"

# the file export on the same loop keeps serving meanwhile
t0=$(now_ms)
out=$(qemu-io -f raw -c "write -P 0x42 0 1M" -c "read -P 0x42 0 1M" -c flush "$F" 2>&1)
t1=$(now_ms)
assert_not_contains "$out" "failed" "file export during the gluster outage"
[ $((t1 - t0)) -lt 2500 ] || fail "the file export took $((t1 - t0)) ms during the outage"
bc node-list >/dev/null || fail "control socket during the outage"

# the server comes back: flushed data is intact, the last acknowledged write is there
sleep 1
kill -CONT "$GD" $BP
bd_wait_for 60 bash -c "grep -c . '$T/wl.log' | awk '{exit !(\$1 >= 150)}'"
bd_kill "$WL"
grep -q "^fail" "$T/wl.log" || echo "note: no workload write failed (they all waited out the stop)"
nbdcopy "$G" "$T/out"
assert_eq "$(cmp -n 4194304 "$T/a" "$T/out" && echo same)" same "data flushed before the fault"
assert_eq "$(cmp -n 4194304 "$T/a" "$BRICK/d.img" && echo same)" same "data on the brick"
last=$(grep "^ok" "$T/wl.log" | tail -1 | cut -d' ' -f2)
got=$(python3 -c "
import sys; d = open(sys.argv[1], 'rb').read()[8 << 20:(8 << 20) + 65536]
print(d[0] if d == bytes([d[0]]) * len(d) else -1)" "$T/out")
# the bytes are those of the last acknowledged write, or of a later (failed) one that landed
[ "$got" -ge "$last" ] || fail "workload region holds pattern $got, last acknowledged write was $last"

# the brick crashes: requests fail at once, the file export still serves
kill -KILL $BP
sleep 0.5
t0=$(now_ms)
out=$(qemu-io -f raw -c "read 0 64k" -c "write -P 9 0 64k" -c flush "$G" 2>&1) || true
t1=$(now_ms)
assert_contains "$out" "Input/output error" "I/O after the brick died"
echo "I/O after the brick died failed in $((t1 - t0)) ms"
out=$(qemu-io -f raw -c "read -P 0x42 0 1M" "$F" 2>&1)
assert_not_contains "$out" "failed" "file export after the brick died"

t0=$(now_ms)
bd_stop
t1=$(now_ms)
echo "shutdown took $((t1 - t0)) ms"
[ $((t1 - t0)) -lt $(((TMO + 6) * 1000)) ] || fail "shutdown took $((t1 - t0)) ms"
