/* bench/bench_report.h - what `heed bench` does with results after a run:
 * reads an earlier JSON back, compares per case, and plots with gnuplot.
 * Part of the heed tool, not of libheed. */
#ifndef HEED_BENCH_REPORT_H
#define HEED_BENCH_REPORT_H

#include <stdio.h>

#include "heed/bench.h"

/* Reads the results of a `heed bench --json` file (schema heed-bench/1,
 * bench/README.md) into a malloc'd array. 0, or -1 with why in msg. */
int heed_bench_load_json(const char *path, heed_bench_result **out, int *n, char *msg, size_t cap);

/* Prints each case of cur found in old (same name, backend, dtype and
 * shape): old and new medians and new/old. A case slower by more than
 * threshold (0.10: 10%) is flagged REGRESSION. Returns the number of
 * regressions, or -1 with why in msg when no case matches. */
int heed_bench_compare(const heed_bench_result *old, int n_old, const heed_bench_result *cur, int n_cur, double threshold,
                       FILE *f, char *msg, size_t cap);

/* Two panels with gnuplot into png: the decode cases' fraction of their
 * limit against context length, a line per KV format (and baseline); and
 * their time against context length beside the floor the limit sets (time
 * to read the bytes at the probed bandwidth). 0, or -1 with why in msg. */
int heed_bench_plot(const heed_bench_result *r, int n, const char *title, const char *png, char *msg, size_t cap);

/* Two panels for `heed bench model`: prefill and decode tok/s against
 * context depth, a line per KV format, each beside its limit in tok/s
 * (dashed). 0, or -1 with why in msg. */
int heed_bench_plot_model(const heed_bench_result *r, int n, const char *title, const char *png, char *msg, size_t cap);

#endif
