/* backends/cpu/ref/weights_ref.c - the reference dequantizers (bit for bit
 * ggml's dequantize_row_* and gguf-py's numpy ones: f16 scales converted
 * exactly, each product and sum rounded to float in their order; this file is
 * compiled with -ffp-contract=off so no multiply-add fuses two roundings), the
 * activation quantizer, and portable product kernels that fill every entry of
 * the weight table. The kernels multiply the dequantized weights by the
 * quantized activations in double: slow and plain, the fallback and the
 * baseline the ISA kernels are compared with. */
#include <math.h>
#include <string.h>

#include "backends/cpu/weights_kernels.h"
#include "heed/dtype.h"

static inline float f16(const uint8_t *p) { return heed_f16_to_f32((heed_f16)(p[0] | p[1] << 8)); }

/* ---------- one block each ---------- */

static void deq_f32(const void *b, float *y) { memcpy(y, b, sizeof(float)); }
static void deq_f16(const void *b, float *y) { y[0] = f16((const uint8_t *)b); }
static void deq_bf16(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b;
  uint32_t u = (uint32_t)(p[0] | p[1] << 8) << 16;
  memcpy(y, &u, sizeof u);
}

/* Q4_0: d, 16 bytes: element i in the low nibble of byte i, i+16 in the high. */
static void deq_q4_0(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *qs = p + 2;
  const float d = f16(p);
  for (int i = 0; i < 16; i++) {
    y[i] = d * (float)((qs[i] & 0xF) - 8);
    y[i + 16] = d * (float)((qs[i] >> 4) - 8);
  }
}

/* Q4_1: d, m, 16 bytes as Q4_0; value d * u + m. */
static void deq_q4_1(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *qs = p + 4;
  const float d = f16(p), m = f16(p + 2);
  for (int i = 0; i < 16; i++) {
    y[i] = d * (float)(qs[i] & 0xF) + m;
    y[i + 16] = d * (float)(qs[i] >> 4) + m;
  }
}

static inline uint32_t le32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Q5_0: d, qh (bit i: the fifth bit of element i), 16 bytes as Q4_0; value d * (u - 16). */
static void deq_q5_0(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *qs = p + 6;
  const float d = f16(p);
  const uint32_t qh = le32(p + 2);
  for (int i = 0; i < 16; i++) {
    int u0 = (qs[i] & 0xF) | (int)((qh >> i) & 1) << 4, u1 = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
    y[i] = d * (float)(u0 - 16);
    y[i + 16] = d * (float)(u1 - 16);
  }
}

/* Q5_1: d, m, qh, 16 bytes; value d * u + m. */
static void deq_q5_1(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *qs = p + 8;
  const float d = f16(p), m = f16(p + 2);
  const uint32_t qh = le32(p + 4);
  for (int i = 0; i < 16; i++) {
    int u0 = (qs[i] & 0xF) | (int)((qh >> i) & 1) << 4, u1 = (qs[i] >> 4) | (int)((qh >> (i + 16)) & 1) << 4;
    y[i] = d * (float)u0 + m;
    y[i + 16] = d * (float)u1 + m;
  }
}

/* Q8_0: d, 32 int8. */
static void deq_q8_0(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b;
  const float d = f16(p);
  for (int i = 0; i < 32; i++) y[i] = (float)(int8_t)p[2 + i] * d;
}

/* The 6-bit scale and min of sub-block j of Q4_K/Q5_K (ggml's get_scale_min_k4). */
static inline void scale_min_k4(int j, const uint8_t *q, int *sc, int *m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
    *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
  }
}

/* Q4_K: d, dmin, 12 bytes of scales/mins, 128 bytes: sub-blocks 2k and 2k+1
 * are the low and high nibbles of bytes 32k..32k+31. Value (d*sc) * u - (dmin*m). */
static void deq_q4_k(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *scales = p + 4, *qs = p + 16;
  const float d = f16(p), dmin = f16(p + 2);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(j, scales, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const uint8_t *q = qs + 32 * (j / 2);
    const int sh = 4 * (j & 1);
    for (int l = 0; l < 32; l++) y[32 * j + l] = d1 * (float)((q[l] >> sh) & 0xF) - m1;
  }
}

