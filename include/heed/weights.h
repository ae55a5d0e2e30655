/* heed/weights.h - model weights in GGUF's block formats, and the matrix
 * products a forward pass runs on them.
 *
 * Formats are ggml's (heed_ggml_type, heed/gguf.h), stored as the file stores
 * them: a row of n weights is n / block_elems blocks of block_bytes each.
 * heed computes with: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K,
 * Q5_K, Q6_K (heed_weights_supported); the others are refused naming the
 * type.
 *
 * Dequantization (heed_weights_dequant) is the reference: bit for bit what
 * ggml and the gguf package's numpy dequantizers give (the f16 scales
 * converted exactly, products and sums in float in ggml's order).
 *
 * Products. heed_matmul computes y = x W^T for a weight matrix W [rows][cols]
 * and n_tok activation rows x [n_tok][cols]:
 *   y[t][r] = sum_c W[r][c] * x[t][c]
 * For the quantized formats the activations are quantized first, per token,
 * to blocks of 32 int8 with one f32 scale (d = max|x| / 127, q = round(x/d),
 * the same bits on every ISA level),
 * and the products run on integers (AVX2 vpmaddubsw/vpmaddwd, AVX-512 VNNI
 * vpdpbusd, NEON sdot); the weights' block scales multiply the integer sums.
 * So y differs from the exact product of the dequantized weights by at most
 * sum over blocks of (d_block / 2) * sum |W[r][c]| over the block, plus float
 * rounding: HEED_WEIGHTS_ERROR_BOUND below is what the tests hold every
 * kernel to. F32, F16 and BF16 weights multiply f32 activations directly.
 *
 * n_tok == 1 is the decode path (matrix-vector: the weights stream once, rows
 * split over the runtime's pool); larger n_tok the prefill path, which reuses
 * each block of weights it loads across several tokens. Each ISA level has its
 * kernels (backends/cpu/<isa>/), chosen with the runtime's kernel table; the
 * reference kernels fill every slot first.
 *
 * Nothing is allocated in heed_matmul: the caller passes a work space of at
 * least heed_matmul_workspace bytes (64-byte aligned). One call at a time per
 * runtime (HEED_E_BUSY otherwise, as attention).
 */
#ifndef HEED_WEIGHTS_H
#define HEED_WEIGHTS_H

#include <stddef.h>
#include <stdint.h>

#include "heed/gguf.h"
#include "heed/runtime.h"
#include "heed/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* 1 when heed has kernels for weights of type t. */
int heed_weights_supported(int type);

/* Bytes of one row of n weights of type t; 0 when n is not a multiple of the
 * type's block or t is not supported. */
size_t heed_weights_row_bytes(int type, size_t n);

/* dst[0..n) = the n weights at src (n / block_elems whole blocks), exactly as
 * ggml dequantizes them. HEED_E_UNSUPPORTED for a type heed lacks;
 * HEED_E_INVALID when n is not a multiple of the block. */
heed_status heed_weights_dequant(int type, const void *src, size_t n, float *dst, heed_error *err);

/* A weight matrix as the file stores it, borrowed (e.g. the GGUF mapping). */
typedef struct heed_matrix {
  int type;         /* heed_ggml_type */
  const void *data; /* rows * row_bytes */
  size_t rows;      /* output features */
  size_t cols;      /* input features, a multiple of the type's block */
  size_t row_bytes; /* heed_weights_row_bytes(type, cols) */
} heed_matrix;

/* Fills m for a GGUF tensor of shape [cols, rows] (ggml order: ne[0] = cols).
 * HEED_E_UNSUPPORTED naming the tensor and type heed lacks; HEED_E_INVALID
 * for a tensor that is not 2-D. */
heed_status heed_matrix_from_tensor(const heed_gguf_tensor *t, heed_matrix *m, heed_error *err);

/* Work-space bytes heed_matmul needs for n_tok rows of activations: 0 for
 * F32, F16 and BF16 (work may then be NULL), and for a w heed refuses. */
size_t heed_matmul_workspace(const heed_matrix *w, size_t n_tok);

/* y[t * ldy + r] = sum_c W[r][c] * x[t * ldx + c] for t < n_tok, r < rows.
 * x: [n_tok][ldx] f32, finite (a NaN or inf is refused, naming token and
 * column, before anything is written); y: [n_tok][ldy] f32, ldy >= rows,
 * ldx >= cols. Runs on rt's pool with rt's kernels. */
heed_status heed_matmul(heed_runtime *rt, const heed_matrix *w, size_t n_tok, const float *x, size_t ldx, float *y,
                        size_t ldy, void *work, size_t work_bytes);

/* The bound the tests hold heed_matmul to, for one output element: with
 * A = sum_c M[r][c] * |x[c]|, where M is |W| for the formats whose weight is
 * one product (F32, F16, BF16, Q8_0) and the sum of the magnitudes of the
 * parts a kernel may add up apart for the others (their cancellation does not
 * shrink the float rounding): |d u| + |d off| for a code offset (Q4_0's 8,
 * Q5_0's 16, Q6_K's 32 times d sc), |d sc u| + |dmin m| for a min (Q4_1,
 * Q5_1, Q4_K, Q5_K); the kernels fold the offset and the min in through the
 * activation blocks' code sums instead of widening codes to signed,
 *   |y - exact| <= HEED_WEIGHTS_ERROR_REL * A for f32/f16/bf16 weights, and
 *   |y - exact| <= HEED_WEIGHTS_ERROR_REL * A + sum_blocks (d_b / 2) * sum_{c in b} |W[r][c]|
 * for the quantized formats (d_b: the activation block's scale; |W| exact).
 * 1e-5 covers the f32 sums of up to a few thousand terms per SIMD lane (the
 * tests see under 0.1 of it for the float formats). */
#define HEED_WEIGHTS_ERROR_REL 1e-5

/* The gated activation of a feed-forward layer, in place:
 *   gate[i] = act(gate[i]) * up[i]   for i < n,
 * act SiLU, x sigmoid(x), or GELU in its tanh form, 0.5 x (1 + tanh(u)),
 * u = sqrt(2/pi) (x + 0.044715 x^3), which is x sigmoid(2u). Runs on rt's
 * pool with rt's kernels (the SIMD levels: sigmoid from one exp of -|t|);
 * each element's result depends on its own inputs only, not on n or how the
 * pool splits the range. A NaN in gate or up gives NaN there. */
typedef enum heed_glu_act { HEED_GLU_SILU, HEED_GLU_GELU_TANH } heed_glu_act;
heed_status heed_glu(heed_runtime *rt, heed_glu_act act, float *gate, const float *up, size_t n);

/* The bound the tests hold heed_glu to, against the exact function (fp64),
 * with t the sigmoid's argument (x; GELU: 2u):
 *   |y - exact| <= HEED_GLU_ERROR_REL (1 + |t|) |exact| + 2e-38 |x up| + 1.5e-45 (1 + |up|)
 * (the first term: t rounded to float moves exp(-|t|) by |t| times its
 * relative error; the second: exp is flushed to 0 below -87.3; the third:
 * the smallest float step, for act(x) or its product in the denormal range). */
#define HEED_GLU_ERROR_REL 5e-7

#ifdef __cplusplus
}
#endif
#endif
