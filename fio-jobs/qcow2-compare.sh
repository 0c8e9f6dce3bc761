#!/bin/bash
# qcow2-compare.sh - qcow2 on blockd against the same qcow2 image on qemu-storage-daemon (both
# NBD exports on a unix socket, fio's nbd engine), and against raw on blockd:
#   - 4k random reads (QD1 and QD32) on a fully allocated qcow2 image (converted from a raw image
#     of random bytes); blockd's raw export of that raw image is the reference (target: qcow2
#     within 10% of raw);
#   - 4k random writes (QD1 and QD32) into unallocated clusters: a fresh, empty qcow2 image for
#     every run, with a large virtual size so that nearly every write allocates a cluster
#     (target: blockd >= 1.3x qemu-storage-daemon).
# Runs are interleaved (for each job every server in turn, the order rotating per repetition).
#
# Usage: fio-jobs/qcow2-compare.sh [options]
#   --runtime S     seconds per run, after the ramp (default 10)
#   --ramp S        ramp-up seconds, not measured (default 2)
#   --repeat N      repetitions, medians reported (default 1)
#   --size SIZE     the allocated image (default 1G)
#   --wsize SIZE    virtual size of the write images (default 64G; sparse)
#   --cache MODE    writeback (default) or none (cache.direct=on for both servers)
#   --dir DIR       where the images go (default var/bench)
#   --blockd PATH   the daemon (default $BLOCKD, else build/blockd)
#   --markdown FILE also write the table as markdown
#   --jobs LIST     space-separated jobs to run (default: all four; e.g. "randwrite-4k-qd1 randwrite-4k-qd32")
#   --fsync N       a flush (NBD_CMD_FLUSH) after every N writes (fio's fsync=N; default none)
#   --blockd-opts S more qcow2 options for blockd's node, e.g. ",l2-writeback=off" (default none)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
runtime=10 ramp=2 repeat=1 size=1G wsize=64G cache=writeback dir=$root/var/bench
blockd=${BLOCKD:-$root/build/blockd} markdown="" fsync=0 bopts=""
jobs="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd1 randwrite-4k-qd32"
usage()
{
	sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
	exit "${1:-0}"
}
while [ $# -gt 0 ]; do
	case $1 in
	--runtime) runtime=$2; shift ;;
	--ramp) ramp=$2; shift ;;
	--repeat) repeat=$2; shift ;;
	--size) size=$2; shift ;;
	--wsize) wsize=$2; shift ;;
	--cache) cache=$2; shift ;;
	--dir) dir=$2; shift ;;
	--blockd) blockd=$2; shift ;;
	--markdown) markdown=$2; shift ;;
	--jobs) jobs=$2; shift ;;
	--fsync) fsync=$2; shift ;;
	--blockd-opts) bopts=$2; shift ;;
	-h | --help) usage 0 ;;
	*) echo "qcow2-compare.sh: unknown option '$1'" >&2; usage 1 >&2 ;;
	esac
	shift
done
case $cache in writeback) direct=off ;; none) direct=on ;; *) usage 1 >&2 ;; esac
for c in fio nbdinfo qemu-img qemu-storage-daemon python3; do
	command -v $c >/dev/null || { echo "qcow2-compare.sh: '$c' is needed" >&2; exit 1; }
done
[ -x "$blockd" ] || { echo "qcow2-compare.sh: no blockd at $blockd (--blockd)" >&2; exit 1; }

mkdir -p "$dir"
raw=$dir/q2bench.raw
alloc=$dir/q2bench-alloc.qcow2
empty=$dir/q2bench-empty.qcow2
work=$(mktemp -d /tmp/blockd-q2bench.XXXXXX)
sock=$work/nbd.sock
uri="nbd+unix:///disk?socket=$sock"
spid=""
cleanup()
{
	[ -z "$spid" ] || { kill -TERM "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }
	rm -rf "$work" "$raw" "$alloc" "$empty"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "qcow2-compare.sh: preparing a $size raw image of random bytes and its qcow2 copy ..." >&2
qemu-img create -q -f raw "$raw" "$size"
bytes=$(stat -c %s "$raw")
head -c "$bytes" /dev/urandom | dd of="$raw" conv=notrunc bs=1M status=none iflag=fullblock
qemu-img convert -O qcow2 "$raw" "$alloc"
sync

# start_server NAME IMAGE FORMAT
start_server()
{
	local s=$1 img=$2 fmt=$3 extra=""
	[ "$fmt" != qcow2 ] || extra=$bopts
	rm -f "$sock"
	case $s in
	blockd*)
		"$blockd" --blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct" \
			--blockdev "driver=$fmt,node-name=r,file=f$extra" \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=r,name=disk,writable=on" \
			>"$work/server.log" 2>&1 &
		;;
	qsd*)
		qemu-storage-daemon \
			--blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct,aio=io_uring" \
			--blockdev "driver=$fmt,node-name=r,file=f" \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=r,name=disk,writable=on" \
			>"$work/server.log" 2>&1 &
		;;
	esac
	spid=$!
	local n=200
	until nbdinfo --size "$uri" >/dev/null 2>&1; do
		if ! kill -0 "$spid" 2>/dev/null || ((n-- <= 0)); then
			echo "qcow2-compare.sh: $s did not start:" >&2
			sed 's/^/    /' "$work/server.log" >&2
			return 1
		fi
		sleep 0.05
	done
}

