/* backends/cpu/avx512/weights_avx512vnni.c - the quantized weight kernels on
 * vpdpbusd (AVX512-VNNI), compiled with -mavx512vnni in a file of its own and
 * registered only when the CPU has avx512_vnni (cpu_weights.c).
 *
 * Every format is decoded a group of 256 weights at a time (a K-quant
 * super-block, or eight 32-blocks) to unsigned codes u (4 x 64 bytes; Q8_0:
 * w + 128), the f32 scale of each of its 16 half blocks (wv) and what each
 * half block's activation code sum contributes (cv: the code offset or the
 * min). The activations come packed (heed_qa_layout: contiguous codes, the
 * block scale and the scale times the code sum per half block), so for a row
 * and a token, per 64 weights:
 *   acc += float(vpdpbusd(u, q)) * (wv * dh)   (16 lanes; lane i: half i/4)
 * and per group acc += cv * ds; the lanes are summed once per row at the end.
 * The decode (vec) kernel runs 4 rows at once straight from the weights; the
 * prefill (mat) kernel decodes 4 rows into a panel on the stack, then runs
 * 4 rows x 4 tokens tiles over it. The older 256-bit kernels
 * (avx2/weights_x86.h) remain for rows longer than the panel. */
#include "backends/cpu/x86_intrin.h"

#define WX_DOT(u, a) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (a))
#define WX_DOT_M16(u, a, m16) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), (m16))
#include "backends/cpu/avx2/weights_x86.h"

WX_KERNELS(q4_0, WF_Q4_0, vnni)
WX_KERNELS(q4_1, WF_Q4_1, vnni)
WX_KERNELS(q5_0, WF_Q5_0, vnni)
WX_KERNELS(q5_1, WF_Q5_1, vnni)
WX_KERNELS(q8_0, WF_Q8_0, vnni)
WX_KERNELS(q4_k, WF_Q4_K, vnni)
WX_KERNELS(q5_k, WF_Q5_K, vnni)
WX_KERNELS(q6_k, WF_Q6_K, vnni)

/* One decoded group of 256 weights of one row. */
typedef struct zg {
  __m512i u[4]; /* codes of weights 64k .. 64k + 63 */
  __m512 wv;    /* scale of half block i (16 weights) */
  __m512 cv;    /* coefficient of half block i's d * s */
} zg;

/* 16 floats: lanes 2j, 2j+1 = v[j] (j < 8). */
WX_INLINE __m512 z_dup8(__m256 v) {
  return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7),
                               _mm512_castps256_ps512(v));
}

/* Pair k of a group: lanes i take half block 4k + i / 4. */
WX_INLINE __m512 z_pair(int k, __m512 v) {
  const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(4 * k),
                                       _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3));
  return _mm512_permutexvar_ps(idx, v);
}

/* [lo nibbles, hi nibbles] of the 16 bytes at p0, then of those at p1. */
WX_INLINE __m512i z_nib2(const uint8_t *p0, const uint8_t *p1) {
  const __m256i y = _mm256_set_m128i(_mm_loadu_si128((const __m128i *)p1), _mm_loadu_si128((const __m128i *)p0));
  const __m512i z = _mm512_shuffle_i64x2(_mm512_castsi256_si512(y), _mm512_castsi256_si512(y), _MM_SHUFFLE(1, 1, 0, 0));
  return _mm512_and_si512(_mm512_srlv_epi64(z, _mm512_setr_epi64(0, 0, 4, 4, 0, 0, 4, 4)), _mm512_set1_epi8(0x0F));
}

/* [lo nibbles, hi nibbles] of the 32 bytes at p. */
WX_INLINE __m512i z_nib32(const uint8_t *p) {
  const __m512i z = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p));
  return _mm512_and_si512(_mm512_srlv_epi64(z, _mm512_setr_epi64(0, 0, 0, 0, 4, 4, 4, 4)), _mm512_set1_epi8(0x0F));
}

WX_INLINE uint16_t z_h(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return h;
}
WX_INLINE uint32_t z_u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* Q4_K / Q5_K super-block b's scales and mins (6 bits each, packed in 12
 * bytes) times d and -dmin: wv and cv, lanes 2j and 2j + 1 for sub-block j. */
