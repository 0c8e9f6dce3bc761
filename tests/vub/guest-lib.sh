# tests/vub/guest-lib.sh - helpers for the vhost-user-blk guest tests (sourced after
# tests/lib/common.sh).  A tiny Linux guest (tests/vub/build-guest.sh) boots under QEMU TCG
# against a vhost-user-blk socket and runs a test script inside; its "GUEST: ..." lines are the
# report.
#
#   vub_guest_need                 skip (77) unless QEMU, busybox, cpio and a kernel are at hand
#   vub_guest_build SCRIPT         build the initramfs running SCRIPT into $T/guest
#   vub_guest_run SOCK NQ [DEVOPTS] [-- QEMU ARGS]   boot; console in $T/guest.log (waits)
#   vub_guest_start SOCK NQ ...    the same in the background (VUB_QEMU_PID)
#   vub_guest_line KEY             the value after "GUEST: KEY" in the log
VUB_DIR=$SRC_DIR/tests/vub
VUB_CLIENT=${VUB_CLIENT:-${BUILD_DIR:-}/tests/vub/vub-client}

vub_guest_need()
{
	command -v qemu-system-x86_64 >/dev/null 2>&1 || skip "qemu-system-x86_64 is not installed"
	command -v cpio >/dev/null 2>&1 || skip "cpio is not installed"
	command -v gcc >/dev/null 2>&1 || skip "gcc is not installed"
	bd_tmpdir
}

vub_guest_build()
{
	local rc=0
	"$VUB_DIR/build-guest.sh" "$T/guest" "$1" >"$T/guest-build.log" 2>&1 || rc=$?
	if [ "$rc" = 77 ]; then
		skip "$(grep SKIP "$T/guest-build.log" | head -1)"
	fi
	[ "$rc" = 0 ] || fail "guest build failed: $(tail -5 "$T/guest-build.log")"
}

vub_guest_run()
{
	local sock=$1 nq=$2 devopts=${3:-}
	shift 3 2>/dev/null || shift $#
	"$VUB_DIR/run-guest.sh" "$T/guest" "$sock" "$nq" "$devopts" "$@" >"$T/guest.log" 2>&1 || true
	tr -d '\r' <"$T/guest.log" | grep -a "GUEST:" | sed 's/^.*GUEST:/GUEST:/' >"$T/guest.out" || true
	cat "$T/guest.out"
}

vub_guest_start()
{
	local sock=$1 nq=$2 devopts=${3:-}
	shift 3 2>/dev/null || shift $#
	"$VUB_DIR/run-guest.sh" "$T/guest" "$sock" "$nq" "$devopts" "$@" >"$T/guest.log" 2>&1 &
	VUB_QEMU_PID=$!
	BD_PIDS+=("$VUB_QEMU_PID")
}

vub_guest_wait()
{
	wait "$VUB_QEMU_PID" 2>/dev/null || true
	_bd_forget_pid "$VUB_QEMU_PID"
	tr -d '\r' <"$T/guest.log" | grep -a "GUEST:" | sed 's/^.*GUEST:/GUEST:/' >"$T/guest.out" || true
	cat "$T/guest.out"
}

vub_guest_line()
{
	local l
	l=$(grep -aF "GUEST: $1" "$T/guest.out" | head -1)
	l=${l#"GUEST: $1"}
	echo "${l# }"
}
