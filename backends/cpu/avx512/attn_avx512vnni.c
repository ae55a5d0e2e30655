/* backends/cpu/avx512/attn_avx512vnni.c - q8 K scores on vpdpbusd
 * (AVX512-VNNI), compiled with -mavx512vnni in a file of its own and used
 * only when the CPU has avx512_vnni (cpu_backend.c sets heed_cpu_ctx.qk_q8).
 *
 * The float cores spend a multiply-add per query row per K element; an int8
 * query makes that a quarter of a vpdpbusd. For one K group (its per-channel
 * scales ks), each query row r is scaled by the channel scales and quantized
 * to int8 with one scale per row (d_r = max |q ks| / 127, codes
 * nearbyint(q ks * 127 / max)), then
 *   s[r][j] = d_r * sum_d code_r[d] * K(j, d)
 * exactly in int32: vpdpbusd takes the K codes as unsigned (code + 128) and
 * the row's sum of codes times 128 is subtracted once. The K panels
 * ([dk][16] int8 per 16 keys) are turned key-major four channels at a time
 * in registers: a vpermd (4 x 4 dwords across the 128-bit lanes) and a
 * vpshufb (4 x 4 bytes within each). The error this adds is the query's
 * rounding: at most d_r / 2 per channel, i.e. |ds| <= d_r / 2 * sum_d |K(j, d)|
 * (tests/test_kernels.c checks the kernel bit for bit against a scalar copy
 * of this arithmetic; tests/test_attention.c bounds its effect on outputs). */
#include "backends/cpu/x86_intrin.h"
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/avx512/avx512_common.h"
#include "backends/cpu/kv_elem.h"
#include "runtime/backend.h"

#define QR 8 /* rows per pass */

/* Channels d..d+3 of a panel's 16 keys (64 bytes, channel-major) as 16
 * dwords, dword j = K(j, d..d+3) + 128 per byte. */
static inline __m512i kq_transpose(const uint8_t *p) {
  const __m512i x = _mm512_loadu_si512(p);
  const __m512i lanes = _mm512_permutexvar_epi32(
      _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), x);
  const __m512i bytes = _mm512_shuffle_epi8(
      lanes, _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15)));
  return _mm512_xor_si512(bytes, _mm512_set1_epi8((char)0x80));
}

/* RR rows x 16 keys of the panel at k: two int8 parts per row, hi and lo. */
static inline __attribute__((always_inline)) void kq_rows(const int RR, const int8_t *qc, const float *qd,
                                                          const int32_t *qsum, int dk, const uint8_t *k, float *s,
                                                          int lds) {
  __m512i a[QR][2];
  for (int r = 0; r < RR; r++) a[r][0] = a[r][1] = _mm512_setzero_si512();
  for (int d = 0; d < dk; d += 4) {
    const __m512i x = kq_transpose(k + (size_t)d * 16);
    for (int r = 0; r < RR; r++) {
      int32_t hi, lo;
      memcpy(&hi, qc + (size_t)(2 * r) * dk + d, 4);
      memcpy(&lo, qc + (size_t)(2 * r + 1) * dk + d, 4);
      a[r][0] = _mm512_dpbusd_epi32(a[r][0], x, _mm512_set1_epi32(hi));
      a[r][1] = _mm512_dpbusd_epi32(a[r][1], x, _mm512_set1_epi32(lo));
    }
  }
  for (int r = 0; r < RR; r++) {
    const __m512 h = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[r][0], _mm512_set1_epi32(128 * qsum[2 * r])));
    const __m512 l = _mm512_cvtepi32_ps(_mm512_sub_epi32(a[r][1], _mm512_set1_epi32(128 * qsum[2 * r + 1])));
    _mm512_storeu_ps(s + (size_t)r * lds,
                     _mm512_mul_ps(_mm512_add_ps(h, _mm512_mul_ps(l, _mm512_set1_ps(1.0f / 254))), _mm512_set1_ps(qd[r])));
  }
}

#define KQ_ROWS(rr, ...)                    \
  switch (rr) {                             \
    case 1: kq_rows(1, __VA_ARGS__); break; \
    case 2: kq_rows(2, __VA_ARGS__); break; \
    case 3: kq_rows(3, __VA_ARGS__); break; \
    case 4: kq_rows(4, __VA_ARGS__); break; \
    case 5: kq_rows(5, __VA_ARGS__); break; \
    case 6: kq_rows(6, __VA_ARGS__); break; \
    case 7: kq_rows(7, __VA_ARGS__); break; \
    default: kq_rows(8, __VA_ARGS__); break; \
  }

void heed_attn_qk_q8_vnni(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch) {
  int8_t *qc = (int8_t *)scratch; /* [R][2][dk]: hi, lo */
  float *qd = (float *)(qc + 2 * (size_t)R * dk); /* dk is a multiple of 16 */
  int32_t *qsum = (int32_t *)(qd + R);            /* [R][2] */
  for (int r = 0; r < R; r++) {
    const float *qr = q + (size_t)r * dk;
    __m512 mx = _mm512_setzero_ps();
    for (int d = 0; d < dk; d += 16)
      mx = _mm512_max_ps(mx, _mm512_abs_ps(_mm512_mul_ps(_mm512_loadu_ps(qr + d), _mm512_loadu_ps(ks + d))));
    const float amax = _mm512_reduce_max_ps(mx);
    const __m512 inv = _mm512_set1_ps(amax > 1e-30f ? 127.0f / amax : 0.0f);
    __m512i sh = _mm512_setzero_si512(), sl = sh;
    for (int d = 0; d < dk; d += 16) {
      /* v in [-127, 127]; hi = round(v); v - hi is exact, and lo rounds it in steps of 1/254 */
      const __m512 v = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(qr + d), _mm512_loadu_ps(ks + d)), inv);
      const __m512 hf = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 lf = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(v, hf), _mm512_set1_ps(254.0f)),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i h = _mm512_cvtps_epi32(hf), l = _mm512_cvtps_epi32(lf);
      sh = _mm512_add_epi32(sh, h), sl = _mm512_add_epi32(sl, l);
      _mm_storeu_si128((__m128i *)(qc + (size_t)(2 * r) * dk + d), _mm512_cvtepi32_epi8(h));
      _mm_storeu_si128((__m128i *)(qc + (size_t)(2 * r + 1) * dk + d), _mm512_cvtepi32_epi8(l));
    }
    qd[r] = amax / 127.0f;
    qsum[2 * r] = _mm512_reduce_add_epi32(sh), qsum[2 * r + 1] = _mm512_reduce_add_epi32(sl);
  }
  for (int j = 0; j < n; j += 16) {
    const uint8_t *k = HEED_K_RUN(kt, 16, dk, j, 0);
    for (int r = 0; r < R; r += QR) {
      const int rr = R - r < QR ? R - r : QR;
      KQ_ROWS(rr, qc + (size_t)(2 * r) * dk, qd + r, qsum + 2 * r, dk, k, s + (size_t)r * lds + j, lds)
    }
  }
}
