/* backends/cpu/avx512/attn_avx512.c - attention micro-kernels for AVX-512
 * (F, BW, VL): the avx2 blocking with 16-wide vectors; masked loads for a
 * final 16-column block. Wrappers and registration: attn_wrap.h. The
 * quantized types keep avx2's kernels (this table starts from avx2's). */
#include <math.h>

#include "backends/cpu/avx512/avx512_common.h"
#include "backends/cpu/cpu_isa.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"

/* Register-blocked cores per storage type: qk 4 rows x 32 keys, pv 4 rows x 32 columns. */

/* q.K^T as an outer product over the key panels: per channel, 32 keys (two
 * panels, a vector each) times 4 broadcast query values; a final partial
 * block is masked. */
#define QK_BLOCK(T, LOADK0, LOADK1, STORE0, STORE1)                                                    \
  for (; r + 4 <= R; r += 4) {                                                                     \
    const float *q0 = q + (size_t)r * dk, *q1 = q0 + dk, *q2 = q1 + dk, *q3 = q2 + dk;             \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, b0 = a0, b1 = a0, c0 = a0, c1 = a0, d0 = a0, d1 = a0; \
    const T *k = kt + (size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + j % HEED_KEY_PANEL;                                                                           \
    for (int d = 0; d < dk; d++, k += HEED_KEY_PANEL) {                                                       \
      __m512 x0 = LOADK0, x1 = LOADK1, w;                                                          \
      w = _mm512_set1_ps(q0[d]), a0 = _mm512_fmadd_ps(w, x0, a0), a1 = _mm512_fmadd_ps(w, x1, a1); \
      w = _mm512_set1_ps(q1[d]), b0 = _mm512_fmadd_ps(w, x0, b0), b1 = _mm512_fmadd_ps(w, x1, b1); \
      w = _mm512_set1_ps(q2[d]), c0 = _mm512_fmadd_ps(w, x0, c0), c1 = _mm512_fmadd_ps(w, x1, c1); \
      w = _mm512_set1_ps(q3[d]), d0 = _mm512_fmadd_ps(w, x0, d0), d1 = _mm512_fmadd_ps(w, x1, d1); \
    }                                                                                              \
    float *sr = s + (size_t)r * lds + j;                                                           \
    STORE0(sr, a0), STORE1(sr + 16, a1), sr += lds;                                                \
    STORE0(sr, b0), STORE1(sr + 16, b1), sr += lds;                                                \
    STORE0(sr, c0), STORE1(sr + 16, c1), sr += lds;                                                \
    STORE0(sr, d0), STORE1(sr + 16, d1);                                                           \
  }                                                                                                \
  for (; r < R; r++) {                                                                             \
    const float *q0 = q + (size_t)r * dk;                                                          \
    __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                                      \
    const T *k = kt + (size_t)(j / HEED_KEY_PANEL) * HEED_KEY_PANEL * dk + j % HEED_KEY_PANEL;                                                                           \
    for (int d = 0; d < dk; d++, k += HEED_KEY_PANEL) {                                                       \
      __m512 w = _mm512_set1_ps(q0[d]), x0 = LOADK0, x1 = LOADK1;                                  \
      a0 = _mm512_fmadd_ps(w, x0, a0), a1 = _mm512_fmadd_ps(w, x1, a1);                            \
    }                                                                                              \
    STORE0(s + (size_t)r * lds + j, a0), STORE1(s + (size_t)r * lds + j + 16, a1);                 \
  }

#define ATTN_QK_CORES(SUF, T, LOADV, LOADV_MASK)                                                   \
  static void qk_##SUF(const float *q, int R, const void *ktv, int n, int dk, float *s, int lds) { \
    const T *kt = (const T *)ktv;                                                                  \
    int j = 0;                                                                                     \
    for (; j + 32 <= n; j += 32) {                                                                 \
      int r = 0;                                                                                   \
      QK_BLOCK(T, LOADV(k), LOADV(k + HEED_KEY_PANEL * dk), _mm512_storeu_ps, _mm512_storeu_ps)                        \
    }                                                                                              \
    if (j < n) { /* 1..31 keys left: two masked vectors */                                         \
      __mmask16 m0 = tail_mask((size_t)(n - j)), m1 = tail_mask(n - j > 16 ? (size_t)(n - j - 16) : 0); \
      int r = 0;                                                                                   \
      QK_BLOCK(T, LOADV_MASK(m0, k), LOADV_MASK(m1, k + HEED_KEY_PANEL * dk), MSTORE0, MSTORE1)                        \
    }                                                                                              \
  }
#define MSTORE0(p, v) _mm512_mask_storeu_ps(p, m0, v)
#define MSTORE1(p, v) _mm512_mask_storeu_ps(p, m1, v)

