#!/bin/bash
# qcow2-create-extl2.sh - blockdev-create with extended-l2 (subclusters): plain, with
# preallocation=metadata over a backing file, and the refusals QEMU makes (v2, small
# clusters).  qemu-img finds the images clean with "extended l2: true"; data written through a
# blockd NBD export reads back, and unwritten subclusters of a preallocated image still show
# the backing file.
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io
bd_tmpdir
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q() { "$BLOCKCTL" --socket "$T/c" qmp "$@"; }

# create ID OPTIONS: run blockdev-create; prints the concluded job (with its error, if any)
create()
{
	local id=$1 opts=$2 n st
	q blockdev-create "{\"job-id\": \"$id\", \"options\": $opts}" >/dev/null
	for ((n = 0; n < 100; n++)); do
		st=$(q query-jobs '{}')
		[[ "$st" == *concluded* ]] && break
		sleep 0.1
	done
	q job-dismiss "{\"id\": \"$id\"}" >/dev/null
	echo "$st"
}

qemu-img create -q -f raw "$T/base.raw" 4M
qemu-io -f raw -c 'write -P 0x61 0 4M' "$T/base.raw" >/dev/null
touch "$T/a.qcow2" "$T/b.qcow2" "$T/c.qcow2"
bd_start --control "$T/c" --nbd-server addr.type=unix,addr.path="$T/s"
for x in a b c; do
	q blockdev-add "{\"driver\": \"file\", \"node-name\": \"f$x\", \"filename\": \"$T/$x.qcow2\"}" >/dev/null
done

st=$(create ja '{"driver": "qcow2", "file": "fa", "size": 8388608, "extended-l2": true}')
assert_not_contains "$st" '"error"'
st=$(create jb '{"driver": "qcow2", "file": "fb", "size": 4194304, "extended-l2": true, "cluster-size": 65536, "preallocation": "metadata", "backing-file": "base.raw", "backing-fmt": "raw"}')
assert_not_contains "$st" '"error"'
st=$(create jc '{"driver": "qcow2", "file": "fc", "size": 4194304, "extended-l2": true, "version": "v2"}')
assert_contains "$st" "compatibility level 1.1"
st=$(create jd '{"driver": "qcow2", "file": "fc", "size": 4194304, "extended-l2": true, "cluster-size": 4096}')
assert_contains "$st" "at least 16384"

q blockdev-add '{"driver": "qcow2", "node-name": "qa", "file": "fa"}' >/dev/null
q blockdev-add '{"driver": "qcow2", "node-name": "qb", "file": "fb"}' >/dev/null
q block-export-add '{"type": "nbd", "id": "ea", "node-name": "qa", "writable": true}' >/dev/null
q block-export-add '{"type": "nbd", "id": "eb", "node-name": "qb", "writable": true}' >/dev/null
qemu-io -f raw -c 'write -P 0x71 3000 5000' -c 'write -P 0x72 1M 1000' "$(bd_nbd_unix_uri "$T/s" qa)" >/dev/null
qemu-io -f raw -c 'write -P 0x73 70000 4096' "$(bd_nbd_unix_uri "$T/s" qb)" >/dev/null
for e in ea eb; do q block-export-del "{\"id\": \"$e\"}" >/dev/null; done
sleep 0.3
for n in qa qb fa fb; do q blockdev-del "{\"node-name\": \"$n\"}" >/dev/null; done

for x in a b; do
	qemu-img check -q "$T/$x.qcow2" || fail "$x.qcow2 is not clean"
	assert_contains "$(qemu-img info "$T/$x.qcow2")" "extended l2: true"
done
out=$(qemu-io -f qcow2 -r -c 'read -P 0x71 3000 5000' -c 'read -P 0 8000 100000' \
	-c 'read -P 0x72 1M 1000' "$T/a.qcow2")
assert_not_contains "$out" "verification failed"
# b: the written subcluster is new data, the rest of its cluster and the other (preallocated)
# clusters still read the backing file
out=$(qemu-io -f qcow2 -r -c 'read -P 0x61 0 70000' -c 'read -P 0x73 70000 4096' \
	-c 'read -P 0x61 74096 1000000' -c 'read -P 0x61 3M 1M' "$T/b.qcow2")
assert_not_contains "$out" "verification failed"
assert_contains "$(qemu-img map --output=json "$T/b.qcow2")" '"data": true'
echo "ok"
