#!/bin/bash
# pool-safety.sh - what the pools refuse, and the volume operations around it: bad XML and
# missing elements (errors name the element), hostile pool and volume names, two pools on one
# path, a volume in use by a node or an export, shrinking without --shrink, unsupported pool
# types, transient pools, resize / wipe / upload / download, vol-open + NBD export, and the
# POOL_LIFECYCLE events seen by a QMP client.
source "$(dirname "$0")/../lib/common.sh"
need python3
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock"

# A QMP client collecting events in the background (python stdlib).
cat >"$T/events.py" <<'EOF'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
f.write('{"execute":"qmp_capabilities"}\n'); f.flush()
f.readline()
open(sys.argv[2] + ".ready", "w").close()
out = open(sys.argv[2], "w")
for line in f:
    m = json.loads(line)
    if m.get("event") == "POOL_LIFECYCLE":
        out.write("%s %s\n" % (m["data"]["pool"], m["data"]["event"])); out.flush()
    elif m.get("event") == "POOL_VOLUME_JOB_COMPLETED":
        out.write("JOB %s\n" % json.dumps(m["data"], sort_keys=True)); out.flush()
EOF
bd_spawn events python3 "$T/events.py" "$T/ctl.sock" "$T/events.txt"
ev_pid=$BD_SPAWN_PID
bd_wait_for 10 test -e "$T/events.txt.ready"

# ---- bad XML ----
printf '<pool type="dir"><name>x</name>' >"$T/bad1.xml"
assert_fails bc pool-define "$T/bad1.xml"
assert_contains "$BD_OUT" "invalid XML"
printf '<pool type="dir"><target><path>/x</path></target></pool>' >"$T/bad2.xml"
assert_fails bc pool-define "$T/bad2.xml"
assert_contains "$BD_OUT" "<name>"
printf '<pool type="dir"><name>x</name></pool>' >"$T/bad3.xml"
assert_fails bc pool-define "$T/bad3.xml"
assert_contains "$BD_OUT" "<target><path>"
printf '<pool type="weird"><name>x</name></pool>' >"$T/bad4.xml"
assert_fails bc pool-define "$T/bad4.xml"
assert_contains "$BD_OUT" "unknown storage pool type 'weird'"
printf '<pool type="dir"><name>x</name><capacity unit="XiB">1</capacity><target><path>/x</path></target></pool>' >"$T/bad5.xml"
assert_fails bc pool-define "$T/bad5.xml"
assert_contains "$BD_OUT" "<capacity>"

# ---- hostile names ----
for n in ../escape a/b .. . ""; do
	assert_fails bc pool-define-as "$n" dir --target "$T/x"
done
assert_not_exists "$T/var/escape.xml"

# ---- a pool, and a second one on the same path ----
bc pool-define-as p1 dir --target "$T/p1" >/dev/null
bc pool-start p1 --build >/dev/null
assert_fails bc pool-define-as p2 dir --target "$T/p1/"
assert_contains "$BD_OUT" "p1"
assert_fails bc pool-define-as p2 dir --target "$T/p1/../p1"
assert_fails bc pool-start p1
assert_contains "$BD_OUT" "already active"
assert_fails bc pool-undefine p1
assert_fails bc pool-delete p1

for n in ../../evil ../x a/b .. . ".hidden/x"; do
	assert_fails bc vol-create-as p1 "$n" 1M
done
assert_not_exists "$T/evil" "$T/x"
printf '<volume><name>../up</name><capacity>1024</capacity></volume>' >"$T/v.xml"
assert_fails bc vol-create p1 "$T/v.xml"
assert_contains "$BD_OUT" "'/'"
printf '<volume><capacity>1024</capacity></volume>' >"$T/v.xml"
assert_fails bc vol-create p1 "$T/v.xml"
assert_contains "$BD_OUT" "<name>"

