/* heed/kernels.h - the CPU kernel table: one slot per (operation, dtype).
 *
 * A table is built for one ISA level. The portable reference kernels fill
 * every slot first; each ISA configuration then overrides the slots it has a
 * faster kernel for (avx512 starts from avx2's table). Kernels are pure
 * functions of sizes and pointers: no allocation, no I/O, no global state.
 */
#ifndef HEED_KERNELS_H
#define HEED_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "heed/cpu.h"
#include "heed/dtype.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, "name"). */
/* Keys per panel of the transposed K layout (see heed/attention.h). */
#define HEED_KEY_PANEL 16

#define HEED_OP_LIST(X)          \
  X(DOT, "dot")                  \
  X(TO_F32, "to_f32")            \
  X(PROBE_READ, "probe_read")    \
  X(PROBE_FMA, "probe_fma")      \
  X(ATTN_QK, "attn_qk")          \
  X(ATTN_PV, "attn_pv")          \
  X(SOFTMAX_ROW, "softmax_row")  \
  X(VOCAB_MAX, "vocab_max")      \
  X(VOCAB_SUMEXP, "vocab_sumexp") \
  X(VOCAB_SUMEXP_BOUND, "vocab_sumexp_bound") \
  X(VOCAB_MAXSUM_BOUND, "vocab_maxsum_bound") \
  X(VOCAB_WEIGHTS, "vocab_weights") \
  X(VOCAB_RESIDUAL, "vocab_residual") \
  X(VOCAB_COLLECT, "vocab_collect")

typedef enum heed_op {
#define HEED_X_(N, s) HEED_OP_##N,
  HEED_OP_LIST(HEED_X_)
#undef HEED_X_
  HEED_OP_COUNT
} heed_op;

/* sum_i x[i] * y[i].  x: [n] of the slot's dtype; y: [n] f32. */
typedef float (*heed_dot_fn)(const void *x, const float *y, size_t n);
/* y[i] = (float)x[i].  x: [n] of the slot's dtype; y: [n] f32. Exact. */
typedef void (*heed_to_f32_fn)(const void *x, float *y, size_t n);
/* Streams x once and returns its sum: the read-bandwidth probe. x: [n] f32. */
typedef float (*heed_probe_read_fn)(const float *x, size_t n);
/* Runs `iters` rounds of independent multiply-adds on registers, writes a
 * value derived from them to *sink (so they cannot be dropped) and returns the
 * number of floating-point operations done (a multiply-add counts as 2). */
typedef double (*heed_probe_fma_fn)(uint64_t iters, float *sink);

/* Attention micro-kernels; the slot's dtype is the KV cache's. Head dims are
 * multiples of 16; R (query rows) and n (keys) are anything from 1 up (n a
 * multiple of 16 for the quantized types).
 *   attn_qk:  s[r*lds + j]  = sum_d q[r*dk + d] * K(j, d)
 *                                                q: [R][dk] f32, s: [R][lds]; kt holds the
 *                                                keys in panels of 16: K(j, d) is element
 *                                                (d*16 + j%16) of panel j/16, [dk][16]
 *   attn_pv:  o[r*dv + c]  += sum_j p[r*ldp + j] * V(j, c)   for c in 0..nc-1
 *                                                p: [R][ldp] f32, o: [R] rows dv apart;
 *                                                V rows are dv elements apart; nc is a
 *                                                multiple of 16 (v and o may point into a row)
 * Elements are read in runs of 16 (a panel row, 16 V columns). For the
 * quantized types a kernel reads raw codes, and the caller applies scales:
 *   q8    int8 code c, value c;
 *   q4    a run is 8 bytes: byte i holds element i (low nibble) and element
 *         i+8 (high nibble), value 0..15;
 *   e4m3  value e4m3(c) * 2^-8 (c's bits read as an f16: s.eeee.mmm -> s.0eeee.mmm0000000);
 *   e5m2  value e5m2(c) (c's bits are the top byte of an f16).
 *   softmax_row (f32 only): one row of the online softmax. With m_new =
 *     max(*m, s[0..n)): s[j] = exp(s[j] - m_new), *l = *l * exp(*m - m_new) + sum s,
 *     *m = m_new; returns exp(m_old - m_new), the factor the row's output is
 *     rescaled by. Masked scores are -inf and become 0; while every score seen
 *     is -inf, m stays -inf, l 0, and the return is 1. */