/* Q5_K: as Q4_K with qh[32] before the nibbles: bit j of qh[l] is the fifth
 * bit of element l of sub-block j. */
static void deq_q5_k(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *scales = p + 4, *qh = p + 16, *qs = p + 48;
  const float d = f16(p), dmin = f16(p + 2);
  for (int j = 0; j < 8; j++) {
    int sc, m;
    scale_min_k4(j, scales, &sc, &m);
    const float d1 = d * (float)sc, m1 = dmin * (float)m;
    const uint8_t *q = qs + 32 * (j / 2);
    const int sh = 4 * (j & 1);
    for (int l = 0; l < 32; l++) {
      int u = ((q[l] >> sh) & 0xF) | ((qh[l] >> j) & 1) << 4;
      y[32 * j + l] = d1 * (float)u - m1;
    }
  }
}

/* Q6_K: ql[128], qh[64], 16 int8 scales, d. Element e = 128 h + 32 k + l
 * (h < 2, k < 4, l < 32): low 4 bits from ql[64 h + 32 (k & 1) + l] (high
 * nibble when k >= 2), top 2 bits (qh[32 h + l] >> 2k) & 3; value
 * (d * sc[e / 16]) * (u - 32). */
static void deq_q6_k(const void *b, float *y) {
  const uint8_t *p = (const uint8_t *)b, *ql = p, *qh = p + 128;
  const int8_t *sc = (const int8_t *)(p + 192);
  const float d = f16(p + 208);
  for (int e = 0; e < 256; e++) {
    int h = e / 128, k = (e % 128) / 32, l = e % 32;
    int lo = (ql[64 * h + 32 * (k & 1) + l] >> (4 * (k >> 1))) & 0xF;
    int hi = (qh[32 * h + l] >> (2 * k)) & 3;
    y[e] = d * (float)sc[e / 16] * (float)((lo | hi << 4) - 32);
  }
}

heed_wdequant_fn heed_weights_ref_dequant(int type) {
  switch (type) {
    case HEED_GGML_F32: return deq_f32;
    case HEED_GGML_F16: return deq_f16;
    case HEED_GGML_BF16: return deq_bf16;
    case HEED_GGML_Q4_0: return deq_q4_0;
    case HEED_GGML_Q4_1: return deq_q4_1;
    case HEED_GGML_Q5_0: return deq_q5_0;
    case HEED_GGML_Q5_1: return deq_q5_1;
    case HEED_GGML_Q8_0: return deq_q8_0;
    case HEED_GGML_Q4_K: return deq_q4_k;
    case HEED_GGML_Q5_K: return deq_q5_k;
    case HEED_GGML_Q6_K: return deq_q6_k;
    default: return NULL;
  }
}

/* ---------- magnitudes for the error bound ---------- */

