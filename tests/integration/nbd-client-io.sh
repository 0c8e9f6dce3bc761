#!/bin/bash
# nbd-client-io.sh - the nbd protocol driver against qemu-nbd, on a unix socket (server.*) and on
# TCP 127.0.0.1 (nbd:// URI in filename), exported again by blockd over NBD: bytes written with
# qemu-io and nbdcopy read back equal to the backing files; discard and write-zeroes punch holes
# that nbdinfo --map and qemu-img map show through both hops; FUA writes; size and block sizes.
# meson-timeout: 120
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need qemu-nbd qemu-io qemu-img nbdinfo nbdcopy truncate python3

bd_tmpdir
a=$T/a.raw
b=$T/b.raw
truncate -s 64M "$a"
truncate -s 32M "$b"
head -c 1M /dev/urandom | dd of="$a" bs=1M seek=8 conv=notrunc status=none

# the upstream servers: unix socket and TCP on a free port of 127.0.0.1
bd_spawn qnbd-a qemu-nbd -t -e 4 -f raw --cache=none --aio=threads --discard=unmap -k "$T/qa.sock" -x disk "$a"
qa=$BD_SPAWN_PID
port=$(bd_free_port)
bd_spawn qnbd-b qemu-nbd -t -e 4 -f raw --discard=unmap -b 127.0.0.1 -p "$port" -x other "$b"
qb=$BD_SPAWN_PID
bd_wait_socket "$T/qa.sock"
bd_wait_for 10 nbdinfo --size "nbd://127.0.0.1:$port/other"

sock=$T/blockd.sock
bd_start --blockdev driver=nbd,node-name=na,server.type=unix,server.path="$T/qa.sock",export=disk,discard=unmap \
	--blockdev "driver=nbd,node-name=nb,filename=nbd://127.0.0.1:$port/other,discard=unmap,timeout=10" \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=ea,node-name=na,name=a,writable=on \
	--export type=nbd,id=eb,node-name=nb,name=b,writable=on \
	--object iothread,id=io1 \
	--export type=nbd,id=ea2,node-name=na,name=a2,writable=on,iothread=io1
ua=$(bd_nbd_unix_uri "$sock" a)
ub=$(bd_nbd_unix_uri "$sock" b)

# sizes and what the server offers come through
assert_eq "$(nbdinfo --size "$ua")" 67108864 "size of a"
assert_eq "$(nbdinfo --size "$ub")" 33554432 "size of b"
assert_exit 0 nbdinfo --can trim "$ua"
assert_exit 0 nbdinfo --can fua "$ua"
assert_exit 0 nbdinfo --can zero "$ub"

# the data already there reads back through both hops
nbdcopy "$ua" "$T/copy-a.raw"
assert_file_eq "$T/copy-a.raw" "$a"

# writes of several sizes and alignments, then compare with the backing files
out=$(qemu-io -f raw -c 'write -P 0x5a 0 1M' -c 'write -P 0x33 1048577 7' \
	-c 'write -P 0x77 3M 9M' -c 'write -f -P 0x42 20M 64k' -c 'flush' "$ua" 2>&1) ||
	fail "qemu-io writes: $out"
head -c 2M /dev/urandom >"$T/rand"
nbdcopy "$T/rand" "$ub"
qemu-io -f raw -c 'write -P 0x99 30M 1M' "$ub" >/dev/null
out=$(qemu-io -r -f raw -c 'read -P 0x5a 0 1M' -c 'read -P 0x33 1048577 7' \
	-c 'read -P 0x77 3M 9M' -c 'read -P 0x42 20M 64k' "$ua" 2>&1) || fail "read back: $out"
