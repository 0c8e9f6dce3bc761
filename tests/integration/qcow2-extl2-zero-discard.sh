#!/bin/bash
# qcow2-extl2-zero-discard.sh - write-zeroes and discard on qcow2 images with extended L2
# entries (subclusters) through blockd's NBD export.  Images made by qemu-img (32k, 64k and 2M
# clusters; without and with a raw backing file of non-zero data, shorter than the image; with
# an internal snapshot; with compressed clusters) get data written by QEMU, then write-zeroes
# (with and without may-trim, whole clusters, whole subclusters, partial subclusters, across
# an L2 table) and discards (whole and partial clusters) through blockd.  The same commands go
# to a copy of the image through QEMU and to a raw reference.  Checked: `qemu-img check` clean
# without leaks, `qemu-img compare` equal to the reference, `qemu-img map` zero/data flags
# equal to the image QEMU treated, host clusters kept or freed where they should be, fewer
# allocated clusters after the discards, and a partial-subcluster write-zeroes read back
# through the export (zeroes, neighbours intact).  Then random writes, write-zeroes and
# discards of odd sizes, checked the same way, and thousands of disjoint writes and
# write-zeroes sharing subclusters submitted at once.
# meson-timeout: 300
source "$(dirname "$0")/../lib/common.sh"
need qemu-img qemu-io python3
bd_tmpdir
M=$((1024 * 1024))

# allocated clusters as qemu-img check counts them
allocated()
{
	qemu-img check --output=json "$1" 2>/dev/null |
		python3 -c 'import json,sys; print(json.load(sys.stdin)["allocated-clusters"])'
}

# the map of an image as (start, end, zero, data, offset?) ranges, merged
map_of()
{
	qemu-img map --output=json "$1" | python3 -c '
import json, sys
out = []
for e in json.load(sys.stdin):
    k = (e["zero"], e["data"])
    if out and out[-1][2:] == list(k) and out[-1][1] == e["start"]:
        out[-1][1] += e["length"]
    else:
        out.append([e["start"], e["start"] + e["length"], *k])
print(json.dumps(out))'
}

# does [off, off+len) of the image have a host offset in every part (1) or in none (0)?
host_kept()
{
	qemu-img map --output=json "$1" | python3 -c '
import json, sys
off, ln = int(sys.argv[1]), int(sys.argv[2])
has = set()
for e in json.load(sys.stdin):
    if e["start"] < off + ln and off < e["start"] + e["length"]:
        has.add("offset" in e)
print(1 if has == {True} else 0 if has == {False} else "mixed")' "$2" "$3"
}

# The reference of a discard: whole clusters inside the range read as zeroes afterwards.
ref_cmd()
{
	local c=$1 cs=$2
	if [[ $c =~ ^discard\ ([0-9]+)\ ([0-9]+)$ ]]; then
		local o=${BASH_REMATCH[1]} l=${BASH_REMATCH[2]}
		local a=$(((o + cs - 1) / cs * cs)) b=$(((o + l) / cs * cs))
		if ((b > a)); then echo "write -q -z $a $((b - a))"; fi
	else
		echo "$c"
	fi
}

