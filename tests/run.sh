#!/usr/bin/env bash
# Runs every test binary in $1 from the repository root and adds up the results.
# Each binary prints TAP-style lines and "# N passed, N failed"; a binary that
# dies without that line counts as one failure.
#
# Each binary runs as a session, so a process group, of its own (setsid), and
# kills what it started when it ends (tests/harness.c).  Interrupted, this
# script sends SIGTERM to the running binary, which kills its group on the
# way out, and then SIGKILL to whatever of the group is left.
#
# CIMD_TEST_SKIP="test_a test_b": binaries not run here, each said so (.ci/run
# runs the ones that start their own PostgreSQL once, not in both passes).
set -u
dir=$1
cd "$(dirname "$0")/.." || exit 2
pass=0 fail=0 pid=
out=$(mktemp "${TMPDIR:-/tmp}/cimdd-run.XXXXXX") || exit 2
detach=
command -v setsid >/dev/null && detach=setsid
stop() {
	if [ -n "$pid" ]; then
		kill -TERM "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
		kill -KILL -- "-$pid" 2>/dev/null
		cat "$out"
		echo "not ok - interrupted"
	fi
	rm -f "$out"
	exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
trap 'rm -f "$out"' EXIT
for t in "$dir"/test_*; do
	[ -x "$t" ] || continue
	case " ${CIMD_TEST_SKIP:-} " in
	*" $(basename "$t") "*)
		echo "# $(basename "$t") skipped here (CIMD_TEST_SKIP)"
		continue
		;;
	esac
	echo "== $(basename "$t")"
	# In the background, so that a signal to this script is handled at once
	# (bash runs a trap only after a foreground command ends).
	start=$SECONDS
	$detach "$t" </dev/null >"$out" 2>&1 &
	pid=$!
	wait "$pid"
	rc=$?
	pid=
	cat "$out"
	echo "# $(basename "$t") took $((SECONDS - start)) s"
	line=$(grep -E '^# [0-9]+ passed, [0-9]+ failed$' "$out" | tail -n 1)
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
