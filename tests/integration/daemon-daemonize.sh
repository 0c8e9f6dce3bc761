#!/bin/bash
# daemon-daemonize.sh: with --daemonize the launching process exits 0 only once the daemon is
# ready; the daemon runs in its own session with stdio detached, serves the export, and SIGTERM
# stops it (removing its pidfile).  When start-up fails, the launcher exits 1 with the error on
# its stderr and leaves no process behind.
source "$(dirname "$0")/../lib/common.sh"
need nbdinfo
bd_tmpdir
_bd_need_blockd

sock=$T/nbd.sock
args=(--blockdev driver=null-co,node-name=n0,size=32M,read-zeroes=on
	--nbd-server "addr.type=unix,addr.path=$sock"
	--export type=nbd,id=e0,node-name=n0,name=disk)

# Run the launcher in the foreground: when it returns, the export must be there.
rc=0
timeout 30 "$BLOCKD" --daemonize "${args[@]}" --pidfile "$T/d.pid" >"$T/launcher.log" 2>&1 \
	</dev/null || rc=$?
[ -s "$T/d.pid" ] && pid=$(tr -d '\n' <"$T/d.pid") || pid=""
if [ -n "$pid" ]; then
	BD_PIDS+=("$pid") # killed at exit whatever happens
fi
assert_eq "$rc" 0 "launcher exit status"
[ -n "$pid" ] || fail "no pidfile after the launcher returned"
bd_alive "$pid" || fail "daemon (pid $pid) is not running"
assert_eq "$(nbdinfo --size "nbd+unix:///disk?socket=$sock")" $((32 << 20)) "export size"

# Detached: own session, stdin/stdout/stderr on /dev/null.
sid=$(ps -o sid= -p "$pid" | tr -d ' ')
assert_eq "$sid" "$pid" "session id of the daemon"
for fd in 0 1 2; do
	assert_eq "$(readlink "/proc/$pid/fd/$fd")" /dev/null "daemon fd $fd"
done

kill -TERM "$pid"
for ((i = 0; i < 200; i++)); do
	bd_alive "$pid" || break
	sleep 0.1
done
bd_alive "$pid" && fail "daemon did not exit within 20 s of SIGTERM"
assert_not_exists "$T/d.pid"

# Failing start-up: launcher exits 1 and says why; no daemon remains.
rc=0
timeout 30 "$BLOCKD" --daemonize "${args[@]}" --export type=nbd,id=e1,node-name=missing \
	--pidfile "$T/f.pid" >"$T/out" 2>"$T/err" </dev/null || rc=$?
assert_eq "$rc" 1 "launcher exit status on a bad option"
assert_contains "$(cat "$T/err")" "missing" "launcher stderr"
assert_not_exists "$T/f.pid"
sleep 0.2
if pgrep -f -- "--pidfile $T/f.pid" >/dev/null; then
	fail "a daemon is left running after a failed start-up"
fi
echo "ok"
