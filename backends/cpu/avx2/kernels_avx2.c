/* backends/cpu/avx2/kernels_avx2.c - AVX2 + FMA + F16C kernels.
 * Compiled with -mavx2 -mfma -mf16c; only called after the runtime has seen
 * those features (CPUID and XGETBV). */
#include <string.h>

#include "backends/cpu/avx2/avx2_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/dtype.h"

/* Four accumulators of 8 lanes cover the FMA latency; the tail is scalar. */
#define AVX2_DOT(NAME, T, LOAD8, LOAD1)                                        \
  static float NAME(const void *xv, const float *y, size_t n) {                \
    const T *x = (const T *)xv;                                                \
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                \
    size_t i = 0;                                                              \
    for (; i + 32 <= n; i += 32) {                                             \
      a0 = _mm256_fmadd_ps(LOAD8(x + i), _mm256_loadu_ps(y + i), a0);          \
      a1 = _mm256_fmadd_ps(LOAD8(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);  \
      a2 = _mm256_fmadd_ps(LOAD8(x + i + 16), _mm256_loadu_ps(y + i + 16), a2); \
      a3 = _mm256_fmadd_ps(LOAD8(x + i + 24), _mm256_loadu_ps(y + i + 24), a3); \
    }                                                                          \
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(LOAD8(x + i), _mm256_loadu_ps(y + i), a0); \
    float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3))); \
    for (; i < n; i++) s += LOAD1(x[i]) * y[i];                                \
    return s;                                                                  \
  }

#define LOAD1_F32(v) (v)
AVX2_DOT(dot_f32_avx2, float, load8_f32, LOAD1_F32)
AVX2_DOT(dot_f16_avx2, heed_f16, load8_f16, heed_f16_to_f32)
AVX2_DOT(dot_bf16_avx2, heed_bf16, load8_bf16, heed_bf16_to_f32)

#define AVX2_TO_F32(NAME, T, LOAD8, LOAD1)                      \
  static void NAME(const void *xv, float *y, size_t n) {        \
    const T *x = (const T *)xv;                                 \
    size_t i = 0;                                               \
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, LOAD8(x + i)); \
    for (; i < n; i++) y[i] = LOAD1(x[i]);                      \
  }

AVX2_TO_F32(to_f32_f16_avx2, heed_f16, load8_f16, heed_f16_to_f32)
AVX2_TO_F32(to_f32_bf16_avx2, heed_bf16, load8_bf16, heed_bf16_to_f32)

static float probe_read_avx2(const float *x, size_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
    a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
    a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
    a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
  }
  float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; i++) s += x[i];
  return s;
}

/* Twelve independent 8-lane chains: enough for two FMA pipes of latency 4-5. */
static double probe_fma_avx2(uint64_t iters, float *sink) {
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
  __m256 a[12];
  for (int k = 0; k < 12; k++) a[k] = _mm256_set1_ps((float)(k + 1));
  for (uint64_t it = 0; it < iters; it++) {
    a[0] = _mm256_fmadd_ps(a[0], m, c);
    a[1] = _mm256_fmadd_ps(a[1], m, c);
    a[2] = _mm256_fmadd_ps(a[2], m, c);
    a[3] = _mm256_fmadd_ps(a[3], m, c);
    a[4] = _mm256_fmadd_ps(a[4], m, c);
    a[5] = _mm256_fmadd_ps(a[5], m, c);
    a[6] = _mm256_fmadd_ps(a[6], m, c);
    a[7] = _mm256_fmadd_ps(a[7], m, c);
    a[8] = _mm256_fmadd_ps(a[8], m, c);
    a[9] = _mm256_fmadd_ps(a[9], m, c);
    a[10] = _mm256_fmadd_ps(a[10], m, c);
    a[11] = _mm256_fmadd_ps(a[11], m, c);
  }
  __m256 s = a[0];
  for (int k = 1; k < 12; k++) s = _mm256_add_ps(s, a[k]);
  *sink = hsum256(s);
  return (double)iters * 12 * 8 * 2;
}

void heed_cpu_register_avx2(heed_kernel_table *t) {
  HEED_SLOT_SET(t, DOT, F32, dot_f32_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, DOT, F16, dot_f16_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, DOT, BF16, dot_bf16_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, TO_F32, F16, to_f32_f16_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, TO_F32, BF16, to_f32_bf16_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, PROBE_READ, F32, probe_read_avx2, HEED_ISA_AVX2);
  HEED_SLOT_SET(t, PROBE_FMA, F32, probe_fma_avx2, HEED_ISA_AVX2);
}
