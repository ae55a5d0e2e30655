/* backends/cpu/avx512/avx512_common.h - loads shared by the avx512 kernel
 * files (compiled with -mavx512f -mavx512bw -mavx512vl). Internal. */
#ifndef HEED_AVX512_COMMON_H
#define HEED_AVX512_COMMON_H

#include "backends/cpu/x86_intrin.h"

#include "heed/dtype.h"

/* The first `left` of 16 lanes (all of them when left >= 16). */
static inline __mmask16 tail_mask(size_t left) {
  return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
}

/* The lanes of k from 16 stored elements, as floats (others 0, not read). */
static inline __m512 mload16_f32(__mmask16 k, const float *p) { return _mm512_maskz_loadu_ps(k, p); }
static inline __m512 mload16_f16(__mmask16 k, const heed_f16 *p) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(k, p)); }
static inline __m512 mload16_bf16(__mmask16 k, const heed_bf16 *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(k, p)), 16));
}
static inline __m512 load16_f32(const float *p) { return _mm512_loadu_ps(p); }
static inline __m512 load16_f16(const heed_f16 *p) { return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)); }
static inline __m512 load16_bf16(const heed_bf16 *p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

/* exp(x) for x <= 0 as in avx2, with scalef for the 2^n. */
static inline __m512 exp_neg(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.3f);
  __mmask16 keep = _mm512_cmp_ps_mask(x, lo, _CMP_GE_OQ);
  x = _mm512_max_ps(x, lo);
  __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(p, n));
}

#endif
