/* backends/cpu/avx2/vocab_avx2.c - vocabulary-row kernels (heed/kernels.h)
 * with AVX2/FMA: two vectors of 8 per step, the kernel's exp_neg, scalar tails. */
#include <math.h>

#include "backends/cpu/avx2/avx2_common.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/vocab_maxsum.h"

/* 2^t for t <= 0 (0 below -125): n = round(t) by the 1.5 * 2^23 trick, whose
 * low bits then hold n for the exponent; 2^(t - n) by its degree-6 Taylor
 * polynomial in (t - n) ln 2 (relative error < 1.3e-7). Fewer operations
 * than exp_neg, which matters here: a vocabulary row is one exp per logit.
 * Not for attention: scaling by log2(e) first costs |t| * 2^-24 of absolute
 * accuracy, which exp_neg's two-step reduction keeps (test_kernels holds it
 * to 4e-7 relative at arguments near -87). */
static inline __m256 exp2_neg(__m256 t) {
  const __m256 magic = _mm256_set1_ps(12582912.0f), lo = _mm256_set1_ps(-125.0f);
  __m256 under = _mm256_cmp_ps(t, lo, _CMP_LT_OQ);
  t = _mm256_max_ps(t, lo);
  __m256 nm = _mm256_add_ps(t, magic);
  __m256 f = _mm256_sub_ps(t, _mm256_sub_ps(nm, magic));
  __m256 p = _mm256_set1_ps(1.5403530e-4f);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.3333558e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.6181291e-3f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.5504109e-2f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.4022651e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.9314718e-1f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_slli_epi32(_mm256_castps_si256(nm), 23);
  return _mm256_andnot_ps(under, _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e)));
}

/* The max alone (arg NULL): no index tracking. */
static float max_only_avx2(const float *x, size_t n, int *bad) {
  const __m256 inf = _mm256_set1_ps(INFINITY);
  __m256 m[4] = {_mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY), _mm256_set1_ps(-INFINITY)};
  __m256 badv = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; u++) {
      __m256 a = _mm256_loadu_ps(x + i + 8 * u);
      badv = _mm256_or_ps(badv, _mm256_cmp_ps(a, inf, _CMP_NLT_UQ));
      m[u] = _mm256_max_ps(m[u], a); /* NaN lanes keep m: they are reported through bad */
    }
  __m256 mm = _mm256_max_ps(_mm256_max_ps(m[0], m[1]), _mm256_max_ps(m[2], m[3]));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(mm), _mm256_extractf128_ps(mm, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  float r = _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1)));
  int b = _mm256_movemask_ps(badv) != 0;
  for (; i < n; i++) {
    b |= isnan(x[i]) || x[i] == INFINITY;
    if (x[i] > r) r = x[i];
  }
  if (b) *bad = 1;
  return r;
}

/* With the first argmax: blocks of 256 by the max alone; a block whose max
 * beats the best so far is scanned again, from L1, for the first index of
 * it. The best rises a few times in a row, so the index costs nothing
 * per value (a running argmax would: two blends and a compare per vector). */
static float vocab_max_avx2(const float *x, size_t n, size_t *arg, int *bad) {
  if (!arg) return max_only_avx2(x, n, bad);
  float best = -INFINITY;
  size_t a = 0;
  for (size_t i = 0; i < n; i += 256) {
    const size_t e = i + 256 < n ? i + 256 : n;
    const float bm = max_only_avx2(x + i, e - i, bad);
    if (bm > best) { /* the first index of bm: eight at a time */
      best = bm;
      const __m256 vb = _mm256_set1_ps(bm);
      size_t j = i;
      unsigned hit = 0;
      for (; j + 8 <= e && !(hit = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + j), vb, _CMP_EQ_OQ))); j += 8) {
      }
      if (hit) a = j + (unsigned)__builtin_ctz(hit);
      else
        for (; j < e; j++)
          if (x[j] == bm) {
            a = j;
            break;
          }
    }
  }
  *arg = best == -INFINITY ? 0 : a;
  return best;
}

static float vocab_sumexp_avx2(const float *x, size_t n, float m, float s, float thr) {
  const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(s * 1.44269504f), vt = _mm256_set1_ps(thr);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  size_t i = 0;
  for (; i + 32 <= n; i += 32) /* four independent exps in flight: the polynomial is a long chain */
    for (int u = 0; u < 4; u++) {
      __m256 a = _mm256_loadu_ps(x + i + 8 * u);
      __m256 e = exp2_neg(_mm256_mul_ps(_mm256_sub_ps(a, vm), vs));
      acc[u] = _mm256_add_ps(acc[u], _mm256_and_ps(e, _mm256_cmp_ps(a, vt, _CMP_GE_OQ)));
    }
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(x + i);
    __m256 e = exp2_neg(_mm256_mul_ps(_mm256_sub_ps(a, vm), vs));
    acc[0] = _mm256_add_ps(acc[0], _mm256_and_ps(e, _mm256_cmp_ps(a, vt, _CMP_GE_OQ)));
  }
  float tot = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; i++)
    if (x[i] >= thr) tot += expf((x[i] - m) * s);
  return tot;
}

