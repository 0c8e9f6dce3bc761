#!/bin/bash
# netfs-gluster.sh - a netfs pool with <format type='glusterfs'/>: build makes the target, start
# FUSE-mounts the gluster volume there, volumes are files of the mount (and of the brick), raw
# and qcow2 volumes are created, written through an export, deleted; destroy unmounts, delete
# removes the target; a restart with autostart mounts it again.
# meson-suite: slow
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/gluster.sh"
need nbdcopy qemu-img mount umount
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/c.sock
bc() { "$BLOCKCTL" "$@"; }
start() { bd_start --state-dir "$T/var" --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$T/s"; }
is_mounted() { grep -q " $T/mnt fuse.glusterfs " /proc/self/mounts; }

gl_start
gl_volume gvn
BRICK=$GL_DIR/bricks/gvn
GL_MOUNTS+=("$T/mnt") # unmounted at exit whatever happens

start
cat >"$T/np.xml" <<-XML
	<pool type='netfs'>
	  <name>np</name>
	  <source>
	    <host name='127.0.0.1'/>
	    <dir path='/gvn'/>
	    <format type='glusterfs'/>
	  </source>
	  <target><path>$T/mnt</path></target>
	</pool>
XML
bc pool-define "$T/np.xml" >/dev/null
assert_eq "$(bc pool-build np)" "Pool np built"
assert_exists "$T/mnt"
assert_eq "$(bc pool-start np)" "Pool np started"
is_mounted || fail "the volume is not mounted on $T/mnt"

# volumes are files of the mount, and of the brick
bc vol-create-as np v1 32M >/dev/null
bc vol-create-as np q1 16M --format qcow2 >/dev/null
assert_eq "$(stat -c %s "$T/mnt/v1")" 33554432 "raw volume in the mount"
assert_eq "$(stat -c %s "$BRICK/v1")" 33554432 "raw volume on the brick"
qemu-img check "$BRICK/q1" >/dev/null || fail "qemu-img check of the qcow2 volume"
list=$(bc vol-list np)
assert_contains "$list" "$T/mnt/v1"
assert_contains "$list" "$T/mnt/q1"
# a file made by someone else on the volume shows up after a refresh
head -c 1048576 /dev/zero >"$T/mnt/other.img"
bc pool-refresh np >/dev/null
assert_contains "$(bc vol-list np)" "other.img"

# data through an export reaches the brick
bc vol-export v1 --pool np --node-name n1 --name v1 --writable >/dev/null
bd_random_file "$T/in" 4096
nbdcopy --flush "$T/in" "$(bd_nbd_unix_uri "$T/s" v1)"
assert_eq "$(cmp -n 4194304 "$T/in" "$BRICK/v1" && echo same)" same "data on the brick"
assert_fails bc pool-destroy np
assert_contains "$BD_OUT" "in use"
bc export-del v1 >/dev/null
bc node-del n1 >/dev/null

bc vol-resize v1 48M --pool np >/dev/null
assert_eq "$(stat -c %s "$BRICK/v1")" 50331648 "raw volume after resize"
bc vol-delete q1 --pool np >/dev/null
assert_not_exists "$BRICK/q1" "$T/mnt/q1"

# autostart: after a restart (and an unmount) the pool is mounted again
bc pool-autostart np >/dev/null
bd_stop
umount "$T/mnt"
start
is_mounted || fail "the autostart pool was not mounted again"
assert_contains "$(bc vol-list np)" "v1"

assert_eq "$(bc pool-destroy np)" "Pool np destroyed"
! is_mounted || fail "still mounted after pool-destroy"
rm -f "$T/mnt"/* 2>/dev/null || true
assert_eq "$(bc pool-delete np)" "Pool np deleted"
assert_not_exists "$T/mnt"
bc pool-undefine np >/dev/null
bd_stop
