/* backends/cpu/avx2/weights_avx2.c - AVX2 weight kernels: the quantized
 * formats on vpmaddubsw (unsigned codes by signed activation codes, pairs
 * summed to int16) and vpmaddwd (to int32; for Q6_K it applies the two
 * sub-block scales), see weights_x86.h; F32/F16/BF16 rows by f32 activations
 * with fma, four tokens per loaded weight vector in prefill. */
#include "backends/cpu/avx2/avx2_common.h"

#define WX_DOT(u, a) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), _mm256_set1_epi16(1))
#define WX_DOT_M16(u, a, m16) _mm256_madd_epi16(_mm256_maddubs_epi16((u), (a)), (m16))
#include "backends/cpu/avx2/weights_x86.h"

WX_KERNELS(q4_0, WF_Q4_0, avx2)
WX_KERNELS(q4_1, WF_Q4_1, avx2)
WX_KERNELS(q5_0, WF_Q5_0, avx2)
WX_KERNELS(q5_1, WF_Q5_1, avx2)
WX_KERNELS(q8_0, WF_Q8_0, avx2)
WX_KERNELS(q4_k, WF_Q4_K, avx2)
WX_KERNELS(q5_k, WF_Q5_K, avx2)
WX_KERNELS(q6_k, WF_Q6_K, avx2)

/* ---- the K-quants on the packed activations ----
 *
 * The chunk kernels above decode a K-quant's scales again for every 32
 * weights, in scalar code, and so run compute-bound at about a third of the
 * read bandwidth in decode. These decode each super-block (256 weights) once:
 * per half block h (16 weights) an f32 weight scale sf[h] and an offset
 * coefficient cf[h] (Q4_K/Q5_K: d * scale and -dmin * min of the sub-block;
 * Q6_K: d * scale and -32 d * scale), and read the packed activations
 * (heed_qa_layout: codes, dh = the block's d and ds = d * code sum per half
 * block), so that for a token
 *   y += sum_h cf[h] ds[h] + sum_j float(sum_{i in chunk j} u_i q_i) * (sf dh)
 * with the last product taken per half block (4 int32 lanes each). */
#define KX_PF 8192 /* bytes of prefetch distance (rows are read in order) */

typedef struct kx_sb {
  __m256 sf[2], cf[2]; /* half blocks 0..7, 8..15 */
  __m256i u[8];        /* codes of chunk j (32 weights) */
} kx_sb;

static inline __m256 kx_dup(__m256i v8, int hi) { /* 8 int32 -> lanes 2j, 2j+1 = v[j + 4 hi] as float */
  const __m256i idx = hi ? _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7) : _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
  return _mm256_cvtepi32_ps(_mm256_permutevar8x32_epi32(v8, idx));
}

