#!/usr/bin/env python3
"""summary.py TESTLOG.json...: print "N passed, N failed, N skipped" summed over meson test logs.

Counts: OK and EXPECTEDFAIL pass; FAIL, TIMEOUT, UNEXPECTEDPASS and ERROR fail; SKIP is skipped.
With --list, also prints each failed test's name on stderr first.  Exit status 1 if anything
failed, else 0.  A missing or empty log (the build or `meson test` itself failed) counts as one
failed test, so that the line never looks clean when nothing ran.
"""
import json
import sys

PASS = {"OK", "EXPECTEDFAIL"}
SKIP = {"SKIP"}


def main(argv):
    show = "--list" in argv
    logs = [a for a in argv if a != "--list"]
    passed = failed = skipped = 0
    for path in logs:
        n = 0
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                for line in f:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        t = json.loads(line)
                    except ValueError:
                        continue
                    if "result" not in t:
                        continue
                    n += 1
                    r = t["result"]
                    if r in PASS:
                        passed += 1
                    elif r in SKIP:
                        skipped += 1
                    else:
                        failed += 1
                        if show:
                            print(f"failed: {t.get('name', '?')} ({r})", file=sys.stderr)
        except OSError as e:
            print(f"summary: {path}: {e.strerror} (counted as 1 failure)", file=sys.stderr)
            failed += 1
            continue
        if n == 0:
            print(f"summary: {path}: no test results (counted as 1 failure)", file=sys.stderr)
            failed += 1
    print(f"{passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