# ---- volumes: create from XML with units, resize, shrink, wipe, upload, download ----
printf "<volume><name>d1</name><capacity unit='MB'>2</capacity><allocation unit='KiB'>64</allocation></volume>" >"$T/v.xml"
assert_eq "$(bc vol-create p1 "$T/v.xml")" "Vol d1 created from $T/v.xml"
assert_eq "$(stat -c %s "$T/p1/d1")" 2000000
assert_fails bc vol-create p1 "$T/v.xml"
assert_contains "$BD_OUT" "already exists"
assert_eq "$(bc vol-resize d1 4M --pool p1)" "Size of volume 'd1' successfully changed to 4M"
assert_eq "$(stat -c %s "$T/p1/d1")" 4194304
assert_fails bc vol-resize d1 1M --pool p1
assert_contains "$BD_OUT" "shrink"
bc vol-resize d1 1M --pool p1 --shrink >/dev/null
assert_eq "$(stat -c %s "$T/p1/d1")" 1048576
bc vol-resize d1 1M --pool p1 --delta >/dev/null
assert_eq "$(stat -c %s "$T/p1/d1")" 2097152
bc vol-resize d1 -- -512K --pool p1 --delta >/dev/null 2>&1 || bc vol-resize d1 --delta --pool p1 -512K >/dev/null
assert_eq "$(stat -c %s "$T/p1/d1")" 1572864

head -c 100000 /dev/urandom >"$T/data.bin"
bc vol-upload d1 "$T/data.bin" --pool p1 --offset 4096 >/dev/null
bc vol-download d1 "$T/back.bin" --pool p1 --offset 4096 --length 100000 >/dev/null
assert_file_eq "$T/data.bin" "$T/back.bin"
head -c 2000000 /dev/zero >"$T/big.bin"
assert_fails bc vol-upload d1 "$T/big.bin" --pool p1
assert_contains "$BD_OUT" "past the end"
bc vol-download d1 "$T/whole.img" --pool p1 --sparse >/dev/null
assert_eq "$(stat -c %s "$T/whole.img")" 1572864
assert_eq "$(bc vol-wipe d1 --pool p1)" "Vol d1 wiped"
bc vol-download d1 "$T/back.bin" --pool p1 --offset 4096 --length 100000 >/dev/null
assert_eq "$(tr -d '\0' <"$T/back.bin" | wc -c)" 0
assert_fails bc vol-wipe d1 --pool p1 --algorithm shred-it-all
assert_contains "$BD_OUT" "not supported (supported: zero, trim, random, nnsa, dod"
# the scrub pattern sequences: DoD ends with random bytes, BSI with 0x7f everywhere
bc vol-wipe d1 --pool p1 --algorithm bsi >/dev/null
bc vol-download d1 "$T/back.bin" --pool p1 >/dev/null
assert_eq "$(tr -d '\177' <"$T/back.bin" | wc -c)" 0
assert_eq "$(stat -c %s "$T/back.bin")" 1572864
bc vol-wipe d1 --pool p1 --algorithm dod >/dev/null
bc vol-download d1 "$T/back.bin" --pool p1 >/dev/null
assert_eq "$(od -An -tx1 -v "$T/back.bin" | tr -s ' ' '\n' | grep -c '^00$' | awk '{print ($1 < 100000)}')" 1
# gutmann (35 passes) as a job; its end event counts every pass's bytes
job=$(bc qmp vol-wipe '{"pool":"p1","vol":"d1","algorithm":"gutmann","async":true}' | jq -r .job)
bd_wait_for 30 grep -q "\"job\": $job," "$T/events.txt"
assert_contains "$(grep "\"job\": $job," "$T/events.txt")" "\"bytes\": $((35 * 1572864))"

