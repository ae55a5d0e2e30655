/* backends/cpu/attn_wrap.h - the attention kernels every ISA file builds from
 * its register-blocked cores. Internal to backends/cpu.
 *
 * An ISA file defines, for each storage type SUF in f32, f16, bf16:
 *   qk_core_SUF(q, R, kt, n, dk, s, lds)  and  pv_core_SUF(p, ldp, R, v, n, dv, o)
 * that read K panels / V rows of that type directly (converting in registers),
 * and cvt_SUF(x, y, count) that converts count contiguous elements to f32. Then:
 *   few rows (decode, R <= 8): the typed cores, each element converted once;
 *   many rows (prefill): a chunk of 16 rows converted once into an L1 buffer,
 *   then the f32 cores, so an element is not converted once per row block. */
#ifndef HEED_ATTN_WRAP_H
#define HEED_ATTN_WRAP_H

#include <math.h>

#include "heed/attention.h"
#include "heed/kernels.h"

#define HEED_ATTN_FEW_ROWS 8
#define HEED_ATTN_CHUNK 16

#define HEED_ATTN_KERNELS(SUF, ISA, ESZ, LOAD1)                                                          \
  static void attn_qk_##SUF##_##ISA(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    if (R <= HEED_ATTN_FEW_ROWS) {                                                                      \
      qk_core_##SUF(q, R, kt, n, dk, s, lds);                                                           \
      return;                                                                                           \
    }                                                                                                   \
    float buf[HEED_KEY_PANEL * HEED_HEAD_DIM_MAX] __attribute__((aligned(64)));                         \
    for (int j = 0; j < n; j += HEED_KEY_PANEL) { /* one panel [dk][16] at a time */                    \
      int m = n - j < HEED_KEY_PANEL ? n - j : HEED_KEY_PANEL;                                          \
      const char *src_ = (const char *)kt + (size_t)j * dk * ESZ;                                       \
      if (m == HEED_KEY_PANEL)                                                                          \
        cvt_##SUF(src_, buf, (size_t)dk * HEED_KEY_PANEL);                                              \
      else /* a last, partial panel: only the keys that exist */                                       \
        for (int d_ = 0; d_ < dk; d_++)                                                                 \
          for (int c_ = 0; c_ < m; c_++)                                                                \
            buf[d_ * HEED_KEY_PANEL + c_] = LOAD1(((const T_##SUF *)src_)[d_ * HEED_KEY_PANEL + c_]);   \
      qk_core_f32(q, R, buf, m, dk, s + j, lds);                                                        \
    }                                                                                                   \
  }                                                                                                     \
  static void attn_pv_##SUF##_##ISA(const float *p, int ldp, int R, const void *v, int n, int dv, float *o) { \
    if (R <= HEED_ATTN_FEW_ROWS) {                                                                      \
      pv_core_##SUF(p, ldp, R, v, n, dv, o);                                                            \
      return;                                                                                           \
    }                                                                                                   \
    float buf[HEED_ATTN_CHUNK * HEED_HEAD_DIM_MAX] __attribute__((aligned(64)));                        \
    for (int j = 0; j < n; j += HEED_ATTN_CHUNK) {                                                      \
      int m = n - j < HEED_ATTN_CHUNK ? n - j : HEED_ATTN_CHUNK;                                        \
      cvt_##SUF((const char *)v + (size_t)j * dv * ESZ, buf, (size_t)m * dv);                           \
      pv_core_f32(p + j, ldp, R, buf, m, dv, o);                                                        \
    }                                                                                                   \
  }

/* f32 storage needs no conversion: the f32 cores directly. */
#define HEED_ATTN_KERNELS_F32(ISA)                                                                       \
  static void attn_qk_f32_##ISA(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    qk_core_f32(q, R, kt, n, dk, s, lds);                                                               \
  }                                                                                                     \
  static void attn_pv_f32_##ISA(const float *p, int ldp, int R, const void *v, int n, int dv, float *o) { \
    pv_core_f32(p, ldp, R, v, n, dv, o);                                                                \
  }

/* The storage type of each suffix, for the partial-panel conversion. */
typedef heed_f16 T_f16;
typedef heed_bf16 T_bf16;

/* The two ends of softmax_row every ISA shares (the contract is in
 * heed/kernels.h). With mx the new running max: a row that has seen only
 * masked scores is zeroed and keeps m = -inf, l = 0 (returns 1); otherwise the
 * ISA's exp pass writes s and sums it to tot, and heed_softmax_close folds that
 * into m and l and returns the factor for the row's output. */
static inline int heed_softmax_all_masked(float *s, int n, float mx) {
  if (mx != -INFINITY) return 0;
  for (int j = 0; j < n; j++) s[j] = 0;
  return 1;
}
static inline float heed_softmax_close(float *m, float *l, float mx, float tot) {
  float alpha = expf(*m - mx);
  *l = *l * alpha + tot;
  *m = mx;
  return alpha;
}

#define HEED_ATTN_REGISTER(t, ISA, LEVEL)                    \
  do {                                                       \
    HEED_SLOT_SET(t, ATTN_QK, F32, attn_qk_f32_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_QK, F16, attn_qk_f16_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_QK, BF16, attn_qk_bf16_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_PV, F32, attn_pv_f32_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_PV, F16, attn_pv_f16_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_PV, BF16, attn_pv_bf16_##ISA, LEVEL); \
    HEED_SLOT_SET(t, SOFTMAX_ROW, F32, softmax_row_##ISA, LEVEL); \
  } while (0)

#endif
