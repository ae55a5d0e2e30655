/* The weight formats: the reference dequantizers against hand-computed
 * blocks, and heed_matmul on every ISA configuration this machine runs (with
 * and without the int8 dot-product instructions) against an fp64 product of
 * the dequantized weights, held to the bound of heed/weights.h; refusals.
 * (tests/weights_oracle.py holds the dequantizers to gguf-py bit for bit.) */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backends/cpu/weights_kernels.h"
#include "heed/heed.h"
#include "heed/weights.h"

/* ---------- random numbers, f16 ---------- */

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}
static float unif(uint64_t *s) { return (float)((rnd(s) >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f; }

/* ---------- the ISA configurations ---------- */

typedef struct target {
  heed_isa isa;
  heed_cpu_features drop; /* features hidden from the runtime: the path without them */
} target;

static const target targets[] = {
    {HEED_ISA_SCALAR, 0},
    {HEED_ISA_AVX2, 0},
    {HEED_ISA_AVX512, HEED_CPU_FLAG(AVX512_VNNI)},
    {HEED_ISA_AVX512, 0},
    {HEED_ISA_NEON, HEED_CPU_FLAG(DOTPROD)},
    {HEED_ISA_NEON, 0},
};
#define N_TARGETS (sizeof targets / sizeof targets[0])

/* NULL when the configuration is not here (not compiled, or this CPU lacks it). */
static heed_runtime *open_target(const target *tg) {
  const heed_cpu_features f = heed_cpu_features_detect();
  if (!heed_kernels_compiled(tg->isa) || !heed_isa_runs_on(tg->isa, f)) return NULL;
  if (tg->drop && !(f & tg->drop)) return NULL; /* the same as the full configuration here */
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  o.isa = tg->isa;
  o.cpu_features_given = 1;
  o.cpu_features = f & ~tg->drop;
  heed_runtime *rt = NULL;
  heed_error e = {0};
  cr_assert_eq(heed_runtime_open(&o, &rt, &e), HEED_OK, "%s", e.msg);
  return rt;
}

static const char *target_name(const target *tg) {
  static char buf[64];
  snprintf(buf, sizeof buf, "%s%s", heed_isa_name(tg->isa),
           tg->drop ? (tg->isa == HEED_ISA_NEON ? " without dotprod" : " without avx512_vnni") : "");
  return buf;
}

/* ---------- matrices ---------- */

static const int types[] = {HEED_GGML_F32, HEED_GGML_F16, HEED_GGML_BF16, HEED_GGML_Q4_0, HEED_GGML_Q4_1, HEED_GGML_Q5_0,
                            HEED_GGML_Q5_1, HEED_GGML_Q8_0, HEED_GGML_Q4_K, HEED_GGML_Q5_K, HEED_GGML_Q6_K};

/* Byte offsets of a block's f16 scales (-1 ends the list). */
static const int *scale_offsets(int type) {
  static const int none[] = {-1}, d0[] = {0, -1}, dm[] = {0, 2, -1}, q6[] = {208, -1};
  switch (type) {
    case HEED_GGML_Q4_0:
    case HEED_GGML_Q5_0:
    case HEED_GGML_Q8_0: return d0;
    case HEED_GGML_Q4_1:
    case HEED_GGML_Q5_1:
    case HEED_GGML_Q4_K:
    case HEED_GGML_Q5_K: return dm;
    case HEED_GGML_Q6_K: return q6;
    default: return none;
  }
}

typedef enum wkind { W_RANDOM, W_ZERO, W_MAXCODES, W_HUGE, W_TINY, W_NEGZERO, W_KINDS } wkind;
static const char *wkind_names[] = {"random", "zero bytes", "all-max codes", "huge scales", "tiny scales",
                                    "negative-zero scales"};

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }

/* A random finite f16 of moderate size (2^-12 .. 2^-2, either sign). */
static uint16_t f16_moderate(uint64_t *s) {
  return (uint16_t)((rnd(s) & 0x8000) | ((3 + rnd(s) % 10) << 10) | (rnd(s) & 0x3FF));
}

static void fill_weights(int type, wkind k, uint8_t *w, size_t bytes, uint64_t *s) {
  uint32_t be, bb;
  heed_wtype_block(type, &be, &bb);
  for (size_t i = 0; i < bytes; i++) w[i] = k == W_ZERO ? 0 : k == W_MAXCODES ? 0xFF : (uint8_t)rnd(s);
  if (type == HEED_GGML_F32) {
    for (size_t i = 0; i < bytes / 4; i++) {
      float v = k == W_ZERO ? 0 : k == W_HUGE ? unif(s) * 1e20f : k == W_TINY ? unif(s) * 1e-30f
              : k == W_NEGZERO ? -0.0f : unif(s);
      memcpy(w + 4 * i, &v, 4);
    }
  } else if (type == HEED_GGML_F16) {
    for (size_t i = 0; i < bytes / 2; i++)
      put16(w + 2 * i, k == W_ZERO ? 0 : k == W_MAXCODES || k == W_HUGE ? (uint16_t)(0x7BFF | (rnd(s) & 0x8000))
                       : k == W_TINY ? (uint16_t)(rnd(s) & 0x83FF) : k == W_NEGZERO ? 0x8000 : f16_moderate(s));
  } else if (type == HEED_GGML_BF16) {
    for (size_t i = 0; i < bytes / 2; i++) {
      float v = k == W_ZERO ? 0 : k == W_HUGE ? unif(s) * 1e30f : k == W_TINY ? unif(s) * 1e-30f
              : k == W_NEGZERO ? -0.0f : unif(s);
      put16(w + 2 * i, heed_f32_to_bf16(v));
    }
  } else {
    for (size_t b = 0; b < bytes / bb; b++)
      for (const int *o = scale_offsets(type); *o >= 0; o++) {
        uint16_t v = k == W_ZERO ? 0 : k == W_HUGE ? (uint16_t)(0x7BFF | (rnd(s) & 0x8000))
                   : k == W_TINY ? (uint16_t)(1 + rnd(s) % 0x3FF) : k == W_NEGZERO ? 0x8000 : f16_moderate(s);
        put16(w + b * bb + *o, v);
      }
  }
}

typedef enum xkind { X_RANDOM, X_OUTLIER, X_ZERO, X_TINY, X_KINDS } xkind;
static const char *xkind_names[] = {"random", "one outlier per block", "zeros", "tiny"};

static void fill_x(xkind k, float *x, size_t n, uint64_t *s) {
  for (size_t i = 0; i < n; i++) x[i] = k == X_ZERO ? 0 : k == X_TINY ? unif(s) * 1e-20f : unif(s);
  if (k == X_OUTLIER)
    for (size_t b = 0; b < n; b += 32) x[b + rnd(s) % (n - b < 32 ? n - b : 32)] = (rnd(s) & 1 ? 1 : -1) * 3e4f;
}

/* The activation scale of heed/weights.h for the 32 values at x. */
static float qa_scale(const float *x) {
  float m = 0;
  for (int i = 0; i < 32; i++) m = fmaxf(m, fabsf(x[i]));
  return m / 127.0f;
}

/* Runs heed_matmul on rt and checks every output against the fp64 product of
 * the reference-dequantized weights and the bound of heed/weights.h. Returns
 * the worst ratio of error to bound. */
static double check_product(heed_runtime *rt, const char *who, int type, size_t rows, size_t cols, size_t n_tok,
                            wkind wk, xkind xk, uint64_t *s) {
  const size_t rb = heed_weights_row_bytes(type, cols);
  cr_assert(rb, "%s: cols %zu", heed_ggml_type_name(type), cols);
  uint8_t *w = malloc(rows * rb);
  fill_weights(type, wk, w, rows * rb, s);
  const size_t ldx = cols + 3, ldy = rows + 5;
  float *x = malloc(n_tok * ldx * sizeof(float)), *y = malloc(n_tok * ldy * sizeof(float));
  for (size_t t = 0; t < n_tok; t++) fill_x(xk, x + t * ldx, cols, s);
  for (size_t i = 0; i < n_tok * ldy; i++) y[i] = 12345.0f; /* the gaps between rows must stay */
  float *wd = malloc(rows * cols * sizeof(float)), *mag = malloc(rows * cols * sizeof(float));
  cr_assert_eq(heed_weights_dequant(type, w, rows * cols, wd, NULL), HEED_OK);
  uint32_t be, bb;
  heed_wtype_block(type, &be, &bb);
  for (size_t b = 0; b < rows * cols / be; b++) heed_weights_ref_magnitude(type, w + b * bb, mag + b * be);

  heed_matrix m = {.type = type, .data = w, .rows = rows, .cols = cols, .row_bytes = rb};
  const size_t wsb = heed_matmul_workspace(&m, n_tok);
  void *ws = wsb ? aligned_alloc(64, (wsb + 63) & ~(size_t)63) : NULL;
  heed_status st = heed_matmul(rt, &m, n_tok, x, ldx, y, ldy, ws, wsb);
  cr_assert_eq(st, HEED_OK, "%s %s: %s", who, heed_ggml_type_name(type), heed_runtime_last_error(rt));

  double worst = 0;
  for (size_t t = 0; t < n_tok; t++) {
    const float *xt = x + t * ldx;
    for (size_t r = 0; r < rows; r++) {
      double exact = 0, a = 0, qterm = 0;
      for (size_t c = 0; c < cols; c++) {
        exact += (double)wd[r * cols + c] * xt[c];
        a += (double)mag[r * cols + c] * fabs((double)xt[c]);
      }
      if (be > 1)
        for (size_t c0 = 0; c0 < cols; c0 += 32) {
          double sw = 0;
          for (size_t c = c0; c < c0 + 32; c++) sw += fabs((double)wd[r * cols + c]);
          qterm += qa_scale(xt + c0) / 2.0 * sw;
        }
      const double bound = HEED_WEIGHTS_ERROR_REL * a + qterm + 1e-37;
      const double err = fabs((double)y[t * ldy + r] - exact);
      cr_assert(err <= bound,
                "%s %s %zux%zu n_tok=%zu (%s weights, %s x): y[%zu][%zu] = %.9g, exact %.9g: error %.3g > bound %.3g",
                who, heed_ggml_type_name(type), rows, cols, n_tok, wkind_names[wk], xkind_names[xk], t, r,
                y[t * ldy + r], exact, err, bound);
      if (err / bound > worst) worst = err / bound;
    }
    for (size_t r = rows; r < ldy; r++) cr_assert_eq(y[t * ldy + r], 12345.0f, "%s wrote past rows", who);
  }
  free(ws), free(w), free(x), free(y), free(wd), free(mag);
  return worst;
}

static void check_type(int type) {
  static const size_t rows_list[] = {1, 3, 17, 100, 257};
  static const size_t ntok_list[] = {1, 2, 3, 5, 8, 13};
  uint32_t be, bb;
  heed_wtype_block(type, &be, &bb);
  size_t cols_list[3];
  if (be == 256) cols_list[0] = 256, cols_list[1] = 512, cols_list[2] = 768;
  else if (be == 32) cols_list[0] = 32, cols_list[1] = 32 * 7, cols_list[2] = 256 * 3 + 32 * 5; /* a partial group of 8 */
  else cols_list[0] = 5, cols_list[1] = 37, cols_list[2] = 256 * 3;
  int ran = 0;
  for (size_t ti = 0; ti < N_TARGETS; ti++) {
    heed_runtime *rt = open_target(&targets[ti]);
    if (!rt) continue;
    ran++;
    const char *who = target_name(&targets[ti]);
    uint64_t s = 0x9E3779B97F4A7C15ull ^ (uint64_t)type * 977 ^ ti;
    double worst = 0;
    for (size_t ri = 0; ri < 5; ri++)
      for (size_t ci = 0; ci < 3; ci++)
        for (size_t ni = 0; ni < 6; ni++) {
          double q = check_product(rt, who, type, rows_list[ri], cols_list[ci], ntok_list[ni], W_RANDOM, X_RANDOM, &s);
          if (q > worst) worst = q;
        }
    /* rows longer than the kernels' panels (the VNNI ones hold 64 super-blocks) */
    if (be == 256)
      for (size_t ni = 0; ni < 3; ni++) {
        double q = check_product(rt, who, type, 5, 256 * 65, ntok_list[ni], W_RANDOM, X_RANDOM, &s);
        if (q > worst) worst = q;
      }
    /* the adversarial inputs, on a few shapes */
    for (int wk = 0; wk < W_KINDS; wk++)
      for (int xk = 0; xk < X_KINDS; xk++)
        for (size_t ni = 0; ni < 6; ni += 2) {
          if (type == HEED_GGML_F32 && wk == W_HUGE && xk == X_OUTLIER) continue; /* 1e20 * 3e4 * cols overflows */
          double q = check_product(rt, who, type, 17, cols_list[2], ntok_list[ni] + (ni == 4 ? 5 : 0), (wkind)wk,
                                   (xkind)xk, &s);
          if (q > worst) worst = q;
        }
    cr_log_info("%s %s: worst error / bound = %.3f", who, heed_ggml_type_name(type), worst);
    heed_runtime_close(rt);
  }
  cr_assert(ran >= 1);
}

#define TYPE_TEST(name, TYPE) \
  Test(weights, matmul_##name, .timeout = 280 * HEED_TEST_TIMEOUT_SCALE) { check_type(HEED_GGML_##TYPE); }
TYPE_TEST(f32, F32)
TYPE_TEST(f16, F16)
TYPE_TEST(bf16, BF16)
TYPE_TEST(q4_0, Q4_0)
TYPE_TEST(q4_1, Q4_1)
TYPE_TEST(q5_0, Q5_0)
TYPE_TEST(q5_1, Q5_1)
TYPE_TEST(q8_0, Q8_0)
TYPE_TEST(q4_k, Q4_K)
TYPE_TEST(q5_k, Q5_K)
TYPE_TEST(q6_k, Q6_K)

/* A row gives the same bits for a token alone (the decode kernel) and in a
 * batch (the prefill kernel): speculative verification and batched streams
 * depend on it to reproduce plain greedy decoding token for token. Rows up
 * to 8960 weights (Qwen2.5-1.5B's FFN down; past the AVX2 panel's chunk of
 * 4096) and 18944 (Qwen2.5-7B's; past the avx512_vnni panel's 16384). Every
 * format on every target, avx512_vnni's 32-weight formats included (their
 * decode kernel once summed in another order, and batched Gemma 3 streams
 * then differed from the same prompts alone). */
static void check_alone_equals_batch(int type) {
  uint32_t be, bb;
  heed_wtype_block(type, &be, &bb);
  const size_t cols_list[] = {be == 256 ? 768 : 224, 4352, 8960, 18944}, rows = 37, n_tok = 7;
  for (size_t ti = 0; ti < N_TARGETS; ti++) {
    heed_runtime *rt = open_target(&targets[ti]);
    if (!rt) continue;
    uint64_t s = 0x51ED270B27F4A7C1ull ^ (uint64_t)type * 131 ^ ti;
    for (size_t ci = 0; ci < sizeof cols_list / sizeof cols_list[0]; ci++) {
      const size_t cols = cols_list[ci], rb = heed_weights_row_bytes(type, cols);
      uint8_t *w = malloc(rows * rb);
      fill_weights(type, W_RANDOM, w, rows * rb, &s);
      float *x = malloc(n_tok * cols * sizeof(float)), *y = malloc(n_tok * rows * sizeof(float)), y1[37];
      for (size_t t = 0; t < n_tok; t++) fill_x(t == 3 ? X_OUTLIER : X_RANDOM, x + t * cols, cols, &s);
      heed_matrix m = {.type = type, .data = w, .rows = rows, .cols = cols, .row_bytes = rb};
      const size_t wsb = heed_matmul_workspace(&m, n_tok);
      void *ws = wsb ? aligned_alloc(64, (wsb + 63) & ~(size_t)63) : NULL;
      cr_assert_eq(heed_matmul(rt, &m, n_tok, x, cols, y, rows, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));
      for (size_t t = 0; t < n_tok; t++) {
        cr_assert_eq(heed_matmul(rt, &m, 1, x + t * cols, cols, y1, rows, ws, wsb), HEED_OK);
        for (size_t r = 0; r < rows; r++)
          cr_assert(memcmp(&y1[r], &y[t * rows + r], sizeof(float)) == 0,
                    "%s %s cols %zu: token %zu row %zu alone %.9g, in a batch of %zu %.9g", target_name(&targets[ti]),
                    heed_ggml_type_name(type), cols, t, r, y1[r], n_tok, y[t * rows + r]);
      }
      free(ws), free(w), free(x), free(y);
    }
    heed_runtime_close(rt);
  }
}

Test(weights, alone_equals_batch, .timeout = 120 * HEED_TEST_TIMEOUT_SCALE) {
  for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) check_alone_equals_batch(types[i]);
}

/* Every target's table fills every supported type, and the configurations
 * with the int8 dot-product instructions use them where the CPU has them. */
Test(weights, tables) {
  for (size_t ti = 0; ti < N_TARGETS; ti++) {
    heed_runtime *rt = open_target(&targets[ti]);
    if (!rt) continue;
    const heed_weights_table *t = heed_weights_table_get(heed_runtime_isa(rt), heed_runtime_cpu_features(rt));
    cr_assert(t);
    cr_assert(t->quant);
    cr_assert(t->glu, "%s: no gated activation", target_name(&targets[ti]));
    cr_log_info("%s: %s, %s", target_name(&targets[ti]), t->quant_name, t->glu_name);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++) {
      cr_assert(t->k[types[i]].vec && t->k[types[i]].mat, "%s: %s", target_name(&targets[ti]),
                heed_ggml_type_name(types[i]));
      cr_log_info("%s %s: %s, %s", target_name(&targets[ti]), heed_ggml_type_name(types[i]), t->k[types[i]].vec_name,
                  t->k[types[i]].mat_name);
    }
    cr_assert_eq(t->dot, !targets[ti].drop && (targets[ti].isa == HEED_ISA_AVX512 || targets[ti].isa == HEED_ISA_NEON) &&
                             (heed_cpu_features_detect() &
                              (targets[ti].isa == HEED_ISA_AVX512 ? HEED_CPU_FLAG(AVX512_VNNI) : HEED_CPU_FLAG(DOTPROD))) != 0);
    heed_runtime_close(rt);
  }
  cr_assert(!heed_weights_supported(HEED_GGML_Q2_K));
  cr_assert(!heed_weights_supported(HEED_GGML_Q8_K));
  cr_assert(!heed_weights_supported(-1));
  cr_assert(!heed_weights_supported(99));
  cr_assert_eq(heed_weights_row_bytes(HEED_GGML_Q4_K, 1536), 6 * 144);
  cr_assert_eq(heed_weights_row_bytes(HEED_GGML_Q4_K, 1500), 0);
  cr_assert_eq(heed_weights_row_bytes(HEED_GGML_F16, 7), 14);
  cr_assert_eq(heed_weights_row_bytes(HEED_GGML_Q3_K, 256), 0);
}

