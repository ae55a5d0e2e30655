#include <criterion/criterion.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "heed/bench.h"

static heed_runtime *rt;
static heed_bench *bn;

static void setup(void) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
  heed_bench_options bo = {.repeats = 3, .probe_bytes = 8u << 20, .min_run_ms = 2};
  heed_error e = {0};
  cr_assert_eq(heed_bench_create(rt, &bo, &bn, &e), HEED_OK, "%s", e.msg);
}

static void teardown(void) {
  heed_bench_destroy(bn);
  heed_runtime_close(rt);
}

static volatile double sink;
static void spin_case(void *ctx) {
  double s = 0;
  for (int i = 0; i < *(int *)ctx; i++) s += i * 0.5;
  sink = s;
}

Test(bench, probes_measure_something, .init = setup, .fini = teardown) {
  double bw = 0, fl = 0;
  cr_assert_eq(heed_bench_probe(bn, HEED_LIMIT_READ_BANDWIDTH, &bw), HEED_OK);
  cr_assert_eq(heed_bench_probe(bn, HEED_LIMIT_FMA_PEAK, &fl), HEED_OK);
  cr_assert(bw > 0.05 && bw < 10000, "bandwidth %g GB/s", bw);
  cr_assert(fl > 0.05 && fl < 1e6, "fma %g GFLOP/s", fl);
  cr_assert_eq(heed_bench_probe(bn, HEED_LIMIT_COUNT, &bw), HEED_E_INVALID);
  /* the int8 dot-product peak: where the runtime's weight kernels have one
   * (avx2, avx512_vnni), a positive rate; not compared with the FMA peak (a
   * sanitizer build ran it at 0.2 of it: timings are for benchmarks) */
  double dot = 0;
  heed_status st = heed_bench_probe(bn, HEED_LIMIT_INT8_DOT_PEAK, &dot);
  heed_isa isa = heed_runtime_isa(rt);
  if (isa == HEED_ISA_AVX2 || isa == HEED_ISA_AVX512) {
    cr_assert_eq(st, HEED_OK, "%s", heed_bench_last_error(bn));
    cr_assert(dot > 0.05 && dot < 1e7, "int8 dot %g GOP/s", dot);
  } else {
    cr_assert_eq(st, HEED_E_UNSUPPORTED);
  }
}

Test(bench, a_case_is_reported_against_its_interleaved_limit, .init = setup, .fini = teardown) {
  int iters = 200000;
  heed_bench_case c = {.name = "spin", .dtype = "f64", .shape_json = "{\"iters\":200000}", .limit = HEED_LIMIT_FMA_PEAK,
                       .work = 2.0 * iters, .run = spin_case, .ctx = &iters};
  heed_bench_result r;
  cr_assert_eq(heed_bench_run_case(bn, &c, &r), HEED_OK, "%s", heed_bench_last_error(bn));
  cr_assert_str_eq(r.name, "spin");
  cr_assert_str_eq(r.backend, "cpu");
  cr_assert_str_eq(r.isa, heed_isa_name(heed_runtime_isa(rt)));
  cr_assert_eq(r.repeats, 3);
  cr_assert(r.ms_min <= r.ms_median && r.ms_median <= r.ms_max && r.ms_min > 0);
  cr_assert(r.limit_min <= r.limit_value && r.limit_value <= r.limit_max && r.limit_min > 0);
  cr_assert_float_eq(r.achieved_value, c.work / (r.ms_median * 1e6), 1e-9 * r.achieved_value);
  cr_assert_float_eq(r.fraction, r.achieved_value / r.limit_value, 1e-12);
}

