#!/bin/bash
# formats-readonly.sh - the read-only vmdk, vdi, vpc and qed drivers: a matrix of images made by
# qemu-img convert/create + qemu-io (every vmdk and vpc subformat, vdi static and dynamic, qed
# with raw and qcow2 backing files, a vmdk delta link; holes, zero ranges, zero grains/clusters,
# data at odd offsets, sizes that are not multiples of 64 KiB) read through a blockd NBD export
# equal `qemu-img convert -O raw` (cmp); `nbdinfo --map` (and qemu:allocation-depth for the
# backing chains) equals qemu-nbd's for the same image; writable opens are refused; hostile
# headers are refused with a clear error.
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io nbdcopy nbdinfo
bd_tmpdir

SIZE=$((9 * 1024 * 1024 + 4608)) # not a multiple of 64 KiB

# The source disk: random data, holes, explicit zero data, patterns at odd offsets, a tail.
truncate -s $SIZE "$T/src.raw"
qemu-io -f raw -c "write -P 0x11 0 64k" -c "write -P 0x22 1234567 3333" \
	-c "write -P 0x00 2M 256k" -c "write -P 0x33 5000001 7777" \
	-c "write -P 0x44 $((SIZE - 4096)) 4096" "$T/src.raw" >/dev/null
head -c 700000 /dev/urandom | dd of="$T/src.raw" bs=1 seek=3333333 conv=notrunc status=none

# IMAGES: "name fmt file" (fmt as blockd's driver and qemu's -f).
IMAGES=()
add() { IMAGES+=("$1 $2 $3"); }

for sub in monolithicSparse monolithicFlat twoGbMaxExtentSparse twoGbMaxExtentFlat streamOptimized; do
	qemu-img convert -f raw -O vmdk -o subformat=$sub "$T/src.raw" "$T/c-$sub.vmdk"
	add "c-$sub" vmdk "$T/c-$sub.vmdk"
done
for sub in fixed dynamic; do
	qemu-img convert -f raw -O vpc -o subformat=$sub "$T/src.raw" "$T/c-$sub.vpc"
	add "c-$sub" vpc "$T/c-$sub.vpc"
done
# force_size: creator "qem2", the size from current_size rather than the CHS geometry.
qemu-img convert -f raw -O vpc -o subformat=dynamic,force_size=on "$T/src.raw" "$T/c-fsize.vpc"
add c-fsize vpc "$T/c-fsize.vpc"
for st in off on; do
	qemu-img convert -f raw -O vdi -o static=$st "$T/src.raw" "$T/c-static-$st.vdi"
	add "c-static-$st" vdi "$T/c-static-$st.vdi"
done
qemu-img convert -f raw -O qed "$T/src.raw" "$T/c.qed"
add c-qed qed "$T/c.qed"

# streamOptimized as VMware writes it: the header says "grain directory at the end" and the real
# header is in the footer (marker, header, end-of-stream marker).
if command -v python3 >/dev/null; then
	python3 - "$T/c-streamOptimized.vmdk" "$T/c-footer.vmdk" <<'PY'
import sys
b = bytearray(open(sys.argv[1], 'rb').read())
hdr = bytes(b[0:512])
b[56:64] = b'\xff' * 8
b += bytes(-len(b) % 512)
foot = bytearray(512)
foot[0:8] = (1).to_bytes(8, 'little')
foot[12:16] = (3).to_bytes(4, 'little')
b += foot + hdr + bytes(512)
open(sys.argv[2], 'wb').write(b)
PY
	add c-footer vmdk "$T/c-footer.vmdk"
fi

# Images written by qemu-io: zero grains/clusters (write -z), data at odd offsets.
IO=(-c "write -P 0x55 4096 8192" -c "write -P 0x66 777k 1500k" -c "write -z 1M 128k"
	-c "write -P 0x77 6M 4608" -c "write -z 7M 1M" -c "write -P 0x78 $((SIZE - 512)) 512")
