#!/bin/bash
# rbd-compare.sh - blockd's rbd driver against fio's own rbd engine (librbd direct): the same
# image of a one-node Ceph cluster (tests/lib/ceph.sh, memstore OSD), driven once by fio's rbd
# engine and once by fio's nbd engine through blockd's NBD export of an rbd node.  Runs are
# interleaved (the order alternates every repetition); the table shows medians and the ratio
# blockd / direct (1.0 = no overhead).
#
# Usage: fio-jobs/rbd-compare.sh [--runtime S] [--ramp S] [--repeat N] [--size SIZE] [--markdown F]
#                                [--profile DIR]
#   defaults: --runtime 5 --ramp 2 --repeat 5 --size 256M
#   --profile DIR: perf record -g blockd during its runs (DIR/perf-JOB-repN.data; read them with
#   perf report --no-children -i FILE).
# A second table gives the CPU time per I/O (medians, µs): fio's process (user+system; fio runs
# with --thread so librbd's threads count) in both modes, blockd's (from /proc/PID/stat) in the
# NBD mode, over the whole run including the ramp (divided by all I/Os done in it).
# Jobs: 4k randread QD32, 4k randwrite QD32, 1M seqread QD4, 1M seqwrite QD4.  IOPS for 4k, MiB/s
# for 1M.  Needs root-free ports only; BLOCKD (default build/blockd) is the daemon.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runtime=5 ramp=2 repeat=5 size=256M markdown="" prof=""
while [ $# -gt 0 ]; do
	case $1 in
	--runtime) runtime=$2; shift 2 ;;
	--ramp) ramp=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--markdown) markdown=$2; shift 2 ;;
	--profile) prof=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
: "${BLOCKD:=$root/build/blockd}"
export BLOCKD SRC_DIR=$root
source "$root/tests/lib/common.sh"
source "$root/tests/lib/ceph.sh"
need fio
fio --enghelp 2>/dev/null | grep -qw rbd || skip "fio has no rbd engine"
fio --enghelp 2>/dev/null | grep -qw nbd || skip "fio has no nbd engine"
ceph_start
rbd create --size "$size" "$CEPH_POOL/bench"
# fill the image so that reads hit data
CEPH_CONF=$CEPH_CONF fio --name=fill --ioengine=rbd --clientname=admin --pool="$CEPH_POOL" \
	--rbdname=bench --rw=write --bs=4M --iodepth=8 --size="$size" >/dev/null
bd_start --object "secret,id=ck,data=$CEPH_KEY" \
	--blockdev "driver=rbd,node-name=r0,pool=$CEPH_POOL,image=bench,server.0.host=127.0.0.1,server.0.port=$CEPH_MON_PORT,key-secret=ck" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock" --export type=nbd,id=r0,node-name=r0,writable=on

