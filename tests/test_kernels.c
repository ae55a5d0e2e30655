/* Every ISA's kernels against the fp64 oracle: random and adversarial inputs,
 * every tail length. ISAs this build lacks or this CPU cannot run are skipped
 * and say so. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>

#include "heed/cpu.h"
#include "heed/kernels.h"
#include "heed/quant.h"
#include "test_util.h"

static const size_t lengths[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 127, 128, 129, 1000, 4099};

/* Skips (and says so in Criterion's synthesis) an ISA this build lacks or
 * this CPU cannot run: it is tested where it can run. */
static int get_table(heed_isa isa, heed_kernel_table *t) {
  if (!heed_kernels_compiled(isa)) cr_skip_test("%s: not compiled into this build", heed_isa_name(isa));
  if (!heed_isa_runs_on(isa, heed_cpu_features_detect()))
    cr_skip_test("%s: this CPU cannot run it", heed_isa_name(isa));
  heed_error e = {0};
  cr_assert_eq(heed_kernels_build(isa, t, &e), HEED_OK, "%s", e.msg);
  cr_assert_eq(t->isa, isa);
  return 1;
}

/* Random codes of a quantized type in runs of 16 (n a multiple of 16); xf
 * gets the value each stands for in heed/kernels.h's contract, computed with
 * heed/quant.h's reference decoders. */
static void fill_codes(heed_dtype dt, uint8_t *x, float *xf, size_t n, uint64_t *s) {
  size_t bytes = dt == HEED_DTYPE_Q4 ? n / 2 : n;
  for (size_t i = 0; i < bytes; i++) {
    uint8_t b = (uint8_t)(tu_next(s) >> 24);
    if (dt == HEED_DTYPE_E5M2 && (b & 0x7c) == 0x7c) b &= 0xbf;  /* no infinities or NaNs */
    if (dt == HEED_DTYPE_E4M3 && (b & 0x7f) == 0x7f) b ^= 1;     /* no NaN */
    x[i] = b;
  }
  for (size_t i = 0; i < n; i++) {
    if (dt == HEED_DTYPE_Q8) xf[i] = (float)(int8_t)x[i];
    if (dt == HEED_DTYPE_Q4) xf[i] = (float)(i % 16 < 8 ? x[i / 16 * 8 + i % 8] & 15 : x[i / 16 * 8 + i % 8] >> 4);
    if (dt == HEED_DTYPE_E4M3) xf[i] = heed_e4m3_to_f32(x[i]) / 256.0f;
    if (dt == HEED_DTYPE_E5M2) xf[i] = heed_e5m2_to_f32(x[i]);
  }
}

/* x as the dtype's storage; xf gets the exact values it holds. */
static void fill(heed_dtype dt, void *x, float *xf, size_t n, uint64_t *s, float scale) {
  if (heed_dtype_is_quant(dt)) {
    fill_codes(dt, x, xf, n, s);
    return;
  }
  for (size_t i = 0; i < n; i++) {
    float v = tu_uniform(s) * scale;
    if (dt == HEED_DTYPE_F32) {
      ((float *)x)[i] = v;
      xf[i] = v;
    } else if (dt == HEED_DTYPE_F16) {
      ((heed_f16 *)x)[i] = heed_f32_to_f16(v);
      xf[i] = heed_f16_to_f32(((heed_f16 *)x)[i]);
    } else {
      ((heed_bf16 *)x)[i] = heed_f32_to_bf16(v);
      xf[i] = heed_bf16_to_f32(((heed_bf16 *)x)[i]);
    }
  }
}

