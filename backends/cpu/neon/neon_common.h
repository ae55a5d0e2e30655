/* backends/cpu/neon/neon_common.h - loads shared by the neon kernel files. Internal. */
#ifndef HEED_NEON_COMMON_H
#define HEED_NEON_COMMON_H

#include <arm_neon.h>

#include "heed/dtype.h"

/* 4 stored elements as 4 floats. */
static inline float32x4_t load4_f32(const float *p) { return vld1q_f32(p); }
static inline float32x4_t load4_f16(const heed_f16 *p) { return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p))); }
static inline float32x4_t load4_bf16(const heed_bf16 *p) { return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16)); }

#endif
