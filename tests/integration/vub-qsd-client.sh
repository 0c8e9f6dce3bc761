#!/bin/bash
# The test front end (tests/vub/vub-client) against another back end, qemu-storage-daemon's
# vhost-user-blk export: it must work there too, so that what it checks on blockd is the
# protocol and not the front end's own idea of it.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
need qemu-storage-daemon
[ -x "$VUB_CLIENT" ] || skip "vub-client is not built ($VUB_CLIENT)"
bd_tmpdir

bd_sparse_image "$T/img" 64M
bd_spawn qsd qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$T/img" \
	--export type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path="$T/q.sock",writable=on,num-queues=2
bd_wait_socket "$T/q.sock"
out=$("$VUB_CLIENT" "$T/q.sock" info)
echo "$out"
assert_contains "$out" "capacity=131072 blk_size=512"
out=$("$VUB_CLIENT" "$T/q.sock" verify --queues 2)
echo "$out"
assert_contains "$out" "VERIFY OK"
bd_random_file "$T/pat" 1024
"$VUB_CLIENT" "$T/q.sock" write 4M 1M "$T/pat"
dd if="$T/img" of="$T/fromimg" bs=1M skip=4 count=1 status=none
assert_file_eq "$T/pat" "$T/fromimg"
# qemu-storage-daemon 7.2 may not exit on SIGTERM after a vhost-user client left
kill -KILL "$BD_SPAWN_PID" 2>/dev/null || true
wait "$BD_SPAWN_PID" 2>/dev/null || true
_bd_forget_pid "$BD_SPAWN_PID"