assert_not_contains "$out" "Pattern verification failed"
nbdcopy "$ua" "$T/copy-a.raw"
assert_file_eq "$T/copy-a.raw" "$a"
nbdcopy "$ub" "$T/copy-b.raw"
assert_file_eq "$T/copy-b.raw" "$b"
cmp -n 2097152 "$T/rand" "$b" || fail "nbdcopy data missing in b.raw"
# byte-exact against an independent reading of the backing file
python3 - "$a" <<'EOF'
import sys
d = open(sys.argv[1], 'rb').read()
M = 1 << 20
assert d[:M] == b'\x5a' * M, "0..1M"
assert d[M + 1:M + 8] == b'\x33' * 7, "odd write"
assert d[3 * M:12 * M] == b'\x77' * (9 * M), "3M..12M"
assert d[20 * M:20 * M + 65536] == b'\x42' * 65536, "FUA write"
EOF

# discard and write-zeroes punch holes that both maps show
qemu-io -f raw -c 'discard 4M 4M' -c 'write -z -u 8M 1M' -c 'write -z 16M 1M' "$ua" >/dev/null
map=$(nbdinfo --map "$ua")
echo "$map"
assert_match "$(awk '$1 == 4194304 { print $4 }' <<<"$map")" "hole" "discarded range is a hole"
assert_match "$(awk '$1 <= 8388608 && $1 + $2 > 8388608 { print $4 }' <<<"$map")" "hole" \
	"zeroed with unmap is a hole"
assert_match "$(awk '$1 == 0 { print $4 }' <<<"$map")" "data" "written data is data"
total=$(awk '{ s += $2 } END { print s }' <<<"$map")
assert_eq "$total" 67108864 "the map covers the export"
direct=$(nbdinfo --map "$(bd_nbd_unix_uri "$T/qa.sock" disk)")
assert_eq "$(awk '$4 ~ /hole/ { s += $2 } END { print s + 0 }' <<<"$map")" \
	"$(awk '$4 ~ /hole/ { s += $2 } END { print s + 0 }' <<<"$direct")" \
	"hole bytes through blockd = hole bytes at qemu-nbd"
qmap=$(qemu-img map --output=json -f raw "$ua")
python3 -c '
import json, sys
m = json.loads(sys.argv[1])
def at(off):
    return next(e for e in m if e["start"] <= off < e["start"] + e["length"])
assert not at(4 << 20)["data"] and at(4 << 20)["zero"], "qemu-img map: 4M is not a hole"
assert at(0)["data"], "qemu-img map: 0 is not data"
assert sum(e["length"] for e in m) == 64 << 20
' "$qmap" || fail "qemu-img map through blockd: $qmap"
out=$(qemu-io -r -f raw -c 'read -P 0 4M 5M' -c 'read -P 0 16M 1M' "$ua" 2>&1)
assert_not_contains "$out" "Pattern verification failed"
nbdcopy "$ua" "$T/copy-a.raw"
assert_file_eq "$T/copy-a.raw" "$a"

# a second export of the same node on another loop (iothread io1): its requests are forwarded to
# the loop that owns the connection, concurrently with requests on the home loop
ua2=$(bd_nbd_unix_uri "$sock" a2)
fio --name=mix --ioengine=nbd --uri="$ua2" --rw=randwrite --bs=4k --iodepth=8 --offset=48M \
	--size=8M --io_size=8M --randrepeat=1 >"$T/fio-a2.out" 2>&1 &
fp=$!
out=$(qemu-io -f raw -c 'write -P 0x1d 40M 4M' -c 'read -P 0x1d 40M 4M' "$ua" 2>&1)
wait "$fp" || fail "fio through the second loop: $(cat "$T/fio-a2.out")"
assert_not_contains "$out" "Pattern verification failed"
qemu-io -f raw -c 'write -P 0x2e 44M 1M' "$ua2" >/dev/null
out=$(qemu-io -r -f raw -c 'read -P 0x2e 44M 1M' -c 'read -P 0x1d 40M 4M' "$ua" 2>&1)
assert_not_contains "$out" "Pattern verification failed"
nbdcopy "$ua2" "$T/copy-a2.raw"
assert_file_eq "$T/copy-a2.raw" "$a"

# the node describes its server
out=$(nbdinfo --json "$ua")
assert_contains "$out" '"export-size": 67108864'

bd_stop
bd_kill "$qa"
bd_kill "$qb"