stop_server()
{
	[ -n "$spid" ] || return 0
	kill -TERM "$spid" 2>/dev/null || true
	local n=100
	while kill -0 "$spid" 2>/dev/null && ((n-- > 0)); do sleep 0.1; done
	kill -KILL "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	spid=""
}

results=$work/results.tsv
: >"$results"
# run_one CASE JOB REP: CASE is server:image-kind (blockd:raw, blockd:alloc, qsd:alloc,
# blockd:empty, qsd:empty)
run_one()
{
	local case=$1 j=$2 rep=$3 s=${1%%:*} kind=${1#*:} img fmt=qcow2 out=$work/fio.json
	case $kind in
	raw) img=$raw fmt=raw ;;
	alloc) img=$alloc ;;
	empty)
		img=$empty
		rm -f "$empty"
		qemu-img create -q -f qcow2 "$empty" "$wsize"
		;;
	esac
	if ! start_server "$s" "$img" "$fmt"; then
		stop_server
		printf '%s\t%s\t%s\tFAIL\n' "$j" "$case" "$rep" >>"$results"
		return 0
	fi
	sed -e "s/^runtime=.*/runtime=$runtime/" -e "s/^ramp_time=.*/ramp_time=$ramp/" \
		-e "s/^\[global\]$/[global]\nfsync=$fsync/" "$here/$j.fio" >"$work/job.fio"
	local frc=0
	NBD_URI=$uri fio --output-format=json --output="$out" "$work/job.fio" >"$work/fio.log" 2>&1 ||
		frc=$?
	stop_server
	if [ "$frc" != 0 ]; then
		sed 's/^/    /' "$work/fio.log" >&2
		printf '%s\t%s\t%s\tFAIL\n' "$j" "$case" "$rep" >>"$results"
		return 0
	fi
	if [ "$kind" = empty ]; then
		qemu-img check -q "$empty" || echo "qcow2-compare.sh: $s left $empty not clean" >&2
	fi
	python3 - "$out" "$j" "$case" "$rep" >>"$results" <<'PY'
import json, sys
out, job, case, rep = sys.argv[1:5]
j = json.load(open(out))["jobs"][0]
v = j["read"]["iops"] + j["write"]["iops"]
print(f"{job}\t{case}\t{rep}\t{'FAIL' if j['error'] else '%.0f' % v}")
PY
	printf '  rep %s  %-18s %-13s %s\n' "$rep" "$j" "$case" "$(tail -n 1 "$results" | cut -f4)" >&2
}

declare -A cases=(
	[randread-4k-qd1]="blockd:raw blockd:alloc qsd:alloc"
	[randread-4k-qd32]="blockd:raw blockd:alloc qsd:alloc"
	[randwrite-4k-qd1]="blockd:empty qsd:empty"
	[randwrite-4k-qd32]="blockd:empty qsd:empty"
)
for ((rep = 1; rep <= repeat; rep++)); do
	for j in $jobs; do
		read -r -a cl <<<"${cases[$j]}"
		n=${#cl[@]}
		for ((k = 0; k < n; k++)); do
			run_one "${cl[$(((k + rep - 1) % n))]}" "$j" "$rep"
		done
	done
done

python3 - "$results" "$markdown" "$size" "$wsize" "$cache" "$runtime" "$repeat" \
	"$(qemu-storage-daemon --version | head -1)" <<'PY'
import statistics, sys
results, mdfile, size, wsize, cache, runtime, repeat, qsdv = sys.argv[1:9]
vals = {}
ran = set()
for line in open(results):
    job, case, rep, v = line.rstrip("\n").split("\t")
    ran.add(job)
    if v != "FAIL":
        vals.setdefault((job, case), []).append(float(v))
def m(job, case):
    return statistics.median(vals[(job, case)]) if (job, case) in vals else None
def f(v):
    return "FAIL" if v is None else "%.0f" % v
def r(a, b):
    return "-" if a is None or b is None or not b else "%.2f" % (a / b)
rows = [("job", "blockd raw", "blockd qcow2", "qsd qcow2", "qcow2/raw (blockd)", "blockd/qsd (qcow2)")]
for job in ("randread-4k-qd1", "randread-4k-qd32"):
    if job not in ran:
        continue  # not run (--jobs)
    a, b, c = m(job, "blockd:raw"), m(job, "blockd:alloc"), m(job, "qsd:alloc")
    rows.append((job + " (allocated)", f(a), f(b), f(c), r(b, a), r(b, c)))
for job in ("randwrite-4k-qd1", "randwrite-4k-qd32"):
    if job not in ran:
        continue
    b, c = m(job, "blockd:empty"), m(job, "qsd:empty")
    rows.append((job + " (unallocated)", "-", f(b), f(c), "-", r(b, c)))
w = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
for x in rows:
    print("  ".join(x[i].ljust(w[i]) for i in range(len(x))))
print(f"IOPS, median of {repeat} run(s) of {runtime} s; allocated image {size}, write images "
      f"{wsize} virtual; cache={cache}; {qsdv}")
if mdfile:
    with open(mdfile, "w") as o:
        o.write("| " + " | ".join(rows[0]) + " |\n|" + "---|" * len(rows[0]) + "\n")
        for x in rows[1:]:
            o.write("| " + " | ".join(x) + " |\n")
PY
