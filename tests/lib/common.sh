# tests/lib/common.sh - shared helpers for blockd's integration tests (bash).
#
# Usage, at the top of tests/integration/NAME.sh:
#
#	#!/bin/bash
#	source "$(dirname "$0")/../lib/common.sh"
#	need nbdinfo qemu-img
#	bd_tmpdir
#	bd_start --blockdev driver=null-co,node-name=n0 --nbd-server addr.type=unix,addr.path=$T/s ...
#	...
#	bd_stop
#
# Environment (set by tests/meson.build; set them by hand to run a script directly):
#	BLOCKD      the blockd binary (required by bd_start; defaults to $BUILD_DIR/blockd if unset)
#	BUILD_DIR   the meson build directory;  SRC_DIR  the source tree
#	BLOCKD_SANITIZE=1 when the build uses AddressSanitizer/UBSan (informational)
#	BD_KEEP_TMP=1 keeps $T after the test (its path is printed)
#
# Conventions: exit 0 = pass, 77 = skipped (after printing "SKIP: reason"), anything else = fail.
# This file turns on `set -e`; every daemon started with bd_start/bd_spawn is killed by its pid
# when the script exits, whatever the reason.  bd_stop fails the test unless blockd exits 0, so
# crashes, sanitizer reports and leaks found at exit fail the test.

if [ -n "${BD_COMMON_SH_LOADED:-}" ]; then
	return 0
fi
BD_COMMON_SH_LOADED=1

set -e

BD_TEST_NAME=$(basename "$0" .sh)
BD_TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
: "${SRC_DIR:=$(cd "$BD_TESTS_DIR/.." && pwd)}"
export SRC_DIR

# Sanitizer reports: make them fatal with a recognisable exit code; leave user settings alone.
: "${ASAN_OPTIONS:=detect_leaks=1:halt_on_error=1:abort_on_error=0:exitcode=66:print_summary=1:detect_stack_use_after_return=1:strict_string_checks=1:check_initialization_order=1}"
: "${UBSAN_OPTIONS:=print_stacktrace=1:halt_on_error=1:abort_on_error=0:exitcode=66:print_summary=1}"
: "${LSAN_OPTIONS:=exitcode=66}"
export ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS

: "${BD_START_TIMEOUT:=10}" # seconds bd_start waits for the pidfile
: "${BD_STOP_TIMEOUT:=20}"  # seconds bd_stop waits for the exit (ASan leak checks take time)
if [ "${BLOCKD_SANITIZE:-0}" = 1 ]; then
	BD_START_TIMEOUT=$((BD_START_TIMEOUT * 2))
	BD_STOP_TIMEOUT=$((BD_STOP_TIMEOUT * 2))
fi

# Processes to kill at exit (pids), and extra cleanup commands.
BD_PIDS=()
declare -A BD_LOG_OF=() # pid -> log file
BD_FOREIGN=() # daemonized pids: not children of this shell, exit status unknowable
BD_CLEANUP=()
BD_NSTARTED=0
BD_PID=
BD_LOG=
BD_PIDFILE=
BD_STATUS=
T=

# ------------------------------------------------------------------------------------------------
# Outcomes

# skip REASON: the test cannot run here.  Prints "SKIP: REASON" and exits 77.
skip()
{
	echo "SKIP: $*"
	exit 77
}

# fail MSG: the test failed.  Prints "FAIL: MSG" (with the caller's line) and exits 1.
fail()
{
	echo "FAIL: ${BASH_SOURCE[1]##*/}:${BASH_LINENO[0]}: $*" >&2
	exit 1
}

# need CMD...: skip unless every command is available.
need()
{
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null 2>&1 || skip "'$c' is not installed"
	done
}

# need_file PATH...: skip unless every path exists.
need_file()
{
	local f
	for f in "$@"; do
		[ -e "$f" ] || skip "'$f' does not exist"
	done
}

# need_root: skip unless running as root.
need_root()
{
	[ "$(id -u)" = 0 ] || skip "needs root"
}

# ------------------------------------------------------------------------------------------------
# Asserts.  Each fails the test with a message naming the caller's line.

