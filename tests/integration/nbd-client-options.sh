#!/bin/bash
# nbd-client-options.sh - options of the nbd protocol driver: a read-only server (qemu-nbd -r)
# needs read-only=on (or auto-read-only=on) and is then served read-only with the right bytes;
# nbd+unix:// URIs in filename; open-timeout waits for a server that starts late; malformed
# options and unreachable servers give clear errors and a clean exit 1; blockdev-add / blockdev-del
# over QMP with QEMU's JSON shape.
# meson-timeout: 120
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-nbd qemu-io nbdinfo nbdcopy truncate

bd_tmpdir
img=$T/ro.raw
truncate -s 8M "$img"
head -c 3M /dev/urandom | dd of="$img" bs=1M seek=1 conv=notrunc status=none
cp "$img" "$T/orig.raw"
qsock=$T/ro.sock
bd_spawn qemu-nbd-ro qemu-nbd -t -e 4 -r -f raw -k "$qsock" -x ro "$img"
qro=$BD_SPAWN_PID
bd_wait_socket "$qsock"

# a writable node on a read-only export is refused with a reason
assert_exit 1 "$BLOCKD" --blockdev driver=nbd,node-name=n,server.type=unix,server.path="$qsock",export=ro
assert_contains "$BD_OUT" "nbd 'n'"
assert_contains "$BD_OUT" "read-only"

# read-only=on, through the URI form, and auto-read-only=on: both serve the bytes
sock=$T/blockd.sock
bd_start --blockdev "driver=nbd,node-name=r1,read-only=on,filename=nbd+unix:///ro?socket=$qsock" \
	--blockdev driver=nbd,node-name=r2,auto-read-only=on,server.type=unix,server.path="$qsock",export=ro \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e1,node-name=r1,name=r1 \
	--export type=nbd,id=e2,node-name=r2,name=r2
for e in r1 r2; do
	u=$(bd_nbd_unix_uri "$sock" $e)
	assert_exit 0 nbdinfo --is read-only "$u"
	nbdcopy "$u" "$T/copy-$e.raw"
	assert_file_eq "$T/copy-$e.raw" "$img"
	out=$(qemu-io -f raw -c 'write -P 0x11 0 4k' "$u" 2>&1 || true)
	assert_match "$out" "(Operation not permitted|read-only|Read-only|Permission denied)" "write to $e"
done
bd_stop
assert_file_eq "$img" "$T/orig.raw"

# open-timeout: the server appears 1.5 s after blockd started
late=$T/late.sock
truncate -s 4M "$T/late.raw"
bd_spawn qemu-nbd-late sh -c "sleep 1.5; exec qemu-nbd -t -f raw -k '$late' -x late '$T/late.raw'"
qlate=$BD_SPAWN_PID
bd_start --blockdev driver=nbd,node-name=l,server.type=unix,server.path="$late",export=late,open-timeout=10 \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=el,node-name=l,name=late
assert_eq "$(nbdinfo --size "$(bd_nbd_unix_uri "$sock" late)")" 4194304 "size through a late server"
bd_stop