void heed_weights_ref_magnitude(int type, const void *blk, float *dst) {
  const uint8_t *p = (const uint8_t *)blk;
  switch (type) {
    case HEED_GGML_Q4_0:
    case HEED_GGML_Q5_0: {
      /* |d u| + |d off| = |d| (u + off), u = value / d + off */
      const int off = type == HEED_GGML_Q4_0 ? 8 : 16;
      const float d = fabsf(f16(p));
      heed_weights_ref_dequant(type)(blk, dst);
      float tmp[32];
      uint8_t one[22];
      memcpy(one, p, type == HEED_GGML_Q4_0 ? 18 : 22);
      one[0] = 0x00, one[1] = 0x3c; /* d = 1: the codes minus the offset, exactly */
      heed_weights_ref_dequant(type)(one, tmp);
      for (int i = 0; i < 32; i++) dst[i] = d * (tmp[i] + (float)off) + d * (float)off;
      return;
    }
    case HEED_GGML_Q4_1:
    case HEED_GGML_Q5_1: {
      const float d = fabsf(f16(p)), m = fabsf(f16(p + 2));
      uint8_t one[24];
      memcpy(one, p, type == HEED_GGML_Q4_1 ? 20 : 24);
      one[0] = 0x00, one[1] = 0x3c, one[2] = 0, one[3] = 0; /* d = 1, m = 0: the codes */
      float u[32];
      heed_weights_ref_dequant(type)(one, u);
      for (int i = 0; i < 32; i++) dst[i] = d * u[i] + m;
      return;
    }
    case HEED_GGML_Q4_K:
    case HEED_GGML_Q5_K: {
      const float d = fabsf(f16(p)), dmin = fabsf(f16(p + 2));
      uint8_t one[176];
      memcpy(one, p, type == HEED_GGML_Q4_K ? 144 : 176);
      one[0] = 0x00, one[1] = 0x3c, one[2] = 0, one[3] = 0;
      memset(one + 4, 0, 12);
      for (int j = 0; j < 4; j++) one[4 + 8 + j] = 0x01, one[4 + j] = 1; /* every sc = 1, m = 0 */
      float u[256];
      heed_weights_ref_dequant(type)(one, u);
      for (int j = 0; j < 8; j++) {
        int sc, m;
        scale_min_k4(j, p + 4, &sc, &m);
        for (int l = 0; l < 32; l++) dst[32 * j + l] = d * (float)sc * u[32 * j + l] + dmin * (float)m;
      }
      return;
    }
    case HEED_GGML_Q6_K: {
      const float d = fabsf(f16(p + 208));
      uint8_t one[210];
      memcpy(one, p, 210);
      memset(one + 192, 1, 16);
      one[208] = 0x00, one[209] = 0x3c;
      float v[256];
      heed_weights_ref_dequant(type)(one, v); /* u - 32 */
      for (int e = 0; e < 256; e++) {
        float sc = fabsf((float)((const int8_t *)p)[192 + e / 16]);
        dst[e] = d * sc * (v[e] + 32.0f) + d * sc * 32.0f;
      }
      return;
    }
    default: {
      uint32_t be = 1;
      uint32_t bb;
      heed_wtype_block(type, &be, &bb);
      heed_weights_ref_dequant(type)(blk, dst);
      for (uint32_t i = 0; i < be; i++) dst[i] = fabsf(dst[i]);
      return;
    }
  }
}

/* ---------- activations ---------- */

