# tests/lib/ceph.sh - a one-node Ceph cluster (one mon, one memstore OSD, cephx on) on 127.0.0.1
# for the rbd tests.  Source it after common.sh and call ceph_start once per test script.
#
# Everything lives in $T/ceph (ceph.conf, keyrings, mon data, logs, pid files); the mon listens
# on two free ports (not 3300/6789) and the daemons are stopped by pid at exit.  The whole test
# holds /tmp/blockd-test-ceph.lock so that Ceph tests of parallel runs do not collide.
#
# After ceph_start:
#	CEPH_CONF      the ceph.conf, not exported: blockd must not find it unless a test says so.
#	               The functions ceph and rbd run those tools with it.
#	CEPH_MON_PORT  the mon's v1 (legacy msgr) port; CEPH_MON_PORT2 its v2 port
#	CEPH_MON_HOST  "[v2:127.0.0.1:P2,v1:127.0.0.1:P1]" (librados mon_host)
#	CEPH_KEY       client.admin's base64 cephx key
#	CEPH_POOL      an rbd pool ("rbd"), created and initialised
# ceph_osd_stop / ceph_osd_start stop and restart the OSD.  The OSD keeps its data in RAM
# (memstore, lost when it stops) unless CEPH_STORE=bluestore is set before ceph_start: then it
# is a sparse 2 GiB file in $T/ceph (slower to create, survives an OSD restart).

need ceph-mon ceph-osd ceph ceph-authtool monmaptool rbd uuidgen flock

CEPH_LOCK=/tmp/blockd-test-ceph.lock

_ceph_alive()
{
	[ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null
}

# _ceph_kill NAME: TERM the daemon whose pid file is $CEPH_DIR/run/NAME.pid, KILL after 10 s.
_ceph_kill()
{
	local f=$CEPH_DIR/run/$1.pid p i
	[ -s "$f" ] || return 0
	p=$(cat "$f")
	kill -TERM "$p" 2>/dev/null || { rm -f "$f"; return 0; }
	for i in $(seq 1 100); do
		_ceph_alive "$p" || break
		sleep 0.1
	done
	_ceph_alive "$p" && kill -KILL "$p" 2>/dev/null
	rm -f "$f"
	return 0
}

ceph_stop()
{
	[ -n "${CEPH_DIR:-}" ] || return 0
	_ceph_kill osd.0
	_ceph_kill mon.a
}

ceph_osd_stop()
{
	_ceph_kill osd.0
}

ceph() { command ceph -c "$CEPH_CONF" "$@"; }
rbd() { command rbd -c "$CEPH_CONF" "$@"; }

ceph_osd_start()
{
	ceph-osd -c "$CEPH_CONF" -i 0 --keyring "$CEPH_DIR/osd.0/keyring" 2>>"$CEPH_DIR/log/osd-start.log" ||
		fail "ceph-osd did not start (see $CEPH_DIR/log)"
	local i
	for i in $(seq 1 120); do
		ceph osd dump 2>/dev/null | grep -q '^osd.0 up' && return 0
		sleep 0.5
	done
	fail "osd.0 did not come up"
}

ceph_start()
{
	bd_tmpdir
	exec 9>"$CEPH_LOCK"
	flock -w 900 9 || skip "another test holds $CEPH_LOCK"
	CEPH_DIR=$T/ceph
	mkdir -p "$CEPH_DIR"/{mon.a,osd.0,run,log}
	CEPH_MON_PORT=$(bd_free_port)
	CEPH_MON_PORT2=$(bd_free_port)
	while [ "$CEPH_MON_PORT2" = "$CEPH_MON_PORT" ]; do CEPH_MON_PORT2=$(bd_free_port); done
	CEPH_MON_HOST="[v2:127.0.0.1:$CEPH_MON_PORT2,v1:127.0.0.1:$CEPH_MON_PORT]"
	local fsid d=$CEPH_DIR
	fsid=$(uuidgen)
	cat >"$d/ceph.conf" <<CONF
[global]
fsid = $fsid
mon host = $CEPH_MON_HOST
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv4 = true
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
keyring = $d/keyring
run dir = $d/run
log file = $d/log/\$name.log
pid file = $d/run/\$name.pid
admin socket = $d/run/\$name.asok
chdir = ""
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 2
mon data avail crit = 1
mon cluster log file = $d/log/cluster.log
[client]
admin socket =
log file = $d/log/\$name.\$pid.log
[mon]
mon data = $d/mon.\$id
[osd]
osd data = $d/osd.\$id
osd objectstore = ${CEPH_STORE:-memstore}
memstore device bytes = 1073741824
bluestore block create = true
bluestore block size = 2147483648
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mkfs = false
bluestore cache autotune = false
bluestore cache size = 134217728
osd memory target = 939524096
osd max object name len = 460
osd max object namespace len = 64
CONF
	CEPH_CONF=$d/ceph.conf
	bd_on_exit ceph_stop
	ceph-authtool --create-keyring "$d/keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
	ceph-authtool "$d/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' \
		--cap mgr 'allow *' --cap mds 'allow *' >/dev/null
	monmaptool --create --fsid "$fsid" --addv a "$CEPH_MON_HOST" "$d/monmap" >/dev/null
	ceph-mon -c "$CEPH_CONF" -i a --mkfs --monmap "$d/monmap" --keyring "$d/keyring" >"$d/log/mkfs.log" 2>&1 ||
		fail "ceph-mon --mkfs failed: $(tail -3 "$d/log/mkfs.log")"
	ceph-mon -c "$CEPH_CONF" -i a >>"$d/log/mkfs.log" 2>&1 || fail "ceph-mon did not start"
	local uuid key id i
	uuid=$(uuidgen)
	key=$(ceph-authtool --gen-print-key)
	echo "{\"cephx_secret\": \"$key\"}" >"$d/osd.0/new.json"
	id=$(timeout 60 ceph -c "$CEPH_CONF" osd new "$uuid" -i "$d/osd.0/new.json") || fail "ceph osd new failed"
	[ "$id" = 0 ] || fail "unexpected OSD id $id"
	printf '[osd.0]\nkey = %s\n' "$key" >"$d/osd.0/keyring"
	ceph-osd -c "$CEPH_CONF" -i 0 --mkfs --osd-uuid "$uuid" --keyring "$d/osd.0/keyring" >>"$d/log/mkfs.log" 2>&1 ||
		fail "ceph-osd --mkfs failed"
	ceph_osd_start
	CEPH_KEY=$(ceph-authtool -p -n client.admin "$d/keyring")
	CEPH_POOL=rbd
	timeout 60 ceph -c "$CEPH_CONF" osd pool create "$CEPH_POOL" 8 8 >/dev/null 2>&1 || fail "cannot create pool rbd"
	timeout 60 rbd -c "$CEPH_CONF" pool init "$CEPH_POOL" || fail "rbd pool init failed"
	
}
