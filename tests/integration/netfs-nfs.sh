#!/bin/bash
# netfs-nfs.sh: a netfs pool with <format type='nfs'/> against nfs-ganesha, with no kernel
# mount: define/start, refresh lists the export's files (formats probed: raw, qcow2, a dynamic
# vpc, a fixed one as raw, a hostile qcow2 header; hidden files and directories left out), vol create (raw,
# qcow2), resize, wipe, delete, each checked on the server's directory; a volume opened as a
# node and written through NBD; qemu-img check of a qcow2 volume; in-use refusals;
# find-storage-pool-sources lists the exports; a pool whose export does not exist fails to
# start.
# meson-suite: slow
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
source "$(dirname "$0")/../lib/nfs.sh"
need qemu-io qemu-img cmp python3
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
_bd_need_blockd
"$BLOCKD" --blockdev driver=nfs,node-name=x 2>&1 | grep -q "Unknown driver" && skip "blockd built without libnfs"
nfs_setup
E=$NFS_EXPORT_DIR

head -c $((1 << 20)) /dev/urandom >"$E/a.raw"
truncate -s 8M "$E/a.raw"
qemu-img create -q -f qcow2 "$E/b.qcow2" 16M
echo hidden >"$E/.hidden"
mkdir "$E/subdir"

bd_start --control "$T/c.sock" --state-dir "$T/state" --nbd-server addr.type=unix,addr.path="$T/s"
bc() { "$BLOCKCTL" --socket "$T/c.sock" "$@"; }
cat >"$T/pool.xml" <<EOF
<pool type='netfs'>
  <name>np</name>
  <source>
    <host name='$NFS_HOST'/>
    <dir path='$NFS_EXPORT'/>
    <format type='nfs'/>
  </source>
  <target><path>$T/target</path></target>
</pool>
EOF
out=$(bc pool-define "$T/pool.xml" 2>&1) || fail "pool-define: $out"
out=$(bc pool-start np 2>&1) || fail "pool-start: $out"
bc pool-info np >"$T/info"
assert_contains "$(cat "$T/info")" "running"
assert_not_exists "$T/target" # nothing is mounted, nothing is created
assert_contains "$(bc pool-capabilities)" "<pool type='netfs' supported='yes'>"
xml=$(bc pool-dumpxml np)
assert_contains "$xml" "<format type='nfs'/>"
assert_contains "$xml" "<path>$T/target</path>"

# refresh: the export's files
list=$(bc vol-list np)
assert_contains "$list" "a.raw"
assert_contains "$list" "nfs://$NFS_HOST$NFS_EXPORT/a.raw"
assert_contains "$list" "b.qcow2"
assert_not_contains "$list" "hidden"
assert_not_contains "$list" "subdir"
bc vol-info --pool np b.qcow2 --bytes >"$T/vi"
assert_contains "$(cat "$T/vi")" "qcow2"
assert_contains "$(cat "$T/vi")" "16777216"
truncate -s 4M "$E/late.raw"
out=$(bc pool-refresh np 2>&1) || fail "pool-refresh: $out"
assert_contains "$(bc vol-list np)" "late.raw"
rm "$E/late.raw"
bc pool-refresh np >/dev/null
assert_not_contains "$(bc vol-list np)" "late.raw"

# the probe over NFS (pools/vol-probe.c): a dynamic VHD is known by its header, a fixed one
# (only a footer in its last sector) is raw, as QEMU probes it; a qcow2 header extension of
# length 0xFFFFFFF8 (which looped the dir pools' refresh before) is listed promptly as qcow2
qemu-img create -q -f vpc "$E/f.vpc" 8M
qemu-img create -q -f vpc -o subformat=fixed "$E/g.vpc" 8M
cp "$E/b.qcow2" "$E/wrap.img"
python3 - "$E/wrap.img" <<'PY'
import struct, sys
with open(sys.argv[1], "r+b") as f:
    hlen = struct.unpack(">I", f.read(104)[100:104])[0]
    f.seek(hlen); f.write(struct.pack(">II", 0x12345678, 0xFFFFFFF8))