# progress: an upload from a FIFO that the test feeds shows in query-volume-jobs
mkfifo "$T/fifo"
exec 7<>"$T/fifo"
bc vol-upload d1 "$T/fifo" --pool p1 7>&- &
up_pid=$!
head -c 100000 /dev/urandom | tee "$T/data.bin" >&7
bd_wait_for 10 sh -c "'$BLOCKCTL' qmp query-volume-jobs | grep -q '\"done\": 100000'"
jobs=$(bc qmp query-volume-jobs)
assert_contains "$jobs" '"operation": "upload"'
assert_contains "$jobs" '"total": 0'
exec 7>&-
wait $up_pid
bc vol-download d1 "$T/back.bin" --pool p1 --length 100000 >/dev/null
assert_file_eq "$T/data.bin" "$T/back.bin"

# ---- upload and download through descriptors: pipes from and to blockctl ----
head -c 300000 /dev/urandom >"$T/data.bin"
cat "$T/data.bin" | bc vol-upload d1 - --pool p1 --offset 65536 >/dev/null
bc vol-download d1 - --pool p1 --offset 65536 --length 300000 | cat >"$T/back.bin"
assert_file_eq "$T/data.bin" "$T/back.bin"
assert_fails bc vol-upload d1 - --pool p1 < <(head -c 2000000 /dev/zero)
assert_contains "$BD_OUT" "past the end of the volume"

# ---- in use: a node and an export keep the volume and the pool ----
assert_eq "$(bc vol-export d1 --pool p1 --writable)" "Volume d1 exported over NBD as 'd1' (node d1)"
if command -v nbdinfo >/dev/null; then
	assert_eq "$(nbdinfo --size "nbd+unix:///d1?socket=$T/nbd.sock")" 1572864
fi
assert_fails bc vol-delete d1 --pool p1
assert_contains "$BD_OUT" "in use by node 'd1'"
assert_fails bc vol-wipe d1 --pool p1
assert_fails bc vol-resize d1 8M --pool p1
assert_fails bc pool-destroy p1
assert_contains "$BD_OUT" "in use"
assert_exists "$T/p1/d1"
bc export-del d1 --hard >/dev/null
bc node-del d1 >/dev/null
bc vol-delete d1 --pool p1 >/dev/null
assert_not_exists "$T/p1/d1"

# clone across pools
bc pool-create-as t1 dir --target "$T/t1" --build >/dev/null
bc vol-create-as p1 src 1M >/dev/null
bc vol-upload src "$T/data.bin" --pool p1 >/dev/null
bc qmp vol-clone "{\"pool\":\"p1\",\"vol\":\"src\",\"newname\":\"copy\",\"target-pool\":\"t1\"}" >/dev/null
cmp -n 100000 "$T/p1/src" "$T/t1/copy" || fail "clone across pools differs"
printf "<volume><name>from</name><capacity>1048576</capacity></volume>" >"$T/v.xml"
assert_eq "$(bc vol-create-from t1 "$T/v.xml" src --inputpool p1)" "Vol from created from input vol src"
cmp "$T/p1/src" "$T/t1/from" || fail "vol-create-from differs"

# transient pools: gone when stopped, never written to the state directory
assert_not_exists "$T/var/pools/t1.xml"
assert_contains "$(bc pool-list --transient)" " t1 "
assert_fails bc pool-autostart t1
bc vol-delete copy --pool t1 >/dev/null
bc vol-delete from --pool t1 >/dev/null
bc pool-destroy t1 >/dev/null
assert_not_contains "$(bc pool-list --all)" " t1 "

# ---- unsupported types are accepted in XML, refused when started ----
bc pool-define-as sd1 sheepdog --source-host mon1 --source-name vdis >/dev/null
assert_fails bc pool-start sd1
assert_contains "$BD_OUT" "not supported yet"
assert_fails bc pool-build sd1
assert_contains "$BD_OUT" "not supported yet"
assert_contains "$(bc pool-dumpxml sd1)" "<host name='mon1'/>"
caps=$(bc pool-capabilities)
assert_contains "$caps" "<pool type='dir' supported='yes'>"
assert_contains "$caps" "<pool type='logical' supported='yes'>"
assert_contains "$caps" "<pool type='sheepdog' supported='no'>"
bc pool-undefine sd1 >/dev/null

