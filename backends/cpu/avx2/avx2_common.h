/* backends/cpu/avx2/avx2_common.h - loads and reductions shared by the avx2
 * kernel files (compiled with -mavx2 -mfma -mf16c). Internal. */
#ifndef HEED_AVX2_COMMON_H
#define HEED_AVX2_COMMON_H

#include "backends/cpu/x86_intrin.h"

#include <stdint.h>

#include "heed/dtype.h"

/* Calls F(rr, ...) with rr a constant 1..6: the register-blocked attention
 * cores keep up to 6 query rows (Qwen2.5's GQA group) per pass. */
#define Y_ROWS(rr, F, ...)            \
  switch (rr) {                       \
    case 1: F(1, __VA_ARGS__); break; \
    case 2: F(2, __VA_ARGS__); break; \
    case 3: F(3, __VA_ARGS__); break; \
    case 4: F(4, __VA_ARGS__); break; \
    case 5: F(5, __VA_ARGS__); break; \
    default: F(6, __VA_ARGS__); break; \
  }

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

/* A run of 16 stored elements (kv_elem.h) as two vectors of 8 floats. */
static inline void ld16_f32(const uint8_t *p, __m256 *x0, __m256 *x1) {
  *x0 = _mm256_loadu_ps((const float *)p), *x1 = _mm256_loadu_ps((const float *)p + 8);
}
static inline void ld16_f16(const uint8_t *p, __m256 *x0, __m256 *x1) {
  *x0 = load8_f16((const heed_f16 *)p), *x1 = load8_f16((const heed_f16 *)p + 8);
}
static inline void ld16_bf16(const uint8_t *p, __m256 *x0, __m256 *x1) {
  *x0 = load8_bf16((const heed_bf16 *)p), *x1 = load8_bf16((const heed_bf16 *)p + 8);
}
static inline void ld16_q8(const uint8_t *p, __m256 *x0, __m256 *x1) {
  __m128i b = _mm_loadu_si128((const __m128i *)p);
  *x0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
  *x1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(b, b)));
}
static inline void ld16_q4(const uint8_t *p, __m256 *x0, __m256 *x1) {
  /* split the nibbles on 128-bit vectors (cheap), widen each half once */
  __m128i b = _mm_loadl_epi64((const __m128i *)p), m = _mm_set1_epi8(15);
  *x0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(b, m)));
  *x1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(b, 4), m)));
}
/* 16 fp8 codes widened to 16-bit lanes already holding f16 bits. */
static inline void f16x16(__m256i h, __m256 *x0, __m256 *x1) {
  *x0 = _mm256_cvtph_ps(_mm256_castsi256_si128(h)), *x1 = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}
static inline void ld16_e5m2(const uint8_t *p, __m256 *x0, __m256 *x1) {
  f16x16(_mm256_slli_epi16(_mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p)), 8), x0, x1);
}
static inline void ld16_e4m3(const uint8_t *p, __m256 *x0, __m256 *x1) {
  __m256i w = _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)p));
  __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7),
                              _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8));
  f16x16(h, x0, x1);
}

/* exp(x) for x <= 0: 2^n * p(r), r = x - n ln2 in [-ln2/2, ln2/2], degree-6
 * Taylor polynomial (relative error < 2e-7); x below -87.3 (and -inf) gives 0. */
static inline __m256 exp_neg(__m256 x) {
  const __m256 lo = _mm256_set1_ps(-87.3f);
  __m256 zero = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_max_ps(x, lo);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.0f / 720);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(zero, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

#endif
