#!/bin/bash
# nbd-protocol.sh - the NBD server at the protocol level, with a small raw NBD client in Python
# (no libnbd): handshake options (LIST, INFO with NAME/DESCRIPTION/BLOCK_SIZE, unknown options,
# STARTTLS refused, ABORT, EXPORT_NAME with and without NO_ZEROES, meta contexts and their query
# forms), simple / structured / extended replies, structured reads of holes (OFFSET_HOLE) and DF,
# BLOCK_STATUS (both contexts, REQ_ONE, the 64-bit form and its payload form), error codes
# (past the end, unknown command, bad flags, oversized payloads, read-only export), pipelining,
# and NBD_CMD_DISC.
# meson-timeout: 180
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
need python3 truncate

bd_tmpdir
img=$T/disk.raw
truncate -s 16M "$img"
# data in [0, 1M), a hole after it
head -c 1M /dev/urandom | dd of="$img" conv=notrunc status=none
sock=$T/nbd.sock

bd_start --blockdev driver=file,node-name=f,filename="$img" \
	--blockdev driver=raw,node-name=r,file=f \
	--nbd-server addr.type=unix,addr.path="$sock" \
	--export type=nbd,id=e0,node-name=r,name=disk,writable=on,allocation-depth=on,description="the disk" \
	--export type=nbd,id=e1,node-name=r,name=ro

python3 - "$sock" "$img" <<'EOF'
import os, socket, struct, sys

SOCK, IMG = sys.argv[1], sys.argv[2]
MB = 1 << 20
SIZE = 16 * MB
OPTS = 0x49484156454F5054
REPM = 0x3e889045565a9
# options
EXPORT_NAME, ABORT, LIST, STARTTLS, INFO, GO, SR, LIST_META, SET_META, EXT = 1, 2, 3, 5, 6, 7, 8, 9, 10, 11
ACK, SERVER, REP_INFO, META = 1, 2, 3, 4
E = lambda x: (1 << 31) | x
ERR_UNSUP, ERR_POLICY, ERR_INVALID, ERR_UNKNOWN, ERR_EXT_REQD = E(1), E(2), E(3), E(6), E(10)
# commands, flags
READ, WRITE, DISC, FLUSH, TRIM, CACHE, WZ, BS = 0, 1, 2, 3, 4, 5, 6, 7
FUA, NO_HOLE, DF, REQ_ONE, FAST_ZERO, PAYLOAD_LEN = 1, 2, 4, 8, 16, 32
T_NONE, T_DATA, T_HOLE, T_BS, T_BS_EXT, T_ERR = 0, 1, 2, 5, 6, (1 << 15) | 1
EPERM, EIO, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP = 1, 5, 22, 28, 75, 95
F_READ_ONLY, F_SEND_DF, F_BS_PAYLOAD, F_MULTI_CONN = 2, 128, 4096, 256

image = bytearray(open(IMG, 'rb').read())
failures = 0

def check(cond, what):
    global failures
    if not cond:
        failures += 1
        print('FAIL:', what, file=sys.stderr)
    return cond

def s32(b):
    return struct.pack('>I', len(b)) + b

