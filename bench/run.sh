#!/usr/bin/env bash
# Runs every benchmark in $1; each prints its own figures beside its peers.
# bench_scale, the longest (it grows an appliance to CIMD_BENCH_SCALE_N clients), last.
set -eu
cd "$(dirname "$0")/.."
for b in "$1"/bench_*; do
	[ -x "$b" ] || continue
	[ "$(basename "$b")" = bench_scale ] && continue
	echo "== $(basename "$b")"
	"$b"
done
echo "== bench_http"
bash bench/bench_http.sh "$(dirname "$1")"
if [ -x "$1/bench_scale" ]; then
	echo "== bench_scale"
	"$1/bench_scale"
fi