static void quant_ref(const float *x, size_t n, heed_qa_block *a) {
  for (size_t b = 0; b < n / 32; b++, x += 32) {
    float amax = 0;
    for (int i = 0; i < 32; i++) amax = fmaxf(amax, fabsf(x[i]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    int s0 = 0, s1 = 0;
    for (int i = 0; i < 32; i++) {
      int q = (int)nearbyintf(x[i] * id);
      a[b].q[i] = (int8_t)q;
      if (i < 16) s0 += q;
      else s1 += q;
    }
    a[b].d = d;
    a[b].s[0] = (int16_t)s0, a[b].s[1] = (int16_t)s1;
  }
}

/* ---------- products ---------- */

/* y = W X^T with each block of W dequantized once and used for every token. */
static void wmm_ref(int type, const void *w, size_t row_bytes, size_t n_rows, size_t cols, const void *act,
                    size_t act_stride, size_t n_tok, float *y, size_t ldy) {
  uint32_t be = 1, bb = 1;
  heed_wtype_block(type, &be, &bb);
  const heed_wdequant_fn deq = heed_weights_ref_dequant(type);
  const int quant = be > 1;
  float buf[256];
  double acc[16];
  for (size_t r = 0; r < n_rows; r++) {
    const uint8_t *row = (const uint8_t *)w + r * row_bytes;
    for (size_t t0 = 0; t0 < n_tok; t0 += 16) {
      const size_t nt = n_tok - t0 < 16 ? n_tok - t0 : 16;
      for (size_t t = 0; t < nt; t++) acc[t] = 0;
      /* chunks of 32 columns: whole blocks, or 32 single-element ones */
      for (size_t c = 0, chunk; c < cols; c += chunk) {
        chunk = be > 32 ? be : cols - c < 32 ? cols - c : 32;
        for (size_t i = 0; i < chunk; i += be) deq(row + (c + i) / be * bb, buf + i);
        for (size_t t = 0; t < nt; t++) {
          const uint8_t *at = (const uint8_t *)act + (t0 + t) * act_stride;
          if (quant) {
            const heed_qa_block *a = (const heed_qa_block *)at + c / 32;
            for (size_t k = 0; k < chunk / 32; k++) {
              double s = 0;
              for (int i = 0; i < 32; i++) s += (double)buf[32 * k + i] * a[k].q[i];
              acc[t] += s * a[k].d;
            }
          } else {
            const float *x = (const float *)at + c;
            for (size_t i = 0; i < chunk; i++) acc[t] += (double)buf[i] * x[i];
          }
        }
      }
      for (size_t t = 0; t < nt; t++) y[(t0 + t) * ldy + r] = (float)acc[t];
    }
  }
}

#define REF_WMM(NAME, TYPE)                                                                                    \
  static void NAME(const void *w, size_t rb, size_t nr, size_t cols, const void *a, size_t as, size_t nt, float *y, \
                   size_t ldy) {                                                                               \
    wmm_ref(HEED_GGML_##TYPE, w, rb, nr, cols, a, as, nt, y, ldy);                                             \
  }
REF_WMM(wmm_f32_ref, F32)
REF_WMM(wmm_f16_ref, F16)
REF_WMM(wmm_bf16_ref, BF16)
REF_WMM(wmm_q4_0_ref, Q4_0)
REF_WMM(wmm_q4_1_ref, Q4_1)
REF_WMM(wmm_q5_0_ref, Q5_0)
REF_WMM(wmm_q5_1_ref, Q5_1)
REF_WMM(wmm_q8_0_ref, Q8_0)
REF_WMM(wmm_q4_k_ref, Q4_K)
REF_WMM(wmm_q5_k_ref, Q5_K)
REF_WMM(wmm_q6_k_ref, Q6_K)

/* The gated activation one element at a time, as the SIMD levels compute it
 * but with libm's expf: sigmoid(t) = (t >= 0 ? 1 : z) / (1 + z), z =
 * exp(-|t|), t = x (SiLU) or 2u (GELU: 0.5 x (1 + tanh(u)) = x sigmoid(2u);
 * 1 + tanhf(u) itself loses every digit as u goes negative). */
static void glu_ref(float *gate, const float *up, size_t n, int gelu) {
  for (size_t i = 0; i < n; i++) {
    const float x = gate[i], t = gelu ? x * (HEED_GELU_C1 + HEED_GELU_C3 * (x * x)) : x, z = expf(-fabsf(t));
    gate[i] = x * ((t >= 0 ? 1.0f : z) / (1.0f + z)) * up[i];
  }
}

void heed_weights_register_ref(heed_weights_table *t) {
  t->glu = glu_ref;
  t->glu_name = "glu_ref";
  t->quant = quant_ref;
  t->quant_name = "quant_q8_ref";
  HEED_WSLOT_SET(t, F32, wmm_f32_ref, wmm_f32_ref);
  HEED_WSLOT_SET(t, F16, wmm_f16_ref, wmm_f16_ref);
  HEED_WSLOT_SET(t, BF16, wmm_bf16_ref, wmm_bf16_ref);
  HEED_WSLOT_SET(t, Q4_0, wmm_q4_0_ref, wmm_q4_0_ref);
  HEED_WSLOT_SET(t, Q4_1, wmm_q4_1_ref, wmm_q4_1_ref);
  HEED_WSLOT_SET(t, Q5_0, wmm_q5_0_ref, wmm_q5_0_ref);
  HEED_WSLOT_SET(t, Q5_1, wmm_q5_1_ref, wmm_q5_1_ref);
  HEED_WSLOT_SET(t, Q8_0, wmm_q8_0_ref, wmm_q8_0_ref);
  HEED_WSLOT_SET(t, Q4_K, wmm_q4_k_ref, wmm_q4_k_ref);
  HEED_WSLOT_SET(t, Q5_K, wmm_q5_k_ref, wmm_q5_k_ref);
  HEED_WSLOT_SET(t, Q6_K, wmm_q6_k_ref, wmm_q6_k_ref);
}