class Client:
    def __init__(self, flags=3):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(20)
        self.s.connect(SOCK)
        self.ext = False
        self.structured = False
        self.cookie = 0
        m1, m2, hf = struct.unpack('>QQH', self.recvn(18))
        assert m1 == 0x4e42444d41474943 and m2 == OPTS, 'bad greeting'
        self.hflags = hf
        self.s.sendall(struct.pack('>I', flags))

    def recvn(self, n):
        b = bytearray()
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError('EOF after %d of %d bytes' % (len(b), n))
            b += c
        return bytes(b)

    def eof(self):
        try:
            return self.s.recv(1) == b''
        except (ConnectionResetError, socket.timeout):
            return True

    def opt(self, o, data=b''):
        self.s.sendall(struct.pack('>QII', OPTS, o, len(data)) + data)

    def rep(self):
        m, o, t, n = struct.unpack('>QIII', self.recvn(20))
        assert m == REPM, 'bad option reply magic'
        return o, t, self.recvn(n)

    def reps(self):
        out = []
        while True:
            o, t, d = self.rep()
            out.append((t, d))
            if t != SERVER and t != REP_INFO and t != META:
                return out

    def info(self, o, name, reqs=(1, 2, 3)):
        self.opt(o, s32(name) + struct.pack('>H', len(reqs)) + b''.join(struct.pack('>H', r) for r in reqs))
        r = self.reps()
        infos = {}
        for t, d in r[:-1]:
            infos[struct.unpack('>H', d[:2])[0]] = d[2:]
        if o == GO and r[-1][0] == ACK:
            self.flags = struct.unpack('>QH', infos[0])[1]
        return r[-1][0], infos

    def meta(self, o, name, queries):
        self.opt(o, s32(name) + struct.pack('>I', len(queries)) + b''.join(s32(q) for q in queries))
        r = self.reps()
        ctx = {}
        for t, d in r[:-1]:
            ctx[d[4:].decode()] = struct.unpack('>I', d[:4])[0]
        return r[-1][0], ctx

    def simple_opt(self, o, data=b''):
        self.opt(o, data)
        t, d = self.reps()[-1]
        if o == SR and t == ACK:
            self.structured = True
        if o == EXT and t == ACK:
            self.ext = True
            self.structured = True
        return t

    def req(self, t, off, ln, flags=0, payload=b'', send=True):
        self.cookie += 1
        if flags & PAYLOAD_LEN:
            ln = len(payload)
        if self.ext:
            h = struct.pack('>IHHQQQ', 0x21e41c71, flags, t, self.cookie, off, ln)
        else:
            h = struct.pack('>IHHQQI', 0x25609513, flags, t, self.cookie, off, ln)
        if send:
            self.s.sendall(h + payload)
        return self.cookie, h + payload

    def reply(self, readlen=0):
        """One reply message: (cookie, error, type, flags, payload, hdr_offset)."""
        magic = struct.unpack('>I', self.recvn(4))[0]
        if magic == 0x67446698:
            err, cookie = struct.unpack('>IQ', self.recvn(12))
            data = self.recvn(readlen) if (readlen and not err) else b''
            return cookie, err, None, 1, data, None
        if magic == 0x668e33ef:
            fl, t, cookie, n = struct.unpack('>HHQI', self.recvn(16))
            off = None
        elif magic == 0x6e8a278c:
            fl, t, cookie, off, n = struct.unpack('>HHQQQ', self.recvn(28))
        else:
            raise AssertionError('bad reply magic %x' % magic)
        payload = self.recvn(n)
        err = struct.unpack('>I', payload[:4])[0] if t & 0x8000 else 0
        return cookie, err, t, fl, payload, off

    def chunks(self, readlen=0):
        """All chunks of one structured reply (or the one simple reply)."""
        out = []
        while True:
            c = self.reply(readlen)
            out.append(c)
            if c[3] & 1:
                return out

    def do(self, t, off, ln, flags=0, payload=b''):
        cookie, _ = self.req(t, off, ln, flags, payload)
        ch = self.chunks(ln if t == READ else 0)
        for c in ch:
            check(c[0] == cookie, 'cookie echoed')
        err = 0
        for c in ch:
            err = err or c[1]
        return err, ch

    def read(self, off, ln, flags=0):
        """Read through whatever reply style is negotiated; returns (err, data, chunk types)."""
        err, ch = self.do(READ, off, ln, flags)
        if err:
            return err, None, [c[2] for c in ch]
        if ch[0][2] is None:
            return 0, ch[0][4], [None]
        buf = bytearray(ln)
        covered = 0
        for cookie, e, t, fl, p, hoff in ch:
            if self.ext:
                check(hoff == off, 'extended reply carries the request offset')
            if t == T_DATA:
                o = struct.unpack('>Q', p[:8])[0] - off
                buf[o:o + len(p) - 8] = p[8:]
                covered += len(p) - 8
            elif t == T_HOLE:
                o, n = struct.unpack('>QI', p)
                check(n > 0, 'hole chunk length')
                covered += n
        check(covered == ln, 'read chunks cover the request (%d of %d)' % (covered, ln))
        return 0, bytes(buf), [c[2] for c in ch]

    def block_status(self, off, ln, flags=0, payload=b''):
        err, ch = self.do(BS, off, ln, flags, payload)
        res = {}
        for cookie, e, t, fl, p, hoff in ch:
            if t == T_BS:
                ctx = struct.unpack('>I', p[:4])[0]
                d = p[4:]
                res[ctx] = [struct.unpack('>II', d[i:i + 8]) for i in range(0, len(d), 8)]
            elif t == T_BS_EXT:
                ctx, cnt = struct.unpack('>II', p[:8])
                d = p[8:]
                check(len(d) == 16 * cnt, 'extended block status descriptor count')
                res[ctx] = [struct.unpack('>QQ', d[i:i + 16]) for i in range(0, len(d), 16)]
        return err, res

    def close(self):
        self.s.close()