_bd_fail_at()
{
	# $1: depth of the assert's caller in the stack, rest: message
	local d=$1
	shift
	echo "FAIL: ${BASH_SOURCE[$d]##*/}:${BASH_LINENO[$((d - 1))]}: $*" >&2
	exit 1
}

# assert_eq ACTUAL EXPECTED [WHAT]
assert_eq()
{
	[ "$1" == "$2" ] || _bd_fail_at 2 "${3:-value}: expected '$2', got '$1'"
}

# assert_ne ACTUAL UNEXPECTED [WHAT]
assert_ne()
{
	[ "$1" != "$2" ] || _bd_fail_at 2 "${3:-value}: did not expect '$2'"
}

# assert_contains HAYSTACK NEEDLE [WHAT]: NEEDLE is a fixed string.
assert_contains()
{
	[[ "$1" == *"$2"* ]] || _bd_fail_at 2 "${3:-output}: '$2' not found in: $1"
}

# assert_not_contains HAYSTACK NEEDLE [WHAT]
assert_not_contains()
{
	[[ "$1" != *"$2"* ]] || _bd_fail_at 2 "${3:-output}: unexpected '$2' in: $1"
}

# assert_match STRING ERE [WHAT]: bash extended regular expression.
assert_match()
{
	[[ "$1" =~ $2 ]] || _bd_fail_at 2 "${3:-value}: '$1' does not match /$2/"
}

# assert_file_eq FILE1 FILE2: same bytes.
assert_file_eq()
{
	[ -e "$1" ] || _bd_fail_at 2 "'$1' does not exist"
	[ -e "$2" ] || _bd_fail_at 2 "'$2' does not exist"
	local out
	out=$(cmp -- "$1" "$2" 2>&1) || _bd_fail_at 2 "files differ: $out"
}

# assert_file_contains FILE ERE: some line of FILE matches (grep -E).
assert_file_contains()
{
	grep -qE -- "$2" "$1" 2>/dev/null ||
		_bd_fail_at 2 "'$1' has no line matching /$2/: $(head -c 2000 "$1" 2>/dev/null)"
}

# assert_exists PATH... / assert_not_exists PATH...
assert_exists()
{
	local f
	for f in "$@"; do
		[ -e "$f" ] || _bd_fail_at 2 "'$f' does not exist"
	done
}
assert_not_exists()
{
	local f
	for f in "$@"; do
		[ ! -e "$f" ] || _bd_fail_at 2 "'$f' exists"
	done
}

# assert_ok CMD...: CMD succeeds (its output is shown if it does not).
assert_ok()
{
	local out rc=0
	out=$("$@" 2>&1) || rc=$?
	[ "$rc" = 0 ] || _bd_fail_at 2 "'$*' failed with $rc: $out"
}

# assert_fails CMD...: CMD exits non-zero (and is not killed by a signal / sanitizer).
# The output is left in $BD_OUT, the exit code in $BD_RC.
assert_fails()
{
	BD_RC=0
	BD_OUT=$("$@" 2>&1) || BD_RC=$?
	[ "$BD_RC" != 0 ] || _bd_fail_at 2 "'$*' succeeded but should have failed: $BD_OUT"
	[ "$BD_RC" -lt 128 ] && [ "$BD_RC" != 66 ] ||
		_bd_fail_at 2 "'$*' crashed (exit $BD_RC): $BD_OUT"
}

# assert_exit CODE CMD...: CMD exits with CODE.  Output in $BD_OUT (stdout+stderr), $BD_RC.
assert_exit()
{
	local want=$1
	shift
	BD_RC=0
	BD_OUT=$("$@" 2>&1) || BD_RC=$?
	[ "$BD_RC" = "$want" ] || _bd_fail_at 2 "'$*' exited $BD_RC, expected $want: $BD_OUT"
}

# ------------------------------------------------------------------------------------------------
# Temporary directory and cleanup

# bd_tmpdir: create a private temporary directory, export its path as T.  Removed at exit.
bd_tmpdir()
{
	if [ -n "$T" ] && [ -d "$T" ]; then
		return 0
	fi
	T=$(mktemp -d "${TMPDIR:-/tmp}/blockd-test-$BD_TEST_NAME.XXXXXX")
	export T
}