WX_INLINE void z_scales_k4(const uint8_t *b, zg *o) {
  uint32_t ut[4];
  wx_k4_scales(b, ut);
  const __m128i s8 = _mm_loadu_si128((const __m128i *)ut); /* 8 scales, 8 mins */
  const __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(s8));
  const __m256 mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(s8, 8)));
  const __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)z_u32(b))); /* d, dmin */
  o->wv = z_dup8(_mm256_mul_ps(sc, _mm256_broadcastss_ps(dd)));
  o->cv = z_dup8(_mm256_mul_ps(mn, _mm256_broadcastss_ps(_mm_sub_ps(_mm_setzero_ps(), _mm_movehdup_ps(dd)))));
}

/* Group g of the row at row (nb: the row's 32-blocks, for the 32-block
 * formats' last group; its missing blocks decode to zeros). */
WX_INLINE void z_decode(const int f, const uint8_t *row, size_t g, size_t nb, zg *o) {
  if (f == WF_Q4_K || f == WF_Q5_K) {
    const uint8_t *b = row + g * wf_bytes(f);
    z_scales_k4(b, o);
    const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48);
    __m512i qh = _mm512_setzero_si512();
    if (f == WF_Q5_K) qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 16)));
    for (int k = 0; k < 4; k++) {
      o->u[k] = z_nib32(qs + 32 * k);
      if (f == WF_Q5_K) {
        const __m512i bit = _mm512_inserti64x4(_mm512_set1_epi8((char)(1 << (2 * k))),
                                               _mm256_set1_epi8((char)(1 << (2 * k + 1))), 1);
        o->u[k] = _mm512_mask_add_epi8(o->u[k], _mm512_test_epi8_mask(qh, bit), o->u[k], _mm512_set1_epi8(16));
      }
    }
  } else if (f == WF_Q6_K) {
    const uint8_t *b = row + g * 210;
    const float d = _cvtsh_ss(z_h(b + 208));
    o->wv = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + 192)))),
                          _mm512_set1_ps(d));
    o->cv = _mm512_mul_ps(o->wv, _mm512_set1_ps(-32.0f));
    const __m512i m4 = _mm512_set1_epi8(0x0F), m2 = _mm512_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
      const __m512i ql = _mm512_loadu_si512(b + 64 * h);
      const __m512i qh = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h)));
      const __m512i h0 = _mm512_and_si512(_mm512_srlv_epi64(qh, _mm512_setr_epi64(0, 0, 0, 0, 2, 2, 2, 2)), m2);
      const __m512i h1 = _mm512_and_si512(_mm512_srlv_epi64(qh, _mm512_setr_epi64(4, 4, 4, 4, 6, 6, 6, 6)), m2);
      o->u[2 * h] = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(h0, 4));
      o->u[2 * h + 1] = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4), _mm512_slli_epi16(h1, 4));
    }
  } else {
    const size_t bb = wf_bytes(f), b0 = g * 8, n = nb - b0 < 8 ? nb - b0 : 8;
    const uint8_t *b = row + b0 * bb;
    /* the 8 f16 scales (and minima) into a vector by inserts (a group past
     * the row's end: the missing ones 0): built in a stack array, their
     * vector load stalled on the store forwarding and took a third of the
     * decode kernel's time */
    __m128i dh = _mm_setzero_si128(), mh = _mm_setzero_si128();
#define Z_INS(j)                                                                                 \
  if ((j) < n) {                                                                                 \
    dh = _mm_insert_epi16(dh, z_h(b + (j) * bb), j);                                             \
    if (f == WF_Q4_1 || f == WF_Q5_1) mh = _mm_insert_epi16(mh, z_h(b + (j) * bb + 2), j);       \
  }
    Z_INS(0) Z_INS(1) Z_INS(2) Z_INS(3) Z_INS(4) Z_INS(5) Z_INS(6) Z_INS(7)
#undef Z_INS
    const __m256 d = _mm256_cvtph_ps(dh);
    o->wv = z_dup8(d);
    if (f == WF_Q4_1 || f == WF_Q5_1) o->cv = z_dup8(_mm256_cvtph_ps(mh));
    else o->cv = z_dup8(_mm256_mul_ps(d, _mm256_set1_ps(f == WF_Q4_0 ? -8.0f : f == WF_Q5_0 ? -16.0f : -128.0f)));
    for (int k = 0; k < 4; k++) {
      const size_t j = 2 * (size_t)k;
      if (j >= n) {
        o->u[k] = _mm512_setzero_si512();
        continue;
      }
      const uint8_t *p0 = b + j * bb, *p1 = j + 1 < n ? p0 + bb : p0; /* a lone last block: its twin's scale is 0 */
      switch (f) {
        case WF_Q8_0:
          o->u[k] = _mm512_xor_si512(_mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(p0 + 2))),
                                                        _mm256_loadu_si256((const __m256i *)(p1 + 2)), 1),
                                     _mm512_set1_epi8((char)0x80));
          break;
        case WF_Q4_0: o->u[k] = z_nib2(p0 + 2, p1 + 2); break;
        case WF_Q4_1: o->u[k] = z_nib2(p0 + 4, p1 + 4); break;
        case WF_Q5_0:
        case WF_Q5_1: {
          const int o5 = f == WF_Q5_0 ? 2 : 4;
          const __m512i u = z_nib2(p0 + o5 + 4, p1 + o5 + 4);
          const __mmask64 m = (__mmask64)z_u32(p0 + o5) | ((__mmask64)z_u32(p1 + o5) << 32);
          o->u[k] = _mm512_mask_add_epi8(u, m, u, _mm512_set1_epi8(16));
          break;
        }
      }
    }
  }
}

