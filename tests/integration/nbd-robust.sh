#!/bin/bash
# nbd-robust.sh - the NBD server survives bad clients and many clients: 200 concurrent
# connections each doing I/O; clients that vanish mid-request (a write header with half its
# payload, a burst of pipelined reads whose replies nobody reads, a close in the middle of the
# handshake); garbage (random bytes, bad option magic, bad request magic, unknown client flags).
# After each, another client is served, and the daemon exits 0 with no sanitizer report.
# meson-timeout: 180
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need python3 nbdinfo truncate

bd_tmpdir
img=$T/disk.raw
truncate -s 64M "$img"
head -c 4M /dev/urandom | dd of="$img" conv=notrunc status=none
port=$(bd_free_port)

bd_start --blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$port" \
	--export type=nbd,id=e0,node-name=r,name=disk,writable=on

uri="nbd://127.0.0.1:$port/disk"

serves()
{
	local out
	out=$(nbdinfo --size "$uri" 2>&1) || fail "daemon no longer serves after $1: $out"
	assert_eq "$out" 67108864 "export size after $1"
	bd_alive "$BD_PID" || fail "daemon died after $1"
}

python3 - "$port" "$img" <<'EOF'
import os, random, socket, struct, sys, time

PORT, IMG = int(sys.argv[1]), sys.argv[2]
OPTS = 0x49484156454F5054
image = open(IMG, 'rb').read(4 << 20)
random.seed(42)

def connect():
    s = socket.create_connection(('127.0.0.1', PORT), timeout=30)
    return s

def recvn(s, n):
    b = bytearray()
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError('EOF')
        b += c
    return bytes(b)

def handshake(s, name=b'disk'):
    recvn(s, 18)
    s.sendall(struct.pack('>I', 3))
    data = struct.pack('>I', len(name)) + name + struct.pack('>H', 0)
    s.sendall(struct.pack('>QII', OPTS, 7, len(data)) + data)
    while True:
        m, o, t, n = struct.unpack('>QIII', recvn(s, 20))
        recvn(s, n)
        if t == 1:
            return
        if t & (1 << 31):
            raise AssertionError('GO failed: %x' % t)

def read_req(s, cookie, off, ln):
    s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 0, cookie, off, ln))

def read_reply(s, ln):
    m, err, cookie = struct.unpack('>IIQ', recvn(s, 16))
    assert m == 0x67446698 and err == 0, 'bad reply %x %d' % (m, err)
    return cookie, recvn(s, ln)

def eof(s):
    # drain whatever the server still sends (greeting, replies), then expect EOF
    try:
        s.settimeout(10)
        for i in range(1000):
            if s.recv(65536) == b'':
                return True
        return False
    except (ConnectionResetError, BrokenPipeError):
        return True

def served(what):
    s = connect()
    handshake(s)
    read_req(s, 7, 4096, 4096)
    ck, d = read_reply(s, 4096)
    assert ck == 7 and d == image[4096:8192], 'data after ' + what
    s.close()

# 200 concurrent connections, all open at once, each reading
conns = []
for i in range(200):
    s = connect()
    conns.append(s)
for s in conns:
    handshake(s)
for i, s in enumerate(conns):
    read_req(s, i, (i * 4096) % (4 << 20), 4096)
for i, s in enumerate(conns):
    ck, d = read_reply(s, 4096)
    off = (i * 4096) % (4 << 20)
    assert ck == i and d == image[off:off + 4096], 'connection %d read' % i
for s in conns:
    s.close()
print('200 concurrent connections: ok')
served('200 connections')

# clients vanishing mid-request
for i in range(20):
    s = connect()
    handshake(s)
    s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, 1, 8 << 20, 1 << 20))
    s.sendall(os.urandom(random.randrange(1, 1 << 19)))
    s.close()
served('half-sent writes')
for i in range(20):
    s = connect()
    handshake(s)
    blob = b''.join(struct.pack('>IHHQQI', 0x25609513, 0, 0, k, k * 65536, 1 << 20) for k in range(64))
    s.sendall(blob)
    time.sleep(0.01)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
    s.close()  # RST with replies in flight
served('vanished readers')
for i in range(20):
    s = connect()
    recvn(s, 18)
    if i % 2:
        s.sendall(struct.pack('>I', 3) + struct.pack('>QII', OPTS, 7, 100) + b'abc')
    s.close()
served('half handshakes')
print('vanishing clients: ok')

# garbage
s = connect()
s.sendall(os.urandom(65536))
assert eof(s), 'random bytes close the connection'
s.close()
s = connect()
recvn(s, 18)
s.sendall(struct.pack('>I', 0xff00))
assert eof(s), 'unknown client flags close the connection'
s.close()
s = connect()
recvn(s, 18)
s.sendall(struct.pack('>I', 3) + b'BADMAGIC' + struct.pack('>II', 7, 0))
assert eof(s), 'bad option magic closes the connection'
s.close()
s = connect()
handshake(s)
s.sendall(b'\xde\xad\xbe\xef' + os.urandom(60))
assert eof(s), 'bad request magic closes the connection'
s.close()
s = connect()
handshake(s)
read_req(s, 1, 0, 4096)
s.sendall(os.urandom(28))
ck, d = read_reply(s, 4096)
assert ck == 1 and d == image[:4096], 'the request before the garbage is answered'
assert eof(s), 'then the connection closes'
s.close()
for i in range(50):
    s = connect()
    s.sendall(os.urandom(random.randrange(1, 4096)))
    s.close()
served('garbage')
print('garbage: ok')
EOF

serves "the python clients"
bd_stop

# SIGTERM with clients connected and I/O in flight: the daemon answers what it has, closes the
# connections and exits 0 (bd_stop checks the status and the sanitizer reports).
if command -v fio >/dev/null 2>&1 && fio --enghelp=nbd >/dev/null 2>&1; then
	bd_start --blockdev driver=file,node-name=f,filename="$img" \
		--blockdev driver=raw,node-name=r,file=f \
		--nbd-server addr.type=inet,addr.host=127.0.0.1,addr.port="$port" \
		--export type=nbd,id=e0,node-name=r,name=disk,writable=on
	fio --name=bg --ioengine=nbd --uri="$uri" --rw=randrw --bs=64k --iodepth=32 --numjobs=2 \
		--size=32M --time_based --runtime=60 >"$T/fio-bg.log" 2>&1 &
	fio_pid=$!
	sleep 2
	start=$(date +%s)
	bd_stop
	(($(date +%s) - start < 10)) || fail "shutdown under load took too long"
	wait "$fio_pid" || true # fio sees the server go away
fi
