#!/bin/bash
# qcow2-writeback.sh - the write-back of L2/L1 updates (formats/qcow2-writeback.c) through an
# NBD export, each case checked by QEMU (`qemu-img check` clean, `qemu-img compare` against a
# raw reference the load mirrored its writes into):
#  1. a tiny L2 cache (16 slots for 128 tables, 4k clusters): dirty tables are written back to
#     make room while 32 random writes and checked reads are in flight; clean stop (SIGTERM)
#     writes the rest;
#  2. the default cache (every table fits): writes, an NBD flush, SIGKILL: all data there;
#  3. the timer (l2-writeback-interval=1): writes without a flush, 2.5 s, SIGKILL: all there;
#  4. an internal snapshot taken with dirty tables (QMP): the snapshot holds the writes;
#  5. block_resize with dirty tables, then SIGKILL after a flush: data and size there;
#  6. l2-writeback=off: the write-through path (every commit written), SIGKILL after a flush;
#  7. a tiny cache with write-through members among the write-back ones (writes over allocated
#     zero clusters free them): the commit must write back before the next group, else a
#     member waited for a slot forever (found in review: the node hung).
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io nbdsh python3
bd_tmpdir
: "${BLOCKCTL:=${BUILD_DIR:-$(dirname "$BLOCKD")}/blockctl}"
[ -x "$BLOCKCTL" ] || skip "blockctl not built"
HERE=$(cd "$(dirname "$0")" && pwd)
# nbdsh runs "python3": the system one, which has libnbd's module
nbdsh() { PATH=/usr/bin:$PATH command nbdsh "$@"; }
nbdsh -c 'pass' >/dev/null 2>&1 || skip "nbdsh cannot load libnbd's Python module"
q() { "$BLOCKCTL" --socket "$T/c" qmp "$@"; }
M=$((1024 * 1024))

# start IMG EXTRA: blockd with the qcow2 node q (EXTRA: more qcow2 options) exported on $T/s
start()
{
	bd_start --control "$T/c" \
		--blockdev "driver=qcow2,node-name=q,file.driver=file,file.filename=$1$2" \
		--nbd-server addr.type=unix,addr.path="$T/s" \
		--export type=nbd,id=e,node-name=q,writable=on
	URI=$(bd_nbd_unix_uri "$T/s" q)
}

# load SEED NWRITES SPAN [VAR=VALUE ...]: run qcow2_wb_load.py against the export
load()
{
	local seed=$1 n=$2 span=$3
	shift 3
	env SEED="$seed" NWRITES="$n" SPAN="$span" REF="$T/ref.raw" "$@" \
		PATH=/usr/bin:$PATH nbdsh -u "$URI" -c "exec(open('$HERE/qcow2_wb_load.py').read())"
}

# load_held SEED NWRITES SPAN [VAR=VALUE ...]: load in the background, the connection kept
# open afterwards (no final flush); returns when the load is done
load_held()
{
	load "$@" DONE_FILE="$T/done" HOLD=30 &
	LPID=$!
	bd_wait_for 60 test -e "$T/done"
}

# crash IMG: SIGKILL blockd (and the held load), wait until QEMU can take the image's lock
crash()
{
	bd_crash
	bd_img_check "$1" "$T/check.log"
	kill "$LPID" 2>/dev/null
	wait "$LPID" 2>/dev/null || true
}

# verify IMG [allowed check codes]: qemu-img check clean (0, or 3 = leaks where allowed), and
# equal to the reference
verify()
{
	local img=$1 ok=${2:-0} rc
	bd_img_check "$img" "$T/check.log"
	rc=$BD_CHECK_RC
	[[ " $ok " == *" $rc "* ]] || { cat "$T/check.log"; fail "$img: qemu-img check exited $rc"; }
	qemu-img compare -f qcow2 -F raw "$img" "$T/ref.raw" >"$T/cmp.log" 2>&1 ||
		{ cat "$T/cmp.log"; fail "$img differs from the reference"; }
}

