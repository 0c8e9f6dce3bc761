#!/bin/bash
# nbd-info.sh - what nbdinfo sees of NBD exports: --json (size, flags, block sizes, contexts),
# --can (read-only vs writable), --list with several exports (names and descriptions), the
# default export "" when there is only one, an unknown export refused; over TCP and a unix socket.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo python3 truncate

bd_tmpdir
truncate -s 64M "$T/a.raw"
truncate -s 8M "$T/b.raw"
port=$(bd_free_port)
sock=$T/nbd.sock

json_get()
{
	# json_get JSON EXPORT KEY: the value of KEY in export EXPORT of nbdinfo --json output
	python3 -c 'import json,sys
d = json.loads(sys.argv[1])
for e in d["exports"]:
    if e["export-name"] == sys.argv[2]:
        v = e.get(sys.argv[3])
        print(json.dumps(v) if not isinstance(v, str) else v)
        break
else:
    print("NO-EXPORT")' "$1" "$2" "$3"
}

bd_start --blockdev driver=file,node-name=fa,filename="$T/a.raw" \
	--blockdev driver=raw,node-name=a,file=fa \
	--blockdev driver=file,node-name=fb,filename="$T/b.raw" \
	--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$port" \
	--export type=nbd,id=e0,node-name=a,name=disk,writable=on,description="First disk" \
	--export type=nbd,id=e1,node-name=fb,description="Second,, read-only" \
	--export type=nbd,id=e2,node-name=a,name=third,allocation-depth=on

out=$(nbdinfo --json "nbd://127.0.0.1:$port/disk")
assert_eq "$(json_get "$out" disk export-size)" 67108864 "size"
assert_eq "$(json_get "$out" disk description)" "First disk" "description"
assert_eq "$(json_get "$out" disk is_read_only)" false "writable"
assert_eq "$(json_get "$out" disk can_flush)" true "can_flush"
assert_eq "$(json_get "$out" disk can_fua)" true "can_fua"
assert_eq "$(json_get "$out" disk can_zero)" true "can_zero"
assert_eq "$(json_get "$out" disk can_trim)" true "can_trim"
assert_eq "$(json_get "$out" disk can_multi_conn)" true "can_multi_conn"
assert_eq "$(json_get "$out" disk can_df)" true "can_df"
assert_eq "$(json_get "$out" disk can_cache)" true "can_cache"
assert_eq "$(json_get "$out" disk is_rotational)" false "rotational"
assert_eq "$(json_get "$out" disk block_size_maximum)" 33554432 "max block"
assert_eq "$(json_get "$out" disk block_size_preferred)" 4096 "preferred block"
assert_eq "$(json_get "$out" disk contexts)" '["base:allocation"]' "contexts"

out=$(nbdinfo --json "nbd://127.0.0.1:$port/fb")
assert_eq "$(json_get "$out" fb export-size)" 8388608 "size of the node-name-named export"
assert_eq "$(json_get "$out" fb is_read_only)" true "read-only by default"
assert_eq "$(json_get "$out" fb can_trim)" false "no trim on read-only"
assert_eq "$(json_get "$out" fb can_zero)" false "no zero on read-only"

out=$(nbdinfo --json "nbd://127.0.0.1:$port/third")
assert_contains "$(json_get "$out" third contexts)" "qemu:allocation-depth" "allocation-depth context"

assert_exit 0 nbdinfo --can write "nbd://127.0.0.1:$port/disk"
assert_exit 2 nbdinfo --can write "nbd://127.0.0.1:$port/fb"
assert_exit 0 nbdinfo --can flush "nbd://127.0.0.1:$port/fb"
assert_exit 0 nbdinfo --can multi-conn "nbd://127.0.0.1:$port/disk"

out=$(nbdinfo --list --json "nbd://127.0.0.1:$port")
names=$(python3 -c 'import json,sys; print(" ".join(e["export-name"] for e in json.loads(sys.argv[1])["exports"]))' "$out")
assert_eq "$names" "disk fb third" "--list names, in creation order"
assert_eq "$(json_get "$out" disk description)" "First disk" "--list description"
assert_eq "$(json_get "$out" fb description)" "Second, read-only" "--list description 2"
assert_eq "$(json_get "$out" third description)" "null" "--list no description"

assert_fails nbdinfo "nbd://127.0.0.1:$port/nope"
assert_contains "$BD_OUT" "nope" "unknown export error"
# "" is not an export here (three exports)
assert_fails nbdinfo --size "nbd://127.0.0.1:$port/"
bd_stop

# One export on a unix socket: "" names it.
bd_start --blockdev driver=file,node-name=fb,filename="$T/b.raw" \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e1,node-name=fb
assert_eq "$(nbdinfo --size "nbd+unix:///?socket=$sock")" 8388608 "default export"
assert_eq "$(nbdinfo --size "nbd+unix:///fb?socket=$sock")" 8388608 "named export on unix"
bd_stop
assert_not_exists "$sock"
