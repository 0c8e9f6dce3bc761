#!/bin/bash
# gluster-compare.sh - blockd's gluster driver against fio's own gfapi engine, on the same file of
# the same GlusterFS volume: fio with ioengine=gfapi_async on the file ("direct") versus fio with
# ioengine=nbd through blockd's NBD export of a gluster node on that file ("blockd").  Jobs: 4k
# random read and write at queue depth 32, 1 MiB sequential read and write at queue depth 8.
# Runs alternate between the two (the order flips every repetition); the table shows medians
# and the ratio blockd/direct.
#
# Usage: fio-jobs/gluster-compare.sh [options]
#   --start-server  start a private glusterd and a 1-brick volume in a temporary directory
#                   (root; takes /tmp/blockd-test-gluster.lock; the host name must resolve to
#                   127.0.0.1); else use an existing volume:
#   --volume NAME   the volume (default gv0)       --host HOST  its server (default 127.0.0.1)
#   --time S        seconds per run (default 5)     --repeat N   repetitions (default 3)
#   --size SIZE     test file size (default 512M), filled with random data once per run
#   --timeout S     the gluster node's timeout option (default 30; 0 = no timer, no read bounce)
#   --build DIR     the build directory with blockd and blockctl (default build)
#   --markdown FILE also write the table as markdown
#   --profile DIR   perf record -g blockd during its runs (DIR/perf-JOB-repN.data) and fio in the
#                   direct runs (DIR/perf-direct-JOB-repN.data; fio's CPU figure then includes
#                   perf's); read them with perf report --no-children -i FILE
# Besides the throughput table, a second table gives the CPU time per I/O (median, µs): fio's
# process (user+system) in both modes and blockd's in the blockd mode (from /proc/PID/stat over the
# run, ramp included, so divide by all I/Os done then): the cost the shared CPUs pay per request.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
time_s=5 repeat=3 size=512M build=$root/build md="" vol=gv0 host=127.0.0.1 start=0 tmo=30 prof=""
while [ $# -gt 0 ]; do
	case $1 in
	--start-server) start=1; shift ;;
	--volume) vol=$2; shift 2 ;;
	--host) host=$2; shift 2 ;;
	--time) time_s=$2; shift 2 ;;
	--repeat) repeat=$2; shift 2 ;;
	--size) size=$2; shift 2 ;;
	--timeout) tmo=$2; shift 2 ;;
	--build) build=$2; shift 2 ;;
	--markdown) md=$2; shift 2 ;;
	--profile) prof=$2; shift 2 ;;
	*) echo "unknown option $1" >&2; exit 2 ;;
	esac
done
blockd=$build/blockd
blockctl=$build/blockctl
[ -x "$blockd" ] && [ -x "$blockctl" ] || { echo "build blockd first (--build DIR)" >&2; exit 1; }
fio --enghelp 2>/dev/null | grep -qw gfapi_async || { echo "fio has no gfapi_async engine" >&2; exit 1; }
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "fio has no nbd engine" >&2; exit 1; }

