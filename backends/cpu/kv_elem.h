/* backends/cpu/kv_elem.h - how each KV storage type lays out a run of 16
 * elements, and a portable read of one element (the meaning of the codes is
 * in heed/kernels.h). Every ISA's kernels read runs of B16_<type> bytes; the
 * reference kernels and the tails of the SIMD ones use ld1_<type>. Internal. */
#ifndef HEED_KV_ELEM_H
#define HEED_KV_ELEM_H

#include <stdint.h>
#include <string.h>

#include "heed/dtype.h"

/* X(suffix, bytes of a 16-element run) */
#define HEED_KV_TYPES(X) X(f32, 64) X(f16, 32) X(bf16, 32) X(q8, 16) X(q4, 8) X(e4m3, 16) X(e5m2, 16)

#define B16_f32 64
#define B16_f16 32
#define B16_bf16 32
#define B16_q8 16
#define B16_q4 8
#define B16_e4m3 16
#define B16_e5m2 16

/* Bytes of a 16-element run of any type (the B16_ values, at run time). */
static inline unsigned heed_run_bytes(heed_dtype t) { return 2 * heed_dtype_bits(t); }

/* e4m3 code -> the f16 whose value is e4m3(c) * 2^-8 (exponent bias 7 vs 15). */
static inline uint16_t heed_e4m3_f16bits(uint8_t c) { return (uint16_t)(((c & 0x7f) << 7) | ((c & 0x80) << 8)); }

/* Element i (0..15) of the run at r. */
static inline float ld1_f32(const uint8_t *r, int i) {
  float x;
  memcpy(&x, r + 4 * i, 4);
  return x;
}
static inline float ld1_f16(const uint8_t *r, int i) {
  heed_f16 h;
  memcpy(&h, r + 2 * i, 2);
  return heed_f16_to_f32(h);
}
static inline float ld1_bf16(const uint8_t *r, int i) {
  heed_bf16 h;
  memcpy(&h, r + 2 * i, 2);
  return heed_bf16_to_f32(h);
}
static inline float ld1_q8(const uint8_t *r, int i) { return (float)(int8_t)r[i]; }
static inline float ld1_q4(const uint8_t *r, int i) { return (float)(i < 8 ? r[i] & 15 : r[i - 8] >> 4); }
static inline float ld1_e4m3(const uint8_t *r, int i) { return heed_f16_to_f32(heed_e4m3_f16bits(r[i])); }
static inline float ld1_e5m2(const uint8_t *r, int i) { return heed_f16_to_f32((uint16_t)(r[i] << 8)); }

/* Element (j, d) of a K panel run base kt (panels [dk][16]); element c of V row base. */
#define HEED_K_RUN(kt, B16, dk, j, d) ((const uint8_t *)(kt) + ((size_t)((j) / 16) * (dk) + (d)) * (B16))
#define HEED_V_RUN(v, B16, ld, j, c) ((const uint8_t *)(v) + ((size_t)(j) * ((ld) / 16) + (c) / 16) * (B16))

#endif