#ifndef Z_PF
#define Z_PF 8192 /* bytes of prefetch distance for the decode kernels */
#endif

/* Decode: rows [0, nr) by one token, RV rows at a time, in the same
 * operations and order as z_tile (per group: the code-sum term, then the
 * four 64-weight products into one accumulator), so that a row decoded
 * alone and in a batch gives the same bits. */
WX_INLINE void z_vec_rows(const int f, const int RV, const uint8_t *w, size_t rb, size_t cols, const uint8_t *tok,
                          float *y) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const int8_t *q = (const int8_t *)(tok + l.off_q);
  const float *dh = (const float *)(tok + l.off_dh), *ds = (const float *)(tok + l.off_ds);
  const size_t ng = l.colsp / HEED_QA_GROUP, nb = cols / 32;
  __m512 acc[4];
  for (int r = 0; r < RV; r++) acc[r] = _mm512_setzero_ps();
  for (size_t g = 0; g < ng; g++) {
    const __m512 dhg = _mm512_load_ps(dh + 16 * g), dsg = _mm512_load_ps(ds + 16 * g);
    __m512i a[4];
    __m512 dk[4];
    for (int k = 0; k < 4; k++) a[k] = _mm512_load_si512(q + 256 * g + 64 * k), dk[k] = z_pair(k, dhg);
    {
      /* The RV rows are adjacent in memory and the caller walks the rows in
       * order, so the bytes read advance linearly, RV groups per step: fetch
       * the lines Z_PF bytes ahead of this step's (rows are too short for a
       * distance within a row, and DRAM-bound rows need more than the
       * hardware prefetcher guesses). */
      const size_t gb = f >= WF_Q4_K ? wf_bytes(f) : 8 * wf_bytes(f), step = (size_t)RV * gb;
      const char *pf = (const char *)w + (size_t)RV * g * gb + Z_PF;
      for (size_t o = 0; o < step; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
    }
    for (int r = 0; r < RV; r++) {
      zg z;
      z_decode(f, w + r * rb, g, nb, &z);
      acc[r] = _mm512_fmadd_ps(z.cv, dsg, acc[r]);
      for (int k = 0; k < 4; k++) {
        const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), z.u[k], a[k]));
        acc[r] = _mm512_fmadd_ps(p, _mm512_mul_ps(z_pair(k, z.wv), dk[k]), acc[r]);
      }
    }
  }
  for (int r = 0; r < RV; r++) y[r] = _mm512_reduce_add_ps(acc[r]);
}

/* The panel of RP decoded rows for the mat kernels: per row and group, u
 * (256 bytes), wv and cv. */
#define ZP_RP 4
#define ZP_GMAX 64 /* groups per row in the panel: rows up to 16384 weights */
typedef struct zp_group {
  __m512i u[4];
  __m512 wv, cv;
} zp_group;

