#!/usr/bin/env bash
# Runs every fuzz target in DIR (built by `make fuzz`) for SECONDS each, on a
# copy of its seed corpus (tests/fuzz/corpus/TARGET), with its dictionary
# (tests/fuzz/TARGET.dict) when it has one.  Prints one line per target and
# fails if any target found a crash, a leak, a timeout or a sanitizer report;
# the input that did it is kept as DIR/artifacts/TARGET-crash-... (add it to
# the corpus as a regression seed once fixed).
#
#   bash tests/fuzz/run.sh build/fuzz 60      (FUZZ_JOBS targets at once: default nproc)
set -uo pipefail
cd "$(dirname "$0")/../.."
dir=${1:?usage: run.sh DIR SECONDS}
secs=${2:-60}
jobs=${FUZZ_JOBS:-$(nproc 2>/dev/null || echo 1)}
mkdir -p "$dir/work" "$dir/artifacts" "$dir/logs"

# One target: its full run, then its line (and its status in DIR/logs/T.rc).
one() {
	local bin=$1 t work log rc execs cov
	t=$(basename "$bin")
	work=$dir/work/$t
	rm -rf "$work" && mkdir -p "$work"
	[ -d "tests/fuzz/corpus/$t" ] && cp tests/fuzz/corpus/"$t"/* "$work"/ 2>/dev/null
	local args=(-max_total_time="$secs" -timeout=25 -rss_limit_mb=2048 -print_final_stats=1
		-artifact_prefix="$dir/artifacts/$t-")
	[ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
	log=$dir/logs/$t.log
	ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1} \
		UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
		"$bin" "${args[@]}" "$work" >"$log" 2>&1
	rc=$?
	echo "$rc" >"$dir/logs/$t.rc"
	execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
	cov=$(grep -Eo 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' "$log" | tail -1)
	if [ "$rc" -eq 0 ]; then
		printf '%-24s ok      %10s execs  %s\n' "$t" "${execs:-?}" "${cov:-}"
	else
		printf '%-24s FAILED  %10s execs  %s  (exit %d; %s)\n' "$t" "${execs:-?}" \
			"${cov:-}" "$rc" "$log"
		grep -E '^(==[0-9]+==ERROR|SUMMARY|.*runtime error)' "$log" | head -5 | sed 's/^/    /'
	fi
}

# Each target is single-threaded: as many at once as there are cores, each
# still for its full SECONDS.
running=0
for bin in "$dir"/fuzz_*; do
	[ -x "$bin" ] || continue
	rm -f "$dir/logs/$(basename "$bin").rc"
	one "$bin" &
	running=$((running + 1))
	if [ "$running" -ge "$jobs" ]; then
		wait -n
		running=$((running - 1))
	fi
done
wait
failed=0
for bin in "$dir"/fuzz_*; do
	[ -x "$bin" ] || continue
	rc=$(cat "$dir/logs/$(basename "$bin").rc" 2>/dev/null || echo 1)
	[ "$rc" -eq 0 ] || failed=1
done
exit $failed
