/* backends/cpu/avx2/attn_q8_avx2.c - q8 K scores and q8 V sums on vpmaddwd
 * (AVX2), for CPUs without a dot-product instruction that fits (cpu_backend.c
 * sets heed_cpu_ctx.qk_q8 and pv_q8 from the AVX2 level up, where no
 * avx512_vnni replaces the first).
 *
 * The float cores spend one multiply-add lane per query row per K (or V)
 * element, and first convert each int8 code to f32. Here the float operand
 * (the query times the channel scales; P times the token scales) is quantized
 * to int16 per row, the codes are sign-extended to int16 once per element, and
 * one vpmaddwd does 16 multiply-adds (two codes per dword lane) into int32,
 * with no int-to-float conversion per element. On Zen 3 the cores alone run a
 * little above the f16 FMA cores (51-55 against 48 GMAC/s a core); the query's
 * quantization once per K group takes back about a fifth of that.
 *
 * The row's quantization: v = x (times scales) * 32767 / max |x|, codes
 * nearbyint(v), step d = max |x| / 32767: every value to within d / 2, the
 * same order as the f32 cores' own rounding over a 128-term sum. The sums are
 * exact in int32 (|code| <= 32767, |K| <= 127, at most 256 terms a lane: dk
 * and the keys of a tile are at most 256, and 256 * 32767 * 127 < 2^31), then
 * one conversion and one multiply by d. tests/test_kernels.c checks both kernels bit for bit against
 * a scalar copy of this arithmetic and bounds them against fp64. */
#include "backends/cpu/avx2/avx2_common.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/kv_elem.h"
#include "runtime/backend.h"

#define QR 6 /* rows per pass (Y_ROWS) */

/* Quantizes n floats x (times sc[i] when sc is set) to int16 codes c with
 * step d = max |x| / 32767, returned (0 for an all-zero row, codes 0). n is a
 * multiple of 8. */
static float quant16(const float *x, const float *sc, int n, int16_t *c) {
  __m256 mx = _mm256_setzero_ps();
  const __m256 abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (int i = 0; i < n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (sc) v = _mm256_mul_ps(v, _mm256_loadu_ps(sc + i));
    mx = _mm256_max_ps(mx, _mm256_and_ps(v, abs));
  }
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  const float amax = _mm_cvtss_f32(h);
  const __m256 inv = _mm256_set1_ps(amax > 1e-30f ? 32767.0f / amax : 0.0f);
  for (int i = 0; i < n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    if (sc) v = _mm256_mul_ps(v, _mm256_loadu_ps(sc + i));
    const __m256i k = _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)); /* round to nearest even: nearbyint */
    _mm_storeu_si128((__m128i *)(c + i), _mm_packs_epi32(_mm256_castsi256_si128(k), _mm256_extracti128_si256(k, 1)));
  }
  return amax > 1e-30f ? amax / 32767.0f : 0.0f;
}

/* 8 bytes of each of two int8 runs a and b as 8 dwords, dword i = (a[i],
 * b[i]) as int16 pairs. */
static inline __attribute__((always_inline)) __m256i pair8(const uint8_t *a, const uint8_t *b) {
  const __m128i x = _mm_loadl_epi64((const __m128i *)a), y = _mm_loadl_epi64((const __m128i *)b);
  return _mm256_cvtepi8_epi16(_mm_unpacklo_epi8(x, y));
}

/* The pair of codes at c in all eight dwords. */
static inline __m256i bcast_pair(const int16_t *c) {
  int32_t w;
  memcpy(&w, c, 4);
  return _mm256_set1_epi32(w);
}

/* RR rows of codes qc ([RR][dk]) x 8 keys at k (half a panel): channels two
 * at a time. One vector of keys per pass keeps the RR accumulators, the keys,
 * the broadcast and the product in registers (16 keys spilled at 6 rows). */
static inline __attribute__((always_inline)) void kq_rows(const int RR, const int16_t *qc, const float *qd, int dk,
                                                          const uint8_t *k, float *s, int lds) {
  __m256i a[QR];
#pragma GCC unroll 8
  for (int r = 0; r < RR; r++) a[r] = _mm256_setzero_si256();
  for (int d = 0; d < dk; d += 2, k += 32) {
    const __m256i x = pair8(k, k + 16);
#pragma GCC unroll 8
    for (int r = 0; r < RR; r++) a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(x, bcast_pair(qc + (size_t)r * dk + d)));
  }
  for (int r = 0; r < RR; r++) _mm256_storeu_ps(s + (size_t)r * lds, _mm256_mul_ps(_mm256_cvtepi32_ps(a[r]), _mm256_set1_ps(qd[r])));
}

/* RR rows of codes pc ([RR][n]) x 8 output columns (bytes of the run at vc of
 * every key, vstride apart): keys two at a time, o += the row's step times
 * the sums. */
static inline __attribute__((always_inline)) void vq_rows(const int RR, const int16_t *pc, int n, const float *pd,
                                                          const uint8_t *vc, size_t vstride, float *o, int ldo) {
  __m256i a[QR];
#pragma GCC unroll 8
  for (int r = 0; r < RR; r++) a[r] = _mm256_setzero_si256();
  for (int j = 0; j < n; j += 2, vc += 2 * vstride) {
    const __m256i x = pair8(vc, vc + vstride);
#pragma GCC unroll 8
    for (int r = 0; r < RR; r++) a[r] = _mm256_add_epi32(a[r], _mm256_madd_epi16(x, bcast_pair(pc + (size_t)r * n + j)));
  }
  for (int r = 0; r < RR; r++) {
    float *orow = o + (size_t)r * ldo;
    _mm256_storeu_ps(orow, _mm256_fmadd_ps(_mm256_cvtepi32_ps(a[r]), _mm256_set1_ps(pd[r]), _mm256_loadu_ps(orow)));
  }
}

void heed_attn_qk_q8_avx2(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch) {
  int16_t *qc = (int16_t *)scratch;           /* [R][dk] */
  float *qd = (float *)(qc + (size_t)R * dk); /* [R]; dk is a multiple of 16 */
  for (int r = 0; r < R; r++) qd[r] = quant16(q + (size_t)r * dk, ks, dk, qc + (size_t)r * dk);
  for (int j = 0; j < n; j += 16) {
    const uint8_t *k = HEED_K_RUN(kt, 16, dk, j, 0);
    for (int r = 0; r < R; r += QR) {
      const int rr = R - r < QR ? R - r : QR;
      for (int h = 0; h < 16; h += 8)
        Y_ROWS(rr, kq_rows, qc + (size_t)r * dk, qd + r, dk, k + h, s + (size_t)r * lds + j + h, lds);
    }
  }
}

void heed_attn_pv_q8_avx2(const float *p, int ldp, int R, const float *vs, const void *v, int n, int nc, int dv,
                          float *o, void *scratch) {
  int16_t *pc = (int16_t *)scratch;          /* [R][n] */
  float *pd = (float *)(pc + (size_t)R * n); /* [R]; n is a multiple of 16 */
  for (int r = 0; r < R; r++) pd[r] = quant16(p + (size_t)r * ldp, vs, n, pc + (size_t)r * n);
  const size_t vstride = (size_t)(dv / 16) * 16;
  for (int c = 0; c < nc; c += 8) {
    const uint8_t *vc = HEED_V_RUN(v, 16, dv, 0, c) + c % 16;
    for (int r = 0; r < R; r += QR) {
      const int rr = R - r < QR ? R - r : QR;
      Y_ROWS(rr, vq_rows, pc + (size_t)r * n, n, pd + r, vc, vstride, o + (size_t)r * dv + c, dv);
    }
  }
}
