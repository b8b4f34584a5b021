/*
 * out.h — a benchmark's figures as JSON, for bench/run.sh's results.json.
 *
 * Each benchmark prints its table and, when CIMD_BENCH_OUT names a directory,
 * also writes every printed figure to CIMD_BENCH_OUT/NAME.json; run.sh merges
 * those files with the machine's facts.  Figures are numbers with their unit in
 * the key ("sig_per_s", "p99_ms"); a figure that was not measured, or whose
 * measurement failed, is null.
 */
#ifndef CIMD_BENCH_OUT_H
#define CIMD_BENCH_OUT_H

#include <jansson.h>

/* v as a JSON number, or null when v < 0 (the benchmarks' "failed" or
 * "not measured"); a new reference. */
json_t *bench_num(double v);
/* Writes root to CIMD_BENCH_OUT/NAME.json when CIMD_BENCH_OUT is set, and
 * takes the reference.  0, also when CIMD_BENCH_OUT is unset; -errno when the
 * file cannot be written (the reason on stderr). */
int bench_out_write(const char *name, json_t *root);

#endif /* CIMD_BENCH_OUT_H */