def go(name=b'disk', sr=True, ext=False, meta=None):
    c = Client()
    if ext:
        check(c.simple_opt(EXT) == ACK, 'NBD_OPT_EXTENDED_HEADERS acknowledged')
    if sr:
        check(c.simple_opt(SR) == ACK, 'NBD_OPT_STRUCTURED_REPLY acknowledged')
    ctx = {}
    if meta is not None:
        t, ctx = c.meta(SET_META, name, meta)
        check(t == ACK, 'SET_META_CONTEXT acknowledged')
    t, infos = c.info(GO, name)
    check(t == ACK, 'GO %s acknowledged' % name)
    c.ctx = ctx
    return c

# ---- Handshake ------------------------------------------------------------------------------
c = Client()
check(c.hflags == 3, 'handshake flags FIXED_NEWSTYLE|NO_ZEROES (got %d)' % c.hflags)
c.opt(99, b'junk data')
check(c.reps()[-1][0] == ERR_UNSUP, 'unknown option: ERR_UNSUP')
check(c.simple_opt(STARTTLS) == ERR_POLICY, 'STARTTLS: ERR_POLICY')
check(c.simple_opt(STARTTLS, b'x') == ERR_INVALID, 'STARTTLS with data: ERR_INVALID')
check(c.simple_opt(LIST, b'x') == ERR_INVALID, 'LIST with data: ERR_INVALID')
c.opt(LIST)
r = c.reps()
check(r[-1][0] == ACK, 'LIST ends with ACK')
names = []
for t, d in r[:-1]:
    n = struct.unpack('>I', d[:4])[0]
    names.append((d[4:4 + n].decode(), d[4 + n:].decode()))
check(names == [('disk', 'the disk'), ('ro', '')], 'LIST names and descriptions: %r' % names)
t, infos = c.info(INFO, b'nope')
check(t == ERR_UNKNOWN, 'INFO on an unknown export: ERR_UNKNOWN')
t, infos = c.info(INFO, b'disk')
check(t == ACK, 'INFO disk')
size, flags = struct.unpack('>QH', infos[0])
check(size == SIZE, 'export size %d' % size)
check(infos.get(1) == b'disk', 'NBD_INFO_NAME')
check(infos.get(2) == b'the disk', 'NBD_INFO_DESCRIPTION')
check(struct.unpack('>III', infos[3]) == (1, 4096, 32 * MB), 'NBD_INFO_BLOCK_SIZE %r' % (struct.unpack('>III', infos[3]),))
check(flags & 1 and not flags & F_READ_ONLY and flags & F_MULTI_CONN, 'transmission flags %x' % flags)
check(not flags & F_SEND_DF, 'no DF before structured replies')
t, infos = c.info(INFO, b'ro', ())
check(t == ACK and struct.unpack('>QH', infos[0])[1] & F_READ_ONLY, 'ro export is read-only')
# meta contexts need structured replies
t, ctx = c.meta(LIST_META, b'disk', [])
check(t == ERR_INVALID, 'LIST_META_CONTEXT before structured replies: ERR_INVALID')
check(c.simple_opt(SR) == ACK, 'STRUCTURED_REPLY')
t, ctx = c.meta(LIST_META, b'disk', [])
check(t == ACK and set(ctx) == {'base:allocation', 'qemu:allocation-depth'}, 'LIST all contexts: %r' % ctx)
t, ctx = c.meta(LIST_META, b'disk', [b'base:', b'qemu:'])
check(t == ACK and set(ctx) == {'base:allocation', 'qemu:allocation-depth'}, 'LIST base: and qemu: %r' % ctx)
t, ctx = c.meta(LIST_META, b'ro', [b'qemu:'])
check(t == ACK and ctx == {}, 'no allocation-depth on ro: %r' % ctx)
t, ctx = c.meta(SET_META, b'disk', [b'base:', b'qemu:', b'x-foo:bar', b'nonsense'])
check(t == ACK and ctx == {}, 'SET with wildcards selects nothing: %r' % ctx)
t, ctx = c.meta(SET_META, b'nope', [b'base:allocation'])
check(t == ERR_UNKNOWN, 'SET_META on an unknown export: ERR_UNKNOWN')
t, ctx = c.meta(SET_META, b'disk', [b'base:allocation', b'qemu:allocation-depth'])
check(t == ACK and len(ctx) == 2 and len(set(ctx.values())) == 2, 'SET both contexts %r' % ctx)
c.opt(ABORT)
check(c.reps()[-1][0] == ACK, 'ABORT acknowledged')
check(c.eof(), 'closed after ABORT')
c.close()

