# tests/lib/nfs.sh - an NFSv3 server for the tests: nfs-ganesha (FSAL VFS) exporting
# $NFS_EXPORT_DIR as /export, with rpcbind, both inside a private network namespace that has
# only "lo" and a private mount namespace (rpcbind binds 0.0.0.0:111 and its unix socket
# /run/rpcbind.sock: neither may touch the host).  The blockd under test must run in the same
# namespaces: nfs_setup points BLOCKD at a wrapper that enters them (nsenter execs, so the
# pid bd_start sees is blockd's own).  Unix sockets in $T work across network namespaces, so
# clients (qemu-img, nbdinfo, blockctl) run outside.
#
# One NFS test at a time per machine: nfs_setup holds flock /tmp/blockd-test-nfs.lock until
# the script exits.
#
#	source "$(dirname "$0")/../lib/common.sh"
#	source "$(dirname "$0")/../lib/nfs.sh"
#	nfs_setup                # skips (77) when something is missing
#	bd_start ...             # blockd inside the namespaces
#	nfs_exec CMD...          # any command inside them
#	nfs_ganesha_kill / nfs_ganesha_stop / nfs_ganesha_start
#
# Variables: NFS_NS (namespace name), NFS_DIR, NFS_EXPORT_DIR (the server's directory),
# NFS_HOST (127.0.0.1), NFS_EXPORT (/export), NFS_GANESHA_PID.

NFS_HOST=127.0.0.1
NFS_EXPORT=/export
NFS_NS=
NFS_DIR=
NFS_EXPORT_DIR=
NFS_MNTNS=
NFS_GANESHA_PID=
NFS_RPCBIND_PID=

nfs_exec()
{
	nsenter --net="/run/netns/$NFS_NS" --mount="$NFS_MNTNS" "$@"
}

