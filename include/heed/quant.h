/* heed/quant.h - KV cache quantization formats and their reference
 * (de)quantizers. These portable functions define each format: every fused
 * kernel that reads a format is tested against them.
 *
 * FP8 (OCP 8-bit floating point, v1.0):
 *   e4m3  1 sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities,
 *         S.1111.111 is NaN; largest finite 448; smallest subnormal 2^-9.
 *   e5m2  1 sign, 5 exponent bits (bias 15), 2 mantissa bits; IEEE-style
 *         infinities and NaNs; largest finite 57344; smallest subnormal 2^-16.
 *   Encoding rounds to nearest, ties to even, and saturates to +-max (a KV
 *   cache has no use for infinities); NaN stays NaN.
 *
 * q8: int8, symmetric, one f16 scale per group of `group` consecutive values:
 *   scale = f16(max|x| / 127); code = round_half_even(x / scale) in [-127, 127];
 *   x ~ code * scale.  Layout of n values: codes int8 [n]; scales f16 [n / group].
 *
 * q4: 4-bit, asymmetric, an f16 scale and an f16 minimum per group:
 *   mn = f16(min x); scale = f16((max x - mn) / 15);
 *   code = round_half_even((x - mn) / scale) in [0, 15]; x ~ code * scale + mn.
 *   Layout: codes [n / 2] bytes, value 2i in the low nibble of byte i and
 *   2i+1 in the high nibble; scales f16 [n / group]; mins f16 [n / group].
 *
 * Groups: 16, 32, 64, 128 or 256 values, dividing n. Codes are computed from
 * the f16-rounded scale (and minimum), so quantize then dequantize is exactly
 * what a kernel reading the stored bytes computes.
 */
#ifndef HEED_QUANT_H
#define HEED_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "heed/dtype.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#define HEED_E4M3_MAX 448.0f
#define HEED_E5M2_MAX 57344.0f

uint8_t heed_f32_to_e4m3(float x);
float heed_e4m3_to_f32(uint8_t code);
uint8_t heed_f32_to_e5m2(float x);
float heed_e5m2_to_f32(uint8_t code);

/* x: [n]; codes: [n]; scales: [n / group]. HEED_E_INVALID for a group that is
 * not 16..256 (a power of two) or does not divide n, or a non-finite x (the
 * message names its index); nothing is written then. */
heed_status heed_q8_quantize(const float *x, size_t n, unsigned group, int8_t *codes, heed_f16 *scales,
                             heed_error *err);
void heed_q8_dequantize(const int8_t *codes, const heed_f16 *scales, size_t n, unsigned group, float *y);

/* x: [n] (n even); codes: [n / 2]; scales, mins: [n / group]. Errors as for q8. */
heed_status heed_q4_quantize(const float *x, size_t n, unsigned group, uint8_t *codes, heed_f16 *scales,
                             heed_f16 *mins, heed_error *err);
/* The same format, with a group's (scale, min) refined for its squared
 * error: from heed_q4_quantize's codes, the least-squares scale and min of
 * those codes (rounded to f16), the codes rounded again against them (values
 * past either end clamp to 0 or 15), twice; a group keeps the first choice
 * unless a refinement lowers its squared error without any value's error
 * passing the largest one min/max makes in that group (so heed_q4_quantize's
 * per-value bound holds). What the KV cache stores. */
heed_status heed_q4_quantize_fit(const float *x, size_t n, unsigned group, uint8_t *codes, heed_f16 *scales,
                                 heed_f16 *mins, heed_error *err);
void heed_q4_dequantize(const uint8_t *codes, const heed_f16 *scales, const heed_f16 *mins, size_t n,
                        unsigned group, float *y);

/* One shared f32 scale for n values (a (block, head) of the cache):
 * scale = max|x| / format max (1 for an all-zero x), code = fp8(x / scale).
 * e5m2 != 0 selects e5m2, else e4m3. Errors for a non-finite x, naming its index. */
heed_status heed_fp8_quantize(int e5m2, const float *x, size_t n, uint8_t *codes, float *scale, heed_error *err);
void heed_fp8_dequantize(int e5m2, const uint8_t *codes, size_t n, float scale, float *y);

#ifdef __cplusplus
}
#endif
#endif