# malformed INFO: name length beyond the option
c = Client()
c.opt(GO, struct.pack('>I', 100) + b'disk\0\0')
check(c.reps()[-1][0] == ERR_INVALID, 'malformed GO: ERR_INVALID')
t, infos = c.info(GO, b'disk')
check(t == ACK, 'GO after an error works')
check(c.do(READ, 0, 512)[0] == 0, 'simple read after GO')
c.close()

# EXPORT_NAME, with and without NO_ZEROES
for cflags, zeroes in ((3, 0), (1, 124)):
    c = Client(cflags)
    c.opt(EXPORT_NAME, b'disk')
    size, flags = struct.unpack('>QH', c.recvn(10))
    if zeroes:
        check(c.recvn(zeroes) == b'\0' * zeroes, '124 zero bytes without NO_ZEROES')
    check(size == SIZE, 'EXPORT_NAME size')
    err, ch = c.do(READ, 0, 4096)
    check(err == 0 and ch[0][4] == bytes(image[:4096]), 'read after EXPORT_NAME (zeroes=%d)' % zeroes)
    c.close()
c = Client()
c.opt(EXPORT_NAME, b'nope')
check(c.eof(), 'EXPORT_NAME of an unknown export closes the connection')
c.close()

# ---- Simple replies -------------------------------------------------------------------------
c = go(sr=False)
err, data, types = c.read(0, 65536)
check(err == 0 and data == bytes(image[:65536]), 'simple read')
check(c.read(SIZE - 512, 1024)[0] == EINVAL, 'simple read past the end: EINVAL')
check(c.read(0, 512, DF)[0] == EINVAL, 'DF without structured replies: EINVAL')
check(c.do(42, 0, 0)[0] == EINVAL, 'unknown command: EINVAL')
c.req(DISC, 0, 0)
check(c.eof(), 'DISC closes')
c.close()

# ---- Structured replies ---------------------------------------------------------------------
c = go(meta=[b'base:allocation', b'qemu:allocation-depth'])
check(c.flags & F_SEND_DF, 'DF advertised with structured replies')
err, data, types = c.read(0, 4096)
check(err == 0 and data == bytes(image[:4096]) and types == [T_DATA], 'structured read of data %r' % types)
err, data, types = c.read(8 * MB, MB)
check(err == 0 and data == bytes(MB) and types == [T_HOLE], 'structured read of a hole: %r' % types)
err, data, types = c.read(9 * MB, 4096)
check(err == 0 and data == bytes(4096) and types == [T_HOLE], 'small read of a hole: %r' % types)
err, data, types = c.read(MB - 65536, 2 * 65536)
check(err == 0 and data == bytes(image[MB - 65536:MB + 65536]) and types == [T_DATA, T_HOLE], 'mixed read: %r' % types)
err, data, types = c.read(MB - 65536, 2 * 65536, DF)
check(err == 0 and data == bytes(image[MB - 65536:MB + 65536]) and types == [T_DATA], 'DF read: one chunk %r' % types)
err, data, types = c.read(0, 0)
check(err == 0, 'zero-length read')
check(c.read(SIZE, 1)[0] == EINVAL, 'read past the end: EINVAL')
check(c.read(0, 32 * MB + 1)[0] == EOVERFLOW, 'read over 32 MiB: EOVERFLOW')