/* Rows [0, R) of the panel by T tokens starting at tok. */
WX_INLINE void z_tile(const int R, const int T, const zp_group *pan, size_t ng, const uint8_t *tok, size_t as,
                      const heed_qa_layout *l, float *y, size_t ldy) {
  __m512 acc[ZP_RP][4];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
  for (size_t g = 0; g < ng; g++) {
    const float *dh[4], *ds[4];
    const int8_t *q[4];
    for (int t = 0; t < T; t++) {
      const uint8_t *p = tok + (size_t)t * as;
      dh[t] = (const float *)(p + l->off_dh) + 16 * g, ds[t] = (const float *)(p + l->off_ds) + 16 * g;
      q[t] = (const int8_t *)(p + l->off_q) + 256 * g;
    }
    for (int r = 0; r < R; r++) {
      const zp_group *z = pan + (size_t)r * ZP_GMAX + g;
      for (int t = 0; t < T; t++) acc[r][t] = _mm512_fmadd_ps(z->cv, _mm512_load_ps(ds[t]), acc[r][t]);
    }
    for (int k = 0; k < 4; k++) {
      __m512i a[4];
      __m512 d[4];
      for (int t = 0; t < T; t++) a[t] = _mm512_load_si512(q[t] + 64 * k), d[t] = z_pair(k, _mm512_load_ps(dh[t]));
      for (int r = 0; r < R; r++) {
        const zp_group *z = pan + (size_t)r * ZP_GMAX + g;
        const __m512i u = _mm512_load_si512(&z->u[k]);
        const __m512 wk = z_pair(k, z->wv);
        for (int t = 0; t < T; t++) {
          const __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a[t]));
          acc[r][t] = _mm512_fmadd_ps(p, _mm512_mul_ps(wk, d[t]), acc[r][t]);
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) y[(size_t)t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define Z_TILE_CASE(R, T) \
  case (R) * 8 + (T): z_tile(R, T, pan, ng, tok, as, l, y, ldy); break;
__attribute__((noinline)) static void z_tile_any(int R, int T, const zp_group *pan, size_t ng, const uint8_t *tok,
                                                 size_t as, const heed_qa_layout *l, float *y, size_t ldy) {
  switch (R * 8 + T) {
    Z_TILE_CASE(4, 4) Z_TILE_CASE(4, 3) Z_TILE_CASE(4, 2) Z_TILE_CASE(4, 1)
    Z_TILE_CASE(3, 4) Z_TILE_CASE(3, 3) Z_TILE_CASE(3, 2) Z_TILE_CASE(3, 1)
    Z_TILE_CASE(2, 4) Z_TILE_CASE(2, 3) Z_TILE_CASE(2, 2) Z_TILE_CASE(2, 1)
    Z_TILE_CASE(1, 4) Z_TILE_CASE(1, 3) Z_TILE_CASE(1, 2) Z_TILE_CASE(1, 1)
    default: break;
  }
}

WX_INLINE void z_mat(const int f, const uint8_t *w, size_t rb, size_t nr, size_t cols, const uint8_t *act, size_t as,
                     size_t nt, float *y, size_t ldy) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const size_t ng = l.colsp / HEED_QA_GROUP, nb = cols / 32;
  zp_group pan[ZP_RP * ZP_GMAX] __attribute__((aligned(64)));
  for (size_t r0 = 0; r0 < nr; r0 += ZP_RP) {
    const int R = nr - r0 < ZP_RP ? (int)(nr - r0) : ZP_RP;
    for (int r = 0; r < R; r++)
      for (size_t g = 0; g < ng; g++) {
        { /* the panel's rows are read in order too: with few tokens (a draft's verification) this is DRAM-bound */
          const size_t gb = f >= WF_Q4_K ? wf_bytes(f) : 8 * wf_bytes(f);
          const char *pf = (const char *)w + (r0 + (size_t)r) * rb + g * gb + Z_PF;
          for (size_t o = 0; o < gb; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
        }
        zg z;
        z_decode(f, w + (r0 + (size_t)r) * rb, g, nb, &z);
        zp_group *o = pan + (size_t)r * ZP_GMAX + g;
        for (int k = 0; k < 4; k++) _mm512_store_si512(&o->u[k], z.u[k]);
        _mm512_store_ps(&o->wv, z.wv), _mm512_store_ps(&o->cv, z.cv);
      }
    for (size_t t0 = 0; t0 < nt; t0 += 4) {
      const int T = nt - t0 < 4 ? (int)(nt - t0) : 4;
      z_tile_any(R, T, pan, ng, act + t0 * as, as, &l, y + t0 * ldy + r0, ldy);
    }
  }
}

/* ---- Q4_K and Q5_K on int32 sums per super-block ----
 * Their sub-blocks (32 weights, one 6-bit scale and min each) match the
 * activation blocks, so with the codes of both in a common order the four
 * vpdpbusd of a super-block can accumulate in int32 and be converted and
 * scaled once: u[k] segment j (16 bytes) holds weights 64j + 8k + 0..7, then
 * 64j + 32 + 8k + 0..7, so dword lane L holds four weights of sub-block L / 2
 * in every u[k] (the lanes of wv and of the packed dh), and the activations
 * are packed in that order (heed_weights_table.kperm, cpu_weights.c). Per
 * super-block, row and token: 4 vpdpbusd, a conversion and two fused
 * multiply-adds (the min part as before), where the 64-weight kernels above
 * convert and scale after every vpdpbusd. */

/* Group g of a Q4_K / Q5_K row in that order; Q6_K (16 sub-blocks of 16,
 * one int8 scale each) in its own: lane L of every u[k] holds weights 16L +
 * 4k .. 16L + 4k + 3, sub-block L (the activations by heed_qa_kperm6), from
 * the natural decode by a 4 x 4 dword transpose in each vector and a 4 x 4
 * transpose of 128-bit lanes across the four. */
WX_INLINE void z_decode_kp(const int f, const uint8_t *row, size_t g, zg *o) {
  if (f == WF_Q6_K) {
    zg n;
    z_decode(f, row, g, 0, &n);
    o->wv = n.wv, o->cv = n.cv;
    const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m512i t[4];
    for (int k = 0; k < 4; k++) t[k] = _mm512_permutexvar_epi32(idx, n.u[k]);
    const __m512i a = _mm512_shuffle_i32x4(t[0], t[1], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i b2 = _mm512_shuffle_i32x4(t[2], t[3], _MM_SHUFFLE(1, 0, 1, 0));
    const __m512i c = _mm512_shuffle_i32x4(t[0], t[1], _MM_SHUFFLE(3, 2, 3, 2));
    const __m512i d = _mm512_shuffle_i32x4(t[2], t[3], _MM_SHUFFLE(3, 2, 3, 2));
    o->u[0] = _mm512_shuffle_i32x4(a, b2, _MM_SHUFFLE(2, 0, 2, 0));
    o->u[1] = _mm512_shuffle_i32x4(a, b2, _MM_SHUFFLE(3, 1, 3, 1));
    o->u[2] = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0));
    o->u[3] = _mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1));
    return;
  }
  const uint8_t *b = row + g * wf_bytes(f);
  z_scales_k4(b, o);
  const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48);
  const __m512i c0 = _mm512_loadu_si512(qs), c1 = _mm512_loadu_si512(qs + 64);
  const __m512i sh = _mm512_setr_epi64(0, 4, 0, 4, 0, 4, 0, 4), m4 = _mm512_set1_epi8(0x0F);
  for (int k = 0; k < 4; k++) {
    /* bytes 8k..8k+7 of each 32-byte chunk j (qword 4j + k), twice: low nibbles, then high */
    const __m512i z = _mm512_permutex2var_epi64(c0, _mm512_setr_epi64(k, k, 4 + k, 4 + k, 8 + k, 8 + k, 12 + k, 12 + k), c1);
    o->u[k] = _mm512_and_si512(_mm512_srlv_epi64(z, sh), m4);
    if (f == WF_Q5_K) { /* the fifth bit of weight 64j + 32h + l is bit 2j + h of qh[l]: qword q tests bit q */
      uint64_t h8;
      memcpy(&h8, b + 16 + 8 * k, 8);
      const __m512i bits = _mm512_setr_epi64(0x0101010101010101ll, 0x0202020202020202ll, 0x0404040404040404ll,
                                             0x0808080808080808ll, 0x1010101010101010ll, 0x2020202020202020ll,
                                             0x4040404040404040ll, (long long)0x8080808080808080ull);
      o->u[k] = _mm512_mask_add_epi8(o->u[k], _mm512_test_epi8_mask(_mm512_set1_epi64((long long)h8), bits), o->u[k],
                                     _mm512_set1_epi8(16));
    }
  }
}

