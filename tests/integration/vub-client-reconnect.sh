#!/bin/bash
# meson-timeout: 180
# blockd is killed (SIGKILL) and restarted twice while the test front end (tests/vub/vub-client,
# which reconnects and sets everything up again as QEMU does with reconnect=1, keeping the
# in-flight region) writes through two queues: first with packed virtqueues, then with split
# ones.  A throttle filter keeps requests in flight inside blockd at every kill.  Every request
# must complete exactly once with status OK (none lost, none completed twice), the restarted
# blockd must log that it resubmitted requests, and the data read back through the export and in
# the image must be what the last pass wrote.
#
# With packed rings the front end sends SET_VRING_BASE with the start of the ring after each
# restart, as QEMU 7.2 does (it cannot read a packed ring's position back from a dead back end):
# blockd must find where the ring stands from the in-flight region alone.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
[ -x "$VUB_CLIENT" ] || skip "vub-client is not built ($VUB_CLIENT)"
bd_tmpdir

bd_sparse_image "$T/img" 64M
args=(--object throttle-group,id=tg,x-iops-total=400
	--blockdev driver=file,node-name=f,filename="$T/img"
	--blockdev driver=raw,node-name=r,file=f
	--blockdev driver=throttle,node-name=t,throttle-group=tg,file=r
	--export type=vhost-user-blk,id=v,node-name=t,addr.type=unix,addr.path="$T/vub.sock",writable=on,num-queues=2)

kill_blockd()
{
	kill -KILL "$BD_PID"
	wait "$BD_PID" 2>/dev/null || true
	_bd_forget_pid "$BD_PID"
}

# run_case NAME [client options]
run_case()
{
	local name=$1 cpid rc=0
	shift
	rm -f "$T"/blockd*.log
	bd_start "${args[@]}"
	# 128 writes of 64 KiB per pass, 32 in flight: about 0.3 s per pass at 400 IOPS
	"$VUB_CLIENT" "$T/vub.sock" stress --reconnect --queues 2 --qd 16 --bs 64k --area 8M \
		--passes 10 --expect "$T/expect" "$@" >"$T/$name.out" 2>&1 &
	cpid=$!
	BD_PIDS+=("$cpid")
	bd_wait_for 30 grep -q "^pass 2:" "$T/$name.out"
	kill_blockd
	echo "$name: killed blockd after pass 2"
	sleep 0.3
	bd_start "${args[@]}"
	bd_wait_for 30 grep -q "^pass 5:" "$T/$name.out"
	kill_blockd
	echo "$name: killed blockd after pass 5"
	bd_start "${args[@]}"
	wait "$cpid" || rc=$?
	_bd_forget_pid "$cpid"
	cat "$T/$name.out"
	assert_eq "$rc" 0 "$name: front end exit status"
	assert_contains "$(cat "$T/$name.out")" "2 reconnection(s)"
	assert_contains "$(cat "$T/$name.out")" "STRESS OK"
	n=$(grep -h "resubmitting" "$T"/blockd*.log | wc -l)
	grep -h "resubmitting" "$T"/blockd*.log || true
	[ "$n" -ge 1 ] || fail "$name: no in-flight request was resubmitted"
	bd_stop
	cmp "$T/expect" <(head -c 8M "$T/img") || fail "$name: the image differs from the last pass"
}

run_case packed --packed
run_case split
