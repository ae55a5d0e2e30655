/* backends/cpu/avx2/weights_avx2.c - AVX2 weight kernels: the quantized
 * formats on vpmaddubsw (unsigned codes by signed activation codes, pairs
 * summed to int16) and vpmaddwd (to int32; for Q6_K it applies the two
 * sub-block scales), see weights_x86.h; F32/F16/BF16 rows by f32 activations
 * with fma, four tokens per loaded weight vector in prefill. */
#include "backends/cpu/avx2/avx2_common.h"

#define WX_DOT(u, a) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), _mm256_set1_epi16(1))
#define WX_DOT_M16(u, a, m16) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), (m16))
#include "backends/cpu/avx2/weights_x86.h"

WX_KERNELS(q4_1, WF_Q4_1, avx2)
WX_KERNELS(q5_1, WF_Q5_1, avx2)
WX_KERNELS(q8_0, WF_Q8_0, avx2)
WX_KERNELS(q4_k, WF_Q4_K, avx2)
WX_KERNELS(q5_k, WF_Q5_K, avx2)
WX_KERNELS(q6_k, WF_Q6_K, avx2)

/* ---- the K-quants on int16 sums (the kp2 order) ----
 *
 * A K-quant super-block (256 weights) has a weight scale per sub-block (32
 * weights; Q6_K: 16) and the activations a scale per 32, so a dot product
 * whose lanes mixed sub-blocks would have to be converted and scaled after
 * every 32 weights. Here the codes of a group of 256 are rearranged, weights
 * at decode and activations at packing (heed_qa_kp2, cpu_weights.c), so that
 * every dword lane of the eight 32-byte vectors holds one sub-block: vector
 * v = 4h + k, qword j holds
 *   Q4_K/Q5_K: elements 64j + 32h + 8k + 0..7 (lanes 2j, 2j+1: sub-block 2j + h)
 *   Q6_K:      elements 128h + 32j + 8k + 0..7 (lanes 2j, 2j+1: sub-block
 *              8h + 2j + k / 2, activation block 4h + j)
 * (a 4 x 4 transpose of qwords away from the natural decode). The
 * vpmaddubsw products of several vectors then add up in int16 (bounded:
 * 4 x 2 x 31 x 127 for Q4_K/Q5_K, 2 x 2 x 63 x 127 for Q6_K, both under
 * 32767), one vpmaddwd by the int16 sub-block scales widens them, and per
 * group, row and token the float work is two conversions and four fused
 * multiply-adds, where converting every 32 products took eight of each.
 *
 * Per group, row and token, with P_h the int32 sums of half h:
 *   Q4_K/Q5_K: t = cvt(P_0) dh_0 + cvt(P_1) dh_1;  acc += d t;  acc += mv ds32
 *   Q6_K:      t = cvt(P_0) dh_0 + cvt(P_1) dh_1 + cs_0 ds_0 + cs_1 ds_1;  acc += d t
 * in that order in the decode (one token) and prefill (panel) kernels alike,
 * so a row gives the same bits alone and in a batch. */
#define YP_PF 8192 /* bytes of prefetch distance in decode (rows are read in order) */
#ifndef YP_RP
#define YP_RP 8    /* rows of the prefill panel */
#endif
#ifndef YP_GMAX
#define YP_GMAX 16 /* groups per panel chunk: rows longer than 4096 add chunk by chunk */
#endif

typedef struct yp_group {
  __m256i u[8];   /* codes in the kp2 order */
  __m256i s16[4]; /* int16 scale of each lane's sub-block: Q4_K/Q5_K [h], Q6_K [2h + k / 2]; Q4_0/Q5_0: 1 */
  __m256 f[2];    /* Q4_K/Q5_K: f[0] = -dmin * min of sub-block 0..7; Q6_K: -32 * scale of sub-block 0..15;
                     Q4_0/Q5_0: f[0] = -offset (8, 16) * d of block 0..7 */
  __m256 d;       /* the super-block's d, in every lane */
  __m256 ws[2];   /* Q4_0/Q5_0: the d of each lane's block in half h (lanes 2j, 2j+1: block 2j + h) */
} yp_group;

