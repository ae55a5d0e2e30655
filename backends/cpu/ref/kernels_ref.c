/* backends/cpu/ref/kernels_ref.c - portable C kernels. They fill every slot of
 * every table, and every faster kernel is tested against the fp64 oracle the
 * same way they are. */
#include <math.h>
#include <string.h>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/attn_wrap.h"
#include "backends/cpu/kv_elem.h"
#include "heed/dtype.h"

/* Eight partial sums, as the SIMD kernels keep, so the error grows alike. */
#define REF_DOT(NAME, T, LOAD)                                      \
  static float NAME(const void *xv, const float *y, size_t n) {     \
    const T *x = (const T *)xv;                                     \
    float acc[8] = {0};                                             \
    size_t i = 0;                                                   \
    for (; i + 8 <= n; i += 8)                                      \
      for (int k = 0; k < 8; k++) acc[k] += LOAD(x[i + k]) * y[i + k]; \
    for (; i < n; i++) acc[i & 7] += LOAD(x[i]) * y[i];             \
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])); \
  }

#define LOAD_F32(v) (v)
REF_DOT(dot_f32_ref, float, LOAD_F32)
REF_DOT(dot_f16_ref, heed_f16, heed_f16_to_f32)
REF_DOT(dot_bf16_ref, heed_bf16, heed_bf16_to_f32)

static void to_f32_f32_ref(const void *x, float *y, size_t n) { memmove(y, x, n * sizeof(float)); }

static void to_f32_f16_ref(const void *xv, float *y, size_t n) {
  const heed_f16 *x = (const heed_f16 *)xv;
  for (size_t i = 0; i < n; i++) y[i] = heed_f16_to_f32(x[i]);
}

static void to_f32_bf16_ref(const void *xv, float *y, size_t n) {
  const heed_bf16 *x = (const heed_bf16 *)xv;
  for (size_t i = 0; i < n; i++) y[i] = heed_bf16_to_f32(x[i]);
}

static float probe_read_ref(const float *x, size_t n) {
  float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += x[i];
    a1 += x[i + 1];
    a2 += x[i + 2];
    a3 += x[i + 3];
  }
  for (; i < n; i++) a0 += x[i];
  return (a0 + a1) + (a2 + a3);
}

/* Eight independent chains hide the add latency of a scalar pipeline. */
static double probe_fma_ref(uint64_t iters, float *sink) {
  float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  const float m = 0.999999f, c = 1e-6f;
  for (uint64_t it = 0; it < iters; it++)
    for (int k = 0; k < 8; k++) a[k] = a[k] * m + c;
  *sink = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
  return (double)iters * 8 * 2;
}

/* Attention micro-kernels: the plain loops every SIMD variant must agree with. */
#define REF_ATTN(SUF, B16)                                                                  \
  static void attn_qk_##SUF##_ref(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    qk_tail_##SUF(q, R, kt, 0, n, dk, s, lds); /* every key one at a time */               \
  }                                                                                         \
  static void attn_pv_##SUF##_ref(const float *p, int ldp, int R, const void *v, int n, int nc, int dv, float *o) { \
    for (int r = 0; r < R; r++)                                                             \
      for (int j = 0; j < n; j++) {                                                         \
        float w = p[(size_t)r * ldp + j];                                                   \
        if (w == 0.0f) continue;                                                            \
        for (int c = 0; c < nc; c++) o[(size_t)r * dv + c] += w * ld1_##SUF(HEED_V_RUN(v, B16, dv, j, c), c % 16); \
      }                                                                                     \
  }

HEED_KV_TYPES(REF_ATTN)

static float softmax_row_ref(float *s, int n, float *m, float *l) {
  float mx = *m;
  for (int j = 0; j < n; j++) mx = s[j] > mx ? s[j] : mx;
  if (mx == -INFINITY) { /* nothing seen yet */
    for (int j = 0; j < n; j++) s[j] = 0;
    return 1.0f;
  }
  float alpha = expf(*m - mx), sum = 0;
  for (int j = 0; j < n; j++) {
    s[j] = expf(s[j] - mx);
    sum += s[j];
  }
  *l = *l * alpha + sum;
  *m = mx;
  return alpha;
}

void heed_cpu_register_ref(heed_kernel_table *t) {
#define SET_ATTN_REF(SUF, TYPE)                                  \
  HEED_SLOT_SET(t, ATTN_QK, TYPE, attn_qk_##SUF##_ref, HEED_ISA_SCALAR); \
  HEED_SLOT_SET(t, ATTN_PV, TYPE, attn_pv_##SUF##_ref, HEED_ISA_SCALAR);
  SET_ATTN_REF(f32, F32) SET_ATTN_REF(f16, F16) SET_ATTN_REF(bf16, BF16) SET_ATTN_REF(q8, Q8)
  SET_ATTN_REF(q4, Q4) SET_ATTN_REF(e4m3, E4M3) SET_ATTN_REF(e5m2, E5M2)
#undef SET_ATTN_REF
  HEED_SLOT_SET(t, SOFTMAX_ROW, F32, softmax_row_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, DOT, F32, dot_f32_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, DOT, F16, dot_f16_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, DOT, BF16, dot_bf16_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, TO_F32, F32, to_f32_f32_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, TO_F32, F16, to_f32_f16_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, TO_F32, BF16, to_f32_bf16_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, PROBE_READ, F32, probe_read_ref, HEED_ISA_SCALAR);
  HEED_SLOT_SET(t, PROBE_FMA, F32, probe_fma_ref, HEED_ISA_SCALAR);
}
