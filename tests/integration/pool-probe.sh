#!/bin/bash
# pool-probe.sh - what a dir pool's refresh reads from its volumes' headers (pools/vol-probe.c):
# the format, virtual size and backing file of images qemu-img made (qcow2 v2/v3, qcow, qed,
# vmdk sparse/stream/descriptor, vdi, vpc dynamic; a fixed vpc is raw, as QEMU probes it),
# compared with qemu-img info; and
# hostile headers a guest could write into its raw volume: a qcow2 header extension whose
# length (0xFFFFFFF8) wrapped a 32-bit offset back onto itself (an endless loop on the control
# thread before), a huge header_length, backing names with control characters or past the end
# of the file.  Refresh must return promptly, list them all, and the daemon keeps serving
# (a volume exported over NBD reads back its bytes).
source "$(dirname "$0")/../lib/common.sh"
need python3
need qemu-img
need qemu-io
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { timeout 20 "$BLOCKCTL" "$@"; }
bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock"

P=$T/images
mkdir -p "$P"
bc pool-define-as p dir --target "$P" >/dev/null
bc pool-start p >/dev/null

# ---- images qemu-img makes ----
qi() { qemu-img create -q "$@" >/dev/null; }
qi -f raw "$P/base.raw" 1M
qi -f qcow2 -o compat=0.10 "$P/q2v2.qcow2" 1G
qi -f qcow2 -o compat=1.1,lazy_refcounts=on,cluster_size=128k "$P/q2v3.qcow2" 3G
qi -f qcow2 -b base.raw -F raw "$P/q2back.qcow2" 1M
qi -f qcow -b base.raw -F raw "$P/q1.qcow" 2M
qi -f qed -b base.raw -F raw "$P/qed.qed" 4M
qi -f vmdk "$P/sparse.vmdk" 1G
qi -f vmdk -o subformat=streamOptimized "$P/stream.vmdk" 2G
qi -f vmdk -o subformat=twoGbMaxExtentSparse "$P/split.vmdk" 5G
qi -f vdi "$P/d.vdi" 1G
qi -f vpc "$P/dyn.vpc" 1G
qi -f vpc -o subformat=fixed "$P/fixed.vpc" 8M

# ---- hostile headers (a guest rewrote its raw volume) ----
cp "$P/q2v3.qcow2" "$P/ext-wrap.img"
cp "$P/q2v3.qcow2" "$P/ext-wrap-bfmt.img"
cp "$P/q2v3.qcow2" "$P/hlen-huge.img"
cp "$P/q2back.qcow2" "$P/back-ctrl.img"
cp "$P/q2back.qcow2" "$P/back-far.img"
python3 - "$P" <<'EOF'
import struct, sys
P = sys.argv[1]
def patch(name, off, data):
    with open(P + "/" + name, "r+b") as f:
        f.seek(off); f.write(data)
hlen = struct.unpack(">I", open(P + "/q2v3.qcow2", "rb").read(104)[100:104])[0]
# an unknown extension, then the backing-format one, each 0xFFFFFFF8 bytes long
patch("ext-wrap.img", hlen, struct.pack(">II", 0x12345678, 0xFFFFFFF8))
patch("ext-wrap-bfmt.img", hlen, struct.pack(">II", 0xE2792ACA, 0xFFFFFFF8))
patch("hlen-huge.img", 100, struct.pack(">I", 0xFFFFFFFC))
h = open(P + "/q2back.qcow2", "rb").read(512)
boff = struct.unpack(">Q", h[8:16])[0]
patch("back-ctrl.img", boff, b"\x01")
patch("back-far.img", 8, struct.pack(">Q", 1 << 40))
EOF

start=$(date +%s%N)
assert_eq "$(bc pool-refresh p)" "Pool p refreshed" "pool-refresh returns"
ms=$((($(date +%s%N) - start) / 1000000))
[ $ms -lt 5000 ] || fail "pool-refresh took ${ms} ms"
echo "pool-refresh of $(ls "$P" | wc -l) volumes: ${ms} ms"
bd_alive "$BD_PID" || fail "blockd died during refresh"