_nfs_alive()
{
	[ -n "$1" ] && [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

_nfs_cleanup()
{
	[ -n "$NFS_GANESHA_PID" ] && kill -KILL "$NFS_GANESHA_PID" 2>/dev/null
	[ -n "$NFS_RPCBIND_PID" ] && kill -KILL "$NFS_RPCBIND_PID" 2>/dev/null
	sleep 0.2
	if [ -n "$NFS_MNTNS" ]; then
		umount "$NFS_MNTNS" 2>/dev/null
		umount "$NFS_DIR/ns" 2>/dev/null
	fi
	[ -n "$NFS_NS" ] && ip netns del "$NFS_NS" 2>/dev/null
	[ -n "$NFS_DIR" ] && rm -rf "$NFS_DIR"
	return 0
}

# nfs_setup: namespaces, rpcbind, ganesha.  Skips the test when it cannot work here.
nfs_setup()
{
	need_root
	need ip nsenter unshare rpcbind ganesha.nfsd ss flock
	[ -e /usr/lib/x86_64-linux-gnu/ganesha/libfsalvfs.so ] ||
		ls /usr/lib/*/ganesha/libfsalvfs.so >/dev/null 2>&1 || skip "nfs-ganesha-vfs is not installed"
	_bd_need_blockd
	bd_tmpdir
	exec {NFS_LOCK_FD}>/tmp/blockd-test-nfs.lock
	flock -w 300 "$NFS_LOCK_FD" || fail "another NFS test held /tmp/blockd-test-nfs.lock for 300 s"

	NFS_NS=blockd-nfs-$$
	NFS_DIR=$(mktemp -d /tmp/blockd-nfs-srv.XXXXXX)
	NFS_EXPORT_DIR=$NFS_DIR/export
	mkdir -p "$NFS_EXPORT_DIR" "$NFS_DIR/recov" "$NFS_DIR/run" "$NFS_DIR/ns"
	bd_on_exit _nfs_cleanup
	ip netns add "$NFS_NS" || skip "cannot create a network namespace"
	ip netns exec "$NFS_NS" ip link set lo up
	# a private mount namespace with its own /run (rpcbind's socket and state)
	mount --bind "$NFS_DIR/ns" "$NFS_DIR/ns" && mount --make-private "$NFS_DIR/ns" ||
		skip "cannot make a private mount point"
	touch "$NFS_DIR/ns/mnt"
	NFS_MNTNS=$NFS_DIR/ns/mnt
	unshare --mount="$NFS_MNTNS" --propagation private \
		sh -c 'mount -t tmpfs -o mode=755 tmpfs /run && mkdir -p /run/rpcbind &&
			chown _rpc /run/rpcbind 2>/dev/null; exit 0' ||
		skip "cannot create a mount namespace"

	nsenter --net="/run/netns/$NFS_NS" --mount="$NFS_MNTNS" rpcbind -f -w >"$T/rpcbind.log" 2>&1 &
	NFS_RPCBIND_PID=$!
	local i
	for i in $(seq 1 50); do
		nfs_exec ss -ltn "sport = :111" | grep -q LISTEN && break
		sleep 0.1
	done
	nfs_exec ss -ltn "sport = :111" | grep -q LISTEN || fail "rpcbind did not start"

	cat >"$NFS_DIR/ganesha.conf" <<CONF
NFS_CORE_PARAM {
    NFS_Port = 2049;
    MNT_Port = 2050;
    Protocols = 3;
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Enable_UDP = false;
    mount_path_pseudo = true;
    Plugins_Dir = $(dirname "$(ls /usr/lib/*/ganesha/libfsalvfs.so | head -n1)");
}
NFSV4 { Graceless = true; RecoveryRoot = $NFS_DIR/recov; Lease_Lifetime = 10; }
NFS_KRB5 { Active_krb5 = false; }
# the tests change the exported directory behind ganesha's back: no attribute or directory cache
MDCACHE { Dir_Chunk = 0; }
EXPORT_DEFAULTS { SecType = sys; Squash = No_Root_Squash; }
EXPORT {
    Export_Id = 1;
    Path = $NFS_EXPORT_DIR;
    Pseudo = /export;
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    Attr_Expiration_Time = 0;
    FSAL { Name = VFS; }
}
LOG { Default_Log_Level = EVENT; }
CONF
	nfs_ganesha_start

	# blockd runs in the namespaces
	NFS_REAL_BLOCKD=$(realpath "$BLOCKD")
	cat >"$NFS_DIR/blockd-in-ns" <<EOF
#!/bin/sh
exec nsenter --net=/run/netns/$NFS_NS --mount=$NFS_MNTNS --wd="\$PWD" "$NFS_REAL_BLOCKD" "\$@"
EOF
	chmod +x "$NFS_DIR/blockd-in-ns"
	BLOCKD=$NFS_DIR/blockd-in-ns
	export BLOCKD
}

# nfs_ganesha_start: (re)start ganesha; waits until NFS and MOUNT are registered.
nfs_ganesha_start()
{
	# nsenter execs: $! is ganesha's own pid
	nsenter --net="/run/netns/$NFS_NS" --mount="$NFS_MNTNS" ganesha.nfsd -F \
		-f "$NFS_DIR/ganesha.conf" -L "$T/ganesha.log" -p "$NFS_DIR/run/ganesha.pid" \
		>>"$T/ganesha.log" 2>&1 &
	NFS_GANESHA_PID=$!
	local i
	for i in $(seq 1 100); do
		if nfs_exec rpcinfo -p 127.0.0.1 2>/dev/null | grep -q mountd &&
			nfs_exec ss -ltn "sport = :2049" | grep -q LISTEN; then
			return 0
		fi
		_nfs_alive "$NFS_GANESHA_PID" || break
		sleep 0.1
	done
	tail -n 20 "$T/ganesha.log" >&2
	fail "ganesha did not start"
}

# nfs_ganesha_kill: SIGKILL the server (the connection breaks at once).
nfs_ganesha_kill()
{
	kill -KILL "$NFS_GANESHA_PID" 2>/dev/null || true
	wait "$NFS_GANESHA_PID" 2>/dev/null || true
	NFS_GANESHA_PID=
}

# nfs_ganesha_stop: SIGSTOP / SIGCONT the server (it stops answering; the connection stays).
nfs_ganesha_freeze() { kill -STOP "$NFS_GANESHA_PID"; }
nfs_ganesha_thaw() { kill -CONT "$NFS_GANESHA_PID"; }