pat = os.urandom(4096)
check(c.do(WRITE, 12 * MB, 4096, FUA, pat)[0] == 0, 'write with FUA')
image[12 * MB:12 * MB + 4096] = pat
check(c.read(12 * MB, 4096)[1] == pat, 'read back the write')
check(c.do(WRITE, SIZE - 100, 200, 0, bytes(200))[0] == ENOSPC, 'write past the end: ENOSPC')
check(c.do(TRIM, SIZE - 100, 200)[0] == EINVAL, 'trim past the end: EINVAL')
check(c.do(WRITE, 0, 4, DF, b'abcd')[0] == EINVAL, 'DF on a write: EINVAL')
check(c.do(READ, 0, 4, NO_HOLE)[0] == EINVAL, 'NO_HOLE on a read: EINVAL')
check(c.do(TRIM, 0, 4, 0x100)[0] == EINVAL, 'unknown flag: EINVAL')
check(c.read(0, 4096)[1] == bytes(image[:4096]), 'stream still in sync after errors')
big = 32 * MB + 4096
check(c.do(WRITE, 0, big, 0, bytes(big))[0] == EINVAL, 'write over 32 MiB: EINVAL, payload skipped')
check(c.read(0, 4096)[1] == bytes(image[:4096]), 'stream in sync after an oversized write')
check(c.do(WZ, 12 * MB, 4096, NO_HOLE)[0] == 0, 'write zeroes, NO_HOLE')
image[12 * MB:12 * MB + 4096] = bytes(4096)
check(c.read(12 * MB, 4096)[1] == bytes(4096), 'zeroed')
e = c.do(WZ, 12 * MB, 4096, FAST_ZERO)[0]
if c.flags & 2048:
    check(e in (0, ENOTSUP), 'fast zero: success or ENOTSUP (%d)' % e)
else:
    check(e == EINVAL, 'fast zero not advertised: EINVAL (%d)' % e)
check(c.do(TRIM, 13 * MB, MB)[0] == 0, 'trim')
image[13 * MB:14 * MB] = bytes(MB)
check(c.do(CACHE, 0, MB)[0] == 0, 'cache')
check(c.do(FLUSH, 0, 0)[0] == 0, 'flush')

ba, dep = c.ctx['base:allocation'], c.ctx['qemu:allocation-depth']
err, res = c.block_status(0, SIZE)
check(err == 0 and set(res) == {ba, dep}, 'block status answers both contexts %r' % list(res))
ext = res.get(ba, [])
check(ext and ext[0] == (MB, 0), 'first extent: 1 MiB of data %r' % ext[:3])
check(sum(l for l, f in ext) <= SIZE and all(l > 0 for l, f in ext), 'extents sane')
check(any(f == 3 for l, f in ext), 'a hole,zero extent')
err, res = c.block_status(MB - 4096, 8192, REQ_ONE)
check(err == 0 and all(len(v) == 1 for v in res.values()), 'REQ_ONE: one extent per context')
check(res[ba][0][0] <= 8192 and res[ba][0] == (4096, 0), 'REQ_ONE extent %r' % res[ba])
check(c.block_status(SIZE - 512, 1024)[0] == EINVAL, 'block status past the end: EINVAL')

# pipelining: 100 requests in one send, replies matched by cookie
pend = {}
blob = b''
for i in range(100):
    off = (i * 4096 * 37) % (2 * MB)
    cookie, raw = c.req(READ, off, 4096, send=False)
    pend[cookie] = off
    blob += raw
c.s.sendall(blob)
got = 0
while pend:
    for ck, e2, t, fl, p, hoff in c.chunks():
        if t == T_DATA:
            off = pend[ck]
            check(p[8:] == bytes(image[off:off + 4096]), 'pipelined read %d' % off)
        elif t == T_HOLE:
            off = pend[ck]
            check(bytes(image[off:off + 4096]) == bytes(4096), 'pipelined hole %d' % off)
        last = ck
    del pend[last]
    got += 1
