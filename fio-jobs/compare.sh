#!/bin/bash
# compare.sh - benchmark blockd against qemu-storage-daemon, qemu-nbd and nbdkit (file plugin):
# the same raw image, exported in turn by each server on a unix socket, driven by the fio jobs of
# this directory through fio's nbd engine (libnbd).  Runs are interleaved (each repetition runs
# every job against every server, rotating the order) and the table shows medians.
#
# Usage: fio-jobs/compare.sh [options]
#   --runtime S       seconds per run, after the ramp (default 10)
#   --ramp S          ramp-up seconds, not measured (default 2)
#   --repeat N        repetitions; medians are reported (default 3)
#   --jobs LIST       comma-separated job names (default: every fio-jobs/*.fio)
#   --servers LIST    comma-separated, from blockd,qsd,qemu-nbd,nbdkit (default: all four)
#   --cache MODE      writeback (page cache, default) or none (O_DIRECT; nbdkit 1.32 has no
#                     O_DIRECT, so it stays on the page cache and is marked)
#   --iothread on|off blockd and qsd: run the export in an iothread object (default off: each
#                     server's default threading; qemu-storage-daemon 7.2 aborts when an NBD
#                     client of an iothread export disconnects, so "on" only works with newer QEMU)
#   --size SIZE       image size (default 1G); the image is filled with random data first
#   --dir DIR         where the image goes (default var/bench; not tmpfs if --cache none)
#   --blockd PATH     the blockd binary (default $BLOCKD, else build/blockd)
#   --markdown FILE   also write the results as markdown (for docs/benchmarks.md)
#   --keep            keep the image for the next run (it is reused if its size matches)
#   --ceiling         also run "ceiling": blockd exporting a null-co node (no storage at all), the
#                     most this fio client gets through any NBD server on this machine; it is not a
#                     peer, and its column shows how close each server comes to the client's limit
# Throughput is IOPS for 4k jobs and MiB/s for 1m jobs; "ratio" is blockd / the best peer (higher
# is better for blockd); CPU is the server's utime+stime (/proc/PID/stat) per I/O, in µs, measured
# over the same window as fio's numbers (after the ramp).  "fio CPU" is the client's user+system
# time as a share of one CPU (fio runs one thread): near 100 % the client, not the server, is the
# bound.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

runtime=10
ramp=2
repeat=3
jobs=""
servers="blockd,qsd,qemu-nbd,nbdkit"
cache=writeback
iothread=off
size=1G
dir=$root/var/bench
blockd=${BLOCKD:-}
if [ -z "$blockd" ]; then
	# Where meson put the daemon in build/ (the "blockd" executable target).
	blockd=$(meson introspect "$root/build" --targets 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["name"] == "blockd" and t["type"] == "executable":
        print(t["filename"][0])
        break' 2>/dev/null || true)
	[ -n "$blockd" ] || blockd=$root/build/blockd
fi
markdown=""
keep=0
ceiling=0

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
	--jobs) jobs=$2; shift ;;
	--servers) servers=$2; shift ;;
	--cache) cache=$2; shift ;;
	--iothread) iothread=$2; shift ;;
	--size) size=$2; shift ;;
	--dir) dir=$2; shift ;;
	--blockd) blockd=$2; shift ;;
	--markdown) markdown=$2; shift ;;
	--keep) keep=1 ;;
	--ceiling) ceiling=1 ;;
	-h | --help) usage 0 ;;
	*) echo "compare.sh: unknown option '$1'" >&2; usage 1 >&2 ;;
	esac
	shift
done

case $cache in
writeback) direct=off ;;
none) direct=on ;;
*) echo "compare.sh: --cache must be writeback or none" >&2; exit 1 ;;
esac
case $iothread in on | off) ;; *) echo "compare.sh: --iothread must be on or off" >&2; exit 1 ;; esac
[[ "$runtime$ramp$repeat" =~ ^[0-9]+$ ]] && [ "$repeat" -ge 1 ] && [ "$runtime" -ge 1 ] || {
	echo "compare.sh: --runtime, --ramp and --repeat take positive integers" >&2
	exit 1
}
for c in fio nbdinfo python3; do
	command -v $c >/dev/null || { echo "compare.sh: '$c' is needed" >&2; exit 1; }
done