/* Q4_0 and Q5_0 run the same panels in groups of 8 blocks (256 weights, the
 * kp2 order as Q4_K's: lanes 2j, 2j+1 of half h hold block 2j + h), their f16
 * scales per lane in ws; a row whose length is not a multiple of 256 ends in
 * a partial group (zero codes and scales past its last block; the packed
 * activations are zero there too). Per group, row and token:
 *   acc += (cvt(P_0) dh_0) ws_0;  acc += (cvt(P_1) dh_1) ws_1;  acc += f_0 ds32 */
WX_INLINE int yp_small(int f) { return f == WF_Q4_0 || f == WF_Q5_0; }
WX_INLINE size_t yp_gbytes(int f) { return yp_small(f) ? 8 * wf_bytes(f) : wf_bytes(f); }
/* Blocks of 32 in group g of a row of cols weights (8 but in a partial last group). */
WX_INLINE int yp_nbv(size_t cols, size_t g) {
  const size_t left = (cols - g * HEED_QA_GROUP) / 32;
  return left < 8 ? (int)left : 8;
}

/* The 4 x 4 transpose of the qwords of v[0..3]: o[k] qword j = v[j] qword k. */
WX_INLINE void yp_tq(const __m256i v[4], __m256i o[4]) {
  const __m256i t0 = _mm256_unpacklo_epi64(v[0], v[1]), t1 = _mm256_unpackhi_epi64(v[0], v[1]),
                t2 = _mm256_unpacklo_epi64(v[2], v[3]), t3 = _mm256_unpackhi_epi64(v[2], v[3]);
  o[0] = _mm256_permute2x128_si256(t0, t2, 0x20), o[1] = _mm256_permute2x128_si256(t1, t3, 0x20);
  o[2] = _mm256_permute2x128_si256(t0, t2, 0x31), o[3] = _mm256_permute2x128_si256(t1, t3, 0x31);
}

/* A group of nbv (1..8) Q4_0 / Q5_0 blocks at b. */
WX_INLINE void yp_decode_small(const int f, const uint8_t *b, int nbv, yp_group *o) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  const size_t bb = wf_bytes(f), qo = f == WF_Q5_0 ? 6 : 2;
  /* the 8 f16 scales gathered into one vector (in registers: no store to forward) */
  __m128i h16 = _mm_setzero_si128();
  uint16_t x16;
#define YP_H16(i) \
  if ((i) < nbv) memcpy(&x16, b + (i) * bb, 2), h16 = _mm_insert_epi16(h16, x16, (i))
  YP_H16(0); YP_H16(1); YP_H16(2); YP_H16(3); YP_H16(4); YP_H16(5); YP_H16(6); YP_H16(7);
#undef YP_H16
  const __m256 w = _mm256_cvtph_ps(h16);
  o->f[0] = _mm256_mul_ps(w, _mm256_set1_ps(f == WF_Q5_0 ? -16.0f : -8.0f));
  o->f[1] = o->d = _mm256_setzero_ps();
  o->s16[0] = o->s16[1] = _mm256_set1_epi16(1);
  for (int h = 0; h < 2; h++) {
    o->ws[h] = _mm256_permutevar8x32_ps(w, _mm256_setr_epi32(h, h, 2 + h, 2 + h, 4 + h, 4 + h, 6 + h, 6 + h));
    __m128i q[4], hv = _mm_setzero_si128();
    for (int j = 0; j < 4; j++) {
      const int i = 2 * j + h;
      q[j] = i < nbv ? _mm_loadu_si128((const __m128i *)(b + i * bb + qo)) : _mm_setzero_si128();
    }
    if (f == WF_Q5_0) {
      uint32_t x;
#define YP_QH(j) \
  if (2 * (j) + h < nbv) memcpy(&x, b + (2 * (j) + h) * bb + 2, 4), hv = _mm_insert_epi32(hv, (int)x, (j))
      YP_QH(0); YP_QH(1); YP_QH(2); YP_QH(3);
#undef YP_QH
    }
    /* qword j of x0 / x1: bytes 0..7 / 8..15 of block 2j + h's codes */
    const __m256i a = _mm256_set_m128i(q[2], q[0]), c = _mm256_set_m128i(q[3], q[1]);
    const __m256i x0 = _mm256_unpacklo_epi64(a, c), x1 = _mm256_unpackhi_epi64(a, c);
    o->u[4 * h + 0] = _mm256_and_si256(x0, m4), o->u[4 * h + 1] = _mm256_and_si256(x1, m4);
    o->u[4 * h + 2] = _mm256_and_si256(_mm256_srli_epi16(x0, 4), m4);
    o->u[4 * h + 3] = _mm256_and_si256(_mm256_srli_epi16(x1, 4), m4);
    if (f == WF_Q5_0) { /* element 8k + m of block 2j + h: bit m of byte k of its qh */
      const __m256i hh = _mm256_set_m128i(hv, hv), bits = _mm256_set1_epi64x((long long)0x8040201008040201ull);
      for (int k = 0; k < 4; k++) {
        const __m256i sel = _mm256_shuffle_epi8(
            hh, _mm256_setr_epi64x((long long)(0x0101010101010101ull * (unsigned)k),
                                   (long long)(0x0101010101010101ull * (unsigned)(4 + k)),
                                   (long long)(0x0101010101010101ull * (unsigned)(8 + k)),
                                   (long long)(0x0101010101010101ull * (unsigned)(12 + k))));
        const __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(sel, bits), bits);
        o->u[4 * h + k] = _mm256_or_si256(o->u[4 * h + k], _mm256_and_si256(hit, _mm256_set1_epi8(0x10)));
      }
    }
  }
}