static void check_dot(heed_isa isa) {
  heed_kernel_table t;
  if (!get_table(isa, &t)) return;
  const size_t nmax = 4099;
  void *x = malloc(nmax * 4);
  float *xf = malloc(nmax * 4), *y = malloc(nmax * 4);
  uint64_t s = 1234 + (uint64_t)isa;
  for (int dt = 0; dt < HEED_DTYPE_FLOAT_COUNT; dt++) {
    heed_dot_fn dot = heed_kernel_dot(&t, (heed_dtype)dt);
    cr_assert_not_null(dot);
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
      size_t n = lengths[li];
      for (int trial = 0; trial < 3; trial++) {
        fill((heed_dtype)dt, x, xf, n, &s, 4.0f);
        for (size_t i = 0; i < n; i++) y[i] = tu_uniform(&s);
        if (trial == 2 && n) xf[n - 1] *= 1.0f, y[n - 1] = 3000.0f; /* the tail dominates */
        double ref = 0, mag = 0;
        for (size_t i = 0; i < n; i++) {
          ref += (double)xf[i] * y[i];
          mag += fabs((double)xf[i] * y[i]);
        }
        double got = dot(x, y, n);
        /* float accumulation in at most 8-way partial sums: (n/8 + 8) roundings */
        double bound = ((double)n / 8 + 8) * 0x1p-24 * mag + 1e-30;
        cr_assert_leq(fabs(got - ref), bound, "%s %s n=%zu trial %d: got %.9g want %.9g (bound %.3g)",
                      heed_isa_name(isa), heed_dtype_name((heed_dtype)dt), n, trial, got, ref, bound);
      }
      /* One nonzero product at each position: exact, so a lost or doubled lane shows. */
      for (size_t pos = 0; pos < n && n <= 129; pos++) {
        fill((heed_dtype)dt, x, xf, n, &s, 0.0f);
        for (size_t i = 0; i < n; i++) y[i] = 1.0f;
        float one_x[1];
        uint8_t store[4];
        fill((heed_dtype)dt, store, one_x, 1, &s, 2.0f);
        memcpy((char *)x + pos * (heed_dtype_bits((heed_dtype)dt) / 8), store, heed_dtype_bits((heed_dtype)dt) / 8);
        y[pos] = 1.5f;
        double want = (double)one_x[0] * 1.5;
        cr_assert_eq(dot(x, y, n), (float)want, "%s %s n=%zu impulse at %zu", heed_isa_name(isa),
                     heed_dtype_name((heed_dtype)dt), n, pos);
      }
    }
  }
  free(x);
  free(xf);
  free(y);
}

static void check_to_f32(heed_isa isa) {
  heed_kernel_table t;
  if (!get_table(isa, &t)) return;
  /* Every 16-bit pattern, for f16 and bf16, against the portable converter. */
  uint16_t *h = malloc(65536 * 2 + 64);
  float *out = malloc((65536 + 16) * 4);
  for (uint32_t i = 0; i < 65536; i++) h[i] = (uint16_t)i;
  for (int dt = HEED_DTYPE_F16; dt <= HEED_DTYPE_BF16; dt++) {
    heed_to_f32_fn cvt = heed_kernel_to_f32(&t, (heed_dtype)dt);
    for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
      size_t n = lengths[li];
      out[n] = -7.0f; /* the kernel must not write past n */
      cvt(h + 1000, out, n);
      cr_assert_eq(out[n], -7.0f, "%s wrote past n=%zu", heed_isa_name(isa), n);
    }
    cvt(h, out, 65536);
    for (uint32_t i = 0; i < 65536; i++) {
      float want = dt == HEED_DTYPE_F16 ? heed_f16_to_f32((heed_f16)i) : heed_bf16_to_f32((heed_bf16)i);
      if (isnan(want))
        cr_assert(isnan(out[i]), "%s %s 0x%04x", heed_isa_name(isa), heed_dtype_name((heed_dtype)dt), i);
      else
        cr_assert_eq(tu_f32_bits(out[i]), tu_f32_bits(want), "%s %s 0x%04x: %a vs %a", heed_isa_name(isa),
                     heed_dtype_name((heed_dtype)dt), i, out[i], want);
    }
  }
  float src[37], dst[37];
  for (int i = 0; i < 37; i++) src[i] = (float)i - 18.5f;
  heed_kernel_to_f32(&t, HEED_DTYPE_F32)(src, dst, 37);
  cr_assert_arr_eq(src, dst, sizeof src);
  free(h);
  free(out);
}

