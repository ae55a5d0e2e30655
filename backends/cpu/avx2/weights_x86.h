/* backends/cpu/avx2/weights_x86.h - the x86 weight kernels' body, shared by
 * weights_avx2.c (WX_DOT: vpmaddubsw + vpmaddwd) and
 * avx512/weights_avx512vnni.c (WX_DOT: vpdpbusd). Internal; the including
 * file defines WX_DOT(u, a) (32 unsigned by 32 signed bytes -> 8 int32 sums of
 * 4 products), WX_DOT_M16(u, a, m16) (the same with lanes 0..7 / 8..15 of
 * the byte-pair sums weighted by the int16 in m16, for Q6_K's two scales per
 * 32), then names its kernels with WX_KERNELS(name, format, suffix).
 *
 * Every format is decoded, 32 weights at a time, to unsigned codes u (0..63;
 * Q8_0: |w| with the sign moved onto the activations), an f32 scale ws for
 * the integer sum, and c0, c1: what the sum of the activation codes of each
 * half contributes (the code offset or the min): for a token with block
 * (d_a, q, s),
 *   y += d_a * (ws * sum u q + c0 s0 + c1 s1).
 * The decode happens once per chunk and serves NT tokens (1 for decode, 4 for
 * prefill), so the per-token work is one dot, one convert and one fma. */
#ifndef HEED_WEIGHTS_X86_H
#define HEED_WEIGHTS_X86_H

#include "backends/cpu/x86_intrin.h"
#include <stdint.h>
#include <string.h>

#include "backends/cpu/weights_kernels.h"

#define WX_INLINE static inline __attribute__((always_inline))
#ifndef WX_PF
#define WX_PF 8192 /* bytes of prefetch distance in decode */
#endif

enum { WF_Q4_0, WF_Q4_1, WF_Q5_0, WF_Q5_1, WF_Q8_0, WF_Q4_K, WF_Q5_K, WF_Q6_K };

/* The 6-bit scales and mins of Q4_K / Q5_K super-block b (12 bytes at b + 4)
 * as 16 bytes: 8 scales, then 8 mins. */
WX_INLINE void wx_k4_scales(const uint8_t *b, uint32_t ut[4]) {
  memcpy(ut, b + 4, 12);
  const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
  ut[3] = ((ut[2] >> 4) & k2) | (((ut[1] >> 6) & k3) << 4);
  const uint32_t a1 = ut[1] & k1;
  ut[1] = (ut[2] & k2) | (((ut[0] >> 6) & k3) << 4);
  ut[2] = a1;
  ut[0] &= k1;
}

WX_INLINE int wf_elems(int f) { return f >= WF_Q4_K ? 256 : 32; }
WX_INLINE size_t wf_bytes(int f) {
  static const size_t b[] = {18, 20, 22, 24, 34, 144, 176, 210};
  return b[f];
}

static inline float wx_f16(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

/* 32 bytes of 0xFF where bit i of the 32-bit word at p is set (ggml's bytes_from_bits_32). */
WX_INLINE __m256i wx_bits32(const uint8_t *p) {
  uint32_t x;
  memcpy(&x, p, 4);
  const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0);
  __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
  b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
  return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* 16 bytes of nibbles: low nibbles are elements 0..15, high ones 16..31. */
WX_INLINE __m256i wx_nib16(const uint8_t *p) {
  __m128i q = _mm_loadu_si128((const __m128i *)p);
  const __m128i lo = _mm_set1_epi8(0x0F);
  return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), lo), _mm_and_si128(q, lo));
}

WX_INLINE void wx_scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

typedef struct wx_chunk {
  __m256i u;   /* unsigned codes (Q8_0: |w|) */
  __m256i sgn; /* Q8_0: w, whose signs go onto the activations */
  __m256i m16; /* Q6_K: the two scales, int16 */
  float ws, c0, c1;
} wx_chunk;

/* Chunk j (of 32 weights) of the block at b. */
WX_INLINE void wx_decode(const int f, const uint8_t *b, int j, wx_chunk *c) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  switch (f) {
    case WF_Q4_0:
      c->ws = wx_f16(b), c->u = wx_nib16(b + 2);
      c->c0 = c->c1 = -8.0f * c->ws;
      break;
    case WF_Q4_1:
      c->ws = wx_f16(b), c->c0 = c->c1 = wx_f16(b + 2), c->u = wx_nib16(b + 4);
      break;
    case WF_Q5_0:
      c->ws = wx_f16(b);
      c->u = _mm256_or_si256(wx_nib16(b + 6), _mm256_and_si256(wx_bits32(b + 2), _mm256_set1_epi8(0x10)));
      c->c0 = c->c1 = -16.0f * c->ws;
      break;
    case WF_Q5_1:
      c->ws = wx_f16(b), c->c0 = c->c1 = wx_f16(b + 2);
      c->u = _mm256_or_si256(wx_nib16(b + 8), _mm256_and_si256(wx_bits32(b + 4), _mm256_set1_epi8(0x10)));
      break;
    case WF_Q8_0:
      c->ws = wx_f16(b), c->c0 = c->c1 = 0;
      c->sgn = _mm256_loadu_si256((const __m256i *)(b + 2));
      c->u = _mm256_abs_epi8(c->sgn);
      break;
    case WF_Q4_K:
    case WF_Q5_K: {
      int sc, m;
      wx_scale_min_k4(j, b + 4, &sc, &m);
      c->ws = wx_f16(b) * (float)sc;
      c->c0 = c->c1 = -(wx_f16(b + 2) * (float)m);
      const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48) + 32 * (j / 2);
      __m256i q = _mm256_loadu_si256((const __m256i *)qs);
      c->u = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(q, 4) : q, m4);
      if (f == WF_Q5_K) {
        const __m256i bit = _mm256_set1_epi8((char)(1 << j));
        __m256i h = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_loadu_si256((const __m256i *)(b + 16)), bit), bit);
        c->u = _mm256_or_si256(c->u, _mm256_and_si256(h, _mm256_set1_epi8(0x10)));
      }
      break;
    }
    case WF_Q6_K: {
      const int h = j / 4, k = j % 4;
      const int8_t *scs = (const int8_t *)(b + 192);
      const float d = wx_f16(b + 208);
      __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32 * (k & 1)));
      __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
      ql = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k >> 1))), m4);
      qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k)), _mm256_set1_epi8(3));
      c->u = _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));
      const int s0 = scs[2 * j], s1 = scs[2 * j + 1];
      c->m16 = _mm256_set_m128i(_mm_set1_epi16((short)s1), _mm_set1_epi16((short)s0));
      c->ws = d;
      c->c0 = -32.0f * d * (float)s0, c->c1 = -32.0f * d * (float)s1;
      break;
    }
  }
}

