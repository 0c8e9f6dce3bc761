#!/bin/bash
# meson-timeout: 120
# Stopping a vhost-user-blk queue waits for its requests in flight, but not on the main loop: with
# a throttle filter holding writes for seconds, (1) a memory-table change (which stops and
# restarts the queues) is acknowledged only once every write has completed, and (2) a front end
# killed with writes in flight is drained in the background; meanwhile QMP keeps answering
# within a fraction of the drain time, and afterwards a new front end is served.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
need python3
[ -x "$VUB_CLIENT" ] || skip "vub-client is not built ($VUB_CLIENT)"
bd_tmpdir
bd_sparse_image "$T/img" 32M
bd_start --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
	--object throttle-group,id=tg,x-iops-total=10 \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=f \
	--export type=vhost-user-blk,id=v,node-name=t,addr.type=unix,addr.path="$T/vub.sock",writable=on

out=$(python3 - "$T/qmp.sock" "$T/vub.sock" "$VUB_CLIENT" <<'PY'
import json, socket, subprocess, sys, time
qmp, vsock, client = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX); s.connect(qmp); f = s.makefile('rw')
json.loads(f.readline())
def x(c):
    f.write(json.dumps(c) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'event' not in r: return r
x({"execute": "qmp_capabilities"})

def worst_latency(p, seconds):
    """Largest QMP round trip (ms) while p runs (at most `seconds`)."""
    worst, t_end = 0.0, time.time() + seconds
    while time.time() < t_end and (p is None or p.poll() is None):
        t0 = time.time()
        assert 'return' in x({"execute": "query-block-exports"})
        worst = max(worst, (time.time() - t0) * 1000)
        time.sleep(0.05)
    return worst

# (1) 20 writes at 10 IOPS in flight, then SET_MEM_TABLE with an ack
p = subprocess.Popen([client, vsock, "stop-under-load", "--qd", "20"], stdout=subprocess.PIPE,
                     text=True)
w = worst_latency(p, 30)
print(p.communicate()[0].strip())
print("exit %d" % p.returncode)
print("qmp worst while stopping: %.0f ms" % w)

# (2) a front end killed with 32 writes in flight: drained in the background (about 3 s)
p = subprocess.Popen([client, vsock, "bench", "--rw", "randwrite", "--qd", "32", "--time", "30"],
                     stdout=subprocess.DEVNULL)
time.sleep(0.5)
p.kill(); p.wait()
t0 = time.time()
w = worst_latency(None, 1.5)
print("qmp worst while draining: %.0f ms" % w)
r = subprocess.run([client, vsock, "info"], capture_output=True, text=True)
print("next front end after %.1f s: %s" % (time.time() - t0, r.stdout.splitlines()[-1]))
PY
)
echo "$out"
assert_contains "$out" "20 of 20 writes completed OK before the ack"
assert_contains "$out" "next request: status 0"
assert_contains "$out" "exit 0"
ack_ms=$(echo "$out" | sed -n 's/^memory table ack 0 after \([0-9]*\) ms$/\1/p')
[ -n "$ack_ms" ] || fail "no memory table ack"
[ "$ack_ms" -ge 1000 ] || fail "the ack came after $ack_ms ms: the writes cannot have completed"
for w in $(echo "$out" | sed -n 's/^qmp worst while [a-z]*: \([0-9]*\) ms$/\1/p'); do
	[ "$w" -lt 700 ] || fail "QMP waited $w ms while a queue was stopping"
done
assert_contains "$out" "serial=v (status 0)"

# shutdown with a front end connected and writes in flight: the queues are stopped and drained
# synchronously, and blockd exits cleanly (no leak, no crash: bd_stop checks the exit status)
"$VUB_CLIENT" "$T/vub.sock" bench --rw randwrite --qd 16 --time 30 >/dev/null 2>&1 &
cpid=$!
BD_PIDS+=("$cpid")
sleep 0.5
bd_stop
wait "$cpid" 2>/dev/null || true # the front end sees the connection go and exits
_bd_forget_pid "$cpid"
