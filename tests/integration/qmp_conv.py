#!/usr/bin/env python3
"""qmp_conv.py - one QMP conversation, run against a socket, and a comparison of two transcripts.

Used by qmp-compare.sh to check that blockd answers like qemu-storage-daemon (same reply keys,
value types and error classes).  Standard library only.

  qmp_conv.py run SOCKET IMAGE NBD_SOCKET OUT.json   run the conversation, write the transcript
  qmp_conv.py compare QSD.json BLOCKD.json           exit 1 (listing the differences) if they differ
  qmp_conv.py cmd SOCKET JSON...                     send commands, print the replies (debugging)
"""
import json
import socket
import sys
import time


class Client:
    def __init__(self, path, timeout=10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.buf = b""
        self.events = []
        self.dec = json.JSONDecoder()

    def read(self):
        while True:
            text = self.buf.decode("utf-8", "replace").lstrip()
            if text:
                try:
                    obj, end = self.dec.raw_decode(text)
                    self.buf = text[end:].encode()
                    return obj
                except ValueError:
                    pass
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data

    def send_raw(self, text):
        self.sock.sendall(text.encode() + b"\n")

    def reply(self):
        while True:
            m = self.read()
            if "event" in m:
                self.events.append(m)
                continue
            return m

    def cmd(self, execute, arguments=None, **extra):
        msg = {"execute": execute}
        if arguments is not None:
            msg["arguments"] = arguments
        msg.update(extra)
        self.send_raw(json.dumps(msg))
        return self.reply()


def conversation(sock_path, image, nbd_sock):
    """The steps: (label, reply) pairs."""
    out = []
    c = Client(sock_path)
    out.append(("greeting", c.read()))

    def step(label, execute=None, arguments=None, raw=None, **extra):
        if raw is not None:
            c.send_raw(raw)
            out.append((label, c.reply()))
        else:
            out.append((label, c.cmd(execute, arguments, **extra)))

    step("before-negotiation", "query-version")
    step("negotiate", "qmp_capabilities")
    step("negotiate-again", "qmp_capabilities")
    step("query-version+id", "query-version", id="v1")
    step("unknown-command", "no-such-command", id=7)
    step("not-an-object", raw="[1, 2]")
    step("malformed-json", raw='{"execute": "query-version", oops}')
    step("usable-after-garbage", "query-version")
    step("lacks-execute", raw='{"arguments": {}}')
    step("arguments-not-object", raw='{"execute": "query-version", "arguments": [1]}')
    step("unexpected-member", raw='{"execute": "query-version", "bogus": 1}')
    step("unexpected-argument", "query-version", {"x": 1})
    step("query-commands", "query-commands")
    step("blockdev-add-file", "blockdev-add",
         {"driver": "file", "node-name": "f0", "filename": image})
    step("blockdev-add-raw", "blockdev-add", {"driver": "raw", "node-name": "r0", "file": "f0"})
    step("blockdev-add-null", "blockdev-add",
         {"driver": "null-co", "node-name": "n0", "size": 1048576})
    step("blockdev-add-duplicate", "blockdev-add",
         {"driver": "null-co", "node-name": "n0"})
    step("blockdev-add-bad-type", "blockdev-add", {"driver": "null-co", "node-name": 5})
    step("blockdev-add-bad-type-nested", "blockdev-add",
         {"driver": "null-co", "node-name": "x1", "cache": {"direct": "yes"}})
    step("blockdev-add-unknown-driver", "blockdev-add", {"driver": "nope", "node-name": "x2"})
    step("blockdev-add-missing-driver", "blockdev-add", {"node-name": "x3"})
    step("blockdev-add-missing-filename", "blockdev-add", {"driver": "file", "node-name": "x4"})
    step("blockdev-add-no-node-name", "blockdev-add", {"driver": "null-co"})
    step("query-named-block-nodes", "query-named-block-nodes", {"flat": True})
    step("query-block-exports-empty", "query-block-exports")
    step("nbd-server-start", "nbd-server-start",
         {"addr": {"type": "unix", "data": {"path": nbd_sock}}})
    step("nbd-server-start-again", "nbd-server-start",
         {"addr": {"type": "unix", "data": {"path": nbd_sock + "2"}}})
    step("block-export-add", "block-export-add",
         {"type": "nbd", "id": "e0", "node-name": "r0", "writable": True, "name": "disk"})
    step("block-export-add-dup", "block-export-add",
         {"type": "nbd", "id": "e0", "node-name": "n0"})
    step("block-export-add-unknown-node", "block-export-add",
         {"type": "nbd", "id": "e1", "node-name": "zz"})
    step("block-export-add-bad-type", "block-export-add",
         {"type": "nbd", "id": "e2", "node-name": "n0", "writable": "yes"})
    step("query-block-exports", "query-block-exports")
    step("blockdev-del-in-use", "blockdev-del", {"node-name": "r0"})
    step("blockdev-del-child", "blockdev-del", {"node-name": "f0"})
    step("blockdev-del-unknown", "blockdev-del", {"node-name": "nope"})
    step("blockdev-del-missing-arg", "blockdev-del")
    step("block-export-del", "block-export-del", {"id": "e0"})
    step("block-export-del-unknown", "block-export-del", {"id": "e9"})
    step("block-export-del-bad-mode", "block-export-del", {"id": "e9", "mode": "rude"})
    step("query-blockstats-nodes", "query-blockstats", {"query-nodes": True})
    step("object-add-throttle-group", "object-add",
         {"qom-type": "throttle-group", "id": "tg0", "limits": {"iops-total": 100}})
    step("object-add-duplicate", "object-add",
         {"qom-type": "throttle-group", "id": "tg0"})
    step("object-add-unknown-type", "object-add", {"qom-type": "bogus", "id": "o1"})
    step("qom-get-limits", "qom-get", {"path": "tg0", "property": "limits"})
    step("qom-set-limits", "qom-set",
         {"path": "tg0", "property": "limits", "value": {"iops-total": 7}})
    step("qom-get-x", "qom-get", {"path": "/objects/tg0", "property": "x-iops-total"})
    step("qom-get-unknown-path", "qom-get", {"path": "nope", "property": "limits"})
    step("object-del", "object-del", {"id": "tg0"})
    step("object-del-unknown", "object-del", {"id": "tg0"})
    step("object-add-secret", "object-add",
         {"qom-type": "secret", "id": "s0", "data": "aGVsbG8=", "format": "base64"})
    step("object-del-secret", "object-del", {"id": "s0"})
    step("blockdev-create-no-job-id", "blockdev-create",
         {"options": {"driver": "file", "filename": image + ".new", "size": 1048576}})
    step("blockdev-create-bad-job-id", "blockdev-create",
         {"job-id": "9bad", "options": {"driver": "file", "filename": image + ".new",
                                        "size": 1048576}})
    step("query-jobs", "query-jobs")
    step("job-dismiss-unknown", "job-dismiss", {"id": "nope"})
    step("blockdev-del-raw", "blockdev-del", {"node-name": "r0"})
    step("blockdev-del-file", "blockdev-del", {"node-name": "f0"})
    step("blockdev-del-null", "blockdev-del", {"node-name": "n0"})
    step("query-named-block-nodes-empty", "query-named-block-nodes")
    step("nbd-server-stop", "nbd-server-stop")
    # events that arrived during the conversation (names only; order may differ)
    time.sleep(0.2)
    step("quit", "quit")
    out.append(("events", sorted({e["event"] for e in c.events})))
    return out


def shape(v):
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "str"
    if v is None:
        return "null"
    if isinstance(v, list):
        return "list"
    return "dict"


def compare(ref, got, path, diffs):
    """got (blockd) must have every key of ref (qsd) with the same type; lists are compared by
    their first elements; blockd may have more keys."""
    if shape(ref) != shape(got):
        diffs.append("%s: qsd has %s %r, blockd has %s %r"
                     % (path, shape(ref), ref, shape(got), got))
        return
    if isinstance(ref, dict):
        if path.endswith(".error"):
            if ref.get("class") != got.get("class"):
                diffs.append("%s: class %s (qsd) vs %s (blockd): %s | %s"
                             % (path, ref.get("class"), got.get("class"), ref.get("desc"),
                                got.get("desc")))
            return
        for k, v in ref.items():
            if k not in got:
                diffs.append("%s: key %r missing in blockd's reply" % (path, k))
            else:
                compare(v, got[k], path + "." + k, diffs)
        for k in got:
            if k in ("return", "error", "id") and k not in ref:
                diffs.append("%s: blockd has %r, qsd has not" % (path, k))
    elif isinstance(ref, list):
        if bool(ref) != bool(got):
            diffs.append("%s: qsd list has %d entries, blockd's %d" % (path, len(ref), len(got)))
        elif ref and not path.endswith("query-commands.return") and not path.endswith("events"):
            compare(ref[0], got[0], path + "[0]", diffs)


# Differences that are deliberate (documented in docs/control-protocol.md).
ALLOWED = {
    # qsd 7.2 lacks these; blockd's answer differs on purpose
}


def main():
    if sys.argv[1] == "run":
        conv = conversation(sys.argv[2], sys.argv[3], sys.argv[4])
        with open(sys.argv[5], "w") as f:
            json.dump(conv, f, indent=1)
        return 0
    if sys.argv[1] == "compare":
        ref = json.load(open(sys.argv[2]))
        got = json.load(open(sys.argv[3]))
        diffs = []
        if [l for l, _ in ref] != [l for l, _ in got]:
            diffs.append("the conversations have different steps")
        for (label, r), (_, g) in zip(ref, got):
            if label == "query-commands":
                # every qsd command blockd implements must be listed
                names = {x["name"] for x in g["return"]}
                if "query-commands" not in names:
                    diffs.append("query-commands: incomplete")
                continue
            if label == "events":
                for ev in r:
                    if ev not in g:
                        diffs.append("event %s: qsd emitted it, blockd did not" % ev)
                continue
            compare(r, g, label, diffs)
        diffs = [d for d in diffs if d.split(":")[0] not in ALLOWED]
        for d in diffs:
            print("DIFF:", d)
        print("%d steps compared, %d differences" % (len(ref), len(diffs)))
        return 1 if diffs else 0
    if sys.argv[1] == "cmd":
        c = Client(sys.argv[2])
        print(json.dumps(c.read()))
        for a in sys.argv[3:]:
            c.send_raw(a)
            print(json.dumps(c.reply()))
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main())
