/* backends/cpu/avx2/attn_avx2.c - attention micro-kernels for AVX2 + FMA + F16C.
 *
 * Register-blocked cores, instantiated per storage type, float and quantized
 * (attn_wrap.h picks them or a converted chunk):
 *   qk: 4 query rows x 16 keys = 8 accumulators (outer product, K transposed);
 *   pv: 4 query rows x 16 output columns = 8 accumulators.
 * Head dims are multiples of 16, so no column tails. */
#include <math.h>

#include "backends/cpu/avx2/avx2_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"



/* The register-blocked cores, instantiated per storage type: LD16 turns a
 * run of 16 stored elements into two vectors of 8 floats (kv_elem.h). */
/* q.K^T as an outer product over the key panels: for each channel d, a
 * panel's 16 keys (2 vectors) times 4 broadcast query values, 8 accumulators.
 * A last, partial panel is done one key at a time. */
#define ATTN_QK_CORES(SUF)                                                                         \
  static void qk_core_##SUF(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    int j = 0;                                                                                     \
    for (; j + 16 <= n; j += 16) {                                                                 \
      int r = 0;                                                                                   \
      for (; r + 4 <= R; r += 4) {                                                                 \
        const float *q0 = q + (size_t)r * dk, *q1 = q0 + dk, *q2 = q1 + dk, *q3 = q2 + dk;         \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0; \
        const uint8_t *k = HEED_K_RUN(kt, B16_##SUF, dk, j, 0);                                    \
        for (int d = 0; d < dk; d++, k += B16_##SUF) {                                             \
          __m256 x0, x1, w;                                                                        \
          ld16_##SUF(k, &x0, &x1);                                                                 \
          w = _mm256_broadcast_ss(q0 + d), a0 = _mm256_fmadd_ps(w, x0, a0), a1 = _mm256_fmadd_ps(w, x1, a1); \
          w = _mm256_broadcast_ss(q1 + d), b0 = _mm256_fmadd_ps(w, x0, b0), b1 = _mm256_fmadd_ps(w, x1, b1); \
          w = _mm256_broadcast_ss(q2 + d), c0 = _mm256_fmadd_ps(w, x0, c0), c1 = _mm256_fmadd_ps(w, x1, c1); \
          w = _mm256_broadcast_ss(q3 + d), d0 = _mm256_fmadd_ps(w, x0, d0), d1 = _mm256_fmadd_ps(w, x1, d1); \
        }                                                                                          \
        float *sr = s + (size_t)r * lds + j;                                                       \
        _mm256_storeu_ps(sr, a0), _mm256_storeu_ps(sr + 8, a1), sr += lds;                         \
        _mm256_storeu_ps(sr, b0), _mm256_storeu_ps(sr + 8, b1), sr += lds;                         \
        _mm256_storeu_ps(sr, c0), _mm256_storeu_ps(sr + 8, c1), sr += lds;                         \
        _mm256_storeu_ps(sr, d0), _mm256_storeu_ps(sr + 8, d1);                                    \
      }                                                                                            \
      for (; r < R; r++) {                                                                         \
        const float *q0 = q + (size_t)r * dk;                                                      \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0;                                                  \
        const uint8_t *k = HEED_K_RUN(kt, B16_##SUF, dk, j, 0);                                    \
        for (int d = 0; d < dk; d++, k += B16_##SUF) {                                             \
          __m256 x0, x1, w = _mm256_broadcast_ss(q0 + d);                                          \
          ld16_##SUF(k, &x0, &x1);                                                                 \
          a0 = _mm256_fmadd_ps(w, x0, a0), a1 = _mm256_fmadd_ps(w, x1, a1);                        \
        }                                                                                          \
        _mm256_storeu_ps(s + (size_t)r * lds + j, a0), _mm256_storeu_ps(s + (size_t)r * lds + j + 8, a1); \
      }                                                                                            \
    }                                                                                              \
    qk_tail_##SUF(q, R, kt, j, n, dk, s, lds);                                                     \
  }

/* P.V: 4 rows x 16 columns (one run) = 8 accumulators, over the n keys. */
#define ATTN_PV_CORES(SUF) \
static void pv_core_##SUF(const float *p, int ldp, int R, const void *v, int ldv, int n, int nc, float *o, int ldo) { \
  const size_t vstride = (size_t)(ldv / 16) * B16_##SUF; \
  for (int c = 0; c < nc; c += 16) { \
    const uint8_t *vc = HEED_V_RUN(v, B16_##SUF, ldv, 0, c); \
    int r = 0; \
    for (; r + 4 <= R; r += 4) { \
      float *o0 = o + (size_t)r * ldo + c, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo; \
      const float *p0 = p + (size_t)r * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp; \
      __m256 a0 = _mm256_loadu_ps(o0), a1 = _mm256_loadu_ps(o0 + 8), b0 = _mm256_loadu_ps(o1), \
             b1 = _mm256_loadu_ps(o1 + 8), c0 = _mm256_loadu_ps(o2), c1 = _mm256_loadu_ps(o2 + 8), \
             d0 = _mm256_loadu_ps(o3), d1 = _mm256_loadu_ps(o3 + 8); \
      const uint8_t *vr = vc; \
      for (int j = 0; j < n; j++, vr += vstride) { \
        __m256 x0, x1, w; \
        ld16_##SUF(vr, &x0, &x1); \
        w = _mm256_broadcast_ss(p0 + j), a0 = _mm256_fmadd_ps(w, x0, a0), a1 = _mm256_fmadd_ps(w, x1, a1); \
        w = _mm256_broadcast_ss(p1 + j), b0 = _mm256_fmadd_ps(w, x0, b0), b1 = _mm256_fmadd_ps(w, x1, b1); \
        w = _mm256_broadcast_ss(p2 + j), c0 = _mm256_fmadd_ps(w, x0, c0), c1 = _mm256_fmadd_ps(w, x1, c1); \
        w = _mm256_broadcast_ss(p3 + j), d0 = _mm256_fmadd_ps(w, x0, d0), d1 = _mm256_fmadd_ps(w, x1, d1); \
      } \
      _mm256_storeu_ps(o0, a0), _mm256_storeu_ps(o0 + 8, a1), _mm256_storeu_ps(o1, b0), _mm256_storeu_ps(o1 + 8, b1); \
      _mm256_storeu_ps(o2, c0), _mm256_storeu_ps(o2 + 8, c1), _mm256_storeu_ps(o3, d0), _mm256_storeu_ps(o3 + 8, d1); \
    } \
    for (; r < R; r++) { \
      float *o0 = o + (size_t)r * ldo + c; \
      const float *p0 = p + (size_t)r * ldp; \
      __m256 a0 = _mm256_loadu_ps(o0), a1 = _mm256_loadu_ps(o0 + 8); \
      const uint8_t *vr = vc; \
      for (int j = 0; j < n; j++, vr += vstride) { \
        __m256 x0, x1, w = _mm256_broadcast_ss(p0 + j); \
        ld16_##SUF(vr, &x0, &x1); \
        a0 = _mm256_fmadd_ps(w, x0, a0), a1 = _mm256_fmadd_ps(w, x1, a1); \
      } \
      _mm256_storeu_ps(o0, a0), _mm256_storeu_ps(o0 + 8, a1); \
    } \
  } \
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
