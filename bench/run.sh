#!/usr/bin/env bash
# run.sh BUILD/bench — runs every benchmark in BUILD/bench; each prints its own
# figures beside its peers.  bench_scale, the longest (it grows an appliance to
# CIMD_BENCH_SCALE_N clients), last.
#
# Each benchmark also writes its figures to CIMD_BENCH_OUT/NAME.json
# (bench/out.h); this script points CIMD_BENCH_OUT at BUILD/bench/out and
# merges those files, with the machine's facts, into BUILD/bench/results.json.
# A benchmark that fails does not stop the others: its exit status is in
# results.json, and this script exits 1 at the end.
set -eu
cd "$(dirname "$0")/.."
dir=$(realpath "$1")
out="$dir/out"
rm -rf "$out"
mkdir -p "$out"
export CIMD_BENCH_OUT="$out"
status=()   # NAME=EXIT of each benchmark, in order

run() {
	local name=$1 rc=0
	shift
	echo "== $name"
	"$@" || rc=$?
	status+=("$name=$rc")
}

for b in "$dir"/bench_*; do
	[ -x "$b" ] || continue
	[ "$(basename "$b")" = bench_scale ] && continue
	run "$(basename "$b")" "$b"
done
run bench_http bash bench/bench_http.sh "$(dirname "$dir")"
if [ -x "$dir/bench_scale" ]; then
	run bench_scale "$dir/bench_scale"
fi

# The machine's facts: the figures mean nothing without them.
ver() { "$@" 2>&1 | head -1 || true; }
export BENCH_STATUS="${status[*]}"
export BENCH_CORES=$(nproc)
export BENCH_DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)
export BENCH_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
export BENCH_DIRTY=$(git diff --quiet HEAD -- 2>/dev/null && echo false || echo true)
export BENCH_CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
export BENCH_MEM_KB=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)
export BENCH_KERNEL=$(uname -r)
export BENCH_OPENSSL=$(ver openssl version)
export BENCH_SOFTHSM=$(ver softhsm2-util --version)
export BENCH_SWTPM=$(ver swtpm --version)
export BENCH_TSS=$(ver pkg-config --modversion tss2-esys)
export BENCH_LIBP11=$(ver pkg-config --modversion libp11)
export BENCH_NODE=$(ver node --version)
export BENCH_SECONDS=${CIMD_BENCH_SECONDS:-}
export BENCH_SCALE_N=${CIMD_BENCH_SCALE_N:-}
node -e '
const fs = require("fs"), path = require("path"), e = process.env;
const out = process.argv[1], results = process.argv[2];
const r = {
  machine: {
    cores: Number(e.BENCH_CORES), cpu: e.BENCH_CPU, mem_kb: Number(e.BENCH_MEM_KB),
    kernel: e.BENCH_KERNEL, openssl: e.BENCH_OPENSSL, softhsm2: e.BENCH_SOFTHSM,
    swtpm: e.BENCH_SWTPM, tpm2_tss: e.BENCH_TSS, libp11: e.BENCH_LIBP11, node: e.BENCH_NODE,
  },
  date: e.BENCH_DATE,
  git: { commit: e.BENCH_COMMIT, dirty: e.BENCH_DIRTY === "true" },
  env: { CIMD_BENCH_SECONDS: e.BENCH_SECONDS || null, CIMD_BENCH_SCALE_N: e.BENCH_SCALE_N || null },
  benchmarks: {},
};
let bad = 0;
for (const s of e.BENCH_STATUS.split(" ").filter(Boolean)) {
  const [name, rc] = s.split("=");
  const b = { exit_status: Number(rc), figures: null };
  try {
    b.figures = JSON.parse(fs.readFileSync(path.join(out, name + ".json"), "utf8"));
  } catch (err) {
    b.error = "no figures: " + err.message;
  }
  if (b.exit_status !== 0 || b.figures === null) bad++;
  r.benchmarks[name] = b;
}
fs.writeFileSync(results, JSON.stringify(r, null, 1) + "\n");
JSON.parse(fs.readFileSync(results, "utf8"));
console.log("== results: " + results + (bad ? " (" + bad + " benchmark(s) failed)" : ""));
process.exit(bad ? 1 : 0);
' "$out" "$dir/results.json"