fresh()
{
	rm -f "$T/img.qcow2" "$T/ref.raw" "$T/done"
	qemu-img create -q -f qcow2 -o "$1" "$T/img.qcow2" "$2"
	qemu-img create -q -f raw "$T/ref.raw" "$2"
}

echo "== 1: tiny cache, eviction under load, clean stop (at ${SECONDS}s)"
fresh cluster_size=4096 256M
start "$T/img.qcow2" ",l2-cache-size=65536"
load 1 3000 $((256 * M)) QD=32 MAXLEN=16384 || fail "load 1 failed"
bd_stop
verify "$T/img.qcow2"
assert_contains "$(qemu-img check "$T/img.qcow2" 2>&1)" "No errors were found"

echo "== 2: default cache, flush, SIGKILL (at ${SECONDS}s)"
fresh cluster_size=65536 1G
start "$T/img.qcow2"
load_held 2 2000 $((1024 * M)) QD=32 FLUSH_AT_END=1
crash "$T/img.qcow2"
verify "$T/img.qcow2"

echo "== 3: the timer writes dirty tables back without a flush (at ${SECONDS}s)"
fresh cluster_size=65536 1G
start "$T/img.qcow2" ",l2-writeback-interval=1"
load_held 3 1000 $((1024 * M)) QD=16
sleep 2.5
crash "$T/img.qcow2"
verify "$T/img.qcow2" "0 3"

echo "== 4: an internal snapshot with dirty tables (at ${SECONDS}s)"
fresh cluster_size=65536 256M
start "$T/img.qcow2" ",l2-writeback-interval=0"
load_held 4 800 $((256 * M)) QD=16
q blockdev-snapshot-internal-sync '{"device": "q", "name": "s1"}' >/dev/null ||
	fail "snapshot failed"
crash "$T/img.qcow2"
bd_img_check "$T/img.qcow2" "$T/check.log"
rc=$BD_CHECK_RC
[ "$rc" = 0 ] || [ "$rc" = 3 ] || { cat "$T/check.log"; fail "check after the snapshot: $rc"; }
qemu-img convert -l snapshot.name=s1 -O raw "$T/img.qcow2" "$T/snap.raw"
cmp "$T/snap.raw" "$T/ref.raw" || fail "the snapshot does not hold the writes made before it"
verify "$T/img.qcow2" "0 3"

echo "== 5: block_resize with dirty tables (at ${SECONDS}s)"
fresh cluster_size=65536 256M
start "$T/img.qcow2" ",l2-writeback-interval=0"
load_held 5 800 $((256 * M)) QD=16
q block_resize '{"node-name": "q", "size": 8589934592}' >/dev/null || fail "resize failed"
crash "$T/img.qcow2"
size=$(qemu-img info --output=json "$T/img.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
assert_eq "$size" 8589934592
truncate -s 8G "$T/ref.raw"
verify "$T/img.qcow2" "0 3"

echo "== 6: l2-writeback=off (at ${SECONDS}s)"
fresh cluster_size=65536 1G
start "$T/img.qcow2" ",l2-writeback=off"
load_held 6 1500 $((1024 * M)) QD=32 FLUSH_AT_END=1
crash "$T/img.qcow2"
verify "$T/img.qcow2"

echo "== 7: tiny cache, write-back and write-through members mixed (at ${SECONDS}s)"
fresh cluster_size=4096 256M
cmds=()
for ((o = 0; o < 256 * M; o += 65536)); do cmds+=(-c "write -P 0 $o 4k" -c "write -z $o 4k"); done
qemu-io -f qcow2 "${cmds[@]}" "$T/img.qcow2" >/dev/null
start "$T/img.qcow2" ",l2-cache-size=65536,l2-writeback-interval=0"
timeout 120 bash -c "$(declare -f load); T=$T URI='$URI' HERE=$HERE load 7 4000 $((256 * M)) QD=64 MAXLEN=8192" ||
	fail "load 7 failed or hung"
bd_stop
verify "$T/img.qcow2"

echo "qcow2 write-back: all cases ok"
