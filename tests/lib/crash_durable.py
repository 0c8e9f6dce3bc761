# tests/lib/crash_durable.py - workload client and checker for qcow2-crash-durable.sh.
#
# One process, single-threaded.  Three modes:
#
#   client URI LOG ISSUED SEED CHECKED_SIZE NOISE_START NOISE_SIZE
#       Run through nbdsh (needs libnbd's python module).  Keeps QUEUE requests in flight on one
#       NBD connection until the connection dies (the daemon is SIGKILLed):
#       - "checked" writes (4k..256k, 512-byte aligned) into [0, CHECKED_SIZE), each byte of that
#         region written at most once, with a pattern naming the write and the sector (see
#         pattern()), some of them with FUA;
#       - "noise" requests into [NOISE_START, NOISE_START+NOISE_SIZE): overwrites, write-zeroes,
#         trims (frees clusters that checked writes may then reuse);
#       - an aio_flush every few requests.
#       Durable records go to LOG, fsync'ed before the workload goes on: a checked write that
#       completed before a flush was issued, once that flush completes ("F id off len"), or a FUA
#       write once it completes ("U id off len").  At the end every checked write ever issued
#       (completed or not) is written to ISSUED.  Exit 0 when the connection died (the expected
#       end), 2 when a request failed while the connection was alive.
#
#   verify RAW LOG ISSUED CHECKED_SIZE BACKING|-
#       RAW is the guest view of the image read by QEMU (qemu-img convert -O raw).  Every LOG
#       record must read back with its pattern; every sector of an issued but unacknowledged
#       write holds either that write's data or the original; every sector of the checked region
#       that no checked write touched reads as the backing file (or zeroes): a crash must not
#       expose the copy-on-write areas of a half-done allocation nor old data of a reused cluster.
#       Prints the counts; exit 1 on any mismatch, describing the first ones.
#
#   nbdread URI LOG COUNT SEED
#       Read COUNT random LOG records through an NBD export and compare.

import hashlib
import mmap
import os
import random
import struct
import sys
import time

SECTOR = 512
QUEUE = 32


def pattern(wid, off, length):
    """The bytes of checked write WID at OFF: every sector starts with (WID, sector offset)."""
    filler = (hashlib.sha512(struct.pack("<Q", wid)).digest() * 8)[: SECTOR - 16]
    return b"".join(struct.pack("<QQ", wid, o) + filler for o in range(off, off + length, SECTOR))


def describe(data):
    """What a mismatching sector holds, for the failure message."""
    if data == bytes(len(data)):
        return "zeroes"
    wid, o = struct.unpack_from("<QQ", data)
    if o % SECTOR == 0 and o < 1 << 40 and wid < 1 << 32:
        if data == pattern(wid, o, SECTOR):
            return "a sector of write %d that belongs at offset %d" % (wid, o)
        return "header of write %d offset %d, damaged body" % (wid, o)
    return "other data: %s..." % data[:16].hex()


# ---- client --------------------------------------------------------------------------------------


