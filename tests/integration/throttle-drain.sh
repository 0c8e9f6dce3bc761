#!/bin/bash
# throttle-drain.sh: requests a throttle group holds back do not hold up a shutdown.  QEMU lifts a
# throttle node's limits while the node is drained; blockd does the same (drain_begin hook), so
# SIGTERM with 32 requests queued behind iops-total=2 exits in well under the 16 s the bucket
# alone would take, and every request the client sent is answered.
# meson-timeout: 60
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

bd_tmpdir
bd_start --object throttle-group,id=tg,x-iops-total=2 \
	--blockdev driver=null-co,node-name=n,size=1073741824,read-zeroes=off \
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=t,name=t,writable=on
URI=$(bd_nbd_unix_uri "$T/s" t)

fio --name=j --ioengine=nbd --uri="$URI" --size=1G --rw=randread --bs=4k --iodepth=32 \
	--runtime=30 --time_based >"$T/fio.log" 2>&1 &
fio_pid=$!
sleep 2 # fio has filled its queue: about 28 requests wait in the bucket

start=$(date +%s%N)
bd_stop
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
wait "$fio_pid" || true
echo "shutdown with a full throttle queue took ${elapsed_ms} ms"
[ "$elapsed_ms" -lt 5000 ] || fail "shutdown waited ${elapsed_ms} ms for the throttle bucket"
echo ok
