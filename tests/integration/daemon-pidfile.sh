#!/bin/bash
# daemon-pidfile.sh: blockd writes --pidfile only once it is ready (a client connecting right
# after sees the export, without retrying), the file holds its pid, it is not written when
# start-up fails half-way, and blockd removes it when it exits.
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo
bd_tmpdir

sock=$T/nbd.sock
args=(--blockdev driver=null-co,node-name=n0,size=64M,read-zeroes=on
	--nbd-server "addr.type=unix,addr.path=$sock"
	--export type=nbd,id=e0,node-name=n0,name=disk)

# Ready when the pidfile appears: bd_start returns as soon as it exists.  No retry here.
for i in 1 2 3; do
	bd_start "${args[@]}"
	assert_eq "$(tr -d '\n' <"$BD_PIDFILE")" "$BD_PID" "pidfile content"
	size=$(nbdinfo --size "nbd+unix:///disk?socket=$sock")
	assert_eq "$size" $((64 << 20)) "export size right after the pidfile appeared (try $i)"
	pidfile=$BD_PIDFILE
	bd_stop
	assert_not_exists "$pidfile"
done

# A failure after earlier options succeeded: no pidfile, exit 1, nothing left listening.
_bd_need_blockd
rc=0
timeout 20 "$BLOCKD" "${args[@]}" --export type=nbd,id=e1,node-name=no-such-node \
	--pidfile "$T/fail.pid" >"$T/fail.log" 2>&1 </dev/null || rc=$?
assert_eq "$rc" 1 "exit status when a late option fails"
assert_not_exists "$T/fail.pid"
if nbdinfo --size "nbd+unix:///disk?socket=$sock" >/dev/null 2>&1; then
	fail "the export is still served after a failed start-up"
fi
echo "ok"