/* ---------- the reference dequantizers against blocks worked by hand ---------- */

static void deq(int type, const uint8_t *blk, float *out) {
  uint32_t be, bb;
  heed_wtype_block(type, &be, &bb);
  heed_error e = {0};
  cr_assert_eq(heed_weights_dequant(type, blk, be, out, &e), HEED_OK, "%s", e.msg);
}

Test(weights, dequant_by_hand) {
  uint8_t b[256];
  float y[256];
  /* Q4_0: d = 1, byte 0 = 0x21: element 0 is 1 - 8, element 16 is 2 - 8 */
  memset(b, 0x88, sizeof b);
  put16(b, 0x3C00);
  b[2] = 0x21;
  deq(HEED_GGML_Q4_0, b, y);
  cr_assert(y[0] == -7 && y[16] == -6 && y[1] == 0 && y[31] == 0);
  /* Q4_1: d = 0.5, m = -1, byte 0 = 0xF1 */
  memset(b, 0, sizeof b);
  put16(b, 0x3800), put16(b + 2, 0xBC00);
  b[4] = 0xF1;
  deq(HEED_GGML_Q4_1, b, y);
  cr_assert(y[0] == -0.5f && y[16] == 6.5f && y[1] == -1, "%g %g %g", y[0], y[16], y[1]);
  /* Q5_0: d = 2, qh bits 0 and 16, byte 0 = 0x3F: element 0 = 31 - 16, element 16 = 19 - 16, element 1 = -16 */
  memset(b, 0, sizeof b);
  put16(b, 0x4000);
  b[2] = 0x01, b[4] = 0x01;
  b[6] = 0x3F;
  deq(HEED_GGML_Q5_0, b, y);
  cr_assert(y[0] == 30 && y[16] == 6 && y[1] == -32, "%g %g %g", y[0], y[16], y[1]);
  /* Q5_1: d = 1, m = 0.5, qh bit 31, byte 15 = 0xF0: element 31 = 31 + 0.5, element 15 = 0.5 */
  memset(b, 0, sizeof b);
  put16(b, 0x3C00), put16(b + 2, 0x3800);
  b[7] = 0x80;
  b[8 + 15] = 0xF0;
  deq(HEED_GGML_Q5_1, b, y);
  cr_assert(y[31] == 31.5f && y[15] == 0.5f, "%g %g", y[31], y[15]);
  /* Q8_0: d = 0.25, codes -128, 127 */
  memset(b, 0, sizeof b);
  put16(b, 0x3400);
  b[2] = 0x80, b[3] = 0x7F;
  deq(HEED_GGML_Q8_0, b, y);
  cr_assert(y[0] == -32 && y[1] == 31.75f && y[2] == 0);
  /* Q4_K: d = 1, dmin = 0.5. Scales: byte 0 = 0x83 (sc0 = 3, top bits of sc4 = 2),
   * byte 4 = 0x42 (m0 = 2, top bits of m4 = 1), byte 8 = 0x51 (sc4 low = 1, m4 low = 5):
   * sc4 = 33, m4 = 21. Element 0 = 3 * 10 - 1; element 128 (sub-block 4) = 33 * 15 - 10.5;
   * element 32 (sub-block 1, sc1 = m1 = 0) = 0. */
  memset(b, 0, sizeof b);
  put16(b, 0x3C00), put16(b + 2, 0x3800);
  b[4 + 0] = 0x83, b[4 + 4] = 0x42, b[4 + 8] = 0x51;
  b[16 + 0] = 0x7A, b[16 + 64] = 0x0F;
  deq(HEED_GGML_Q4_K, b, y);
  cr_assert(y[0] == 29 && y[32] == 0 && y[128] == 484.5f && y[160] == 0, "%g %g %g %g", y[0], y[32], y[128], y[160]);
  /* Q5_K: the same scales; qh byte 0 bits 0 and 4: element 0 gains 16 (sc 3), element 128 gains 16 (sc 33) */
  memset(b, 0, sizeof b);
  put16(b, 0x3C00), put16(b + 2, 0x3800);
  b[4 + 0] = 0x83, b[4 + 4] = 0x42, b[4 + 8] = 0x51;
  b[16] = 0x11;
  b[48 + 0] = 0x7A, b[48 + 64] = 0x0F;
  deq(HEED_GGML_Q5_K, b, y);
  cr_assert(y[0] == 3 * 26 - 1 && y[128] == 33 * 31 - 10.5f, "%g %g", y[0], y[128]);
  /* Q6_K: d = 0.5; scales 2, -3, (index 4) 1, (index 8) 4.
   * element 0: low 5 (ql[0] & 15), high 2 (qh[0] & 3): 37 - 32 = 5, times 0.5 * 2
   * element 16: ql[16] = 0x0A, qh[16] = 1: 26 - 32, times 0.5 * -3
   * element 64: ql[0] >> 4 = 3, (qh[0] >> 4) & 3 = 1: 19 - 32, times 0.5 * 1
   * element 128: ql[64] & 15 = 15, qh[32] & 3 = 3: 63 - 32, times 0.5 * 4 */
  memset(b, 0, sizeof b);
  uint8_t q6[210] = {0};
  q6[0] = 0x35, q6[16] = 0x0A, q6[64] = 0x0F;
  q6[128 + 0] = 0x12, q6[128 + 16] = 0x01, q6[128 + 32] = 0x03;
  q6[192 + 0] = 2, q6[192 + 1] = (uint8_t)-3, q6[192 + 4] = 1, q6[192 + 8] = 4;
  put16(q6 + 208, 0x3800);
  deq(HEED_GGML_Q6_K, q6, y);
  cr_assert(y[0] == 5 && y[16] == 9 && y[64] == -6.5f && y[128] == 62 && y[1] == -32, "%g %g %g %g %g", y[0], y[16],
            y[64], y[128], y[1]);
  /* F16, BF16, F32 */
  put16(b, 0x3C00), put16(b + 2, 0x8000);
  cr_assert_eq(heed_weights_dequant(HEED_GGML_F16, b, 2, y, NULL), HEED_OK);
  cr_assert(y[0] == 1 && y[1] == 0 && signbit(y[1]));
  put16(b, 0x3F80), put16(b + 2, 0xC000);
  cr_assert_eq(heed_weights_dequant(HEED_GGML_BF16, b, 2, y, NULL), HEED_OK);
  cr_assert(y[0] == 1 && y[1] == -2);
}