WX_INLINE void yp_decode(const int f, const uint8_t *b, int nbv, yp_group *o) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  if (yp_small(f)) {
    yp_decode_small(f, b, nbv, o);
  } else if (f == WF_Q4_K || f == WF_Q5_K) {
    uint32_t ut[4];
    wx_k4_scales(b, ut);
    const __m128i s8 = _mm_loadu_si128((const __m128i *)ut); /* 8 scales, then 8 mins */
    o->s16[0] = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s8, _mm_setr_epi8(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6)));
    o->s16[1] = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s8, _mm_setr_epi8(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7)));
    o->f[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(s8, 8))),
                            _mm256_set1_ps(-wx_f16(b + 2)));
    o->f[1] = _mm256_setzero_ps();
    o->d = _mm256_set1_ps(wx_f16(b));
    const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48);
    __m256i c[4], t[4];
    for (int j = 0; j < 4; j++) c[j] = _mm256_loadu_si256((const __m256i *)(qs + 32 * j));
    yp_tq(c, t);
    for (int k = 0; k < 4; k++) o->u[k] = _mm256_and_si256(t[k], m4), o->u[4 + k] = _mm256_and_si256(_mm256_srli_epi16(t[k], 4), m4);
    if (f == WF_Q5_K) /* the fifth bit of element 64j + 32h + l is bit 2j + h of qh[l] */
      for (int h = 0; h < 2; h++) {
        const __m256i bit = _mm256_setr_epi64x((long long)(0x0101010101010101ull << h), (long long)(0x0404040404040404ull << h),
                                               (long long)(0x1010101010101010ull << h), (long long)(0x4040404040404040ull << h));
        for (int k = 0; k < 4; k++) {
          int64_t q8;
          memcpy(&q8, b + 16 + 8 * k, 8);
          const __m256i hit = _mm256_cmpeq_epi8(_mm256_and_si256(_mm256_set1_epi64x(q8), bit), bit);
          o->u[4 * h + k] = _mm256_or_si256(o->u[4 * h + k], _mm256_and_si256(hit, _mm256_set1_epi8(0x10)));
        }
      }
  } else { /* Q6_K: elements 128h + 32k + 0..31 in n[4h + k], then the transposes */
    const __m128i s16 = _mm_loadu_si128((const __m128i *)(b + 192));
    for (int i = 0; i < 4; i++) { /* lanes 2j, 2j+1 of s16[2h + s]: scale 8h + 2j + s */
      const char h = (char)(8 * (i >> 1) + (i & 1));
      o->s16[i] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(
          s16, _mm_setr_epi8(h, h, h, h, h + 2, h + 2, h + 2, h + 2, h + 4, h + 4, h + 4, h + 4, h + 6, h + 6, h + 6, h + 6)));
    }
    const __m256 m32 = _mm256_set1_ps(-32.0f);
    o->f[0] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(s16)), m32);
    o->f[1] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(s16, 8))), m32);
    o->d = _mm256_set1_ps(wx_f16(b + 208));
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) {
      const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h)),
                    ql1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32)),
                    qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
      __m256i n[4];
      for (int k = 0; k < 4; k++) {
        const __m256i ql = k & 1 ? ql1 : ql0;
        const __m256i lo = _mm256_and_si256(k >> 1 ? _mm256_srli_epi16(ql, 4) : ql, m4);
        n[k] = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m2), 4));
      }
      yp_tq(n, o->u + 4 * h);
    }
  }
}