static inline __attribute__((always_inline)) void kx_decode(const int f, const uint8_t *b, kx_sb *o) {
  const __m256i m4 = _mm256_set1_epi8(0x0F);
  if (f == WF_Q4_K || f == WF_Q5_K) {
    uint32_t ut[4];
    wx_k4_scales(b, ut);
    const __m128i s8 = _mm_loadu_si128((const __m128i *)ut); /* 8 scales, then 8 mins */
    const __m256i sc = _mm256_cvtepu8_epi32(s8), mn = _mm256_cvtepu8_epi32(_mm_srli_si128(s8, 8));
    const __m256 d = _mm256_set1_ps(wx_f16(b)), dmin = _mm256_set1_ps(-wx_f16(b + 2));
    for (int hi = 0; hi < 2; hi++)
      o->sf[hi] = _mm256_mul_ps(kx_dup(sc, hi), d), o->cf[hi] = _mm256_mul_ps(kx_dup(mn, hi), dmin);
    const uint8_t *qs = b + (f == WF_Q4_K ? 16 : 48);
    const __m256i qh = f == WF_Q5_K ? _mm256_loadu_si256((const __m256i *)(b + 16)) : _mm256_setzero_si256();
    for (int j = 0; j < 8; j += 2) {
      const __m256i q = _mm256_loadu_si256((const __m256i *)(qs + 16 * j));
      o->u[j] = _mm256_and_si256(q, m4), o->u[j + 1] = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
      if (f == WF_Q5_K)
        for (int k = j; k < j + 2; k++)
          o->u[k] = _mm256_or_si256(
              o->u[k], _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, k), _mm256_set1_epi8(1)), 4));
    }
  } else { /* Q6_K */
    const __m256 d = _mm256_set1_ps(wx_f16(b + 208)), m32 = _mm256_set1_ps(-32.0f);
    const __m128i s16 = _mm_loadu_si128((const __m128i *)(b + 192));
    for (int hi = 0; hi < 2; hi++) {
      o->sf[hi] = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi ? _mm_srli_si128(s16, 8) : s16)), d);
      o->cf[hi] = _mm256_mul_ps(o->sf[hi], m32);
    }
    const __m256i m2 = _mm256_set1_epi8(3);
    for (int h = 0; h < 2; h++) { /* chunks 4h .. 4h + 3: 128 weights */
      const __m256i ql0 = _mm256_loadu_si256((const __m256i *)(b + 64 * h)),
                    ql1 = _mm256_loadu_si256((const __m256i *)(b + 64 * h + 32)),
                    qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * h));
      for (int k = 0; k < 4; k++) {
        const __m256i ql = k & 1 ? ql1 : ql0;
        const __m256i lo = _mm256_and_si256(k >> 1 ? _mm256_srli_epi16(ql, 4) : ql, m4);
        const __m256i hb = _mm256_and_si256(_mm256_srli_epi16(qh, 2 * k), m2);
        o->u[4 * h + k] = _mm256_or_si256(lo, _mm256_slli_epi16(hb, 4));
      }
    }
  }
}

/* Rows [0, n_rows) by NT tokens (1 or 4), packed activations. */
static inline __attribute__((always_inline)) void kx_rows(const int f, const int NT, const uint8_t *w, size_t rb,
                                                          size_t n_rows, size_t cols, const uint8_t *act, size_t as,
                                                          float *y, size_t ldy) {
  const heed_qa_layout l = heed_qa_layout_of(cols);
  const size_t ng = cols / 256, gb = wf_bytes(f);
  const __m256i ones = _mm256_set1_epi16(1);
  static const int32_t pidx[4][8] = {{0, 0, 0, 0, 1, 1, 1, 1}, {2, 2, 2, 2, 3, 3, 3, 3}, {4, 4, 4, 4, 5, 5, 5, 5},
                                     {6, 6, 6, 6, 7, 7, 7, 7}};
  for (size_t r = 0; r < n_rows; r++) {
    const uint8_t *row = w + r * rb;
    __m256 acc[4][2];
    for (int t = 0; t < NT; t++) acc[t][0] = acc[t][1] = _mm256_setzero_ps();
    for (size_t g = 0; g < ng; g++) {
      for (size_t o = 0; o < gb; o += 64) _mm_prefetch((const char *)row + g * gb + KX_PF + o, _MM_HINT_T0);
      kx_sb z;
      kx_decode(f, row + g * gb, &z);
      for (int t = 0; t < NT; t++) {
        const uint8_t *tok = act + (size_t)t * as;
        const float *dh = (const float *)(tok + l.off_dh) + 16 * g, *ds = (const float *)(tok + l.off_ds) + 16 * g;
        const int8_t *q = (const int8_t *)(tok + l.off_q) + 256 * g;
        __m256 sd[2];
        for (int hi = 0; hi < 2; hi++) {
          sd[hi] = _mm256_mul_ps(z.sf[hi], _mm256_loadu_ps(dh + 8 * hi));
          acc[t][hi] = _mm256_fmadd_ps(z.cf[hi], _mm256_loadu_ps(ds + 8 * hi), acc[t][hi]);
        }
        for (int j = 0; j < 8; j++) {
          const __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(z.u[j], _mm256_loadu_si256((const __m256i *)(q + 32 * j))), ones);
          const __m256 s = _mm256_permutevar8x32_ps(sd[j >> 2], _mm256_loadu_si256((const __m256i *)pidx[j & 3]));
          acc[t][j & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[t][j & 1]);
        }
      }
    }
    for (int t = 0; t < NT; t++) {
      __m256 a = _mm256_add_ps(acc[t][0], acc[t][1]);
      __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
      s = _mm_add_ps(s, _mm_movehl_ps(s, s));
      s = _mm_add_ss(s, _mm_movehdup_ps(s));
      y[(size_t)t * ldy + r] = _mm_cvtss_f32(s);
    }
  }
}

