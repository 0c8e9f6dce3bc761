#!/bin/bash
# daemon-signals.sh: SIGTERM, SIGINT and SIGHUP each make blockd exit 0, also with an idle client
# connected and with I/O in flight; data written before the signal is in the image afterwards.
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo nbdcopy
bd_tmpdir

sock=$T/nbd.sock
uri="nbd+unix:///disk?socket=$sock"
img=$T/disk.img
truncate -s 16M "$img"
args=(--blockdev "driver=file,node-name=f0,filename=$img"
	--blockdev driver=raw,node-name=r0,file=f0
	--nbd-server "addr.type=unix,addr.path=$sock"
	--export type=nbd,id=e0,node-name=r0,name=disk,writable=on)

# stop_with SIG: like bd_stop, with another signal.
stop_with()
{
	local sig=$1 pid=$BD_PID
	kill "-$sig" "$pid"
	bd_wait_exit "$pid" "$BD_STOP_TIMEOUT" || fail "SIG$sig: blockd did not exit"
	_bd_forget_pid "$pid"
	assert_eq "$BD_STATUS" 0 "exit status after SIG$sig"
	echo "ok: SIG$sig -> exit 0"
}

for sig in TERM INT HUP; do
	bd_start "${args[@]}"
	nbdinfo --size "$uri" >/dev/null
	stop_with $sig
done

# An idle client stays connected while blockd is told to stop.
if command -v nbdsh >/dev/null 2>&1; then
	bd_start "${args[@]}"
	bd_spawn client nbdsh -u "$uri" -c 'import time; time.sleep(60)'
	client=$BD_SPAWN_PID
	sleep 1
	bd_stop
	bd_kill "$client"
	echo "ok: SIGTERM with an idle client connected"
else
	echo "nbdsh missing: idle-client case not run"
fi

# Data round trip, then SIGTERM while a copy is in flight.
bd_random_file "$T/data" 16384 # the whole 16 MiB image
bd_start "${args[@]}"
nbdcopy "$T/data" "$uri"
bd_stop
assert_file_eq "$T/data" "$img"

# SIGTERM with requests in flight (fio keeps 16 writes queued): still exit 0.
if command -v fio >/dev/null 2>&1 && fio --enghelp=nbd >/dev/null 2>&1; then
	bd_start "${args[@]}"
	bd_spawn fio fio --name=w --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k \
		--iodepth=16 --time_based --runtime=60
	load=$BD_SPAWN_PID
	sleep 2
	bd_alive "$load" || fail "fio stopped early: $(cat "$T/fio.log")"
	bd_stop
	bd_kill "$load"
	echo "ok: SIGTERM with I/O in flight"
else
	echo "fio with the nbd engine missing: in-flight case not run"
fi
echo "ok"
