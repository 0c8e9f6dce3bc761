#!/bin/bash
# vhost-user-blk export against the test front end (tests/vub/vub-client): features and config,
# write/read back on several queues spread over two iothreads, flush, discard, write-zeroes,
# GET_ID serial, range errors, a read-only export, a second front end after the first one left,
# and a hostile front end (bad descriptors, loops, bogus indexes, bad messages) that must not
# hurt the daemon.  Data written through the export is checked in the image file.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
[ -x "$VUB_CLIENT" ] || skip "vub-client is not built ($VUB_CLIENT)"
bd_tmpdir

bd_sparse_image "$T/img" 64M
bd_start --object iothread,id=io1 --object iothread,id=io2 \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=raw,node-name=r,file=f \
	--export type=vhost-user-blk,id=v,node-name=r,addr.type=unix,addr.path="$T/vub.sock",writable=on,num-queues=4,serial=blockd-serial-1,iothreads.0=io1,iothreads.1=io2 \
	--blockdev driver=file,node-name=f2,filename="$T/img",read-only=on,locking=off \
	--export type=vhost-user-blk,id=v2,node-name=f2,addr.type=unix,addr.path="$T/ro.sock",num-queues=1,logical-block-size=4096 \
	--export type=vhost-user-blk,id=v3,node-name=f2,addr.type=unix,addr.path="$T/split.sock",num-queues=1,iothreads.0=io1,iothreads.1=io2

fds_before=$(ls /proc/"$BD_PID"/fd | wc -l)
out=$("$VUB_CLIENT" "$T/vub.sock" info)
echo "$out"
assert_contains "$out" "capacity=131072 blk_size=512"
assert_contains "$out" "num_queues=4"
assert_contains "$out" "ro=0 discard=1 write_zeroes=1"
assert_contains "$out" "serial=blockd-serial-1 (status 0)"
assert_contains "$out" "max_discard_seg=32 max_write_zeroes_seg=32"

# the same checks with packed virtqueues
out=$("$VUB_CLIENT" "$T/vub.sock" verify --queues 4 --packed)
assert_contains "$out" "VERIFY OK"

out=$("$VUB_CLIENT" "$T/vub.sock" verify --queues 4)
echo "$out"
assert_contains "$out" "VERIFY OK"
# several segments per discard / write-zeroes request (max_*_seg = 32)
assert_contains "$out" "ok: zeroes exactly in the 3 segments"
assert_contains "$out" "ok: more segments than max_write_zeroes_seg: UNSUPP"
assert_contains "$out" "ok: discard with 2 segments"

# data written through the export lands in the image
bd_random_file "$T/pat" 3072
"$VUB_CLIENT" "$T/vub.sock" write 8M 3M "$T/pat"
"$VUB_CLIENT" "$T/vub.sock" read 8M 3M "$T/back"
assert_file_eq "$T/pat" "$T/back"
dd if="$T/img" of="$T/fromimg" bs=1M skip=8 count=3 status=none
assert_file_eq "$T/pat" "$T/fromimg"
# an export with a spare iothread (2 iothreads, 1 queue) reads the second half of large reads
# there: 1 MiB reads, and reads at an odd 64 KiB offset with a 768 KiB tail, must be intact
"$VUB_CLIENT" "$T/split.sock" read 8M 3M "$T/back2"
assert_file_eq "$T/pat" "$T/back2"
"$VUB_CLIENT" "$T/split.sock" read 8256K 2880K "$T/back3"
cmp "$T/back3" <(dd if="$T/pat" bs=64K skip=1 count=45 status=none) || fail "split read at an offset"
"$VUB_CLIENT" "$T/vub.sock" zero 8M 512K 9M 512K
"$VUB_CLIENT" "$T/vub.sock" flush
dd if="$T/img" of="$T/fromimg" bs=512K skip=16 count=1 status=none
cmp -s "$T/fromimg" <(head -c 512K /dev/zero) || fail "write-zeroes did not zero the image"
dd if="$T/img" of="$T/fromimg" bs=512K skip=18 count=1 status=none
cmp -s "$T/fromimg" <(head -c 512K /dev/zero) || fail "write-zeroes (2nd segment) did not zero the image"
dd if="$T/img" of="$T/fromimg" bs=512K skip=17 count=1 status=none
cmp -s "$T/fromimg" <(dd if="$T/pat" bs=512K skip=1 count=1 status=none) ||
	fail "write-zeroes with two segments zeroed between them"

# read-only export with 4k logical blocks
out=$("$VUB_CLIENT" "$T/ro.sock" info)
echo "$out"
assert_contains "$out" "blk_size=4096"
assert_contains "$out" "ro=1 discard=0 write_zeroes=0"
out=$("$VUB_CLIENT" "$T/ro.sock" verify)
echo "$out"
assert_contains "$out" "VERIFY OK"

# hostile front end, then a well-behaved one on the same export
out=$("$VUB_CLIENT" "$T/vub.sock" hostile --queues 2 2>&1) || true
echo "$out"
assert_contains "$out" "still answering after hostile requests"
assert_contains "$out" "oversized region refused: yes"
bd_wait_for 5 grep -q "malformed descriptor chain" "$BD_LOG"
out=$("$VUB_CLIENT" "$T/vub.sock" verify --queues 2)
assert_contains "$out" "VERIFY OK"

# a front end killed with requests in flight: the export drains them and takes the next one
"$VUB_CLIENT" "$T/vub.sock" bench --rw randwrite --qd 32 --queues 4 --time 10 >/dev/null &
cpid=$!
sleep 0.7
kill -KILL "$cpid"
wait "$cpid" 2>/dev/null || true
out=$("$VUB_CLIENT" "$T/vub.sock" verify --queues 4)
assert_contains "$out" "VERIFY OK"

# every front end released everything it had (memory maps, eventfds, sockets)
sleep 0.2
assert_eq "$(ls /proc/"$BD_PID"/fd | wc -l)" "$fds_before" "open fds after the front ends left"
maps=$(grep -c memfd: /proc/"$BD_PID"/maps || true)
assert_eq "$maps" 0 "guest memory mappings after the front ends left"
bd_stop
grep -q "front end disconnected" "$BD_LOG" || fail "no disconnect logged"
