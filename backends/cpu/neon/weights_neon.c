/* backends/cpu/neon/weights_neon.c - AArch64 weight kernels for the quantized
 * formats. Each chunk of 32 weights is decoded to two int8x16 halves of codes
 * (0..63, or Q8_0's signed ones: all fit int8, so no sign trick), an f32 scale
 * ws and the offset/min terms c0, c1 (see avx2/weights_x86.h: for a token with
 * block (d_a, q, s): y += d_a * (ws * sum u q + c0 s0 + c1 s1)). The integer
 * dot is sdot (vdotq_s32) where the CPU has dotprod - those kernels are built
 * with the +dotprod target in this file and registered only then - else
 * vmull_s8 + vpadalq_s16. F32/F16/BF16 keep the reference kernels. */
#include <arm_neon.h>
#include <string.h>

#include "backends/cpu/neon/neon_common.h"
#include "backends/cpu/weights_kernels.h"
#include "heed/dtype.h"

#define WN_INLINE static inline __attribute__((always_inline))

enum { WF_Q4_0, WF_Q4_1, WF_Q5_0, WF_Q5_1, WF_Q8_0, WF_Q4_K, WF_Q5_K, WF_Q6_K };
static const size_t wn_bytes[] = {18, 20, 22, 24, 34, 144, 176, 210};

static inline float wn_f16(const uint8_t *p) { return heed_f16_to_f32((heed_f16)(p[0] | p[1] << 8)); }

typedef struct wn_chunk {
  int8x16_t u0, u1;
  int s0, s1; /* Q6_K: the halves' scales */
  float ws, c0, c1;
} wn_chunk;

/* 0x10 in byte i where bit i of the 16 bits at p is set. */
WN_INLINE uint8x16_t wn_bits16(const uint8_t *p) {
  static const uint8_t sel[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
  uint8x16_t b = vcombine_u8(vdup_n_u8(p[0]), vdup_n_u8(p[1]));
  return vandq_u8(vtstq_u8(b, vld1q_u8(sel)), vdupq_n_u8(0x10));
}

WN_INLINE void wn_nib16(const uint8_t *p, wn_chunk *c) {
  uint8x16_t q = vld1q_u8(p);
  c->u0 = vreinterpretq_s8_u8(vandq_u8(q, vdupq_n_u8(0x0F)));
  c->u1 = vreinterpretq_s8_u8(vshrq_n_u8(q, 4));
}

WN_INLINE void wn_decode(const int f, const uint8_t *b, int j, wn_chunk *c) {
  switch (f) {
    case WF_Q4_0: c->ws = wn_f16(b), c->c0 = c->c1 = -8.0f * c->ws, wn_nib16(b + 2, c); break;
    case WF_Q4_1: c->ws = wn_f16(b), c->c0 = c->c1 = wn_f16(b + 2), wn_nib16(b + 4, c); break;
    case WF_Q5_0:
    case WF_Q5_1: {
      const int one = f == WF_Q5_1;
      c->ws = wn_f16(b);
      c->c0 = c->c1 = one ? wn_f16(b + 2) : -16.0f * c->ws;
      const uint8_t *qh = b + (one ? 4 : 2);
      wn_nib16(qh + 4, c);
      c->u0 = vorrq_s8(c->u0, vreinterpretq_s8_u8(wn_bits16(qh)));
      c->u1 = vorrq_s8(c->u1, vreinterpretq_s8_u8(wn_bits16(qh + 2)));
      break;
    }
    case WF_Q8_0:
      c->ws = wn_f16(b), c->c0 = c->c1 = 0;
      c->u0 = vld1q_s8((const int8_t *)b + 2), c->u1 = vld1q_s8((const int8_t *)b + 18);
      break;
    case WF_Q4_K:
    case WF_Q5_K: {
      const uint8_t *q = b + 4;
      int sc, m;
      if (j < 4) sc = q[j] & 63, m = q[j + 4] & 63;
      else sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
      c->ws = wn_f16(b) * (float)sc;
      c->c0 = c->c1 = -(wn_f16(b + 2) * (float)m);
      const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48) + 32 * (j / 2);
      const int8x16_t sh = vdupq_n_s8((int8_t)(-4 * (j & 1)));
      uint8x16_t l0 = vandq_u8(vshlq_u8(vld1q_u8(qs), sh), vdupq_n_u8(0x0F));
      uint8x16_t l1 = vandq_u8(vshlq_u8(vld1q_u8(qs + 16), sh), vdupq_n_u8(0x0F));
      if (f == WF_Q5_K) {
        const uint8x16_t bit = vdupq_n_u8((uint8_t)(1 << j));
        l0 = vorrq_u8(l0, vandq_u8(vtstq_u8(vld1q_u8(b + 16), bit), vdupq_n_u8(0x10)));
        l1 = vorrq_u8(l1, vandq_u8(vtstq_u8(vld1q_u8(b + 32), bit), vdupq_n_u8(0x10)));
      }
      c->u0 = vreinterpretq_s8_u8(l0), c->u1 = vreinterpretq_s8_u8(l1);
      break;
    }
    case WF_Q6_K: {
      const int h = j / 4, k = j % 4;
      const uint8_t *ql = b + 64 * h + 32 * (k & 1), *qh = b + 128 + 32 * h;
      const int8x16_t sl = vdupq_n_s8((int8_t)(-4 * (k >> 1))), shh = vdupq_n_s8((int8_t)(-2 * k));
      for (int half = 0; half < 2; half++) {
        uint8x16_t lo = vandq_u8(vshlq_u8(vld1q_u8(ql + 16 * half), sl), vdupq_n_u8(0x0F));
        uint8x16_t hi = vandq_u8(vshlq_u8(vld1q_u8(qh + 16 * half), shh), vdupq_n_u8(3));
        int8x16_t u = vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 4)));
        if (half) c->u1 = u;
        else c->u0 = u;
      }
      const int8_t *scs = (const int8_t *)(b + 192);
      c->s0 = scs[2 * j], c->s1 = scs[2 * j + 1];
      c->ws = wn_f16(b + 208);
      c->c0 = -32.0f * c->ws * (float)c->s0, c->c1 = -32.0f * c->ws * (float)c->s1;
      break;
    }
  }
}

