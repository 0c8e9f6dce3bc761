#!/bin/bash
# pool-tool-timeout.sh - an external tool of a pool backend that never finishes (here a mkfs that
# hangs, as a mount of a dead server would) is killed, with the helpers it started, after
# BLOCKD_POOL_TOOL_TIMEOUT seconds; the command fails with a clear error and the daemon keeps
# answering.
# meson-suite: integration
# meson-timeout: 60
source "$(dirname "$0")/../lib/common.sh"
need blkid
[ -n "${BLOCKCTL:-}" ] || BLOCKCTL=$BUILD_DIR/blockctl
bd_tmpdir
export BLOCKD_SOCKET=$T/ctl.sock
bc() { "$BLOCKCTL" "$@"; }

# a mkfs.ext4 that starts a helper and then hangs; both leave a pid file
mkdir -p "$T/bin"
cat >"$T/bin/mkfs.ext4" <<EOS
#!/bin/bash
sleep 300 &
echo \$! >"$T/helper.pid"
echo \$\$ >"$T/mkfs.pid"
wait
EOS
chmod +x "$T/bin/mkfs.ext4"
truncate -s 64M "$T/dev.img"

PATH="$T/bin:$PATH" BLOCKD_POOL_TOOL_TIMEOUT=2 \
	bd_start --state-dir "$T/var" --control "$T/ctl.sock"
bc pool-define-as slow fs --source-dev "$T/dev.img" --source-format ext4 --target "$T/mnt" >/dev/null
t0=$(date +%s)
assert_fails bc pool-build slow
t1=$(date +%s)
assert_contains "$BD_OUT" "'mkfs.ext4' did not finish within 2 s"
[ $((t1 - t0)) -le 10 ] || fail "pool-build took $((t1 - t0)) s with a 2 s tool timeout"
# the tool and its helper are gone
for f in mkfs helper; do
	[ -s "$T/$f.pid" ] || fail "the fake tool did not run ($f.pid missing)"
	pid=$(cat "$T/$f.pid")
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.2
	done
	kill -0 "$pid" 2>/dev/null && { kill "$pid"; fail "$f (pid $pid) still running after the timeout"; }
done
# the daemon still answers, and the pool is still defined and can be removed
assert_contains "$(bc pool-list --all)" "slow"
assert_eq "$(bc pool-undefine slow)" "Pool slow has been undefined"
bd_stop
exit 0
