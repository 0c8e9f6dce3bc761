#!/bin/bash
# nfs-io.sh: the nfs protocol driver against nfs-ganesha (NFSv3, libnfs, no kernel mount): bytes
# written through blockd's NBD exports land in the server's file and read back the same, from
# two loops (one forwarding to the node's home loop); FUA, flush, discard, write-zeroes;
# block_resize grows the server's file; blockdev-create makes a new file of the given size;
# bad locations fail with clear errors.
# meson-suite: slow
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/nfs.sh"
need qemu-io qemu-img nbdinfo cmp
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
_bd_need_blockd
"$BLOCKD" --blockdev driver=nfs,node-name=x 2>&1 | grep -q "Unknown driver" && skip "blockd built without libnfs"
nfs_setup

img=$NFS_EXPORT_DIR/disk.img
head -c $((4 << 20)) /dev/urandom >"$img"
truncate -s 32M "$img"
bd_start --control "$T/c.sock" --object iothread,id=io1 \
	--blockdev driver=nfs,node-name=n0,filename=nfs://$NFS_HOST$NFS_EXPORT/disk.img?timeout=10 \
	--blockdev driver=raw,node-name=d0,file=n0 \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e0,node-name=d0,name=disk,writable=on \
	--export type=nbd,id=e1,node-name=d0,name=disk1,writable=on,iothread=io1
qmp() { "$BLOCKCTL" --socket "$T/c.sock" qmp "$@"; }
uri=$(bd_nbd_unix_uri "$T/s" disk)
uri1=$(bd_nbd_unix_uri "$T/s" disk1)

# read: the server's bytes
assert_eq "$(nbdinfo --size "$uri")" $((32 << 20)) "export size"
qemu-img convert -f raw -O raw "$uri" "$T/read0"
assert_file_eq "$T/read0" "$img"

# write through both exports (two loops, one node): the server's file has the bytes
head -c $((3 << 20)) /dev/urandom >"$T/r1"
head -c $((2 << 20)) /dev/urandom >"$T/r2"
out=$(qemu-io -f raw -c "write -s $T/r1 1M 3M" -c flush "$uri" 2>&1) || fail "$out"
out=$(qemu-io -f raw -c "write -f -s $T/r2 8M 2M" "$uri1" 2>&1) || fail "write FUA: $out"
cmp -n $((3 << 20)) "$T/r1" <(dd if="$img" bs=1M skip=1 count=3 status=none) ||
	fail "server file differs after the write through loop io0"
cmp -n $((2 << 20)) "$T/r2" <(dd if="$img" bs=1M skip=8 count=2 status=none) ||
	fail "server file differs after the FUA write through loop io1"
qemu-img convert -f raw -O raw "$uri1" "$T/read1"
assert_file_eq "$T/read1" "$img"

# unaligned small writes, many in flight at once (qemu-io aio)
out=$(qemu-io -f raw -c "aio_write -P 0x5a 12345 777" -c "aio_write -P 0xa5 1000000 65536" \
	-c "aio_write -P 0x11 20M 1M" -c aio_flush -c "read -P 0x5a 12345 777" \
	-c "read -P 0xa5 1000000 65536" -c "read -P 0x11 20M 1M" "$uri1" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"
assert_eq "$(od -An -tx1 -j 12345 -N 1 "$img" | tr -d ' ')" 5a "server byte at 12345"

# write-zeroes (emulated) and discard (advisory no-op on NFSv3)
out=$(qemu-io -f raw -c "write -z 20M 64k" -c "discard 21495808 64k" -c "read -P 0 20M 64k" \
	-c "read -P 0x11 21495808 64k" "$uri" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"
cmp -n 65536 /dev/zero <(dd if="$img" bs=64k skip=320 count=1 status=none) ||
	fail "write-zeroes did not reach the server"

# resize grows the server's file; a new client sees it and writes past the old end
qmp block_resize '{"node-name": "d0", "size": 67108864}' >"$T/r" || fail "resize: $(cat "$T/r")"
assert_eq "$(stat -c %s "$img")" 67108864 "server file size after block_resize"
assert_eq "$(nbdinfo --size "$uri")" 67108864 "export size after block_resize"
out=$(qemu-io -f raw -c "write -P 0x77 60M 1M" -c "read -P 0x77 60M 1M" "$uri1" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"
qemu-img convert -f raw -O raw "$uri" "$T/read2"
assert_file_eq "$T/read2" "$img"

# blockdev-create: a new file of the given size, then opened and written
qmp blockdev-create '{"job-id": "c1", "options": {"driver": "nfs", "location":
	{"server": {"type": "inet", "host": "127.0.0.1"}, "path": "/export/new.img"},
	"size": 8388608}}' >"$T/r" || fail "blockdev-create: $(cat "$T/r")"
for i in $(seq 1 100); do
	qmp query-jobs >"$T/j"
	grep -q concluded "$T/j" && break
	sleep 0.1
done
assert_not_contains "$(cat "$T/j")" '"error"' "create job"
assert_eq "$(stat -c %s "$NFS_EXPORT_DIR/new.img")" 8388608 "created file size"
qmp job-dismiss '{"id": "c1"}' >/dev/null
qmp blockdev-add '{"driver": "raw", "node-name": "d1", "file": {"driver": "nfs",
	"server": {"type": "inet", "host": "127.0.0.1"}, "path": "/export/new.img",
	"user": 0, "group": 0, "tcp-syn-count": 2, "timeout": 5}}' >"$T/r" ||
	fail "blockdev-add: $(cat "$T/r")"
