#!/bin/bash
# qmp-stress.sh: hostile control-socket clients never disturb the data path.  While an NBD export
# serves a write+verify loop (qemu-io), 100 clients connect at once and misbehave: garbage, huge
# input without a newline, commands cut off mid-way, pipelined commands whose replies they never
# read (the daemon must drop them, not block), file descriptors passed and abandoned.  Afterwards
# the daemon still answers, getfd/closefd work, the I/O loop saw no error, and blockd exits 0 on
# SIGTERM (the ASan build catches leaks).
# meson-timeout: 240
source "$(dirname "$0")/../lib/common.sh"
need python3 qemu-io
bd_tmpdir

truncate -s 64M "$T/disk.img"
bd_start --control "$T/c.sock" \
	--blockdev driver=file,node-name=f0,filename="$T/disk.img" \
	--blockdev driver=raw,node-name=r0,file=f0 \
	--nbd-server addr.type=unix,addr.path="$T/nbd.sock" \
	--export type=nbd,id=e0,node-name=r0,name=disk,writable=on

uri="nbd+unix:///disk?socket=$T/nbd.sock"

# The data path: write a pattern, read it back, with a new pattern each round.
(
	i=0
	while [ ! -e "$T/stop" ]; do
		p=$(((i % 250) + 1))
		if ! qemu-io -f raw "$uri" -c "write -P $p 0 4M" -c "read -P $p 0 4M" \
			-c "write -P $p 32M 1M" -c "read -P $p 32M 1M" >"$T/io.out" 2>&1 ||
			grep -qiE "fail|error|mismatch" "$T/io.out"; then
			cp "$T/io.out" "$T/io.failed"
			break
		fi
		i=$((i + 1))
	done
	echo "$i" >"$T/io.rounds"
) &
io_pid=$!

cat >"$T/stress.py" <<'EOF'
import array, json, os, random, socket, sys, threading, time

path = sys.argv[1]
errors = []
random.seed(1)

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    return s

def greet(s):
    buf = b""
    while b"\n" not in buf:
        d = s.recv(4096)
        if not d:
            raise EOFError
        buf += d
    return buf

def garbage(i):
    s = connect()
    greet(s)
    s.sendall(bytes(random.randrange(256) for _ in range(4096)))
    s.close()

def huge(i):
    s = connect()
    greet(s)
    chunk = b'{"execute": "' + b"x" * 65536
    try:
        for _ in range(40):  # 2.6 MB without a complete value
            s.sendall(chunk)
    except OSError:
        pass
    s.close()

def cut(i):
    s = connect()
    greet(s)
    s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute": "blockdev-add", "argu')
    time.sleep(0.01 * (i % 5))
    s.close()

def no_read(i):
    # pipelined commands, replies never read: the daemon must not block on us
    s = connect()
    s.sendall(b'{"execute":"qmp_capabilities"}\n')
    try:
        for _ in range(200):
            s.sendall(b'{"execute":"query-qmp-schema"}\n' * 10)
    except OSError:
        pass  # disconnected by the daemon: fine
    time.sleep(0.5)
    s.close()

def fds(i):
    s = connect()
    greet(s)
    r, w = os.pipe()
    msg = b'{"execute":"qmp_capabilities"}\n{"execute":"query-version"}\n'
    s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r, w]))])
    os.close(r)
    os.close(w)
    s.close()

def abrupt(i):
    s = connect()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.sendall(b'{"execute":"qmp_capabilities"}\n{"execute":"query-named-block-nodes"}\n')
    s.close()

kinds = [garbage, huge, cut, no_read, fds, abrupt]

def run(i):
    try:
        kinds[i % len(kinds)](i)
    except (OSError, EOFError) as e:
        # a refused or reset connection is the daemon's right; a hang is not
        if isinstance(e, socket.timeout):
            errors.append("client %d (%s): timeout" % (i, kinds[i % len(kinds)].__name__))

for rnd in range(3):
    threads = [threading.Thread(target=run, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        if t.is_alive():
            errors.append("a client thread hung")

# The daemon still answers, and passes fds by name.
s = connect()
greet(s)
f = s.makefile("rb")
def cmd(text, fds=None):
    if fds:
        s.sendmsg([text.encode() + b"\n"],
                  [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        s.sendall(text.encode() + b"\n")
    while True:
        m = json.loads(f.readline())
        if "event" not in m:
            return m
assert cmd('{"execute":"qmp_capabilities"}') == {"return": {}}
v = cmd('{"execute":"query-version"}')
assert "return" in v, v
r, w = os.pipe()
g = cmd('{"execute":"getfd","arguments":{"fdname":"mypipe"}}', [r])
os.close(r)
os.close(w)
assert g == {"return": {}}, g
g = cmd('{"execute":"getfd","arguments":{"fdname":"nofd"}}')
assert "error" in g, g
g = cmd('{"execute":"closefd","arguments":{"fdname":"mypipe"}}')
assert g == {"return": {}}, g
g = cmd('{"execute":"closefd","arguments":{"fdname":"mypipe"}}')
assert g["error"]["class"] == "GenericError", g
e = cmd('{"execute":"query-block-exports"}')
assert e["return"][0]["id"] == "e0", e
s.close()
for e in errors:
    print("ERROR:", e)
sys.exit(1 if errors else 0)
EOF

python3 "$T/stress.py" "$T/c.sock" || fail "control socket stress failed"

touch "$T/stop"
wait "$io_pid"
[ ! -e "$T/io.failed" ] || fail "I/O failed during the stress: $(cat "$T/io.failed")"
rounds=$(cat "$T/io.rounds")
[ "$rounds" -gt 0 ] || fail "no I/O round completed"
echo "I/O rounds during the stress: $rounds"

# Open fds of the daemon: nothing leaked by abandoned clients (a few for rings, sockets, files).
nfd=$(ls "/proc/$BD_PID/fd" | wc -l)
[ "$nfd" -lt 64 ] || fail "blockd holds $nfd file descriptors after the clients left"

bd_stop
