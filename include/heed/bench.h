/* heed/bench.h - benchmark harness: every figure beside a limit measured in
 * the same process seconds earlier.
 *
 * A run of a case interleaves probe and case: probe, case, probe, case, ...
 * `repeats` times. The case's time is the median over its repeats (with min
 * and max); its limit is the median of the probes taken between them; its
 * fraction is achieved / limit. Probes:
 *   read_bandwidth  all workers stream a buffer far larger than the last-level
 *                   cache with the chosen ISA's read kernel   (GB/s, 1e9 B/s)
 *   fma_peak        all workers run independent multiply-add chains on
 *                   registers with the chosen ISA's kernel    (GFLOP/s)
 *   device_read_bandwidth, device_fma_peak
 *                   the same on the runtime's device (opencl): a streaming
 *                   kernel over 256 MiB, and float4 FMA chains (median of 3)
 *   int8_dot_peak   all workers run independent chains of the int8 dot
 *                   product the quantized weight kernels use (avx512_vnni
 *                   vpdpbusd; avx2 vpmaddubsw + vpmaddwd + vpaddd), 2 ops
 *                   per multiply-add (GOP/s); HEED_E_UNSUPPORTED where the
 *                   runtime's weight kernels have none (scalar, neon for now)
 * Later issues add their cases (attention, kvquant, spec) through
 * heed_bench_run_case.
 */
#ifndef HEED_BENCH_H
#define HEED_BENCH_H

#include <stddef.h>
#include <stdio.h>

#include "heed/runtime.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, "json name", "unit") */
#define HEED_LIMIT_LIST(X)                                 \
  X(READ_BANDWIDTH, "read_bandwidth", "GB/s")               \
  X(FMA_PEAK, "fma_peak", "GFLOP/s")                        \
  X(DEVICE_READ_BANDWIDTH, "device_read_bandwidth", "GB/s") \
  X(DEVICE_FMA_PEAK, "device_fma_peak", "GFLOP/s")         \
  X(INT8_DOT_PEAK, "int8_dot_peak", "GOP/s")                \
  X(BF16_DOT_PEAK, "bf16_dot_peak", "GFLOP/s")

typedef enum heed_limit_kind {
#define HEED_X_(N, s, u) HEED_LIMIT_##N,
  HEED_LIMIT_LIST(HEED_X_)
#undef HEED_X_
  HEED_LIMIT_COUNT
} heed_limit_kind;

const char *heed_limit_name(heed_limit_kind k); /* "read_bandwidth"; NULL if unknown */
const char *heed_limit_unit(heed_limit_kind k); /* "GB/s"; NULL if unknown */

typedef struct heed_bench heed_bench;

typedef struct heed_bench_options {
  int repeats;           /* probe/case pairs per case; 0: 7 */
  size_t probe_bytes;    /* read-probe buffer; 0: 16x the L3, within [256 MiB, 1 GiB] and mem/8 */
  double min_run_ms;     /* a case shorter than this is looped to reach it; 0: 20 */
  /* Called before each case with its name and position; NULL: quiet. */
  void (*progress)(void *user, const char *case_name, int index, int count);
  void *progress_user;
} heed_bench_options;

/* One case: `run(ctx)` does `work` units of the limit's kind (bytes read for
 * read_bandwidth, flops for fma_peak) and must not allocate or print. */
typedef struct heed_bench_case {
  const char *name;       /* "read.one_worker" */
  const char *backend;    /* NULL: the runtime's */
  const char *isa;        /* NULL: the runtime's */
  const char *dtype;      /* "f32" */
  const char *shape_json; /* a JSON object: "{\"bytes\":268435456}" */
  heed_limit_kind limit;
  double work;
  void (*run)(void *ctx);
  void *ctx;
} heed_bench_case;

/* One case against another of the same run: speedup = other's median / this
 * case's median (> 1: this case is faster). */
#define HEED_BENCH_MAX_VERSUS 3
typedef struct heed_bench_versus {
  char kind[12];   /* "baseline" (oneDNN/CLBlast unfused), "reference" (the scalar kernels), "f16" (a format's f16 twin) */
  char name[64];   /* the other case */
  double speedup;
} heed_bench_versus;

typedef struct heed_bench_result {
  char name[64];
  char backend[16];
  char isa[16];
  char dtype[16];
  char shape_json[256];
  int repeats;
  double ms_median, ms_min, ms_max;  /* one run of the case */
  heed_limit_kind limit_kind;
  double limit_value;                /* median of the probes interleaved with the case */
  double limit_min, limit_max;
  double achieved_value;             /* work / ms_median, in the limit's unit */
  double fraction;                   /* achieved_value / limit_value */
  int n_versus;                      /* filled by the suite that ran the case (attention), else 0 */
  heed_bench_versus versus[HEED_BENCH_MAX_VERSUS];
} heed_bench_result;

/* rt is borrowed and must outlive the bench. Allocates the probe buffer once. */
heed_status heed_bench_create(heed_runtime *rt, const heed_bench_options *opt, heed_bench **out,
                              heed_error *err);
void heed_bench_destroy(heed_bench *b); /* NULL is fine */

/* One probe measurement, in the limit's unit. */
heed_status heed_bench_probe(heed_bench *b, heed_limit_kind k, double *value);
/* Runs c interleaved with probes of its limit and fills *out. */
heed_status heed_bench_run_case(heed_bench *b, const heed_bench_case *c, heed_bench_result *out);
/* The `heed bench probes` suite: the two limits themselves, then one worker's
 * share of each and the scalar reference read kernel, each as a fraction of
 * its limit; then the int8 dot-product peak (the weight kernels' int8 product:
 * vpmaddubsw, vpdpbusd, sdot) and the bf16 dot-product peak (vdpbf16ps), each
 * beside the FP32 FMA peak, where the level and CPU have them. Fills up to cap
 * results; *n_out gets how many. */
heed_status heed_bench_suite_probes(heed_bench *b, heed_bench_result *out, int cap, int *n_out);
const char *heed_bench_last_error(const heed_bench *b);
/* The monotonic clock the bench times cases with, in milliseconds. */
double heed_bench_now_ms(void);

/* {"heed_info": <runtime JSON>, "results": [ ... ]} */
heed_status heed_bench_write_json(heed_runtime *rt, const heed_bench_result *r, int n, FILE *f);
/* A table for people. */
void heed_bench_write_table(const heed_bench_result *r, int n, FILE *f);

#ifdef __cplusplus
}
#endif
#endif