/* The kernels of one integer dot (DOT(u, a): int32x4 sums of 4 products), suffix suf. */
#define WN_KERNELS(suf, DOT)                                                                                        \
  WN_INLINE void wn_rows_##suf(const int f, const int NT, const uint8_t *w, size_t rb, size_t nr, size_t cols,      \
                               const uint8_t *act, size_t as, float *y, size_t ldy) {                               \
    const int nsub = f >= WF_Q4_K ? 8 : 1;                                                                          \
    const size_t nch = cols / 32, bb = wn_bytes[f];                                                                 \
    for (size_t r = 0; r < nr; r++) {                                                                               \
      const uint8_t *row = w + r * rb;                                                                              \
      float32x4_t acc[4];                                                                                           \
      float corr[4];                                                                                                \
      for (int t = 0; t < NT; t++) acc[t] = vdupq_n_f32(0), corr[t] = 0;                                            \
      for (size_t ch = 0; ch < nch; ch++) {                                                                         \
        wn_chunk c;                                                                                                 \
        wn_decode(f, row + ch / nsub * bb, (int)(ch % nsub), &c);                                                   \
        for (int t = 0; t < NT; t++) {                                                                              \
          const heed_qa_block *a = (const heed_qa_block *)(act + (size_t)t * as) + ch;                              \
          int32x4_t i0 = DOT(c.u0, vld1q_s8(a->q)), i1 = DOT(c.u1, vld1q_s8(a->q + 16));                            \
          int32x4_t is = f == WF_Q6_K ? vmlaq_n_s32(vmulq_n_s32(i0, c.s0), i1, c.s1) : vaddq_s32(i0, i1);           \
          acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(is), c.ws * a->d);                                             \
          if (f != WF_Q8_0) corr[t] += a->d * (c.c0 * (float)a->s[0] + c.c1 * (float)a->s[1]);                      \
        }                                                                                                           \
      }                                                                                                             \
      for (int t = 0; t < NT; t++) y[(size_t)t * ldy + r] = vaddvq_f32(acc[t]) + corr[t];                           \
    }                                                                                                               \
  }                                                                                                                 \
  WN_FORMAT(suf, q4_0, WF_Q4_0)                                                                                     \
  WN_FORMAT(suf, q4_1, WF_Q4_1)                                                                                     \
  WN_FORMAT(suf, q5_0, WF_Q5_0)                                                                                     \
  WN_FORMAT(suf, q5_1, WF_Q5_1)                                                                                     \
  WN_FORMAT(suf, q8_0, WF_Q8_0)                                                                                     \
  WN_FORMAT(suf, q4_k, WF_Q4_K)                                                                                     \
  WN_FORMAT(suf, q5_k, WF_Q5_K)                                                                                     \
  WN_FORMAT(suf, q6_k, WF_Q6_K)                                                                                     \
  static void register_##suf(heed_weights_table *t) {                                                               \
    HEED_WSLOT_SET(t, Q4_0, wmm_q4_0_vec_##suf, wmm_q4_0_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q4_1, wmm_q4_1_vec_##suf, wmm_q4_1_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q5_0, wmm_q5_0_vec_##suf, wmm_q5_0_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q5_1, wmm_q5_1_vec_##suf, wmm_q5_1_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q8_0, wmm_q8_0_vec_##suf, wmm_q8_0_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q4_K, wmm_q4_k_vec_##suf, wmm_q4_k_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q5_K, wmm_q5_k_vec_##suf, wmm_q5_k_mat_##suf);                                                \
    HEED_WSLOT_SET(t, Q6_K, wmm_q6_k_vec_##suf, wmm_q6_k_mat_##suf);                                                \
  }

#define WN_FORMAT(suf, name, F)                                                                                     \
  static void wmm_##name##_vec_##suf(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,  \
                                     size_t nt, float *y, size_t ldy) {                                             \
    for (size_t t = 0; t < nt; t++)                                                                                 \
      wn_rows_##suf(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);   \
  }                                                                                                                 \
  static void wmm_##name##_mat_##suf(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,  \
                                     size_t nt, float *y, size_t ldy) {                                             \
    size_t t = 0;                                                                                                   \
    for (; t + 4 <= nt; t += 4)                                                                                     \
      wn_rows_##suf(F, 4, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);   \
    for (; t < nt; t++)                                                                                             \
      wn_rows_##suf(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);   \
  }

