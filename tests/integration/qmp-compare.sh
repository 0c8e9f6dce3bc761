#!/bin/bash
# qmp-compare.sh: one QMP conversation (negotiation, node and export lifecycle, objects, errors for
# bad arguments, unknown commands and unknown nodes) against qemu-storage-daemon and against
# blockd, both started with qsd's --chardev/--monitor options: the replies must agree in shape
# (keys, value types, error classes).  tests/integration/qmp_conv.py holds the conversation.
source "$(dirname "$0")/../lib/common.sh"
need python3 qemu-storage-daemon
bd_tmpdir

conv=$(dirname "$0")/qmp_conv.py

truncate -s 16M "$T/q.img" "$T/b.img"

bd_spawn qsd qemu-storage-daemon \
	--chardev socket,path="$T/q.sock",server=on,wait=off,id=mon0 --monitor chardev=mon0
qsd_pid=$BD_SPAWN_PID
bd_wait_socket "$T/q.sock"

bd_start --chardev socket,path="$T/b.sock",server=on,wait=off,id=mon0 --monitor chardev=mon0
assert_eq "$(stat -c %a "$T/b.sock")" 600 "control socket mode"

python3 "$conv" run "$T/q.sock" "$T/q.img" "$T/q-nbd.sock" "$T/qsd.json" ||
	fail "the conversation with qemu-storage-daemon failed"
python3 "$conv" run "$T/b.sock" "$T/b.img" "$T/b-nbd.sock" "$T/blockd.json" ||
	fail "the conversation with blockd failed"

# Both ended with "quit".
bd_wait_exit "$qsd_pid" 10 || fail "qemu-storage-daemon did not quit"
bd_wait_exit "$BD_PID" 20 || fail "blockd did not quit"
assert_eq "$BD_STATUS" 0 "blockd exit status after quit"
assert_not_exists "$T/b.sock"

out=$(python3 "$conv" compare "$T/qsd.json" "$T/blockd.json") || {
	echo "$out" >&2
	fail "blockd's replies differ from qemu-storage-daemon's"
}
echo "$out"
