/* backends/cpu/neon/attn_neon.c - attention micro-kernels for AArch64 NEON.
 * The avx2 blocking with 4-wide vectors. Wrappers and registration: attn_wrap.h. */
#include <math.h>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/neon/neon_common.h"
#include "heed/attention.h"
#include "heed/dtype.h"

#include "backends/cpu/attn_wrap.h"

/* Register-blocked cores per storage type (float and quantized): qk 4 rows x 16 keys, pv 2 rows x 16 columns. */

/* q.K^T as an outer product over the key panels: per channel, a panel's 16
 * keys (4 vectors) times 4 query values, 16 accumulators. A last, partial
 * panel is done one key at a time. */
#define ATTN_QK_CORES(SUF)                                                                         \
  static void qk_core_##SUF(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    int j = 0;                                                                                     \
    for (; j + 16 <= n; j += 16)                                                                   \
      for (int r = 0; r < R; r += 4) {                                                             \
        int nr = R - r < 4 ? R - r : 4;                                                            \
        const float *q0 = q + (size_t)r * dk;                                                      \
        const float *q1 = nr > 1 ? q0 + dk : q0, *q2 = nr > 2 ? q0 + 2 * dk : q0, *q3 = nr > 3 ? q0 + 3 * dk : q0; \
        float32x4_t acc[4][4];                                                                     \
        for (int a = 0; a < 4; a++)                                                                \
          for (int b = 0; b < 4; b++) acc[a][b] = vdupq_n_f32(0);                                  \
        const uint8_t *k = HEED_K_RUN(kt, B16_##SUF, dk, j, 0);                                    \
        for (int d = 0; d < dk; d++, k += B16_##SUF) {                                             \
          float32x4_t x[4];                                                                        \
          ld16_##SUF(k, x);                                                                        \
          const float w[4] = {q0[d], q1[d], q2[d], q3[d]};                                         \
          for (int a = 0; a < 4; a++) {                                                            \
            acc[a][0] = vfmaq_n_f32(acc[a][0], x[0], w[a]), acc[a][1] = vfmaq_n_f32(acc[a][1], x[1], w[a]); \
            acc[a][2] = vfmaq_n_f32(acc[a][2], x[2], w[a]), acc[a][3] = vfmaq_n_f32(acc[a][3], x[3], w[a]); \
          }                                                                                        \
        }                                                                                          \
        for (int a = 0; a < nr; a++)                                                               \
          for (int b = 0; b < 4; b++) vst1q_f32(s + (size_t)(r + a) * lds + j + 4 * b, acc[a][b]); \
      }                                                                                            \
    qk_tail_##SUF(q, R, kt, j, n, dk, s, lds);                                                     \
  }

#define ATTN_PV_CORES(SUF) \
static void pv_core_##SUF(const float *p, int ldp, int R, const void *v, int ldv, int n, int nc, float *o, int ldo) { \
  const size_t vstride = (size_t)(ldv / 16) * B16_##SUF; \
  for (int c = 0; c < nc; c += 16) { \
    const uint8_t *vc = HEED_V_RUN(v, B16_##SUF, ldv, 0, c); \
    for (int r = 0; r < R; r += 2) { \
      int two = r + 1 < R; \
      float *o0 = o + (size_t)r * ldo + c, *o1 = two ? o0 + ldo : o0; \
      const float *p0 = p + (size_t)r * ldp, *p1 = two ? p0 + ldp : p0; \
      float32x4_t a0 = vld1q_f32(o0), a1 = vld1q_f32(o0 + 4), a2 = vld1q_f32(o0 + 8), a3 = vld1q_f32(o0 + 12); \
      float32x4_t b0 = vld1q_f32(o1), b1 = vld1q_f32(o1 + 4), b2 = vld1q_f32(o1 + 8), b3 = vld1q_f32(o1 + 12); \
      const uint8_t *vr = vc; \
      for (int j = 0; j < n; j++, vr += vstride) { \
        float32x4_t x[4]; \
        ld16_##SUF(vr, x); \
        float w = p0[j], u = p1[j]; \
        a0 = vfmaq_n_f32(a0, x[0], w), a1 = vfmaq_n_f32(a1, x[1], w), a2 = vfmaq_n_f32(a2, x[2], w), a3 = vfmaq_n_f32(a3, x[3], w); \
        b0 = vfmaq_n_f32(b0, x[0], u), b1 = vfmaq_n_f32(b1, x[1], u), b2 = vfmaq_n_f32(b2, x[2], u), b3 = vfmaq_n_f32(b3, x[3], u); \
      } \
      vst1q_f32(o0, a0), vst1q_f32(o0 + 4, a1), vst1q_f32(o0 + 8, a2), vst1q_f32(o0 + 12, a3); \
      if (two) vst1q_f32(o1, b0), vst1q_f32(o1 + 4, b1), vst1q_f32(o1 + 8, b2), vst1q_f32(o1 + 12, b3); \
    } \
  } \
}

/* Many-rows path: a run converted into an L1 buffer. */
#define ATTN_CVT16(SUF)                                          \
  static inline __attribute__((unused)) void cvt16_##SUF(const uint8_t *run, float *y) { \
    float32x4_t x[4];                                            \
    ld16_##SUF(run, x);                                          \
    for (int i = 0; i < 4; i++) vst1q_f32(y + 4 * i, x[i]);      \
  }

#define ATTN_TYPE(SUF, B16) ATTN_QK_CORES(SUF) ATTN_PV_CORES(SUF) ATTN_CVT16(SUF)
HEED_KV_TYPES(ATTN_TYPE)

HEED_ATTN_KERNELS_F32(neon)
HEED_ATTN_KERNELS(f16, neon)
HEED_ATTN_KERNELS(bf16, neon)
HEED_ATTN_KERNELS(q8, neon)
HEED_ATTN_KERNELS(q4, neon)
HEED_ATTN_KERNELS(e4m3, neon)
HEED_ATTN_KERNELS(e5m2, neon)

static float softmax_row_neon(float *s, int n, float *m, float *l) {
  float32x4_t vm = vdupq_n_f32(-INFINITY);
  int j = 0;
  for (; j + 4 <= n; j += 4) vm = vmaxq_f32(vm, vld1q_f32(s + j));
  float mx = vmaxvq_f32(vm);
  for (; j < n; j++) mx = s[j] > mx ? s[j] : mx;
  if (*m > mx) mx = *m;
  if (heed_softmax_all_masked(s, n, mx)) return 1.0f;
  float32x4_t vmx = vdupq_n_f32(mx), sum = vdupq_n_f32(0);
  for (j = 0; j + 4 <= n; j += 4) {
    float32x4_t e = exp_neg(vsubq_f32(vld1q_f32(s + j), vmx));
    vst1q_f32(s + j, e);
    sum = vaddq_f32(sum, e);
  }
  float tot = vaddvq_f32(sum);
  for (; j < n; j++) tot += (s[j] = expf(s[j] - mx));
  return heed_softmax_close(m, l, mx, tot);
}

void heed_cpu_register_attn_neon(heed_kernel_table *t) {
  HEED_ATTN_REGISTER(t, neon, HEED_ISA_NEON);
  HEED_ATTN_REGISTER_QUANT(t, neon, HEED_ISA_NEON);
}
