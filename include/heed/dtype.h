/* heed/dtype.h - element types and their portable (reference) conversions. */
#ifndef HEED_DTYPE_H
#define HEED_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef uint16_t heed_f16;  /* IEEE 754 binary16, stored as its bits */
typedef uint16_t heed_bf16; /* bfloat16: the top half of a binary32 */

/* X(NAME, name, bits per element). The float types come first; then the
 * quantized KV cache formats (heed/quant.h defines them; a KV cache stores
 * them with scales, see heed/attention.h). */
#define HEED_DTYPE_LIST(X) \
  X(F32, "f32", 32)        \
  X(F16, "f16", 16)        \
  X(BF16, "bf16", 16)      \
  X(Q8, "q8", 8)           \
  X(Q4, "q4", 4)           \
  X(E4M3, "e4m3", 8)       \
  X(E5M2, "e5m2", 8)

typedef enum heed_dtype {
#define HEED_X_(N, s, b) HEED_DTYPE_##N,
  HEED_DTYPE_LIST(HEED_X_)
#undef HEED_X_
  HEED_DTYPE_COUNT
} heed_dtype;

/* f32, f16 and bf16: the types with one value per element, no scales. */
#define HEED_DTYPE_FLOAT_COUNT 3
static inline int heed_dtype_is_quant(heed_dtype t) { return t >= HEED_DTYPE_FLOAT_COUNT && t < HEED_DTYPE_COUNT; }

const char *heed_dtype_name(heed_dtype t); /* "f16"; NULL for an unknown value */
unsigned heed_dtype_bits(heed_dtype t);    /* 16; 0 for an unknown value */
/* Parses a name of the list ("f32", "q4", "e4m3", ...). Returns 0, or HEED_E_INVALID for another name. */
int heed_dtype_parse(const char *name, heed_dtype *out);

/* Round to nearest even; NaN stays NaN, overflow gives infinity. */
heed_f16 heed_f32_to_f16(float x);
float heed_f16_to_f32(heed_f16 h);
heed_bf16 heed_f32_to_bf16(float x);
float heed_bf16_to_f32(heed_bf16 h);

#ifdef __cplusplus
}
#endif
#endif
