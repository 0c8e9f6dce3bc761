#!/bin/bash
# throttle-shared.sh: one throttle group shared by two throttle nodes, exported separately and
# served by two iothreads (two I/O loops): the sum of both fio jobs obeys the group's limit,
# and the round robin gives each a fair share.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio jq awk
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

IOPS=300
RUNTIME=${THROTTLE_RUNTIME:-4}

within()
{
	echo "$4: measured $1, expected $2 +-$3%"
	awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { exit !(m >= e * (1 - p / 100) && m <= e * (1 + p / 100)) }' ||
		fail "$4: measured $1, expected $2 +-$3%"
}

bd_tmpdir
bd_start --object iothread,id=io1 --object iothread,id=io2 \
	--object throttle-group,id=tg,x-iops-total=$IOPS \
	--blockdev driver=null-co,node-name=n1,size=1073741824,read-zeroes=off \
	--blockdev driver=null-co,node-name=n2,size=1073741824,read-zeroes=off \
	--blockdev driver=throttle,node-name=t1,throttle-group=tg,file=n1 \
	--blockdev driver=throttle,node-name=t2,throttle-group=tg,file=n2 \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e1,node-name=t1,name=t1,writable=on,iothread=io1 \
	--export type=nbd,id=e2,node-name=t2,name=t2,writable=on,iothread=io2

# One fio, two jobs running together: reads on t1, writes on t2.
fio --ioengine=nbd --size=1G --output-format=json --output="$T/o.json" \
	--runtime="$RUNTIME" --time_based --iodepth=8 --bs=4k \
	--name=a --uri="$(bd_nbd_unix_uri "$T/s" t1)" --rw=randread \
	--name=b --uri="$(bd_nbd_unix_uri "$T/s" t2)" --rw=randwrite \
	>"$T/fio.log" 2>&1 || fail "fio failed: $(cat "$T/fio.log")"
a=$(jq '.jobs[0].read.iops' "$T/o.json")
b=$(jq '.jobs[1].write.iops' "$T/o.json")
sum=$(awk -v a="$a" -v b="$b" 'BEGIN { print a + b }')
within "$sum" $IOPS 10 "iops-total=$IOPS shared by t1 ($a reads/s) and t2 ($b writes/s)"
within "$a" $((IOPS / 2)) 25 "t1's share"
within "$b" $((IOPS / 2)) 25 "t2's share"

bd_stop