jobs="randread-4k-qd32:randread:4k:32 randwrite-4k-qd32:randwrite:4k:32 seqread-1m-qd4:read:1M:4 seqwrite-1m-qd4:write:1M:4"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
[ -z "$prof" ] || mkdir -p "$prof"
run()
{ # run ENGINE RW BS QD NAME REP -> prints "IOPS-or-MiB/s fio-µs/io blockd-µs/io"
	local eng=$1 rw=$2 bs=$3 qd=$4 out=$T/fio.json b0 b1 pp=""
	b0=$(ticks "$BD_PID")
	if [ -n "$prof" ] && [ "$eng" = nbd ]; then
		perf record -q -g -p "$BD_PID" -o "$prof/perf-$5-rep$6.data" -- sleep "$runtime" >/dev/null 2>&1 &
		pp=$!
	fi
	if [ "$eng" = direct ]; then
		CEPH_CONF=$CEPH_CONF /usr/bin/time -f "%U %S" -o "$T/time" fio --thread --output-format=json \
			--output="$out" --name=j --ioengine=rbd \
			--clientname=admin --pool="$CEPH_POOL" --rbdname=bench --rw="$rw" --bs="$bs" \
			--iodepth="$qd" --size="$size" --time_based --runtime="$runtime" --ramp_time="$ramp" >/dev/null
	else
		/usr/bin/time -f "%U %S" -o "$T/time" fio --thread --output-format=json --output="$out" \
			--name=j --ioengine=nbd \
			--uri="nbd+unix:///r0?socket=$T/nbd.sock" --rw="$rw" --bs="$bs" \
			--iodepth="$qd" --size="$size" --time_based --runtime="$runtime" --ramp_time="$ramp" >/dev/null
	fi
	[ -z "$pp" ] || wait "$pp" || true
	b1=$(ticks "$BD_PID")
	python3 - "$out" "$bs" "$T/time" "$b0" "$b1" "$eng" "$runtime" "$ramp" <<'PY'
import json, os, sys
t = open(sys.argv[1]).read()  # with --thread the nbd engine prints a line before the JSON
j = json.loads(t[t.index("{"):])["jobs"][0]
d = j["read"] if j["read"]["io_bytes"] > 0 else j["write"]
ios = d["iops"] * (float(sys.argv[7]) + float(sys.argv[8]))  # CPU is counted over ramp + run
u, s = open(sys.argv[3]).read().split()[-2:]
bd = (int(sys.argv[5]) - int(sys.argv[4])) / os.sysconf("SC_CLK_TCK") if sys.argv[6] == "nbd" else 0
v = round(d["iops"]) if sys.argv[2] == "4k" else round(d["bw"] / 1024, 1)
print(v, round((float(u) + float(s)) * 1e6 / ios, 1), round(bd * 1e6 / ios, 1))
PY
}
declare -A res cpu
for ((r = 0; r < repeat; r++)); do
	for j in $jobs; do
		IFS=: read -r name rw bs qd <<<"$j"
		if ((r % 2)); then order="nbd direct"; else order="direct nbd"; fi
		for e in $order; do
			read -r v fc bc <<<"$(run "$e" "$rw" "$bs" "$qd" "$name" "$r")"
			res[$name.$e]="${res[$name.$e]:-} $v"
			cpu[$name.$e.fio]="${cpu[$name.$e.fio]:-} $fc"
			cpu[$name.$e.bd]="${cpu[$name.$e.bd]:-} $bc"
			echo "rep $((r + 1)) $name $e: $v (CPU µs/IO: fio $fc, blockd $bc)" >&2
		done
	done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
table="| job | fio rbd engine (direct) | blockd NBD (rbd node) | ratio |
|---|---|---|---|"
for j in $jobs; do
	IFS=: read -r name rw bs qd <<<"$j"
	d=$(median <<<"${res[$name.direct]}")
	n=$(median <<<"${res[$name.nbd]}")
	unit=IOPS
	[ "$bs" = 4k ] || unit=MiB/s
	ratio=$(awk -v a="$n" -v b="$d" 'BEGIN {printf "%.2f", (b > 0) ? a / b : 0}')
	table="$table
| $name | $d $unit | $n $unit | ${ratio}x |"
done
ctable="| job | CPU µs/IO: fio rbd engine | fio nbd client | blockd | nbd client + blockd vs direct |
|---|---|---|---|---|"
for j in $jobs; do
	IFS=: read -r name rw bs qd <<<"$j"
	fd=$(median <<<"${cpu[$name.direct.fio]}")
	fn=$(median <<<"${cpu[$name.nbd.fio]}")
	bd=$(median <<<"${cpu[$name.nbd.bd]}")
	ratio=$(awk -v a="$fn" -v b="$bd" -v d="$fd" 'BEGIN {printf "%.2f", (d > 0) ? (a + b) / d : 0}')
	ctable="$ctable
| $name | $fd | $fn | $bd | ${ratio}x |"
done
echo "$table"
echo
echo "$ctable"
[ -z "$markdown" ] || printf '%s\n\n%s\n' "$table" "$ctable" >"$markdown"
bd_stop
