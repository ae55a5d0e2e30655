/* backends/cpu/avx2/avx2_common.h - loads and reductions shared by the avx2
 * kernel files (compiled with -mavx2 -mfma -mf16c). Internal. */
#ifndef HEED_AVX2_COMMON_H
#define HEED_AVX2_COMMON_H

#include <immintrin.h>

#include "heed/dtype.h"

static inline float hsum256(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

/* 8 stored elements as 8 floats. */
static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_f16(const heed_f16 *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }
static inline __m256 load8_bf16(const heed_bf16 *p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

#endif
