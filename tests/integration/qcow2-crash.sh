#!/bin/bash
# qcow2-crash.sh - SIGKILL blockd in the middle of a random write workload (many requests in
# flight: qemu-io aio_write / aio write-zeroes / discard through NBD), ITERATIONS times (default
# 5; qcow2-crash-slow.sh runs 50).  After each kill: `qemu-img check` finds no corruption (leaks
# are allowed: exit code 0 or 3), data acknowledged before a flush reads back intact (checked by
# QEMU reading the image directly), and blockd opens the image again.  Alternates plain and lazy
# refcounts (a dirty lazy image is repaired by blockd's open), 64k and 4k clusters, with and
# without a backing file, extended L2 entries (subcluster zero bits, discard).
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io
bd_tmpdir
ITERATIONS=${ITERATIONS:-5}

head -c 8M /dev/urandom >"$T/back.raw"
leaks=0
for ((it = 1; it <= ITERATIONS; it++)); do
	case $((it % 5)) in
	0) opts="cluster_size=65536" back= ;;
	1) opts="cluster_size=4096,lazy_refcounts=on" back= ;;
	2) opts="cluster_size=65536,lazy_refcounts=on" back=1 ;;
	3) opts="cluster_size=4096,refcount_bits=8" back=1 ;;
	4) opts="cluster_size=32768,extended_l2=on" back=1 ;;
	esac
	img=$T/crash.qcow2
	rm -f "$img"
	if [ -n "$back" ]; then
		qemu-img create -q -f qcow2 -o "$opts" -b back.raw -F raw "$img" 16M
	else
		qemu-img create -q -f qcow2 -o "$opts" "$img" 16M
	fi
	bd_start --blockdev "driver=qcow2,node-name=q,discard=unmap,file.driver=file,file.filename=$img" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,writable=on
	uri=$(bd_nbd_unix_uri "$T/s" q)
	# Acknowledged and flushed: the first 2 MiB get a known pattern.
	pat=$((it % 200 + 20))
	qemu-io -f raw -c "write -P $pat 0 1M" -c "write -P $((pat + 1)) 1M 1M" -c flush "$uri" \
		>/dev/null || fail "iteration $it: the acknowledged writes failed"
	# The workload: random requests above 2 MiB, many in flight.
	RANDOM=$it
	cmds=()
	for ((i = 0; i < 400; i++)); do
		len=$((512 * (1 + RANDOM % 300)))
		off=$((2097152 + 512 * ((RANDOM * 32768 + RANDOM) % 20000)))
		((off + len <= 16777216)) || continue
		case $((RANDOM % 8)) in
		0) u=; ((RANDOM & 1)) && u=-u; cmds+=(-c "aio_write -z $u $off $len") ;;
		1) cmds+=(-c "discard $off $len") ;;
		2) cmds+=(-c "aio_flush") ;;
		*) cmds+=(-c "aio_write -P $((RANDOM % 250 + 1)) $off $len") ;;
		esac
	done
	# repeated until the connection dies, so that the kill lands inside the workload
	(while qemu-io -f raw "${cmds[@]}" -c aio_flush "$uri" >/dev/null 2>&1; do :; done) &
	qpid=$!
	sleep "0.$((RANDOM % 9 + 1))$((RANDOM % 10))"
	bd_crash
	wait $qpid 2>/dev/null || true
	bd_img_check "$img" "$T/check.log"
	rc=$BD_CHECK_RC
	case $rc in
	0) ;;
	3) leaks=$((leaks + 1)); grep -i leak "$T/check.log" | head -2 ;;
	*) cat "$T/check.log"; fail "iteration $it ($opts): qemu-img check exited $rc (corruption)" ;;
	esac
	qemu-io -f qcow2 -r -c "read -P $pat 0 1M" -c "read -P $((pat + 1)) 1M 1M" "$img" \
		>"$T/read.log" 2>&1 || { cat "$T/read.log"; fail "iteration $it: flushed data lost"; }
	grep -q "Pattern verification failed" "$T/read.log" && fail "iteration $it: flushed data differs"
	# blockd opens it again (repairing a dirty lazy image) and closes it clean
	bd_start --blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
		--nbd-server addr.type=unix,addr.path="$T/s" --export type=nbd,id=e,node-name=q
	qemu-io -f raw -r -c "read -P $pat 0 1M" "$(bd_nbd_unix_uri "$T/s" q)" >"$T/read.log" 2>&1
	grep -q "Pattern verification failed" "$T/read.log" && fail "iteration $it: blockd reads other data"
	bd_stop
	rc=0
	qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
	[ "$rc" = 0 ] || [ "$rc" = 3 ] || { cat "$T/check.log"; fail "iteration $it: check after reopen: $rc"; }
	echo "iteration $it ($opts${back:+, backing}): ok (check rc $rc)"
done
echo "qcow2 crash: $ITERATIONS iterations, $leaks with leaked clusters (allowed), no corruption"
