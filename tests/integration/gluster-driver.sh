#!/bin/bash
# gluster-driver.sh - the gluster protocol driver against a real glusterd: blockdev-create makes
# the image, the node (URI and QEMU's server-list form) is exported over NBD, data written there
# is read back and found on the brick, write-zeroes and discard read as zeroes, block_resize
# grows the file, option and connection errors are clear, and the daemon exits promptly (no
# glfs_fini wait).
# meson-suite: slow
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/gluster.sh"
need nbdcopy nbdinfo qemu-io python3
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/c.sock
bc() { "$BLOCKCTL" "$@"; }
URI() { bd_nbd_unix_uri "$T/s" "$1"; }

gl_start
gl_volume gvd
BRICK=$GL_DIR/bricks/gvd

bd_start --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$T/s"

# blockdev-create: a 64 MiB image in the volume
SRV='[{"type":"inet","host":"127.0.0.1","port":"24007"}]'
bc qmp blockdev-create "{\"job-id\":\"c1\",\"options\":{\"driver\":\"gluster\",\"location\":{\"volume\":\"gvd\",\"path\":\"/d.img\",\"server\":$SRV},\"size\":67108864}}" >/dev/null
for i in $(seq 100); do
	st=$(bc qmp query-jobs)
	[[ "$st" == *concluded* ]] && break
	sleep 0.1
done
assert_contains "$st" concluded "blockdev-create job"
assert_not_contains "$st" error "blockdev-create job"
bc qmp job-dismiss '{"id":"c1"}' >/dev/null
assert_eq "$(stat -c %s "$BRICK/d.img")" 67108864 "size of the created file on the brick"

# open with the server list (as QEMU's -blockdev) and export it
bc qmp blockdev-add "{\"driver\":\"gluster\",\"node-name\":\"g0\",\"volume\":\"gvd\",\"path\":\"d.img\",\"server\":$SRV,\"discard\":\"unmap\",\"timeout\":10,\"block-status\":true}" >/dev/null
bc export-add type=nbd,id=e0,node-name=g0,name=disk,writable=on >/dev/null
assert_eq "$(nbdinfo --size "$(URI disk)")" 67108864 "export size"

# data: 16 MiB of random bytes in and out, and on the brick after a flush
bd_random_file "$T/in" 16384
nbdcopy --flush "$T/in" "$(URI disk)"
nbdcopy "$(URI disk)" "$T/out"
assert_eq "$(cmp -n 16777216 "$T/in" "$T/out" && echo same)" same "data read back through NBD"
assert_eq "$(cmp -n 16777216 "$T/in" "$BRICK/d.img" && echo same)" same "data on the brick"

# block status: the written part is data, the rest of the sparse file a hole (when the brick's
# file system has SEEK_DATA)
map=$(nbdinfo --map "$(URI disk)")
echo "$map"
assert_match "$(echo "$map" | head -1)" "^ +0 +16777216 +0 +data" "first extent"
if ! echo "$map" | grep -q "hole"; then
	echo "note: the brick's file system reports no holes"
fi

# write-zeroes and discard (discard=unmap: the brick punches a hole)
out=$(qemu-io -f raw -c "write -P 0x5a 20M 4M" -c "write -z 20M 1M" -c "discard 22M 1M" \
	-c "read -P 0 20M 1M" -c "read -P 0x5a 21M 1M" -c "read -P 0 22M 1M" \
	-c "read -P 0x5a 23M 1M" -c flush "$(URI disk)" 2>&1)
assert_not_contains "$out" "failed" "qemu-io write-zeroes/discard/read"
assert_not_contains "$out" "error" "qemu-io write-zeroes/discard/read"
assert_eq "$(cmp -n 16777216 "$T/in" "$BRICK/d.img" && echo same)" same "data untouched elsewhere"

# block_resize grows the file on the brick, and the NBD export sees it
bc node-resize g0 128M >/dev/null
assert_eq "$(stat -c %s "$BRICK/d.img")" 134217728 "file size after block_resize"
assert_eq "$(nbdinfo --size "$(URI disk)")" 134217728 "export size after resize"
out=$(qemu-io -f raw -c "write -P 0x77 120M 1M" -c "read -P 0x77 120M 1M" "$(URI disk)" 2>&1)
assert_not_contains "$out" "failed" "I/O past the old end"

# the URI form opens the same file (shared connection)
bc node-add driver=gluster,node-name=g1,filename=gluster://127.0.0.1/gvd/d.img,read-only=on >/dev/null
assert_contains "$(bc node-list)" "g1"
bc export-add type=nbd,id=e1,node-name=g1,name=ro >/dev/null
nbdcopy "$(URI ro)" "$T/out2"
assert_eq "$(cmp -n 16777216 "$T/in" "$T/out2" && echo same)" same "read through the URI node"

# glusterd's unix socket as the volfile server (both spellings)
if [ -S /var/run/glusterd.socket ]; then
	bc node-add driver=gluster,node-name=u1,read-only=on,filename='gluster+unix:///gvd/d.img?socket=/var/run/glusterd.socket' >/dev/null
	bc qmp blockdev-add '{"driver":"gluster","node-name":"u2","read-only":true,"volume":"gvd","path":"/d.img","server":[{"type":"unix","path":"/var/run/glusterd.socket"}]}' >/dev/null
	assert_contains "$(bc node-list)" "u2"
	bc node-del u1 >/dev/null
	bc node-del u2 >/dev/null
fi

# errors name the cause
assert_fails bc node-add driver=gluster,node-name=b1,path=/x
assert_contains "$BD_OUT" "volume"
assert_fails bc node-add driver=gluster,node-name=b2,filename=gluster://127.0.0.1/gvd
assert_contains "$BD_OUT" "path"
assert_fails bc node-add driver=gluster,node-name=b3,filename=gluster://127.0.0.1/nosuchvol/x.img
assert_contains "$BD_OUT" "nosuchvol"
assert_fails bc node-add driver=gluster,node-name=b4,filename=gluster://127.0.0.1/gvd/missing.img
assert_contains "$BD_OUT" "missing.img"
assert_fails bc qmp blockdev-add "{\"driver\":\"gluster\",\"node-name\":\"b5\",\"volume\":\"gvd\",\"path\":\"d.img\",\"server\":[{\"type\":\"inet\",\"host\":\"127.0.0.1\",\"bogus\":1}]}"
assert_contains "$BD_OUT" "server.0.bogus"

# shutdown does not wait for glfs_fini (about 10 s each with Debian's gfapi)
bc export-del e1 >/dev/null
bc node-del g1 >/dev/null
t0=$(date +%s%N)
bd_stop
t1=$(date +%s%N)
ms=$(((t1 - t0) / 1000000))
echo "shutdown took $ms ms"
[ "$ms" -lt 8000 ] || fail "blockd took $ms ms to exit"
