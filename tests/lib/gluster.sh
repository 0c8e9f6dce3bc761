# tests/lib/gluster.sh - a private GlusterFS server for one test: glusterd on 127.0.0.1 with its
# state in $T/gluster, 1-brick volumes, FUSE mounts; everything stopped by pid at exit.
# Source it after common.sh:
#
#	source "$(dirname "$0")/../lib/common.sh"
#	source "$(dirname "$0")/../lib/gluster.sh"
#	gl_start                 # skips (77) when glusterd cannot run here
#	gl_volume gv0            # a started 1-brick volume; GL_HOST is its brick host name
#	gl_mount gv0 "$T/mnt"    # FUSE mount (unmounted at exit)
#
# There is one glusterd per machine (its port 24007, /var/run/gluster, /var/run/glusterd.socket),
# so gl_start takes /tmp/blockd-test-gluster.lock for the rest of the test (waiting at most
# GL_LOCK_WAIT seconds, default 240).  Volumes are stopped before glusterd; brick and glusterd
# pids are killed by pid.  Brick logs land in /var/log/glusterfs/bricks (glusterd puts them
# there whatever its working directory); everything else is under $T/gluster.

GL_LOCK=/tmp/blockd-test-gluster.lock
# gfapi's own allocations outlive glfs_fini: not blockd's leaks (sanitizer builds)
LSAN_OPTIONS="${LSAN_OPTIONS:-exitcode=66}:suppressions=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gluster-lsan.supp"
export LSAN_OPTIONS
GL_PORT=24007
GL_VOLS=()
GL_MOUNTS=()
GL_DIR=
GL_HOST=

_gl_alive()
{
	[ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q "^State:[[:space:]]*Z" "/proc/$1/status" 2>/dev/null
}

_gl_kill_wait()
{
	local p=$1 i
	kill -TERM "$p" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		_gl_alive "$p" || return 0
		sleep 0.1
	done
	kill -KILL "$p" 2>/dev/null || true
}

# gl_cli ARGS...: the gluster CLI in script mode against our glusterd.
gl_cli()
{
	timeout 60 gluster --mode=script "$@"
}

# gl_brick_pids VOL: pids of the volume's brick processes.
gl_brick_pids()
{
	cat /var/run/gluster/vols/"$1"/*.pid 2>/dev/null || true
}

gl_stop()
{
	local m v p bp
	for m in "${GL_MOUNTS[@]}"; do
		mountpoint -q "$m" 2>/dev/null && { umount "$m" 2>/dev/null || umount -l "$m"; }
	done
	GL_MOUNTS=()
	if [ -n "$GL_DIR" ] && [ -f "$GL_DIR/glusterd.pid" ] && _gl_alive "$(cat "$GL_DIR/glusterd.pid")"; then
		for v in "${GL_VOLS[@]}"; do
			bp=$(gl_brick_pids "$v")
			for p in $bp; do kill -CONT "$p" 2>/dev/null || true; done
			gl_cli volume stop "$v" force >/dev/null 2>&1 || true
			gl_cli volume delete "$v" >/dev/null 2>&1 || true
			for p in $bp; do _gl_kill_wait "$p"; done
		done
		p=$(cat "$GL_DIR/glusterd.pid")
		kill -CONT "$p" 2>/dev/null || true
		_gl_kill_wait "$p"
	else
		# glusterd gone already (a fault test): the bricks are ours to stop
		for v in "${GL_VOLS[@]}"; do
			for p in $(gl_brick_pids "$v"); do
				kill -CONT "$p" 2>/dev/null || true
				_gl_kill_wait "$p"
			done
		done
	fi
	GL_VOLS=()
}

# gl_start: take the machine-wide lock and start glusterd with its state in $T/gluster.
gl_start()
{
	need_root
	need glusterd gluster mountpoint flock
	bd_tmpdir
	exec {GL_LOCK_FD}>"$GL_LOCK"
	flock -w "${GL_LOCK_WAIT:-240}" "$GL_LOCK_FD" ||
		skip "another test holds $GL_LOCK (one glusterd per machine)"
	if (exec 3<>/dev/tcp/127.0.0.1/$GL_PORT) 2>/dev/null; then
		skip "something already listens on 127.0.0.1:$GL_PORT (a glusterd not started by a test)"
	fi
	GL_HOST=$(hostname)
	getent ahostsv4 "$GL_HOST" | awk '{print $1}' | grep -qx 127.0.0.1 ||
		skip "the host name '$GL_HOST' does not resolve to 127.0.0.1 (gluster refuses 127.0.0.1 as brick host)"
	GL_DIR=$T/gluster
	mkdir -p "$GL_DIR"/{lib,log,bricks}
	cp -a /var/lib/glusterd/hooks /var/lib/glusterd/groups "$GL_DIR/lib/" 2>/dev/null || true
	cat >"$GL_DIR/glusterd.vol" <<-VOL
		volume management
		    type mgmt/glusterd
		    option working-directory $GL_DIR/lib
		    option transport-type socket
		    option transport.address-family inet
		    option transport.socket.bind-address 127.0.0.1
		    option transport.socket.listen-port $GL_PORT
		    option transport.socket.keepalive-time 10
		    option transport.socket.keepalive-interval 2
		    option transport.socket.read-fail-log off
		    option ping-timeout 0
		    option event-threads 1
		    option base-port 49152
		    option max-port 49251
		end-volume
	VOL
	bd_on_exit gl_stop
	glusterd -f "$GL_DIR/glusterd.vol" -p "$GL_DIR/glusterd.pid" -l "$GL_DIR/log/glusterd.log" \
		{GL_LOCK_FD}>&- || skip "glusterd does not start here (see $GL_DIR/log/glusterd.log)"
	local i
	for ((i = 0; i < 100; i++)); do
		gl_cli pool list >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	fail "glusterd did not answer within 20 s: $(tail -5 "$GL_DIR/log/glusterd.log" 2>/dev/null)"
}

# gl_volume NAME: create and start a 1-brick volume NAME (brick in $T/gluster/bricks/NAME).
gl_volume()
{
	local v=$1 i
	mkdir -p "$GL_DIR/bricks/$v"
	gl_cli volume create "$v" "$GL_HOST:$GL_DIR/bricks/$v" force >/dev/null ||
		fail "gluster volume create $v failed"
	GL_VOLS+=("$v")
	gl_cli volume start "$v" >/dev/null || fail "gluster volume start $v failed"
	for ((i = 0; i < 100; i++)); do
		gl_cli volume status "$v" --xml 2>/dev/null | grep -q "<status>1</status>" && return 0
		sleep 0.2
	done
	fail "the brick of volume $v did not come up"
}

# gl_mount VOL DIR: FUSE-mount VOL on DIR (unmounted at exit).
gl_mount()
{
	mkdir -p "$2"
	mount -t glusterfs "127.0.0.1:/$1" "$2" -o log-file="$GL_DIR/log/fuse-$1.log" ||
		skip "cannot FUSE-mount a gluster volume here"
	GL_MOUNTS+=("$2")
}