# bd_on_exit CMD: run CMD (a string, eval'd) at exit, before the temporary directory goes.
bd_on_exit()
{
	BD_CLEANUP+=("$1")
}

# Is pid alive (and not a zombie)?
bd_alive()
{
	local pid=$1 st
	[ -n "$pid" ] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	st=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	st=${st##*) }
	[ "${st%% *}" != Z ]
}

_bd_forget_pid()
{
	local p keep=()
	for p in "${BD_PIDS[@]}"; do
		[ "$p" = "$1" ] || keep+=("$p")
	done
	BD_PIDS=("${keep[@]}")
}

# bd_show_log [FILE]: print the tail of a daemon log to stderr.
bd_show_log()
{
	local f=${1:-$BD_LOG}
	[ -n "$f" ] && [ -s "$f" ] || return 0
	echo "----- ${f##*/} (last 100 lines) -----" >&2
	tail -n 100 "$f" >&2
	echo "-----" >&2
}

_bd_exit_trap()
{
	local rc=$? p i
	set +e
	trap - EXIT
	for ((i = ${#BD_CLEANUP[@]} - 1; i >= 0; i--)); do
		eval "${BD_CLEANUP[$i]}" >/dev/null 2>&1
	done
	for p in "${BD_PIDS[@]}"; do
		kill -TERM "$p" 2>/dev/null
	done
	for p in "${BD_PIDS[@]}"; do
		for ((i = 0; i < 50; i++)); do
			bd_alive "$p" || break
			sleep 0.1
		done
		if bd_alive "$p"; then
			echo "cleanup: pid $p ignored SIGTERM; killing it" >&2
			kill -KILL "$p" 2>/dev/null
		fi
	done
	if [ "$rc" != 0 ] && [ "$rc" != 77 ] && [ -n "$T" ]; then
		local f
		for f in "$T"/*.log; do
			[ -e "$f" ] && bd_show_log "$f"
		done
	fi
	if [ -n "$T" ] && [ -d "$T" ]; then
		if [ "${BD_KEEP_TMP:-0}" = 1 ]; then
			echo "keeping $T" >&2
		else
			rm -rf "$T"
		fi
	fi
	exit "$rc"
}
trap _bd_exit_trap EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------------------------------------
# Daemons

_bd_need_blockd()
{
	if [ -z "${BLOCKD:-}" ] && [ -n "${BUILD_DIR:-}" ] && [ -x "$BUILD_DIR/blockd" ]; then
		BLOCKD=$BUILD_DIR/blockd
	fi
	[ -n "${BLOCKD:-}" ] ||
		fail "BLOCKD is not set: run through 'meson test', or export BLOCKD=/path/to/build/blockd"
	[ -x "$BLOCKD" ] || fail "BLOCKD=$BLOCKD is not an executable file"
	export BLOCKD
}

# bd_crash [PID]: SIGKILL the daemon (default: the last one started) and wait until it is gone.
bd_crash()
{
	local pid=${1:-$BD_PID}
	kill -KILL "$pid"
	bd_wait_exit "$pid" 10 || _bd_fail_at 2 "blockd (pid $pid) did not die after SIGKILL"
	_bd_forget_pid "$pid"
	[ "$pid" != "$BD_PID" ] || BD_PID=
}

# bd_img_check IMG LOG: `qemu-img check IMG` with its output in LOG and its exit code in
# BD_CHECK_RC, retried for up to 5 s while a killed daemon's lock still holds the image (a killed
# process's io_uring is torn down asynchronously: its file lock may outlive it).
bd_img_check()
{
	local n
	for ((n = 0; n < 50; n++)); do
		BD_CHECK_RC=0
		qemu-img check "$1" >"$2" 2>&1 || BD_CHECK_RC=$?
		grep -q "Failed to get .* lock" "$2" || return 0
		sleep 0.1
	done
}

# bd_wait_exit PID TIMEOUT: wait up to TIMEOUT seconds for PID (a child of this shell) to exit.
# Sets BD_STATUS to its exit code (128+N when killed by signal N).  Returns 1 on timeout.
bd_wait_exit()
{
	local pid=$1 timeout=${2:-$BD_STOP_TIMEOUT} n
	n=$((timeout * 10))
	while bd_alive "$pid"; do
		if ((n-- <= 0)); then
			return 1
		fi
		sleep 0.1
	done
	BD_STATUS=0
	wait "$pid" 2>/dev/null || BD_STATUS=$?
	return 0
}

# bd_start ARGS...: start "$BLOCKD ARGS... --pidfile $T/blockd.pid" in the background and wait
# (at most BD_START_TIMEOUT seconds) until the pidfile says it is ready.  Output goes to
# $T/blockd.log.  Sets BD_PID, BD_LOG, BD_PIDFILE.  Fails the test, showing the log, if the
# daemon exits or times out first.  A second daemon in the same test gets blockd.2.pid/.log, etc.
# With --daemonize among ARGS, BD_PID is the daemon's pid from the pidfile.
bd_start()
{
	_bd_need_blockd
	bd_tmpdir
	BD_NSTARTED=$((BD_NSTARTED + 1))
	local sfx=""
	[ "$BD_NSTARTED" = 1 ] || sfx=".$BD_NSTARTED"
	BD_PIDFILE=$T/blockd$sfx.pid
	BD_LOG=$T/blockd$sfx.log
	rm -f "$BD_PIDFILE"
	echo "+ blockd $* --pidfile $BD_PIDFILE" >"$BD_LOG"
	"$BLOCKD" "$@" --pidfile "$BD_PIDFILE" >>"$BD_LOG" 2>&1 </dev/null &
	local pid=$! n=$((BD_START_TIMEOUT * 20)) fpid=""
	BD_PIDS+=("$pid")
	BD_PID=$pid
	BD_LOG_OF[$pid]=$BD_LOG
	while :; do
		if [ -s "$BD_PIDFILE" ]; then
			fpid=$(tr -d ' \n' <"$BD_PIDFILE")
			if [ "$fpid" = "$pid" ]; then
				break
			fi
			# --daemonize: the pidfile names the daemon; the launcher exits 0 once it's ready.
			if [[ "$fpid" =~ ^[0-9]+$ ]] && bd_alive "$fpid" && ! bd_alive "$pid"; then
				BD_STATUS=0
				wait "$pid" 2>/dev/null || BD_STATUS=$?
				_bd_forget_pid "$pid"
				BD_PIDS+=("$fpid")
				BD_FOREIGN+=("$fpid")
				BD_LOG_OF[$fpid]=$BD_LOG
				BD_PID=$fpid
				[ "$BD_STATUS" = 0 ] || {
					_bd_fail_at 2 "blockd (daemonizing) exited with $BD_STATUS"
				}
				break
			fi
		fi
		if ! bd_alive "$pid"; then
			BD_STATUS=0
			wait "$pid" 2>/dev/null || BD_STATUS=$?
			_bd_forget_pid "$pid"
			[ -s "$BD_PIDFILE" ] && continue
			_bd_fail_at 2 "blockd exited with status $BD_STATUS before it was ready"
		fi
		if ((n-- <= 0)); then
			_bd_fail_at 2 "blockd did not write its pidfile within ${BD_START_TIMEOUT}s"
		fi
		sleep 0.05
	done
}

# bd_stop [PID]: SIGTERM the daemon (default: the last one started), wait at most BD_STOP_TIMEOUT
# seconds, and fail the test unless it exited 0.  For a daemonized blockd (not our child) the exit
# code cannot be known; only its disappearance is checked.
bd_stop()
{
	local pid=${1:-$BD_PID} log
	[ -n "$pid" ] || _bd_fail_at 2 "bd_stop: no daemon was started"
	log=${BD_LOG_OF[$pid]:-$BD_LOG}
	if ! bd_alive "$pid"; then
		BD_STATUS=0
		wait "$pid" 2>/dev/null || BD_STATUS=$?
		_bd_forget_pid "$pid"
		_bd_fail_at 2 "blockd (pid $pid) died before bd_stop (status $BD_STATUS)"
	fi
	kill -TERM "$pid"
	if [[ " ${BD_FOREIGN[*]} " == *" $pid "* ]]; then
		local n=$((BD_STOP_TIMEOUT * 10))
		while bd_alive "$pid"; do
			((n-- > 0)) || _bd_fail_at 2 "daemonized blockd (pid $pid) did not exit after SIGTERM"
			sleep 0.1
		done
		_bd_forget_pid "$pid"
		[ "$pid" != "$BD_PID" ] || BD_PID=
		return 0
	fi
	if ! bd_wait_exit "$pid" "$BD_STOP_TIMEOUT"; then
		kill -ABRT "$pid" 2>/dev/null || true
		bd_wait_exit "$pid" 5 || kill -KILL "$pid" 2>/dev/null || true
		_bd_forget_pid "$pid"
		_bd_fail_at 2 "blockd (pid $pid) did not exit within ${BD_STOP_TIMEOUT}s of SIGTERM"
	fi
	_bd_forget_pid "$pid"
	if [ "$BD_STATUS" != 0 ]; then
		case $BD_STATUS in
		66) _bd_fail_at 2 "blockd exited with 66: sanitizer report (see blockd.log below)" ;;
		13[0-9] | 1[4-9][0-9]) _bd_fail_at 2 "blockd was killed by signal $((BD_STATUS - 128))" ;;
		*) _bd_fail_at 2 "blockd exited with status $BD_STATUS after SIGTERM (expected 0)" ;;
		esac
	fi
	if [ -n "$log" ] && grep -qE "ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:" "$log"; then
		_bd_fail_at 2 "sanitizer report in $log"
	fi
	[ "$pid" != "$BD_PID" ] || BD_PID=
}

# bd_spawn NAME CMD...: start another server (qemu-nbd, nbdkit, ...) in the background with its
# output in $T/NAME.log; killed at exit.  Sets BD_SPAWN_PID.  Wait for readiness yourself
# (bd_wait_for / bd_wait_socket).
bd_spawn()
{
	bd_tmpdir
	local name=$1
	shift
	echo "+ $*" >"$T/$name.log"
	"$@" >>"$T/$name.log" 2>&1 </dev/null &
	BD_SPAWN_PID=$!
	BD_PIDS+=("$BD_SPAWN_PID")
}

# bd_kill PID: SIGTERM a process started by bd_spawn and wait for it (status ignored).
bd_kill()
{
	kill -TERM "$1" 2>/dev/null || true
	bd_wait_exit "$1" 10 || kill -KILL "$1" 2>/dev/null || true
	wait "$1" 2>/dev/null || true
	_bd_forget_pid "$1"
}

# bd_wait_for TIMEOUT CMD...: retry CMD (quietly) every 0.1 s until it succeeds; fail on timeout.
bd_wait_for()
{
	local timeout=$1 n
	shift
	n=$((timeout * 10))
	until "$@" >/dev/null 2>&1; do
		((n-- > 0)) || _bd_fail_at 2 "timed out after ${timeout}s waiting for: $*"
		sleep 0.1
	done
}

# bd_wait_socket PATH [TIMEOUT]: wait until a unix socket exists.
bd_wait_socket()
{
	local n=$((${2:-10} * 10))
	until [ -S "$1" ]; do
		((n-- > 0)) || _bd_fail_at 2 "socket $1 did not appear"
		sleep 0.1
	done
}

# bd_free_port: print a TCP port on 127.0.0.1 that is free right now.
bd_free_port()
{
	if command -v python3 >/dev/null 2>&1; then
		python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
		return
	fi
	local p
	while :; do
		p=$((20000 + RANDOM % 30000))
		if ! grep -qi ":$(printf %04X "$p") " /proc/net/tcp /proc/net/tcp6 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# bd_nbd_unix_uri SOCKET [EXPORT]: an NBD URI for a unix socket (nbdinfo, nbdcopy, qemu-img).
bd_nbd_unix_uri()
{
	echo "nbd+unix:///${2:-}?socket=$1"
}

# bd_sparse_image PATH SIZE: create (or truncate) a sparse raw image; SIZE as for truncate -s.
bd_sparse_image()
{
	rm -f "$1"
	truncate -s "$2" "$1"
}

# bd_random_file PATH SIZE_IN_KIB: a file of random bytes.
bd_random_file()
{
	head -c "$(($2 * 1024))" /dev/urandom >"$1"
}
