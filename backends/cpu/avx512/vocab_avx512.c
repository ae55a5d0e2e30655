/* backends/cpu/avx512/vocab_avx512.c - vocabulary-row kernels (heed/kernels.h)
 * with AVX-512F: 16 lanes, masked tails, so no scalar remainder. */
#include <math.h>

#include "backends/cpu/avx512/avx512_common.h"
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/vocab_maxsum.h"


static float vocab_max_avx512(const float *x, size_t n, size_t *arg, int *bad) {
  size_t unused;
  if (!arg) arg = &unused; /* the index is tracked anyway */
  __m512 m0 = _mm512_set1_ps(-INFINITY);
  const __m512 inf = _mm512_set1_ps(INFINITY);
  __m512i i0 = _mm512_setzero_si512(), c0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  __mmask16 badm = 0;
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 a = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + i);
    badm |= _mm512_mask_cmp_ps_mask(k, a, inf, _CMP_NLT_UQ);
    __mmask16 g = _mm512_cmp_ps_mask(a, m0, _CMP_GT_OQ);
    m0 = _mm512_mask_mov_ps(m0, g, a);
    i0 = _mm512_mask_mov_epi32(i0, g, c0);
    c0 = _mm512_add_epi32(c0, step);
  }
  float m = _mm512_reduce_max_ps(m0);
  size_t a = 0;
  if (m != -INFINITY) {
    __mmask16 at = _mm512_cmp_ps_mask(m0, _mm512_set1_ps(m), _CMP_EQ_OQ);
    a = (size_t)(uint32_t)_mm512_mask_reduce_min_epu32(at, i0);
  }
  if (badm) *bad = 1;
  *arg = a;
  return m;
}

static float vocab_sumexp_avx512(const float *x, size_t n, float m, float s, float thr) {
  const __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(s), vt = _mm512_set1_ps(thr);
  __m512 s0 = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 a = _mm512_maskz_loadu_ps(k, x + i);
    k = _mm512_mask_cmp_ps_mask(k, a, vt, _CMP_GE_OQ);
    s0 = _mm512_mask_add_ps(s0, k, s0, exp_neg(_mm512_mul_ps(_mm512_sub_ps(a, vm), vs)));
  }
  return _mm512_reduce_add_ps(s0);
}

/* Schraudolph's exp (heed/kernels.h, vocab_sumexp_bound). */
static float vocab_sumexp_bound_avx512(const float *x, size_t n, float m, float s, float thr) {
  const __m512 vm = _mm512_set1_ps(m), vk = _mm512_set1_ps(s * 1.44269504f * 8388608.0f),
               vb = _mm512_set1_ps(127.0f * 8388608.0f), lo = _mm512_set1_ps(8388608.0f), vt = _mm512_set1_ps(thr);
  __m512 s0 = _mm512_setzero_ps(), s1 = s0;
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 a = _mm512_loadu_ps(x + i), b = _mm512_loadu_ps(x + i + 16);
    __m512 ea = _mm512_castsi512_ps(_mm512_cvttps_epi32(_mm512_max_ps(_mm512_fmadd_ps(_mm512_sub_ps(a, vm), vk, vb), lo)));
    __m512 eb = _mm512_castsi512_ps(_mm512_cvttps_epi32(_mm512_max_ps(_mm512_fmadd_ps(_mm512_sub_ps(b, vm), vk, vb), lo)));
    s0 = _mm512_mask_add_ps(s0, _mm512_cmp_ps_mask(a, vt, _CMP_GE_OQ), s0, ea);
    s1 = _mm512_mask_add_ps(s1, _mm512_cmp_ps_mask(b, vt, _CMP_GE_OQ), s1, eb);
  }
  for (; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 a = _mm512_maskz_loadu_ps(k, x + i);
    k = _mm512_mask_cmp_ps_mask(k, a, vt, _CMP_GE_OQ);
    __m512 e = _mm512_castsi512_ps(_mm512_cvttps_epi32(_mm512_max_ps(_mm512_fmadd_ps(_mm512_sub_ps(a, vm), vk, vb), lo)));
    s0 = _mm512_mask_add_ps(s0, k, s0, e);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

/* One read (heed/kernels.h, vocab_maxsum_bound): each block's lane maxima
 * and bounded sum in one loop (one FMA a term, vocab_maxsum.h), masked
 * tails; NaN and +inf by a plain sum of the values, which either makes NaN
 * or +inf (confirmed by a scalar look: a finite row can overflow it); the
 * rest is ms_block's. */

static inline __m512 bound_terms(__m512 a, __m512 vk, __m512 vc, __m512 lo) {
  return _mm512_castsi512_ps(_mm512_cvttps_epi32(_mm512_max_ps(_mm512_fmadd_ps(a, vk, vc), lo)));
}

/* The sum of block [i, e) against u's reference, again (masked tail). */
static float block_bound_avx512(const float *x, size_t i, size_t e, const ms_run *u) {
  const __m512 vk = _mm512_set1_ps(u->K), vc = _mm512_set1_ps(u->c), lo = _mm512_set1_ps(8388608.0f);
  __m512 a0 = _mm512_setzero_ps();
  for (; i < e; i += 16) {
    __mmask16 k = tail_mask(e - i);
    a0 = _mm512_mask_add_ps(a0, k, a0, bound_terms(_mm512_maskz_loadu_ps(k, x + i), vk, vc, lo));
  }
  return _mm512_reduce_add_ps(a0);
}

static float vocab_maxsum_bound_avx512(const float *x, size_t n, float s, float *z, int *bad, float *bmax) {
  const __m512 lo = _mm512_set1_ps(8388608.0f), ninf = _mm512_set1_ps(-INFINITY);
  __m512 sv = _mm512_setzero_ps(); /* the values' sum: NaN or +inf if one is */
  ms_run u = ms_start(s);
  const __m512 vk = _mm512_set1_ps(u.K);
  const size_t pe = n > MS_PREFETCH ? n - MS_PREFETCH : 0; /* prefetch inside the row only */
  int b = 0;
  for (size_t i = 0; i < n; i += MS_BLOCK) {
    const size_t e = i + MS_BLOCK < n ? i + MS_BLOCK : n;
    const __m512 vc = _mm512_set1_ps(u.c);
    __m512 m0 = ninf, m1 = ninf, a0 = _mm512_setzero_ps(), a1 = a0;
    size_t j = i;
    for (; j + 32 <= e; j += 32) {
      if (j < pe) _mm_prefetch((const char *)(x + j + MS_PREFETCH), _MM_HINT_T0),
                  _mm_prefetch((const char *)(x + j + MS_PREFETCH + 16), _MM_HINT_T0);
      __m512 p = _mm512_loadu_ps(x + j), q = _mm512_loadu_ps(x + j + 16);
      sv = _mm512_add_ps(sv, _mm512_add_ps(p, q));
      m0 = _mm512_max_ps(m0, p), m1 = _mm512_max_ps(m1, q); /* a NaN: any max (the sum reports it) */
      a0 = _mm512_add_ps(a0, bound_terms(p, vk, vc, lo));
      a1 = _mm512_add_ps(a1, bound_terms(q, vk, vc, lo));
    }
    for (; j < e; j += 16) {
      __mmask16 k = tail_mask(e - j);
      __m512 p = _mm512_mask_loadu_ps(ninf, k, x + j);
      sv = _mm512_mask_add_ps(sv, k, sv, p);
      m0 = _mm512_max_ps(m0, p);
      a0 = _mm512_mask_add_ps(a0, k, a0, bound_terms(p, vk, vc, lo));
    }
    /* masked tails: nothing is left for ms_block's scalar part */
    if (!ms_block(&u, x, i, e, e, _mm512_reduce_max_ps(_mm512_max_ps(m0, m1)), _mm512_reduce_add_ps(_mm512_add_ps(a0, a1)),
                  &b, bmax, block_bound_avx512))
      return heed_cpu_vocab_maxsum_bound_ref(x, n, s, z, bad, bmax);
  }
  return ms_finish(&u, x, n, _mm512_reduce_add_ps(sv), b, bad, z);
}

static float vocab_weights_avx512(const float *x, size_t n, float m, float s, float thr, float scale, float *w) {
  const __m512 vm = _mm512_set1_ps(m), vs = _mm512_set1_ps(s), vt = _mm512_set1_ps(thr),
               vc = _mm512_set1_ps(scale);
  __m512 s0 = _mm512_setzero_ps();
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 a = _mm512_maskz_loadu_ps(k, x + i);
    __mmask16 keep = _mm512_mask_cmp_ps_mask(k, a, vt, _CMP_GE_OQ);
    __m512 e = _mm512_maskz_mul_ps(keep, exp_neg(_mm512_mul_ps(_mm512_sub_ps(a, vm), vs)), vc);
    _mm512_mask_storeu_ps(w + i, k, e);
    s0 = _mm512_add_ps(s0, e);
  }
  return _mm512_reduce_add_ps(s0);
}

