#!/bin/bash
# gluster-pool.sh - a gluster pool (libvirt's <pool type='gluster'>) on a real glusterd: start
# connects and lists the volume's files, raw and qcow2 volumes are created (on the brick, as
# qemu-img sees them), listed, resized, opened and exported with their data landing on the
# brick, refused deletion while in use, wiped and deleted; destroy and undefine.
# meson-suite: slow
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/gluster.sh"
need nbdcopy nbdinfo qemu-img python3
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/c.sock
bc() { "$BLOCKCTL" "$@"; }

gl_start
gl_volume gvp
BRICK=$GL_DIR/bricks/gvp

bd_start --state-dir "$T/var" --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$T/s"
bc pool-capabilities | grep -q "<pool type='gluster' supported='yes'>" ||
	fail "gluster pools not supported by this build"

cat >"$T/gp.xml" <<-XML
	<pool type='gluster'>
	  <name>gp</name>
	  <source>
	    <host name='127.0.0.1'/>
	    <dir path='/'/>
	    <name>gvp</name>
	  </source>
	</pool>
XML
bc pool-define "$T/gp.xml" >/dev/null
assert_eq "$(bc pool-start gp)" "Pool gp started"
assert_contains "$(bc pool-list)" " gp "

# create: raw and qcow2, both on the brick
bc vol-create-as gp v1 64M >/dev/null
bc vol-create-as gp q1 32M --format qcow2 >/dev/null
assert_eq "$(stat -c %s "$BRICK/v1")" 67108864 "raw volume on the brick"
assert_contains "$(qemu-img info "$BRICK/q1")" "virtual size: 32 MiB" "qcow2 volume on the brick"
qemu-img check "$BRICK/q1" >/dev/null || fail "qemu-img check of the new qcow2 volume"
list=$(bc vol-list gp)
assert_contains "$list" "gluster://127.0.0.1:24007/gvp/v1"
assert_contains "$list" "gluster://127.0.0.1:24007/gvp/q1"
assert_fails bc vol-create-as gp v1 1M
assert_contains "$BD_OUT" "already exists"

# a file that appears in the volume is listed after a refresh
bc qmp blockdev-create '{"job-id":"c1","options":{"driver":"gluster","location":{"volume":"gvp","path":"/ext.img","server":[{"type":"inet","host":"127.0.0.1"}]},"size":1048576}}' >/dev/null
for i in $(seq 100); do [[ "$(bc qmp query-jobs)" == *concluded* ]] && break; sleep 0.1; done
bc qmp job-dismiss '{"id":"c1"}' >/dev/null
bc pool-refresh gp >/dev/null
assert_contains "$(bc vol-list gp)" " ext.img "

# resize
bc vol-resize v1 96M --pool gp >/dev/null
assert_eq "$(stat -c %s "$BRICK/v1")" 100663296 "raw volume after resize"
bc vol-resize q1 64M --pool gp >/dev/null
assert_contains "$(qemu-img info "$BRICK/q1")" "virtual size: 64 MiB" "qcow2 volume after resize"
assert_contains "$(bc vol-info q1 --pool gp --bytes)" "67108864"

# open and export: data goes to the brick
bc vol-export v1 --pool gp --node-name n1 --name v1 --writable >/dev/null
bd_random_file "$T/in" 8192
nbdcopy --flush "$T/in" "$(bd_nbd_unix_uri "$T/s" v1)"
nbdcopy "$(bd_nbd_unix_uri "$T/s" v1)" "$T/out"
assert_eq "$(cmp -n 8388608 "$T/in" "$T/out" && echo same)" same "data through the volume's export"
assert_eq "$(cmp -n 8388608 "$T/in" "$BRICK/v1" && echo same)" same "data on the brick"
bc vol-export q1 --pool gp --node-name nq --name q1 --writable >/dev/null
nbdcopy --flush "$T/in" "$(bd_nbd_unix_uri "$T/s" q1)"
nbdcopy "$(bd_nbd_unix_uri "$T/s" q1)" "$T/outq"
assert_eq "$(cmp -n 8388608 "$T/in" "$T/outq" && echo same)" same "data through the qcow2 volume"

# in use: no delete, wipe or destroy
assert_fails bc vol-delete v1 --pool gp
assert_contains "$BD_OUT" "in use"
assert_fails bc pool-destroy gp
assert_contains "$BD_OUT" "in use"
bc export-del v1 >/dev/null
bc export-del q1 >/dev/null
bc node-del n1 >/dev/null
bc node-del nq >/dev/null
qemu-img check "$BRICK/q1" >/dev/null || fail "qemu-img check after writes"
qemu-img compare -f qcow2 -F raw "$BRICK/q1" "$T/in" >/dev/null 2>&1 ||
	[ "$(qemu-img convert -O raw "$BRICK/q1" "$T/q1.raw" && cmp -n 8388608 "$T/in" "$T/q1.raw" && echo same)" = same ] ||
	fail "qcow2 volume content on the brick"

# wipe (zero) and delete
bc vol-wipe v1 --pool gp >/dev/null
assert_eq "$(cmp -n 100663296 "$BRICK/v1" /dev/zero && echo zero)" zero "wiped volume reads zeroes"
for v in v1 q1 ext.img; do bc vol-delete "$v" --pool gp >/dev/null; done
assert_not_exists "$BRICK/v1" "$BRICK/q1" "$BRICK/ext.img"
assert_not_contains "$(bc vol-list gp)" "v1"

assert_eq "$(bc pool-destroy gp)" "Pool gp destroyed"
bc pool-undefine gp >/dev/null

# a pool without a volume name is refused
sed -e '/<name>gvp/d' "$T/gp.xml" >"$T/bad.xml"
assert_fails bc pool-create "$T/bad.xml"
assert_contains "$BD_OUT" "source><name>"
bd_stop
