#!/bin/bash
# daemon-cmdline.sh: --help and --version work; every command-line error makes blockd print one
# clear line on stderr (naming the culprit), nothing on stdout, exit 1, and leave no pidfile.
source "$(dirname "$0")/../lib/common.sh"
bd_tmpdir
_bd_need_blockd

# expect_error WHAT EXPECTED_SUBSTRING ARGS...: blockd ARGS must fail as described above.
# With EXPECT_OPT set, the line must also start by naming that option as given:
# "blockd: --blockdev driver=...: reason".
expect_error()
{
	local what=$1 needle=$2 rc=0
	shift 2
	rm -f "$T/pid" "$T/out" "$T/err"
	timeout 20 "$BLOCKD" --pidfile "$T/pid" "$@" >"$T/out" 2>"$T/err" </dev/null || rc=$?
	[ "$rc" = 1 ] || fail "$what: exit status $rc, expected 1 (stderr: $(cat "$T/err"))"
	[ ! -s "$T/out" ] || fail "$what: unexpected stdout: $(cat "$T/out")"
	[ "$(wc -l <"$T/err")" = 1 ] || fail "$what: expected one line on stderr, got: $(cat "$T/err")"
	assert_match "$(cat "$T/err")" '^blockd: ' "$what: stderr"
	# For a failing option, the reason must name the culprit, not just echo the option back:
	# look for the needle in the message without the option values.
	local msg a
	msg=$(cat "$T/err")
	if [ -n "${EXPECT_OPT:-}" ]; then
		for a in "$@"; do
			[[ "$a" == -* ]] || msg=${msg//"$a"/}
		done
	fi
	assert_contains "$msg" "$needle" "$what: stderr (without the echoed arguments)"
	if [ -n "${EXPECT_OPT:-}" ]; then
		assert_match "$(cat "$T/err")" "^blockd: $EXPECT_OPT " "$what: the line names the option"
	fi
	if LC_ALL=C grep -q '[^[:print:]]' "$T/err"; then
		fail "$what: control characters in the message: $(od -c "$T/err" | head -5)"
	fi
	[ ! -e "$T/pid" ] || fail "$what: pidfile written although start-up failed"
	echo "ok: $what: $(cat "$T/err")"
}

# --help / --version
out=$("$BLOCKD" --help)
assert_contains "$out" "--blockdev" "--help"
assert_contains "$out" "--nbd-server" "--help"
assert_contains "$out" "--export" "--help"
out=$("$BLOCKD" --version)
assert_match "$out" '^blockd [0-9]+\.[0-9]+' "--version"
out=$("$BLOCKD" -V)
assert_match "$out" '^blockd [0-9]+\.[0-9]+' "-V"

# Syntax errors.
expect_error "unknown option" "--no-such-option" --no-such-option
expect_error "missing argument" "--blockdev" --blockdev
expect_error "stray argument" "stray" stray
expect_error "bad log level" "loud" --log-level loud

# Options that parse but cannot be done.
EXPECT_OPT=--blockdev expect_error "unknown driver" "no-such-driver" --blockdev driver=no-such-driver,node-name=x
EXPECT_OPT=--blockdev expect_error "unknown key" "bogus" --blockdev driver=null-co,node-name=n0,bogus=1
EXPECT_OPT=--blockdev expect_error "missing file" "$T/does-not-exist" \
	--blockdev "driver=file,node-name=f0,filename=$T/does-not-exist"
EXPECT_OPT=--blockdev expect_error "duplicate node-name" "n0" \
	--blockdev driver=null-co,node-name=n0 --blockdev driver=null-co,node-name=n0
EXPECT_OPT=--export expect_error "export of a missing node" "missing" \
	--nbd-server "addr.type=unix,addr.path=$T/s" --export type=nbd,id=e0,node-name=missing
EXPECT_OPT=--export expect_error "unknown export type" "carrier-pigeon" \
	--blockdev driver=null-co,node-name=n0 --export type=carrier-pigeon,id=e0,node-name=n0
EXPECT_OPT=--object expect_error "unknown object type" "no-such-object" --object no-such-object,id=o0
EXPECT_OPT=--blockdev expect_error "bad size" "size" --blockdev driver=null-co,node-name=n0,size=lots

# The pidfile itself cannot be written (the last --pidfile wins: blockd is given ours after it).
rc=0
timeout 20 "$BLOCKD" --blockdev driver=null-co,node-name=n0 --pidfile "$T/no/such/dir/pid" \
	>"$T/out" 2>"$T/err" </dev/null || rc=$?
assert_eq "$rc" 1 "unwritable pidfile: exit status"
[ "$(wc -l <"$T/err")" = 1 ] || fail "unwritable pidfile: expected one line, got: $(cat "$T/err")"
assert_contains "$(cat "$T/err")" "$T/no/such/dir/pid" "unwritable pidfile: stderr"
echo "ok: unwritable pidfile: $(cat "$T/err")"