#ifndef ZKP_RV
#define ZKP_RV 4 /* rows the decode kernel streams at once (8: 10-20% slower on Zen 4) */
#endif

/* Decode: RV rows by one token (activations in the kp order). */
WX_INLINE void z_vec_rows_kp(const int f, const int RV, const uint8_t *w, size_t rb, size_t cols, const uint8_t *tok,
                             float *y) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const int8_t *q = (const int8_t *)(tok + l.off_q);
  const float *dh = (const float *)(tok + l.off_dh), *ds = (const float *)(tok + l.off_ds);
  const size_t ng = cols / HEED_QA_GROUP;
  /* the same operations in the same order as z_tile_kp: a row decoded alone
   * and in a batch gives the same bits (rows longer than the panel summed
   * chunk by chunk as z_mat_kp does) */
  __m512 acc[ZKP_RV];
  for (size_t g0 = 0; g0 < ng; g0 += ZP_GMAX) {
    const size_t g1 = ng - g0 < ZP_GMAX ? ng : g0 + ZP_GMAX;
    for (int r = 0; r < RV; r++) acc[r] = _mm512_setzero_ps();
    for (size_t g = g0; g < g1; g++) {
      const __m512 dhg = _mm512_load_ps(dh + 16 * g), dsg = _mm512_load_ps(ds + 16 * g);
      __m512i a[4];
      for (int k = 0; k < 4; k++) a[k] = _mm512_load_si512(q + 256 * g + 64 * k);
      {
        const size_t step = (size_t)RV * wf_bytes(f);
        const char *pf = (const char *)w + step * g + Z_PF;
        for (size_t o = 0; o < step; o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
      }
      for (int r = 0; r < RV; r++) {
        zg z;
        z_decode_kp(f, w + r * rb, g, &z);
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), z.u[0], a[0]);
        for (int k = 1; k < 4; k++) p = _mm512_dpbusd_epi32(p, z.u[k], a[k]);
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(z.wv, dhg), acc[r]);
        acc[r] = _mm512_fmadd_ps(z.cv, dsg, acc[r]);
      }
    }
    for (int r = 0; r < RV; r++) {
      const float v = _mm512_reduce_add_ps(acc[r]);
      y[r] = g0 ? y[r] + v : v;
    }
  }
}