static void check_probes(heed_isa isa) {
  heed_kernel_table t;
  if (!get_table(isa, &t)) return;
  heed_probe_read_fn rd = heed_kernel_probe_read(&t);
  float *x = malloc(4099 * 4);
  uint64_t s = 99;
  for (size_t li = 0; li < sizeof lengths / sizeof lengths[0]; li++) {
    size_t n = lengths[li];
    double ref = 0, mag = 0;
    for (size_t i = 0; i < n; i++) {
      x[i] = tu_uniform(&s);
      if (i + 1 == n) x[i] = 500.0f;
      ref += x[i];
      mag += fabs(x[i]);
    }
    double got = rd(x, n);
    cr_assert_leq(fabs(got - ref), ((double)n / 4 + 8) * 0x1p-24 * mag + 1e-30, "%s read n=%zu: %g vs %g",
                  heed_isa_name(isa), n, got, ref);
  }
  heed_probe_fma_fn fma = heed_kernel_probe_fma(&t);
  float sink = 0;
  cr_assert_eq(fma(0, &sink), 0.0);
  double f1 = fma(1, &sink), f1000 = fma(1000, &sink);
  cr_assert_gt(f1, 0);
  cr_assert_eq(f1000, 1000 * f1, "flops must scale with iterations");
  cr_assert(isfinite(sink) && sink > 0, "sink %g", sink);
  free(x);
}

static void check_table(heed_isa isa) {
  heed_kernel_table t;
  if (!heed_kernels_compiled(isa)) return;
  cr_assert_eq(heed_kernels_build(isa, &t, NULL), HEED_OK);
  for (int op = 0; op < HEED_OP_COUNT; op++)
    for (int dt = 0; dt < HEED_DTYPE_COUNT; dt++) {
      const heed_kernel_slot *sl = &t.slot[op][dt];
      int probe = op == HEED_OP_PROBE_READ || op == HEED_OP_PROBE_FMA || op == HEED_OP_SOFTMAX_ROW ||
                  op >= HEED_OP_VOCAB_MAX; /* f32 only */
      int floats = op == HEED_OP_DOT || op == HEED_OP_TO_F32; /* no quantized types */
      if ((probe && dt != HEED_DTYPE_F32) || (floats && heed_dtype_is_quant((heed_dtype)dt))) {
        cr_assert_null(sl->fn);
        continue;
      }
      cr_assert_not_null(sl->fn, "%s: %s/%s empty", heed_isa_name(isa), heed_op_name((heed_op)op),
                         heed_dtype_name((heed_dtype)dt));
      cr_assert_not_null(sl->name);
      /* A slot holds this level's kernel or one of a level it builds on. */
      cr_assert((heed_isa_requires(sl->isa) & ~heed_isa_requires(isa)) == 0, "%s holds %s", heed_isa_name(isa),
                sl->name);
    }
  if (isa != HEED_ISA_SCALAR)
    cr_assert_eq(t.slot[HEED_OP_DOT][HEED_DTYPE_F16].isa, isa, "%s should override dot f16", heed_isa_name(isa));
}

/* Attention micro-kernels: odd row counts (both the in-register path, R <= 8,
 * and the chunked one), key counts across the 16-row chunks, every dtype
 * (the quantized ones read raw codes, in whole panels), column ranges of V. */