PY
out=$(timeout 30 "$BLOCKCTL" --socket "$T/c.sock" pool-refresh np 2>&1) || fail "pool-refresh: $out"
vsize=$(qemu-img info -f vpc --output=json "$E/f.vpc" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
fmt_cap() {
	bc qmp vol-info "{\"pool\":\"np\",\"vol\":\"$1\"}" |
		python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("return",d); print(d["format"], d["capacity"])'
}
assert_eq "$(fmt_cap f.vpc)" "vpc $vsize"
assert_eq "$(fmt_cap g.vpc)" "raw $(stat -c %s "$E/g.vpc")"
assert_eq "$(fmt_cap wrap.img)" "qcow2 16777216"
assert_eq "$(fmt_cap b.qcow2)" "qcow2 16777216"
assert_eq "$(fmt_cap a.raw)" "raw 8388608"
rm "$E/f.vpc" "$E/g.vpc" "$E/wrap.img"
bc pool-refresh np >/dev/null

# create raw and qcow2
out=$(bc vol-create-as np v1 32M 2>&1) || fail "vol-create-as raw: $out"
assert_eq "$(stat -c %s "$E/v1")" $((32 << 20)) "raw volume size on the server"
out=$(bc vol-create-as np q1 64M --format qcow2 2>&1) || fail "vol-create-as qcow2: $out"
assert_contains "$(qemu-img info "$E/q1")" "file format: qcow2"
assert_contains "$(qemu-img info "$E/q1")" "64 MiB"
assert_ok qemu-img check -q "$E/q1"
out=$(bc vol-create-as np v1 1M 2>&1) && fail "duplicate volume created: $out"
assert_contains "$out" "already exists"
assert_contains "$(bc vol-path --pool np q1)" "nfs://$NFS_HOST$NFS_EXPORT/q1"

# resize
out=$(bc vol-resize --pool np v1 48M 2>&1) || fail "vol-resize raw: $out"
assert_eq "$(stat -c %s "$E/v1")" $((48 << 20)) "raw volume size after resize"
out=$(bc vol-resize --pool np q1 96M 2>&1) || fail "vol-resize qcow2: $out"
assert_contains "$(qemu-img info "$E/q1")" "96 MiB"
assert_ok qemu-img check -q "$E/q1"

# open as nodes, write through NBD, read back on the server
out=$(bc vol-export v1 --pool np --name v1 --writable 2>&1) || fail "vol-export v1: $out"
out=$(bc vol-export q1 --pool np --node-name qn --name q1 --writable 2>&1) || fail "vol-export q1: $out"
head -c $((2 << 20)) /dev/urandom >"$T/r"
out=$(qemu-io -f raw -c "write -s $T/r 40M 2M" -c flush "$(bd_nbd_unix_uri "$T/s" v1)" 2>&1) ||
	fail "$out"
cmp -n $((2 << 20)) "$T/r" <(dd if="$E/v1" bs=1M skip=40 count=2 status=none) ||
	fail "the server's file lacks the bytes written through the volume"
out=$(qemu-io -f raw -c "write -P 0x6b 90M 1M" -c flush "$(bd_nbd_unix_uri "$T/s" q1)" 2>&1) ||
	fail "$out"
out=$(bc vol-delete --pool np v1 2>&1) && fail "deleted an exported volume"
assert_contains "$out" "in use"
out=$(bc vol-wipe --pool np q1 2>&1) && fail "wiped an exported volume"
assert_contains "$out" "in use"
out=$(bc pool-destroy np 2>&1) && fail "destroyed a pool with an open volume"
"$BLOCKCTL" --socket "$T/c.sock" qmp block-export-del '{"id": "q1"}' >/dev/null
"$BLOCKCTL" --socket "$T/c.sock" qmp block-export-del '{"id": "v1"}' >/dev/null
for n in qn v1; do # the exports let go of their nodes once their clients are gone
	for i in $(seq 1 50); do
		out=$("$BLOCKCTL" --socket "$T/c.sock" qmp blockdev-del "{\"node-name\": \"$n\"}" 2>&1) &&
			break
		sleep 0.1
	done
	[ "$i" -lt 50 ] || fail "blockdev-del $n: $out"
done
assert_ok qemu-img check -q "$E/q1"
out=$(qemu-io -f qcow2 -r -c "read -P 0x6b 90M 1M" "$E/q1" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"

# wipe
out=$(bc vol-wipe --pool np v1 2>&1) || fail "vol-wipe raw: $out"
assert_eq "$(stat -c %s "$E/v1")" $((48 << 20)) "raw volume size after wipe"
cmp -n $((48 << 20)) /dev/zero "$E/v1" || fail "the wiped raw volume is not zero"
out=$(bc vol-wipe --pool np q1 2>&1) || fail "vol-wipe qcow2: $out"
assert_ok qemu-img check -q "$E/q1"
assert_contains "$(qemu-img info "$E/q1")" "96 MiB"
out=$(qemu-io -f qcow2 -r -c "read -P 0 90M 1M" "$E/q1" 2>&1) || fail "$out"
assert_not_contains "$out" "Pattern verification failed"
out=$(bc vol-wipe --pool np a.raw --algorithm random 2>&1) || fail "vol-wipe random: $out"
[ "$(head -c 1M "$E/a.raw" | tr -d '\0' | wc -c)" -gt 1000000 ] || fail "random wipe left zeroes"

# upload and download go through an nfs node (no local file to open)
head -c 300000 /dev/urandom >"$T/up.bin"
out=$(bc vol-upload --pool np v1 - --offset 4096 <"$T/up.bin" 2>&1) || fail "vol-upload: $out"
cmp -n 300000 "$T/up.bin" <(tail -c +4097 "$E/v1") || fail "uploaded bytes differ on the server"
bc vol-download --pool np v1 - --offset 4096 --length 300000 | cat >"$T/down.bin"
cmp "$T/up.bin" "$T/down.bin" || fail "downloaded bytes differ"
out=$(head -c 60M /dev/zero | bc vol-upload --pool np v1 - 2>&1) && fail "an upload past the end succeeded"
assert_contains "$out" "past the end"

# delete
out=$(bc vol-delete --pool np v1 2>&1) || fail "vol-delete: $out"
assert_not_exists "$E/v1"
assert_not_contains "$(bc vol-list np)" " v1 "

# find-storage-pool-sources: the server's exports
"$BLOCKCTL" --socket "$T/c.sock" qmp find-storage-pool-sources \
	"{\"type\": \"netfs\", \"spec\": \"<source><host name='$NFS_HOST'/></source>\"}" >"$T/fs" 2>&1 ||
	fail "find-storage-pool-sources: $(cat "$T/fs")"
assert_contains "$(cat "$T/fs")" "<dir path='/export'/>"
assert_contains "$(cat "$T/fs")" "<format type='nfs'/>"
out=$("$BLOCKCTL" --socket "$T/c.sock" qmp find-storage-pool-sources '{"type": "netfs"}' 2>&1) &&
	fail "find-storage-pool-sources without a host: $out"
assert_contains "$out" "needs a source spec"

# a pool whose export does not exist (and without <format>: NFS is the default netfs format)
sed -e "s|<name>np</name>|<name>bad</name>|" -e "s|<dir path='$NFS_EXPORT'/>|<dir path='/nope'/>|" \
	-e "s|$T/target|$T/target2|" -e "/<format type='nfs'/d" "$T/pool.xml" >"$T/bad.xml"
bc pool-define "$T/bad.xml" >/dev/null
out=$(bc pool-start bad 2>&1) && fail "a pool on a missing export started"
assert_contains "$out" "Could not mount NFS export '$NFS_HOST:/nope'"

out=$(bc pool-destroy np 2>&1) || fail "pool-destroy: $out"
out=$(bc pool-undefine np 2>&1) || fail "pool-undefine: $out"
bd_stop
echo ok