if [ -z "$jobs" ]; then
	jobs=$(cd "$here" && ls ./*.fio | sed 's|^\./||; s|\.fio$||' | paste -sd, -)
fi
IFS=, read -r -a job_list <<<"$jobs"
IFS=, read -r -a server_list <<<"$servers"
[ "$ceiling" = 0 ] || server_list+=(ceiling)
for j in "${job_list[@]}"; do
	[ -f "$here/$j.fio" ] || { echo "compare.sh: no job file $here/$j.fio" >&2; exit 1; }
done

# Which servers can run here?
avail=()
for s in "${server_list[@]}"; do
	case $s in
	blockd | ceiling) bin=$blockd ;;
	qsd) bin=$(command -v qemu-storage-daemon || true) ;;
	qemu-nbd) bin=$(command -v qemu-nbd || true) ;;
	nbdkit) bin=$(command -v nbdkit || true) ;;
	*) echo "compare.sh: unknown server '$s'" >&2; exit 1 ;;
	esac
	if [ -n "$bin" ] && [ -x "$bin" ]; then
		avail+=("$s")
	else
		echo "compare.sh: skipping $s: ${bin:-its binary} not found" >&2
	fi
done
[ ${#avail[@]} -gt 0 ] || { echo "compare.sh: no server to run" >&2; exit 1; }

mkdir -p "$dir"
img=$dir/bench.img
work=$(mktemp -d /tmp/blockd-bench.XXXXXX)
spid=""
cleanup()
{
	if [ -n "$spid" ]; then
		kill -TERM "$spid" 2>/dev/null || true
		wait "$spid" 2>/dev/null || true
	fi
	rm -rf "$work"
	[ "$keep" = 1 ] || rm -f "$img" "$img.filled"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bytes=$(python3 -c "
import sys
s = sys.argv[1].strip().upper()
m = {'K': 1 << 10, 'M': 1 << 20, 'G': 1 << 30, 'T': 1 << 40}
print(int(float(s[:-1]) * m[s[-1]]) if s[-1] in m else int(s))" "$size")

# The image, fully written so that reads hit data (random bytes: no zero detection shortcuts).
if [ -f "$img" ] && [ -f "$img.filled" ] && [ "$(stat -c %s "$img")" = "$bytes" ]; then
	echo "compare.sh: reusing $img"
else
	echo "compare.sh: writing $size of random data to $img ..."
	rm -f "$img" "$img.filled"
	head -c "$bytes" /dev/urandom >"$img"
	sync "$img"
	touch "$img.filled"
fi

clk_tck=$(getconf CLK_TCK)
sock=$work/nbd.sock
uri="nbd+unix:///disk?socket=$sock"

cpu_ticks()
{
	# utime + stime of the whole process (all threads) in clock ticks
	local s
	s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
	s=${s##*) }
	# shellcheck disable=SC2086
	set -- $s
	echo $((${12} + ${13}))
}

version_of()
{
	case $1 in
	blockd) "$blockd" --version 2>/dev/null | head -1 || echo "blockd (version unknown)" ;;
	ceiling) echo "the same blockd, null-co node (read-zeroes=off: reads send data chunks)" ;;
	qsd) qemu-storage-daemon --version | head -1 ;;
	qemu-nbd) qemu-nbd --version | head -1 ;;
	nbdkit) nbdkit --version | head -1 ;;
	esac
}

start_server()
{
	local s=$1 ithr_obj=() ithr_opt=""
	if [ "$iothread" = on ]; then
		ithr_obj=(--object iothread,id=io0)
		ithr_opt=",iothread=io0"
	fi
	rm -f "$sock"
	case $s in
	blockd)
		"$blockd" "${ithr_obj[@]}" \
			--blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct" \
			--blockdev driver=raw,node-name=r,file=f \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=r,name=disk,writable=on$ithr_opt" \
			>"$work/server.log" 2>&1 &
		;;
	ceiling)
		"$blockd" "${ithr_obj[@]}" \
			--blockdev "driver=null-co,node-name=r,size=$bytes,read-zeroes=off" \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=r,name=disk,writable=on$ithr_opt" \
			>"$work/server.log" 2>&1 &
		;;
	qsd)
		qemu-storage-daemon "${ithr_obj[@]}" \
			--blockdev "driver=file,node-name=f,filename=$img,cache.direct=$direct,aio=io_uring" \
			--blockdev driver=raw,node-name=r,file=f \
			--nbd-server "addr.type=unix,addr.path=$sock" \
			--export "type=nbd,id=e,node-name=r,name=disk,writable=on$ithr_opt" \
			>"$work/server.log" 2>&1 &
		;;
	qemu-nbd)
		qemu-nbd -f raw -k "$sock" --cache="$cache" --aio=io_uring -x disk -t --shared=8 \
			"$img" >"$work/server.log" 2>&1 &
		;;
	nbdkit)
		# nbdkit 1.32's file plugin has no O_DIRECT: always the page cache.
		nbdkit -f -U "$sock" file "$img" >"$work/server.log" 2>&1 &
		;;
	esac
	spid=$!
	local n=200
	until nbdinfo --size "$uri" >/dev/null 2>&1; do
		if ! kill -0 "$spid" 2>/dev/null || ((n-- <= 0)); then
			echo "compare.sh: $s did not start:" >&2
			sed 's/^/    /' "$work/server.log" >&2
			stop_server
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
	while kill -0 "$spid" 2>/dev/null && ((n-- > 0)); do
		sleep 0.1
	done
	kill -KILL "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	spid=""
}

# run_one SERVER JOB: one fio run; appends "job server rep value ios cpu_ticks" to results.
results=$work/results.tsv
: >"$results"
run_one()
{
	local s=$1 j=$2 rep=$3 fpid c0 c1 out=$work/fio.json
	start_server "$s" || { printf '%s\t%s\t%s\tFAIL\t0\t0\t0\n' "$j" "$s" "$rep" >>"$results"; return 0; }
	sed -e "s/^runtime=.*/runtime=$runtime/" -e "s/^ramp_time=.*/ramp_time=$ramp/" \
		"$here/$j.fio" >"$work/job.fio"
	NBD_URI=$uri fio --output-format=json --output="$out" "$work/job.fio" \
		>"$work/fio.log" 2>&1 &
	fpid=$!
	sleep "$ramp"
	c0=$(cpu_ticks "$spid" || echo 0)
	local frc=0
	wait "$fpid" || frc=$?
	c1=$(cpu_ticks "$spid" || echo 0)
	if ! kill -0 "$spid" 2>/dev/null; then
		local src=0
		wait "$spid" 2>/dev/null || src=$?
		spid=""
		echo "compare.sh: $s died during $j (exit status $src):" >&2
		sed 's/^/    /' "$work/server.log" >&2
		printf '%s\t%s\t%s\tFAIL\t0\t0\t0\n' "$j" "$s" "$rep" >>"$results"
		return 0
	fi
	stop_server
	if [ "$frc" != 0 ]; then
		echo "compare.sh: fio $j against $s failed:" >&2
		sed 's/^/    /' "$work/fio.log" >&2
		printf '%s\t%s\t%s\tFAIL\t0\t0\t0\n' "$j" "$s" "$rep" >>"$results"
		return 0
	fi
	python3 - "$out" "$j" "$s" "$rep" "$((c1 - c0))" >>"$results" <<'PY'
import json, sys
out, job, server, rep, ticks = sys.argv[1:6]
d = json.load(open(out))
j = d["jobs"][0]
ios = j["read"]["total_ios"] + j["write"]["total_ios"]
if j["error"]:
    print(f"{job}\t{server}\t{rep}\tFAIL\t0\t0\t0")
    sys.exit(0)
if job.endswith("1m") or "-1m" in job:
    value = (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / (1 << 20)
else:
    value = j["read"]["iops"] + j["write"]["iops"]
fio_cpu = j["usr_cpu"] + j["sys_cpu"]
print(f"{job}\t{server}\t{rep}\t{value:.1f}\t{ios}\t{ticks}\t{fio_cpu:.0f}")
PY
	local last
	last=$(tail -n 1 "$results" | cut -f4)
	printf '  rep %s  %-18s %-9s %s\n' "$rep" "$j" "$s" "$last" >&2
}

echo "compare.sh: ${#job_list[@]} jobs x ${#avail[@]} servers x $repeat repetitions," \
	"$((runtime + ramp)) s each: about $(((runtime + ramp + 1) * ${#job_list[@]} * ${#avail[@]} * repeat / 60 + 1)) min" >&2
for ((rep = 1; rep <= repeat; rep++)); do
	for j in "${job_list[@]}"; do
		# rotate the server order each repetition, so that no server always runs first
		n=${#avail[@]}
		for ((k = 0; k < n; k++)); do
			s=${avail[$(((k + rep - 1) % n))]}
			run_one "$s" "$j" "$rep"
		done
	done
done

versions=$work/versions.txt
for s in "${avail[@]}"; do
	printf '%s\t%s\n' "$s" "$(version_of "$s")" >>"$versions"
done
fsinfo=$(df -T "$dir" | awk 'NR == 2 { print $2 }')
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')

python3 - "$results" "$versions" "$clk_tck" "$markdown" <<PY
import statistics, sys
results, versions, clk, mdfile = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
servers = """${avail[*]}""".split()
jobs = """${job_list[*]}""".split()
vals, cpus, fcpus = {}, {}, {}
for line in open(results):
    job, server, rep, value, ios, ticks, fio_cpu = line.rstrip("\n").split("\t")
    if value == "FAIL":
        continue
    fcpus.setdefault((job, server), []).append(float(fio_cpu))
    vals.setdefault((job, server), []).append(float(value))
    if int(ios) > 0:
        cpus.setdefault((job, server), []).append(int(ticks) * 1e6 / clk / int(ios))

def med(d, k):
    return statistics.median(d[k]) if k in d else None

def fmt(v, job):
    if v is None:
        return "fail"
    return f"{v:.0f}" if not job.endswith("1m") else f"{v:.1f}"

head = ["job", "unit"] + servers
peers = [s for s in servers if s not in ("blockd", "ceiling")]
if "${cache}" == "none":
    # nbdkit would read and write the page cache: not a fair peer for O_DIRECT numbers.
    peers = [s for s in peers if s != "nbdkit"]
if "blockd" in servers and peers:
    head.append("blockd/best peer")
if "blockd" in servers and "ceiling" in servers:
    head.append("blockd/ceiling")
head += [f"CPU µs/IO {s}" for s in servers]
head += [f"fio CPU % {s}" for s in servers]
rows = []
for job in jobs:
    unit = "MiB/s" if job.endswith("1m") else "IOPS"
    row = [job, unit] + [fmt(med(vals, (job, s)), job) for s in servers]
    if "blockd" in servers and peers:
        b = med(vals, (job, "blockd"))
        best = max([v for v in (med(vals, (job, p)) for p in peers) if v is not None], default=None)
        row.append(f"{b / best:.2f}" if b and best else "-")
    if "blockd" in servers and "ceiling" in servers:
        b, c = med(vals, (job, "blockd")), med(vals, (job, "ceiling"))
        row.append(f"{b / c:.2f}" if b and c else "-")
    for s in servers:
        c = med(cpus, (job, s))
        row.append(f"{c:.1f}" if c is not None else "-")
    for s in servers:
        c = med(fcpus, (job, s))
        row.append(f"{c:.0f}" if c is not None else "-")
    rows.append(row)

w = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
print()
print("  ".join(h.ljust(w[i]) for i, h in enumerate(head)))
for r in rows:
    print("  ".join(c.rjust(w[i]) if i > 1 else c.ljust(w[i]) for i, c in enumerate(r)))

md = []
md.append("| " + " | ".join(head) + " |")
md.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
for r in rows:
    md.append("| " + " | ".join(r) + " |")
md.append("")
md.append("Settings: cache=${cache} (blockd/qsd cache.direct=${direct}; qemu-nbd --cache=${cache}"
          + (", nbdkit: page cache, its file plugin has no O_DIRECT, so it is left out of the ratio"
             if "${cache}" == "none" else "")
          + "), iothread=${iothread} (blockd, qsd), aio=io_uring (qsd, qemu-nbd), "
          + "image ${size} raw on ${fsinfo}, unix sockets, fio nbd engine, "
          + f"runtime ${runtime} s after a ${ramp} s ramp, median of ${repeat}.")
md.append("Machine: ${cpu}, $(nproc) CPUs, Linux $(uname -r).")
md.append("Versions: " + "; ".join(l.rstrip("\n").split("\t", 1)[1] for l in open(versions)) + ".")
text = "\n".join(md)
print()
print(text)
if mdfile:
    with open(mdfile, "w") as f:
        f.write(text + "\n")
PY
