#!/bin/bash
# throttle-options.sh: throttle-group and throttle options as qemu-storage-daemon 7.2 takes them:
# the x- properties, limits.* (dotted and JSON), and QEMU's messages for bad combinations.
# No client needed: each bad command line must fail at startup with the message.
set -euo pipefail
source "$(dirname "$0")/../lib/common.sh"
bd_tmpdir

NULL="--blockdev driver=null-co,node-name=n,size=1073741824"

# bad ARGS... MESSAGE: blockd ARGS fails at startup, saying MESSAGE.
bad()
{
	local msg=${*: -1}
	local args=("${@:1:$#-1}")
	assert_fails timeout 10 "$BLOCKD" "${args[@]}"
	assert_contains "$BD_OUT" "$msg" "blockd ${args[*]}"
}

_bd_need_blockd
bad --object throttle-group,id=tg,x-iops-total=100,x-iops-read=10 \
	"bps/iops/max total values and read/write values cannot be used at the same time"
bad --object throttle-group,id=tg,limits.bps-total=100,limits.bps-write=10 \
	"bps/iops/max total values and read/write values cannot be used at the same time"
bad --object '{"qom-type":"throttle-group","id":"tg","limits":{"iops-total":100,"iops-read":5}}' \
	"bps/iops/max total values and read/write values cannot be used at the same time"
bad --object throttle-group,id=tg,x-iops-total=-1 "Property values cannot be negative"
bad --object throttle-group,id=tg,limits.iops-total=-1 \
	"bps/iops/max values must be within [0, 1000000000000000]"
bad --object throttle-group,id=tg,x-bps-total=1000000000000001 \
	"bps/iops/max values must be within [0, 1000000000000000]"
bad --object throttle-group,id=tg,x-iops-total=100,x-iops-total-max=50 \
	"bps_max/iops_max cannot be lower than bps/iops"
bad --object throttle-group,id=tg,x-iops-total-max=50 \
	"bps_max/iops_max require corresponding bps/iops values"
bad --object throttle-group,id=tg,x-iops-size=4096 "iops size requires an iops value to be set"
bad --object throttle-group,id=tg,x-iops-total=100,x-iops-total-max-length=0 \
	"the burst length cannot be 0"
bad --object throttle-group,id=tg,x-iops-total=100,x-iops-total-max-length=5 \
	"burst length set without burst rate"
bad --object throttle-group,id=tg,x-bps-total=100,x-bps-total-max=1000000000,x-bps-total-max-length=2000000 \
	"burst length too high for this burst rate"
bad --object throttle-group,id=tg,limits.iops-total=100,limits.iops-total-max-length=5000000000 \
	"iops-total-max-length value must be in the range [0, 4294967295]"
bad --object throttle-group,id=tg,x-iops-total=abc "Parameter 'x-iops-total' expects integer"
bad --object throttle-group,id=tg,x-foo=1 "Parameter 'x-foo' is unexpected"
bad --object throttle-group,id=tg,limits.foo=1 "Parameter 'limits.foo' is unexpected"
bad --object throttle-group,id=tg,x-iops-total=1 --object throttle-group,id=tg,x-iops-total=2 "'tg'"
bad --object throttle-group,id=tg,x-iops-total=100 $NULL \
	--blockdev driver=throttle,node-name=t,file=n "Parameter 'throttle-group' is missing"
bad --object throttle-group,id=tg,x-iops-total=100 $NULL \
	--blockdev driver=throttle,node-name=t,file=n,throttle-group=nope \
	"Throttle group 'nope' does not exist"
bad --object throttle-group,id=tg,x-iops-total=100 $NULL \
	--blockdev driver=throttle,node-name=t,file=n,throttle-group=tg,limits.iops-total=5 "limits"
bad --object throttle-group,id=tg $NULL --blockdev driver=throttle,node-name=t,throttle-group=tg \
	"file"

# Good spellings start (and the node exports the child's size).
i=0
good()
{
	i=$((i + 1))
	bd_start "$@" $NULL --blockdev driver=throttle,node-name=t,throttle-group=tg,file=n \
		--nbd-server addr.type=unix,addr.path="$T/s$i" --export type=nbd,id=e,node-name=t,name=t
	if command -v nbdinfo >/dev/null 2>&1; then
		size=$(nbdinfo --size "$(bd_nbd_unix_uri "$T/s$i" t)")
		assert_eq "$size" 1073741824 "size through the throttle node"
	fi
	bd_stop
}
good --object throttle-group,id=tg,x-iops-total=100,x-iops-total-max=200,x-iops-total-max-length=3,x-iops-size=8192
good --object throttle-group,id=tg,limits.bps-read=1000000,limits.bps-write=2000000,limits.iops-read=10
good --object '{"qom-type":"throttle-group","id":"tg","limits":{"iops-total":100,"bps-total-max-length":1}}'
good --object throttle-group,id=tg
echo "ok"
