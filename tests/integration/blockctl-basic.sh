#!/bin/bash
# blockctl-basic.sh: the blockctl verbs against a running blockd: node and export lifecycle,
# tables and --json, dotted options typed through the schema, raw qmp, throttle limits, errors
# (one line, exit 1; bad usage exit 2), --help per verb.
source "$(dirname "$0")/../lib/common.sh"
need python3
bd_tmpdir
BLOCKCTL=${BLOCKCTL:-$(dirname "$BLOCKD")/blockctl}
[ -x "$BLOCKCTL" ] || fail "blockctl not found next to $BLOCKD"

truncate -s 16M "$T/disk.img"
bd_start --control "$T/c.sock" --nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
	--object throttle-group,id=tg0,limits.iops-total=100
export BLOCKD_SOCKET=$T/c.sock
bc() { "$BLOCKCTL" "$@"; }

assert_ok bc node-add driver=file,node-name=f0,filename="$T/disk.img"
# size as a string with a suffix becomes an integer through the schema
assert_ok bc node-add driver=null-co,node-name=n0,size=2M,read-zeroes=on
assert_ok bc node-add driver=raw,node-name=r0,file.driver=null-co,file.size=1M
assert_ok bc node-add '{"driver": "throttle", "node-name": "t0", "throttle-group": "tg0", "file": "f0"}'
out=$(bc node-list)
assert_contains "$out" " n0 "
assert_contains "$out" "2.00 MiB"
assert_contains "$out" "$T/disk.img"
n=$(bc node-list --json | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
assert_eq "$n" 5 "nodes (with the automatically named child)"

assert_ok bc export-add type=nbd,id=e0,node-name=t0,name=disk,writable=on
out=$(bc export-list)
assert_contains "$out" " e0 "
assert_eq "$(bc --json export-list | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["node-name"])')" t0

assert_ok bc throttle-set tg0 iops-total=200 bps-total=1M
assert_eq "$(bc qmp qom-get '{"path": "tg0", "property": "x-bps-total"}')" 1048576
assert_contains "$(bc throttle-get tg0)" "iops-total"

assert_ok bc node-resize n0 4M
assert_contains "$(bc qmp '{"execute": "query-named-block-nodes"}')" '"virtual-size": 4194304'
assert_contains "$(bc stats n0)" " n0 "
assert_contains "$(bc stats --json)" '"rd_operations"'

# errors: one line on stderr, exit 1
assert_exit 1 bc node-del nope
assert_contains "$BD_OUT" "blockctl: error: Failed to find node with node-name='nope'"
assert_eq "$(echo "$BD_OUT" | wc -l)" 1 "error lines"
assert_exit 1 bc node-del t0
assert_exit 1 bc qmp no-such-command
assert_contains "$BD_OUT" "(CommandNotFound)"
assert_exit 2 bc no-such-verb
assert_exit 2 bc node-del
assert_exit 1 bc --socket "$T/nothing.sock" node-list
assert_contains "$BD_OUT" "cannot connect"
assert_exit 0 bc node-add --help
assert_contains "$BD_OUT" "Usage: blockctl"
assert_exit 0 bc help
assert_contains "$BD_OUT" "export-del"

assert_ok bc export-del e0 --hard
assert_eq "$(bc --json export-list)" "[]"
assert_ok bc node-del t0
assert_ok bc node-del r0
assert_ok bc node-del n0
assert_ok bc node-del f0
assert_eq "$(bc --json node-list)" "[]"
bd_stop
