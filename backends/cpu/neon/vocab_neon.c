/* backends/cpu/neon/vocab_neon.c - vocabulary-row kernels (heed/kernels.h)
 * with NEON: two vectors of 4 per step, the kernel's exp_neg, scalar tails. */
#include <math.h>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/vocab_maxsum.h"
#include "backends/cpu/neon/neon_common.h"

static float vocab_max_neon(const float *x, size_t n, size_t *arg, int *bad) {
  size_t unused;
  if (!arg) arg = &unused; /* the index is tracked anyway */
  float32x4_t m0 = vdupq_n_f32(-INFINITY), m1 = m0;
  const float32x4_t inf = vdupq_n_f32(INFINITY);
  static const uint32_t lane[4] = {0, 1, 2, 3};
  uint32x4_t i0 = vdupq_n_u32(0), i1 = i0, c0 = vld1q_u32(lane), c1 = vaddq_u32(c0, vdupq_n_u32(4));
  uint32x4_t badv = vdupq_n_u32(0);
  const uint32x4_t step = vdupq_n_u32(8);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
    /* NaN or +inf: not (x < inf). */
    badv = vorrq_u32(badv, vmvnq_u32(vandq_u32(vcltq_f32(a, inf), vcltq_f32(b, inf))));
    uint32x4_t ga = vcgtq_f32(a, m0), gb = vcgtq_f32(b, m1);
    m0 = vbslq_f32(ga, a, m0), m1 = vbslq_f32(gb, b, m1);
    i0 = vbslq_u32(ga, c0, i0), i1 = vbslq_u32(gb, c1, i1);
    c0 = vaddq_u32(c0, step), c1 = vaddq_u32(c1, step);
  }
  float mv[8];
  uint32_t iv[8];
  vst1q_f32(mv, m0), vst1q_f32(mv + 4, m1), vst1q_u32(iv, i0), vst1q_u32(iv + 4, i1);
  float m = -INFINITY;
  size_t a = 0;
  for (int l = 0; l < 8; l++)
    if (mv[l] > m || (mv[l] == m && mv[l] != -INFINITY && iv[l] < a)) m = mv[l], a = iv[l];
  int b = vmaxvq_u32(badv) != 0;
  for (; i < n; i++) {
    b |= isnan(x[i]) || x[i] == INFINITY;
    if (x[i] > m) m = x[i], a = i;
  }
  if (b) *bad = 1;
  *arg = m == -INFINITY ? 0 : a;
  return m;
}

static inline float32x4_t keep_exp(float32x4_t a, float32x4_t vm, float32x4_t vs, float32x4_t vt) {
  float32x4_t e = exp_neg(vmulq_f32(vsubq_f32(a, vm), vs));
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(e), vcgeq_f32(a, vt)));
}

static float vocab_sumexp_neon(const float *x, size_t n, float m, float s, float thr) {
  const float32x4_t vm = vdupq_n_f32(m), vs = vdupq_n_f32(s), vt = vdupq_n_f32(thr);
  float32x4_t s0 = vdupq_n_f32(0), s1 = s0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vaddq_f32(s0, keep_exp(vld1q_f32(x + i), vm, vs, vt));
    s1 = vaddq_f32(s1, keep_exp(vld1q_f32(x + i + 4), vm, vs, vt));
  }
  float tot = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; i++)
    if (x[i] >= thr) tot += expf((x[i] - m) * s);
  return tot;
}

/* Schraudolph's exp (heed/kernels.h, vocab_sumexp_bound). */
static inline float32x4_t exp_bound(float32x4_t a, float32x4_t vm, float32x4_t vk, float32x4_t vb, float32x4_t lo) {
  return vreinterpretq_f32_s32(vcvtq_s32_f32(vmaxq_f32(vfmaq_f32(vb, vsubq_f32(a, vm), vk), lo)));
}

static float vocab_sumexp_bound_neon(const float *x, size_t n, float m, float s, float thr) {
  const float32x4_t vm = vdupq_n_f32(m), vk = vdupq_n_f32(s * 1.44269504f * 8388608.0f),
                    vb = vdupq_n_f32(127.0f * 8388608.0f), lo = vdupq_n_f32(8388608.0f), vt = vdupq_n_f32(thr);
  float32x4_t s0 = vdupq_n_f32(0), s1 = s0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t a = vld1q_f32(x + i), b = vld1q_f32(x + i + 4);
    uint32x4_t ka = vcgeq_f32(a, vt), kb = vcgeq_f32(b, vt);
    s0 = vaddq_f32(s0, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(exp_bound(a, vm, vk, vb, lo)), ka)));
    s1 = vaddq_f32(s1, vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(exp_bound(b, vm, vk, vb, lo)), kb)));
  }
  float tot = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; i++)
    if (x[i] >= thr) tot += expf((x[i] - m) * s); /* exact terms are inside the bound too */
  return tot;
}

/* One read (heed/kernels.h, vocab_maxsum_bound): each block's lane maxima
 * and bounded sum in one loop (one FMA a term, vocab_maxsum.h); the rest is
 * ms_block's. NEON's max keeps a NaN, so a block's max is NaN or +inf when
 * one of its values is: no test per value. */

static inline float32x4_t bound_terms(float32x4_t a, float32x4_t vk, float32x4_t vc, float32x4_t lo) {
  return vreinterpretq_f32_s32(vcvtq_s32_f32(vmaxq_f32(vfmaq_f32(vc, a, vk), lo)));
}

