# qcow2_wb_load.py - a load for qcow2-writeback.sh, run inside nbdsh (h is the connected
# handle): random writes (QD requests in flight, never two overlapping) mirrored into a raw
# reference file, and reads of finished ranges checked against the reference while writes go
# on.  No flush is sent unless FLUSH_AT_END=1; the connection is left without one.
# Environment: SEED, NWRITES, SPAN (bytes of the export used), REF (reference file), QD,
# MAXLEN (largest write, bytes), FLUSH_AT_END; DONE_FILE (created when the load is done, then
# the connection stays open HOLD seconds, so that the server can be killed before the final
# flush an NBD server does when a client leaves).
import os
import random
import sys

rnd = random.Random(int(os.environ["SEED"]))
nwrites = int(os.environ["NWRITES"])
span = int(os.environ["SPAN"])
qd = int(os.environ.get("QD", "32"))
maxlen = int(os.environ.get("MAXLEN", "65536"))
ref = os.open(os.environ["REF"], os.O_RDWR)

busy = []  # (off, end) of requests in flight
done_ranges = []  # finished writes that reads may check
state = {"issued": 0, "reads": 0, "bad": 0, "errors": 0}


def overlaps(off, end):
    return any(o < end and off < e for o, e in busy)


def on_write(off, end, data):
    def cb(err):
        busy.remove((off, end))
        if err.value:
            state["errors"] += 1
        else:
            os.pwrite(ref, data, off)
            done_ranges.append((off, end))
        return 1
    return cb


def on_read(off, end, buf):
    def cb(err):
        busy.remove((off, end))
        if err.value:
            state["errors"] += 1
            return 1
        want = os.pread(ref, end - off, off)
        if bytes(buf.to_bytearray()) != want:
            state["bad"] += 1
            print(f"read at {off}+{end - off} differs from the reference", file=sys.stderr)
        state["reads"] += 1
        return 1
    return cb


while state["issued"] < nwrites or busy:
    while state["issued"] < nwrites and len(busy) < qd:
        if done_ranges and rnd.random() < 0.2:
            off, end = rnd.choice(done_ranges)
            if overlaps(off, end):
                break
            buf = nbd.Buffer(end - off)
            busy.append((off, end))
            h.aio_pread(buf, off, completion=on_read(off, end, buf))
            continue
        length = 512 * rnd.randint(1, maxlen // 512)
        off = 512 * rnd.randrange(0, (span - length) // 512)
        end = off + length
        if overlaps(off, end):
            break
        data = rnd.randbytes(length)
        busy.append((off, end))
        h.aio_pwrite(data, off, completion=on_write(off, end, data))
        state["issued"] += 1
    h.poll(-1)

if os.environ.get("FLUSH_AT_END") == "1":
    h.flush()
os.fsync(ref)
print(f"load: {state['issued']} writes, {state['reads']} reads checked, "
      f"{state['bad']} differing, {state['errors']} errors")
if state["bad"] or state["errors"]:
    sys.exit(1)
if os.environ.get("DONE_FILE"):
    open(os.environ["DONE_FILE"], "w").close()
    import time
    time.sleep(float(os.environ.get("HOLD", "0")))