/* Schraudolph's exp (heed/kernels.h, vocab_sumexp_bound): the bits of
 * max((x - m) s log2(e) 2^23 + 127 2^23, 2^23) as an integer. */
static float vocab_sumexp_bound_avx2(const float *x, size_t n, float m, float s, float thr) {
  const __m256 vm = _mm256_set1_ps(m), vk = _mm256_set1_ps(s * 1.44269504f * 8388608.0f),
               vb = _mm256_set1_ps(127.0f * 8388608.0f), lo = _mm256_set1_ps(8388608.0f), vt = _mm256_set1_ps(thr);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  size_t i = 0;
  for (; i + 32 <= n; i += 32)
    for (int u = 0; u < 4; u++) {
      __m256 a = _mm256_loadu_ps(x + i + 8 * u);
      __m256 y = _mm256_max_ps(_mm256_fmadd_ps(_mm256_sub_ps(a, vm), vk, vb), lo);
      __m256 e = _mm256_castsi256_ps(_mm256_cvttps_epi32(y));
      acc[u] = _mm256_add_ps(acc[u], _mm256_and_ps(e, _mm256_cmp_ps(a, vt, _CMP_GE_OQ)));
    }
  float tot = hsum256(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
  for (; i < n; i++)
    if (x[i] >= thr) tot += expf((x[i] - m) * s); /* exact terms are inside the bound too */
  return tot;
}

/* One read (heed/kernels.h, vocab_maxsum_bound): each block's lane maxima
 * and its Schraudolph sum against the reference in the same loop (one FMA
 * a term, vocab_maxsum.h); NaN and +inf by a plain sum of the values, which
 * either makes NaN or +inf (confirmed by a scalar look: a finite row can
 * overflow it); the rest is ms_block's. */
static inline __m256 bound_terms(__m256 a, __m256 vk, __m256 vc, __m256 lo) {
  return _mm256_castsi256_ps(_mm256_cvttps_epi32(_mm256_max_ps(_mm256_fmadd_ps(a, vk, vc), lo)));
}

/* The sum of block [i, e) against u's reference: vectors, then exact tail terms. */
static float block_bound_avx2(const float *x, size_t i, size_t e, const ms_run *u) {
  const __m256 vk = _mm256_set1_ps(u->K), vc = _mm256_set1_ps(u->c), lo = _mm256_set1_ps(8388608.0f);
  __m256 a0 = _mm256_setzero_ps(), a1 = a0;
  for (; i + 16 <= e; i += 16) {
    a0 = _mm256_add_ps(a0, bound_terms(_mm256_loadu_ps(x + i), vk, vc, lo));
    a1 = _mm256_add_ps(a1, bound_terms(_mm256_loadu_ps(x + i + 8), vk, vc, lo));
  }
  if (i + 8 <= e) a0 = _mm256_add_ps(a0, bound_terms(_mm256_loadu_ps(x + i), vk, vc, lo)), i += 8;
  float t = hsum256(_mm256_add_ps(a0, a1));
  for (; i < e; i++) t += ms_term(u, x[i]);
  return t;
}

static float vocab_maxsum_bound_avx2(const float *x, size_t n, float s, float *z, int *bad, float *bmax) {
  const __m256 lo = _mm256_set1_ps(8388608.0f);
  __m256 sv = _mm256_setzero_ps(); /* the values' sum: NaN or +inf if one is */
  ms_run u = ms_start(s);
  const __m256 vk = _mm256_set1_ps(u.K);
  const size_t pe = n > MS_PREFETCH ? n - MS_PREFETCH : 0; /* prefetch inside the row only */
  int b = 0;
  for (size_t i = 0; i < n; i += MS_BLOCK) {
    const size_t e = i + MS_BLOCK < n ? i + MS_BLOCK : n;
    const __m256 vc = _mm256_set1_ps(u.c);
    __m256 m0 = _mm256_set1_ps(-INFINITY), m1 = m0, a0 = _mm256_setzero_ps(), a1 = a0;
    size_t j = i;
    for (; j + 16 <= e; j += 16) {
      if (j < pe) _mm_prefetch((const char *)(x + j + MS_PREFETCH), _MM_HINT_T0);
      __m256 p = _mm256_loadu_ps(x + j), q = _mm256_loadu_ps(x + j + 8);
      sv = _mm256_add_ps(sv, _mm256_add_ps(p, q));
      m0 = _mm256_max_ps(m0, p), m1 = _mm256_max_ps(m1, q);
      a0 = _mm256_add_ps(a0, bound_terms(p, vk, vc, lo));
      a1 = _mm256_add_ps(a1, bound_terms(q, vk, vc, lo));
    }
    __m256 mm = _mm256_max_ps(m0, m1);
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(mm), _mm256_extractf128_ps(mm, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    if (!ms_block(&u, x, i, j, e, _mm_cvtss_f32(_mm_max_ss(h, _mm_shuffle_ps(h, h, 1))), hsum256(_mm256_add_ps(a0, a1)),
                  &b, bmax, block_bound_avx2))
      return heed_cpu_vocab_maxsum_bound_ref(x, n, s, z, bad, bmax);
  }
  return ms_finish(&u, x, n, hsum256(sv), b, bad, z);
}

static float vocab_weights_avx2(const float *x, size_t n, float m, float s, float thr, float scale, float *w) {
  const __m256 vm = _mm256_set1_ps(m), vs = _mm256_set1_ps(s * 1.44269504f), vt = _mm256_set1_ps(thr),
               vc = _mm256_set1_ps(scale);
  __m256 s0 = _mm256_setzero_ps(), s1 = s0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 a = _mm256_loadu_ps(x + i), b = _mm256_loadu_ps(x + i + 8);
    __m256 ea = _mm256_mul_ps(exp2_neg(_mm256_mul_ps(_mm256_sub_ps(a, vm), vs)), vc);
    __m256 eb = _mm256_mul_ps(exp2_neg(_mm256_mul_ps(_mm256_sub_ps(b, vm), vs)), vc);
    ea = _mm256_and_ps(ea, _mm256_cmp_ps(a, vt, _CMP_GE_OQ));
    eb = _mm256_and_ps(eb, _mm256_cmp_ps(b, vt, _CMP_GE_OQ));
    _mm256_storeu_ps(w + i, ea), _mm256_storeu_ps(w + i + 8, eb);
    s0 = _mm256_add_ps(s0, ea), s1 = _mm256_add_ps(s1, eb);
  }
  float tot = hsum256(_mm256_add_ps(s0, s1));
  for (; i < n; i++) tot += (w[i] = x[i] >= thr ? expf((x[i] - m) * s) * scale : 0.0f);
  return tot;
}

static float vocab_residual_avx2(float *w, const float *q, size_t n, float ws, float qs) {
  const __m256 vws = _mm256_set1_ps(ws), vqs = _mm256_set1_ps(qs), z = _mm256_setzero_ps();
  __m256 s0 = z;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 r = _mm256_mul_ps(_mm256_loadu_ps(w + i), vws);
    if (q) r = _mm256_fnmadd_ps(_mm256_loadu_ps(q + i), vqs, r);
    r = _mm256_max_ps(r, z);
    _mm256_storeu_ps(w + i, r);
    s0 = _mm256_add_ps(s0, r);
  }
  float tot = hsum256(s0);
  for (; i < n; i++) {
    float r = q ? fmaf(-q[i], qs, w[i] * ws) : w[i] * ws;
    tot += (w[i] = r > 0 ? r : 0.0f);
  }
  return tot;
}