mk_io() # name fmt create-options
{
	qemu-img create -q -f "$2" ${3:+-o "$3"} "$T/$1.$2" $SIZE
	qemu-io -f "$2" "${IO[@]}" "$T/$1.$2" >/dev/null
	add "$1" "$2" "$T/$1.$2"
}
mk_io w-sparse vmdk subformat=monolithicSparse
mk_io w-zgrain vmdk subformat=monolithicSparse,zeroed_grain=on
mk_io w-split vmdk subformat=twoGbMaxExtentSparse
mk_io w-flat vmdk subformat=monolithicFlat
mk_io w-dyn vpc subformat=dynamic
mk_io w-vdi vdi ""
mk_io w-qed qed cluster_size=4096,table_size=2
mk_io w-qed2 qed cluster_size=1M

# Backing files: qed over raw (no-probe flag), over qcow2 (probed), over a shorter raw file;
# a vmdk delta link over a sparse parent.
head -c $((4 * 1024 * 1024)) /dev/urandom >"$T/base.raw"
qemu-img create -q -f qed -b base.raw -F raw "$T/b-raw.qed" $SIZE
qemu-io -f qed -c "write -P 0x99 1M 64k" -c "write -z 2M 64k" -c "write -P 0x9a 5M 3k" \
	"$T/b-raw.qed" >/dev/null
add b-raw qed "$T/b-raw.qed"
qemu-img convert -f raw -O qcow2 "$T/src.raw" "$T/base.qcow2"
qemu-img create -q -f qed -b base.qcow2 -F qcow2 "$T/b-qcow2.qed" $SIZE
qemu-io -f qed -c "write -P 0x9b 3M 100k" "$T/b-qcow2.qed" >/dev/null
add b-qcow2 qed "$T/b-qcow2.qed"
qemu-img create -q -f vmdk -b c-monolithicSparse.vmdk -F vmdk "$T/b-delta.vmdk" $SIZE
qemu-io -f vmdk -c "write -P 0x9c 2M 64k" -c "write -P 0x9d 8M 1k" "$T/b-delta.vmdk" >/dev/null
add b-delta vmdk "$T/b-delta.vmdk"
# ... and these formats as backing files of a qcow2 image.
qemu-img create -q -f qcow2 -b c-streamOptimized.vmdk -F vmdk "$T/q-vmdk.qcow2" $SIZE
qemu-io -f qcow2 -c "write -P 0x9e 1M 64k" "$T/q-vmdk.qcow2" >/dev/null
add q-vmdk qcow2 "$T/q-vmdk.qcow2"
qemu-img create -q -f qcow2 -b c-dynamic.vpc -F vpc "$T/q-vpc.qcow2" $SIZE
add q-vpc qcow2 "$T/q-vpc.qcow2"

# One daemon exports them all.
args=()
for i in "${IMAGES[@]}"; do
	set -- $i
	args+=(--blockdev "driver=$2,node-name=$1,read-only=on,file.driver=file,file.filename=$3"
		--export "type=nbd,id=e-$1,node-name=$1,allocation-depth=on")
done
# Two I/O loops: the NBD connections of one export spread over both (requests of one node on
# two loops at once).
bd_start "${args[@]}" --object iothread,id=io1 --nbd-server addr.type=unix,addr.path="$T/s"

for i in "${IMAGES[@]}"; do
	set -- $i
	qemu-img convert -f "$2" -O raw "$3" "$T/want.raw"
	rm -f "$T/got.raw"
	nbdcopy "$(bd_nbd_unix_uri "$T/s" "$1")" "$T/got.raw"
	assert_file_eq "$T/got.raw" "$T/want.raw"
	assert_eq "$(nbdinfo --size "$(bd_nbd_unix_uri "$T/s" "$1")")" \
		"$(stat -c %s "$T/want.raw")" "$1: size"
	echo "read $1 ($2): OK"
done

# Maps: the same extents as qemu-nbd gives for the same image.
if command -v qemu-nbd >/dev/null; then
	for i in "${IMAGES[@]}"; do
		set -- $i
		rm -f "$T/qs"
		bd_spawn qemu-nbd qemu-nbd -r -A -t -k "$T/qs" -f "$2" "$3"
		bd_wait_socket "$T/qs"
		for ctx in base:allocation qemu:allocation-depth; do
			q=$(nbdinfo --map=$ctx "nbd+unix:///?socket=$T/qs" | awk '{print $1, $2, $3}')
			b=$(nbdinfo --map=$ctx "$(bd_nbd_unix_uri "$T/s" "$1")" |
				awk '{print $1, $2, $3}')
			assert_eq "$b" "$q" "$1 ($2): $ctx map, blockd vs qemu-nbd"
		done
		bd_kill "$BD_SPAWN_PID"
		echo "map $1 ($2): OK"
	done