/* Keeps v in a register as it is: GCC otherwise regroups the int16 sums into
 * trees of all R x T x 4 products, which need far more than 16 registers. */
#define YP_KEEP(v) __asm__("" : "+x"(v))

/* The int32 sums of half h for R rows (u: the rows' groups) by T tokens (q:
 * their codes of this group). */
WX_INLINE void yp_half(const int f, const int R, const int T, const yp_group *const *z, const int8_t *const *q, int h,
                       __m256i P[4][4]) {
  const int run = f == WF_Q6_K ? 2 : 4; /* vectors summed in int16 before vpmaddwd */
  for (int r = 0; r < R; r++) /* zero adds fold away; GCC's -Wmaybe-uninitialized wants them said */
    for (int t = 0; t < T; t++) P[r][t] = _mm256_setzero_si256();
  for (int k0 = 0; k0 < 4; k0 += run) {
    __m256i p[4][4];
    for (int r = 0; r < R; r++)
      for (int t = 0; t < T; t++) p[r][t] = _mm256_setzero_si256();
    for (int k = k0; k < k0 + run; k++) {
      __m256i a[4];
      for (int t = 0; t < T; t++) a[t] = _mm256_load_si256((const __m256i *)(q[t] + 32 * (4 * h + k)));
      for (int r = 0; r < R; r++) {
        const __m256i u = _mm256_load_si256(&z[r]->u[4 * h + k]);
        for (int t = 0; t < T; t++) {
          p[r][t] = _mm256_add_epi16(p[r][t], _mm256_maddubs_epi16(u, a[t]));
          YP_KEEP(p[r][t]);
        }
      }
    }
    const int si = f == WF_Q6_K ? 2 * h + k0 / 2 : h;
    for (int r = 0; r < R; r++) {
      const __m256i sc = _mm256_load_si256(&z[r]->s16[si]);
      for (int t = 0; t < T; t++) {
        P[r][t] = _mm256_add_epi32(P[r][t], _mm256_madd_epi16(p[r][t], sc));
      }
    }
  }
}

/* One group of R rows by T tokens into acc (the order of the comment above). */
WX_INLINE void yp_group_dot(const int f, const int R, const int T, const yp_group *const *z, const int8_t *const *q,
                            const float *const *dh, const float *const *ds, __m256 acc[4][4]) {
  __m256 tv[4][4];
  for (int r = 0; r < R; r++) /* set on the first half; said again here for GCC's -Wmaybe-uninitialized */
    for (int t = 0; t < T; t++) tv[r][t] = _mm256_setzero_ps();
  for (int h = 0; h < 2; h++) {
    __m256i P[4][4];
    yp_half(f, R, T, z, q, h, P);
    for (int t = 0; t < T; t++) {
      const __m256 d = _mm256_load_ps(dh[t] + 8 * h);
      for (int r = 0; r < R; r++)
        if (yp_small(f))
          acc[r][t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(P[r][t]), d), z[r]->ws[h], acc[r][t]);
        else
          tv[r][t] = h ? _mm256_fmadd_ps(_mm256_cvtepi32_ps(P[r][t]), d, tv[r][t])
                       : _mm256_mul_ps(_mm256_cvtepi32_ps(P[r][t]), d);
    }
  }
  if (yp_small(f)) {
    for (int t = 0; t < T; t++) {
      const __m256 s0 = _mm256_load_ps(ds[t]);
      for (int r = 0; r < R; r++) acc[r][t] = _mm256_fmadd_ps(z[r]->f[0], s0, acc[r][t]);
    }
    return;
  }
  for (int t = 0; t < T; t++) {
    const __m256 s0 = _mm256_load_ps(ds[t]), s1 = _mm256_load_ps(ds[t] + 8);
    for (int r = 0; r < R; r++) {
      if (f == WF_Q6_K) {
        tv[r][t] = _mm256_fmadd_ps(z[r]->f[0], s0, tv[r][t]);
        tv[r][t] = _mm256_fmadd_ps(z[r]->f[1], s1, tv[r][t]);
        acc[r][t] = _mm256_fmadd_ps(tv[r][t], z[r]->d, acc[r][t]);
      } else {
        acc[r][t] = _mm256_fmadd_ps(tv[r][t], z[r]->d, acc[r][t]);
        acc[r][t] = _mm256_fmadd_ps(z[r]->f[0], s0, acc[r][t]);
      }
    }
  }
}