W=$(mktemp -d /tmp/gluster-compare.XXXXXX)
pids=()
GD=""
cleanup()
{
	set +e
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	sleep 0.5
	if [ -n "$GD" ]; then
		bp=$(cat /var/run/gluster/vols/"$vol"/*.pid 2>/dev/null)
		gluster --mode=script volume stop "$vol" force >/dev/null 2>&1
		gluster --mode=script volume delete "$vol" >/dev/null 2>&1
		for p in $bp; do kill "$p" 2>/dev/null; done
		kill "$GD" 2>/dev/null
		sleep 1
	fi
	rm -rf "$W"
}
trap cleanup EXIT

if [ "$start" = 1 ]; then
	exec {lockfd}>/tmp/blockd-test-gluster.lock
	flock -w 300 "$lockfd" || { echo "another gluster user holds the lock" >&2; exit 1; }
	vol=gvbench host=127.0.0.1
	G=$W/gluster
	mkdir -p "$G"/{lib,log,bricks/b}
	cp -a /var/lib/glusterd/hooks /var/lib/glusterd/groups "$G/lib/" 2>/dev/null || true
	cat >"$G/glusterd.vol" <<-VOL
		volume management
		    type mgmt/glusterd
		    option working-directory $G/lib
		    option transport-type socket
		    option transport.address-family inet
		    option transport.socket.bind-address 127.0.0.1
		    option transport.socket.listen-port 24007
		    option ping-timeout 0
		    option event-threads 1
		    option base-port 49152
		    option max-port 49251
		end-volume
	VOL
	glusterd -f "$G/glusterd.vol" -p "$G/glusterd.pid" -l "$G/log/glusterd.log" {lockfd}>&-
	GD=$(cat "$G/glusterd.pid")
	for i in $(seq 100); do gluster --mode=script pool list >/dev/null 2>&1 && break; sleep 0.2; done
	gluster --mode=script volume create "$vol" "$(hostname):$G/bricks/b" force >/dev/null
	gluster --mode=script volume start "$vol" >/dev/null
	for i in $(seq 100); do
		gluster --mode=script volume status "$vol" --xml 2>/dev/null | grep -q "<status>1</status>" && break
		sleep 0.2
	done
fi

# blockd with a gluster node on /bench.img (created here) exported over NBD
sock=$W/s
"$blockd" --control "$W/c.sock" --nbd-server "addr.type=unix,addr.path=$sock" >"$W/blockd.log" 2>&1 &
pids+=($!)
bdpid=$!
[ -z "$prof" ] || mkdir -p "$prof"
for i in $(seq 100); do [ -S "$W/c.sock" ] && [ -S "$sock" ] && break; sleep 0.1; done
bc() { "$blockctl" --socket "$W/c.sock" "$@"; }
bytes=$(numfmt --from=iec "$size")
srv="[{\"type\":\"inet\",\"host\":\"$host\"}]"
bc qmp blockdev-create "{\"job-id\":\"c\",\"options\":{\"driver\":\"gluster\",\"location\":{\"volume\":\"$vol\",\"path\":\"/bench.img\",\"server\":$srv},\"size\":$bytes}}" >/dev/null
for i in $(seq 300); do [[ "$(bc qmp query-jobs)" == *concluded* ]] && break; sleep 0.1; done
bc qmp job-dismiss '{"id":"c"}' >/dev/null
bc node-add "driver=gluster,node-name=g,filename=gluster://$host/$vol/bench.img,timeout=$tmo,logfile=$W/gfapi.log" >/dev/null
bc export-add type=nbd,id=e,node-name=g,name=g,writable=on >/dev/null
uri="nbd+unix:///g?socket=$sock"
echo "filling /bench.img ($size) with random data..." >&2
head -c "$bytes" /dev/urandom >"$W/fill"
nbdcopy --flush "$W/fill" "$uri"
rm -f "$W/fill"

jobs=(randread-4k-qd32 randwrite-4k-qd32 seqread-1m-qd8 seqwrite-1m-qd8)
job_args()
{
	case $1 in
	randread-4k-qd32) echo "--rw=randread --bs=4k --iodepth=32" ;;
	randwrite-4k-qd32) echo "--rw=randwrite --bs=4k --iodepth=32" ;;
	seqread-1m-qd8) echo "--rw=read --bs=1M --iodepth=8" ;;
	seqwrite-1m-qd8) echo "--rw=write --bs=1M --iodepth=8" ;;
	esac
}

# run ENGINE JOB REP -> prints "iops MiB/s fio-µs/io blockd-µs/io"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
run()
{
	local eng=$1 job=$2 rep=$3 out=$W/fio.json b0 b1 pp=""
	local common=(--name="$job" --thread=1 --time_based=1 --runtime="$time_s" --ramp_time=1 --numjobs=1
		--norandommap=1 --randrepeat=0 --size="$bytes" --output-format=json --output="$out")
	b0=$(ticks "$bdpid")
	if [ -n "$prof" ] && [ "$eng" = blockd ]; then
		perf record -q -g -p "$bdpid" -o "$prof/perf-$job-rep$rep.data" -- sleep "$time_s" >/dev/null 2>&1 &
		pp=$!
	fi
	# shellcheck disable=SC2046
	local pre=()
	[ -z "$prof" ] || [ "$eng" != direct ] || pre=(perf record -q -g -o "$prof/perf-direct-$job-rep$rep.data" --)
	if [ "$eng" = direct ]; then
		/usr/bin/time -f "%U %S" -o "$W/time" "${pre[@]}" fio "${common[@]}" $(job_args "$job") \
			--ioengine=gfapi_async --volume="$vol" --brick="$host" --filename=bench.img \
			>/dev/null 2>"$W/fio.err"
	else
		/usr/bin/time -f "%U %S" -o "$W/time" fio "${common[@]}" $(job_args "$job") \
			--ioengine=nbd --uri="$uri" >/dev/null 2>"$W/fio.err"
	fi
	[ -z "$pp" ] || wait "$pp" || true
	b1=$(ticks "$bdpid")
	python3 -c '
import json, os, sys
t = open(sys.argv[1]).read()  # with --thread the nbd engine prints a line before the JSON
j = json.loads(t[t.index("{"):])["jobs"][0]
io = j["read"] if j["read"]["io_bytes"] else j["write"]
t = float(sys.argv[2])
ios = io["iops"] * (t + 1)  # the ramp second too: CPU is counted over the whole run
u, s = open(sys.argv[3]).read().split()[-2:]
hz = os.sysconf("SC_CLK_TCK")
bd = (int(sys.argv[5]) - int(sys.argv[4])) / hz if sys.argv[6] == "blockd" else 0
print("%.0f %.1f %.1f %.1f" % (io["iops"], io["bw_bytes"] / 1048576, (float(u) + float(s)) * 1e6 / ios,
      bd * 1e6 / ios))' "$out" "$time_s" "$W/time" "$b0" "$b1" "$eng"
}

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A res
for ((r = 0; r < repeat; r++)); do
	order=(direct blockd)
	((r % 2)) && order=(blockd direct)
	for job in "${jobs[@]}"; do
		for eng in "${order[@]}"; do
			v=$(run "$eng" "$job" "$r")
			res[$eng.$job]+="$v"$'\n'
			echo "rep $((r + 1)) $job $eng: $v" >&2
		done
	done
done

table=$(
	echo "| job | direct (fio gfapi_async) | blockd (fio nbd → gluster node) | ratio |"
	echo "|---|---|---|---|"
	for job in "${jobs[@]}"; do
		col=1 unit=IOPS
		[[ $job == seq* ]] && col=2 unit=MiB/s
		d=$(printf '%s' "${res[direct.$job]}" | awk -v c=$col 'NF {print $c}' | median)
		b=$(printf '%s' "${res[blockd.$job]}" | awk -v c=$col 'NF {print $c}' | median)
		ratio=$(awk -v b="$b" -v d="$d" 'BEGIN {printf "%.2f", (d > 0 ? b / d : 0)}')
		echo "| $job | $d $unit | $b $unit | ${ratio}x |"
	done
)
cpu=$(
	echo "| job | CPU µs/IO: fio direct | fio nbd client | blockd | nbd client + blockd vs direct |"
	echo "|---|---|---|---|---|"
	for job in "${jobs[@]}"; do
		fd=$(printf '%s' "${res[direct.$job]}" | awk 'NF {print $3}' | median)
		fn=$(printf '%s' "${res[blockd.$job]}" | awk 'NF {print $3}' | median)
		bd=$(printf '%s' "${res[blockd.$job]}" | awk 'NF {print $4}' | median)
		ratio=$(awk -v a="$fn" -v b="$bd" -v d="$fd" 'BEGIN {printf "%.2f", (d > 0 ? (a + b) / d : 0)}')
		echo "| $job | $fd | $fn | $bd | ${ratio}x |"
	done
)
echo "$table"
echo
echo "$cpu"
[ -z "$md" ] || printf '%s\n\n%s\n' "$table" "$cpu" >"$md"