/* Rows [0, R) of a kp panel (groups g0 .. g0 + ng) by T tokens; ADD: y += (a later column chunk). */
WX_INLINE void z_tile_kp(const int R, const int T, const zp_group *pan, size_t g0, size_t ng, const uint8_t *tok,
                         size_t as, const heed_qa_layout *l, float *y, size_t ldy, int add) {
  __m512 acc[ZP_RP][4];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
  for (size_t g = 0; g < ng; g++) {
    const size_t ga = g0 + g; /* the group's index in the activations */
    __m512i p[ZP_RP][4];
    for (int k = 0; k < 4; k++) {
      __m512i a[4];
      for (int t = 0; t < T; t++) a[t] = _mm512_load_si512(tok + (size_t)t * as + l->off_q + 256 * ga + 64 * k);
      for (int r = 0; r < R; r++) {
        const __m512i u = _mm512_load_si512(&pan[(size_t)r * ZP_GMAX + g].u[k]);
        for (int t = 0; t < T; t++)
          p[r][t] = k ? _mm512_dpbusd_epi32(p[r][t], u, a[t]) : _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, a[t]);
      }
    }
    for (int t = 0; t < T; t++) {
      const float *dh = (const float *)(tok + (size_t)t * as + l->off_dh) + 16 * ga;
      const float *ds = (const float *)(tok + (size_t)t * as + l->off_ds) + 16 * ga;
      const __m512 dht = _mm512_load_ps(dh), dst = _mm512_load_ps(ds);
      for (int r = 0; r < R; r++) {
        const zp_group *z = pan + (size_t)r * ZP_GMAX + g;
        acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[r][t]), _mm512_mul_ps(z->wv, dht), acc[r][t]);
        acc[r][t] = _mm512_fmadd_ps(z->cv, dst, acc[r][t]);
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) {
      const float v = _mm512_reduce_add_ps(acc[r][t]);
      y[(size_t)t * ldy + r] = add ? y[(size_t)t * ldy + r] + v : v;
    }
}

#define Z_TILE_KP_CASE(R, T) \
  case (R) * 8 + (T): z_tile_kp(R, T, pan, g0, ng, tok, as, l, y, ldy, add); break;