/* Decode: one row by one token, chunk by chunk as the panel goes. */
WX_INLINE void yp_vec_row(const int f, const uint8_t *row, size_t cols, const uint8_t *tok, float *y) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const size_t ngt = (cols + HEED_QA_GROUP - 1) / HEED_QA_GROUP, gb = yp_gbytes(f);
  float out = 0;
  for (size_t g0 = 0; g0 < ngt; g0 += YP_GMAX) {
    const size_t g1 = ngt - g0 < YP_GMAX ? ngt : g0 + YP_GMAX;
    __m256 acc[4][4];
    acc[0][0] = _mm256_setzero_ps();
    for (size_t g = g0; g < g1; g++) {
      for (size_t o = 0; o < gb; o += 64) _mm_prefetch((const char *)row + g * gb + YP_PF + o, _MM_HINT_T0);
      yp_group z;
      yp_decode(f, row + g * gb, yp_nbv(cols, g), &z);
      const yp_group *zp[1] = {&z};
      const int8_t *q[1] = {(const int8_t *)(tok + l.off_q) + HEED_QA_GROUP * g};
      const float *dh[1] = {(const float *)(tok + l.off_dh) + 16 * g}, *ds[1] = {(const float *)(tok + l.off_ds) + 16 * g};
      yp_group_dot(f, 1, 1, zp, q, dh, ds, acc);
    }
    const float v = hsum256(acc[0][0]);
    out = g0 ? out + v : v;
  }
  *y = out;
}

/* Rows [0, R) of a panel chunk (groups g0 .. g0 + ng) by T tokens; add: y += (a later chunk). */
WX_INLINE void yp_tile(const int f, const int R, const int T, const yp_group *pan, size_t g0, size_t ng,
                       const uint8_t *tok, size_t as, const heed_qa_layout *l, float *y, size_t ldy, int add) {
  __m256 acc[4][4];
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
  for (size_t g = 0; g < ng; g++) {
    const size_t ga = g0 + g;
    const yp_group *z[4];
    const int8_t *q[4];
    const float *dh[4], *ds[4];
    for (int r = 0; r < R; r++) z[r] = pan + (size_t)r * YP_GMAX + g;
    for (int t = 0; t < T; t++) {
      const uint8_t *tk = tok + (size_t)t * as;
      q[t] = (const int8_t *)(tk + l->off_q) + HEED_QA_GROUP * ga;
      dh[t] = (const float *)(tk + l->off_dh) + 16 * ga, ds[t] = (const float *)(tk + l->off_ds) + 16 * ga;
    }
    yp_group_dot(f, R, T, z, q, dh, ds, acc);
  }
  for (int r = 0; r < R; r++)
    for (int t = 0; t < T; t++) {
      const float v = hsum256(acc[r][t]);
      y[(size_t)t * ldy + r] = add ? y[(size_t)t * ldy + r] + v : v;
    }
}

#ifndef YP_TR
#define YP_TR 4 /* tile rows */
#endif
#ifndef YP_TT
#define YP_TT 3 /* tile tokens */
#endif
#define YP_TILE_CASE(F, R, T) \
  case (R) * 8 + (T): yp_tile(F, R, T, pan, g0, ng, tok, as, l, y, ldy, add); break;
#define YP_TILE_ANY(name, F)                                                                                      \
  __attribute__((noinline)) static void yp_tile_##name(int R, int T, const yp_group *pan, size_t g0, size_t ng,   \
                                                       const uint8_t *tok, size_t as, const heed_qa_layout *l,    \
                                                       float *y, size_t ldy, int add) {                           \
    switch (R * 8 + T) {                                                                                          \
      YP_TILE_CASE(F, 4, 4) YP_TILE_CASE(F, 4, 3) YP_TILE_CASE(F, 4, 2) YP_TILE_CASE(F, 4, 1)                     \
      YP_TILE_CASE(F, 3, 4) YP_TILE_CASE(F, 3, 3) YP_TILE_CASE(F, 3, 2) YP_TILE_CASE(F, 3, 1)                     \
      YP_TILE_CASE(F, 2, 4) YP_TILE_CASE(F, 2, 3) YP_TILE_CASE(F, 2, 2) YP_TILE_CASE(F, 2, 1)                     \
      YP_TILE_CASE(F, 1, 4) YP_TILE_CASE(F, 1, 3) YP_TILE_CASE(F, 1, 2) YP_TILE_CASE(F, 1, 1)                     \
      default: break;                                                                                             \
    }                                                                                                             \
  }

