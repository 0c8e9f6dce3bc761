#!/bin/bash
# qcow2-group.sh - group commit of allocating writes (docs/qcow2.md): many writes in flight into
# the same unallocated clusters.  A region is cut into pieces of random sizes (512 B .. 24 KiB,
# many per cluster, some across cluster and L2 table boundaries), the pieces are written in a
# random order by one qemu-io process through NBD (all in flight at once, each with its own
# pattern); then `qemu-img check` is clean without leaks and `qemu-img compare` finds the image
# equal to a raw reference built from the same pieces.  Geometries: 64k clusters, 4k clusters
# over a raw backing file (copy-on-write from the backing), 64k clusters with a 16-table L2
# cache (the group's pin limit), 512-byte clusters (many L2 tables and refcount blocks created
# during a group).  Then fio (nbd engine, if built with it) writes 4k blocks at QD32 with
# crc32c verification.
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir

head -c 8M /dev/urandom >"$T/back.raw"
for geo in 64k 4k-backing 64k-smallcache 512; do
	img=$T/g.qcow2 ref=$T/ref.raw cache="" size=16M
	rm -f "$img"
	case $geo in
	64k) qemu-img create -q -f qcow2 "$img" $size ;;
	4k-backing) qemu-img create -q -f qcow2 -o cluster_size=4096 -b back.raw -F raw "$img" $size ;;
	64k-smallcache)
		qemu-img create -q -f qcow2 "$img" 1G
		size=1G cache=",l2-cache-size=1M"
		;;
	512) qemu-img create -q -f qcow2 -o cluster_size=512 "$img" $size ;;
	esac
	qemu-img create -q -f raw "$ref" $size
	[ "$geo" = 4k-backing ] && dd if="$T/back.raw" of="$ref" conv=notrunc status=none
	# pieces: python writes the qemu-io commands and the reference
	python3 - "$ref" "$T/cmds" "$geo" <<'PY'
import random, sys
ref, cmds, geo = sys.argv[1:4]
random.seed(geo)
# regions: the start of the disk; for the big image also regions far apart (other L2 tables)
regions = [(0, 3 << 20)]
if geo == "64k-smallcache":
    regions = [(k * (40 << 20) + (1 << 20) - 7 * 512, 256 << 10) for k in range(24)]
pieces = []
for start, length in regions:
    off = start
    while off < start + length:
        n = 512 * random.randint(1, 48)
        n = min(n, start + length - off)
        pieces.append((off, n))
        off += n
random.shuffle(pieces)
with open(ref, "r+b") as f, open(cmds, "w") as c:
    for i, (off, n) in enumerate(pieces):
        pat = i % 250 + 1
        f.seek(off)
        f.write(bytes([pat]) * n)
        c.write(f"aio_write -P {pat} {off} {n}\n")
    c.write("aio_flush\n")
PY
	bd_start --blockdev "driver=qcow2,node-name=q$cache,file.driver=file,file.filename=$img" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,writable=on
	mapfile -t lines <"$T/cmds"
	args=()
	for l in "${lines[@]}"; do args+=(-c "$l"); done
	qemu-io -f raw "${args[@]}" "$(bd_nbd_unix_uri "$T/s" q)" >"$T/io.log" 2>&1 ||
		{ tail -5 "$T/io.log"; fail "$geo: the writes failed"; }
	grep -qi "error\|failed" "$T/io.log" && { grep -i "error\|failed" "$T/io.log" | head -3; fail "$geo: a write failed"; }
	bd_stop
	rc=0
	qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
	[ "$rc" = 0 ] || { cat "$T/check.log"; fail "$geo: qemu-img check exited $rc"; }
	qemu-img compare -q -f qcow2 -F raw "$img" "$ref" ||
		fail "$geo: the image differs from the reference"
	echo "$geo: ${#lines[@]} writes in flight together: clean, equal to the reference"
done

# fio at QD32 with verification, if its nbd engine is there
if command -v fio >/dev/null && fio --enghelp 2>/dev/null | grep -qw nbd; then
	img=$T/f.qcow2
	qemu-img create -q -f qcow2 "$img" 64M
	bd_start --blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$img" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,name=disk,writable=on
	fio --name=g --ioengine=nbd --uri="nbd+unix:///disk?socket=$T/s" --rw=randwrite --bs=4k \
		--iodepth=32 --size=32M --verify=crc32c --do_verify=1 --verify_fatal=1 \
		--output="$T/fio.log" || { cat "$T/fio.log"; fail "fio: verification failed"; }
	bd_stop
	rc=0
	qemu-img check "$img" >"$T/check.log" 2>&1 || rc=$?
	[ "$rc" = 0 ] || { cat "$T/check.log"; fail "fio: qemu-img check exited $rc"; }
	echo "fio QD32 4k random writes with crc32c verification: ok, image clean"
else
	echo "fio with the nbd engine not found: the QD32 verification part is not run"
fi
echo "qcow2 group commit: ok"
