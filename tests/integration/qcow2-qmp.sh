#!/bin/bash
# qcow2-qmp.sh - qcow2 through the control socket: blockdev-create jobs (v3 with options, v2,
# a backing file), blockdev-add of the new image, writes through NBD, block_resize (grow past
# the L1 table's reach), query-named-block-nodes (format-specific data, snapshots); QEMU then
# finds every image clean, with the expected options and data.
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io
bd_tmpdir
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
q()
{
	"$BLOCKCTL" --socket "$T/c" qmp "$@"
}

# create_job ID OPTIONS-JSON: run blockdev-create and wait for the job to conclude without error
create_job()
{
	local id=$1 opts=$2 n st
	q blockdev-create "{\"job-id\": \"$id\", \"options\": $opts}" >/dev/null
	for ((n = 0; n < 100; n++)); do
		st=$(q query-jobs '{}')
		if [[ "$st" == *"\"$id\""*concluded* ]] || [[ "$st" == *concluded*"\"$id\""* ]]; then
			break
		fi
		sleep 0.1
	done
	[[ "$st" == *concluded* ]] || fail "job $id did not conclude: $st"
	[[ "$st" != *'"error"'* ]] || fail "job $id failed: $st"
	q job-dismiss "{\"id\": \"$id\"}" >/dev/null
}

touch "$T/a.qcow2" "$T/b.qcow2" "$T/c.qcow2"
qemu-img create -q -f raw "$T/base.raw" 2M
qemu-io -f raw -c 'write -P 0x61 0 2M' "$T/base.raw" >/dev/null
bd_start --control "$T/c" --nbd-server addr.type=unix,addr.path="$T/s"
q blockdev-add "{\"driver\": \"file\", \"node-name\": \"fa\", \"filename\": \"$T/a.qcow2\"}" >/dev/null
q blockdev-add "{\"driver\": \"file\", \"node-name\": \"fb\", \"filename\": \"$T/b.qcow2\"}" >/dev/null
q blockdev-add "{\"driver\": \"file\", \"node-name\": \"fc\", \"filename\": \"$T/c.qcow2\"}" >/dev/null
create_job ja '{"driver": "qcow2", "file": "fa", "size": 1048576, "cluster-size": 512, "refcount-bits": 8, "lazy-refcounts": true}'
create_job jb '{"driver": "qcow2", "file": "fb", "size": 8388608, "version": "v2"}'
create_job jc '{"driver": "qcow2", "file": "fc", "size": 4194304, "backing-file": "base.raw", "backing-fmt": "raw"}'
# an invalid one fails with QEMU's message
q blockdev-create '{"job-id": "jx", "options": {"driver": "qcow2", "file": "fa", "size": 1000}}' >/dev/null 2>&1 || true
sleep 0.3
st=$(q query-jobs '{}')
assert_contains "$st" "multiple of 512"
q job-dismiss '{"id": "jx"}' >/dev/null

q blockdev-add '{"driver": "qcow2", "node-name": "qa", "file": "fa"}' >/dev/null
q blockdev-add '{"driver": "qcow2", "node-name": "qb", "file": "fb"}' >/dev/null
q blockdev-add '{"driver": "qcow2", "node-name": "qc", "file": "fc"}' >/dev/null
for n in qa qb qc; do
	q block-export-add "{\"type\": \"nbd\", \"id\": \"e$n\", \"node-name\": \"$n\", \"writable\": true}" >/dev/null
done
qemu-io -f raw -c 'write -P 0x71 100k 300k' "$(bd_nbd_unix_uri "$T/s" qa)" >/dev/null
# the file of a node in use cannot be recreated under it (create() rewrites it off the control
# thread): refused at once, and the image is untouched
if q blockdev-create '{"job-id": "jbusy", "options": {"driver": "qcow2", "file": "fa", "size": 1048576}}' >"$T/busy" 2>&1; then
	fail "blockdev-create on a file in use was accepted"
fi
assert_contains "$(cat "$T/busy")" "in use"
qemu-io -f raw -c 'write -P 0x72 1M 3M' -c 'write -z 5M 64k' "$(bd_nbd_unix_uri "$T/s" qb)" >/dev/null
qemu-io -f raw -c 'write -P 0x73 1049088 4k' "$(bd_nbd_unix_uri "$T/s" qc)" >/dev/null
# grow qa from 1M to 64M: 512-byte clusters need a new, larger L1 table
q block_resize '{"node-name": "qa", "size": 67108864}' >/dev/null
qemu-io -f raw -c 'write -P 0x74 60M 64k' "$(bd_nbd_unix_uri "$T/s" qa)" >/dev/null
info=$(q query-named-block-nodes '{}')
assert_contains "$info" '"compat": "0.10"'
assert_contains "$info" '"lazy-refcounts": true'
assert_contains "$info" '"backing_file": "base.raw"'
for n in qa qb qc; do
	q block-export-del "{\"id\": \"e$n\"}" >/dev/null
done
sleep 0.3
for n in qa qb qc; do
	q blockdev-del "{\"node-name\": \"$n\"}" >/dev/null
done
bd_stop

for f in a b c; do
	qemu-img check "$T/$f.qcow2" >"$T/check.log" 2>&1 || { cat "$T/check.log"; fail "$f.qcow2 not clean"; }
done
qemu-img info "$T/a.qcow2" | grep -q "virtual size: 64 MiB" || fail "a.qcow2 not resized"
qemu-img info "$T/a.qcow2" | grep -q "cluster_size: 512" || fail "a.qcow2 cluster size"
qemu-img info "$T/b.qcow2" | grep -q "compat: 0.10" || fail "b.qcow2 not v2"
out=$(qemu-io -f qcow2 -r -c 'read -P 0x71 100k 300k' -c 'read -P 0x74 60M 64k' -c 'read -P 0 1M 1M' "$T/a.qcow2")
assert_not_contains "$out" "verification failed"
out=$(qemu-io -f qcow2 -r -c 'read -P 0x72 1M 3M' -c 'read -P 0 5M 64k' "$T/b.qcow2")
assert_not_contains "$out" "verification failed"
out=$(qemu-io -f qcow2 -r -c 'read -P 0x61 0 1M' -c 'read -P 0x73 1049088 4k' -c 'read -P 0x61 1053184 1043456' -c 'read -P 0 2M 2M' "$T/c.qcow2")
assert_not_contains "$out" "verification failed"
echo "qcow2 qmp: OK"
