#!/bin/bash
# tests/vub/build-guest.sh - build a tiny Linux guest for the vhost-user-blk tests: Debian's cloud
# kernel plus a busybox initramfs whose init loads the virtio modules and runs one test script
# against /dev/vda (and /dev/vdb...), printing "GUEST: ..." lines, then powers off.
#
# usage: build-guest.sh OUTDIR GUEST_SCRIPT
#   The kernel and its virtio modules are fetched once (apt-get download) into $VUB_KERNEL_CACHE
#   (default $BUILD_DIR/vub-kernel, else ~/.cache/blockd-vub-kernel) and reused; the initramfs is
#   built in OUTDIR in about a second.  Exit 77 when the kernel or busybox cannot be had.
set -euo pipefail
OUT=$(realpath -m "$1")
SCRIPT=$(realpath "$2")
here=$(dirname "$(realpath "$0")")
CACHE=${VUB_KERNEL_CACHE:-${BUILD_DIR:+$BUILD_DIR/vub-kernel}}
CACHE=${CACHE:-$HOME/.cache/blockd-vub-kernel}
MODS="virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk"

BUSYBOX=$(command -v busybox || true)
[ -n "$BUSYBOX" ] || [ ! -x /bin/busybox ] || BUSYBOX=/bin/busybox
if [ -z "$BUSYBOX" ] || ! file -L "$BUSYBOX" 2>/dev/null | grep -q static; then
	[ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static && BUSYBOX=/bin/busybox
fi
[ -n "$BUSYBOX" ] || { echo "SKIP: busybox (busybox-static) is not installed"; exit 77; }
command -v cpio >/dev/null || { echo "SKIP: cpio is not installed"; exit 77; }

mkdir -p "$OUT" "$CACHE"
# Guest tests run in parallel: one of them fetches the kernel, the others wait for it.
exec 9>"$CACHE/.lock"
flock 9
if [ ! -f "$CACHE/kernel.stamp" ]; then
	W=$(mktemp -d)
	trap 'rm -rf "$W"' EXIT
	if ! (cd "$W" && apt-get download -qq linux-image-cloud-amd64 >/dev/null 2>&1 &&
		dep=$(dpkg-deb -f linux-image-cloud-amd64_*.deb Depends | sed 's/ .*//; s/,.*//') &&
		apt-get download -qq "$dep" >/dev/null 2>&1); then
		echo "SKIP: cannot fetch a kernel (apt-get download linux-image-cloud-amd64 failed)"
		exit 77
	fi
	mkdir -p "$W/k"
	for d in "$W"/linux-image-*.deb; do dpkg -x "$d" "$W/k"; done
	cp "$W"/k/boot/vmlinuz-* "$CACHE/vmlinuz"
	mkdir -p "$CACHE/mods"
	for m in $MODS; do
		f=$(find "$W/k/lib/modules" -name "$m.ko*" | head -1)
		[ -n "$f" ] || continue # built in
		case $f in
		*.xz) xz -dc "$f" >"$CACHE/mods/$m.ko" ;;
		*.zst) zstd -qdc "$f" >"$CACHE/mods/$m.ko" ;;
		*) cp "$f" "$CACHE/mods/$m.ko" ;;
		esac
	done
	touch "$CACHE/kernel.stamp"
fi
flock -u 9
cp "$CACHE/vmlinuz" "$OUT/vmlinuz"

R=$(mktemp -d "$OUT/root.XXXXXX")
mkdir -p "$R"/{bin,sbin,dev,proc,sys,tmp,mnt,mods}
cp "$BUSYBOX" "$R/bin/busybox"
cp "$CACHE"/mods/*.ko "$R/mods/" 2>/dev/null || true
gcc -static -O2 -o "$R/bin/blkop" "$here/blkop.c"
cp "$SCRIPT" "$R/test.sh"
chmod +x "$R/test.sh"
cat >"$R/init" <<INIT
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $MODS; do
	[ -f /mods/\$m.ko ] && { insmod /mods/\$m.ko || echo "GUEST: insmod \$m failed"; }
done
for i in \$(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.1; done
sh /test.sh
echo "GUEST: done"
poweroff -f
INIT
chmod +x "$R/init"
(cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) >"$OUT/initramfs.cpio.gz"
rm -rf "$R"
