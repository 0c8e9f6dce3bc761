#!/bin/bash
# vub-compare.sh - benchmark blockd's vhost-user-blk export against qemu-storage-daemon's, on the
# same raw image, with the test front end tests/vub/vub-client (a userspace virtio-blk driver:
# split rings in a memfd shared with the back end, one thread per queue, interrupts by eventfd).
# Jobs: 4k random read and write at queue depth 32, 1 MiB sequential read and write at queue
# depth 8; then blockd's scaling from one to two iothreads with two queues, and 1 MiB reads on one
# queue with a spare iothread (blockd splits large reads over both loops).  Runs alternate
# between the servers (the order flips every repetition); the table shows medians.
#
# Usage: fio-jobs/vub-compare.sh [options]
#   --time S        seconds per run (default 5)
#   --repeat N      repetitions, medians reported (default 3)
#   --size SIZE     image size (default 1G), filled with random data once
#   --cache MODE    writeback (page cache, default: measures the export, not the disk) or
#                   none (O_DIRECT: on a slow disk both servers only measure the disk)
#   --dir DIR       where the image goes (default var/bench)
#   --build DIR     the build directory with blockd and tests/vub/vub-client (default build-vub,
#                   else build)
#   --markdown FILE also write the table as markdown
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
time_s=5 repeat=3 size=1G cache=writeback dir=$root/var/bench build="" md=""
while [ $# -gt 0 ]; do
	case $1 in
	--time) time_s=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--cache) cache=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	--markdown) md=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
if [ -z "$build" ]; then
	for b in "$root/build-vub" "$root/build"; do [ -x "$b/tests/vub/vub-client" ] && build=$b && break; done
fi
client=$build/tests/vub/vub-client
blockd=$build/blockd
[ -x "$client" ] && [ -x "$blockd" ] || { echo "build blockd and vub-client first (--build DIR)" >&2; exit 1; }
command -v qemu-storage-daemon >/dev/null || { echo "qemu-storage-daemon is not installed" >&2; exit 1; }

mkdir -p "$dir"
img=$dir/vub-bench.img
want=$(numfmt --from=iec "$size")
if [ ! -f "$img" ] || [ "$(stat -c %s "$img")" != "$want" ]; then
	echo "filling $img ($size) with random data..." >&2
	head -c "$want" /dev/urandom >"$img"
fi
W=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$W"; }
trap cleanup EXIT

direct=on
[ "$cache" = none ] || direct=off

# start_server NAME QUEUES IOTHREADS -> socket path in $sock, pid in $spid
start_server()
{
	local name=$1 nq=$2 nio=$3
	sock=$W/$name.sock
	rm -f "$sock"
	case $name in
	blockd*)
		local objs=() its=""
		for ((i = 0; i < nio; i++)); do
			objs+=(--object "iothread,id=io$i")
			its+=",iothreads.$i=io$i"
		done
		"$blockd" "${objs[@]}" \
			--blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct" \
			--blockdev driver=raw,node-name=r,file=f \
			--export "type=vhost-user-blk,id=v,node-name=r,addr.type=unix,addr.path=$sock,writable=on,num-queues=$nq$its" \
			>"$W/$name.log" 2>&1 &
		;;
	qsd)
		qemu-storage-daemon --object iothread,id=io0 \
			--blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct,aio=io_uring" \
			--export "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$sock,writable=on,num-queues=$nq,iothread=io0" \
			>"$W/$name.log" 2>&1 &
		;;
	esac
	spid=$!
	pids+=("$spid")
	for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.05; done
	echo "$name did not start: $(cat "$W/$name.log")" >&2
	exit 1
}

stop_server()
{
	# qemu-storage-daemon 7.2 may hang in SIGTERM after a vhost-user client left: SIGKILL it
	kill "$spid" 2>/dev/null || true
	for ((i = 0; i < 30; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
}

# run_job SERVER RW BS QD QUEUES IOTHREADS -> prints "IOPS MiB/s"
run_job()
{
	start_server "$1" "$5" "$6"
	local out
	out=$("$client" "$sock" bench --rw "$2" --bs "$3" --qd "$4" --queues "$5" --time "$time_s")
	stop_server
	echo "$out" | sed -E 's/.*: ([0-9]+) IOPS ([0-9.]+) MiB.*/\1 \2/'
}

median()
{
	sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'
}

jobs=("randread 4k 32" "randwrite 4k 32" "read 1M 8" "write 1M 8")
declare -A res
[ "$cache" = none ] || cat "$img" >/dev/null # warm the page cache for both servers alike
for ((r = 0; r < repeat; r++)); do
	for j in "${jobs[@]}"; do
		set -- $j
		order="blockd qsd"
		[ $((r % 2)) = 1 ] && order="qsd blockd"
		for s in $order; do
			v=$(run_job $s "$1" "$2" "$3" 1 1)
			res["$s $j"]+="$v"$'\n'
		done
	done
	for nio in 1 2; do
		v=$(run_job blockd randread 4k 32 2 "$nio")
		res["scale $nio"]+="$v"$'\n'
	done
	# one queue, a spare iothread: large reads are split over both loops
	v=$(run_job blockd read 1M 8 1 2)
	res["helper"]+="$v"$'\n'
done

metric()
{
	# $1 = key, $2 = 1 (IOPS) or 2 (MiB/s)
	printf '%s' "${res[$1]}" | awk -v f="$2" 'NF {print $f}' | median
}

{
	echo "| job (1 queue, cache=$cache) | blockd | qemu-storage-daemon 7.2 | ratio |"
	echo "|---|---|---|---|"
	for j in "${jobs[@]}"; do
		set -- $j
		f=1 unit=IOPS
		[ "$2" = 1M ] && f=2 unit=MiB/s
		b=$(metric "blockd $j" $f)
		q=$(metric "qsd $j" $f)
		ratio=$(awk -v b="$b" -v q="$q" 'BEGIN {printf "%.2f", (q > 0) ? (b / q) : 0}')
		echo "| $1 bs=$2 qd=$3 | $b $unit | $q $unit | ${ratio}x |"
	done
	echo
	echo "| blockd scaling: randread 4k qd=32 per queue, 2 queues | IOPS |"
	echo "|---|---|"
	for nio in 1 2; do
		echo "| $nio iothread(s) | $(metric "scale $nio" 1) |"
	done
	echo
	h=$(metric helper 2)
	q=$(metric "qsd read 1M 8" 2)
	echo "| read bs=1M qd=8, 1 queue | blockd, spare iothread (split reads) | ratio to qsd |"
	echo "|---|---|---|"
	echo "| | $h MiB/s | $(awk -v b="$h" -v q="$q" 'BEGIN {printf "%.2f", (q > 0) ? (b / q) : 0}')x |"
} | tee "${md:-/dev/null}"
