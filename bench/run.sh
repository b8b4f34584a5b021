#!/usr/bin/env bash
# Runs every benchmark in $1; each prints its own figures beside its peers.
set -eu
cd "$(dirname "$0")/.."
for b in "$1"/bench_*; do
	[ -x "$b" ] || continue
	echo "== $(basename "$b")"
	"$b"
done
echo "== bench_http"
bash bench/bench_http.sh "$(dirname "$1")"