/* One chunk for NT tokens into acc[t] / corr[t]. */
WX_INLINE void wx_chunk_do(const int f, const int NT, const wx_chunk *c, const uint8_t *act, size_t astride,
                           size_t chunk, __m256 *acc, float *corr) {
  for (int t = 0; t < NT; t++) {
    const heed_qa_block *a = (const heed_qa_block *)(act + (size_t)t * astride) + chunk;
    __m256i q = _mm256_loadu_si256((const __m256i *)a->q);
    __m256i p;
    if (f == WF_Q8_0) p = WX_DOT(c->u, _mm256_sign_epi8(q, c->sgn));
    else if (f == WF_Q6_K) p = WX_DOT_M16(c->u, q, c->m16);
    else p = WX_DOT(c->u, q);
    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(c->ws * a->d), acc[t]);
    if (f != WF_Q8_0) corr[t] += a->d * (c->c0 * (float)a->s[0] + c->c1 * (float)a->s[1]);
  }
}

/* Rows [0, n_rows) by NT tokens (NT 1 or 4). Chunks alternate between two
 * sets of accumulators, so one token's fma chain does not serialize a row. */
WX_INLINE void wx_rows(const int f, const int NT, const uint8_t *w, size_t row_bytes, size_t n_rows, size_t cols,
                       const uint8_t *act, size_t astride, float *y, size_t ldy) {
  const int nsub = wf_elems(f) / 32;
  const size_t nch = cols / 32, bb = wf_bytes(f);
  for (size_t r = 0; r < n_rows; r++) {
    const uint8_t *row = w + r * row_bytes;
    __m256 acc0[4], acc1[4];
    float corr0[4], corr1[4];
    for (int t = 0; t < NT; t++) acc0[t] = acc1[t] = _mm256_setzero_ps(), corr0[t] = corr1[t] = 0;
    size_t ch = 0;
    for (; ch + 2 <= nch; ch += 2) {
      /* decode streams the rows in order from memory: fetch WX_PF bytes ahead */
      if (NT == 1) _mm_prefetch((const char *)row + ch / nsub * bb + WX_PF, _MM_HINT_T0);
      wx_chunk c0, c1;
      wx_decode(f, row + ch / nsub * bb, (int)(ch % nsub), &c0);
      wx_decode(f, row + (ch + 1) / nsub * bb, (int)((ch + 1) % nsub), &c1);
      wx_chunk_do(f, NT, &c0, act, astride, ch, acc0, corr0);
      wx_chunk_do(f, NT, &c1, act, astride, ch + 1, acc1, corr1);
    }
    if (ch < nch) {
      wx_chunk c0;
      wx_decode(f, row + ch / nsub * bb, (int)(ch % nsub), &c0);
      wx_chunk_do(f, NT, &c0, act, astride, ch, acc0, corr0);
    }
    for (int t = 0; t < NT; t++) {
      __m256 a = _mm256_add_ps(acc0[t], acc1[t]);
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      y[(size_t)t * ldy + r] = _mm_cvtss_f32(s) + (corr0[t] + corr1[t]);
    }
  }
}

/* The vec (one token) and mat (four at a time, then one at a time) kernels of format F. */
#define WX_KERNELS(name, F, suf)                                                                                    \
  static void wmm_##name##_vec_##suf(const void *w, size_t rb, size_t nr, size_t cols, const void *act,     \
                                         size_t as, size_t nt, float *y, size_t ldy) {                          \
    for (size_t t = 0; t < nt; t++)                                                                              \
      wx_rows(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);       \
  }                                                                                                              \
  static void wmm_##name##_mat_##suf(const void *w, size_t rb, size_t nr, size_t cols, const void *act,     \
                                         size_t as, size_t nt, float *y, size_t ldy) {                          \
    size_t t = 0;                                                                                                \
    for (; t + 4 <= nt; t += 4)                                                                                  \
      wx_rows(F, 4, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);       \
    for (; t < nt; t++)                                                                                          \
      wx_rows(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);       \
  }

#endif
