/* runtime/dtype.c - dtype table and the portable f16/bf16 conversions that
 * every SIMD variant is tested against. */
#include <string.h>

#include "heed/dtype.h"
#include "heed/status.h"

static const struct {
  const char *name;
  unsigned bits;
} dtypes[] = {
#define HEED_X_(N, s, b) {s, b},
    HEED_DTYPE_LIST(HEED_X_)
#undef HEED_X_
};

const char *heed_dtype_name(heed_dtype t) {
  return (unsigned)t < HEED_DTYPE_COUNT ? dtypes[t].name : NULL;
}

unsigned heed_dtype_bits(heed_dtype t) { return (unsigned)t < HEED_DTYPE_COUNT ? dtypes[t].bits : 0; }

int heed_dtype_parse(const char *name, heed_dtype *out) {
  if (!name || !out) return HEED_E_INVALID;
  for (int i = 0; i < HEED_DTYPE_COUNT; i++)
    if (strcmp(name, dtypes[i].name) == 0) {
      *out = (heed_dtype)i;
      return HEED_OK;
    }
  return HEED_E_INVALID;
}

static uint32_t bits_of(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

static float float_of(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

heed_f16 heed_f32_to_f16(float f) {
  uint32_t x = bits_of(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  uint32_t h;
  if (x >= 0x47800000u) { /* |f| >= 65536, inf or NaN */
    h = x > 0x7f800000u ? 0x7e00u | ((x >> 13) & 0x3ffu) : 0x7c00u;
  } else if (x < 0x38800000u) { /* below the smallest normal half: subnormal or 0 */
    /* Adding 0.5 lines the half's subnormal step (2^-24) up with the last
     * mantissa bit of a float in [0.5, 1); the FPU's add does the rounding. */
    const uint32_t magic = 126u << 23; /* 0.5f */
    h = bits_of(float_of(x) + float_of(magic)) - magic;
  } else {
    uint32_t odd = (x >> 13) & 1u;            /* ties go to the even mantissa */
    x += ((uint32_t)(15 - 127) << 23) + 0xfffu + odd; /* rebias and round; may carry into inf */
    h = x >> 13;
  }
  return (heed_f16)(h | sign);
}

float heed_f16_to_f32(heed_f16 hv) {
  uint32_t h = hv;
  uint32_t sign = (h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    float v = (float)mant * 0x1p-24f; /* exact: mant < 2^10 */
    return float_of(bits_of(v) | sign);
  }
  if (exp == 31) /* infinity; a NaN comes back quiet, as F16C and NEON convert it */
    return float_of(sign | 0x7f800000u | (mant ? 0x400000u : 0u) | (mant << 13));
  return float_of(sign | ((exp + 112u) << 23) | (mant << 13));
}

heed_bf16 heed_f32_to_bf16(float f) {
  uint32_t x = bits_of(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (heed_bf16)((x >> 16) | 0x40u); /* quiet NaN */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (heed_bf16)(x >> 16);
}

float heed_bf16_to_f32(heed_bf16 h) { return float_of((uint32_t)h << 16); }
