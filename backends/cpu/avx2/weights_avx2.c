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

void heed_weights_register_avx2(heed_weights_table *t) {
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
  HEED_WSLOT_SET(t, Q4_K, wmm_q4_k_vec_avx2, wmm_q4_k_mat_avx2);
  HEED_WSLOT_SET(t, Q5_K, wmm_q5_k_vec_avx2, wmm_q5_k_mat_avx2);
  HEED_WSLOT_SET(t, Q6_K, wmm_q6_k_vec_avx2, wmm_q6_k_mat_avx2);
}