class Client:
    def __init__(self, h, log, seed, checked_size, noise_start, noise_size):
        import nbd

        self.nbd = nbd
        self.h = h
        self.log = log
        self.rng = random.Random(seed)
        self.checked_sectors = checked_size // SECTOR
        self.used = bytearray(self.checked_sectors)  # 1: some checked write covers the sector
        self.noise_start = noise_start
        self.noise_size = noise_size
        self.inflight = {}  # cookie -> (kind, data)
        self.unflushed = []  # checked writes completed since the last flush was issued
        self.issued = []  # every checked write: (wid, off, len)
        self.next_wid = 1
        self.since_flush = 0
        self.last_flush = time.monotonic()
        self.can_fua = h.can_fua()
        self.can_trim = h.can_trim()
        self.can_zero = h.can_zero()
        self.full = False
        self.stats = {"F": 0, "U": 0, "flushes": 0, "noise": 0, "checked": 0}

    def record(self, kind, recs):
        for wid, off, length in recs:
            self.log.write("%s %d %d %d\n" % (kind, wid, off, length))
            self.stats[kind] += 1
        self.log.flush()
        os.fsync(self.log.fileno())

    def pick_checked(self):
        """A never-written range of the checked region, or None."""
        if self.full:
            return None
        rng = self.rng
        for _ in range(8):
            n = int(8 * 64 ** rng.random())  # sectors: 4k..256k, log-uniform (mean ~60k)
            if rng.random() < 0.5:
                n &= ~7  # half of them whole 4k blocks
            if rng.random() < 0.5:
                start = rng.randrange(0, self.checked_sectors - n, 8)
            else:
                start = rng.randrange(0, self.checked_sectors - n)
            if not any(self.used[start : start + n]):
                self.used[start : start + n] = b"\1" * n
                return start * SECTOR, n * SECTOR
        if self.used.count(0) < self.checked_sectors // 4:
            self.full = True
        return None

    def issue(self):
        h, rng, nbd = self.h, self.rng, self.nbd
        now = time.monotonic()
        if self.since_flush >= 12 or (now - self.last_flush > 0.02 and self.unflushed):
            snap, self.unflushed = self.unflushed, []
            c = h.aio_flush()
            self.inflight[c] = ("flush", snap)
            self.since_flush = 0
            self.last_flush = now
            return
        self.since_flush += 1
        r = rng.random()
        if r < 0.7:
            got = self.pick_checked()
            if got:
                off, length = got
                wid = self.next_wid
                self.next_wid += 1
                buf = pattern(wid, off, length)
                fua = self.can_fua and rng.random() < 0.15
                c = h.aio_pwrite(buf, off, flags=nbd.CMD_FLAG_FUA if fua else 0)
                self.inflight[c] = ("fua" if fua else "write", (wid, off, length), buf)
                self.issued.append((wid, off, length))
                self.stats["checked"] += 1
                return
        # noise: overwrite / write-zeroes / trim
        length = rng.randint(8, 512) * SECTOR
        off = self.noise_start + rng.randrange(0, (self.noise_size - length) // SECTOR) * SECTOR
        r = rng.random()
        if r < 0.2 and self.can_zero:
            flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.3 else 0
            c = h.aio_zero(length, off, flags=flags)
        elif r < 0.4 and self.can_trim:
            c = h.aio_trim(length, off)
        else:
            buf = rng.randbytes(16) * (length // 16)
            c = h.aio_pwrite(buf, off)
            self.inflight[c] = ("noise", None, buf)
            self.stats["noise"] += 1
            return
        self.inflight[c] = ("noise", None)
        self.stats["noise"] += 1

    def retire(self, cookie):
        ent = self.inflight.pop(cookie)
        self.h.aio_command_completed(cookie)  # raises nbd.Error if the request failed
        kind = ent[0]
        if kind == "write":
            self.unflushed.append(ent[1])
        elif kind == "fua":
            self.record("U", [ent[1]])
        elif kind == "flush":
            self.stats["flushes"] += 1
            self.record("F", ent[1])

    def run(self):
        h = self.h
        while True:
            while len(self.inflight) < QUEUE:
                self.issue()
            h.poll(-1)
            while True:
                c = h.aio_peek_command_completed()
                if c <= 0:
                    break
                self.retire(c)


def client(argv):
    import nbd

    uri, logpath, issuedpath = argv[0], argv[1], argv[2]
    seed, checked, nstart, nsize = (int(a) for a in argv[3:7])
    h = nbd.NBD()
    h.connect_uri(uri)
    log = open(logpath, "w")
    cl = Client(h, log, seed, checked, nstart, nsize)
    rc = 0
    try:
        cl.run()
    except nbd.Error as e:
        # The expected end: the daemon was killed, the connection is gone.
        if not (h.aio_is_dead() or h.aio_is_closed()):
            print("crash_durable client: request failed on a live connection: %s" % e)
            rc = 2
    with open(issuedpath, "w") as f:
        for wid, off, length in cl.issued:
            f.write("%d %d %d\n" % (wid, off, length))
        f.flush()
        os.fsync(f.fileno())
    log.close()
    s = cl.stats
    print(
        "client: %d checked writes, %d noise requests, %d flushes; durable: %d after flush, %d FUA%s"
        % (s["checked"], s["noise"], s["flushes"], s["F"], s["U"], "" if cl.can_fua else " (no FUA)")
    )
    return rc


# ---- checks --------------------------------------------------------------------------------------


def read_records(path):
    recs = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                recs.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3])))
    return recs


def check_record(kind, wid, off, length, data, errors):
    want = pattern(wid, off, length)
    if data == want:
        return True
    bad = [i for i in range(0, length, SECTOR) if data[i : i + SECTOR] != want[i : i + SECTOR]]
    errors.append(
        "record %s write %d at %d+%d: %d of %d sectors differ; first at %d holds %s"
        % (
            kind,
            wid,
            off,
            length,
            len(bad),
            length // SECTOR,
            off + bad[0],
            describe(data[bad[0] : bad[0] + SECTOR]),
        )
    )
    return False


