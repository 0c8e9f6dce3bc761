#!/bin/bash
# pool-dir.sh - a dir pool through blockctl, following virsh's storage tutorial: define-as,
# build, start, autostart, list (virsh's table layout), info, dumpxml, volumes (raw, qcow2,
# clone, delete), destroy, delete, undefine; persistence across a restart and a SIGKILL.
source "$(dirname "$0")/../lib/common.sh"
need python3
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }
start() { bd_start --state-dir "$T/var" --control "$T/ctl.sock" \
	--nbd-server "addr.type=unix,addr.path=$T/nbd.sock"; }

start
out=$(bc pool-define-as virtimages dir --target "$T/images")
assert_eq "$out" "Pool virtimages defined"
assert_exists "$T/var/pools/virtimages.xml"
assert_eq "$(bc pool-build virtimages)" "Pool virtimages built"
assert_exists "$T/images"
assert_eq "$(bc pool-start virtimages)" "Pool virtimages started"
assert_eq "$(bc pool-autostart virtimages)" "Pool virtimages marked as autostarted"
assert_exists "$T/var/pools/autostart/virtimages"

# virsh's layout: header, dashes (column widths + 3 each), rows, a blank line
out=$(bc pool-list)
expect=" Name         State    Autostart
----------------------------------
 virtimages   active   yes"
assert_eq "$out" "$expect" "pool-list"
out=$(bc pool-list --details)
assert_match "$(echo "$out" | head -1)" '^ Name +State +Autostart +Persistent +Capacity +Allocation +Available$'
assert_match "$(echo "$out" | sed -n 3p)" '^ virtimages +running +yes +yes +[0-9.]+ [KMGT]iB +[0-9.]+ [KMGT]iB +[0-9.]+ [KMGT]iB$'
out=$(bc pool-info virtimages)
assert_match "$(echo "$out" | head -1)" '^Name:           virtimages$'
assert_match "$(echo "$out" | sed -n 2p)" '^UUID:           [0-9a-f-]{36}$'
assert_contains "$out" "State:          running"
assert_contains "$out" "Persistent:     yes"
assert_contains "$out" "Autostart:      yes"
assert_match "$(echo "$out" | grep Capacity)" '^Capacity:       [0-9.]+ [KMGT]iB$'
xml=$(bc pool-dumpxml virtimages)
assert_contains "$xml" "<pool type='dir'>"
assert_contains "$xml" "<path>$T/images</path>"
assert_contains "$xml" "<capacity unit='bytes'>"
assert_not_contains "$(bc pool-dumpxml virtimages --inactive)" "<capacity"

# volumes
assert_eq "$(bc vol-create-as virtimages volumen1 10G)" "Vol volumen1 created"
assert_eq "$(stat -c %s "$T/images/volumen1")" 10737418240
if bc qmp query-qmp-schema | grep -q '"blockdev-create"' &&
	bc qmp vol-create-as "{\"pool\":\"virtimages\",\"name\":\"probe\",\"capacity\":1048576,\"format\":\"qcow2\"}" >/dev/null 2>&1; then
	have_qcow2=1
	bc vol-delete probe --pool virtimages >/dev/null
else
	have_qcow2=0
fi
if [ $have_qcow2 = 1 ]; then
	assert_eq "$(bc vol-create-as virtimages volumen2 10G --format qcow2)" "Vol volumen2 created"
	if command -v qemu-img >/dev/null; then
		assert_contains "$(qemu-img info "$T/images/volumen2")" "file format: qcow2"
		assert_ok qemu-img check "$T/images/volumen2"
	fi
	assert_contains "$(bc vol-dumpxml volumen2 --pool virtimages)" "<format type='qcow2'/>"
	# an overlay on volumen2 (capacity 0: the backing volume's), resized, wiped
	bc vol-create-as virtimages overlay 0 --format qcow2 --backing-vol volumen2 >/dev/null
	xml=$(bc vol-dumpxml overlay --pool virtimages)
	assert_contains "$xml" "<capacity unit='bytes'>10737418240</capacity>"
	assert_contains "$xml" "<path>$T/images/volumen2</path>"
	bc vol-resize overlay 12G --pool virtimages >/dev/null
	assert_contains "$(bc vol-info overlay --pool virtimages)" "Capacity:       12.00 GiB"
	assert_fails bc vol-resize overlay 1G --pool virtimages --shrink
	assert_eq "$(bc vol-wipe overlay --pool virtimages)" "Vol overlay wiped"
	assert_contains "$(bc vol-dumpxml overlay --pool virtimages)" "<backingStore>"
	if command -v qemu-img >/dev/null; then
		assert_contains "$(qemu-img info "$T/images/overlay")" "virtual size: 12 GiB"
	fi
	bc vol-delete overlay --pool virtimages >/dev/null
