#!/bin/bash
# meson-suite: slow
# meson-timeout: 300
# vub-guest-reconnect.sh with packed virtqueues (QEMU 7.2's vhost-user-blk-pci packed=on): blockd
# is killed twice while the guest writes; QEMU hands the in-flight region back, and sends a stale
# ring position for packed rings (it cannot read one back from a dead back end), so blockd must
# find where each ring stands and what was in flight from the region alone.
VUB_GUEST_DEVOPTS=",packed=on" exec bash "$(dirname "$0")/vub-guest-reconnect.sh"