__attribute__((noinline)) static void z_tile_kp_any(int R, int T, const zp_group *pan, size_t g0, size_t ng,
                                                    const uint8_t *tok, size_t as, const heed_qa_layout *l, float *y,
                                                    size_t ldy, int add) {
  switch (R * 8 + T) {
    Z_TILE_KP_CASE(4, 4) Z_TILE_KP_CASE(4, 3) Z_TILE_KP_CASE(4, 2) Z_TILE_KP_CASE(4, 1)
    Z_TILE_KP_CASE(3, 4) Z_TILE_KP_CASE(3, 3) Z_TILE_KP_CASE(3, 2) Z_TILE_KP_CASE(3, 1)
    Z_TILE_KP_CASE(2, 4) Z_TILE_KP_CASE(2, 3) Z_TILE_KP_CASE(2, 2) Z_TILE_KP_CASE(2, 1)
    Z_TILE_KP_CASE(1, 4) Z_TILE_KP_CASE(1, 3) Z_TILE_KP_CASE(1, 2) Z_TILE_KP_CASE(1, 1)
    default: break;
  }
}

/* Prefill: 4 rows decoded into the panel, a chunk of at most ZP_GMAX groups
 * at a time (longer rows add chunk by chunk), then 4-token tiles over it. */
WX_INLINE void z_mat_kp(const int f, const uint8_t *w, size_t rb, size_t nr, size_t cols, const uint8_t *act, size_t as,
                        size_t nt, float *y, size_t ldy) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const size_t ngt = cols / HEED_QA_GROUP;
  zp_group pan[ZP_RP * ZP_GMAX] __attribute__((aligned(64)));
  for (size_t r0 = 0; r0 < nr; r0 += ZP_RP) {
    const int R = nr - r0 < ZP_RP ? (int)(nr - r0) : ZP_RP;
    for (size_t g0 = 0; g0 < ngt; g0 += ZP_GMAX) {
      const size_t ng = ngt - g0 < ZP_GMAX ? ngt - g0 : ZP_GMAX;
      for (int r = 0; r < R; r++)
        for (size_t g = 0; g < ng; g++) {
          const char *pf = (const char *)w + (r0 + (size_t)r) * rb + (g0 + g) * wf_bytes(f) + Z_PF;
          for (size_t o = 0; o < wf_bytes(f); o += 64) _mm_prefetch(pf + o, _MM_HINT_T0);
          zg z;
          z_decode_kp(f, w + (r0 + (size_t)r) * rb, g0 + g, &z);
          zp_group *o = pan + (size_t)r * ZP_GMAX + g;
          for (int k = 0; k < 4; k++) _mm512_store_si512(&o->u[k], z.u[k]);
          _mm512_store_ps(&o->wv, z.wv), _mm512_store_ps(&o->cv, z.cv);
        }
      for (size_t t0 = 0; t0 < nt; t0 += 4) {
        const int T = nt - t0 < 4 ? (int)(nt - t0) : 4;
        z_tile_kp_any(R, T, pan, g0, ng, act + t0 * as, as, &l, y + t0 * ldy + r0, ldy, g0 > 0);
      }
    }
  }
}

#define Z_KERNELS_KP(name, F)                                                                                    \
  static void zkp_##name##_vec(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,     \
                               size_t nt, float *y, size_t ldy) {                                                \
    for (size_t t = 0; t < nt; t++) {                                                                            \
      const uint8_t *tok = (const uint8_t *)act + t * as;                                                        \
      size_t r = 0;                                                                                              \
      for (; r + ZKP_RV <= nr; r += ZKP_RV)                                                                      \
        z_vec_rows_kp(F, ZKP_RV, (const uint8_t *)w + r * rb, rb, cols, tok, y + t * ldy + r);                 \
      for (; r < nr; r++) z_vec_rows_kp(F, 1, (const uint8_t *)w + r * rb, rb, cols, tok, y + t * ldy + r);       \
    }                                                                                                            \
  }                                                                                                              \
  static void zkp_##name##_mat(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,     \
                               size_t nt, float *y, size_t ldy) {                                                \
    z_mat_kp(F, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act, as, nt, y, ldy);                         \
  }

Z_KERNELS_KP(q4_k, WF_Q4_K)
Z_KERNELS_KP(q5_k, WF_Q5_K)
Z_KERNELS_KP(q6_k, WF_Q6_K)