#define ATTN_PV_CORES(SUF, T, LOADV, LOADV_MASK) \
static void pv_##SUF(const float *p, int ldp, int R, const void *vv, int ldv, int n, int nc, float *o, int ldo) { \
  const T *v = (const T *)vv; \
  for (int c = 0; c < nc; c += 32) { \
    __mmask16 m1 = c + 32 <= nc ? (__mmask16)0xffff : 0; \
    int r = 0; \
    for (; r + 4 <= R; r += 4) { \
      float *o0 = o + (size_t)r * ldo + c, *o1 = o0 + ldo, *o2 = o1 + ldo, *o3 = o2 + ldo; \
      const float *p0 = p + (size_t)r * ldp, *p1 = p0 + ldp, *p2 = p1 + ldp, *p3 = p2 + ldp; \
      __m512 a0 = _mm512_loadu_ps(o0), a1 = _mm512_maskz_loadu_ps(m1, o0 + 16), b0 = _mm512_loadu_ps(o1), \
             b1 = _mm512_maskz_loadu_ps(m1, o1 + 16), c0 = _mm512_loadu_ps(o2), c1 = _mm512_maskz_loadu_ps(m1, o2 + 16), \
             d0 = _mm512_loadu_ps(o3), d1 = _mm512_maskz_loadu_ps(m1, o3 + 16); \
      for (int j = 0; j < n; j++) { \
        const T *vr = v + (size_t)j * ldv + c; \
        __m512 x0 = LOADV(vr), x1 = LOADV_MASK(m1, vr + 16), w; \
        w = _mm512_set1_ps(p0[j]), a0 = _mm512_fmadd_ps(w, x0, a0), a1 = _mm512_fmadd_ps(w, x1, a1); \
        w = _mm512_set1_ps(p1[j]), b0 = _mm512_fmadd_ps(w, x0, b0), b1 = _mm512_fmadd_ps(w, x1, b1); \
        w = _mm512_set1_ps(p2[j]), c0 = _mm512_fmadd_ps(w, x0, c0), c1 = _mm512_fmadd_ps(w, x1, c1); \
        w = _mm512_set1_ps(p3[j]), d0 = _mm512_fmadd_ps(w, x0, d0), d1 = _mm512_fmadd_ps(w, x1, d1); \
      } \
      _mm512_storeu_ps(o0, a0), _mm512_mask_storeu_ps(o0 + 16, m1, a1); \
      _mm512_storeu_ps(o1, b0), _mm512_mask_storeu_ps(o1 + 16, m1, b1); \
      _mm512_storeu_ps(o2, c0), _mm512_mask_storeu_ps(o2 + 16, m1, c1); \
      _mm512_storeu_ps(o3, d0), _mm512_mask_storeu_ps(o3 + 16, m1, d1); \
    } \
    for (; r < R; r++) { \
      float *o0 = o + (size_t)r * ldo + c; \
      const float *p0 = p + (size_t)r * ldp; \
      __m512 a0 = _mm512_loadu_ps(o0), a1 = _mm512_maskz_loadu_ps(m1, o0 + 16); \
      for (int j = 0; j < n; j++) { \
        __m512 w = _mm512_set1_ps(p0[j]); \
        a0 = _mm512_fmadd_ps(w, LOADV(v + (size_t)j * ldv + c), a0); \
        a1 = _mm512_fmadd_ps(w, LOADV_MASK(m1, v + (size_t)j * ldv + c + 16), a1); \
      } \
      _mm512_storeu_ps(o0, a0), _mm512_mask_storeu_ps(o0 + 16, m1, a1); \
    } \
  } \
} \

ATTN_QK_CORES(core_f32, float, load16_f32, mload16_f32)
ATTN_QK_CORES(core_f16, heed_f16, load16_f16, mload16_f16)
ATTN_QK_CORES(core_bf16, heed_bf16, load16_bf16, mload16_bf16)
ATTN_PV_CORES(core_f32, float, load16_f32, mload16_f32)
ATTN_PV_CORES(core_f16, heed_f16, load16_f16, mload16_f16)
ATTN_PV_CORES(core_bf16, heed_bf16, load16_bf16, mload16_bf16)

/* Many-rows path: a run of 16 converted into an L1 buffer. */
#define CVT16(SUF, T) \
  static inline void cvt16_##SUF(const uint8_t *run, float *y) { _mm512_storeu_ps(y, load16_##SUF((const T *)run)); }
CVT16(f16, heed_f16)
CVT16(bf16, heed_bf16)


HEED_ATTN_KERNELS_F32(avx512)
HEED_ATTN_KERNELS(f16, avx512)
HEED_ATTN_KERNELS(bf16, avx512)

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

void heed_cpu_register_attn_avx512(heed_kernel_table *t) { HEED_ATTN_REGISTER(t, avx512, HEED_ISA_AVX512); }