/* Prefill: YP_RP rows decoded into the panel, a chunk of at most YP_GMAX
 * groups at a time, then YP_TR x YP_TT tiles over it, tokens outer (their
 * codes stay in L1 while the panel's rows go by). */
#define YP_KERNELS(name, F)                                                                                       \
  YP_TILE_ANY(name, F)                                                                                            \
  static void yp_##name##_vec(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,       \
                              size_t nt, float *y, size_t ldy) {                                                  \
    for (size_t t = 0; t < nt; t++)                                                                               \
      for (size_t r = 0; r < nr; r++)                                                                             \
        yp_vec_row(F, (const uint8_t *)w + r * rb, cols, (const uint8_t *)act + t * as, y + t * ldy + r);        \
  }                                                                                                               \
  static void yp_##name##_mat(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,       \
                              size_t nt, float *y, size_t ldy) {                                                  \
    const heed_qa_layout l = heed_qa_layout_of(cols);                                                             \
    const size_t ngt = (cols + HEED_QA_GROUP - 1) / HEED_QA_GROUP;                                                \
    yp_group pan[YP_RP * YP_GMAX] __attribute__((aligned(32)));                                                   \
    for (size_t r0 = 0; r0 < nr; r0 += YP_RP) {                                                                   \
      const size_t rp = nr - r0 < YP_RP ? nr - r0 : YP_RP;                                                        \
      for (size_t g0 = 0; g0 < ngt; g0 += YP_GMAX) {                                                              \
        const size_t ng = ngt - g0 < YP_GMAX ? ngt - g0 : YP_GMAX;                                                \
        for (size_t r = 0; r < rp; r++)                                                                           \
          for (size_t g = 0; g < ng; g++)                                                                         \
            yp_decode(F, (const uint8_t *)w + (r0 + r) * rb + (g0 + g) * yp_gbytes(F), yp_nbv(cols, g0 + g),    \
                      pan + r * YP_GMAX + g);                                                                     \
        for (size_t t0 = 0; t0 < nt; t0 += YP_TT) {                                                               \
          const int T = nt - t0 < YP_TT ? (int)(nt - t0) : YP_TT;                                                 \
          for (size_t r1 = 0; r1 < rp; r1 += YP_TR) {                                                             \
            const int R = rp - r1 < YP_TR ? (int)(rp - r1) : YP_TR;                                               \
            yp_tile_##name(R, T, pan + r1 * YP_GMAX, g0, ng, (const uint8_t *)act + t0 * as, as, &l,              \
                           y + t0 * ldy + r0 + r1, ldy, g0 > 0);                                                  \
          }                                                                                                       \
        }                                                                                                         \
      }                                                                                                           \
    }                                                                                                             \
  }
YP_KERNELS(q4_0, WF_Q4_0)
YP_KERNELS(q5_0, WF_Q5_0)
YP_KERNELS(q4_k, WF_Q4_K)
YP_KERNELS(q5_k, WF_Q5_K)
YP_KERNELS(q6_k, WF_Q6_K)

