#!/bin/bash
# test-all.sh - install dependencies, build, and run the whole test suite (all suites).
#
# Usage: ./scripts/test-all.sh [--sanitize] [MESON TEST ARGS...]
#   --sanitize   build in build-sanitize/ with clang, -Dsanitize=true (ASan+UBSan) and -Dfuzz=true
#   other args   passed to `meson test` (e.g. --suite unit, a test name, -v)
# Environment: BUILD_DIR (default build, or build-sanitize), MESON_ARGS (extra `meson setup`
# options), CC, BD_SKIP_DEPS=1 (don't run setup-deps.sh).
# Ends with one line "N passed, N failed, N skipped"; exits non-zero if a test failed.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
if [ "${1:-}" = --sanitize ]; then
	sanitize=1
	shift
fi

./scripts/setup-deps.sh

setup_args=()
test_args=(--print-errorlogs --num-processes "${BD_TEST_JOBS:-2}")
if [ $sanitize = 1 ]; then
	B=${BUILD_DIR:-build-sanitize}
	setup_args+=(-Dsanitize=true -Dfuzz=true)
	if [ -z "${CC:-}" ] && command -v clang >/dev/null 2>&1; then
		export CC=clang
	fi
	test_args+=(--timeout-multiplier 3)
else
	B=${BUILD_DIR:-build}
fi
# shellcheck disable=SC2206 # MESON_ARGS is a list of words on purpose
setup_args+=(${MESON_ARGS:-})

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# No stale results if the build fails below.
rm -f "$B/meson-logs/testlog.json"
# Always (re)configure: test files are discovered at configure time (tests/meson.build).
if [ -f "$B/build.ninja" ]; then
	cmd=(meson setup --reconfigure "$B" "${setup_args[@]}")
elif [ -d "$B" ]; then
	cmd=(meson setup --wipe "$B" "${setup_args[@]}")
else
	cmd=(meson setup "$B" "${setup_args[@]}")
fi
if ! "${cmd[@]}" >"$log" 2>&1; then
	cat "$log" >&2
	echo "test-all: '${cmd[*]}' failed" >&2
	exit 1
fi
echo "test-all: configured $B (${setup_args[*]:-default options})"
if ! ninja -C "$B" >"$log" 2>&1; then
	cat "$log" >&2
	echo "test-all: build failed in $B" >&2
	exit 1
fi
# Show compiler warnings, not the progress lines.
grep -E "warning:|error:" "$log" | sort -u | head -50 || true

rc=0
meson test -C "$B" --no-rebuild "${test_args[@]}" "$@" || rc=$?
summary_rc=0
python3 tests/lib/summary.py --list "$B/meson-logs/testlog.json" || summary_rc=$?
if [ $rc = 0 ] && [ $summary_rc != 0 ]; then
	rc=$summary_rc
fi
exit $rc