# ---- storage that goes away: inaccessible until a refresh finds it again ----
bc pool-create-as gone dir --target "$T/gone" --build >/dev/null
bc vol-create-as gone v1 1M >/dev/null
mv "$T/gone" "$T/gone.away"
assert_fails bc pool-refresh gone
assert_contains "$BD_OUT" "pool 'gone' is inaccessible"
assert_contains "$(bc pool-info gone)" "inaccessible"
assert_fails bc vol-list gone
assert_contains "$BD_OUT" "is inaccessible (pool-refresh it once its storage is back"
mv "$T/gone.away" "$T/gone"
bc pool-refresh gone >/dev/null
assert_contains "$(bc pool-info gone)" "running"
assert_contains "$(bc vol-list gone)" v1
mv "$T/gone" "$T/gone.away"
bc pool-refresh gone >/dev/null 2>&1 || true
bc pool-destroy gone >/dev/null # an inaccessible pool can be stopped

# ---- long operations run on a worker thread: the socket keeps answering ----
bc vol-create-as p1 big 256M >/dev/null
cat >"$T/async.py" <<'PY'
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile("rwb")
def send(name, args=None):
    m = {"execute": name}
    if args is not None: m["arguments"] = args
    f.write(json.dumps(m).encode() + b"\n"); f.flush()
def reply():
    while True:
        m = json.loads(f.readline())
        if "event" not in m: return m
f.readline(); send("qmp_capabilities"); reply()
t0 = time.monotonic()
send("vol-wipe", {"pool": "p1", "vol": "big", "algorithm": "random", "async": True})
job = reply()["return"]["job"]
assert job > 0, job
send("query-pools"); r = reply(); assert "return" in r, r
answered = time.monotonic() - t0
send("vol-delete", {"pool": "p1", "vol": "big"}); r = reply()
assert "operation in progress" in r["error"]["desc"], r
send("pool-destroy", {"pool": "p1"}); r = reply(); assert "error" in r, r
while True:
    m = json.loads(f.readline())
    if m.get("event") == "POOL_VOLUME_JOB_COMPLETED" and m["data"]["job"] == job: break
took = time.monotonic() - t0
assert "error" not in m["data"], m
print("answered after %.3f s, wipe took %.3f s" % (answered, took))
PY
python3 "$T/async.py" "$T/ctl.sock" || fail "async wipe"
[ "$(head -c 1048576 "$T/p1/big" | tr -d '\0' | wc -c)" -gt 1000000 ] || fail "random wipe wrote no data"
bc vol-delete big --pool p1 >/dev/null

bc vol-delete src --pool p1 >/dev/null
bc pool-destroy p1 >/dev/null
bc pool-delete p1 >/dev/null
bc pool-undefine p1 >/dev/null

# ---- events ----
bd_wait_for 5 grep -q "p1 Undefined" "$T/events.txt"
ev=$(grep '^p1 ' "$T/events.txt" | tr '\n' ',')
assert_eq "$ev" "p1 Defined,p1 Created,p1 Started,p1 Stopped,p1 Deleted,p1 Undefined," "events"
assert_contains "$(cat "$T/events.txt")" "t1 Stopped"
assert_contains "$(cat "$T/events.txt")" "t1 Undefined"
bd_kill "$ev_pid"

# shutdown while a long worker-thread wipe runs: it is cancelled, blockd exits promptly
bc pool-create-as p3 dir --target "$T/p3" --build >/dev/null
bc vol-create-as p3 huge 4G >/dev/null
bc qmp vol-wipe '{"pool":"p3","vol":"huge","algorithm":"random","async":true}' >/dev/null
t0=$(date +%s%N)
bd_stop
ms=$((($(date +%s%N) - t0) / 1000000))
[ $ms -lt 5000 ] || fail "shutdown took $ms ms with a wipe running"
