#!/usr/bin/env bash
# Runs every test binary in $1 from the repository root and adds up the results.
# Each binary prints TAP-style lines and "# N passed, N failed"; a binary that
# dies without that line counts as one failure.
set -u
dir=$1
cd "$(dirname "$0")/.."
pass=0 fail=0
for t in "$dir"/test_*; do
	[ -x "$t" ] || continue
	echo "== $(basename "$t")"
	out=$("$t" 2>&1); rc=$?
	printf '%s\n' "$out"
	line=$(printf '%s\n' "$out" | grep -E '^# [0-9]+ passed, [0-9]+ failed$' | tail -n 1)
	if [ -z "$line" ]; then
		echo "not ok - $(basename "$t") exited $rc without a summary"
		fail=$((fail + 1))
		continue
	fi
	p=$(echo "$line" | sed -E 's/^# ([0-9]+) passed.*/\1/')
	f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed$/\1/')
	pass=$((pass + p)); fail=$((fail + f))
	if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
		echo "not ok - $(basename "$t") exited $rc"
		fail=$((fail + 1))
	fi
done
echo
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