static void check_attn(heed_isa isa) {
  heed_kernel_table t;
  if (!get_table(isa, &t)) return;
  static const int Rs[] = {1, 3, 4, 5, 6, 7, 8, 9, 13, 32}, ns[] = {1, 2, 7, 16, 17, 33}, nq[] = {16, 32, 48, 16, 32, 48};
  static const int dims[] = {32, 80, 128, 256};
  uint64_t s = 7 + (uint64_t)isa;
  float *q = malloc(32 * 256 * 4), *sc = malloc(32 * 56 * 4), *o = malloc(32 * 256 * 4), *xf = malloc(48 * 256 * 4);
  double *ref = malloc(32 * 256 * 8), *mag = malloc(32 * 256 * 8);
  void *kv = malloc(48 * 256 * 4); /* 33 keys pad to 3 panels */
  for (int dt = 0; dt < HEED_DTYPE_COUNT; dt++)
    for (size_t di = 0; di < 4; di++)
      for (size_t ri = 0; ri < sizeof Rs / sizeof *Rs; ri++)
        for (size_t ni = 0; ni < 6; ni++) {
          int R = Rs[ri], n = heed_dtype_is_quant((heed_dtype)dt) ? nq[ni] : ns[ni], d = dims[di], lds = 56;
          const char *tn = heed_dtype_name((heed_dtype)dt);
          /* keys in panels of 16: key j, channel k at (j/16)*16*d + k*16 + j%16 */
          fill((heed_dtype)dt, kv, xf, (size_t)(n + 15) / 16 * 16 * d, &s, 1.0f);
          for (int i = 0; i < R * d; i++) q[i] = tu_uniform(&s);
          heed_kernel_attn_qk(&t, (heed_dtype)dt)(q, R, kv, n, d, sc, lds);
          for (int r = 0; r < R; r++)
            for (int j = 0; j < n; j++) {
              double want = 0, m = 0;
              for (int k = 0; k < d; k++) {
                double x = xf[(j / 16) * 16 * d + k * 16 + j % 16];
                want += (double)q[r * d + k] * x, m += fabs((double)q[r * d + k] * x);
              }
              cr_assert_leq(fabs(sc[r * lds + j] - want), (d / 8.0 + 8) * 0x1p-24 * m + 1e-30, "%s qk %s R=%d n=%d d=%d (%d,%d)",
                            heed_isa_name(isa), tn, R, n, d, r, j);
            }
          /* pv reads V rows [n][d] (the same storage, refilled), accumulating into
           * o: all columns, then (d >= 48) columns 16..d-16 only, through pointers
           * into the rows */
          fill((heed_dtype)dt, kv, xf, (size_t)n * d, &s, 1.0f);
          for (int r = 0; r < R; r++)
            for (int j = 0; j < n; j++) sc[r * lds + j] = tu_uniform(&s) > 0 ? tu_uniform(&s) : 0.0f;
          for (int part = 0; part < 2; part++) {
            int c0 = part ? 16 : 0, nc = part ? d - 32 : d;
            if (part && d < 48) continue;
            for (int i = 0; i < R * d; i++) o[i] = 0.25f, ref[i] = 0.25, mag[i] = 0.25;
            for (int r = 0; r < R; r++)
              for (int j = 0; j < n; j++)
                for (int c = c0; c < c0 + nc; c++) {
                  double y = (double)sc[r * lds + j] * xf[j * d + c];
                  ref[r * d + c] += y, mag[r * d + c] += fabs(y);
                }
            size_t vo = (size_t)c0 * heed_dtype_bits((heed_dtype)dt) / 8;
            heed_kernel_attn_pv(&t, (heed_dtype)dt)(sc, lds, R, (char *)kv + vo, n, nc, d, o + c0);
            for (int i = 0; i < R * d; i++)
              cr_assert_leq(fabs(o[i] - ref[i]), (n + 8) * 0x1p-24 * mag[i] + 1e-30, "%s pv %s R=%d n=%d d=%d cols %d+%d at %d",
                            heed_isa_name(isa), tn, R, n, d, c0, nc, i);
          }
        }
  /* softmax_row: masked entries, a row masked so far, huge logits, odd lengths */
  heed_softmax_row_fn sm = heed_kernel_softmax_row(&t);
  for (int n = 1; n <= 37; n += 3) {
    float row[40];
    double want[40];
    for (int trial = 0; trial < 3; trial++) {
      float m = trial == 1 ? 3.0f : -INFINITY, l = trial == 1 ? 2.0f : 0.0f;
      for (int j = 0; j < n; j++) row[j] = tu_uniform(&s) * (trial == 2 ? 2000.0f : 4.0f);
      if (n > 2) row[1] = -INFINITY;
      double mx = m;
      for (int j = 0; j < n; j++) mx = row[j] > mx ? row[j] : mx;
      double sum = 0;
      for (int j = 0; j < n; j++) sum += (want[j] = row[j] == -INFINITY ? 0 : exp(row[j] - mx));
      double alpha_w = m == -INFINITY ? 0 : exp(m - mx), l_w = l * alpha_w + sum;
      float alpha = sm(row, n, &m, &l);
      cr_assert_eq(m, (float)mx, "%s softmax n=%d max", heed_isa_name(isa), n);
      cr_assert_float_eq(alpha, alpha_w, 1e-6 * (alpha_w + 1e-30) + 1e-38, "%s alpha", heed_isa_name(isa));
      cr_assert_leq(fabs(l - l_w), 1e-6 * l_w, "%s l=%g want %g", heed_isa_name(isa), l, l_w);
      for (int j = 0; j < n; j++) cr_assert_leq(fabs(row[j] - want[j]), 4e-7 * want[j] + 1e-37, "%s exp n=%d j=%d", heed_isa_name(isa), n, j);
      if (n > 2) cr_assert_eq(row[1], 0.0f, "a masked score weighs exactly 0");
    }
    /* everything masked so far: m stays -inf, l 0, weights 0, factor 1 */
    float m = -INFINITY, l = 0;
    for (int j = 0; j < n; j++) row[j] = -INFINITY;
    cr_assert_eq(sm(row, n, &m, &l), 1.0f);
    cr_assert_eq(m, -INFINITY);
    cr_assert_eq(l, 0.0f);
    for (int j = 0; j < n; j++) cr_assert_eq(row[j], 0.0f);
  }
  free(q), free(sc), free(o), free(xf), free(ref), free(mag), free(kv);
}

