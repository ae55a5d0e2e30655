/* backends/cpu/weights_kernels.h - the weight-kernel table: one entry per
 * ggml weight type (heed/weights.h), built per ISA level BLIS-style: the
 * reference kernels (ref/weights_ref.c) fill every entry, each ISA file
 * overrides what it has. Internal to libheed (tests include it too).
 *
 * Activations for the quantized formats are quantized per token to blocks of
 * 32: d = max|x| / 127, q = nearbyint(x * (1 / d)) (0 when d is 0), the same
 * bits on every ISA; s[h] = sum of q over the block's half h (16 values): a
 * format with a code offset or a min subtracts them instead of widening its
 * codes to signed. */
#ifndef HEED_WEIGHTS_KERNELS_H
#define HEED_WEIGHTS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "heed/cpu.h"
#include "heed/kernels.h"
#include "heed/weights.h"

#define HEED_QA_BLOCK 32 /* activations per quantized block */

/* One block of 32 quantized activations: 40 bytes. */
typedef struct heed_qa_block {
  float d;        /* scale: x ~ d * q */
  int16_t s[2];   /* sum of q[0..16), q[16..32) */
  int8_t q[32];   /* codes in -127..127 */
} heed_qa_block;

/* The packed copy of one token's activations, after its blocks in the same
 * act_stride run, for kernels that read 64 codes and a super-block's scales at
 * once (the table's `pack`; cpu_weights.c fills it from the blocks, so the
 * bits stay those of the quantizer). cols is rounded up to HEED_QA_GROUP and
 * the padding is zero:
 *   q  [colsp]      int8 codes, contiguous          (at off_q)
 *   dh [colsp / 16] f32 d of each half block's block (at off_dh)
 *   ds [colsp / 16] f32 d * s[h] of each half block  (at off_ds)
 * all offsets multiples of 64 from the token's start. */
#define HEED_QA_GROUP 256
typedef struct heed_qa_layout {
  size_t colsp, off_q, off_dh, off_ds, stride;
} heed_qa_layout;

static inline heed_qa_layout heed_qa_layout_of(size_t cols) {
  heed_qa_layout l;
  l.colsp = (cols + HEED_QA_GROUP - 1) / HEED_QA_GROUP * HEED_QA_GROUP;
  l.off_q = (cols / HEED_QA_BLOCK * sizeof(heed_qa_block) + 63) & ~(size_t)63;
  l.off_dh = l.off_q + l.colsp;
  l.off_ds = l.off_dh + l.colsp / 16 * sizeof(float);
  l.stride = l.off_ds + l.colsp / 16 * sizeof(float);
  return l;
}

/* Position i (< 256) of a group in the kp order holds code heed_qa_kperm(i):
 * for k < 4 and j < 4, codes 64j + 8k + 0..7, then 64j + 32 + 8k + 0..7 (lane
 * L: Q4_K's sub-block L / 2, as its code bytes hold them). */
static inline unsigned heed_qa_kperm(unsigned i) {
  const unsigned k = i / 64, j = i % 64 / 16, h = i % 16 / 8, m = i % 8;
  return 64 * j + 32 * h + 8 * k + m;
}
/* Q6_K's order: position 64k + 4L + m holds code 16L + 4k + m (lane L:
 * sub-block L of 16). */
static inline unsigned heed_qa_kperm6(unsigned i) {
  const unsigned k = i / 64, L = i % 64 / 4, m = i % 4;
  return 16 * L + 4 * k + m;
}

/* The 256-bit order (heed_weights_table.kperm 2): position i = 32v + 8j + m,
 * v = 4h + k, holds for Q4_K and Q5_K code 64j + 32h + 8k + m (dword lanes
 * 2j, 2j+1 of vector v: sub-block 2j + h) and for Q6_K code 128h + 32j + 8k
 * + m (sub-block 8h + 2j + k / 2, activation block 4h + j). */
static inline unsigned heed_qa_kp2(unsigned i, int q6) {
  const unsigned v = i / 32, h = v / 4, k = v % 4, j = i % 32 / 8, m = i % 8;
  return q6 ? 128 * h + 32 * j + 8 * k + m : 64 * j + 32 * h + 8 * k + m;
}

/* x: [n] f32, n a multiple of 32, finite; a: [n / 32] blocks. */
typedef void (*heed_wquant_fn)(const float *x, size_t n, heed_qa_block *a);

/* The product kernel of one weight type, for rows [0, n_rows) of w (row r at
 * w + r * row_bytes, `cols` weights each) and n_tok activation rows:
 *   y[t * ldy + r] = sum_c W[r][c] * X[t][c]
 * act: the quantized formats read [n_tok] runs of cols / 32 heed_qa_block,
 * act_stride bytes apart; F32/F16/BF16 read f32 rows act_stride bytes apart.
 * A kernel may be called with any n_rows >= 1 and n_tok >= 1; the `vec` slot
 * is called with n_tok == 1 only (decode: stream the weights), `mat` with
 * n_tok >= 2 (prefill: reuse each decoded block across tokens). */
