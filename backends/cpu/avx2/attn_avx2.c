/* backends/cpu/avx2/attn_avx2.c - attention micro-kernels for AVX2 + FMA + F16C.
 *
 * Register-blocked cores, instantiated per storage type (attn_wrap.h picks
 * them or a converted chunk):
 *   qk: 4 query rows x 16 keys = 8 accumulators (outer product, K transposed);
 *   pv: 4 query rows x 16 output columns = 8 accumulators.
 * Head dims are multiples of 16, so no column tails. */
#include <math.h>

#include "backends/cpu/avx2/avx2_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"



/* The register-blocked cores, instantiated per storage type: LOAD8 turns 8
 * stored elements into 8 floats (in-register conversion, no buffer). */
/* q.K^T as an outer product over the key panels: for each channel d, a
 * panel's 16 keys (2 vectors) times 4 broadcast query values, 8 accumulators. */
#define ATTN_QK_CORES(SUF, T, LOADV, LOAD1)                                                        \
  static void qk_##SUF(const float *q, int R, const void *ktv, int n, int dk, float *s, int lds) { \
    const T *kt = (const T *)ktv;                                                                  \
    int j = 0;                                                                                     \
    for (; j + 16 <= n; j += 16) {                                                                 \
      int r = 0;                                                                                   \
      for (; r + 4 <= R; r += 4) {                                                                 \
        const float *q0 = q + (size_t)r * dk, *q1 = q0 + dk, *q2 = q1 + dk, *q3 = q2 + dk;         \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0; \
        const T *k = kt + (size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + j % HEED_KEY_PANEL;                                                                       \
        for (int d = 0; d < dk; d++, k += HEED_KEY_PANEL) {                                                   \
          __m256 x0 = LOADV(k), x1 = LOADV(k + 8), w;                                              \
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
        const T *k = kt + (size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + j % HEED_KEY_PANEL;                                                                       \
        for (int d = 0; d < dk; d++, k += HEED_KEY_PANEL) {                                                   \
          __m256 w = _mm256_broadcast_ss(q0 + d);                                                  \
          a0 = _mm256_fmadd_ps(w, LOADV(k), a0), a1 = _mm256_fmadd_ps(w, LOADV(k + 8), a1);        \
        }                                                                                          \
        _mm256_storeu_ps(s + (size_t)r * lds + j, a0), _mm256_storeu_ps(s + (size_t)r * lds + j + 8, a1); \
      }                                                                                            \
    }                                                                                              \
    for (; j + 8 <= n; j += 8)                                                                     \
      for (int r = 0; r < R; r++) {                                                                \
        const float *q0 = q + (size_t)r * dk;                                                      \
        __m256 a0 = _mm256_setzero_ps();                                                           \
        const T *k = kt + (size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + j % HEED_KEY_PANEL;                                                                       \
        for (int d = 0; d < dk; d++, k += HEED_KEY_PANEL) a0 = _mm256_fmadd_ps(_mm256_broadcast_ss(q0 + d), LOADV(k), a0); \
        _mm256_storeu_ps(s + (size_t)r * lds + j, a0);                                             \
      }                                                                                            \
    for (; j < n; j++)                                                                             \
      for (int r = 0; r < R; r++) {                                                                \
        float acc = 0;                                                                             \
        for (int d = 0; d < dk; d++) acc += q[(size_t)r * dk + d] * LOAD1(kt[(size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + (size_t)d * HEED_KEY_PANEL + j % HEED_KEY_PANEL]); \
        s[(size_t)r * lds + j] = acc;                                                              \
      }                                                                                            \
  }

#define ATTN_PV_CORES(SUF, T, LOAD8) \
static void pv_##SUF(const float *p, int ldp, int R, const void *vv, int n, int dv, float *o) { \
  const T *v = (const T *)vv; \
  for (int c = 0; c < dv; c += 16) { \
    int r = 0; \
    for (; r + 4 <= R; r += 4) { \
      float *o0 = o + (size_t)r * dv + c, *o1 = o0 + dv, *o2 = o1 + dv, *o3 = o2 + dv; \
      const float *p0 = p + (size_t)r * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp; \
      __m256 a0 = _mm256_loadu_ps(o0), a1 = _mm256_loadu_ps(o0 + 8), b0 = _mm256_loadu_ps(o1), \
             b1 = _mm256_loadu_ps(o1 + 8), c0 = _mm256_loadu_ps(o2), c1 = _mm256_loadu_ps(o2 + 8), \
             d0 = _mm256_loadu_ps(o3), d1 = _mm256_loadu_ps(o3 + 8); \
      for (int j = 0; j < n; j++) { \
        const T *vr = v + (size_t)j * dv + c; \
        __m256 x0 = LOAD8(vr), x1 = LOAD8(vr + 8), w; \
        w = _mm256_broadcast_ss(p0 + j), a0 = _mm256_fmadd_ps(w, x0, a0), a1 = _mm256_fmadd_ps(w, x1, a1); \
        w = _mm256_broadcast_ss(p1 + j), b0 = _mm256_fmadd_ps(w, x0, b0), b1 = _mm256_fmadd_ps(w, x1, b1); \
        w = _mm256_broadcast_ss(p2 + j), c0 = _mm256_fmadd_ps(w, x0, c0), c1 = _mm256_fmadd_ps(w, x1, c1); \
        w = _mm256_broadcast_ss(p3 + j), d0 = _mm256_fmadd_ps(w, x0, d0), d1 = _mm256_fmadd_ps(w, x1, d1); \
      } \
      _mm256_storeu_ps(o0, a0), _mm256_storeu_ps(o0 + 8, a1), _mm256_storeu_ps(o1, b0), _mm256_storeu_ps(o1 + 8, b1); \
      _mm256_storeu_ps(o2, c0), _mm256_storeu_ps(o2 + 8, c1), _mm256_storeu_ps(o3, d0), _mm256_storeu_ps(o3 + 8, d1); \
    } \
    for (; r < R; r++) { \
      float *o0 = o + (size_t)r * dv + c; \
      const float *p0 = p + (size_t)r * ldp; \
      __m256 a0 = _mm256_loadu_ps(o0), a1 = _mm256_loadu_ps(o0 + 8); \
      for (int j = 0; j < n; j++) { \
        __m256 w = _mm256_broadcast_ss(p0 + j); \
        a0 = _mm256_fmadd_ps(w, LOAD8(v + (size_t)j * dv + c), a0); \
        a1 = _mm256_fmadd_ps(w, LOAD8(v + (size_t)j * dv + c + 8), a1); \
      } \
      _mm256_storeu_ps(o0, a0), _mm256_storeu_ps(o0 + 8, a1); \
    } \
  } \
} \

#define LOAD1_F32(v) (v)
ATTN_QK_CORES(core_f32, float, load8_f32, LOAD1_F32)
ATTN_QK_CORES(core_f16, heed_f16, load8_f16, heed_f16_to_f32)
ATTN_QK_CORES(core_bf16, heed_bf16, load8_bf16, heed_bf16_to_f32)
ATTN_PV_CORES(core_f32, float, load8_f32)
ATTN_PV_CORES(core_f16, heed_f16, load8_f16)
ATTN_PV_CORES(core_bf16, heed_bf16, load8_bf16)

/* Chunk conversion for the many-rows path. */
#define CVT(SUF, T)                                                                                \
  static inline void cvt_##SUF(const void *x, float *y, size_t n) {                                \
    for (size_t i = 0; i < n; i += 8) _mm256_storeu_ps(y + i, load8_##SUF((const T *)x + i));     \
  }
CVT(f16, heed_f16)
CVT(bf16, heed_bf16)


HEED_ATTN_KERNELS_F32(avx2)
HEED_ATTN_KERNELS(f16, avx2, 2, heed_f16_to_f32)
HEED_ATTN_KERNELS(bf16, avx2, 2, heed_bf16_to_f32)

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

void heed_cpu_register_attn_avx2(heed_kernel_table *t) { HEED_ATTN_REGISTER(t, avx2, HEED_ISA_AVX2); }