qmp block-export-add '{"type": "nbd", "id": "e2", "node-name": "d1", "name": "new",
	"writable": true}' >"$T/r" || fail "export: $(cat "$T/r")"
out=$(qemu-io -f raw -c "write -P 0x42 4M 1M" -c flush "$(bd_nbd_unix_uri "$T/s" new)" 2>&1) ||
	fail "$out"
cmp -n $((1 << 20)) <(head -c $((1 << 20)) /dev/zero | tr '\0' '\102') \
	<(dd if="$NFS_EXPORT_DIR/new.img" bs=1M skip=4 count=1 status=none) ||
	fail "the created file does not have the written bytes"
qmp query-named-block-nodes >"$T/q"
assert_contains "$(cat "$T/q")" '"home-loop"'

# libnfs's page cache and read-ahead (reads may complete at once; FUA becomes write + COMMIT)
qmp blockdev-add "{\"driver\": \"raw\", \"node-name\": \"d2\", \"file\": {\"driver\": \"nfs\",
	\"filename\": \"nfs://$NFS_HOST$NFS_EXPORT/disk.img?pagecache=64&readahead=131072\"}}" >"$T/r" ||
	fail "blockdev-add with page cache: $(cat "$T/r")"
qmp block-export-add '{"type": "nbd", "id": "e3", "node-name": "d2", "name": "pc",
	"writable": true}' >"$T/r" || fail "export: $(cat "$T/r")"
pcuri=$(bd_nbd_unix_uri "$T/s" pc)
qemu-img convert -f raw -O raw "$pcuri" "$T/read3"
qemu-img convert -f raw -O raw "$pcuri" "$T/read4"
assert_file_eq "$T/read3" "$img"
assert_file_eq "$T/read4" "$img"
out=$(qemu-io -f raw -c "write -f -P 0x3c 5M 64k" -c "read -P 0x3c 5M 64k" "$pcuri" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"
assert_eq "$(od -An -tx1 -j $((5 << 20)) -N 1 "$img" | tr -d ' ')" 3c "server byte after a FUA write"
qmp query-named-block-nodes >"$T/q"
assert_contains "$(cat "$T/q")" '"stable-fua": false'

# bad locations: clear errors, the daemon keeps serving
check_err()
{
	local json=$1 want=$2
	if qmp blockdev-add "$json" >"$T/r" 2>&1; then
		fail "blockdev-add $json succeeded"
	fi
	assert_contains "$(cat "$T/r")" "$want"
}
check_err '{"driver": "nfs", "node-name": "x1", "filename": "nfs://127.0.0.1/export/missing.img"}' \
	"Could not open 'missing.img' on NFS export '127.0.0.1:/export'"
check_err '{"driver": "nfs", "node-name": "x2", "filename": "nfs://127.0.0.1/nope/a.img"}' \
	"Could not mount NFS export '127.0.0.1:/nope'"
check_err '{"driver": "nfs", "node-name": "x3", "filename": "nfs://127.0.0.1/export/a.img?foo=1"}' \
	"nfs URL argument 'foo' is not supported"
check_err '{"driver": "nfs", "node-name": "x4", "filename": "nfs://127.0.0.1/export/a.img?version=4"}' \
	"only NFSv3"
check_err '{"driver": "nfs", "node-name": "x5", "filename": "nfs://127.0.0.1/export/disk.img", "path": "/export/disk.img"}' \
	"Cannot combine 'filename'"
check_err '{"driver": "nfs", "node-name": "x6", "server": {"type": "inet", "host": "127.0.0.1"}, "path": "relative"}' \
	"must be an absolute path"
check_err '{"driver": "nfs", "node-name": "x7", "server": {"type": "unix", "host": "h"}, "path": "/e/f"}' \
	"type"
check_err '{"driver": "nfs", "node-name": "x8", "filename": "nfs://127.0.0.1:99/export/a.img?timeout=2"}' \
	"Could not mount"
check_err '{"driver": "nfs", "node-name": "x9", "filename": "nfs:///export/a.img"}' \
	"invalid nfs URL"
check_err '{"driver": "nfs", "node-name": "x10", "filename": "nfs://127.0.0.1/export/disk.img", "bogus": 1}' \
	"Invalid parameter 'bogus'"
out=$(qemu-io -f raw -c "read -P 0x77 60M 1M" "$uri" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"

bd_stop
echo ok