static float vocab_residual_avx512(float *w, const float *q, size_t n, float ws, float qs) {
  const __m512 vws = _mm512_set1_ps(ws), vqs = _mm512_set1_ps(qs), z = _mm512_setzero_ps();
  __m512 s0 = z;
  for (size_t i = 0; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    __m512 r = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, w + i), vws);
    if (q) r = _mm512_fnmadd_ps(_mm512_maskz_loadu_ps(k, q + i), vqs, r);
    r = _mm512_max_ps(r, z);
    _mm512_mask_storeu_ps(w + i, k, r);
    s0 = _mm512_add_ps(s0, r);
  }
  return _mm512_reduce_add_ps(s0);
}

static size_t vocab_collect_avx512(const float *x, size_t n, float thr, uint32_t *idx) {
  const __m512 vt = _mm512_set1_ps(thr);
  __m512i c0 = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i step = _mm512_set1_epi32(16);
  size_t c = 0, i = 0;
  for (; i + 64 <= n; i += 64) { /* a cut keeps few: skip 64 at a time, one test */
    __mmask16 k0 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), vt, _CMP_GE_OQ),
              k1 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i + 16), vt, _CMP_GE_OQ),
              k2 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i + 32), vt, _CMP_GE_OQ),
              k3 = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i + 48), vt, _CMP_GE_OQ);
    if (!(k0 | k1 | k2 | k3)) {
      c0 = _mm512_add_epi32(c0, _mm512_set1_epi32(64));
      continue;
    }
    const __mmask16 k[4] = {k0, k1, k2, k3};
    for (int u = 0; u < 4; u++) {
      if (k[u]) {
        _mm512_mask_compressstoreu_epi32(idx + c, k[u], c0);
        c += (size_t)__builtin_popcount(k[u]);
      }
      c0 = _mm512_add_epi32(c0, step);
    }
  }
  for (; i < n; i += 16) {
    __mmask16 k = tail_mask(n - i);
    k = _mm512_mask_cmp_ps_mask(k, _mm512_maskz_loadu_ps(k, x + i), vt, _CMP_GE_OQ);
    if (k) {
      _mm512_mask_compressstoreu_epi32(idx + c, k, c0);
      c += (size_t)__builtin_popcount(k);
    }
    c0 = _mm512_add_epi32(c0, step);
  }
  return c;
}

void heed_cpu_register_vocab_avx512(heed_kernel_table *t) { HEED_VOCAB_REGISTER(t, avx512, HEED_ISA_AVX512); }