check(got == 100, 'pipelined replies')
c.req(DISC, 0, 0)
check(c.eof(), 'DISC closes')
c.close()

# block status without contexts
c = go(meta=None)
check(c.block_status(0, 4096)[0] == EINVAL, 'block status without contexts: EINVAL')
c.close()

# ---- Read-only export -----------------------------------------------------------------------
c = go(b'ro')
check(c.flags & F_READ_ONLY, 'ro flags')
check(c.do(WRITE, 0, 4, 0, b'abcd')[0] == EPERM, 'write on ro: EPERM')
check(c.do(TRIM, 0, 4096)[0] == EPERM, 'trim on ro: EPERM')
check(c.do(WZ, 0, 4096)[0] == EPERM, 'write zeroes on ro: EPERM')
check(c.read(0, 4096)[1] == bytes(image[:4096]), 'read on ro')
c.close()

# ---- Extended headers -----------------------------------------------------------------------
c = Client()
check(c.simple_opt(EXT) == ACK, 'EXTENDED_HEADERS acknowledged')
check(c.simple_opt(SR) == ERR_EXT_REQD, 'STRUCTURED_REPLY after EXTENDED_HEADERS: ERR_EXT_HEADER_REQD')
t, ctx = c.meta(SET_META, b'disk', [b'base:allocation', b'qemu:allocation-depth'])
check(t == ACK and len(ctx) == 2, 'SET_META with extended headers')
c.ctx = ctx
t, infos = c.info(GO, b'disk')
check(t == ACK and c.flags & F_SEND_DF and c.flags & F_BS_PAYLOAD, 'GO with extended headers: flags %x' % c.flags)
err, data, types = c.read(0, 8192)
check(err == 0 and data == bytes(image[:8192]) and types == [T_DATA], 'extended read')
err, data, types = c.read(8 * MB, MB)
check(err == 0 and types == [T_HOLE], 'extended read of a hole')
pat = os.urandom(8192)
check(c.do(WRITE, 14 * MB, 8192, PAYLOAD_LEN | FUA, pat)[0] == 0, 'extended write')
image[14 * MB:14 * MB + 8192] = pat
check(c.read(14 * MB, 8192)[1] == pat, 'extended read back')
err, ch = c.do(FLUSH, 0, 0)
check(err == 0 and ch[0][2] == T_NONE and ch[0][3] & 1, 'extended success reply is NONE+DONE')
err, res = c.block_status(0, SIZE)
check(err == 0 and set(res) == set(ctx.values()), 'extended block status, both contexts')
ba = ctx['base:allocation']
check(res[ba][0] == (MB, 0), 'extended descriptors are 64-bit pairs %r' % res[ba][:2])
err, res = c.block_status(0, 0, PAYLOAD_LEN, struct.pack('>QI', SIZE, ctx['qemu:allocation-depth']))
check(err == 0 and list(res) == [ctx['qemu:allocation-depth']], 'block status payload selects one context %r' % list(res))
err, res = c.block_status(0, 0, PAYLOAD_LEN, struct.pack('>QII', SIZE, 77, 1))
check(err == EINVAL, 'block status payload with an unknown id: EINVAL')
check(c.do(WZ, 0, 1 << 40)[0] == ENOSPC, '64-bit write zeroes past the end: ENOSPC')
check(c.do(TRIM, 0, 4, PAYLOAD_LEN, b'abcd')[0] == EINVAL, 'payload on trim: EINVAL, payload consumed')
check(c.read(0, 4096)[1] == bytes(image[:4096]), 'stream in sync')
c.req(WRITE, 0, 4096)  # no PAYLOAD_LEN: cannot resync
check(c.eof(), 'extended write without PAYLOAD_LEN closes the connection')
c.close()

# the image on disk matches what we wrote
c = go()
check(c.do(FLUSH, 0, 0)[0] == 0, 'final flush')
for off in range(0, SIZE, 4 * MB):
    check(c.read(off, 4 * MB)[1] == bytes(image[off:off + 4 * MB]), 'final compare at %d' % off)
c.close()

if failures:
    print('%d checks failed' % failures, file=sys.stderr)
    sys.exit(1)
print('all protocol checks passed')
EOF

bd_stop