def verify(argv):
    rawpath, logpath, issuedpath = argv[0], argv[1], argv[2]
    checked = int(argv[3])
    backpath = argv[4] if argv[4] != "-" else None
    recs = read_records(logpath)
    errors = []
    raw = open(rawpath, "rb")
    if os.fstat(raw.fileno()).st_size < checked:
        print("%s is shorter than the checked region" % rawpath)
        return 1
    img = mmap.mmap(raw.fileno(), checked, prot=mmap.PROT_READ)
    for kind, wid, off, length in recs:
        check_record(kind, wid, off, length, img[off : off + length], errors)

    back = b""
    if backpath:
        with open(backpath, "rb") as f:
            back = f.read(checked)

    def original(a, b):
        """What [a, b) held before any write: the backing file's bytes, zeroes past its end."""
        part = back[a:b]
        return part + bytes(b - a - len(part))

    # Writes not known to be durable: each sector is either the write's or the original bytes
    # (never another write's data, a freed cluster's old data or garbage).
    durable = set(r[1] for r in recs)
    used = bytearray(checked // SECTOR)
    nissued = 0
    nnew = nold = 0
    with open(issuedpath) as f:
        for line in f:
            wid, off, length = (int(x) for x in line.split())
            used[off // SECTOR : (off + length) // SECTOR] = b"\1" * (length // SECTOR)
            nissued += 1
            if wid in durable:
                continue
            data, want, orig = img[off : off + length], pattern(wid, off, length), original(off, off + length)
            if data == want:
                nnew += 1
                continue
            if data == orig:
                nold += 1
                continue
            for i in range(0, length, SECTOR):
                sec = data[i : i + SECTOR]
                if sec != want[i : i + SECTOR] and sec != orig[i : i + SECTOR]:
                    errors.append(
                        "unacknowledged write %d at %d+%d: sector at %d holds %s, neither the write's "
                        "data nor the original" % (wid, off, length, off + i, describe(sec))
                    )
                    break
    # Sectors no checked write touched: the backing file's bytes, or zeroes.
    untouched = 0
    s = 0
    n = len(used)
    while s < n:
        s = used.find(0, s)
        if s < 0:
            break
        e = used.find(1, s)
        if e < 0:
            e = n
        a, b = s * SECTOR, e * SECTOR
        untouched += e - s
        want = original(a, b)
        if img[a:b] != want:
            for i in range(0, b - a, SECTOR):
                if img[a + i : a + i + SECTOR] != want[i : i + SECTOR]:
                    found = describe(img[a + i : a + i + SECTOR])
                    errors.append(
                        "never-written sector at %d holds %s instead of %s"
                        % (a + i, found, "backing data" if backpath else "zeroes")
                    )
                    break
        s = e
    nf = sum(1 for r in recs if r[0] == "F")
    print(
        "verified %d durable records (%d after flush, %d FUA) of %d checked writes issued "
        "(of the others %d new, %d old, %d mixed); %d never-written sectors match %s"
        % (
            len(recs),
            nf,
            len(recs) - nf,
            nissued,
            nnew,
            nold,
            nissued - len(durable) - nnew - nold,
            untouched,
            "the backing file" if backpath else "zeroes",
        )
    )
    if errors:
        print("%d mismatches:" % len(errors))
        for e in errors[:20]:
            print("  " + e)
        return 1
    return 0


def nbdread(argv):
    import nbd

    uri, logpath, count, seed = argv[0], argv[1], int(argv[2]), int(argv[3])
    recs = read_records(logpath)
    pick = random.Random(seed).sample(recs, min(count, len(recs)))
    h = nbd.NBD()
    h.connect_uri(uri)
    errors = []
    for kind, wid, off, length in pick:
        check_record(kind, wid, off, length, h.pread(length, off), errors)
    h.shutdown()
    print("read %d records back through NBD" % len(pick))
    for e in errors:
        print("  " + e)
    return 1 if errors else 0


def main(argv):
    modes = {"client": client, "verify": verify, "nbdread": nbdread}
    if len(argv) < 1 or argv[0] not in modes:
        print("usage: crash_durable.py client|verify|nbdread ARGS...")
        return 64
    return modes[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