fi
bd_stop

# Writable opens are refused.
for d in vmdk vdi vpc qed; do
	f=$(for i in "${IMAGES[@]}"; do set -- $i; [ "$2" = $d ] && echo "$3" && break; done)
	assert_fails "$BLOCKD" --blockdev "driver=$d,node-name=x,file.driver=file,file.filename=$f"
	assert_contains "$BD_OUT" "driver '$d' is read-only in blockd; open with read-only=on"
done
# ... but auto-read-only=on falls back to a read-only node (as libvirt asks for backing files).
bd_start --blockdev "driver=qed,node-name=a,auto-read-only=on,file.driver=file,file.filename=$T/c.qed" \
	--nbd-server addr.type=unix,addr.path="$T/s2" --export type=nbd,id=e,node-name=a,writable=off
assert_contains "$(nbdinfo "$(bd_nbd_unix_uri "$T/s2" a)")" "is_read_only: true"
bd_stop

# Hostile headers: a clear error, no crash.
refuse() # fmt file expected-message-part
{
	assert_fails "$BLOCKD" --blockdev \
		"driver=$1,node-name=x,read-only=on,file.driver=file,file.filename=$2"
	assert_contains "$BD_OUT" "$3"
}
poke() # file offset hex-bytes
{
	printf "$(echo "$3" | sed 's/\(..\)/\\x\1/g')" |
		dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
cp "$T/c-static-off.vdi" "$T/h.vdi"
poke "$T/h.vdi" $((0x154)) 0000f0ff # block map offset far past the end
refuse vdi "$T/h.vdi" "past the end of the file"
cp "$T/c-static-off.vdi" "$T/h.vdi"
poke "$T/h.vdi" $((0x180)) 01000000 # one block for a 9 MiB disk
refuse vdi "$T/h.vdi" "Image is corrupt"
cp "$T/c.qed" "$T/h.qed"
poke "$T/h.qed" 40 00000000ff000000 # L1 table past the end
refuse qed "$T/h.qed" "L1 table"
cp "$T/c.qed" "$T/h.qed"
poke "$T/h.qed" 4 00300000 # cluster size not a power of two
refuse qed "$T/h.qed" "invalid cluster size"
cp "$T/c-monolithicSparse.vmdk" "$T/h.vmdk"
poke "$T/h.vmdk" 56 00000000ff000000 # grain directory past the end
refuse vmdk "$T/h.vmdk" "grain directory"
cp "$T/c-monolithicSparse.vmdk" "$T/h.vmdk"
poke "$T/h.vmdk" 44 00100000 # 4096 entries per grain table
refuse vmdk "$T/h.vmdk" "grain table size"
cp "$T/c-dynamic.vpc" "$T/h.vpc"
poke "$T/h.vpc" $((512 + 16)) 7fff000000000000 # BAT past the end
refuse vpc "$T/h.vpc" "past the end of the file"
printf 'version=1\ncreateType="monolithicFlat"\nRW 100 FLAT "missing-flat.vmdk" 0\n' >"$T/d.vmdk"
refuse vmdk "$T/d.vmdk" "missing-flat.vmdk"
printf 'version=1\ncreateType="fullDevice"\nRW 100 FLAT "x" 0\n' >"$T/d.vmdk"
refuse vmdk "$T/d.vmdk" "Unsupported image type 'fullDevice'"
# A backing loop: a.qed -> b.qed -> a.qed.
qemu-img create -q -f qed "$T/a.qed" 1M
qemu-img create -q -f qed -b a.qed -F qed "$T/b.qed" 1M
qemu-img rebase -u -f qed -b b.qed -F qed "$T/a.qed"
refuse qed "$T/a.qed" "Backing chain deeper than"
# A plain raw image is never taken for a format (the user names the driver).
refuse qed "$T/src.raw" "Image not in QED format"
echo "formats read-only: OK"
