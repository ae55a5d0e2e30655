/* backends/cpu/neon/neon_common.h - loads shared by the neon kernel files. Internal. */
#ifndef HEED_NEON_COMMON_H
#define HEED_NEON_COMMON_H

#include <arm_neon.h>

#include <stdint.h>

#include "heed/dtype.h"

/* 4 stored elements as 4 floats. */
static inline float32x4_t load4_f32(const float *p) { return vld1q_f32(p); }
static inline float32x4_t load4_f16(const heed_f16 *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline float32x4_t load4_bf16(const heed_bf16 *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

/* A run of 16 stored elements (kv_elem.h) as 4 vectors of 4 floats. */
static inline void ld16_f32(const uint8_t *p, float32x4_t x[4]) {
  for (int i = 0; i < 4; i++) x[i] = vld1q_f32((const float *)p + 4 * i);
}
static inline void f16x8(uint16x8_t h, float32x4_t *lo, float32x4_t *hi) {
  *lo = vcvt_f32_f16(vreinterpret_f16_u16(vget_low_u16(h)));
  *hi = vcvt_f32_f16(vreinterpret_f16_u16(vget_high_u16(h)));
}
static inline void ld16_f16(const uint8_t *p, float32x4_t x[4]) {
  for (int i = 0; i < 4; i++) x[i] = load4_f16((const heed_f16 *)p + 4 * i);
}
static inline void ld16_bf16(const uint8_t *p, float32x4_t x[4]) {
  for (int i = 0; i < 4; i++) x[i] = load4_bf16((const heed_bf16 *)p + 4 * i);
}
static inline void ld16_q8(const uint8_t *p, float32x4_t x[4]) {
  int8x16_t b = vld1q_s8((const int8_t *)p);
  int16x8_t lo = vmovl_s8(vget_low_s8(b)), hi = vmovl_s8(vget_high_s8(b));
  x[0] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))), x[1] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(lo)));
  x[2] = vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))), x[3] = vcvtq_f32_s32(vmovl_s16(vget_high_s16(hi)));
}
static inline void ld16_q4(const uint8_t *p, float32x4_t x[4]) {
  uint8x8_t b = vld1_u8(p);
  uint16x8_t lo = vmovl_u8(vand_u8(b, vdup_n_u8(15))), hi = vmovl_u8(vshr_n_u8(b, 4));
  x[0] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), x[1] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo)));
  x[2] = vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), x[3] = vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi)));
}
static inline void ld16_e5m2(const uint8_t *p, float32x4_t x[4]) {
  uint8x16_t b = vld1q_u8(p);
  f16x8(vshll_n_u8(vget_low_u8(b), 8), &x[0], &x[1]);
  f16x8(vshll_n_u8(vget_high_u8(b), 8), &x[2], &x[3]);
}
static inline uint16x8_t e4m3x8(uint8x8_t b) {
  uint16x8_t w = vmovl_u8(b);
  return vorrq_u16(vshlq_n_u16(vandq_u16(w, vdupq_n_u16(0x7f)), 7), vshlq_n_u16(vandq_u16(w, vdupq_n_u16(0x80)), 8));
}
static inline void ld16_e4m3(const uint8_t *p, float32x4_t x[4]) {
  uint8x16_t b = vld1q_u8(p);
  f16x8(e4m3x8(vget_low_u8(b)), &x[0], &x[1]);
  f16x8(e4m3x8(vget_high_u8(b)), &x[2], &x[3]);
}

/* exp(x) for x <= 0 as in avx2 (shared by the attention and vocabulary kernels). */
static inline float32x4_t exp_neg(float32x4_t x) {
  const float32x4_t lo = vdupq_n_f32(-87.3f);
  uint32x4_t keep = vcgeq_f32(x, lo);
  x = vmaxq_f32(x, lo);
  float32x4_t n = vrndnq_f32(vmulq_n_f32(x, 1.44269504f));
  float32x4_t r = vfmsq_n_f32(x, n, 0.693359375f);
  r = vfmsq_n_f32(r, n, -2.12194440e-4f);
  float32x4_t p = vdupq_n_f32(1.0f / 720);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 120), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 24), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f / 6), p, r);
  p = vfmaq_f32(vdupq_n_f32(0.5f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  p = vfmaq_f32(vdupq_n_f32(1.0f), p, r);
  int32x4_t e = vshlq_n_s32(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)), 23);
  float32x4_t y = vmulq_f32(p, vreinterpretq_f32_s32(e));
  return vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), keep));
}

#endif
