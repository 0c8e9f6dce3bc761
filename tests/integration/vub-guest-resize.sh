#!/bin/bash
# meson-suite: slow
# meson-timeout: 300
# Resizing the exported node (QMP block_resize) is announced to the QEMU guest over the vhost-user
# back-end channel (CONFIG_CHANGE_MSG); the guest sees the new capacity and can use it.
source "$(dirname "$0")/../lib/common.sh"
source "$SRC_DIR/tests/vub/guest-lib.sh"
vub_guest_need
need python3

cat >"$T/test.sh" <<'GUEST'
d=vda
s0=$(cat /sys/block/$d/size)
echo "GUEST: size0 $s0"
n=0
while [ "$(cat /sys/block/$d/size)" = "$s0" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done
echo "GUEST: size1 $(cat /sys/block/$d/size)"
dd if=/dev/urandom of=/tmp/p bs=1M count=1 2>/dev/null
dd if=/tmp/p of=/dev/$d bs=1M count=1 seek=100 oflag=direct 2>/dev/null && echo "GUEST: write beyond old end OK" || echo "GUEST: write beyond old end FAILED"
echo "GUEST: md5 $(md5sum < /tmp/p | cut -d' ' -f1)"
GUEST
vub_guest_build "$T/test.sh"

qmp()
{
	python3 - "$T/qmp.sock" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
json.loads(f.readline())
for cmd in ('{"execute":"qmp_capabilities"}', sys.argv[2]):
    f.write(cmd + "\n"); f.flush()
    while True:
        r = json.loads(f.readline())
        if 'event' not in r: break
    if 'error' in r: print(json.dumps(r)); sys.exit(1)
print(json.dumps(r))
PY
}

bd_sparse_image "$T/img" 64M
bd_start --chardev socket,id=m,path="$T/qmp.sock",server=on,wait=off --monitor chardev=m \
	--blockdev driver=file,node-name=f,filename="$T/img" \
	--blockdev driver=raw,node-name=r,file=f \
	--export type=vhost-user-blk,id=v,node-name=r,addr.type=unix,addr.path="$T/vub.sock",writable=on
[ -S "$T/qmp.sock" ] || skip "this blockd has no QMP monitor (needed for block_resize)"

vub_guest_start "$T/vub.sock" 1
bd_wait_for 120 grep -aq "GUEST: size0" "$T/guest.log"
qmp '{"execute":"block_resize","arguments":{"node-name":"r","size":134217728}}'
vub_guest_wait
assert_eq "$(vub_guest_line size0)" 131072 "size before"
assert_eq "$(vub_guest_line size1)" 262144 "size after the resize"
assert_eq "$(vub_guest_line 'write beyond old end')" OK "write beyond the old end"
got=$(dd if="$T/img" bs=1M skip=100 count=1 status=none | md5sum | cut -d' ' -f1)
assert_eq "$got" "$(vub_guest_line md5)" "data beyond the old end in the image"
assert_eq "$(stat -c %s "$T/img")" 134217728 "image size"
bd_stop
