#!/bin/bash
# pool-refresh-bench.sh - how long a dir pool with many volumes takes to start (first scan,
# every file probed), refresh (incremental: unchanged files are not probed again) and list, as
# seen by a QMP client over the control socket (one connection, time per command).
#
# Usage: fio-jobs/pool-refresh-bench.sh [--volumes N] [--repeat R] [--dir DIR] [--blockd PATH]
#   --volumes N   volumes in the pool (default 10000): sparse 1 MiB raw files, 1% qcow2 headers
#   --repeat R    refresh + list repetitions, the median is reported (default 5)
#   --dir DIR     where the pool directory goes (default var/bench-pool)
#   --blockd PATH the daemon (default $BLOCKD, else build/blockd)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
n=10000 repeat=5 dir=$root/var/bench-pool blockd=${BLOCKD:-$root/build/blockd}
while [ $# -gt 0 ]; do
	case $1 in
	--volumes) n=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--blockd) blockd=$2; shift 2 ;;
	*) echo "usage: $0 [--volumes N] [--repeat R] [--dir DIR] [--blockd PATH]" >&2; exit 2 ;;
	esac
done
[ -x "$blockd" ] || { echo "no blockd at $blockd (--blockd)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "needs python3" >&2; exit 1; }

w=$(mktemp -d /tmp/pool-bench.XXXXXX)
pid=
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$w" "$dir"; }
trap cleanup EXIT
rm -rf "$dir"
mkdir -p "$dir"
python3 - "$dir" "$n" <<'PY'
import os, struct, sys
d, n = sys.argv[1], int(sys.argv[2])
hdr = b"QFI\xfb" + struct.pack(">IQIIQ", 3, 0, 0, 16, 1 << 30) + bytes(72)
for i in range(n):
    p = os.path.join(d, "vol%05d.img" % i)
    with open(p, "wb") as f:
        if i % 100 == 0:
            f.write(hdr)
        f.truncate(1 << 20)
PY
"$blockd" --state-dir "$w/state" --control "$w/ctl.sock" --pidfile "$w/pid" >"$w/log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ -s "$w/pid" ] && break; sleep 0.05; done
[ -s "$w/pid" ] || { cat "$w/log" >&2; exit 1; }

python3 - "$w/ctl.sock" "$dir" "$repeat" "$n" <<'PY'
import json, socket, statistics, sys, time
sock, d, repeat, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_UNIX); s.connect(sock)
f = s.makefile("rwb")
def cmd(name, args=None):
    m = {"execute": name}
    if args is not None: m["arguments"] = args
    f.write(json.dumps(m).encode() + b"\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if "event" in r: continue
        if "error" in r: raise SystemExit("%s: %s" % (name, r["error"]["desc"]))
        return r["return"]
f.readline(); cmd("qmp_capabilities")
def timed(name, args=None):
    t = time.perf_counter(); r = cmd(name, args); return (time.perf_counter() - t) * 1000, r
cmd("pool-define-as", {"name": "bench", "type": "dir", "target": d})
t_start, _ = timed("pool-start", {"pool": "bench"})
ref, lst = [], []
for _ in range(repeat):
    a, _ = timed("pool-refresh", {"pool": "bench"}); ref.append(a)
    b, vols = timed("query-volumes", {"pool": "bench"}); lst.append(b)
assert len(vols) == n, len(vols)
assert sum(1 for v in vols if v["format"] == "qcow2") == (n + 99) // 100
print("volumes: %d" % n)
print("pool-start (first scan, every file probed): %.1f ms" % t_start)
print("pool-refresh (incremental), median of %d:    %.1f ms" % (repeat, statistics.median(ref)))
print("query-volumes (list), median of %d:          %.1f ms" % (repeat, statistics.median(lst)))
cmd("pool-destroy", {"pool": "bench"}); cmd("pool-undefine", {"pool": "bench"})
PY
