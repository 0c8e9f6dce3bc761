#!/bin/bash
# qmp-io-error.sh: a read that fails in the storage reaches the NBD client as an error and the
# control socket as one BLOCK_IO_ERROR event (node-name of the exported node, operation read,
# action report); a refused request (past the end) raises none; the daemon keeps serving.
# The failure is made for real: another process truncates the image under the daemon; small
# reads and large ones (which ask for block status first) both fail.
source "$(dirname "$0")/../lib/common.sh"
need python3 qemu-io truncate

bd_tmpdir
truncate -s 16M "$T/img"
bd_start --control "$T/c.sock" \
	--blockdev driver=file,node-name=f,filename="$T/img",locking=off \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$T/s" \
	--export type=nbd,id=e,node-name=r,name=disk
uri=$(bd_nbd_unix_uri "$T/s" disk)

# A QMP client that collects events for a few seconds.
python3 - "$T/c.sock" >"$T/events" <<'PY' &
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); f = s.makefile('rw')
json.loads(f.readline())
f.write('{"execute":"qmp_capabilities"}\n'); f.flush(); json.loads(f.readline())
s.settimeout(0.2); end = time.time() + 4
buf = ''
while time.time() < end:
    try:
        d = s.recv(65536).decode()
    except socket.timeout:
        continue
    if not d:
        break
    buf += d
    while '\n' in buf:
        line, buf = buf.split('\n', 1)
        print(line, flush=True)
PY
listener=$!
sleep 1

qemu-io -r -f raw -c "read 12M 64k" "$uri" | grep -q "read 65536/65536" ||
	fail "the read before the truncation failed"
qemu-io -r -f raw -c "read 32M 64k" "$uri" >/dev/null 2>&1 || true # past the end: refused, no event
truncate -s 1M "$T/img"
if qemu-io -r -f raw -c "read 12M 4k" "$uri" >"$T/out" 2>&1 && grep -q "read 4096/4096" "$T/out"; then
	fail "a read of the truncated part succeeded: $(cat "$T/out")"
fi
# a large read asks for block status first: past EOF must not be answered as a hole of zeroes
if qemu-io -r -f raw -c "read 8M 1M" "$uri" >"$T/out2" 2>&1 && grep -q "read 1048576/1048576" "$T/out2"; then
	fail "a 1 MiB read of the truncated part succeeded: $(cat "$T/out2")"
fi
qemu-io -r -f raw -c "read 0 64k" "$uri" | grep -q "read 65536/65536" || fail "daemon stopped serving"
wait "$listener" || true

cat "$T/events"
n=$(grep -c '"event": *"BLOCK_IO_ERROR"' "$T/events" || true)
[ "$n" = 1 ] || fail "expected exactly one BLOCK_IO_ERROR, got $n"
grep '"BLOCK_IO_ERROR"' "$T/events" | python3 -c '
import json, sys
e = json.loads(sys.stdin.read())
d = e["data"]
assert d["node-name"] == "r", d
assert d["operation"] == "read", d
assert d["action"] == "report", d
assert d["nospace"] is False, d
assert "seconds" in e["timestamp"], e
' || fail "BLOCK_IO_ERROR has the wrong data"
bd_stop
echo ok