# QMP: blockdev-add with QEMU's JSON shape (TCP server, port as a string), export, read,
# describe, then block-export-del and blockdev-del close the connection; bad JSON is refused
BLOCKCTL=${BLOCKCTL:-${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}
if [ -x "$BLOCKCTL" ]; then
	q() { "$BLOCKCTL" --socket "$T/c.sock" qmp "$@"; }
	port=$(bd_free_port)
	bd_spawn qemu-nbd-tcp qemu-nbd -t -e 4 -r -f raw -b 127.0.0.1 -p "$port" -x ro "$img"
	qtcp=$BD_SPAWN_PID
	bd_wait_for 10 nbdinfo --size "nbd://127.0.0.1:$port/ro"
	bd_start --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$sock"
	q blockdev-add "{\"driver\": \"nbd\", \"node-name\": \"qn\", \"read-only\": true,
		\"server\": {\"type\": \"inet\", \"host\": \"127.0.0.1\", \"port\": \"$port\"},
		\"export\": \"ro\", \"reconnect-delay\": 5, \"timeout\": 10}" >/dev/null
	q block-export-add '{"type": "nbd", "id": "eq", "node-name": "qn", "name": "q"}' >/dev/null
	nbdcopy "$(bd_nbd_unix_uri "$sock" q)" "$T/copy-q.raw"
	assert_file_eq "$T/copy-q.raw" "$img"
	info=$(q query-named-block-nodes '{}')
	assert_contains "$info" "tcp:127.0.0.1:$port"
	if q blockdev-add '{"driver": "nbd", "node-name": "bad", "server": {"type": "unix"}}' \
		>"$T/bad" 2>&1; then
		fail "blockdev-add without server.path was accepted"
	fi
	assert_contains "$(cat "$T/bad")" "server.path"
	q block-export-del '{"id": "eq"}' >/dev/null
	sleep 0.3
	q blockdev-del '{"node-name": "qn"}' >/dev/null
	info=$(q query-named-block-nodes '{}')
	assert_not_contains "$info" '"qn"'
	bd_stop
	bd_kill "$qtcp"
fi

# bad options: one line naming the node and the cause, exit 1, never a crash
nosock=$T/nobody.sock
check_bad()
{
	local want=$1
	shift
	assert_exit 1 "$BLOCKD" --blockdev "$@"
	assert_contains "$BD_OUT" "$want"
}
check_bad "server.type" "driver=nbd,node-name=x,server.type=vsock,server.path=/x"
check_bad "server.path" "driver=nbd,node-name=x,server.type=unix"
check_bad "server.host" "driver=nbd,node-name=x,server.type=inet"
check_bad "server.type" "driver=nbd,node-name=x,server.path=/x"
check_bad "Invalid parameter 'server.bogus'" \
	"driver=nbd,node-name=x,server.type=unix,server.path=$qsock,server.bogus=1"
check_bad "cannot be combined" "driver=nbd,node-name=x,filename=nbd://127.0.0.1/x,export=y"
check_bad "one of 'server' or 'filename'" "driver=nbd,node-name=x"
check_bad "timeout" "driver=nbd,node-name=x,server.type=unix,server.path=$qsock,timeout=soon"
check_bad "too large" "driver=nbd,node-name=x,server.type=unix,server.path=$qsock,reconnect-delay=99999999999"
check_bad "TLS" "driver=nbd,node-name=x,server.type=unix,server.path=$qsock,tls-creds=t"
check_bad "Failed to connect to 'unix:$nosock'" "driver=nbd,node-name=x,server.type=unix,server.path=$nosock"
check_bad "Failed to connect" "driver=nbd,node-name=x,filename=nbd://[::1"
check_bad "Failed to connect" "driver=nbd,node-name=x,filename=nbds://127.0.0.1/x"
check_bad "Failed to connect" "driver=nbd,node-name=x,filename=http://127.0.0.1/x"
check_bad "Failed to connect" "driver=nbd,node-name=x,filename=nbd+unix:///ro?socket=$qsock&tls-psk-file=/etc/passwd"
check_bad "Failed to connect to 'tcp:127.0.0.1:1'" \
	"driver=nbd,node-name=x,server.type=inet,server.host=127.0.0.1,server.port=1"
check_bad "Failed to connect" "driver=nbd,node-name=x,server.type=unix,server.path=$qsock,export=nosuch"
# open-timeout against nobody: gives up after about that long
t0=$(date +%s)
check_bad "Failed to connect" "driver=nbd,node-name=x,server.type=unix,server.path=$nosock,open-timeout=2"
t1=$(date +%s)
[ $((t1 - t0)) -ge 1 ] && [ $((t1 - t0)) -le 5 ] || fail "open-timeout=2 took $((t1 - t0)) s"

bd_kill "$qro"
bd_kill "$qlate"
