/* backends/cpu/avx512/attn_avx512.c - attention micro-kernels for AVX-512
 * (F, BW, VL), every KV storage type. Wrappers and registration: attn_wrap.h.
 *
 * The cores keep up to 8 query rows in one pass over the keys (16 of the 32
 * registers as accumulators): a decode step with a GQA group of 5..8 heads
 * (Qwen2.5's 6) reads and converts each K or V element once, not once per
 * block of 4 rows. qk: RR rows x 32 keys (two panels); pv: RR rows x 32
 * columns. A final partial panel or 16-column run uses masked loads. */
#include <math.h>

#include "backends/cpu/avx512/avx512_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"

#define ZR 8 /* rows per pass */
/* Prefetch distance (bytes) of the typed cores' K and V streams, which
 * decode reads from DRAM at depth (f16: K the next pair of panels, V 32
 * keys ahead). Not in the f32 cores, which the many-rows path runs on L1
 * buffers. 2-core Zen 4 guest, Qwen2.5 1.5B, f16 KV at depth 16384: decode
 * 13.6 -> 15.0 tok/s, q8 KV unchanged (medians of 3 interleaved runs). */
#ifndef ZPF
#define ZPF 8192
#endif

/* A run of 16 stored elements (kv_elem.h) as 16 floats; the masked form
 * reads only the lanes of k (the others are 0). */
static inline __m512 z16_f32(const uint8_t *p) { return _mm512_loadu_ps((const float *)p); }
static inline __m512 zm16_f32(__mmask16 k, const uint8_t *p) { return _mm512_maskz_loadu_ps(k, (const float *)p); }
static inline __m512 z16_f16(const uint8_t *p) { return load16_f16((const heed_f16 *)p); }
static inline __m512 zm16_f16(__mmask16 k, const uint8_t *p) { return mload16_f16(k, (const heed_f16 *)p); }
static inline __m512 z16_bf16(const uint8_t *p) { return load16_bf16((const heed_bf16 *)p); }
static inline __m512 zm16_bf16(__mmask16 k, const uint8_t *p) { return mload16_bf16(k, (const heed_bf16 *)p); }
static inline __m512 z16_q8(const uint8_t *p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
static inline __m512 zm16_q8(__mmask16 k, const uint8_t *p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(k, p)));
}
/* q4: byte i holds element i (low nibble) and i + 8 (high nibble). */
static inline __m512 q4_of(__m128i b) {
  const __m128i m = _mm_set1_epi8(15);
  const __m128i u = _mm_unpacklo_epi64(_mm_and_si128(b, m), _mm_and_si128(_mm_srli_epi16(b, 4), m));
  return _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(u));
}
static inline __m512 z16_q4(const uint8_t *p) { return q4_of(_mm_loadl_epi64((const __m128i *)p)); }
static inline __m512 zm16_q4(__mmask16 k, const uint8_t *p) {
  const __mmask16 bytes = (__mmask16)((k | (k >> 8)) & 0xff); /* the bytes lanes k live in */
  return _mm512_maskz_mov_ps(k, q4_of(_mm_maskz_loadu_epi8(bytes, p)));
}
static inline __m512 e5m2_of(__m128i b) { return _mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(b), 8)); }
static inline __m512 z16_e5m2(const uint8_t *p) { return e5m2_of(_mm_loadu_si128((const __m128i *)p)); }
static inline __m512 zm16_e5m2(__mmask16 k, const uint8_t *p) { return e5m2_of(_mm_maskz_loadu_epi8(k, p)); }
static inline __m512 e4m3_of(__m128i b) {
  const __m256i w = _mm256_cvtepu8_epi16(b);
  const __m256i h = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x7f)), 7),
                                    _mm256_slli_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0x80)), 8));
  return _mm512_cvtph_ps(h);
}
static inline __m512 z16_e4m3(const uint8_t *p) { return e4m3_of(_mm_loadu_si128((const __m128i *)p)); }
static inline __m512 zm16_e4m3(__mmask16 k, const uint8_t *p) { return e4m3_of(_mm_maskz_loadu_epi8(k, p)); }

/* Calls F(rr, ...) with rr a constant 1..ZR. */
#define Z_ROWS(rr, F, ...)            \
  switch (rr) {                       \
    case 1: F(1, __VA_ARGS__); break; \
    case 2: F(2, __VA_ARGS__); break; \
    case 3: F(3, __VA_ARGS__); break; \
    case 4: F(4, __VA_ARGS__); break; \
    case 5: F(5, __VA_ARGS__); break; \
    case 6: F(6, __VA_ARGS__); break; \
    case 7: F(7, __VA_ARGS__); break; \
    default: F(8, __VA_ARGS__); break; \
  }