else
	assert_fails bc vol-create-as virtimages volumen2 10G --format qcow2
	assert_contains "$BD_OUT" "qcow2"
	bc vol-create-as virtimages volumen2 10G >/dev/null
fi
out=$(bc vol-list virtimages)
expect=" Name       Path
$(printf -- '-%.0s' $(seq $((8 + 3 + ${#T} + 16 + 3))))
 volumen1   $T/images/volumen1
 volumen2   $T/images/volumen2"
assert_eq "$out" "$expect" "vol-list"
assert_eq "$(bc vol-clone --pool virtimages volumen1 volumen3)" "Vol volumen3 cloned from volumen1"
assert_eq "$(stat -c %s "$T/images/volumen3")" 10737418240
out=$(bc vol-list virtimages --details)
assert_match "$(echo "$out" | head -1)" '^ Name +Path +Type +Capacity +Allocation$'
assert_contains "$out" "volumen3"
assert_contains "$(bc vol-info volumen1 --pool virtimages)" "Capacity:       10.00 GiB"
assert_contains "$(bc vol-info volumen1 --pool virtimages --bytes)" "Capacity:       10737418240 bytes"
assert_eq "$(bc vol-path volumen1 --pool virtimages)" "$T/images/volumen1"
assert_eq "$(bc vol-key volumen1 --pool virtimages)" "$T/images/volumen1"
assert_eq "$(bc vol-name "$T/images/volumen1")" "volumen1"
assert_eq "$(bc vol-pool "$T/images/volumen1")" "virtimages"

# a clone with another format converts (raw -> qcow2 -> raw) through the graph
bc vol-create-as virtimages conv-src 24M >/dev/null
head -c 3000000 /dev/urandom >"$T/conv.data"
bc vol-upload conv-src "$T/conv.data" --pool virtimages --offset 1048576 >/dev/null
printf "<volume><name>conv-q</name><target><format type='qcow2'/></target></volume>" >"$T/conv-q.xml"
assert_eq "$(bc vol-create-from virtimages "$T/conv-q.xml" conv-src)" "Vol conv-q created from input vol conv-src"
if command -v qemu-img >/dev/null; then
	qemu-img check -q "$T/images/conv-q" || fail "the converted qcow2 image is not clean"
	assert_contains "$(qemu-img info "$T/images/conv-q")" "virtual size: 24 MiB"
	qemu-img compare -q -f raw -F qcow2 "$T/images/conv-src" "$T/images/conv-q" ||
		fail "raw -> qcow2 conversion changed the data"
fi
printf "<volume><name>conv-r</name><target><format type='raw'/></target></volume>" >"$T/conv-r.xml"
bc vol-create-from virtimages "$T/conv-r.xml" conv-q >/dev/null
cmp "$T/images/conv-src" "$T/images/conv-r" || fail "qcow2 -> raw conversion changed the data"
assert_contains "$(bc vol-dumpxml conv-q --pool virtimages)" "<format type='qcow2'/>"
for v in conv-src conv-q conv-r; do bc vol-delete $v --pool virtimages >/dev/null; done

# a volume the daemon did not create appears after a refresh
truncate -s 1M "$T/images/outside.img"
assert_not_contains "$(bc vol-list virtimages)" outside.img
assert_eq "$(bc pool-refresh virtimages)" "Pool virtimages refreshed"
assert_contains "$(bc vol-list virtimages)" outside.img

# images of the read-only formats are recognised by their signatures and open read-only
if command -v qemu-img >/dev/null && command -v nbdcopy >/dev/null; then
	head -c 1000000 /dev/urandom >"$T/ro.raw"
	truncate -s 5M "$T/ro.raw"
	for spec in vmdk: vmdk:subformat=streamOptimized vdi: vpc:subformat=fixed vpc: qed:; do
		fmt=${spec%%:*} o=${spec#*:}
		name="ro-$fmt${o:+-${o#*=}}"
		qemu-img convert -f raw -O "$fmt" ${o:+-o "$o"} "$T/ro.raw" "$T/images/$name"
	done
	bc pool-refresh virtimages >/dev/null
	for name in ro-vmdk ro-vmdk-streamOptimized ro-vdi ro-vpc-fixed ro-vpc ro-qed; do
		fmt=${name#ro-}
		fmt=${fmt%%-*}
		xml=$(bc vol-dumpxml "$name" --pool virtimages)
		# a fixed VHD's only footer is its last sector: listed as raw (as QEMU probes it)
		listed=$fmt
		[ "$name" != ro-vpc-fixed ] || listed=raw
		assert_contains "$xml" "<format type='$listed'/>" "$name format"
		size=$(qemu-img info -f "$listed" --output=json "$T/images/$name" | jq '.["virtual-size"]')
		assert_contains "$xml" "<capacity unit='bytes'>$size</capacity>" "$name capacity"
		assert_fails bc vol-open "$name" "n-$name" --pool virtimages --format "$fmt"
		assert_contains "$BD_OUT" "reads only: open it read-only"
		if [ "$fmt" = vmdk ] || [ "$listed" != "$fmt" ]; then
			# a probed vmdk could be a guest's forged descriptor naming host files
			if [ "$fmt" = vmdk ]; then
				assert_fails bc vol-export "$name" --pool virtimages
				assert_contains "$BD_OUT" "pass format=vmdk"
			fi
			bc vol-export "$name" --pool virtimages --format "$fmt" >/dev/null
		else
			bc vol-export "$name" --pool virtimages >/dev/null
		fi
		nbdcopy "nbd+unix:///$name?socket=$T/nbd.sock" "$T/ro.back"
		qemu-img convert -f "$fmt" -O raw "$T/images/$name" "$T/ro.ref"
		cmp "$T/ro.ref" "$T/ro.back" || fail "$name reads differently through its pool volume"
		bc export-del "$name" --hard >/dev/null
		bc node-del "$name" >/dev/null
		rm -f "$T/images/$name"
	done
	bc pool-refresh virtimages >/dev/null
fi

# a raw volume whose guest wrote a qcow2 header naming a host file is not promoted
if command -v qemu-img >/dev/null; then
	qemu-img create -q -f qcow2 -b /etc/passwd -F raw "$T/images/forged" 1M
	bc pool-refresh virtimages >/dev/null
	assert_fails bc vol-open forged forged --pool virtimages --read-only
	assert_contains "$BD_OUT" "backed by '/etc/passwd', which is not in a running pool"
	bc vol-open forged forged --pool virtimages --read-only --format raw >/dev/null
	bc node-del forged >/dev/null
	# a backing file inside the pool is trusted
	qemu-img create -q -f qcow2 -b "$T/images/volumen1" -F raw "$T/images/overlay-ok" 1M
	bc pool-refresh virtimages >/dev/null
	bc vol-open overlay-ok ok --pool virtimages --read-only >/dev/null
	bc node-del ok >/dev/null
	rm -f "$T/images/forged" "$T/images/overlay-ok"
	bc pool-refresh virtimages >/dev/null
fi

# restart: definition, autostart and volumes survive
bd_stop
start
assert_contains "$(bc pool-list)" " virtimages   active   yes"
assert_contains "$(bc vol-list virtimages)" volumen3
# SIGKILL: the same
kill -KILL "$BD_PID"
bd_wait_exit "$BD_PID" 10 || fail "blockd did not die"
rm -f "$T/ctl.sock"
start
assert_contains "$(bc pool-list)" " virtimages   active   yes"
# without autostart the pool is defined but inactive after a restart
assert_eq "$(bc pool-autostart virtimages --disable)" "Pool virtimages unmarked as autostarted"
assert_not_exists "$T/var/pools/autostart/virtimages"
bd_stop
start
assert_contains "$(bc pool-list --all)" " virtimages   inactive   no"
assert_eq "$(bc pool-list --inactive --name)" "virtimages"
bc pool-start virtimages >/dev/null

# tear down as in the tutorial
for v in volumen1 volumen2 volumen3 outside.img; do
	assert_eq "$(bc vol-delete --pool virtimages $v)" "Vol $v deleted"
done
assert_not_exists "$T/images/volumen1"
assert_eq "$(bc pool-destroy virtimages)" "Pool virtimages destroyed"
assert_eq "$(bc pool-delete virtimages)" "Pool virtimages deleted"
assert_not_exists "$T/images"
assert_eq "$(bc pool-undefine virtimages)" "Pool virtimages has been undefined"
assert_not_exists "$T/var/pools/virtimages.xml"
assert_eq "$(bc pool-list --all | wc -l)" 3
bd_stop
start
assert_not_contains "$(bc pool-list --all)" virtimages
bd_stop