#define KX_KERNELS(name, F)                                                                                        \
  static void kx_##name##_vec(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,         \
                              size_t nt, float *y, size_t ldy) {                                                   \
    for (size_t t = 0; t < nt; t++)                                                                                \
      kx_rows(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);        \
  }                                                                                                                \
  static void kx_##name##_mat(const void *w, size_t rb, size_t nr, size_t cols, const void *act, size_t as,         \
                              size_t nt, float *y, size_t ldy) {                                                   \
    size_t t = 0;                                                                                                  \
    for (; t + 4 <= nt; t += 4)                                                                                    \
      kx_rows(F, 4, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);        \
    for (; t < nt; t++)                                                                                            \
      kx_rows(F, 1, (const uint8_t *)w, rb, nr, cols, (const uint8_t *)act + t * as, as, y + t * ldy, ldy);        \
  }
KX_KERNELS(q4_k, WF_Q4_K)
KX_KERNELS(q5_k, WF_Q5_K)
KX_KERNELS(q6_k, WF_Q6_K)

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

/* The int8_dot_peak probe: 8 independent chains of the int8 product the
 * 256-bit kernels use (vpmaddubsw, vpmaddwd, vpaddd), 32 multiply-adds each. */
static double probe_dot_avx2(uint64_t iters, float *sink) {
  const __m256i u = _mm256_set1_epi8((char)(1 + (iters & 1))), ones = _mm256_set1_epi16(1);
  __m256i a[8], w[8];
  for (int i = 0; i < 8; i++) a[i] = _mm256_setzero_si256(), w[i] = _mm256_set1_epi8((char)(i + 2));
  for (uint64_t it = 0; it < iters; it++)
    for (int i = 0; i < 8; i++) a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(u, w[i]), ones));
  __m256i s = a[0];
  for (int i = 1; i < 8; i++) s = _mm256_add_epi32(s, a[i]);
  *sink += (float)_mm256_extract_epi32(s, 0);
  return (double)iters * 8 * 32 * 2;
}

void heed_weights_register_avx2(heed_weights_table *t) {
  t->probe_dot = probe_dot_avx2;
  t->quant = quant_avx2;
  t->quant_name = "quant_q8_avx2";
  HEED_WSLOT_SET(t, F32, wmm_f32_vec_avx2, wmm_f32_mat_avx2);
  HEED_WSLOT_SET(t, F16, wmm_f16_vec_avx2, wmm_f16_mat_avx2);
  HEED_WSLOT_SET(t, BF16, wmm_bf16_vec_avx2, wmm_bf16_mat_avx2);
  HEED_WSLOT_SET(t, Q4_0, wmm_q4_0_vec_avx2, wmm_q4_0_mat_avx2);
  HEED_WSLOT_SET(t, Q4_1, wmm_q4_1_vec_avx2, wmm_q4_1_mat_avx2);
  HEED_WSLOT_SET(t, Q5_0, wmm_q5_0_vec_avx2, wmm_q5_0_mat_avx2);
  HEED_WSLOT_SET(t, Q5_1, wmm_q5_1_vec_avx2, wmm_q5_1_mat_avx2);
  HEED_WSLOT_SET(t, Q8_0, wmm_q8_0_vec_avx2, wmm_q8_0_mat_avx2);
  /* the K-quants read the packed activations (see kx_rows) */
  t->pack = 1;
  (void)wmm_q4_k_vec_avx2, (void)wmm_q5_k_vec_avx2, (void)wmm_q6_k_vec_avx2;
  (void)wmm_q4_k_mat_avx2, (void)wmm_q5_k_mat_avx2, (void)wmm_q6_k_mat_avx2;
  HEED_WSLOT_SET(t, Q4_K, kx_q4_k_vec, kx_q4_k_mat);
  HEED_WSLOT_SET(t, Q5_K, kx_q5_k_vec, kx_q5_k_mat);
  HEED_WSLOT_SET(t, Q6_K, kx_q6_k_vec, kx_q6_k_mat);
}