# vol: "FORMAT CAPACITY BACKING-OR-DASH"
vol() {
	bc qmp vol-info "{\"pool\":\"p\",\"vol\":\"$1\"}" | python3 -c '
import json, sys
d = json.load(sys.stdin)
d = d.get("return", d)
print(d["format"], d["capacity"], d.get("backing-store", "-"))'
}
vsize() { qemu-img info -f "$2" --output=json "$P/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }

for v in q2v2.qcow2:qcow2 q2v3.qcow2:qcow2 q2back.qcow2:qcow2 q1.qcow:qcow qed.qed:qed \
	sparse.vmdk:vmdk stream.vmdk:vmdk split.vmdk:vmdk d.vdi:vdi dyn.vpc:vpc fixed.vpc:raw; do
	name=${v%%:*} fmt=${v##*:}
	got=$(vol "$name")
	assert_eq "${got%% *}" "$fmt" "format of $name"
	cap=${got#* }
	assert_eq "${cap%% *}" "$(vsize "$name" "$fmt")" "capacity of $name (qemu-img info)"
done
assert_eq "$(vol q2back.qcow2)" "qcow2 1048576 base.raw"
assert_eq "$(vol qed.qed)" "qed 4194304 base.raw"
assert_eq "$(vol base.raw)" "raw 1048576 -"
assert_contains "$(bc vol-dumpxml q2v3.qcow2 --pool p)" "<lazy_refcounts/>"
assert_contains "$(bc vol-dumpxml q2back.qcow2 --pool p)" "<format type='raw'/>"

# hostile ones: listed as qcow2 (the signature is there), the bad parts ignored
assert_eq "$(vol ext-wrap.img)" "qcow2 3221225472 -"
assert_eq "$(vol ext-wrap-bfmt.img)" "qcow2 3221225472 -"
assert_eq "$(vol hlen-huge.img)" "qcow2 3221225472 -"
assert_eq "$(vol back-ctrl.img)" "qcow2 1048576 -"
assert_eq "$(vol back-far.img)" "qcow2 1048576 -"
xml=$(bc vol-dumpxml back-ctrl.img --pool p)
assert_not_contains "$xml" "<backingStore>"
# a backing file the probe could not read or show is not opened by default
assert_fails bc vol-open back-ctrl.img n1 --pool p
assert_contains "$BD_OUT" "not printable"
assert_fails bc vol-open back-far.img n1 --pool p
assert_contains "$BD_OUT" "format=qcow2"
# the qcow2 driver refuses the wrapped extension with its own error, promptly
assert_fails bc vol-open ext-wrap.img n1 --pool p --read-only
assert_contains "$BD_OUT" "extension"

# ---- the daemon keeps serving: a hostile volume opened as raw, exported, read back ----
assert_eq "$(bc vol-open ext-wrap.img raw1 --pool p --format raw --read-only)" \
	"Node raw1 opened on volume ext-wrap.img"
bc qmp block-export-add '{"type":"nbd","id":"e1","node-name":"raw1","name":"raw1"}' >/dev/null
qemu-io -r -f raw -c "read -v 0 16" "nbd+unix:///raw1?socket=$T/nbd.sock" >"$T/read.txt"
assert_contains "$(cat "$T/read.txt")" "51 46 49 fb"
qemu-img convert -f raw -O raw "nbd+unix:///raw1?socket=$T/nbd.sock" "$T/back.img"
# (the export's size is rounded up to 512 bytes: compare the file's length)
assert_ok cmp -n "$(stat -c %s "$P/ext-wrap.img")" "$T/back.img" "$P/ext-wrap.img"
assert_eq "$(bc pool-refresh p)" "Pool p refreshed"
bd_alive "$BD_PID" || fail "blockd died"
bd_stop