/* The 32 activations of block a, quantized as the reference does (same bits). */
static void quant_avx2(const float *x, size_t n, heed_qa_block *a) {
  const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  for (size_t b = 0; b < n / 32; b++, x += 32) {
    __m256 v[4], m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + 8 * k), m = _mm256_max_ps(m, _mm256_and_ps(v[k], absmask));
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    h = _mm_max_ss(h, _mm_movehdup_ps(h));
    const float d = _mm_cvtss_f32(h) / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    __m256i q[4];
    for (int k = 0; k < 4; k++)
      q[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], _mm256_set1_ps(id)),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    /* sums of each half: q[0..1] and q[2..3] */
    __m256i s0 = _mm256_add_epi32(q[0], q[1]), s1 = _mm256_add_epi32(q[2], q[3]);
    __m256i s = _mm256_hadd_epi32(s0, s1); /* [s0 pairs lo, s1 pairs lo, s0 pairs hi, s1 pairs hi] */
    s = _mm256_hadd_epi32(s, s);
    __m128i ss = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    a[b].d = d;
    a[b].s[0] = (int16_t)_mm_cvtsi128_si32(ss), a[b].s[1] = (int16_t)_mm_extract_epi32(ss, 1);
    __m256i p01 = _mm256_packs_epi32(q[0], q[1]), p23 = _mm256_packs_epi32(q[2], q[3]);
    __m256i p = _mm256_packs_epi16(p01, p23); /* lane-interleaved: fix the order of the 4-byte groups */
    p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)a[b].q, p);
  }
}

/* F32/F16/BF16 rows: NT tokens (1 or 4) per weight vector loaded. */
#define WF_ROWS(NAME, T, LOAD8)                                                                                   \
  static inline __attribute__((always_inline)) void NAME(const int NT, const void *w, size_t rb, size_t nr,     \
                                                           size_t cols, const void *act, size_t as, float *y,     \
                                                           size_t ldy) {                                          \
    for (size_t r = 0; r < nr; r++) {                                                                             \
      const T *row = (const T *)((const uint8_t *)w + r * rb);                                                    \
      __m256 acc[4][2];                                                                                           \
      for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();                                   \
      size_t c = 0;                                                                                               \
      for (; c + 16 <= cols; c += 16) {                                                                           \
        const __m256 w0 = LOAD8(row + c), w1 = LOAD8(row + c + 8);                                                \
        for (int t = 0; t < NT; t++) {                                                                            \
          const float *x = (const float *)((const uint8_t *)act + (size_t)t * as) + c;                            \
          acc[t][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x), acc[t][0]);                                         \
          acc[t][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + 8), acc[t][1]);                                     \
        }                                                                                                         \
      }                                                                                                           \
      for (int t = 0; t < NT; t++) {                                                                              \
        const float *x = (const float *)((const uint8_t *)act + (size_t)t * as);                                  \
        float s = hsum256(_mm256_add_ps(acc[t][0], acc[t][1]));                                                   \
        for (size_t k = c; k < cols; k++) s += WF_ONE_##T(row[k]) * x[k];                                         \
        y[(size_t)t * ldy + r] = s;                                                                               \
      }                                                                                                           \
    }                                                                                                             \
  }
#define WF_ONE_float(v) (v)
#define WF_ONE_heed_f16(v) heed_f16_to_f32(v)
#define WF_ONE_heed_bf16(v) heed_bf16_to_f32(v)
WF_ROWS(rows_f32, float, load8_f32)
WF_ROWS(rows_f16, heed_f16, load8_f16)
WF_ROWS(rows_bf16, heed_bf16, load8_bf16)

#define WF_KERNELS(name)                                                                                          \
  static void wmm_##name##_vec_avx2(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as, \
                                    size_t nt, float *y, size_t ldy) {                                            \
    for (size_t t = 0; t < nt; t++) rows_##name(1, w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy); \
  }                                                                                                               \
  static void wmm_##name##_mat_avx2(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as, \
                                    size_t nt, float *y, size_t ldy) {                                            \
    size_t t = 0;                                                                                                 \
    for (; t + 4 <= nt; t += 4) rows_##name(4, w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy); \
    for (; t < nt; t++) rows_##name(1, w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);   \
  }
WF_KERNELS(f32)
WF_KERNELS(f16)
WF_KERNELS(bf16)

/* The gated activation, 8 lanes at a time: sigmoid(t) from one z = exp(-|t|)
 * as (t >= 0 ? 1 : z) / (1 + z), t = x (SiLU) or 2u = x (2c + 2c 0.044715 x^2)
 * (GELU, tanh form: 0.5 x (1 + tanh(u)) = x sigmoid(2u)). The last n % 8
 * go through the same lanes from a zero-padded copy, so every element gets
 * the same arithmetic wherever it sits. */
