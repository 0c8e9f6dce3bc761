#!/bin/bash
# meson-suite: slow
# meson-timeout: 300
# A real QEMU guest (TCG) on blockd's vhost-user-blk export with two queues spread over two
# iothreads (and a third, spare one that reads half of every large read): disk size, queue count, serial (GET_ID), direct-I/O write and read back on both
# queues, discard, write-zeroes, flush; the data the guest wrote is checked in the image.
# Then the same guest script against a packed-ring device (-device ...,packed=on).
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
vub_guest_need

cat >"$T/test.sh" <<'GUEST'
d=vda
echo "GUEST: size $(cat /sys/block/$d/size)"
echo "GUEST: ro $(cat /sys/block/$d/ro)"
echo "GUEST: queues $(ls /sys/block/$d/mq | wc -l)"
echo "GUEST: serial $(cat /sys/block/$d/serial)"
echo "GUEST: discard_max $(cat /sys/block/$d/queue/discard_max_bytes)"
# 4 MiB at 1 MiB, written with O_DIRECT from both CPUs (so through both queues)
dd if=/dev/urandom of=/tmp/pat bs=1M count=4 2>/dev/null
taskset 1 dd if=/tmp/pat of=/dev/$d bs=1M count=2 seek=1 oflag=direct 2>/dev/null
taskset 2 dd if=/tmp/pat of=/dev/$d bs=1M count=2 skip=2 seek=3 oflag=direct 2>/dev/null
blkop /dev/$d flush
taskset 2 dd if=/dev/$d of=/tmp/back bs=1M count=4 skip=1 iflag=direct 2>/dev/null
cmp /tmp/pat /tmp/back && echo "GUEST: readback OK" || echo "GUEST: readback MISMATCH"
echo "GUEST: md5 $(md5sum < /tmp/pat | cut -d' ' -f1)"
dd if=/dev/urandom of=/dev/$d bs=1M count=2 seek=8 oflag=direct 2>/dev/null
blkop /dev/$d discard 8388608 1048576
blkop /dev/$d zeroout 9437184 1048576
dd if=/dev/$d of=/tmp/z bs=1M count=1 skip=9 iflag=direct 2>/dev/null
head -c 1048576 /dev/zero | cmp - /tmp/z && echo "GUEST: zeroes OK" || echo "GUEST: zeroes MISMATCH"
GUEST
vub_guest_build "$T/test.sh"

bd_sparse_image "$T/img" 64M
bd_start --log-level debug --object iothread,id=io1 --object iothread,id=io2 --object iothread,id=io3 \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=raw,node-name=r,file=f \
	--export type=vhost-user-blk,id=v,node-name=r,addr.type=unix,addr.path="$T/vub.sock",writable=on,num-queues=2,serial=vub-serial-7,iothreads.0=io1,iothreads.1=io2,iothreads.2=io3

for variant in split packed; do
	devopts=""
	[ $variant = packed ] && devopts=",packed=on"
	echo "== $variant rings"
	logline=$(wc -l <"$BD_LOG")
	vub_guest_run "$T/vub.sock" 2 "$devopts"
	assert_eq "$(vub_guest_line size)" 131072 "guest disk size ($variant)"
	assert_eq "$(vub_guest_line ro)" 0 "read-only flag ($variant)"
	assert_eq "$(vub_guest_line queues)" 2 "queues ($variant)"
	assert_eq "$(vub_guest_line serial)" vub-serial-7 "serial ($variant)"
	assert_eq "$(vub_guest_line readback)" OK "readback ($variant)"
	assert_eq "$(vub_guest_line 'discard /dev/vda:')" OK "discard ($variant)"
	assert_eq "$(vub_guest_line 'zeroout /dev/vda:')" OK "write-zeroes ($variant)"
	assert_eq "$(vub_guest_line 'flush /dev/vda:')" OK "flush ($variant)"
	assert_eq "$(vub_guest_line zeroes)" OK "zeroes read back ($variant)"
	grep -q "GUEST: done" "$T/guest.out" || fail "guest did not finish ($variant)"
	# the guest's pattern is in the image
	want=$(vub_guest_line md5)
	got=$(dd if="$T/img" bs=1M skip=1 count=4 status=none | md5sum | cut -d' ' -f1)
	assert_eq "$got" "$want" "image contents after the guest wrote ($variant)"
	dd if="$T/img" bs=1M skip=9 count=1 status=none | cmp -s - <(head -c 1M /dev/zero) ||
		fail "write-zeroes range not zero in the image ($variant)"
	want_packed=0
	[ $variant = packed ] && want_packed=1
	tail -n +"$((logline + 1))" "$BD_LOG" | grep -q "queue 1: start .* packed=$want_packed" ||
		fail "queue 1 did not run with packed=$want_packed"
done
bd_stop
