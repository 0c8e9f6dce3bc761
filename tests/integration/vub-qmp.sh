#!/bin/bash
# block-export-add / query-block-exports / block-export-del of a vhost-user-blk export over QMP
# (the same add() as --export): the export serves a front end, is listed, refuses deletion while
# a front end is connected (without mode=hard), and goes away with BLOCK_EXPORT_DELETED.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
need python3
[ -x "$VUB_CLIENT" ] || skip "vub-client is not built ($VUB_CLIENT)"
bd_tmpdir
bd_sparse_image "$T/img" 32M
bd_start --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
	--object iothread,id=a --blockdev driver=file,node-name=f,filename="$T/img"
out=$(python3 - "$T/qmp.sock" "$T/v.sock" "$VUB_CLIENT" <<'PY'
import json, socket, sys, subprocess
qmp, vsock, client = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX); s.connect(qmp); f = s.makefile('rw')
json.loads(f.readline())
events = []
def x(c):
    f.write(json.dumps(c) + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'event' not in r: return r
        events.append(r['event'])
x({"execute": "qmp_capabilities"})
print("add:", x({"execute": "block-export-add", "arguments": {"type": "vhost-user-blk", "id": "v",
   "node-name": "f", "addr": {"type": "unix", "path": vsock}, "writable": True,
   "num-queues": 2, "iothread": "a", "logical-block-size": 4096}}))
print("query:", x({"execute": "query-block-exports"}))
# a front end that stays connected while we try to delete
p = subprocess.Popen([client, vsock, "bench", "--rw", "randread", "--time", "2", "--queues", "2"],
                     stdout=subprocess.PIPE, text=True)
import time; time.sleep(0.7)
print("del-busy:", x({"execute": "block-export-del", "arguments": {"id": "v"}}))
print("bench:", p.communicate()[0].strip())
print("verify:", subprocess.run([client, vsock, "verify", "--queues", "2"], capture_output=True,
                                text=True).stdout.strip().splitlines()[-1])
time.sleep(0.2)
print("del:", x({"execute": "block-export-del", "arguments": {"id": "v"}}))
print("query-after:", x({"execute": "query-block-exports"}))
time.sleep(0.2)
x({"execute": "query-block-exports"})
# serial and the iothreads list (a blockd extension) reach the export through QMP too
print("add2:", x({"execute": "block-export-add", "arguments": {"type": "vhost-user-blk",
   "id": "v2", "node-name": "f", "addr": {"type": "unix", "path": vsock + "2"},
   "serial": "bd-serial-7", "iothreads": ["a"], "num-queues": 2}}))
print("bad-iothreads:", x({"execute": "block-export-add", "arguments": {"type": "vhost-user-blk",
   "id": "v3", "node-name": "f", "addr": {"type": "unix", "path": vsock + "3"},
   "iothreads": "a"}}))
print("del2:", x({"execute": "block-export-del", "arguments": {"id": "v2"}}))
print("events:", events)
PY
)
echo "$out"
assert_contains "$out" "add: {'return': {}}"
assert_contains "$out" "'type': 'vhost-user-blk', 'id': 'v', 'node-name': 'f'"
assert_contains "$out" "del-busy: {'error'"
assert_contains "$out" "randread bs=4096"
assert_contains "$out" "verify: VERIFY OK"
assert_contains "$out" "del: {'return': {}}"
assert_contains "$out" "query-after: {'return': []}"
assert_contains "$out" "BLOCK_EXPORT_DELETED"
assert_contains "$out" "add2: {'return': {}}"
assert_contains "$out" "bad-iothreads: {'error': {'class': 'GenericError'"
assert_contains "$out" "del2: {'return': {}}"
assert_not_exists "$T/v.sock"
bd_stop