typedef void (*heed_wmm_fn)(const void *w, size_t row_bytes, size_t n_rows, size_t cols, const void *act,
                            size_t act_stride, size_t n_tok, float *y, size_t ldy);

#define HEED_WTYPE_SLOTS 31 /* ggml type ids 0..30 (BF16 is 30) */

typedef struct heed_wkernel {
  heed_wmm_fn vec, mat;      /* NULL: the type has no kernel (unsupported) */
  const char *vec_name, *mat_name;
} heed_wkernel;

/* gate[i] = act(gate[i]) * up[i] for i < n (heed_glu): gelu 1 the tanh
 * form of GELU, 0 SiLU. Each element's result must depend on its inputs only. */
typedef void (*heed_glu_fn)(float *gate, const float *up, size_t n, int gelu);
/* GELU's sigmoid argument t = 2u = x (HEED_GELU_C1 + HEED_GELU_C3 x^2), every level alike:
 * 2 sqrt(2/pi), and that times 0.044715. */
#define HEED_GELU_C1 (2 * 0.7978845608028654f)
#define HEED_GELU_C3 (HEED_GELU_C1 * 0.044715f)

typedef struct heed_weights_table {
  heed_isa isa;
  int dot;                   /* int8 dot-product kernels: avx512_vnni (vpdpbusd), arm64 dotprod (sdot) */
  int pack;                  /* the kernels read the packed copy of the activations (heed_qa_layout) */
  int kperm;                 /* the K-quants read the packed codes of each 256 reordered so that every
                                dword lane holds one sub-block: 1 (64-byte vectors): Q4_K and Q5_K by
                                heed_qa_kperm, Q6_K by heed_qa_kperm6; 2 (32-byte vectors): by
                                heed_qa_kp2, and for Q4_K and Q5_K dh and ds in its order (pack_act) */
  heed_wquant_fn quant;
  const char *quant_name;
  heed_probe_fma_fn probe_dot; /* the int8_dot_peak probe (heed/bench.h); NULL: none */
  heed_glu_fn glu;
  const char *glu_name;
  heed_wkernel k[HEED_WTYPE_SLOTS]; /* [ggml type] */
} heed_weights_table;

/* The bf16_dot_peak probe (heed/bench.h) for the level isa on a CPU with
 * features f: vdpbf16ps on avx512 with avx512_bf16; NULL: none. */
heed_probe_fma_fn heed_cpu_probe_bf16(heed_isa isa, heed_cpu_features f);
double heed_probe_bf16_avx512(uint64_t iters, float *sink);

#define HEED_WSLOT_SET(t, TYPE, vf, mf)              \
  do {                                               \
    (t)->k[HEED_GGML_##TYPE].vec = (vf);             \
    (t)->k[HEED_GGML_##TYPE].vec_name = #vf;         \
    (t)->k[HEED_GGML_##TYPE].mat = (mf);             \
    (t)->k[HEED_GGML_##TYPE].mat_name = #mf;         \
  } while (0)

/* The table for an ISA level on a CPU with features f (built once, then
 * shared; read-only). NULL when the level is not compiled in. */
const heed_weights_table *heed_weights_table_get(heed_isa isa, heed_cpu_features f);

/* Each fills the entries it has a kernel for, over what is there. */
void heed_weights_register_ref(heed_weights_table *t);
void heed_weights_register_avx2(heed_weights_table *t);
void heed_weights_register_avx512(heed_weights_table *t);
void heed_weights_register_avx512vnni(heed_weights_table *t);
void heed_weights_register_neon(heed_weights_table *t);
void heed_weights_register_neon_dotprod(heed_weights_table *t);

/* Elements and bytes of one block of ggml type t (from HEED_GGML_TYPE_LIST);
 * 0 when t is not in the list. Kept here so backends need not call model/. */
static inline int heed_wtype_block(int t, uint32_t *elems, uint32_t *bytes) {
  switch (t) {
#define HEED_X_(N, v, s, e, b) \
  case v:                     \
    *elems = e, *bytes = b;   \
    return 1;
    HEED_GGML_TYPE_LIST(HEED_X_)
#undef HEED_X_
    default: *elems = 1, *bytes = 0; return 0;
  }
}

/* The reference dequantizer of one block of type t (dst: block_elems floats);
 * NULL for a type heed has no kernels for. */
typedef void (*heed_wdequant_fn)(const void *blk, float *dst);
heed_wdequant_fn heed_weights_ref_dequant(int type);
/* The magnitudes the error bound of heed/weights.h sums, per weight: |W| for
 * the formats whose value is one product, |d * u| + |d * offset| for a code
 * offset (Q4_0, Q5_0, Q6_K's 32) and |d * sc * u| + |dmin * m| for a min
 * (Q4_1, Q5_1, Q4_K, Q5_K): the parts a kernel may sum apart. */
void heed_weights_ref_magnitude(int type, const void *blk, float *dst);

#endif