/* Without dotprod: widening multiplies, pairs then quads summed. */
WN_INLINE int32x4_t wn_dot_mull(int8x16_t u, int8x16_t a) {
  int16x8_t lo = vmull_s8(vget_low_s8(u), vget_low_s8(a));
  int16x8_t hi = vmull_high_s8(u, a);
  return vpaddq_s32(vpaddlq_s16(lo), vpaddlq_s16(hi));
}
WN_KERNELS(neon, wn_dot_mull)

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")
#define WN_DOT_SDOT(u, a) vdotq_s32(vdupq_n_s32(0), (u), (a))
WN_KERNELS(neon_sdot, WN_DOT_SDOT)
#pragma GCC pop_options

/* The gated activation, 4 lanes at a time, as glu_avx2 computes it: sigmoid(t)
 * = (t >= 0 ? 1 : z) / (1 + z), z = exp(-|t|); the last n % 4 from a
 * zero-padded copy through the same lanes. */
WN_INLINE float32x4_t glu4(float32x4_t x, float32x4_t u, int gelu) {
  const float32x4_t one = vdupq_n_f32(1.0f);
  float32x4_t t = x;
  if (gelu) t = vmulq_f32(x, vfmaq_f32(vdupq_n_f32(HEED_GELU_C1), vmulq_f32(x, x), vdupq_n_f32(HEED_GELU_C3)));
  const float32x4_t z = exp_neg(vnegq_f32(vabsq_f32(t)));
  const float32x4_t num = vbslq_f32(vcgeq_f32(t, vdupq_n_f32(0.0f)), one, z);
  return vmulq_f32(vmulq_f32(x, vdivq_f32(num, vaddq_f32(one, z))), u);
}

static void glu_neon(float *gate, const float *up, size_t n, int gelu) {
  size_t i = 0;
  for (; i + 4 <= n; i += 4) vst1q_f32(gate + i, glu4(vld1q_f32(gate + i), vld1q_f32(up + i), gelu));
  if (i < n) {
    float g[4] = {0}, u[4] = {0};
    memcpy(g, gate + i, (n - i) * sizeof(float)), memcpy(u, up + i, (n - i) * sizeof(float));
    vst1q_f32(g, glu4(vld1q_f32(g), vld1q_f32(u), gelu));
    memcpy(gate + i, g, (n - i) * sizeof(float));
  }
}

void heed_weights_register_neon(heed_weights_table *t) {
  register_neon(t);
  t->glu = glu_neon;
  t->glu_name = "glu_neon";
}
void heed_weights_register_neon_dotprod(heed_weights_table *t) { register_neon_sdot(t); } /* glu: neon's */
