#!/bin/bash
# setup-deps.sh - install the Debian 12 packages blockd needs to build, run and test.
# Idempotent and quiet: does nothing (and needs no network) when everything is installed.
# Run as root, or as a user with sudo.  Set BD_SKIP_DEPS=1 to skip entirely (e.g. non-Debian hosts
# where you installed the equivalents yourself).
set -euo pipefail

PACKAGES=(
	# build
	build-essential gcc clang meson ninja-build pkg-config
	liburing-dev libjansson-dev libnbd-dev
	# qcow2: zlib (compressed clusters), zstd (compression_type=zstd, optional in meson)
	zlib1g-dev libzstd-dev
	# sanitizers and libFuzzer for clang
	libclang-rt-14-dev
	# tests and benchmarks: NBD clients and peer servers
	libnbd-bin python3-libnbd qemu-utils qemu-system-common nbdkit fio python3 jq
	# vhost-user-blk guest tests: QEMU under TCG, a busybox initramfs
	qemu-system-x86 busybox-static cpio
	# storage pools: libvirt XML (libxml2); fs, disk and logical pools' tools
	libxml2-dev e2fsprogs xfsprogs fdisk parted lvm2
	# network back ends: libraries of the drivers, and the servers the slow tests start on
	# 127.0.0.1 (tgtd, a one-node Ceph, glusterd, nfs-ganesha with rpcbind in a netns)
	libiscsi-dev libiscsi-bin tgt librbd-dev librados-dev ceph-mon ceph-osd ceph-common
	glusterfs-server glusterfs-client libglusterfs-dev nfs-ganesha nfs-ganesha-vfs libnfs-dev
	libnfs-utils rpcbind uuid-runtime iproute2
)

if [ "${BD_SKIP_DEPS:-0}" = 1 ]; then
	exit 0
fi

missing=()
for p in "${PACKAGES[@]}"; do
	case $p in \#*) continue ;; esac
	st=$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null || true)
	[ "${st:0:2}" = ii ] || missing+=("$p")
done
[ ${#missing[@]} = 0 ] && exit 0

if ! command -v apt-get >/dev/null 2>&1; then
	echo "setup-deps: apt-get not found; install these packages (or their equivalents): ${missing[*]}" >&2
	exit 1
fi
SUDO=
if [ "$(id -u)" != 0 ]; then
	command -v sudo >/dev/null 2>&1 || {
		echo "setup-deps: need root (or sudo) to install: ${missing[*]}" >&2
		exit 1
	}
	SUDO="sudo -n"
fi

echo "setup-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! { $SUDO apt-get update -qq && \
	$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
	cat "$log" >&2
	echo "setup-deps: apt-get failed" >&2
	exit 1
fi

# Check: qemu-storage-daemon comes from qemu-system-common on Debian 12.
for c in meson ninja cc clang qemu-storage-daemon qemu-nbd qemu-img nbdkit nbdinfo fio python3; do
	command -v "$c" >/dev/null 2>&1 || echo "setup-deps: warning: '$c' still missing" >&2
done
exit 0
