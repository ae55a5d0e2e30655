/* backends/cpu/ref/vocab_ref.c - the portable vocabulary-row kernels (see
 * heed/kernels.h): the reference every ISA's are tested against, and what
 * fills the slots an ISA has nothing faster for. Eight partial sums, as the
 * SIMD kernels keep, so long rows do not lose precision to one running sum. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "backends/cpu/cpu_isa.h"
#include "backends/cpu/vocab_maxsum.h"

static float vocab_max_ref(const float *x, size_t n, size_t *arg, int *bad) {
  size_t unused;
  if (!arg) arg = &unused; /* the index is tracked anyway */
  float m = -INFINITY;
  size_t a = 0;
  int b = 0;
  for (size_t i = 0; i < n; i++) {
    b |= isnan(x[i]) || x[i] == INFINITY;
    if (x[i] > m) m = x[i], a = i;
  }
  if (b) *bad = 1;
  *arg = a;
  return m;
}

static float sum8(const float acc[8]) {
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

static float vocab_sumexp_ref(const float *x, size_t n, float m, float s, float thr) {
  float acc[8] = {0};
  for (size_t i = 0; i < n; i++)
    if (x[i] >= thr) acc[i & 7] += expf((x[i] - m) * s);
  return sum8(acc);
}

/* Schraudolph's exp: the float whose bits are (y + 127) 2^23 is 2^floor(y)
 * (1 + frac(y)), up to 1.0615 times 2^y; y is clamped at -126 (the smallest
 * normal). (x - m) first, so the error does not grow with |m|. */
static inline float exp_bound(float x, float m, float s) {
  float y = (x - m) * (s * 1.44269504f * 8388608.0f) + 127.0f * 8388608.0f;
  int32_t b = (int32_t)(y > 8388608.0f ? y : 8388608.0f);
  float e;
  memcpy(&e, &b, sizeof e);
  return e;
}

static float vocab_sumexp_bound_ref(const float *x, size_t n, float m, float s, float thr) {
  float acc[8] = {0};
  for (size_t i = 0; i < n; i++)
    if (x[i] >= thr) acc[i & 7] += exp_bound(x[i], m, s);
  return sum8(acc);
}

/* Two reads (max, then the sum against it): the reference the one-read
 * SIMD kernels are held to, and what they hand a row to when a float
 * cannot place their reference (vocab_maxsum.h). */
float heed_cpu_vocab_maxsum_bound_ref(const float *x, size_t n, float s, float *z, int *bad, float *bmax) {
  size_t arg;
  float m = vocab_max_ref(x, n, &arg, bad);
  if (bmax)
    for (size_t i = 0; i < n; i += HEED_VOCAB_BLOCK) {
      float b = -INFINITY;
      for (size_t j = i; j < n && j < i + HEED_VOCAB_BLOCK; j++) b = x[j] > b ? x[j] : b;
      bmax[i / HEED_VOCAB_BLOCK] = b;
    }
  *z = m == -INFINITY ? 0.0f : vocab_sumexp_bound_ref(x, n, m, s, -INFINITY);
  return m;
}

static float vocab_maxsum_bound_ref(const float *x, size_t n, float s, float *z, int *bad, float *bmax) {
  return heed_cpu_vocab_maxsum_bound_ref(x, n, s, z, bad, bmax);
}

static float vocab_weights_ref(const float *x, size_t n, float m, float s, float thr, float scale, float *w) {
  float acc[8] = {0};
  for (size_t i = 0; i < n; i++) {
    w[i] = x[i] >= thr ? expf((x[i] - m) * s) * scale : 0.0f;
    acc[i & 7] += w[i];
  }
  return sum8(acc);
}

static float vocab_residual_ref(float *w, const float *q, size_t n, float ws, float qs) {
  float acc[8] = {0};
  for (size_t i = 0; i < n; i++) {
    float r = w[i] * ws - (q ? q[i] * qs : 0.0f);
    w[i] = r > 0 ? r : 0.0f;
    acc[i & 7] += w[i];
  }
  return sum8(acc);
}

static size_t vocab_collect_ref(const float *x, size_t n, float thr, uint32_t *idx) {
  size_t c = 0;
  for (size_t i = 0; i < n; i++)
    if (x[i] >= thr) idx[c++] = (uint32_t)i;
  return c;
}

void heed_cpu_register_vocab_ref(heed_kernel_table *t) { HEED_VOCAB_REGISTER(t, ref, HEED_ISA_SCALAR); }
