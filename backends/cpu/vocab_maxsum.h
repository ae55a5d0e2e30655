/* backends/cpu/vocab_maxsum.h - the scalar bookkeeping that every SIMD
 * vocab_maxsum_bound (heed/kernels.h) shares.
 *
 * A term is Schraudolph's 2^(y 2^-23 - 127) from the bits of y = x K + c
 * (one FMA: K = s log2(e) 2^23, c = 127 2^23 - rk), clamped below at 2^23:
 * the sum is against a reference rk (a max times K) that moves only when a
 * block rises more than MS_RISE/s above it (that block is summed again
 * against the new one, from L1), and the total is rescaled to the row's
 * max once at the end. c is a float, so rk is whatever c makes it: rk =
 * 127 2^23 - c, exact in double, which every rescale and exact term uses,
 * so c's rounding is no error, only a reference a little off the max. Terms
 * stay below 2^(MS_RISE log2(e) + 8), so y stays under 2^31. When |c| would
 * exceed MS_C_MAX (|max| s above about 9e7), the reference would be more
 * than a few nats off: the ISA hands the row to ms_fallback, the scalar
 * kernel's two reads. The ISA files do the vector part of each block and
 * hand it to ms_block. */
#ifndef HEED_CPU_VOCAB_MAXSUM_H
#define HEED_CPU_VOCAB_MAXSUM_H

#include <math.h>
#include <stddef.h>

#include "heed/kernels.h"

#define MS_BLOCK HEED_VOCAB_BLOCK
#define MS_RISE 40.0f
#define MS_B 1065353216.0     /* 127 2^23 */
#define MS_C_MAX 0x1p50       /* c's ulp is then at most 2^27: rk within 2^26 (5.5 nats) of the max */
#define MS_PREFETCH 1024      /* floats ahead (4 KiB): the hardware prefetcher alone falls behind these sums */

/* The scalar kernel (backends/cpu/ref/vocab_ref.c): rows whose reference a
 * float c cannot place. */
float heed_cpu_vocab_maxsum_bound_ref(const float *x, size_t n, float s, float *z, int *bad, float *bmax);

typedef struct ms_run {
  double rk; /* the reference times K; -inf until a block has weight */
  float c;   /* 127 2^23 - rk (exactly) */
  float K;   /* s log2(e) 2^23, as the vectors have it */
  float M;   /* the max so far */
  float tot; /* the sum so far, against rk */
} ms_run;

static inline ms_run ms_start(float s) {
  ms_run u = {-INFINITY, INFINITY, s * 1.44269504f * 8388608.0f, -INFINITY, 0.0f};
  return u;
}

/* One value's term against rk, exactly (the tails; inside the bound too). */
static inline float ms_term(const ms_run *u, float x) { return (float)exp2(((double)x * u->K - u->rk) * 0x1p-23); }

/* The sum of block [i, e) against the reference of c (vectors, then exact tail terms). */
typedef float (*ms_resum_fn)(const float *x, size_t i, size_t e, const ms_run *u);

/* Block [i, e): bm and zv are the max and the bounded sum against u->rk of
 * its values before `tail`; the values from tail on are done here (max,
 * NaN/+inf into *bad, exact terms). Records the block's max in bmax.
 * Returns 0 when the row needs ms_fallback (nothing else is then valid). */
static inline int ms_block(ms_run *u, const float *x, size_t i, size_t tail, size_t e, float bm, float zv, int *bad,
                           float *bmax, ms_resum_fn resum) {
  for (size_t t = tail; t < e; t++) {
    *bad |= isnan(x[t]) || x[t] == INFINITY;
    if (x[t] > bm) bm = x[t];
  }
  if (bmax) bmax[i / MS_BLOCK] = bm;
  if (!(bm > -INFINITY)) return 1; /* nothing here has weight (or a NaN, which *bad reports) */
  if (bm > u->M) u->M = bm;
  const double bk = (double)bm * u->K;
  if (u->rk == -INFINITY || (bk - u->rk) * (0x1p-23 * 0.69314718055994531) > MS_RISE) {
    const float c = (float)(MS_B - bk);
    if (!(fabsf(c) <= MS_C_MAX)) return 0;
    const double rk = MS_B - (double)c;
    if (u->rk != -INFINITY) u->tot *= (float)exp2((u->rk - rk) * 0x1p-23);
    u->rk = rk, u->c = c;
    u->tot += resum(x, i, e, u);
    return 1;
  }
  for (size_t t = tail; t < e; t++) zv += ms_term(u, x[t]);
  u->tot += zv;
  return 1;
}

/* The row's max, and *z its sum against it. sum: the plain sum of the
 * row's values (NaN or +inf when one of them is, or when a finite row's sum
 * overflows: then the row is looked at), or 0 where the ISA's max finds
 * them; b: what ms_block found. */
static inline float ms_finish(const ms_run *u, const float *x, size_t n, float sum, int b, int *bad, float *z) {
  if (isnan(sum) || sum == INFINITY)
    for (size_t i = 0; i < n && !b; i++) b = isnan(x[i]) || x[i] == INFINITY;
  if (b) *bad = 1;
  *z = u->M == -INFINITY ? 0.0f : (float)((double)u->tot * exp2((u->rk - (double)u->M * u->K) * 0x1p-23));
  return u->M;
}

#endif
