#!/bin/bash
# throttle-bps.sh: x-bps-read and x-bps-write hold fio's bandwidth (nbd engine) to the configured
# rates, each for its own direction only.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio jq awk
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

RBPS=$((8 * 1024 * 1024))
WBPS=$((4 * 1024 * 1024))
RUNTIME=${THROTTLE_RUNTIME:-4}

thr_fio()
{
	local out=$1 uri=$2
	shift 2
	fio --name=j --ioengine=nbd --uri="$uri" --size=1G --output-format=json --output="$out" \
		"$@" >"$out.log" 2>&1 || fail "fio failed: $(cat "$out.log")"
}

within()
{
	echo "$4: measured $1, expected $2 +-$3%"
	awk -v m="$1" -v e="$2" -v p="$3" 'BEGIN { exit !(m >= e * (1 - p / 100) && m <= e * (1 + p / 100)) }' ||
		fail "$4: measured $1, expected $2 +-$3%"
}

bd_tmpdir
bd_start --object throttle-group,id=tg,x-bps-read=$RBPS,x-bps-write=$WBPS \
	--blockdev driver=null-co,node-name=n,size=1073741824,read-zeroes=off \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=t,name=t,writable=on
URI=$(bd_nbd_unix_uri "$T/s" t)

thr_fio "$T/r.json" "$URI" --rw=read --bs=64k --iodepth=8 --runtime="$RUNTIME" --time_based
within "$(jq '.jobs[0].read.bw_bytes' "$T/r.json")" $RBPS 10 "bps-read=$RBPS, 64k reads (bytes/s)"

thr_fio "$T/w.json" "$URI" --rw=write --bs=128k --iodepth=8 --runtime="$RUNTIME" --time_based
within "$(jq '.jobs[0].write.bw_bytes' "$T/w.json")" $WBPS 10 "bps-write=$WBPS, 128k writes (bytes/s)"

bd_stop