typedef void (*heed_attn_qk_fn)(const float *q, int R, const void *kt, int n, int dk, float *s, int lds);
typedef void (*heed_attn_pv_fn)(const float *p, int ldp, int R, const void *v, int n, int nc, int dv, float *o);
typedef float (*heed_softmax_row_fn)(float *s, int n, float *m, float *l);

/* Vocabulary-row kernels (f32 only) for sampling and speculative verification
 * (heed/spec.h). x: [n] logits; exp below is the kernel's own (relative error
 * under 2e-7; arguments below -87 give 0).
 *   vocab_max:      returns max x[i] and in *arg (unless arg is NULL) the first index holding it;
 *                   sets *bad to 1 when some x[i] is NaN or +inf (else leaves it).
 *                   All -inf: returns -inf, *arg 0.
 *   vocab_sumexp:   sum over x[i] >= thr of exp((x[i] - m) * s).
 *   vocab_sumexp_bound: the same sum from a cheap exp, for x[i] <= m: each
 *                   term is within [1 - 3e-5, 1.0616] of the true one
 *                   (Schraudolph's 2^y from the bits of (y + 127) 2^23,
 *                   linear between powers of two; y below -126 counts
 *                   2^-126), so for n <= 8192 the true sum S and the return r
 *                   satisfy r / HEED_VOCAB_BOUND_HI - n 2^-126 <= S and
 *                   S <= r * HEED_VOCAB_BOUND_LO_INV, the rounding of the sum
 *                   (and of adding up to 512 such sums) included.
 *   vocab_maxsum_bound: vocab_max (no arg) and vocab_sumexp_bound (thr -inf)
 *                   in one read, for n <= 8192: returns the max M, sets *bad
 *                   as vocab_max, and *z to a sum with the same bracket of
 *                   sum exp((x[i] - M) * s). The SIMD kernels sum against a
 *                   reference max that moves only when a block of the row
 *                   rises more than 40/s above it (that block is summed
 *                   again), then rescale once by expf: terms above the
 *                   reference stay far from overflow and the bracket holds.
 *                   All -inf: returns -inf, *z 0. bmax, if not NULL, gets
 *                   the max of each block x[256 b .. 256 b + 255] (the last
 *                   shorter), ceil(n / 256) of them (-inf for a block of
 *                   -inf only; unspecified where the block has a NaN, which
 *                   sets *bad): a cut knows where its candidates can be.
 *   vocab_weights:  w[i] = x[i] >= thr ? exp((x[i] - m) * s) * scale : 0; returns sum w.
 *   vocab_residual: w[i] = max(0, w[i] * ws - q[i] * qs) (q NULL: max(0, w[i] * ws));
 *                   returns sum w.
 *   vocab_collect:  writes to idx (room for n) the i with x[i] >= thr, in order;
 *                   returns how many. */
typedef float (*heed_vocab_max_fn)(const float *x, size_t n, size_t *arg, int *bad);
typedef float (*heed_vocab_sumexp_fn)(const float *x, size_t n, float m, float s, float thr);
typedef heed_vocab_sumexp_fn heed_vocab_sumexp_bound_fn;
typedef float (*heed_vocab_maxsum_bound_fn)(const float *x, size_t n, float s, float *z, int *bad, float *bmax);
#define HEED_VOCAB_BLOCK 256 /* vocab_maxsum_bound's bmax: one max per this many values */
#define HEED_VOCAB_BOUND_HI 1.0625f     /* vocab_sumexp_bound overstates by at most this factor */
#define HEED_VOCAB_BOUND_LO_INV 1.0002f /* and understates by at most 1 / this */
typedef float (*heed_vocab_weights_fn)(const float *x, size_t n, float m, float s, float thr, float scale,
                                       float *w);
