#!/bin/bash
# throttle-iops.sh: a throttle node under a group with x-iops-total holds fio (nbd engine) to the
# configured rate: reads alone, then reads and writes together (they share the total).
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio jq awk
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

IOPS=200
RUNTIME=${THROTTLE_RUNTIME:-4}

# thr_fio OUT.json URI FIO-ARGS...: one fio job on the nbd engine, JSON results in OUT.json.
thr_fio()
{
	local out=$1 uri=$2
	shift 2
	fio --name=j --ioengine=nbd --uri="$uri" --size=1G --output-format=json --output="$out" \
		"$@" >"$out.log" 2>&1 || fail "fio failed: $(cat "$out.log")"
}

# within MEASURED EXPECTED PERCENT WHAT
within()
{
	echo "$4: measured $1, expected $2 +-$3%"
	awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { exit !(m >= e * (1 - p / 100) && m <= e * (1 + p / 100)) }' ||
		fail "$4: measured $1, expected $2 +-$3%"
}

bd_tmpdir
bd_start --object throttle-group,id=tg,x-iops-total=$IOPS \
	--blockdev driver=null-co,node-name=n,size=1073741824,read-zeroes=off \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=t,name=t,writable=on
URI=$(bd_nbd_unix_uri "$T/s" t)

# Reads alone.
thr_fio "$T/r.json" "$URI" --rw=randread --bs=4k --iodepth=16 --runtime="$RUNTIME" --time_based
within "$(jq '.jobs[0].read.iops' "$T/r.json")" $IOPS 10 "iops-total=$IOPS, random 4k reads"

# Reads and writes share the total; requests larger than a block count once (no iops-size).
thr_fio "$T/rw.json" "$URI" --rw=randrw --bs=64k --iodepth=16 --runtime="$RUNTIME" --time_based
r=$(jq '.jobs[0].read.iops' "$T/rw.json")
w=$(jq '.jobs[0].write.iops' "$T/rw.json")
within "$(awk -v r="$r" -v w="$w" 'BEGIN { print r + w }')" $IOPS 10 \
	"iops-total=$IOPS, random 64k reads ($r) + writes ($w)"

bd_stop
