#!/bin/bash
# qcow2-zero-cow.sh - an allocating write onto a cluster never written since open skips the
# copy-on-write of zeroes (docs/qcow2.md, "zero_from"); a cluster reused after a free, or one
# that existed when the image was opened (also a crash's leak), still gets its zeroes written.
# Phase 1 fills 4 MiB with 0xaa, discards it (the host clusters keep their old bytes: no
# pass-discard-request) and flushes, then writes 4 KiB pieces in the middle of fresh guest clusters:
# the allocator reuses the freed host clusters, so a skipped copy-on-write would show 0xaa.
# Phase 2 reopens the image (the file's old end is the mark again), phase 3 writes pieces on
# 4k clusters with cache=none (O_DIRECT: the padding to the file's alignment).  Each phase:
# `qemu-img check` clean and `qemu-img compare` equal to a raw reference built alongside.
# meson-timeout: 120
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir

run_io() { # cmds-file
	local args=() l
	mapfile -t lines <"$1"
	for l in "${lines[@]}"; do args+=(-c "$l"); done
	qemu-io -f raw "${args[@]}" "$(bd_nbd_unix_uri "$T/s" q)" >"$T/io.log" 2>&1 ||
		{ tail -5 "$T/io.log"; fail "qemu-io failed"; }
	if grep -qi "error\|failed" "$T/io.log"; then
		grep -i "error\|failed" "$T/io.log" | head -3
		fail "a request failed"
	fi
}

check() { # what
	local rc=0
	qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
	[ "$rc" = 0 ] || { cat "$T/check.log"; fail "$1: qemu-img check exited $rc"; }
	qemu-img compare -q -f qcow2 -F raw "$img" "$ref" || fail "$1: the image differs from the reference"
	echo "$1: clean, equal to the reference"
}

# cmds: python writes qemu-io commands and applies them to the reference
gen() { # seed first-guest-offset count cluster-size
	python3 - "$ref" "$T/cmds" "$@" <<'PY'
import random, sys
ref, cmds, seed, first, count, cs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
random.seed(seed)
with open(ref, "r+b") as f, open(cmds, "w") as c:
    for k in range(count):
        base = first + k * cs
        n = 512 * random.randint(1, max(1, cs // 512 - 2))
        off = base + 512 * random.randint(1 if n < cs else 0, max(1, (cs - n) // 512))
        off = min(off, base + cs - n)
        pat = k % 200 + 1
        f.seek(off)
        f.write(bytes([pat]) * n)
        c.write(f"aio_write -P {pat} {off} {n}\n")
    c.write("aio_flush\n")
PY
}

img=$T/z.qcow2 ref=$T/ref.raw
qemu-img create -q -f qcow2 "$img" 64M
qemu-img create -q -f raw "$ref" 64M
start() { # extra blockdev options
	bd_start --blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img$1" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,writable=on
}

# phase 1: fill, discard, reuse (discards reach the driver, not the file)
start ",discard=unmap,pass-discard-request=off"
printf 'write -P 0xaa 0 4M\nflush\ndiscard 0 4M\nflush\n' >"$T/cmds"
run_io "$T/cmds"
python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.write(b'\0'*(4<<20))" "$ref"
gen p1 $((8 << 20)) 64 65536
run_io "$T/cmds"
bd_stop
# the new clusters must reuse freed host clusters (else this phase proves nothing)
low=$(qemu-img map --output=json "$img" 2>/dev/null | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(sum(1 for e in m if e.get("data") and e["start"] >= (8 << 20) and e.get("offset", 1 << 62) < (5 << 20)))')
[ "$low" -gt 0 ] || fail "phase 1: no freed host cluster was reused (map: $low)"
check "phase 1 (64 writes into reused host clusters)"

# phase 2: reopen; more partial writes (fresh clusters beyond the old end, and reused ones)
start ",discard=unmap,pass-discard-request=off"
printf 'discard 8M 1M\nflush\n' >"$T/cmds"
run_io "$T/cmds"
python3 -c "import sys; f=open(sys.argv[1],'r+b'); f.seek(8<<20); f.write(b'\0'*(1<<20))" "$ref"
gen p2 $((16 << 20)) 96 65536
run_io "$T/cmds"
bd_stop
check "phase 2 (after reopen)"

# phase 3: 4k clusters, O_DIRECT (writes padded to the file's alignment)
img=$T/z4.qcow2 ref=$T/ref4.raw
qemu-img create -q -f qcow2 -o cluster_size=4096 "$img" 64M
qemu-img create -q -f raw "$ref" 64M
if start ",file.cache.direct=on" 2>/dev/null; then
	gen p3 $((1 << 20)) 200 4096
	run_io "$T/cmds"
	bd_stop
	check "phase 3 (4k clusters, O_DIRECT)"
else
	echo "phase 3: O_DIRECT not available here: not run"
fi
echo "qcow2 zero copy-on-write: ok"
