/* backends/cpu/x86_intrin.h - the x86 intrinsics the AVX2 and AVX-512 kernel
 * files use: the compiler's <immintrin.h>, or, where HEED_SIMDE is set (the
 * AVX-512 files of a build configured with -DHEED_AVX512_SIMDE=ON, `make
 * test-simde`), SIMDe's portable implementations of the AVX-512 intrinsics
 * under the same names (SIMDE_ENABLE_NATIVE_ALIASES): those files are then
 * compiled for AVX2 only, and the AVX-512 kernels run, and are tested, on a
 * CPU without AVX-512. The compiler's header still comes first: it gives the
 * types (__m512, __mmask16), which SIMDe then uses as its own.
 *
 * Intrinsics SIMDe 0.7.4 (Debian 12) lacks, written here lane by lane (in that
 * build only, so what they test is the kernel's use of them, not the real
 * instruction; the native suite on an AVX-512 CPU tests that):
 *   _mm512_cvtepi32_ps _mm512_cvtps_epi32 _mm512_cvttps_epi32 _mm512_cvtph_ps
 *   _mm512_cvtepi8_epi32 _mm512_cvtepu8_epi32 _mm512_cvtepu16_epi32
 *   _mm512_cvtepi32_epi8 _mm512_maskz_loadu_ps _mm512_mask_loadu_ps
 *   _mm512_mask_storeu_ps _mm256_maskz_loadu_epi16 _mm_maskz_loadu_epi8
 *   _mm512_mask_cmp_ps_mask _mm512_mask_reduce_min_epu32 _mm512_shuffle_i64x2
 *   _mm512_reduce_add_ps _mm512_reduce_max_ps _mm512_reduce_add_epi32
 * (the reductions combine lanes in the order GCC's header does: halves, then
 * quarters, then pairs, so sums round as on the hardware). Internal. */
#ifndef HEED_X86_INTRIN_H
#define HEED_X86_INTRIN_H

#if defined(HEED_SIMDE) && HEED_SIMDE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#define SIMDE_ENABLE_NATIVE_ALIASES
#include <simde/x86/avx512.h>
#include <simde/x86/f16c.h>
#include <simde/x86/fma.h>

#define HEED_SIMDE_LANES(T, name, x) \
  T name[16];                           \
  memcpy(name, &(x), sizeof name)

static inline __m512 heed_simde_cvtepi32_ps(__m512i x) {
  HEED_SIMDE_LANES(int32_t, v, x);
  float r[16];
  for (int i = 0; i < 16; i++) r[i] = (float)v[i];
  return _mm512_loadu_ps(r);
}
/* out of range or NaN: 0x80000000, as the instruction gives */
static inline int32_t heed_simde_f2i(float f, int trunc) {
  if (!(f >= -2147483648.0f && f < 2147483648.0f)) return INT32_MIN;
  return (int32_t)(trunc ? truncf(f) : nearbyintf(f));
}
static inline __m512i heed_simde_cvtps_epi32(__m512 x, int trunc) {
  HEED_SIMDE_LANES(float, v, x);
  int32_t r[16];
  for (int i = 0; i < 16; i++) r[i] = heed_simde_f2i(v[i], trunc);
  return _mm512_loadu_si512(r);
}
static inline __m512 heed_simde_cvtph_ps(__m256i h) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_cvtph_ps(_mm256_castsi256_si128(h))),
                            _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1)), 1);
}
static inline __m512i heed_simde_widen(const void *p, int bytes, int sign) {
  int32_t r[16];
  for (int i = 0; i < 16; i++) {
    const uint8_t *b = (const uint8_t *)p + i * bytes;
    if (bytes == 1) r[i] = sign ? (int32_t)(int8_t)b[0] : (int32_t)b[0];
    else {
      uint16_t u;
      memcpy(&u, b, 2);
      r[i] = sign ? (int32_t)(int16_t)u : (int32_t)u;
    }
  }
  return _mm512_loadu_si512(r);
}
static inline __m512i heed_simde_cvtepi8_epi32(__m128i x) { return heed_simde_widen(&x, 1, 1); }
static inline __m512i heed_simde_cvtepu8_epi32(__m128i x) { return heed_simde_widen(&x, 1, 0); }
static inline __m512i heed_simde_cvtepu16_epi32(__m256i x) { return heed_simde_widen(&x, 2, 0); }
static inline __m128i heed_simde_cvtepi32_epi8(__m512i x) {
  HEED_SIMDE_LANES(int32_t, v, x);
  int8_t r[16];
  for (int i = 0; i < 16; i++) r[i] = (int8_t)(uint8_t)(uint32_t)v[i]; /* truncation, as vpmovdb */
  return _mm_loadu_si128((const __m128i *)r);
}
/* masked loads read only the lanes of the mask (a kernel may rely on that at
 * the end of a buffer); masked-off lanes are zero or src's */
