/* backends/cpu/avx512/kernels_avx512.c - AVX-512 (F, BW, VL) kernels.
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c; the avx512
 * configuration starts from avx2's table and overrides these slots. Tails use
 * masked loads, so no scalar remainder loop. */
#include "backends/cpu/avx512/avx512_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/dtype.h"

#define AVX512_DOT(NAME, T, LOAD16)                                               \
  static float NAME(const void *xv, const float *y, size_t n) {                   \
    const T *x = (const T *)xv;                                                   \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                   \
    const __mmask16 all = 0xffff;                                                 \
    size_t i = 0;                                                                 \
    for (; i + 64 <= n; i += 64) {                                                \
      a0 = _mm512_fmadd_ps(LOAD16(all, x + i), _mm512_loadu_ps(y + i), a0);       \
      a1 = _mm512_fmadd_ps(LOAD16(all, x + i + 16), _mm512_loadu_ps(y + i + 16), a1); \
      a2 = _mm512_fmadd_ps(LOAD16(all, x + i + 32), _mm512_loadu_ps(y + i + 32), a2); \
      a3 = _mm512_fmadd_ps(LOAD16(all, x + i + 48), _mm512_loadu_ps(y + i + 48), a3); \
    }                                                                             \
    for (; i < n; i += 16) {                                                      \
      __mmask16 k = tail_mask(n - i);                                             \
      a0 = _mm512_fmadd_ps(LOAD16(k, x + i), _mm512_maskz_loadu_ps(k, y + i), a0); \
    }                                                                             \
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3))); \
  }

AVX512_DOT(dot_f32_avx512, float, mload16_f32)
AVX512_DOT(dot_f16_avx512, heed_f16, mload16_f16)
AVX512_DOT(dot_bf16_avx512, heed_bf16, mload16_bf16)

#define AVX512_TO_F32(NAME, T, LOAD16)                       \
  static void NAME(const void *xv, float *y, size_t n) {     \
    const T *x = (const T *)xv;                              \
    for (size_t i = 0; i < n; i += 16) {                     \
      __mmask16 k = tail_mask(n - i);                        \
      _mm512_mask_storeu_ps(y + i, k, LOAD16(k, x + i));     \
    }                                                        \
  }

AVX512_TO_F32(to_f32_f16_avx512, heed_f16, mload16_f16)
AVX512_TO_F32(to_f32_bf16_avx512, heed_bf16, mload16_bf16)

static float probe_read_avx512(const float *x, size_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
    a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
    a2 = _mm512_add_ps(a2, _mm512_loadu_ps(x + i + 32));
    a3 = _mm512_add_ps(a3, _mm512_loadu_ps(x + i + 48));
  }
  for (; i < n; i += 16) a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(tail_mask(n - i), x + i));
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

static double probe_fma_avx512(uint64_t iters, float *sink) {
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
  __m512 a[12];
  for (int k = 0; k < 12; k++) a[k] = _mm512_set1_ps((float)(k + 1));
  for (uint64_t it = 0; it < iters; it++) {
    a[0] = _mm512_fmadd_ps(a[0], m, c);
    a[1] = _mm512_fmadd_ps(a[1], m, c);
    a[2] = _mm512_fmadd_ps(a[2], m, c);
    a[3] = _mm512_fmadd_ps(a[3], m, c);
    a[4] = _mm512_fmadd_ps(a[4], m, c);
    a[5] = _mm512_fmadd_ps(a[5], m, c);
    a[6] = _mm512_fmadd_ps(a[6], m, c);
    a[7] = _mm512_fmadd_ps(a[7], m, c);
    a[8] = _mm512_fmadd_ps(a[8], m, c);
    a[9] = _mm512_fmadd_ps(a[9], m, c);
    a[10] = _mm512_fmadd_ps(a[10], m, c);
    a[11] = _mm512_fmadd_ps(a[11], m, c);
  }
  __m512 s = a[0];
  for (int k = 1; k < 12; k++) s = _mm512_add_ps(s, a[k]);
  *sink = _mm512_reduce_add_ps(s);
  return (double)iters * 12 * 16 * 2;
}

void heed_cpu_register_avx512(heed_kernel_table *t) {
  HEED_SLOT_SET(t, DOT, F32, dot_f32_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, DOT, F16, dot_f16_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, DOT, BF16, dot_bf16_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, TO_F32, F16, to_f32_f16_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, TO_F32, BF16, to_f32_bf16_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, PROBE_READ, F32, probe_read_avx512, HEED_ISA_AVX512);
  HEED_SLOT_SET(t, PROBE_FMA, F32, probe_fma_avx512, HEED_ISA_AVX512);
}