# run_case NAME CLUSTER SIZE [backing|snap|comp]
run_case()
{
	local name=$1 cs=$2 size=$3 kind=${4:-} img="$T/$1.qcow2" qimg="$T/$1.qemu.qcow2"
	local ref="$T/$1.ref"
	local U=$((cs / 32)) C=$cs
	case $kind in
	backing)
		qemu-img create -q -f raw "$T/$name.base" $((size * 7 / 8))
		qemu-io -f raw -c "write -q -P 0x5a 0 $((size * 7 / 8))" "$T/$name.base" >/dev/null
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs -b "$T/$name.base" \
			-F raw "$img" "$size"
		;;
	comp)
		qemu-img create -q -f raw "$T/$name.src" "$size"
		qemu-io -f raw -c "write -q -P 0x33 0 $((26 * C))" "$T/$name.src" >/dev/null
		qemu-img convert -c -f raw -O qcow2 -o extended_l2=on,cluster_size=$cs "$T/$name.src" "$img"
		;;
	*)
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$img" "$size" ;;
	esac
	[ "$kind" = comp ] || qemu-io -f qcow2 -c "write -q -P 0x21 0 $((13 * C))" \
		-c "write -q -P 0x22 $((13 * C)) $((13 * C - U - 7))" "$img" >/dev/null
	[ "$kind" = snap ] && qemu-img snapshot -c s0 "$img"
	cp "$img" "$qimg"
	qemu-img convert -f qcow2 -O raw "$img" "$ref"
	cp "$ref" "$T/$name.orig"
	local before
	before=$(allocated "$img")

	local cmds=(
		"write -q -z $((2 * C)) $((3 * C))"                       # whole clusters, host kept
		"write -q -z -u $((6 * C)) $((2 * C))"                    # whole clusters, freed
		"write -q -z -u $((9 * C + 3 * U)) $((5 * U))"            # whole subclusters
		"write -q -z $((10 * C + 3 * U + 100)) 700"               # inside one subcluster
		"write -q -z -u $((11 * C + U / 2)) $((2 * C + 3 * U))"   # all kinds in one request
		"write -q -z -u $((14 * C)) $((16 * U))"                  # a cluster zeroed in two
		"write -q -z -u $((14 * C + 16 * U)) $((16 * U))"         # ... halves: freed
		"write -q -z $((15 * C + 30 * U)) $((4 * U))"             # subclusters of two clusters
		"discard $((16 * C)) $((3 * C))"                          # whole clusters
		"discard $((20 * C + 100)) $C"                            # partial clusters: ignored
		"discard $((22 * C + U)) $((3 * C))"                      # two whole, two partial
		"write -q -P 0x77 $((2 * C + 5 * U + 10)) 100"            # data into a zeroed cluster
		"write -q -P 0x78 $((17 * C + 3)) 5000"                   # data into a discarded one
		"write -q -z $((28 * C)) $C"                              # never written
		"discard $((30 * C)) $((2 * C))"                          # never written, to the end
	)
	if ((size > 64 * M)); then
		cmds+=("write -q -z -u $((64 * M - C - U)) $((2 * C + 2 * U))") # across an L2 table
		cmds+=("discard $((64 * M - 2 * C)) $((4 * C))")
	fi
	local args=() rargs=() c r
	for c in "${cmds[@]}"; do
		args+=(-c "$c")
		r=$(ref_cmd "$c" "$cs")
		[ -z "$r" ] || rargs+=(-c "$r")
	done
	bd_start --nbd-server addr.type=unix,addr.path="$T/s-$name" \
		--blockdev "driver=qcow2,node-name=q,discard=unmap,file.driver=file,file.filename=$img" \
		--export type=nbd,id=e,node-name=q,writable=on
	local uri
	uri=$(bd_nbd_unix_uri "$T/s-$name" q)
	qemu-io -f raw "${args[@]}" "$uri" >"$T/$name.io" 2>&1 || {
		cat "$T/$name.io"
		fail "$name: commands through blockd failed"
	}
	# the partial-subcluster write-zeroes reads back as zeroes, its neighbours unchanged
	local p=$((10 * C + 3 * U)) pat=0x21
	[ "$kind" = comp ] && pat=0x33
	out=$(qemu-io -f raw -c "read -q -P 0 $((p + 100)) 700" -c "read -q -P $pat $p 100" \
		-c "read -q -P $pat $((p + 800)) $((U - 800))" "$uri" 2>&1)
	assert_not_contains "$out" "failed"
	bd_stop
	qemu-io -f raw "${rargs[@]}" "$ref" >/dev/null
	# QEMU itself on the copy (its discard also drops whole clusters only)
	qemu-io -f qcow2 "${args[@]}" "$qimg" >/dev/null

	local chk
	chk=$(qemu-img check "$img" 2>&1) || fail "$name: qemu-img check: $chk"
	assert_contains "$chk" "No errors were found"
	assert_not_contains "$chk" "leaked"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$img" || fail "$name: data differs from the reference"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$qimg" || fail "$name: QEMU's copy differs (test bug)"
	# zero/data flags equal QEMU's; on compressed clusters QEMU writes zero bytes over a
	# whole request when one of its clusters is compressed and zeroed in part, where blockd
	# sets zero bits on the other clusters: there blockd may say zero where QEMU says data
	local mb mq
	mb=$(map_of "$img")
	mq=$(map_of "$qimg")
	python3 - "$mb" "$mq" "$kind" <<'EOF2' || fail "$name: qemu-img map zero/data flags differ from QEMU's"
import json, sys
b, q, kind = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
bad = []
for s0, e0, z0, d0 in b:
    for s1, e1, z1, d1 in q:
        lo, hi = max(s0, s1), min(e0, e1)
        if lo >= hi or (z0, d0) == (z1, d1):
            continue
        if kind == "comp" and (z0, d0, z1, d1) == (True, False, False, True):
            continue
        bad.append((lo, hi, "blockd", z0, d0, "QEMU", z1, d1))