static inline __m256 glu8(__m256 x, __m256 u, int gelu) {
  const __m256 sign = _mm256_set1_ps(-0.0f), one = _mm256_set1_ps(1.0f);
  __m256 t = x;
  if (gelu) t = _mm256_mul_ps(x, _mm256_fmadd_ps(_mm256_mul_ps(x, x), _mm256_set1_ps(HEED_GELU_C3), _mm256_set1_ps(HEED_GELU_C1)));
  const __m256 z = exp_neg(_mm256_or_ps(t, sign)); /* exp(-|t|) */
  const __m256 num = _mm256_blendv_ps(z, one, _mm256_cmp_ps(t, _mm256_setzero_ps(), _CMP_GE_OQ));
  return _mm256_mul_ps(_mm256_mul_ps(x, _mm256_div_ps(num, _mm256_add_ps(one, z))), u);
}

static void glu_avx2(float *gate, const float *up, size_t n, int gelu) {
  size_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(gate + i, glu8(_mm256_loadu_ps(gate + i), _mm256_loadu_ps(up + i), gelu));
  if (i < n) {
    float g[8] = {0}, u[8] = {0};
    memcpy(g, gate + i, (n - i) * sizeof(float)), memcpy(u, up + i, (n - i) * sizeof(float));
    _mm256_storeu_ps(g, glu8(_mm256_loadu_ps(g), _mm256_loadu_ps(u), gelu));
    memcpy(gate + i, g, (n - i) * sizeof(float));
  }
}

/* The int8_dot_peak probe: 8 independent chains of the int8 product the
 * 256-bit kernels use (vpmaddubsw, vpmaddwd, vpaddd), 32 multiply-adds each.
 * u is said to change every round (an empty asm): the products of loop
 * invariants were otherwise hoisted out, and the loop timed was 8 vpaddd. */
static double probe_dot_avx2(uint64_t iters, float *sink) {
  __m256i u = _mm256_set1_epi8((char)(1 + (iters & 1)));
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i a[8], w[8];
  for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_si256(), w[i] = _mm256_set1_epi8((char)(i + 2));
  for (uint64_t it = 0; it < iters; it++) {
    __asm__("" : "+x"(u));
    for (int i = 0; i < 8; i++) a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(u, w[i]), ones));
  }
  __m256i s = a[0];
  for (int i = 1; i < 8; i++) s = _mm256_add_epi32(s, a[i]);
  *sink += (float)_mm256_extract_epi32(s, 0);
  return (double)iters * 8 * 32 * 2;
}

void heed_weights_register_avx2(heed_weights_table *t) {
  t->probe_dot = probe_dot_avx2;
  t->glu = glu_avx2;
  t->glu_name = "glu_avx2";
  t->quant = quant_avx2;
  t->quant_name = "quant_q8_avx2";
  HEED_WSLOT_SET(t, F32, wmm_f32_vec_avx2, wmm_f32_mat_avx2);
  HEED_WSLOT_SET(t, F16, wmm_f16_vec_avx2, wmm_f16_mat_avx2);
  HEED_WSLOT_SET(t, BF16, wmm_bf16_vec_avx2, wmm_bf16_mat_avx2);
  HEED_WSLOT_SET(t, Q4_1, wmm_q4_1_vec_avx2, wmm_q4_1_mat_avx2);
  HEED_WSLOT_SET(t, Q5_1, wmm_q5_1_vec_avx2, wmm_q5_1_mat_avx2);
  HEED_WSLOT_SET(t, Q8_0, wmm_q8_0_vec_avx2, wmm_q8_0_mat_avx2);
  /* the K-quants, Q4_0 and Q5_0 read the packed activations in the kp2 order (see yp_decode) */
  t->pack = 1;
  t->kperm = 2;
  HEED_WSLOT_SET(t, Q4_0, yp_q4_0_vec, yp_q4_0_mat);
  HEED_WSLOT_SET(t, Q5_0, yp_q5_0_vec, yp_q5_0_mat);
  (void)wmm_q4_k_vec_avx2, (void)wmm_q5_k_vec_avx2, (void)wmm_q6_k_vec_avx2;
  (void)wmm_q4_k_mat_avx2, (void)wmm_q5_k_mat_avx2, (void)wmm_q6_k_mat_avx2;
  HEED_WSLOT_SET(t, Q4_K, yp_q4_k_vec, yp_q4_k_mat);
  HEED_WSLOT_SET(t, Q5_K, yp_q5_k_vec, yp_q5_k_mat);
  HEED_WSLOT_SET(t, Q6_K, yp_q6_k_vec, yp_q6_k_mat);
}