typedef float (*heed_vocab_residual_fn)(float *w, const float *q, size_t n, float ws, float qs);
typedef size_t (*heed_vocab_collect_fn)(const float *x, size_t n, float thr, uint32_t *idx);

typedef void (*heed_kernel_fn)(void);

typedef struct heed_kernel_slot {
  heed_kernel_fn fn; /* NULL: no kernel for this (op, dtype) */
  heed_isa isa;      /* the ISA level of the kernel that fills the slot */
  const char *name;  /* "dot_f16_avx2" */
} heed_kernel_slot;

typedef struct heed_kernel_table {
  heed_isa isa;                                          /* the level built */
  heed_kernel_slot slot[HEED_OP_COUNT][HEED_DTYPE_COUNT]; /* [op][dtype] */
} heed_kernel_table;

const char *heed_op_name(heed_op op); /* "dot"; NULL for an unknown value */

/* 1 when this build of libheed has kernels for the ISA level. */
int heed_kernels_compiled(heed_isa isa);
/* Fills *t for the ISA level. HEED_E_UNSUPPORTED when the level is not in
 * this build. Does not check that this CPU can run it: heed_isa_runs_on does. */
heed_status heed_kernels_build(heed_isa isa, heed_kernel_table *t, heed_error *err);

static inline heed_dot_fn heed_kernel_dot(const heed_kernel_table *t, heed_dtype dt) {
  return (heed_dot_fn)t->slot[HEED_OP_DOT][dt].fn;
}
static inline heed_to_f32_fn heed_kernel_to_f32(const heed_kernel_table *t, heed_dtype dt) {
  return (heed_to_f32_fn)t->slot[HEED_OP_TO_F32][dt].fn;
}
static inline heed_probe_read_fn heed_kernel_probe_read(const heed_kernel_table *t) {
  return (heed_probe_read_fn)t->slot[HEED_OP_PROBE_READ][HEED_DTYPE_F32].fn;
}
static inline heed_probe_fma_fn heed_kernel_probe_fma(const heed_kernel_table *t) {
  return (heed_probe_fma_fn)t->slot[HEED_OP_PROBE_FMA][HEED_DTYPE_F32].fn;
}
static inline heed_attn_qk_fn heed_kernel_attn_qk(const heed_kernel_table *t, heed_dtype dt) {
  return (heed_attn_qk_fn)t->slot[HEED_OP_ATTN_QK][dt].fn;
}
static inline heed_attn_pv_fn heed_kernel_attn_pv(const heed_kernel_table *t, heed_dtype dt) {
  return (heed_attn_pv_fn)t->slot[HEED_OP_ATTN_PV][dt].fn;
}
static inline heed_softmax_row_fn heed_kernel_softmax_row(const heed_kernel_table *t) {
  return (heed_softmax_row_fn)t->slot[HEED_OP_SOFTMAX_ROW][HEED_DTYPE_F32].fn;
}
#define HEED_VOCAB_GETTER_(NAME, OP)                                                  \
  static inline heed_##NAME##_fn heed_kernel_##NAME(const heed_kernel_table *t) {      \
    return (heed_##NAME##_fn)t->slot[HEED_OP_##OP][HEED_DTYPE_F32].fn;                \
  }
HEED_VOCAB_GETTER_(vocab_max, VOCAB_MAX)
HEED_VOCAB_GETTER_(vocab_sumexp, VOCAB_SUMEXP)
HEED_VOCAB_GETTER_(vocab_sumexp_bound, VOCAB_SUMEXP_BOUND)
HEED_VOCAB_GETTER_(vocab_maxsum_bound, VOCAB_MAXSUM_BOUND)
HEED_VOCAB_GETTER_(vocab_weights, VOCAB_WEIGHTS)
HEED_VOCAB_GETTER_(vocab_residual, VOCAB_RESIDUAL)
HEED_VOCAB_GETTER_(vocab_collect, VOCAB_COLLECT)
#undef HEED_VOCAB_GETTER_

#ifdef __cplusplus
}
#endif
#endif