static size_t vocab_collect_avx2(const float *x, size_t n, float thr, uint32_t *idx) {
  const __m256 vt = _mm256_set1_ps(thr);
  size_t c = 0, i = 0;
  for (; i + 32 <= n; i += 32) { /* a cut keeps few: skip 32 at a time, one test */
    __m256 g0 = _mm256_cmp_ps(_mm256_loadu_ps(x + i), vt, _CMP_GE_OQ),
           g1 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 8), vt, _CMP_GE_OQ),
           g2 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 16), vt, _CMP_GE_OQ),
           g3 = _mm256_cmp_ps(_mm256_loadu_ps(x + i + 24), vt, _CMP_GE_OQ);
    if (_mm256_testz_ps(_mm256_or_ps(_mm256_or_ps(g0, g1), _mm256_or_ps(g2, g3)), _mm256_castsi256_ps(_mm256_set1_epi32(-1))))
      continue;
    const __m256 g[4] = {g0, g1, g2, g3};
    for (int u = 0; u < 4; u++) {
      unsigned mask = (unsigned)_mm256_movemask_ps(g[u]);
      while (mask) {
        idx[c++] = (uint32_t)(i + 8 * (unsigned)u + (unsigned)__builtin_ctz(mask));
        mask &= mask - 1;
      }
    }
  }
  for (; i + 8 <= n; i += 8) {
    unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(x + i), vt, _CMP_GE_OQ));
    while (mask) {
      idx[c++] = (uint32_t)(i + (unsigned)__builtin_ctz(mask));
      mask &= mask - 1;
    }
  }
  for (; i < n; i++)
    if (x[i] >= thr) idx[c++] = (uint32_t)i;
  return c;
}

void heed_cpu_register_vocab_avx2(heed_kernel_table *t) { HEED_VOCAB_REGISTER(t, avx2, HEED_ISA_AVX2); }
