#!/bin/bash
# throttle-runtime.sh: a group's limits change at run time through the control socket (qom-set of
# "limits", as with QEMU): the new rate applies at once, requests queued under a tiny limit are
# woken when it is raised, bad limits are refused with QEMU's message and change nothing, and
# object-del refuses a group in use.  Skips while the control socket lacks qom-set.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio jq awk python3
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

within()
{
	echo "$4: measured $1, expected $2 +-$3%"
	awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { exit !(m >= e * (1 - p / 100) && m <= e * (1 + p / 100)) }' ||
		fail "$4: measured $1, expected $2 +-$3%"
}

# qmp JSON-COMMAND...: send each command (after qmp_capabilities) on the control socket and print
# each answer on a line.
qmp()
{
	python3 - "$T/qmp" "$@" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
f = s.makefile("rw")
def read():
    while True:
        line = f.readline()
        if not line:
            sys.exit("control socket closed")
        msg = json.loads(line)
        if "event" not in msg:
            return msg
read()  # greeting
for cmd in ['{"execute":"qmp_capabilities"}'] + sys.argv[2:]:
    f.write(cmd + "\n")
    f.flush()
    ans = read()
    if cmd != '{"execute":"qmp_capabilities"}':
        print(json.dumps(ans))
PY
}

bd_tmpdir
bd_start --chardev socket,id=c,path="$T/qmp",server=on,wait=off --monitor chardev=c \
	--object throttle-group,id=tg,x-iops-total=100 \
	--blockdev driver=null-co,node-name=n,size=1073741824,read-zeroes=off \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=t,name=t
URI=$(bd_nbd_unix_uri "$T/s" t)

[ -S "$T/qmp" ] || skip "no control socket"
out=$(qmp '{"execute":"qom-get","arguments":{"path":"tg","property":"limits"}}') ||
	skip "control socket unusable: $out"
case $out in
*CommandNotFound* | *"not found"*) skip "the control socket has no qom-get: $out" ;;
esac
assert_eq "$(jq '.return["iops-total"]' <<<"$out")" 100 "qom-get limits iops-total"
assert_eq "$(jq '.return["bps-read-max-length"]' <<<"$out")" 1 "qom-get limits bps-read-max-length"
out=$(qmp '{"execute":"qom-get","arguments":{"path":"tg","property":"x-iops-total"}}')
assert_eq "$(jq '.return' <<<"$out")" 100 "qom-get x-iops-total"

# Bad limits are refused with QEMU's messages and change nothing.
out=$(qmp '{"execute":"qom-set","arguments":{"path":"tg","property":"limits","value":{"iops-read":7}}}' \
	'{"execute":"qom-set","arguments":{"path":"tg","property":"limits","value":{"iops-total":-7}}}' \
	'{"execute":"qom-set","arguments":{"path":"tg","property":"x-iops-total","value":9}}' \
	'{"execute":"object-del","arguments":{"id":"tg"}}' \
	'{"execute":"qom-get","arguments":{"path":"tg","property":"limits"}}')
assert_contains "$out" "bps/iops/max total values and read/write values cannot be used at the same time"
assert_contains "$out" "bps/iops/max values must be within [0, 1000000000000000]"
assert_contains "$out" "Property cannot be set after initialization"
assert_contains "$out" "is in use"
assert_eq "$(tail -n1 <<<"$out" | jq '.return["iops-total"]')" 100 "iops-total after failed sets"

# The rate follows the limits.
fio --name=j --ioengine=nbd --uri="$URI" --size=1G --rw=randread --bs=4k --iodepth=8 \
	--runtime=2 --time_based --output-format=json --output="$T/a.json" >"$T/a.log" 2>&1 ||
	fail "fio failed: $(cat "$T/a.log")"
within "$(jq '.jobs[0].read.iops' "$T/a.json")" 100 15 "iops-total=100 (2 s)"

qmp '{"execute":"qom-set","arguments":{"path":"tg","property":"limits","value":{"iops-total":400}}}' >/dev/null
fio --name=j --ioengine=nbd --uri="$URI" --size=1G --rw=randread --bs=4k --iodepth=8 \
	--runtime=2 --time_based --output-format=json --output="$T/b.json" >"$T/b.log" 2>&1 ||
	fail "fio failed: $(cat "$T/b.log")"
within "$(jq '.jobs[0].read.iops' "$T/b.json")" 400 15 "iops-total=400 after qom-set (2 s)"

# Requests queued under a tiny limit (100 bytes/s: a 4k read every 40 s) are woken as soon as
# it is raised (QEMU's qom-set leaves them waiting for the old deadline; its
# block_set_io_throttle wakes them): 3 s of fio, the limit raised after 1 s.
qmp '{"execute":"qom-set","arguments":{"path":"tg","property":"limits","value":{"iops-total":0,"bps-total":100}}}' >/dev/null
fio --name=j --ioengine=nbd --uri="$URI" --size=1G --rw=randread --bs=4k --iodepth=8 \
	--runtime=3 --time_based --output-format=json --output="$T/c.json" >"$T/c.log" 2>&1 &
fio_pid=$!
sleep 1
qmp '{"execute":"qom-set","arguments":{"path":"tg","property":"limits","value":{"bps-total":0,"iops-total":500}}}' >/dev/null
wait "$fio_pid" || fail "fio failed: $(cat "$T/c.log")"
n=$(jq '.jobs[0].read.total_ios' "$T/c.json")
echo "100 B/s for 1 s, then 500 IOPS for 2 s: $n reads"
[ "$n" -ge 800 ] || fail "only $n reads after raising the limit (queued requests not woken?)"

bd_stop