#define Z_KERNELS(name, F)                                                                                     \
  static void zmm_##name##_vec(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,   \
                               size_t nt, float *y, size_t ldy) {                                              \
    if (cols > ZP_GMAX * HEED_QA_GROUP) {                                                                      \
      wmm_##name##_vec_vnni(w, rb, nr, cols, act, as, nt, y, ldy);                                             \
      return;                                                                                                  \
    }                                                                                                          \
    for (size_t t = 0; t < nt; t++) {                                                                          \
      const uint8_t *tok = (const uint8_t *)act + t * as;                                                      \
      size_t r = 0;                                                                                            \
      for (; r + 4 <= nr; r += 4) z_vec_rows(F, 4, (const uint8_t *)w + r * rb, rb, cols, tok, y + t * ldy + r); \
      for (; r < nr; r++) z_vec_rows(F, 1, (const uint8_t *)w + r * rb, rb, cols, tok, y + t * ldy + r);       \
    }                                                                                                          \
  }                                                                                                            \
  static void zmm_##name##_mat(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,   \
                               size_t nt, float *y, size_t ldy) {                                              \
    if (cols > ZP_GMAX * HEED_QA_GROUP) {                                                                      \
      wmm_##name##_mat_vnni(w, rb, nr, cols, act, as, nt, y, ldy);                                             \
      return;                                                                                                  \
    }                                                                                                          \
    z_mat(F, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act, as, nt, y, ldy);                          \
  }

Z_KERNELS(q4_0, WF_Q4_0)
Z_KERNELS(q4_1, WF_Q4_1)
Z_KERNELS(q5_0, WF_Q5_0)
Z_KERNELS(q5_1, WF_Q5_1)
Z_KERNELS(q8_0, WF_Q8_0)
Z_KERNELS(q4_k, WF_Q4_K)
Z_KERNELS(q5_k, WF_Q5_K)
Z_KERNELS(q6_k, WF_Q6_K)

/* The 256-bit kernels still serve as a fallback; keep the compiler quiet about
 * the vec ones no slot names. */
#define Z_SET(t, TYPE, name) HEED_WSLOT_SET(t, TYPE, zmm_##name##_vec, zmm_##name##_mat)

/* The int8_dot_peak probe: 12 independent vpdpbusd chains, 64 multiply-adds each. */
static double probe_dot_vnni(uint64_t iters, float *sink) {
  const __m512i u = _mm512_set1_epi8((char)(1 + (iters & 1)));
  __m512i a[12], w[12];
  for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_si512(), w[i] = _mm512_set1_epi8((char)(i + 2));
  for (uint64_t it = 0; it < iters; it++)
    for (int i = 0; i < 12; i++) a[i] = _mm512_dpbusd_epi32(a[i], u, w[i]);
  __m512i s = a[0];
  for (int i = 1; i < 12; i++) s = _mm512_add_epi32(s, a[i]);
  *sink += (float)_mm_cvtsi128_si32(_mm512_castsi512_si128(s)); /* one lane: the vector adds wrap, a reduce in int would overflow */
  return (double)iters * 12 * 64 * 2;
}

void heed_weights_register_avx512vnni(heed_weights_table *t) {
  t->probe_dot = probe_dot_vnni;
  (void)wmm_q4_k_vec_vnni, (void)wmm_q5_k_vec_vnni, (void)wmm_q6_k_vec_vnni;
  (void)zmm_q4_k_vec, (void)zmm_q4_k_mat, (void)zmm_q5_k_vec, (void)zmm_q5_k_mat, (void)zmm_q6_k_vec,
      (void)zmm_q6_k_mat;
  t->pack = 1;
  /* the 32-block formats decode with the same arithmetic as their prefill
   * (z_vec_rows, z_tile): a token alone and in a batch give the same bits */
  HEED_WSLOT_SET(t, Q4_0, zmm_q4_0_vec, zmm_q4_0_mat);
  HEED_WSLOT_SET(t, Q4_1, zmm_q4_1_vec, zmm_q4_1_mat);
  HEED_WSLOT_SET(t, Q5_0, zmm_q5_0_vec, zmm_q5_0_mat);
  HEED_WSLOT_SET(t, Q5_1, zmm_q5_1_vec, zmm_q5_1_mat);
  HEED_WSLOT_SET(t, Q8_0, zmm_q8_0_vec, zmm_q8_0_mat);
  /* Q4_K and Q5_K read the activations in the kp order (z_decode_kp) */
  t->kperm = 1;
  HEED_WSLOT_SET(t, Q4_K, zkp_q4_k_vec, zkp_q4_k_mat);
  HEED_WSLOT_SET(t, Q5_K, zkp_q5_k_vec, zkp_q5_k_mat);
  HEED_WSLOT_SET(t, Q6_K, zkp_q6_k_vec, zkp_q6_k_mat);
}
