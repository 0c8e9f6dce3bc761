#!/bin/bash
# throttle-burst.sh: x-iops-total-max lets a short burst through at once, then the average rate
# holds: 400 reads under iops-total=50,iops-total-max=500 finish in well under a second (8 s
# without the burst); a time-based run then sees the burst plus 50/s.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio jq awk
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

RUNTIME=${THROTTLE_RUNTIME:-4}

within()
{
	echo "$4: measured $1, expected $2 +-$3%"
	awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { exit !(m >= e * (1 - p / 100) && m <= e * (1 + p / 100)) }' ||
		fail "$4: measured $1, expected $2 +-$3%"
}

start()
{
	bd_start --object throttle-group,id=tg,x-iops-total=50,x-iops-total-max=500 \
		--blockdev driver=null-co,node-name=n,size=1073741824,read-zeroes=off \
		--blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
		--nbd-server addr.type=unix,addr.path="$T/s$1" \
		--export type=nbd,id=e,node-name=t,name=t
}

bd_tmpdir

# The burst: 400 I/Os at once.
start 1
fio --name=j --ioengine=nbd --uri="$(bd_nbd_unix_uri "$T/s1" t)" --size=1G --rw=randread \
	--bs=4k --iodepth=16 --number_ios=400 --output-format=json --output="$T/b.json" \
	>"$T/b.log" 2>&1 || fail "fio failed: $(cat "$T/b.log")"
n=$(jq '.jobs[0].read.total_ios' "$T/b.json")
ms=$(jq '.jobs[0].read.runtime' "$T/b.json")
echo "burst: $n reads in $ms ms"
[ "$n" -ge 400 ] || fail "burst: only $n reads"
[ "$ms" -lt 1000 ] || fail "burst: 400 reads took $ms ms (no burst?)"
bd_stop

# Sustained from a fresh group: the burst bucket (500 + the one over) then 50/s.
start 2
fio --name=j --ioengine=nbd --uri="$(bd_nbd_unix_uri "$T/s2" t)" --size=1G --rw=randread \
	--bs=4k --iodepth=16 --runtime="$RUNTIME" --time_based --output-format=json \
	--output="$T/s.json" >"$T/s.log" 2>&1 || fail "fio failed: $(cat "$T/s.log")"
n=$(jq '.jobs[0].read.total_ios' "$T/s.json")
within "$n" $((501 + 50 * RUNTIME)) 10 "I/Os in ${RUNTIME}s with a 500 burst then 50/s"
bd_stop
