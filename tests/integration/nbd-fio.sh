#!/bin/bash
# nbd-fio.sh - fio's nbd engine (libnbd) against the NBD export: random writes then reads with
# crc32c verification at queue depth 32, and 4 jobs (4 connections) writing and verifying
# disjoint areas at once.
# meson-timeout: 240
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need fio truncate
fio --enghelp=nbd >/dev/null 2>&1 || skip "fio has no nbd engine"

bd_tmpdir
img=$T/disk.raw
truncate -s 256M "$img"
sock=$T/nbd.sock
bd_start --object iothread,id=io0 \
	--blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=r,name=disk,writable=on \
	--export type=nbd,id=e1,node-name=r,name=pinned,writable=on,iothread=io0
uri=$(bd_nbd_unix_uri "$sock" disk)

run_fio()
{
	local out
	# no verify state files in the working directory
	out=$(fio --output-format=terse --minimal --verify_state_save=0 "$@" 2>&1) ||
		fail "fio $*: $out"
	if grep -qiE 'verify|bad|error' <<<"$(grep -v '^3;' <<<"$out")"; then
		fail "fio $*: $out"
	fi
}

run_fio --name=v1 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=32 \
	--size=64M --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=1
run_fio --name=v2 --ioengine=nbd --uri="$uri" --rw=randrw --bsrange=512-128k --iodepth=16 \
	--size=32M --offset=64M --verify=crc32c --verify_fatal=1 --randrepeat=1
# 4 connections at once, each on its own 32M slice
run_fio --name=mc --ioengine=nbd --uri="$uri" --rw=write --bs=64k --iodepth=8 --numjobs=4 \
	--size=32M --offset_increment=32M --offset=128M --verify=crc32c --verify_fatal=1
# the export pinned to an iothread
run_fio --name=pin --ioengine=nbd --uri="$(bd_nbd_unix_uri "$sock" pinned)" --rw=randwrite \
	--bs=16k --iodepth=32 --size=16M --offset=240M --verify=crc32c --verify_fatal=1
bd_stop
