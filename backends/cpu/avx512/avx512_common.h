/* backends/cpu/avx512/avx512_common.h - loads shared by the avx512 kernel
 * files (compiled with -mavx512f -mavx512bw -mavx512vl). Internal. */
#ifndef HEED_AVX512_COMMON_H
#define HEED_AVX512_COMMON_H

#include <immintrin.h>

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

#endif
