#!/bin/bash
# meson-suite: slow
# meson-timeout: 300
# A read-only vhost-user-blk export (writable=off, the default) with 4 KiB logical blocks: the
# QEMU guest sees a read-only disk with 4 KiB blocks, reads the image's data, and a write fails.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
vub_guest_need

cat >"$T/test.sh" <<'GUEST'
d=vda
echo "GUEST: ro $(cat /sys/block/$d/ro)"
echo "GUEST: lbs $(cat /sys/block/$d/queue/logical_block_size)"
echo "GUEST: md5 $(dd if=/dev/$d bs=1M count=2 iflag=direct 2>/dev/null | md5sum | cut -d' ' -f1)"
dd if=/dev/zero of=/dev/$d bs=4k count=1 oflag=direct 2>/dev/null && echo "GUEST: write OK" || echo "GUEST: write failed"
GUEST
vub_guest_build "$T/test.sh"

bd_random_file "$T/img" 8192
bd_start --blockdev driver=file,node-name=f,filename="$T/img",read-only=on \
	--export type=vhost-user-blk,id=v,node-name=f,addr.type=unix,addr.path="$T/vub.sock",logical-block-size=4096
vub_guest_run "$T/vub.sock" 1
assert_eq "$(vub_guest_line ro)" 1 "guest read-only flag"
assert_eq "$(vub_guest_line lbs)" 4096 "logical block size"
assert_eq "$(vub_guest_line md5)" "$(head -c 2M "$T/img" | md5sum | cut -d' ' -f1)" "data read"
assert_eq "$(vub_guest_line write)" failed "write to a read-only disk"
bd_stop
