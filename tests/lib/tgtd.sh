# tests/lib/tgtd.sh - a private tgtd (the userspace iSCSI target of Debian's "tgt") on 127.0.0.1
# for the iscsi tests.  Source after common.sh and bd_tmpdir.
#
#	tgtd_start                 start tgtd on a free port ($TGTD_PORT), control port $TGTD_CP
#	tgtd_target TID IQN        a new target, bound to initiators from 127.0.0.1
#	tgtd_lun TID LUN FILE [thin]  FILE as LUN (thin: thin_provisioning=1, i.e. UNMAP and
#	                           WRITE SAME with UNMAP; tgtd punches holes in FILE)
#	tgtd_chap TID USER PASS    require CHAP for the target
#	tgtd_kill                  SIGKILL (the fault tests); tgtd_restart starts it again on the
#	                           same port (the targets have to be defined again)
#	tgtd_stop                  the orderly stop (also run at exit)
#
# Pitfalls (see also shared recipes): tgtd ignores SIGTERM, so an orderly stop deletes the
# targets, then "tgtadm --mode system --op delete", and SIGKILLs after 5 s; the control socket
# is /var/run/tgtd/socket.N for "-C N" and the default N=0 may belong to a system tgtd, so we
# use our own N; only one test at a time may use our N, hence flock on
# /tmp/blockd-test-tgtd.lock for the whole test; tgtd forks nothing with -f, so its pid is ours.

TGTD_CP=${TGTD_CP:-117}
TGTD_PORT=
TGTD_PID=
TGTD_LOCK_FD=

tgtadm_() { tgtadm -C "$TGTD_CP" --lld iscsi "$@"; }

_tgtd_alive()
{
	[ -n "$TGTD_PID" ] && [ -e "/proc/$TGTD_PID" ] &&
		! grep -q '^State:[[:space:]]*Z' "/proc/$TGTD_PID/status" 2>/dev/null
}

_tgtd_launch()
{
	tgtd -f -C "$TGTD_CP" --iscsi "portal=127.0.0.1:$TGTD_PORT" >>"$T/tgtd.log" 2>&1 &
	TGTD_PID=$!
	disown "$TGTD_PID" # no "Killed" job report; _tgtd_alive tells a zombie from a live tgtd
	local i
	for i in $(seq 1 100); do
		tgtadm_ --mode sys --op show >/dev/null 2>&1 && return 0
		_tgtd_alive || break
		sleep 0.1
	done
	cat "$T/tgtd.log" >&2
	fail "tgtd did not start"
}

tgtd_start()
{
	need tgtd tgtadm
	exec {TGTD_LOCK_FD}>/tmp/blockd-test-tgtd.lock
	flock -w 300 "$TGTD_LOCK_FD" || skip "another test holds /tmp/blockd-test-tgtd.lock"
	# a stale tgtd of a killed run of ours on the same control port
	if tgtadm_ --mode sys --op show >/dev/null 2>&1; then
		tgtadm -C "$TGTD_CP" --mode system --op delete >/dev/null 2>&1 || true
		sleep 0.5
	fi
	TGTD_PORT=$(bd_free_port)
	_tgtd_launch
	bd_on_exit tgtd_stop
}

tgtd_restart()
{
	_tgtd_alive && fail "tgtd_restart: tgtd still runs"
	_tgtd_launch
}

tgtd_target()
{
	tgtadm_ --mode target --op new --tid "$1" --targetname "$2"
	tgtadm_ --mode target --op bind --tid "$1" --initiator-address 127.0.0.1
}

tgtd_lun()
{
	tgtadm_ --mode logicalunit --op new --tid "$1" --lun "$2" --backing-store "$3"
	if [ "${4:-}" = thin ]; then
		tgtadm_ --mode logicalunit --op update --tid "$1" --lun "$2" \
			--params thin_provisioning=1
	fi
}

tgtd_chap()
{
	tgtadm_ --mode account --op new --user "$2" --password "$3"
	tgtadm_ --mode account --op bind --tid "$1" --user "$2"
}

tgtd_kill()
{
	_tgtd_alive && kill -KILL "$TGTD_PID"
	local i
	for i in $(seq 1 50); do
		_tgtd_alive || break
		sleep 0.1
	done
}

tgtd_stop()
{
	_tgtd_alive || return 0
	local tid
	for tid in $(tgtadm_ --mode target --op show 2>/dev/null | sed -n 's/^Target \([0-9]*\):.*/\1/p'); do
		tgtadm_ --mode target --op delete --tid "$tid" --force >/dev/null 2>&1 || true
	done
	tgtadm -C "$TGTD_CP" --mode system --op delete >/dev/null 2>&1 || true
	local i
	for i in $(seq 1 50); do
		_tgtd_alive || break
		sleep 0.1
	done
	_tgtd_alive && kill -KILL "$TGTD_PID"
	TGTD_PID=
}
