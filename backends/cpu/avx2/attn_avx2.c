/* backends/cpu/avx2/attn_avx2.c - attention micro-kernels for AVX2 + FMA + F16C.
 *
 * Register-blocked cores, instantiated per storage type, float and quantized
 * (attn_wrap.h picks them or a converted chunk):
 *   qk: up to 6 query rows x 16 keys = 12 accumulators (outer product, K transposed);
 *   pv: up to 6 query rows x 16 output columns = 12 accumulators.
 * Head dims are multiples of 16, so no column tails. */
#include <math.h>

#include "backends/cpu/avx2/avx2_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"



/* The register-blocked cores, instantiated per storage type: LD16 turns a
 * run of 16 stored elements into two vectors of 8 floats (kv_elem.h). Both
 * keep up to YR = 6 query rows in one pass (12 of the 16 registers as
 * accumulators, two for the run, one for the broadcast value): a decode step
 * with a GQA group of 5 or 6 heads (Qwen2.5's 6) reads and converts each K or
 * V element once, and the prefill's f32 cores do 12 FMAs per 8 loads, where 4
 * rows did 8 per 6. */
#define YR 6


/* q.K^T as an outer product over the key panels: for each channel d, a
 * panel's 16 keys (2 vectors) times RR broadcast query values. A last,
 * partial panel is done one key at a time. */
