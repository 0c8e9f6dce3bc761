#!/bin/bash
# run-default.sh - install dependencies, build, and run blockd in the foreground on the embedded
# default configuration: var/pools/default/demo.img (1 GiB sparse raw, a volume of the autostarted
# "default" dir pool, created if missing) exported over NBD
# as "default" on 127.0.0.1:10809 and on the unix socket var/nbd.sock.  Ctrl-C stops it.
#
# Usage: ./scripts/run-default.sh [EXTRA BLOCKD ARGS...]
# Environment: BUILD_DIR (default build), BLOCKD_PORT (default 10809), BLOCKD_IMAGE (default
# var/pools/default/demo.img), BLOCKD_IMAGE_SIZE (default 1G, only used when creating the image),
# BD_SKIP_DEPS=1 (don't run setup-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

./scripts/setup-deps.sh

B=${BUILD_DIR:-build}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if [ ! -f "$B/build.ninja" ]; then
	if ! meson setup "$B" >"$log" 2>&1; then
		cat "$log" >&2
		echo "run-default: meson setup failed" >&2
		exit 1
	fi
fi
if ! ninja -C "$B" >"$log" 2>&1; then
	cat "$log" >&2
	echo "run-default: build failed" >&2
	exit 1
fi
rm -f "$log"
trap - EXIT
# Where meson put the daemon (the "blockd" executable target).
blockd=$(meson introspect "$B" --targets 2>/dev/null | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["name"] == "blockd" and t["type"] == "executable":
        print(t["filename"][0])
        break' 2>/dev/null || true)
[ -n "$blockd" ] || blockd=$B/blockd
[ -x "$blockd" ] || { echo "run-default: no blockd binary in $B" >&2; exit 1; }

port=${BLOCKD_PORT:-10809}
img=${BLOCKD_IMAGE:-var/pools/default/demo.img}
mkdir -p var "$(dirname "$img")"
case $img in /*) ;; *) img=$root/$img ;; esac
sock=$root/var/nbd.sock
img_opt=${img//,/,,} # commas are doubled in the key=value syntax
pidfile=$root/var/blockd.pid

if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null &&
	grep -q blockd "/proc/$(cat "$pidfile")/cmdline" 2>/dev/null; then
	echo "run-default: blockd is already running (pid $(cat "$pidfile"), $pidfile)" >&2
	exit 1
fi
rm -f "$pidfile" "$sock"
if [ ! -e "$img" ]; then
	truncate -s "${BLOCKD_IMAGE_SIZE:-1G}" "$img"
	echo "run-default: created $img (${BLOCKD_IMAGE_SIZE:-1G}, sparse raw)"
fi

pid=""
on_signal()
{
	# Ctrl-C reaches blockd directly too (same process group); SIGTERM makes sure.
	[ -z "$pid" ] || kill -TERM "$pid" 2>/dev/null || true
}
trap on_signal INT TERM HUP

# start ARGS...: run blockd in the background; 0 once it wrote its pidfile (= ready), 1 if it
# exited first (its messages are on our stderr).
start()
{
	rm -f "$pidfile"
	"$blockd" "$@" --pidfile "$pidfile" &
	pid=$!
	for _ in $(seq 600); do
		[ -s "$pidfile" ] && return 0
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	wait "$pid" 2>/dev/null || true
	pid=""
	return 1
}

common=(--blockdev "driver=file,node-name=default-file,filename=$img_opt"
	--blockdev driver=raw,node-name=default,file=default-file)
tcp=(--nbd-server "addr.type=inet,addr.host=127.0.0.1,addr.port=$port")
unix=(--nbd-server "addr.type=unix,addr.path=$sock")
export_opt=(--export type=nbd,id=default,node-name=default,name=default,writable=on)

# pools (begin): the state directory ./var keeps storage pool definitions; on first run it
# gets the "default" dir pool (./var/pools/default, autostarted).  Manage pools with
#   blockctl --socket var/control.sock pool-list --all   (vol-list default, vol-create-as ...)
if [ ! -e var/pools/default.xml ]; then
	mkdir -p var/pools/autostart var/pools/default
	printf "<pool type='dir'>\n  <name>default</name>\n  <target>\n    <path>%s</path>\n  </target>\n</pool>\n" \
		"$root/var/pools/default" >var/pools/.default.xml.tmp
	mv var/pools/.default.xml.tmp var/pools/default.xml
	echo default >var/pools/autostart/default
fi
common+=(--state-dir "$root/var" --control "$root/var/control.sock")
# pools (end)

# --nbd-server twice: one listener on TCP, one on the unix socket, the same export on both.
start "${common[@]}" "${tcp[@]}" "${unix[@]}" "${export_opt[@]}" "$@" || {
	echo "run-default: blockd failed to start" >&2
	exit 1
}


portarg=""
[ "$port" = 10809 ] || portarg=":$port"
echo
echo "blockd is running (pid $pid): $img is the NBD export \"default\" on"
echo "  nbd://127.0.0.1:$port/default"
echo "  nbd+unix:///default?socket=$sock"
echo "Connect with, for example:"
echo "  nbdinfo nbd://127.0.0.1$portarg/default"
echo "  qemu-img info nbd://127.0.0.1:$port/default"
echo "  nbdinfo 'nbd+unix:///default?socket=$sock'"
echo "  fio --name=randread --ioengine=nbd --uri=nbd://127.0.0.1:$port/default --rw=randread --bs=4k --iodepth=32 --runtime=10 --time_based"
echo "Press Ctrl-C to stop it."
echo

# Wait for blockd to exit (a trapped signal interrupts wait: keep waiting).
rc=0
while :; do
	rc=0
	wait "$pid" || rc=$?
	kill -0 "$pid" 2>/dev/null || break
done
echo "run-default: blockd exited with status $rc"
exit $rc
