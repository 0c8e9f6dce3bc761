#!/bin/bash
# nbd-options.sh - NBD server and export options: bad keys and values refused with a clear
# error (unknown keys, tls-creds, bitmaps, unknown node / iothread, duplicate ids and names,
# writable on a read-only node), max-connections, handshake-max-seconds, and a
# listening socket passed as addr.type=fd.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need python3 nbdinfo truncate

bd_tmpdir
_bd_need_blockd
img=$T/disk.raw
truncate -s 16M "$img"
sock=$T/nbd.sock
base=(--blockdev driver=file,node-name=f,filename="$img" --blockdev driver=raw,node-name=r,file=f)
srv=(--nbd-server addr.type=unix,addr.path="$sock")

refused()
{
	# refused PATTERN ARGS...: blockd exits non-zero at startup with PATTERN in its output
	local pat=$1
	shift
	assert_fails timeout 10 "$BLOCKD" "$@"
	assert_match "$BD_OUT" "$pat" "error for: $*"
}

refused "Invalid parameter.*bogus" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=r,bogus=1
refused "TLS" "${base[@]}" --nbd-server addr.type=unix,addr.path="$sock",tls-creds=t0
refused "Invalid parameter.*addr.frob" "${base[@]}" --nbd-server addr.type=unix,addr.path="$sock",addr.frob=1
refused "bitmaps" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=r,bitmaps.0=b0
refused "nor node-name=nope" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=nope
refused "iothread 'nope'" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=r,iothread=nope
refused "already in use" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=r \
	--export type=nbd,id=e,node-name=r,name=other
refused "already has export named 'r'" "${base[@]}" "${srv[@]}" --export type=nbd,id=e,node-name=r \
	--export type=nbd,id=e2,node-name=r
refused "read-only" --blockdev driver=file,node-name=f,filename="$img",read-only=on "${srv[@]}" \
	--export type=nbd,id=e,node-name=f,writable=on
refused "addr.host" "${base[@]}" --nbd-server addr.type=inet,addr.port=1

# max-connections=2: a third client is turned away until one leaves
bd_start "${base[@]}" --nbd-server addr.type=unix,addr.path="$sock",max-connections=2,handshake-max-seconds=2 \
	--export type=nbd,id=e,node-name=r,name=disk
python3 - "$sock" <<'PY'
import socket, struct, sys, time
SOCK = sys.argv[1]
def conn():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCK)
    return s
def greeted(s):
    try:
        return len(s.recv(18)) > 0
    except ConnectionResetError:
        return False
a, b = conn(), conn()
assert greeted(a) and greeted(b), 'two clients greeted'
c = conn()
assert not greeted(c), 'third client refused'
a.close()
for i in range(100):  # the slot frees once the server has seen the close
    time.sleep(0.1)
    d = conn()
    if greeted(d):
        break
    d.close()
else:
    raise AssertionError('a client fits again after one left')
# handshake-max-seconds=2: an idle client in the handshake is dropped
t0 = time.time()
d.settimeout(10)
assert d.recv(1) == b'', 'idle handshake dropped'
assert 1 <= time.time() - t0 <= 6, 'after about 2 s (%.1f)' % (time.time() - t0)
PY
bd_stop

# addr.type=fd: a listening socket inherited from the parent
cat >"$T/wrap.py" <<'PY'
import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen(16)
os.set_inheritable(s.fileno(), True)
args = [a.replace('@FD@', str(s.fileno())) for a in sys.argv[2:]]
os.execv(args[0], args)
PY
real=$BLOCKD
BLOCKD=$T/wrap.sh
printf '#!/bin/sh\nexec python3 %s %s %s "$@"\n' "$T/wrap.py" "$T/fd.sock" "$real" >"$BLOCKD"
chmod +x "$BLOCKD"
bd_start "${base[@]}" --nbd-server addr.type=fd,addr.str=@FD@ --export type=nbd,id=e,node-name=r,name=disk
assert_eq "$(nbdinfo --size "$(bd_nbd_unix_uri "$T/fd.sock" disk)")" 16777216 "export over an inherited fd"
bd_stop
BLOCKD=$real