if bad:
    print("blockd:", b)
    print("QEMU:  ", q)
    print("differ:", bad)
    sys.exit(1)
EOF2
	# host clusters: kept by write-zeroes without may-trim, dropped with it and by discard
	# (a shared or compressed cluster always loses its host cluster)
	local keep=1
	[ "$kind" = snap ] || [ "$kind" = comp ] && keep=0
	assert_eq "$(host_kept "$img" $((3 * C)) $C)" $keep "$name: host of a zeroed cluster"
	assert_eq "$(host_kept "$img" $((6 * C)) $((2 * C)))" 0 "$name: host of unmapped clusters"
	# (a compressed cluster's first half is written as zero bytes: a new cluster, kept)
	[ "$kind" = comp ] ||
		assert_eq "$(host_kept "$img" $((14 * C)) $C)" 0 "$name: host of a cluster zeroed in halves"
	assert_eq "$(host_kept "$img" $((18 * C)) $C)" 0 "$name: host of a discarded cluster"
	assert_eq "$(host_kept "$img" $((23 * C)) $((2 * C)))" 0 "$name: host of discarded clusters"
	local after
	after=$(allocated "$img")
	((after < before)) || fail "$name: allocated clusters $before -> $after"
	if [ "$kind" = snap ]; then
		qemu-img convert -f qcow2 -l snapshot.name=s0 -O raw "$img" "$T/$name.s0"
		cmp "$T/$name.s0" "$T/$name.orig" || fail "$name: the snapshot changed"
	fi
	echo "$name: clean, equal to the reference and to QEMU's map; allocated clusters $before -> $after"
}

run_case ext64k $((64 * 1024)) $((2 * M))
run_case ext32k $((32 * 1024)) $((80 * M))
run_case ext2m $((2 * M)) $((64 * M))
run_case ext64k-backing $((64 * 1024)) $((2 * M)) backing
run_case ext32k-backing $((32 * 1024)) $((80 * M)) backing
run_case ext2m-backing $((2 * M)) $((64 * M)) backing
run_case ext64k-snap $((64 * 1024)) $((2 * M)) snap
run_case ext64k-comp $((64 * 1024)) $((2 * M)) comp

# random_case NAME CLUSTER SIZE SEED [backing]: random writes, write-zeroes (with and without
# may-trim) and discards of odd sizes, the same checks (flags equal QEMU's)
random_case()
{
	local name=$1 cs=$2 size=$3 seed=$4 kind=${5:-} img="$T/$1.qcow2" qimg="$T/$1.qemu.qcow2"
	local ref="$T/$1.ref"
	echo "$name: seed $seed"
	if [ "$kind" = backing ]; then
		qemu-img create -q -f raw "$T/$name.base" $((size * 3 / 4))
		qemu-io -f raw -c "write -q -P 0x5a 0 $((size * 3 / 4))" "$T/$name.base" >/dev/null
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs -b "$T/$name.base" \
			-F raw "$img" "$size"
	else
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$img" "$size"
	fi
	cp "$img" "$qimg"
	qemu-img convert -f qcow2 -O raw "$img" "$ref"
	python3 - "$size" "$cs" "$seed" >"$T/$name.cmds" <<'EOF2'
import random, sys
size, cs, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
r = random.Random(seed)
u = cs // 32
for i in range(150):
    n = r.choice([1, 700, u, 3 * u, u + 1000, cs, 2 * cs + 5 * u, r.randrange(1, 4 * cs)])
    off = r.randrange(0, size - n)
    if r.random() < 0.5:
        off -= off % u  # subcluster aligned
    x = r.random()
    if x < 0.2:
        print("write -q -z %d %d" % (off, n))
    elif x < 0.4:
        print("write -q -z -u %d %d" % (off, n))
    elif x < 0.55:
        print("discard %d %d" % (off, n))
    else:
        print("write -q -P %d %d %d" % (r.randrange(1, 255), off, n))
EOF2
	local args=() rargs=() c r
	while read -r c; do
		args+=(-c "$c")
		r=$(ref_cmd "$c" "$cs")
		[ -z "$r" ] || rargs+=(-c "$r")
	done <"$T/$name.cmds"
	bd_start --nbd-server addr.type=unix,addr.path="$T/s-$name" \
		--blockdev "driver=qcow2,node-name=q,discard=unmap,file.driver=file,file.filename=$img" \
		--export type=nbd,id=e,node-name=q,writable=on
	qemu-io -f raw "${args[@]}" "$(bd_nbd_unix_uri "$T/s-$name" q)" >/dev/null ||
		fail "$name (seed ${seed:-}): commands through blockd failed"
	bd_stop
	qemu-io -f raw "${rargs[@]}" "$ref" >/dev/null
	qemu-io -f qcow2 "${args[@]}" "$qimg" >/dev/null
	local chk
	chk=$(qemu-img check "$img" 2>&1) || fail "$name: qemu-img check: $chk"
	assert_not_contains "$chk" "leaked"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$img" || fail "$name: data differs from the reference"
	local mb mq
	mb=$(map_of "$img")
	mq=$(map_of "$qimg")
	[ "$mb" = "$mq" ] || {
		echo "blockd: $mb"
		echo "QEMU:   $mq"
		fail "$name: qemu-img map zero/data flags differ from QEMU's"
	}
	echo "$name (seed $seed): clean, equal to the reference and to QEMU's map"
}

