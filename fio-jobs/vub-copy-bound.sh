#!/bin/bash
# vub-copy-bound.sh - where the time of 1 MiB vhost-user-blk requests goes, for blockd and for
# qemu-storage-daemon: the same image (page cache), the test front end tests/vub/vub-client, and
#   - a baseline: fio reading / writing the image file itself at 1 MiB (psync: one thread doing
#     the same page-cache copy a server does; and two threads, to show what two cores give);
#   - per server and job: throughput, and the server's CPU time per GiB moved (utime + stime from
#     /proc, so the comparison does not depend on how busy the machine is), and the front end's;
#   - with --perf: the share of the server's cycles in the kernel's copy routines and page-cache
#     lookups (perf record -a is not needed: the server's pid only).
# Runs alternate between the servers; medians of --repeat runs.
#
# Usage: fio-jobs/vub-copy-bound.sh [--build DIR] [--dir DIR] [--size SIZE] [--time S]
#                                   [--repeat N] [--perf] [--markdown FILE]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
build="" dir=/dev/shm/vub-copy size=512M time_s=3 repeat=3 perf=0 md=""
while [ $# -gt 0 ]; do
	case $1 in
	--build) build=$2; shift 2 ;;
	--dir) dir=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--time) time_s=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--perf) perf=1; shift ;;
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
for c in qemu-storage-daemon fio; do
	command -v $c >/dev/null || { echo "$c is not installed" >&2; exit 1; }
done
[ "$perf" = 0 ] || command -v perf >/dev/null || { echo "perf is not installed" >&2; exit 1; }

mkdir -p "$dir"
img=$dir/img
want=$(numfmt --from=iec "$size")
[ -f "$img" ] && [ "$(stat -c %s "$img")" = "$want" ] || head -c "$want" /dev/urandom >"$img"
cat "$img" >/dev/null
W=$(mktemp -d)
spid=""
cleanup() { [ -z "$spid" ] || kill -KILL "$spid" 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
tck=$(getconf CLK_TCK)

cpu_s() { awk -v t="$tck" '{print ($14 + $15) / t}' "/proc/$1/stat"; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

# fio baseline: RW JOBS -> "MiB/s CPU-s/GiB" (the CPU figure is fio's own and not comparable with
# the servers': only the throughput goes in the table)
fio_base()
{
	fio --name=b --filename="$img" --rw="$1" --bs=1M --ioengine=psync --numjobs="$2" \
		--offset_increment=$((want / 2)) --size=$((want / 2)) --time_based --runtime="$time_s" \
		--invalidate=0 --group_reporting --output-format=json 2>/dev/null |
		python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
k = "read" if j["read"]["io_bytes"] else "write"
gib = j[k]["io_bytes"] / 2**30
cpu = (j["usr_cpu"] + j["sys_cpu"]) / 100 * j["job_runtime"] / 1000
print(round(j[k]["bw"] / 1024), "%.3f" % (cpu / gib if gib else 0))'
}

start_server()
{
	local sock=$W/$1.sock
	rm -f "$sock"
	case $1 in
	blockd)
		"$blockd" --object iothread,id=io0 \
			--blockdev "driver=file,node-name=f,filename=$img" \
			--blockdev driver=raw,node-name=r,file=f \
			--export "type=vhost-user-blk,id=v,node-name=r,addr.type=unix,addr.path=$sock,writable=on,iothreads.0=io0" \
			>"$W/srv.log" 2>&1 &
		;;
	qsd)
		qemu-storage-daemon --object iothread,id=io0 \
			--blockdev "driver=file,node-name=f,filename=$img,aio=io_uring" \
			--export "type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path=$sock,writable=on,iothread=io0" \
			>"$W/srv.log" 2>&1 &
		;;
	esac
	spid=$!
	for ((i = 0; i < 100; i++)); do [ -S "$sock" ] && return 0; sleep 0.05; done
	echo "$1 did not start: $(cat "$W/srv.log")" >&2
	exit 1
}

stop_server()
{
	kill "$spid" 2>/dev/null || true
	for ((i = 0; i < 30; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
	kill -KILL "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	spid=""
}

# run SERVER RW -> "MiB/s server-cpu-s/GiB client-cpu-s/GiB"
run()
{
	local out c0 c1 mib ppid=""
	start_server "$1"
	c0=$(cpu_s "$spid")
	if [ "$perf" = 1 ] && [ "$3" = 1 ]; then
		perf record -q -o "$W/$1-$2.data" -p "$spid" -- sleep "$time_s" >/dev/null 2>&1 &
		ppid=$!
	fi
	out=$( { /usr/bin/time -f "CLIENTCPU %U %S" "$client" "$W/$1.sock" bench --rw "$2" --bs 1M \
		--qd 8 --time "$time_s"; } 2>&1)
	c1=$(cpu_s "$spid")
	[ -z "$ppid" ] || wait "$ppid" 2>/dev/null || true
	stop_server
	mib=$(echo "$out" | sed -nE 's/.* ([0-9.]+) MiB\/s.*/\1/p')
	echo "$out" | awk -v m="$mib" -v s0="$c0" -v s1="$c1" -v t="$time_s" '
		/^CLIENTCPU/ {cl = $2 + $3}
		END {gib = m * t / 1024; printf "%s %.3f %.3f\n", m, (s1 - s0) / gib, cl / gib}'
}

declare -A res
for ((r = 0; r < repeat; r++)); do
	for rw in read write; do
		order="blockd qsd"
		[ $((r % 2)) = 1 ] && order="qsd blockd"
		for s in $order; do
			res["$s $rw"]+="$(run "$s" "$rw" $((r == 0)))"$'\n'
		done
		res["fio1 $rw"]+="$(fio_base "$rw" 1)"$'\n'
		res["fio2 $rw"]+="$(fio_base "$rw" 2)"$'\n'
	done
done
col() { printf '%s' "${res[$1]}" | awk -v f="$2" 'NF {print $f}' | median; }

{
	echo "| 1 MiB, qd 8, 1 queue (page cache) | read MiB/s | server CPU s/GiB | front end CPU s/GiB | write MiB/s | server CPU s/GiB | front end CPU s/GiB |"
	echo "|---|---|---|---|---|---|---|"
	for s in blockd qsd; do
		echo "| $s | $(col "$s read" 1) | $(col "$s read" 2) | $(col "$s read" 3) | $(col "$s write" 1) | $(col "$s write" 2) | $(col "$s write" 3) |"
	done
	echo "| fio psync on the image, 1 thread | $(col "fio1 read" 1) | | | $(col "fio1 write" 1) | | |"
	echo "| fio psync on the image, 2 threads | $(col "fio2 read" 1) | | | $(col "fio2 write" 1) | | |"
} | tee "${md:-/dev/null}"

if [ "$perf" = 1 ]; then
	echo
	echo "Share of the server's samples (first run):"
	for f in "$W"/*.data; do
		n=$(basename "$f" .data)
		perf report -i "$f" --no-children --sort sym 2>/dev/null | grep -v '^#' | grep '%' |
			awk -v n="$n" '
			{p = $1 + 0}
			/\[k\]/ {k += p}
			/\[k\] .*(copy_.*iter|rep_movs|memcpy|copy_user)/ {c += p; next}
			/\[k\] .*(filemap|xas_|shmem_|folio|generic_perform_write|page_cache)/ {pc += p}
			END {printf "  %-14s kernel %5.1f%%  copies %5.1f%%  page cache %5.1f%%  user %5.1f%%\n", n, k, c, pc, 100 - k}'
	done | tee -a "${md:-/dev/null}"
fi