static float block_bound_neon(const float *x, size_t i, size_t e, const ms_run *u) {
  const float32x4_t vk = vdupq_n_f32(u->K), vc = vdupq_n_f32(u->c), lo = vdupq_n_f32(8388608.0f);
  float32x4_t a0 = vdupq_n_f32(0), a1 = a0;
  for (; i + 8 <= e; i += 8) {
    a0 = vaddq_f32(a0, bound_terms(vld1q_f32(x + i), vk, vc, lo));
    a1 = vaddq_f32(a1, bound_terms(vld1q_f32(x + i + 4), vk, vc, lo));
  }
  float t = vaddvq_f32(vaddq_f32(a0, a1));
  for (; i < e; i++) t += ms_term(u, x[i]);
  return t;
}

static float vocab_maxsum_bound_neon(const float *x, size_t n, float s, float *z, int *bad, float *bmax) {
  const float32x4_t lo = vdupq_n_f32(8388608.0f);
  ms_run u = ms_start(s);
  const float32x4_t vk = vdupq_n_f32(u.K);
  const size_t pe = n > MS_PREFETCH ? n - MS_PREFETCH : 0; /* prefetch inside the row only */
  int b = 0;
  for (size_t i = 0; i < n; i += MS_BLOCK) {
    const size_t e = i + MS_BLOCK < n ? i + MS_BLOCK : n;
    const float32x4_t vc = vdupq_n_f32(u.c);
    float32x4_t m0 = vdupq_n_f32(-INFINITY), m1 = m0, a0 = vdupq_n_f32(0), a1 = a0;
    size_t j = i;
    for (; j + 8 <= e; j += 8) {
      if (j < pe && !(j & 15)) __builtin_prefetch(x + j + MS_PREFETCH);
      float32x4_t p = vld1q_f32(x + j), q = vld1q_f32(x + j + 4);
      m0 = vmaxq_f32(m0, p), m1 = vmaxq_f32(m1, q);
      a0 = vaddq_f32(a0, bound_terms(p, vk, vc, lo));
      a1 = vaddq_f32(a1, bound_terms(q, vk, vc, lo));
    }
    const float bm = vmaxvq_f32(vmaxq_f32(m0, m1)); /* NaN if a value was */
    if (!(bm < INFINITY)) b = 1;                    /* NaN or +inf */
    if (!ms_block(&u, x, i, j, e, bm, vaddvq_f32(vaddq_f32(a0, a1)), &b, bmax, block_bound_neon))
      return heed_cpu_vocab_maxsum_bound_ref(x, n, s, z, bad, bmax);
  }
  return ms_finish(&u, x, n, 0.0f, b, bad, z);
}

static float vocab_weights_neon(const float *x, size_t n, float m, float s, float thr, float scale, float *w) {
  const float32x4_t vm = vdupq_n_f32(m), vs = vdupq_n_f32(s), vt = vdupq_n_f32(thr);
  float32x4_t s0 = vdupq_n_f32(0), s1 = s0;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t a = vmulq_n_f32(keep_exp(vld1q_f32(x + i), vm, vs, vt), scale);
    float32x4_t b = vmulq_n_f32(keep_exp(vld1q_f32(x + i + 4), vm, vs, vt), scale);
    vst1q_f32(w + i, a), vst1q_f32(w + i + 4, b);
    s0 = vaddq_f32(s0, a), s1 = vaddq_f32(s1, b);
  }
  float tot = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; i++) tot += (w[i] = x[i] >= thr ? expf((x[i] - m) * s) * scale : 0.0f);
  return tot;
}

static float vocab_residual_neon(float *w, const float *q, size_t n, float ws, float qs) {
  const float32x4_t z = vdupq_n_f32(0);
  float32x4_t s0 = z;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    float32x4_t r = vmulq_n_f32(vld1q_f32(w + i), ws);
    if (q) r = vfmsq_n_f32(r, vld1q_f32(q + i), qs);
    r = vmaxq_f32(r, z);
    vst1q_f32(w + i, r);
    s0 = vaddq_f32(s0, r);
  }
  float tot = vaddvq_f32(s0);
  for (; i < n; i++) {
    float r = q ? fmaf(-q[i], qs, w[i] * ws) : w[i] * ws;
    tot += (w[i] = r > 0 ? r : 0.0f);
  }
  return tot;
}

static size_t vocab_collect_neon(const float *x, size_t n, float thr, uint32_t *idx) {
  const float32x4_t vt = vdupq_n_f32(thr);
  size_t c = 0, i = 0;
  for (; i + 16 <= n; i += 16) { /* a cut keeps few: skip 16 at a time, one test */
    uint32x4_t ge = vorrq_u32(vorrq_u32(vcgeq_f32(vld1q_f32(x + i), vt), vcgeq_f32(vld1q_f32(x + i + 4), vt)),
                              vorrq_u32(vcgeq_f32(vld1q_f32(x + i + 8), vt), vcgeq_f32(vld1q_f32(x + i + 12), vt)));
    if (vmaxvq_u32(ge) == 0) continue;
    for (int l = 0; l < 16; l++)
      if (x[i + l] >= thr) idx[c++] = (uint32_t)(i + l);
  }
  for (; i + 4 <= n; i += 4) {
    uint32x4_t ge = vcgeq_f32(vld1q_f32(x + i), vt);
    if (vmaxvq_u32(ge) == 0) continue;
    for (int l = 0; l < 4; l++)
      if (x[i + l] >= thr) idx[c++] = (uint32_t)(i + l);
  }
  for (; i < n; i++)
    if (x[i] >= thr) idx[c++] = (uint32_t)i;
  return c;
}

void heed_cpu_register_vocab_neon(heed_kernel_table *t) { HEED_VOCAB_REGISTER(t, neon, HEED_ISA_NEON); }