/* RR (1..ZR, a constant after inlining) rows of q.K^T for the keys of the
 * panels at k0 and k1, by SHAPE: two whole panels; a whole one and the lanes
 * m1 of the next; one whole panel; the lanes m0 of one. */
enum { ZQ_TWO, ZQ_TWO_PART, ZQ_ONE, ZQ_ONE_PART };
#define ZQK(SUF)                                                                                                \
  static inline __attribute__((always_inline)) void zqk_##SUF(const int RR, const int SHAPE, const float *q,    \
                                                              int dk, const uint8_t *k0, const uint8_t *k1,     \
                                                              __mmask16 m0, __mmask16 m1, float *s, int lds) {  \
    __m512 a[ZR][2];                                                                                            \
    for (int r = 0; r < RR; r++) a[r][0] = a[r][1] = _mm512_setzero_ps();                                       \
    for (int d = 0; d < dk; d++, k0 += B16_##SUF, k1 += B16_##SUF) {                                            \
      if (ZPF && B16_##SUF < 64 && SHAPE == ZQ_TWO)                                                             \
        _mm_prefetch((const char *)k0 + ZPF, _MM_HINT_T0), _mm_prefetch((const char *)k1 + ZPF, _MM_HINT_T0);   \
      const __m512 x0 = SHAPE == ZQ_ONE_PART ? zm16_##SUF(m0, k0) : z16_##SUF(k0);                              \
      const __m512 x1 = SHAPE == ZQ_TWO ? z16_##SUF(k1) : SHAPE == ZQ_TWO_PART ? zm16_##SUF(m1, k1) : x0;       \
      for (int r = 0; r < RR; r++) {                                                                            \
        const __m512 w = _mm512_set1_ps(q[(size_t)r * dk + d]);                                                 \
        a[r][0] = _mm512_fmadd_ps(w, x0, a[r][0]);                                                              \
        if (SHAPE <= ZQ_TWO_PART) a[r][1] = _mm512_fmadd_ps(w, x1, a[r][1]);                                    \
      }                                                                                                         \
    }                                                                                                           \
    for (int r = 0; r < RR; r++) {                                                                              \
      float *sr = s + (size_t)r * lds;                                                                          \
      if (SHAPE == ZQ_ONE_PART) _mm512_mask_storeu_ps(sr, m0, a[r][0]);                                         \
      else _mm512_storeu_ps(sr, a[r][0]);                                                                       \
      if (SHAPE == ZQ_TWO) _mm512_storeu_ps(sr + 16, a[r][1]);                                                  \
      if (SHAPE == ZQ_TWO_PART) _mm512_mask_storeu_ps(sr + 16, m1, a[r][1]);                                    \
    }                                                                                                           \
  }                                                                                                             \
  static void qk_core_##SUF(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) {          \
    for (int j = 0; j < n; j += 32) {                                                                           \
      const uint8_t *k0 = HEED_K_RUN(kt, B16_##SUF, dk, j, 0), *k1 = k0 + (size_t)dk * B16_##SUF;                \
      const __mmask16 m0 = tail_mask((size_t)(n - j)), m1 = tail_mask(n - j > 16 ? (size_t)(n - j - 16) : 0);   \
      for (int r = 0; r < R; r += ZR) {                                                                         \
        const float *qr = q + (size_t)r * dk;                                                                   \
        float *sr = s + (size_t)r * lds + j;                                                                    \
        const int rr = R - r < ZR ? R - r : ZR;                                                                 \
        if (j + 32 <= n) Z_ROWS(rr, zqk_##SUF, ZQ_TWO, qr, dk, k0, k1, m0, m1, sr, lds)                         \
        else if (j + 16 < n) Z_ROWS(rr, zqk_##SUF, ZQ_TWO_PART, qr, dk, k0, k1, m0, m1, sr, lds)                \
        else if (j + 16 == n) Z_ROWS(rr, zqk_##SUF, ZQ_ONE, qr, dk, k0, k1, m0, m1, sr, lds)                    \
        else Z_ROWS(rr, zqk_##SUF, ZQ_ONE_PART, qr, dk, k0, k1, m0, m1, sr, lds)                                \
      }                                                                                                         \
    }                                                                                                           \
  }

/* o[RR rows][32 columns from c] += p . V over n keys; M1: the second 16
 * columns exist. V row j's run for column c at v + j * vstride. */
#define ZPV(SUF)                                                                                                \
  static inline __attribute__((always_inline)) void zpv_##SUF(const int RR, const int M1, const float *p,       \
                                                              int ldp, const uint8_t *v, size_t vstride, int n, \
                                                              float *o, int ldo) {                              \
    __m512 a[ZR][2];                                                                                            \
    for (int r = 0; r < RR; r++) {                                                                              \
      a[r][0] = _mm512_loadu_ps(o + (size_t)r * ldo);                                                           \
      a[r][1] = M1 ? _mm512_loadu_ps(o + (size_t)r * ldo + 16) : _mm512_setzero_ps();                           \
    }                                                                                                           \
    for (int j = 0; j < n; j++, v += vstride) {                                                                 \
      if (ZPF && B16_##SUF < 64) _mm_prefetch((const char *)v + ZPF, _MM_HINT_T0);                               \
      const __m512 x0 = z16_##SUF(v), x1 = M1 ? z16_##SUF(v + B16_##SUF) : _mm512_setzero_ps();                  \
      for (int r = 0; r < RR; r++) {                                                                            \
        const __m512 w = _mm512_set1_ps(p[(size_t)r * ldp + j]);                                                \
        a[r][0] = _mm512_fmadd_ps(w, x0, a[r][0]);                                                              \
        if (M1) a[r][1] = _mm512_fmadd_ps(w, x1, a[r][1]);                                                      \
      }                                                                                                         \
    }                                                                                                           \
    for (int r = 0; r < RR; r++) {                                                                              \
      _mm512_storeu_ps(o + (size_t)r * ldo, a[r][0]);                                                           \
      if (M1) _mm512_storeu_ps(o + (size_t)r * ldo + 16, a[r][1]);                                              \
    }                                                                                                           \
  }                                                                                                             \
  static void pv_core_##SUF(const float *p, int ldp, int R, const void *v, int ldv, int n, int nc, float *o,    \
                            int ldo) {                                                                          \
    const size_t vstride = (size_t)(ldv / 16) * B16_##SUF;                                                      \
    for (int c = 0; c < nc; c += 32) {                                                                          \
      const uint8_t *vc = HEED_V_RUN(v, B16_##SUF, ldv, 0, c);                                                  \
      for (int r = 0; r < R; r += ZR) {                                                                         \
        const float *pr = p + (size_t)r * ldp;                                                                  \
        float *orow = o + (size_t)r * ldo + c;                                                                  \
        const int rr = R - r < ZR ? R - r : ZR;                                                                 \
        if (c + 32 <= nc) Z_ROWS(rr, zpv_##SUF, 1, pr, ldp, vc, vstride, n, orow, ldo)                          \
        else Z_ROWS(rr, zpv_##SUF, 0, pr, ldp, vc, vstride, n, orow, ldo)                                       \
      }                                                                                                         \
    }                                                                                                           \
  }

/* Many-rows path: a run of 16 converted into an L1 buffer. */
#define ZCVT(SUF) \
  static inline __attribute__((unused)) void cvt16_##SUF(const uint8_t *run, float *y) { _mm512_storeu_ps(y, z16_##SUF(run)); }

#define Z_TYPE(SUF, B16) ZQK(SUF) ZPV(SUF) ZCVT(SUF)
HEED_KV_TYPES(Z_TYPE)

HEED_ATTN_KERNELS_F32(avx512)
HEED_ATTN_KERNELS(f16, avx512)
HEED_ATTN_KERNELS(bf16, avx512)
HEED_ATTN_KERNELS(q8, avx512)
HEED_ATTN_KERNELS(q4, avx512)
HEED_ATTN_KERNELS(e4m3, avx512)
HEED_ATTN_KERNELS(e5m2, avx512)

static float softmax_row_avx512(float *s, int n, float *m, float *l) {
  __m512 vm = _mm512_set1_ps(-INFINITY);
  for (int j = 0; j < n; j += 16) {
    __mmask16 k = tail_mask((size_t)(n - j));
    vm = _mm512_mask_max_ps(vm, k, vm, _mm512_maskz_loadu_ps(k, s + j));
  }
  float mx = _mm512_reduce_max_ps(vm);
  if (*m > mx) mx = *m;
  if (heed_softmax_all_masked(s, n, mx)) return 1.0f;
  __m512 vmx = _mm512_set1_ps(mx), sum = _mm512_setzero_ps();
  for (int j = 0; j < n; j += 16) {
    __mmask16 k = tail_mask((size_t)(n - j));
    __m512 e = _mm512_maskz_mov_ps(k, exp_neg(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), vmx)));
    _mm512_mask_storeu_ps(s + j, k, e);
    sum = _mm512_add_ps(sum, e);
  }
  return heed_softmax_close(m, l, mx, _mm512_reduce_add_ps(sum));
}

void heed_cpu_register_attn_avx512(heed_kernel_table *t) { 
  HEED_ATTN_REGISTER(t, avx512, HEED_ISA_AVX512);
  HEED_ATTN_REGISTER_QUANT(t, avx512, HEED_ISA_AVX512);
}