Test(bench, the_probes_suite_and_its_json, .init = setup, .fini = teardown) {
  heed_bench_result r[8];
  int n = 0;
  cr_assert_eq(heed_bench_suite_probes(bn, r, 8, &n), HEED_OK);
  /* then the dot-product peaks the level has: int8 on every SIMD level, bf16
   * on avx512 with avx512_bf16 (the SIMDe build counts as having it) */
  const heed_isa isa = heed_runtime_isa(rt);
  const int simd = isa == HEED_ISA_AVX2 || isa == HEED_ISA_AVX512; /* (NEON has no int8 probe yet) */
  cr_assert(n >= 6 + simd && n <= 8, "%d results", n);
  if (simd) cr_assert_str_eq(r[6].name, "probe.int8_dot_peak");
  if (n == 8) cr_assert_str_eq(r[7].name, "probe.bf16_dot_peak");
  for (int i = 6; i < n; i++) cr_assert_eq(r[i].limit_kind, HEED_LIMIT_FMA_PEAK, "%s: beside the FMA peak", r[i].name);
  cr_assert_str_eq(r[0].name, "probe.read_bandwidth");
  cr_assert_eq(r[0].limit_kind, HEED_LIMIT_READ_BANDWIDTH);
  cr_assert_str_eq(r[3].name, "probe.fma_peak");
  cr_assert_eq(r[3].limit_kind, HEED_LIMIT_FMA_PEAK);
  cr_assert_str_eq(r[2].isa, "scalar");
  /* The probe measured as a case lands near its own interleaved limit. */
  cr_assert(r[3].fraction > 0.5 && r[3].fraction < 2.0, "fma probe fraction %g", r[3].fraction);
  for (int i = 0; i < n; i++) cr_assert(isfinite(r[i].fraction) && r[i].fraction > 0, "%s", r[i].name);
  char *buf = NULL;
  size_t len = 0;
  FILE *f = open_memstream(&buf, &len);
  cr_assert_eq(heed_bench_write_json(rt, r, n, f), HEED_OK);
  fclose(f);
  static const char *keys[] = {"\"heed_info\":{", "\"results\":[", "\"name\":", "\"backend\":", "\"isa\":",
                               "\"dtype\":", "\"shape\":{", "\"ms_median\":", "\"ms_min\":", "\"ms_max\":",
                               "\"limit_kind\":\"read_bandwidth\"", "\"limit_kind\":\"fma_peak\"", "\"limit_value\":",
                               "\"achieved_value\":", "\"unit\":\"GB/s\"", "\"unit\":\"GFLOP/s\"", "\"fraction\":"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) cr_assert(strstr(buf, keys[i]), "json lacks %s", keys[i]);
  free(buf);
}

Test(bench, bad_input) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  heed_runtime *r2;
  cr_assert_eq(heed_runtime_open(&o, &r2, NULL), HEED_OK);
  heed_bench *b = (heed_bench *)0x1;
  heed_error e = {0};
  heed_bench_options bo = {.repeats = 500};
  cr_assert_eq(heed_bench_create(r2, &bo, &b, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "repeats=500"), "%s", e.msg);
  cr_assert_null(b);
  bo = (heed_bench_options){.probe_bytes = 1000};
  cr_assert_eq(heed_bench_create(r2, &bo, &b, &e), HEED_E_INVALID);
  cr_assert_eq(heed_bench_create(NULL, NULL, &b, &e), HEED_E_INVALID);
  bo = (heed_bench_options){.repeats = 1, .probe_bytes = 2u << 20};
  cr_assert_eq(heed_bench_create(r2, &bo, &b, &e), HEED_OK);
  heed_bench_result r;
  heed_bench_case c = {.name = "x", .limit = HEED_LIMIT_READ_BANDWIDTH, .work = 0, .run = spin_case};
  cr_assert_eq(heed_bench_run_case(b, &c, &r), HEED_E_INVALID);
  cr_assert(strstr(heed_bench_last_error(b), "work=0"));
  c.work = 1;
  c.run = NULL;
  cr_assert_eq(heed_bench_run_case(b, &c, &r), HEED_E_INVALID);
  heed_bench_destroy(b);
  heed_runtime_close(r2);
}
