/* backends/cpu/neon/attn_q8_neon.c - q8 K scores on sdot (Armv8.2 dotprod),
 * built with the +dotprod target in this file and used only when the CPU has
 * dotprod (cpu_backend.c sets heed_cpu_ctx.qk_q8).
 *
 * The arithmetic is _vnni's (runtime/backend.h): for one K group (its
 * per-channel scales ks), each query row r is scaled by the channel scales
 * and quantized to two int8 parts with one step per row (d_r = max |q ks| /
 * 127; h = nearbyint(v), l = nearbyint((v - h) * 254) of v = q ks / d_r), then
 *   s[r][j] = d_r * (sum_d h[d] K(j, d) + sum_d l[d] K(j, d) / 254)
 * with both sums exact in int32. sdot is signed by signed, so the K codes are
 * used as they are stored (vpdpbusd needs them shifted to unsigned). The
 * panels ([dk][16] int8 per 16 keys, channel-major) are turned key-major four
 * channels at a time with two rounds of zips: four registers of four keys,
 * each key's four channels in one 32-bit lane, which one sdot multiplies by
 * the query's four channels broadcast to every lane. The query's rounding is
 * the only error: at most d_r / 508 per channel (tests/test_kernels.c holds
 * the kernel to a scalar copy of this arithmetic and to fp64). */
#include <arm_neon.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/kv_elem.h"
#include "runtime/backend.h"

#pragma GCC target("arch=armv8.2-a+dotprod")

#define QR 3 /* rows per pass: 3 x 2 parts x 4 key quads = 24 accumulators of 32 registers */

/* RR rows x 16 keys of the panel at k. */
static inline __attribute__((always_inline)) void kq_rows(const int RR, const int8_t *qc, const float *qd, int dk,
                                                          const int8_t *k, float *s, int lds) {
  int32x4_t a[QR][2][4];
  for (int r = 0; r < RR; r++)
    for (int p = 0; p < 2; p++)
      for (int m = 0; m < 4; m++) a[r][p][m] = vdupq_n_s32(0);
  for (int d = 0; d < dk; d += 4, k += 64) {
    /* channels d..d+3 of 16 keys -> x[m]: keys 4m..4m+3, each with its 4 channels */
    const int8x16_t c0 = vld1q_s8(k), c1 = vld1q_s8(k + 16), c2 = vld1q_s8(k + 32), c3 = vld1q_s8(k + 48);
    const int16x8_t lo01 = vreinterpretq_s16_s8(vzip1q_s8(c0, c1)), hi01 = vreinterpretq_s16_s8(vzip2q_s8(c0, c1));
    const int16x8_t lo23 = vreinterpretq_s16_s8(vzip1q_s8(c2, c3)), hi23 = vreinterpretq_s16_s8(vzip2q_s8(c2, c3));
    const int8x16_t x[4] = {vreinterpretq_s8_s16(vzip1q_s16(lo01, lo23)), vreinterpretq_s8_s16(vzip2q_s16(lo01, lo23)),
                            vreinterpretq_s8_s16(vzip1q_s16(hi01, hi23)), vreinterpretq_s8_s16(vzip2q_s16(hi01, hi23))};
    for (int r = 0; r < RR; r++)
      for (int p = 0; p < 2; p++) {
        int32_t w;
        memcpy(&w, qc + (size_t)(2 * r + p) * dk + d, 4);
        const int8x16_t qv = vreinterpretq_s8_s32(vdupq_n_s32(w));
        for (int m = 0; m < 4; m++) a[r][p][m] = vdotq_s32(a[r][p][m], x[m], qv);
      }
  }
  const float32x4_t inv254 = vdupq_n_f32(1.0f / 254);
  for (int r = 0; r < RR; r++) {
    const float32x4_t dr = vdupq_n_f32(qd[r]);
    for (int m = 0; m < 4; m++) {
      const float32x4_t h = vcvtq_f32_s32(a[r][0][m]), l = vcvtq_f32_s32(a[r][1][m]);
      vst1q_f32(s + (size_t)r * lds + 4 * m, vmulq_f32(vaddq_f32(h, vmulq_f32(l, inv254)), dr));
    }
  }
}

void heed_attn_qk_q8_sdot(const float *q, int R, const float *ks, const void *kt, int n, int dk, float *s, int lds,
                          void *scratch) {
  int8_t *qc = (int8_t *)scratch;                 /* [R][2][dk]: hi, lo */
  float *qd = (float *)(qc + 2 * (size_t)R * dk); /* dk is a multiple of 16 */
  for (int r = 0; r < R; r++) {
    const float *qr = q + (size_t)r * dk;
    float32x4_t mx = vdupq_n_f32(0);
    for (int d = 0; d < dk; d += 4) mx = vmaxq_f32(mx, vabsq_f32(vmulq_f32(vld1q_f32(qr + d), vld1q_f32(ks + d))));
    const float amax = vmaxvq_f32(mx);
    const float32x4_t inv = vdupq_n_f32(amax > 1e-30f ? 127.0f / amax : 0.0f);
    int8_t *hc = qc + (size_t)(2 * r) * dk, *lc = hc + dk;
    for (int d = 0; d < dk; d += 8) {
      /* v in [-127, 127]; hi = round(v); v - hi is exact, and lo rounds it in steps of 1/254 */
      int32x4_t h[2], l[2];
      for (int i = 0; i < 2; i++) {
        const float32x4_t v = vmulq_f32(vmulq_f32(vld1q_f32(qr + d + 4 * i), vld1q_f32(ks + d + 4 * i)), inv);
        const float32x4_t hf = vrndnq_f32(v);
        h[i] = vcvtq_s32_f32(hf), l[i] = vcvtq_s32_f32(vrndnq_f32(vmulq_f32(vsubq_f32(v, hf), vdupq_n_f32(254.0f))));
      }
      vst1_s8(hc + d, vmovn_s16(vcombine_s16(vmovn_s32(h[0]), vmovn_s32(h[1]))));
      vst1_s8(lc + d, vmovn_s16(vcombine_s16(vmovn_s32(l[0]), vmovn_s32(l[1]))));
    }
    qd[r] = amax / 127.0f;
  }
  for (int j = 0; j < n; j += 16) {
    const int8_t *k = (const int8_t *)HEED_K_RUN(kt, 16, dk, j, 0);
    for (int r = 0; r < R; r += QR) {
      const int rr = R - r < QR ? R - r : QR;
      const int8_t *qr = qc + (size_t)(2 * r) * dk;
      float *sr = s + (size_t)r * lds + j;
      if (rr == 3) kq_rows(3, qr, qd + r, dk, k, sr, lds);
      else if (rr == 2) kq_rows(2, qr, qd + r, dk, k, sr, lds);
      else kq_rows(1, qr, qd + r, dk, k, sr, lds);
    }
  }
}
