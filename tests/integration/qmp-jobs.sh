#!/bin/bash
# qmp-jobs.sh: blockdev-create as a job on the control socket: QEMU's JOB_STATUS_CHANGE sequence
# (created, running, waiting, pending, concluded, null after job-dismiss), query-jobs, verb
# errors, a failing create (aborting), and the created qcow2 image opens.
source "$(dirname "$0")/../lib/common.sh"
need python3 qemu-img
bd_tmpdir
truncate -s 0 "$T/q.qcow2"
bd_start --control "$T/c.sock"
cat >"$T/jobs.py" <<'PY'
import sys, time
sys.path.insert(0, sys.argv[1])
from qmp_conv import Client
c = Client(sys.argv[2]); c.read()
T = sys.argv[3]
assert c.cmd("qmp_capabilities") == {"return": {}}
assert c.cmd("blockdev-add", {"driver": "file", "node-name": "f", "filename": T + "/q.qcow2"}) == {"return": {}}
r = c.cmd("blockdev-create", {"job-id": "j1", "options": {"driver": "qcow2", "file": "f", "size": 10485760}})
if "error" in r and "does not support" in r["error"]["desc"]:
    print("SKIP: no driver with blockdev-create"); sys.exit(77)
assert r == {"return": {}}, r
for i in range(100):
    j = c.cmd("query-jobs")["return"]
    if j[0]["status"] == "concluded": break
    time.sleep(0.05)
assert j[0]["status"] == "concluded" and "error" not in j[0], j
r = c.cmd("job-finalize", {"id": "j1"})
assert "cannot accept command verb 'finalize'" in r["error"]["desc"], r
assert c.cmd("job-dismiss", {"id": "j1"}) == {"return": {}}
assert c.cmd("query-jobs") == {"return": []}
seq = [e["data"]["status"] for e in c.events if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == "j1"]
assert seq == ["created", "running", "waiting", "pending", "concluded", "null"], seq
# a failing create concludes through aborting, with the error in query-jobs
assert c.cmd("blockdev-add", {"driver": "null-co", "node-name": "n"}) == {"return": {}}
r = c.cmd("blockdev-create", {"job-id": "j2", "options": {"driver": "qcow2", "file": "n", "size": 1 << 60}})
if r == {"return": {}}:
    for i in range(100):
        j = c.cmd("query-jobs")["return"]
        if j[0]["status"] == "concluded": break
        time.sleep(0.05)
    assert "error" in j[0], j
    seq = [e["data"]["status"] for e in c.events if e["data"].get("id") == "j2"]
    assert seq[-2:] == ["aborting", "concluded"], seq
    assert c.cmd("job-dismiss", {"id": "j2"}) == {"return": {}}
assert "error" in c.cmd("blockdev-create", {"job-id": "j3", "options": {"driver": "null-co"}})
assert "error" in c.cmd("job-cancel", {"id": "nope"})
assert c.cmd("blockdev-add", {"driver": "qcow2", "node-name": "q", "file": "f"}) == {"return": {}}
sizes = {n["node-name"]: n["virtual-size"] for n in c.cmd("query-named-block-nodes")["return"]}
assert sizes["q"] == 10485760, sizes
PY
rc=0
python3 "$T/jobs.py" "$(dirname "$0")" "$T/c.sock" "$T" || rc=$?
[ "$rc" = 77 ] && skip "no driver implements blockdev-create"
[ "$rc" = 0 ] || fail "job conversation failed"
bd_stop