#define ISA_TESTS(lower, ISA)                                  \
  Test(kernels, attn_##lower) { check_attn(HEED_ISA_##ISA); }   \
  Test(kernels, dot_##lower) { check_dot(HEED_ISA_##ISA); }     \
  Test(kernels, to_f32_##lower) { check_to_f32(HEED_ISA_##ISA); } \
  Test(kernels, probes_##lower) { check_probes(HEED_ISA_##ISA); } \
  Test(kernels, table_##lower) { check_table(HEED_ISA_##ISA); }

ISA_TESTS(scalar, SCALAR)
ISA_TESTS(avx2, AVX2)
ISA_TESTS(avx512, AVX512)
ISA_TESTS(neon, NEON)

Test(kernels, the_native_isas_of_this_build_are_compiled) {
#if defined(__x86_64__)
  cr_assert(heed_kernels_compiled(HEED_ISA_AVX2) && heed_kernels_compiled(HEED_ISA_AVX512));
  cr_assert_not(heed_kernels_compiled(HEED_ISA_NEON));
#elif defined(__aarch64__)
  cr_assert(heed_kernels_compiled(HEED_ISA_NEON));
  cr_assert_not(heed_kernels_compiled(HEED_ISA_AVX2));
#endif
  cr_assert(heed_kernels_compiled(HEED_ISA_SCALAR));
}

Test(kernels, bad_requests_are_refused_with_a_message) {
  heed_kernel_table t;
  heed_error e = {0};
  cr_assert_eq(heed_kernels_build((heed_isa)17, &t, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "17"), "%s", e.msg);
  cr_assert_eq(heed_kernels_build(HEED_ISA_SCALAR, NULL, &e), HEED_E_INVALID);
  heed_isa other = heed_kernels_compiled(HEED_ISA_NEON) ? HEED_ISA_AVX2 : HEED_ISA_NEON;
  cr_assert_eq(heed_kernels_build(other, &t, &e), HEED_E_UNSUPPORTED);
  cr_assert(strstr(e.msg, heed_isa_name(other)) && strstr(e.msg, "scalar"), "%s", e.msg);
}

#include "runtime/backend.h"

/* q8 K scores from an int8 query (heed_attn_qk_q8_fn: avx512_vnni, NEON
 * sdot): against a scalar copy of its quantization (the same f32 operations,
 * so the same codes) and an exact sum; what is left is the final
 * combination's rounding. Rows 1..9 and 17, one to three panels, an outlier
 * channel, a zero row, codes at -128 and 127. */
static void check_qk_q8_int8(heed_attn_qk_q8_fn fn, const char *name) {
  static const int Rs[] = {1, 2, 5, 6, 8, 9, 17}, ns[] = {16, 32, 48}, dims[] = {16, 64, 128, 256};
  uint64_t s = 42;
  float *q = malloc(17 * 256 * 4), *ks = malloc(256 * 4), *sc = malloc(17 * 56 * 4);
  int8_t *k = malloc(48 * 256), *hc = malloc(256), *lc = malloc(256);
  void *scratch = malloc(HEED_QK_Q8_SCRATCH(17, 256));
  for (size_t di = 0; di < 4; di++)
    for (size_t ri = 0; ri < 7; ri++)
      for (size_t ni = 0; ni < 3; ni++) {
        const int R = Rs[ri], n = ns[ni], dk = dims[di], lds = 56;
        for (int i = 0; i < n * dk; i++) k[i] = (int8_t)(tu_uniform(&s) * 127.5f);
        if (ni == 2) k[5] = -128, k[6] = 127; /* the extremes of the K codes */
        for (int d = 0; d < dk; d++) ks[d] = (0.5f + tu_uniform(&s) * 0.25f) * (d == 3 ? 30.0f : 1.0f);
        for (int i = 0; i < R * dk; i++) q[i] = R > 1 && i / dk == 1 ? 0.0f : tu_uniform(&s) * 3.0f;
        fn(q, R, ks, k, n, dk, sc, lds, scratch);
        for (int r = 0; r < R; r++) {
          float amax = 0;
          for (int d = 0; d < dk; d++) amax = fmaxf(amax, fabsf(q[r * dk + d] * ks[d]));
          const float inv = amax > 1e-30f ? 127.0f / amax : 0.0f, dr = amax / 127.0f;
          for (int d = 0; d < dk; d++) {
            float v = q[r * dk + d] * ks[d];
            v = v * inv;
            const float h = nearbyintf(v);
            hc[d] = (int8_t)h, lc[d] = (int8_t)nearbyintf((v - h) * 254.0f);
          }
          for (int j = 0; j < n; j++) {
            int64_t hs = 0, ls = 0;
            for (int d = 0; d < dk; d++) {
              const int kj = k[(j / 16) * 16 * dk + d * 16 + j % 16];
              hs += (int64_t)hc[d] * kj, ls += (int64_t)lc[d] * kj;
            }
            const double want = (double)dr * ((double)hs + (double)ls / 254);
            const double tol = 4 * 0x1p-24 * (double)dr * (fabs((double)hs) + fabs((double)ls) / 254) + 1e-30;
            cr_assert_leq(fabs(sc[r * lds + j] - want), tol, "%s R=%d n=%d dk=%d (%d,%d): %.9g want %.9g", name, R, n, dk, r, j,
                          sc[r * lds + j], want);
          }
        }
      }
  free(q), free(ks), free(sc), free(k), free(hc), free(lc), free(scratch);
}


#if defined(__x86_64__)
Test(kernels, attn_qk_q8_from_an_int8_query) {
  heed_cpu_features f = heed_cpu_features_detect();
  if (!heed_kernels_compiled(HEED_ISA_AVX512) || !heed_isa_runs_on(HEED_ISA_AVX512, f) || !HEED_CPU_HAS(f, AVX512_VNNI))
    cr_skip_test("avx512_vnni: this CPU cannot run it");
  check_qk_q8_int8(heed_attn_qk_q8_vnni, "vnni");
}
#elif defined(__aarch64__)
Test(kernels, attn_qk_q8_from_an_int8_query) {
  heed_cpu_features f = heed_cpu_features_detect();
  if (!HEED_CPU_HAS(f, DOTPROD)) cr_skip_test("dotprod: this CPU cannot run sdot");
  check_qk_q8_int8(heed_attn_qk_q8_sdot, "sdot");
}
#endif

#if defined(__x86_64__)
/* The scalar copy of the AVX2 q8 kernels' quantization (the same f32
 * operations, so the same codes): x times sc to int16 codes, returns the step. */
static float quant16_ref(const float *x, const float *sc, int n, int16_t *c) {
  float amax = 0;
  for (int i = 0; i < n; i++) amax = fmaxf(amax, fabsf(x[i] * sc[i]));
  const float inv = amax > 1e-30f ? 32767.0f / amax : 0.0f;
  for (int i = 0; i < n; i++) {
    const float v = x[i] * sc[i];
    c[i] = (int16_t)nearbyintf(v * inv);
  }
  return amax > 1e-30f ? amax / 32767.0f : 0.0f;
}

/* q8 K scores and q8 V sums from an int16 query / P (AVX2 vpmaddwd): bit for
 * bit against the scalar copy (exact integer sums, then the kernels' own two
 * roundings), and against fp64 within the quantization's bound d/2 sum |code|
 * plus the f32 roundings. Rows 1..7 and 13 (row blocks of 6), one to sixteen
 * panels, dims 16..256; adversarial rows: all zero, one outlier channel, every
 * code at +-127 with the query at its maximum (the int32 bound). */
Test(kernels, attn_q8_avx2_int16) {
  heed_cpu_features f = heed_cpu_features_detect();
  if (!heed_kernels_compiled(HEED_ISA_AVX2) || !heed_isa_runs_on(HEED_ISA_AVX2, f))
    cr_skip_test("avx2: this CPU cannot run it");
  static const int Rs[] = {1, 2, 5, 6, 7, 13}, ns[] = {16, 48, 256}, dims[] = {16, 64, 128, 256};
  uint64_t s = 7;
  const int RM = 13, NM = 256, DM = 256;
  float *q = malloc((size_t)RM * DM * 4), *ks = malloc(DM * 4), *sc = malloc((size_t)RM * NM * 4);
  float *p = malloc((size_t)RM * NM * 4), *vs = malloc(NM * 4), *o = malloc((size_t)RM * DM * 4),
        *o0 = malloc((size_t)RM * DM * 4);
  int8_t *k = malloc((size_t)NM * DM);
  int16_t *c = malloc((size_t)NM * 2 > (size_t)DM * 2 ? (size_t)NM * 2 : (size_t)DM * 2);
  void *scratch = malloc(HEED_QK_Q8_SCRATCH(RM, DM) > HEED_PV_Q8_SCRATCH(RM, NM) ? HEED_QK_Q8_SCRATCH(RM, DM)
                                                                                 : HEED_PV_Q8_SCRATCH(RM, NM));
  for (int adv = 0; adv < 2; adv++)
    for (size_t di = 0; di < 4; di++)
      for (size_t ri = 0; ri < 6; ri++)
        for (size_t ni = 0; ni < 3; ni++) {
          const int R = Rs[ri], n = ns[ni], dk = dims[di], lds = NM;
          for (int i = 0; i < n * dk; i++) k[i] = adv ? (int8_t)(i % 3 == 0 ? -127 : 127) : (int8_t)(tu_uniform(&s) * 127.5f);
          for (int d = 0; d < dk; d++) ks[d] = adv ? 1.0f : (0.5f + tu_uniform(&s) * 0.25f) * (d == 3 ? 30.0f : 1.0f);
          for (int i = 0; i < R * dk; i++)
            q[i] = adv ? (i % 3 == 0 ? -2.5f : 2.5f) : R > 1 && i / dk == 1 ? 0.0f : tu_uniform(&s) * 3.0f;
          for (int j = 0; j < n; j++) vs[j] = adv ? 1.0f : 0.01f + 0.02f * fabsf(tu_uniform(&s));
          for (int i = 0; i < R * n; i++) /* softmax-like rows: one near 1, the rest small; row 1 all zero */
            p[i] = adv ? 1.0f : R > 1 && i / n == 1 ? 0.0f : i % n == (i / n) % n ? 0.9f : fabsf(tu_uniform(&s)) * 0.01f;
          for (int i = 0; i < R * dk; i++) o[i] = o0[i] = tu_uniform(&s);
          heed_attn_qk_q8_avx2(q, R, ks, k, n, dk, sc, lds, scratch);
          for (int r = 0; r < R; r++) {
            const float dr = quant16_ref(q + r * dk, ks, dk, c);
            for (int j = 0; j < n; j++) {
              int64_t is = 0, ia = 0;
              double exact = 0;
              for (int d = 0; d < dk; d++) {
                const int kj = k[(j / 16) * 16 * dk + d * 16 + j % 16];
                is += (int64_t)c[d] * kj, ia += (int64_t)abs(kj);
                exact += (double)q[r * dk + d] * ks[d] * kj;
              }
              cr_assert(is >= INT32_MIN && is <= INT32_MAX);
              const float want = (float)(int32_t)is * dr, got = sc[r * lds + j];
              cr_assert(got == want, "qk R=%d n=%d dk=%d (%d,%d): %.9g, scalar copy %.9g", R, n, dk, r, j, got, want);
              const double bound = dr / 2.0 * (double)ia * 1.0001 + 2 * 0x1p-24 * fabs(exact) + 1e-30;
              cr_assert_leq(fabs(got - exact), bound, "qk R=%d n=%d dk=%d (%d,%d): %.9g, fp64 %.9g", R, n, dk, r, j, got,
                            exact);
            }
          }
          /* V: n keys of dk-element rows, all dk columns (a group of dk channels) */
          heed_attn_pv_q8_avx2(p, NM, R, vs, k, n, dk, dk, o, scratch);
          for (int r = 0; r < R; r++) {
            const float dr = quant16_ref(p + r * NM, vs, n, c);
            for (int cc = 0; cc < dk; cc++) {
              int64_t is = 0, ia = 0;
              double exact = 0;
              for (int j = 0; j < n; j++) {
                const int vj = k[(size_t)j * dk + cc];
                is += (int64_t)c[j] * vj, ia += (int64_t)abs(vj);
                exact += (double)p[r * NM + j] * vs[j] * vj;
              }
              cr_assert(is >= INT32_MIN && is <= INT32_MAX);
              const float want = fmaf((float)(int32_t)is, dr, o0[r * dk + cc]), got = o[r * dk + cc];
              cr_assert(got == want, "pv R=%d n=%d dv=%d (%d,%d): %.9g, scalar copy %.9g", R, n, dk, r, cc, got, want);
              const double bound = dr / 2.0 * (double)ia * 1.0001 + 2 * 0x1p-24 * (fabs(exact) + fabs(o0[r * dk + cc])) + 1e-30;
              cr_assert_leq(fabs(got - o0[r * dk + cc] - exact), bound, "pv R=%d n=%d dv=%d (%d,%d): %.9g, fp64 %.9g", R, n,
                            dk, r, cc, got - o0[r * dk + cc], exact);
            }
          }
        }
  free(q), free(ks), free(sc), free(p), free(vs), free(o), free(o0), free(k), free(c), free(scratch);
}
#endif
