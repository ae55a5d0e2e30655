/* backends/cpu/neon/kernels_neon.c - AArch64 Advanced SIMD kernels (armv8-a
 * baseline: every arm64 CPU has them). Tested under qemu-aarch64 on x86. */
#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/neon/neon_common.h"
#include "heed/dtype.h"

#define NEON_DOT(NAME, T, LOAD4, LOAD1)                                         \
  static float NAME(const void *xv, const float *y, size_t n) {                 \
    const T *x = (const T *)xv;                                                 \
    float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;                 \
    size_t i = 0;                                                               \
    for (; i + 16 <= n; i += 16) {                                              \
      a0 = vfmaq_f32(a0, LOAD4(x + i), vld1q_f32(y + i));                       \
      a1 = vfmaq_f32(a1, LOAD4(x + i + 4), vld1q_f32(y + i + 4));               \
      a2 = vfmaq_f32(a2, LOAD4(x + i + 8), vld1q_f32(y + i + 8));               \
      a3 = vfmaq_f32(a3, LOAD4(x + i + 12), vld1q_f32(y + i + 12));             \
    }                                                                           \
    for (; i + 4 <= n; i += 4) a0 = vfmaq_f32(a0, LOAD4(x + i), vld1q_f32(y + i)); \
    float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));      \
    for (; i < n; i++) s += LOAD1(x[i]) * y[i];                                 \
    return s;                                                                   \
  }

#define LOAD1_F32(v) (v)
NEON_DOT(dot_f32_neon, float, load4_f32, LOAD1_F32)
NEON_DOT(dot_f16_neon, heed_f16, load4_f16, heed_f16_to_f32)
NEON_DOT(dot_bf16_neon, heed_bf16, load4_bf16, heed_bf16_to_f32)

#define NEON_TO_F32(NAME, T, LOAD4, LOAD1)                        \
  static void NAME(const void *xv, float *y, size_t n) {          \
    const T *x = (const T *)xv;                                   \
    size_t i = 0;                                                 \
    for (; i + 4 <= n; i += 4) vst1q_f32(y + i, LOAD4(x + i));    \
    for (; i < n; i++) y[i] = LOAD1(x[i]);                        \
  }

NEON_TO_F32(to_f32_f16_neon, heed_f16, load4_f16, heed_f16_to_f32)
NEON_TO_F32(to_f32_bf16_neon, heed_bf16, load4_bf16, heed_bf16_to_f32)

static float probe_read_neon(const float *x, size_t n) {
  float32x4_t a0 = vdupq_n_f32(0), a1 = a0, a2 = a0, a3 = a0;
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    a0 = vaddq_f32(a0, vld1q_f32(x + i));
    a1 = vaddq_f32(a1, vld1q_f32(x + i + 4));
    a2 = vaddq_f32(a2, vld1q_f32(x + i + 8));
    a3 = vaddq_f32(a3, vld1q_f32(x + i + 12));
  }
  float s = vaddvq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)));
  for (; i < n; i++) s += x[i];
  return s;
}

static double probe_fma_neon(uint64_t iters, float *sink) {
  const float32x4_t m = vdupq_n_f32(0.999999f), c = vdupq_n_f32(1e-6f);
  float32x4_t a[12];
  for (int k = 0; k < 12; k++) a[k] = vdupq_n_f32((float)(k + 1));
  for (uint64_t it = 0; it < iters; it++) {
    a[0] = vfmaq_f32(c, a[0], m);
    a[1] = vfmaq_f32(c, a[1], m);
    a[2] = vfmaq_f32(c, a[2], m);
    a[3] = vfmaq_f32(c, a[3], m);
    a[4] = vfmaq_f32(c, a[4], m);
    a[5] = vfmaq_f32(c, a[5], m);
    a[6] = vfmaq_f32(c, a[6], m);
    a[7] = vfmaq_f32(c, a[7], m);
    a[8] = vfmaq_f32(c, a[8], m);
    a[9] = vfmaq_f32(c, a[9], m);
    a[10] = vfmaq_f32(c, a[10], m);
    a[11] = vfmaq_f32(c, a[11], m);
  }
  float32x4_t s = a[0];
  for (int k = 1; k < 12; k++) s = vaddq_f32(s, a[k]);
  *sink = vaddvq_f32(s);
  return (double)iters * 12 * 4 * 2;
}

void heed_cpu_register_neon(heed_kernel_table *t) {
  HEED_SLOT_SET(t, DOT, F32, dot_f32_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, DOT, F16, dot_f16_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, DOT, BF16, dot_bf16_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, TO_F32, F16, to_f32_f16_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, TO_F32, BF16, to_f32_bf16_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, PROBE_READ, F32, probe_read_neon, HEED_ISA_NEON);
  HEED_SLOT_SET(t, PROBE_FMA, F32, probe_fma_neon, HEED_ISA_NEON);
}