#define ATTN_QK_CORES(SUF)                                                                                   \
  static inline __attribute__((always_inline)) void qk_rows_##SUF(const int RR, const float *q, const uint8_t *k, \
                                                                    int dk, float *s, int lds) {             \
    __m256 a[YR][2];                                                                                         \
    for (int r = 0; r < RR; r++) a[r][0] = a[r][1] = _mm256_setzero_ps();                                    \
    for (int d = 0; d < dk; d++, k += B16_##SUF) {                                                           \
      __m256 x0, x1;                                                                                         \
      ld16_##SUF(k, &x0, &x1);                                                                               \
      for (int r = 0; r < RR; r++) {                                                                         \
        const __m256 w = _mm256_broadcast_ss(q + (size_t)r * dk + d);                                        \
        a[r][0] = _mm256_fmadd_ps(w, x0, a[r][0]), a[r][1] = _mm256_fmadd_ps(w, x1, a[r][1]);                \
      }                                                                                                      \
    }                                                                                                        \
    for (int r = 0; r < RR; r++)                                                                             \
      _mm256_storeu_ps(s + (size_t)r * lds, a[r][0]), _mm256_storeu_ps(s + (size_t)r * lds + 8, a[r][1]);    \
  }                                                                                                          \
  static void qk_core_##SUF(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) {        \
    int j = 0;                                                                                               \
    for (; j + 16 <= n; j += 16) {                                                                           \
      const uint8_t *k = HEED_K_RUN(kt, B16_##SUF, dk, j, 0);                                                \
      for (int r = 0; r < R; r += YR) {                                                                      \
        const int rr = R - r < YR ? R - r : YR;                                                              \
        Y_ROWS(rr, qk_rows_##SUF, q + (size_t)r * dk, k, dk, s + (size_t)r * lds + j, lds);                  \
      }                                                                                                      \
    }                                                                                                        \
    qk_tail_##SUF(q, R, kt, j, n, dk, s, lds);                                                               \
  }

/* P.V: RR rows x 16 columns (one run) = 2 RR accumulators, over the n keys. */
#define ATTN_PV_CORES(SUF)                                                                                   \
  static inline __attribute__((always_inline)) void pv_rows_##SUF(const int RR, const float *p, int ldp,      \
                                                                    const uint8_t *vc, size_t vstride, int n, \
                                                                    float *o, int ldo) {                      \
    __m256 a[YR][2];                                                                                         \
    for (int r = 0; r < RR; r++)                                                                             \
      a[r][0] = _mm256_loadu_ps(o + (size_t)r * ldo), a[r][1] = _mm256_loadu_ps(o + (size_t)r * ldo + 8);   \
    for (int j = 0; j < n; j++, vc += vstride) {                                                             \
      __m256 x0, x1;                                                                                         \
      ld16_##SUF(vc, &x0, &x1);                                                                              \
      for (int r = 0; r < RR; r++) {                                                                         \
        const __m256 w = _mm256_broadcast_ss(p + (size_t)r * ldp + j);                                       \
        a[r][0] = _mm256_fmadd_ps(w, x0, a[r][0]), a[r][1] = _mm256_fmadd_ps(w, x1, a[r][1]);                \
      }                                                                                                      \
    }                                                                                                        \
    for (int r = 0; r < RR; r++)                                                                             \
      _mm256_storeu_ps(o + (size_t)r * ldo, a[r][0]), _mm256_storeu_ps(o + (size_t)r * ldo + 8, a[r][1]);    \
  }                                                                                                          \
  static void pv_core_##SUF(const float *p, int ldp, int R, const void *v, int ldv, int n, int nc, float *o,  \
                            int ldo) {                                                                       \
    const size_t vstride = (size_t)(ldv / 16) * B16_##SUF;                                                   \
    for (int c = 0; c < nc; c += 16) {                                                                       \
      const uint8_t *vc = HEED_V_RUN(v, B16_##SUF, ldv, 0, c);                                               \
      for (int r = 0; r < R; r += YR) {                                                                      \
        const int rr = R - r < YR ? R - r : YR;                                                              \
        Y_ROWS(rr, pv_rows_##SUF, p + (size_t)r * ldp, ldp, vc, vstride, n, o + (size_t)r * ldo + c, ldo);   \
      }                                                                                                      \
    }                                                                                                        \
  }

/* Many-rows path: a run converted into an L1 buffer. */
#define ATTN_CVT16(SUF)                                                     \
  static inline __attribute__((unused)) void cvt16_##SUF(const uint8_t *run, float *y) { \
    __m256 x0, x1;                                                          \
    ld16_##SUF(run, &x0, &x1);                                              \
    _mm256_storeu_ps(y, x0), _mm256_storeu_ps(y + 8, x1);                   \
  }

#define ATTN_TYPE(SUF, B16) ATTN_QK_CORES(SUF) ATTN_PV_CORES(SUF) ATTN_CVT16(SUF)
HEED_KV_TYPES(ATTN_TYPE)

HEED_ATTN_KERNELS_F32(avx2)
HEED_ATTN_KERNELS(f16, avx2)
HEED_ATTN_KERNELS(bf16, avx2)
HEED_ATTN_KERNELS(q8, avx2)
HEED_ATTN_KERNELS(q4, avx2)
HEED_ATTN_KERNELS(e4m3, avx2)
HEED_ATTN_KERNELS(e5m2, avx2)

static float softmax_row_avx2(float *s, int n, float *m, float *l) {
  __m256 vm = _mm256_set1_ps(-INFINITY);
  int j = 0;
  for (; j + 8 <= n; j += 8) vm = _mm256_max_ps(vm, _mm256_loadu_ps(s + j));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float mx = _mm_cvtss_f32(h);
  for (; j < n; j++) mx = s[j] > mx ? s[j] : mx;
  if (*m > mx) mx = *m;
  if (heed_softmax_all_masked(s, n, mx)) return 1.0f;
  __m256 vmx = _mm256_set1_ps(mx), sum = _mm256_setzero_ps();
  for (j = 0; j + 8 <= n; j += 8) {
    __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(s + j), vmx));
    _mm256_storeu_ps(s + j, e);
    sum = _mm256_add_ps(sum, e);
  }
  float tot = hsum256(sum);
  for (; j < n; j++) tot += (s[j] = expf(s[j] - mx));
  return heed_softmax_close(m, l, mx, tot);
}

void heed_cpu_register_attn_avx2(heed_kernel_table *t) {
  HEED_ATTN_REGISTER(t, avx2, HEED_ISA_AVX2);
  HEED_ATTN_REGISTER_QUANT(t, avx2, HEED_ISA_AVX2);
}