/* ---------- refusals ---------- */

Test(weights, refusals) {
  heed_runtime_options o;
  heed_runtime_options_init(&o);
  o.flags = HEED_RUNTIME_IGNORE_ENV | HEED_RUNTIME_NO_OPENCL;
  heed_runtime *rt;
  cr_assert_eq(heed_runtime_open(&o, &rt, NULL), HEED_OK);
  const size_t rows = 4, cols = 64;
  uint8_t w[4 * 68] = {0};
  heed_matrix m = {.type = HEED_GGML_Q8_0, .data = w, .rows = rows, .cols = cols,
                   .row_bytes = heed_weights_row_bytes(HEED_GGML_Q8_0, cols)};
  float x[3 * 64], y[3 * 4];
  for (size_t i = 0; i < 3 * 64; i++) x[i] = 1;
  const size_t wsb = heed_matmul_workspace(&m, 3);
  cr_assert(wsb >= 3 * 2 * sizeof(heed_qa_block));
  void *ws = aligned_alloc(64, wsb);
  cr_assert_eq(heed_matmul(rt, &m, 3, x, 64, y, 4, ws, wsb), HEED_OK, "%s", heed_runtime_last_error(rt));

  /* a NaN activation: refused naming token and column, y untouched */
  x[2 * 64 + 5] = NAN;
  for (size_t i = 0; i < 12; i++) y[i] = -7;
  cr_assert_eq(heed_matmul(rt, &m, 3, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(rt), "token 2, column 5"), "%s", heed_runtime_last_error(rt));
  for (size_t i = 0; i < 12; i++) cr_assert_eq(y[i], -7);
  x[2 * 64 + 5] = INFINITY;
  cr_assert_eq(heed_matmul(rt, &m, 3, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  x[2 * 64 + 5] = 1;
  /* F32 weights refuse a NaN too (no quantization to catch it) */
  float wf[4 * 64] = {0};
  heed_matrix mf = {.type = HEED_GGML_F32, .data = wf, .rows = 4, .cols = 64, .row_bytes = 256};
  x[63] = -INFINITY;
  cr_assert_eq(heed_matmul(rt, &mf, 1, x, 64, y, 4, NULL, 0), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(rt), "token 0, column 63"), "%s", heed_runtime_last_error(rt));
  x[63] = 1;
  cr_assert_eq(heed_matmul_workspace(&mf, 5), 0);

  /* too small a work space, or none, or misaligned */
  cr_assert_eq(heed_matmul(rt, &m, 3, x, 64, y, 4, ws, wsb - 1), HEED_E_TOO_SMALL);
  cr_assert(strstr(heed_runtime_last_error(rt), "work space"), "%s", heed_runtime_last_error(rt));
  cr_assert_eq(heed_matmul(rt, &m, 3, x, 64, y, 4, NULL, 0), HEED_E_TOO_SMALL);
  cr_assert_eq(heed_matmul(rt, &m, 1, x, 64, y, 4, (uint8_t *)ws + 4, wsb - 4), HEED_E_INVALID);

  /* an unsupported type; cols not a multiple of the block; a wrong row_bytes */
  heed_matrix bad = m;
  bad.type = HEED_GGML_Q2_K;
  cr_assert_eq(heed_matmul(rt, &bad, 1, x, 64, y, 4, ws, wsb), HEED_E_UNSUPPORTED);
  cr_assert(strstr(heed_runtime_last_error(rt), "Q2_K"), "%s", heed_runtime_last_error(rt));
  bad = m;
  bad.cols = 48;
  cr_assert_eq(heed_matmul(rt, &bad, 1, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert(strstr(heed_runtime_last_error(rt), "cols=48"), "%s", heed_runtime_last_error(rt));
  bad = m;
  bad.row_bytes = 64;
  cr_assert_eq(heed_matmul(rt, &bad, 1, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert_eq(heed_matmul(rt, &m, 1, x, 63, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert_eq(heed_matmul(rt, &m, 1, x, 64, y, 3, ws, wsb), HEED_E_INVALID);
  cr_assert_eq(heed_matmul(NULL, &m, 1, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert_eq(heed_matmul(rt, NULL, 1, x, 64, y, 4, ws, wsb), HEED_E_INVALID);
  cr_assert_eq(heed_matmul(rt, &m, 0, x, 64, y, 4, ws, wsb), HEED_OK);

  /* the dequantizer's refusals */
  heed_error e = {0};
  float out[64];
  cr_assert_eq(heed_weights_dequant(HEED_GGML_Q3_K, w, 256, out, &e), HEED_E_UNSUPPORTED);
  cr_assert(strstr(e.msg, "Q3_K"), "%s", e.msg);
  cr_assert_eq(heed_weights_dequant(HEED_GGML_Q8_0, w, 40, out, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "40"), "%s", e.msg);

  /* matrices from tensors */
  heed_gguf_tensor t = {.name = "blk.0.attn_q.weight", .type = HEED_GGML_Q8_0, .n_dims = 2, .ne = {64, 4, 1, 1},
                        .n_elems = 256, .data = w};
  heed_matrix mt;
  cr_assert_eq(heed_matrix_from_tensor(&t, &mt, &e), HEED_OK, "%s", e.msg);
  cr_assert(mt.rows == 4 && mt.cols == 64 && mt.row_bytes == 68 && mt.data == w && mt.type == HEED_GGML_Q8_0);
  t.n_dims = 3;
  cr_assert_eq(heed_matrix_from_tensor(&t, &mt, &e), HEED_E_INVALID);
  cr_assert(strstr(e.msg, "blk.0.attn_q.weight"), "%s", e.msg);
  t.n_dims = 2;
  t.type = HEED_GGML_Q8_K;
  cr_assert_eq(heed_matrix_from_tensor(&t, &mt, &e), HEED_E_UNSUPPORTED);
  cr_assert(strstr(e.msg, "blk.0.attn_q.weight") && strstr(e.msg, "Q8_K"), "%s", e.msg);
  free(ws);
  heed_runtime_close(rt);
}

/* ---------- the gated activation ---------- */

/* The argument of the sigmoid: x (SiLU), 2v (GELU: 0.5 x (1 + tanh(v)) =
 * x / (1 + exp(-2v)), the same function with no cancellation where tanh(v)
 * nears -1; even fp64's 1 + tanh is 0 there). */
static double glu_t(double x, int gelu) { return gelu ? 2 * 0.7978845608028654 * (x + 0.044715 * x * x * x) : x; }
static double glu_exact(double x, double u, int gelu) { return x / (1.0 + exp(-glu_t(x, gelu))) * u; }

/* heed_glu on every configuration against fp64, within HEED_GLU_ERROR_REL
 * (heed/weights.h), on random values of several scales and the edges: 0,
 * -0, the sign change, the exp's flush (|t| near 87.3), huge values whose
 * cube overflows, infinities (x inf: act inf or 0; u inf) and denormals;
 * each element's bits the same whatever the length and offset of the call
 * (the SIMD tails), and NaN in, NaN out. */
Test(weights, glu_against_fp64) {
  enum { N = 4099 };
  float *x = malloc(N * sizeof(float)), *u = malloc(N * sizeof(float)), *y = malloc(N * sizeof(float)),
        *piece = malloc(N * sizeof(float));
  static const float edges[] = {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-45f, -1e-45f, 0.5f, -0.5f, 1.0f, -1.0f, 3.0f, -3.0f,
                                -10.0f, 10.0f, -20.0f, -43.6f, -43.7f, -87.2f, -87.3f, -87.4f, -88.0f, -100.0f, 87.5f,
                                100.0f, -1e5f, 1e5f, 1e13f, -1e13f, 3e38f, -3e38f, INFINITY, -INFINITY};
  const size_t n_edges = sizeof edges / sizeof edges[0];
  for (size_t ti = 0; ti < N_TARGETS; ti++) {
    heed_runtime *rt = open_target(&targets[ti]);
    if (!rt) continue;
    for (int gelu = 0; gelu < 2; gelu++) {
      uint64_t s = 0x9e3779b97f4a7c15ull + (uint64_t)gelu;
      for (size_t i = 0; i < N; i++) {
        const float scale = i % 4 == 0 ? 0.1f : i % 4 == 1 ? 2.0f : i % 4 == 2 ? 12.0f : 120.0f;
        x[i] = i < 4 * n_edges ? edges[i % n_edges] : unif(&s) * scale;
        u[i] = i < n_edges ? 1.0f : i < 2 * n_edges ? -2.5f : i < 3 * n_edges ? 1e-3f : unif(&s) * 4.0f;
      }
      u[4 * n_edges] = INFINITY, x[4 * n_edges] = 0.75f;
      memcpy(y, x, N * sizeof(float));
      const heed_glu_act act = gelu ? HEED_GLU_GELU_TANH : HEED_GLU_SILU;
      cr_assert_eq(heed_glu(rt, act, y, u, N), HEED_OK, "%s", heed_runtime_last_error(rt));
      double worst = 0;
      for (size_t i = 0; i < N; i++) {
        const double want = glu_exact(x[i], u[i], gelu);
        if (isnan(want) || isinf(want)) { /* inf * 0 and the like: the same class */
          cr_assert(isnan(want) ? isnan(y[i]) : y[i] == (float)want, "%s %s x %g u %g: %g, exact %g",
                    target_name(&targets[ti]), gelu ? "gelu" : "silu", x[i], u[i], y[i], want);
          continue;
        }
        const double t = fabs(glu_t(x[i], gelu)), err = fabs((double)y[i] - want),
                     bound = HEED_GLU_ERROR_REL * (1 + (isfinite(t) ? t : 0)) * fabs(want) +
                                                              2e-38 * fabs((double)x[i] * u[i]) + 1.5e-45 * (1 + fabs((double)u[i]));
        cr_assert(err <= bound || (fabs(want) > 3.4e38 && isinf(y[i])), "%s %s x %.9g u %.9g: %.9g, exact %.9g (error %g, bound %g)",
                  target_name(&targets[ti]), gelu ? "gelu" : "silu", x[i], u[i], y[i], want, err, bound);
        if (fabs(want) > 1e-30 && isfinite(y[i])) worst = fmax(worst, err / (fabs(want) * (1 + t)));
      }
      cr_log_info("%s %s: worst relative error / (1 + |t|) %.3g (bound %g)", target_name(&targets[ti]), gelu ? "gelu" : "silu", worst,
                  HEED_GLU_ERROR_REL);
      /* pieces of 1..37 at every offset give the same bits as the whole */
      for (size_t at = 0; at < N;) {
        size_t len = 1 + rnd(&s) % 37;
        if (at + len > N) len = N - at;
        memcpy(piece + at, x + at, len * sizeof(float));
        cr_assert_eq(heed_glu(rt, act, piece + at, u + at, len), HEED_OK);
        at += len;
      }
      cr_assert(memcmp(piece, y, N * sizeof(float)) == 0, "%s %s: a piece differs from the whole", target_name(&targets[ti]),
                gelu ? "gelu" : "silu");
      float nx[3] = {NAN, 1.0f, -2.0f}, nu[3] = {1.0f, NAN, 1.0f};
      cr_assert_eq(heed_glu(rt, act, nx, nu, 3), HEED_OK);
      cr_assert(isnan(nx[0]) && isnan(nx[1]) && !isnan(nx[2]), "%s: NaN in, NaN out", target_name(&targets[ti]));
    }
    /* refusals */
    cr_assert_eq(heed_glu(rt, (heed_glu_act)7, y, u, 4), HEED_E_INVALID);
    cr_assert(strstr(heed_runtime_last_error(rt), "activation 7"), "%s", heed_runtime_last_error(rt));
    cr_assert_eq(heed_glu(rt, HEED_GLU_SILU, NULL, u, 4), HEED_E_INVALID);
    cr_assert(strstr(heed_runtime_last_error(rt), "gate is NULL"), "%s", heed_runtime_last_error(rt));
    cr_assert_eq(heed_glu(rt, HEED_GLU_SILU, NULL, NULL, 0), HEED_OK);
    heed_runtime_close(rt);
  }
  cr_assert_eq(heed_glu(NULL, HEED_GLU_SILU, y, u, 4), HEED_E_INVALID);
  free(x), free(u), free(y), free(piece);
}
