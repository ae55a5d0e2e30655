/* backends/cpu/attn_wrap.h - the attention kernels every ISA file builds from
 * its register-blocked cores. Internal to backends/cpu.
 *
 * An ISA file defines, for each storage type SUF (kv_elem.h's list):
 *   qk_core_SUF(q, R, kt, n, dk, s, lds)              the attn_qk contract;
 *   pv_core_SUF(p, ldp, R, v, ldv, n, nc, o, ldo)     attn_pv with V rows ldv
 *                                                      elements apart, o rows ldo;
 *   cvt16_SUF(run, y)                                  16 elements to f32.
 * Both cores read the stored type directly (converting in registers). Then:
 *   few rows (decode, R <= 8): the typed cores, each element converted once;
 *   many rows (prefill): a panel (or 16 V rows) converted once into an L1
 *   buffer, then the f32 cores, so an element is not converted once per row block. */
#ifndef HEED_ATTN_WRAP_H
#define HEED_ATTN_WRAP_H

#include <math.h>

#include "backends/cpu/kv_elem.h"
#include "heed/attention.h"
#include "heed/kernels.h"

/* Keys j0..n-1 of a last, partial panel, one key at a time: the tail every
 * ISA's qk core ends with (qk_tail_f32, qk_tail_f16, ...). */
#define HEED_X_QK_TAIL(SUF, B)                                                                         \
  static inline void qk_tail_##SUF(const float *q, int R, const void *kt, int j0, int n, int dk, float *s, int lds) { \
    for (int j = j0; j < n; j++)                                                                       \
      for (int r = 0; r < R; r++) {                                                                    \
        float acc = 0;                                                                                 \
        for (int d = 0; d < dk; d++) acc += q[(size_t)r * dk + d] * ld1_##SUF(HEED_K_RUN(kt, B, dk, j, d), j % 16); \
        s[(size_t)r * lds + j] = acc;                                                                  \
      }                                                                                                \
  }
HEED_KV_TYPES(HEED_X_QK_TAIL)
#undef HEED_X_QK_TAIL

#define HEED_ATTN_FEW_ROWS 8
#define HEED_ATTN_CHUNK 16

#define HEED_ATTN_KERNELS(SUF, ISA)                                                                     \
  static void attn_qk_##SUF##_##ISA(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    if (R <= HEED_ATTN_FEW_ROWS) {                                                                      \
      qk_core_##SUF(q, R, kt, n, dk, s, lds);                                                           \
      return;                                                                                           \
    }                                                                                                   \
    float buf[HEED_KEY_PANEL * HEED_HEAD_DIM_MAX] __attribute__((aligned(64)));                         \
    for (int j = 0; j < n; j += HEED_KEY_PANEL) { /* one panel [dk][16] at a time */                    \
      int m = n - j < HEED_KEY_PANEL ? n - j : HEED_KEY_PANEL;                                          \
      for (int d_ = 0; d_ < dk; d_++) {                                                                 \
        const uint8_t *run_ = HEED_K_RUN(kt, B16_##SUF, dk, j, d_);                                     \
        if (m == HEED_KEY_PANEL)                                                                        \
          cvt16_##SUF(run_, buf + d_ * HEED_KEY_PANEL);                                                 \
        else /* a last, partial panel: only the keys that exist */                                     \
          for (int c_ = 0; c_ < m; c_++) buf[d_ * HEED_KEY_PANEL + c_] = ld1_##SUF(run_, c_);           \
      }                                                                                                 \
      qk_core_f32(q, R, buf, m, dk, s + j, lds);                                                        \
    }                                                                                                   \
  }                                                                                                     \
  static void attn_pv_##SUF##_##ISA(const float *p, int ldp, int R, const void *v, int n, int nc, int dv, float *o) { \
    if (R <= HEED_ATTN_FEW_ROWS) {                                                                      \
      pv_core_##SUF(p, ldp, R, v, dv, n, nc, o, dv);                                                    \
      return;                                                                                           \
    }                                                                                                   \
    float buf[HEED_ATTN_CHUNK * HEED_HEAD_DIM_MAX] __attribute__((aligned(64)));                        \
    for (int j = 0; j < n; j += HEED_ATTN_CHUNK) {                                                      \
      int m = n - j < HEED_ATTN_CHUNK ? n - j : HEED_ATTN_CHUNK;                                        \
      for (int i_ = 0; i_ < m; i_++)                                                                    \
        for (int c_ = 0; c_ < nc; c_ += 16) cvt16_##SUF(HEED_V_RUN(v, B16_##SUF, dv, j + i_, c_), buf + i_ * nc + c_); \
      pv_core_f32(p + j, ldp, R, buf, nc, m, nc, o, dv);                                                \
    }                                                                                                   \
  }

/* f32 storage needs no conversion: the f32 cores directly. */
#define HEED_ATTN_KERNELS_F32(ISA)                                                                       \
  static void attn_qk_f32_##ISA(const float *q, int R, const void *kt, int n, int dk, float *s, int lds) { \
    qk_core_f32(q, R, kt, n, dk, s, lds);                                                               \
  }                                                                                                     \
  static void attn_pv_f32_##ISA(const float *p, int ldp, int R, const void *v, int n, int nc, int dv, float *o) { \
    pv_core_f32(p, ldp, R, v, dv, n, nc, o, dv);                                                        \
  }

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

#define HEED_ATTN_SET(t, SUF, TYPE, ISA, LEVEL)                \
  do {                                                         \
    HEED_SLOT_SET(t, ATTN_QK, TYPE, attn_qk_##SUF##_##ISA, LEVEL); \
    HEED_SLOT_SET(t, ATTN_PV, TYPE, attn_pv_##SUF##_##ISA, LEVEL); \
  } while (0)

/* The float types and the softmax; an ISA with quantized kernels adds them
 * with HEED_ATTN_REGISTER_QUANT. */
#define HEED_ATTN_REGISTER(t, ISA, LEVEL)                        \
  do {                                                           \
    HEED_ATTN_SET(t, f32, F32, ISA, LEVEL);                      \
    HEED_ATTN_SET(t, f16, F16, ISA, LEVEL);                      \
    HEED_ATTN_SET(t, bf16, BF16, ISA, LEVEL);                    \
    HEED_SLOT_SET(t, SOFTMAX_ROW, F32, softmax_row_##ISA, LEVEL); \
  } while (0)
#define HEED_ATTN_REGISTER_QUANT(t, ISA, LEVEL) \
  do {                                          \
    HEED_ATTN_SET(t, q8, Q8, ISA, LEVEL);       \
    HEED_ATTN_SET(t, q4, Q4, ISA, LEVEL);       \
    HEED_ATTN_SET(t, e4m3, E4M3, ISA, LEVEL);   \
    HEED_ATTN_SET(t, e5m2, E5M2, ISA, LEVEL);   \
  } while (0)

#endif