random_case rnd64k $((64 * 1024)) $((8 * M)) $RANDOM
random_case rnd32k-backing $((32 * 1024)) $((8 * M)) $RANDOM backing

# in_flight NAME CLUSTER [backing]: the image (half of it with data) is cut into disjoint
# pieces (100 B .. 3 subclusters, many per subcluster and per cluster), each written or zeroed
# (with or without may-trim), submitted at once by one qemu-io process in a random order (the
# NBD client keeps 16 in flight): clean, no leaks, equal to the reference
in_flight()
{
	local name=$1 cs=$2 kind=${3:-} img="$T/$1.qcow2" ref="$T/$1.ref" size=$((4 * M))
	if [ "$kind" = backing ]; then
		qemu-img create -q -f raw "$T/$name.base" $size
		qemu-io -f raw -c "write -q -P 0x5a 0 $size" "$T/$name.base" >/dev/null
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs -b "$T/$name.base" \
			-F raw "$img" $size
	else
		qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=$cs "$img" $size
	fi
	qemu-io -f qcow2 -c "write -q -P 0x21 0 $((size / 2))" "$img" >/dev/null
	qemu-img convert -f qcow2 -O raw "$img" "$ref"
	python3 - "$ref" "$T/$name.cmds" "$cs" "$size" <<'EOF2'
import random, sys
ref, cmds, cs, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
u = cs // 32
rnd = random.Random(cs)
pieces, off = [], 0
while off < size:
    n = min(rnd.choice([100, 1000, u, u + 300, 3 * u, rnd.randrange(1, 3 * u)]), size - off)
    pieces.append((off, n))
    off += n
rnd.shuffle(pieces)
with open(ref, "r+b") as f, open(cmds, "w") as c:
    for i, (off, n) in enumerate(pieces):
        x = rnd.random()
        f.seek(off)
        if x < 0.25:
            c.write(f"aio_write -z {off} {n}\n")
            f.write(bytes(n))
        elif x < 0.5:
            c.write(f"aio_write -z -u {off} {n}\n")
            f.write(bytes(n))
        else:
            pat = i % 250 + 1
            c.write(f"aio_write -P {pat} {off} {n}\n")
            f.write(bytes([pat]) * n)
    c.write("aio_flush\n")
EOF2
	bd_start --nbd-server addr.type=unix,addr.path="$T/s-$name" \
		--blockdev "driver=qcow2,node-name=q,discard=unmap,file.driver=file,file.filename=$img" \
		--export type=nbd,id=e,node-name=q,writable=on
	local args=() l
	while read -r l; do args+=(-c "$l"); done <"$T/$name.cmds"
	qemu-io -f raw "${args[@]}" "$(bd_nbd_unix_uri "$T/s-$name" q)" >"$T/$name.io" 2>&1 ||
		fail "$name: the requests failed"
	grep -qi "error\|failed" "$T/$name.io" && fail "$name: a request failed"
	bd_stop
	local chk
	chk=$(qemu-img check "$img" 2>&1) || fail "$name: qemu-img check: $chk"
	assert_not_contains "$chk" "leaked"
	qemu-img compare -q -f raw -F qcow2 "$ref" "$img" || fail "$name: data differs from the reference"
	echo "$name: $((${#args[@]} / 2)) requests submitted at once: clean, equal to the reference"
}

in_flight fl64k $((64 * 1024))
in_flight fl32k-backing $((32 * 1024)) backing
echo ok