static inline __m512 heed_simde_mask_loadu_ps(__m512 src, __mmask16 k, const void *p) {
  float r[16];
  memcpy(r, &src, sizeof r);
  for (int i = 0; i < 16; i++)
    if ((k >> i) & 1) memcpy(&r[i], (const char *)p + 4 * i, 4);
  return _mm512_loadu_ps(r);
}
static inline void heed_simde_mask_storeu_ps(void *p, __mmask16 k, __m512 x) {
  float v[16];
  memcpy(v, &x, sizeof v);
  for (int i = 0; i < 16; i++)
    if ((k >> i) & 1) memcpy((char *)p + 4 * i, &v[i], 4);
}
static inline __m256i heed_simde_maskz_loadu_epi16(__mmask16 k, const void *p) {
  uint16_t r[16] = {0};
  for (int i = 0; i < 16; i++)
    if ((k >> i) & 1) memcpy(&r[i], (const char *)p + 2 * i, 2);
  return _mm256_loadu_si256((const __m256i *)r);
}
static inline __m128i heed_simde_maskz_loadu_epi8(__mmask16 k, const void *p) {
  uint8_t r[16] = {0};
  for (int i = 0; i < 16; i++)
    if ((k >> i) & 1) r[i] = ((const uint8_t *)p)[i];
  return _mm_loadu_si128((const __m128i *)r);
}
static inline unsigned heed_simde_mask_reduce_min_epu32(__mmask16 k, __m512i x) {
  HEED_SIMDE_LANES(uint32_t, v, x);
  uint32_t m = UINT32_MAX;
  for (int i = 0; i < 16; i++)
    if (((k >> i) & 1) && v[i] < m) m = v[i];
  return m;
}
static inline float heed_simde_reduce_ps(__m512 x, int max) {
  HEED_SIMDE_LANES(float, v, x);
  for (int w = 8; w >= 1; w /= 2)
    for (int i = 0; i < w; i++) v[i] = max ? (v[i] > v[i + w] ? v[i] : v[i + w]) : v[i] + v[i + w];
  return v[0];
}
static inline int heed_simde_reduce_add_epi32(__m512i x) {
  HEED_SIMDE_LANES(uint32_t, v, x);
  uint32_t s = 0;
  for (int i = 0; i < 16; i++) s += v[i];
  return (int)s;
}

#undef _mm512_cvtepi32_ps
#define _mm512_cvtepi32_ps(x) heed_simde_cvtepi32_ps(x)
#define _mm512_cvtps_epi32(x) heed_simde_cvtps_epi32((x), 0)
#define _mm512_cvttps_epi32(x) heed_simde_cvtps_epi32((x), 1)
#define _mm512_cvtph_ps(h) heed_simde_cvtph_ps(h)
#define _mm512_cvtepi8_epi32(x) heed_simde_cvtepi8_epi32(x)
#define _mm512_cvtepu8_epi32(x) heed_simde_cvtepu8_epi32(x)
#define _mm512_cvtepu16_epi32(x) heed_simde_cvtepu16_epi32(x)
#define _mm512_cvtepi32_epi8(x) heed_simde_cvtepi32_epi8(x)
#define _mm512_maskz_loadu_ps(k, p) heed_simde_mask_loadu_ps(_mm512_setzero_ps(), (k), (p))
#define _mm512_mask_loadu_ps(s, k, p) heed_simde_mask_loadu_ps((s), (k), (p))
#define _mm512_mask_storeu_ps(p, k, x) heed_simde_mask_storeu_ps((p), (k), (x))
#define _mm256_maskz_loadu_epi16(k, p) heed_simde_maskz_loadu_epi16((k), (p))
#define _mm_maskz_loadu_epi8(k, p) heed_simde_maskz_loadu_epi8((k), (p))
#define _mm512_mask_cmp_ps_mask(k, a, b, imm) ((__mmask16)((k) & _mm512_cmp_ps_mask((a), (b), (imm))))
#define _mm512_mask_reduce_min_epu32(k, x) heed_simde_mask_reduce_min_epu32((k), (x))
#define _mm512_shuffle_i64x2(a, b, imm) simde_mm512_shuffle_i64x2((a), (b), (imm))
#define _mm512_reduce_add_ps(x) heed_simde_reduce_ps((x), 0)
#define _mm512_reduce_max_ps(x) heed_simde_reduce_ps((x), 1)
#define _mm512_reduce_add_epi32(x) heed_simde_reduce_add_epi32(x)

#else
#include <immintrin.h>
#endif

#endif
