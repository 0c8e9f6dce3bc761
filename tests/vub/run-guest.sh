#!/bin/bash
# tests/vub/run-guest.sh - boot the guest of build-guest.sh under QEMU (TCG) with one
# vhost-user-blk disk on SOCKET; the guest console goes to stdout.
# usage: run-guest.sh OUTDIR SOCKET NUM_QUEUES [extra -device options] [-- extra qemu args]
#   e.g. run-guest.sh $T/g $T/vub.sock 2 ",packed=on" -- -chardev ...
# Guest RAM must be shared with the back end: memory-backend-memfd,share=on.
set -u
OUT=$1 SOCK=$2 NQ=${3:-1} DEVOPTS=${4:-}
shift 4 2>/dev/null || shift $#
[ "${1:-}" = -- ] && shift
CHROPTS=${VUB_CHARDEV_OPTS:-}
exec timeout "${VUB_GUEST_TIMEOUT:-240}" qemu-system-x86_64 \
	-machine q35,accel=tcg,memory-backend=mem -cpu max -smp 2 -m 256M \
	-object memory-backend-memfd,id=mem,size=256M,share=on \
	-chardev socket,id=vub0,path="$SOCK"$CHROPTS \
	-device vhost-user-blk-pci,chardev=vub0,num-queues="$NQ"$DEVOPTS \
	-kernel "$OUT/vmlinuz" -initrd "$OUT/initramfs.cpio.gz" \
	-append "console=ttyS0 quiet panic=-1 no_timer_check" -nographic -no-reboot -nodefaults -serial stdio "$@"
