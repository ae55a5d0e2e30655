/* backends/cpu/vocab_maxsum.h - the scalar bookkeeping that every SIMD
 * vocab_maxsum_bound (heed/kernels.h) shares: blocks of MS_BLOCK values are
 * summed against a reference max r that moves only when a block rises more
 * than MS_RISE/s above it (that block is summed again against the new r,
 * from L1), and the total is rescaled to the row's max once at the end.
 * Terms stay below e^MS_RISE, so (y + 127) 2^23 stays under 2^31. The ISA
 * files do the vector part of each block and hand it to ms_block. */
#ifndef HEED_CPU_VOCAB_MAXSUM_H
#define HEED_CPU_VOCAB_MAXSUM_H

#include <math.h>
#include <stddef.h>

#include "heed/kernels.h"

#define MS_BLOCK HEED_VOCAB_BLOCK
#define MS_RISE 40.0f

typedef struct ms_run {
  float r;   /* the reference max the sums are against; -inf until a block has weight */
  float M;   /* the max so far */
  float tot; /* the sum so far, against r */
} ms_run;

/* The sum of block [i, e) against r, again (the ISA's vectors, exact tail terms). */
typedef float (*ms_resum_fn)(const float *x, size_t i, size_t e, float r, float s);

/* Block [i, e): bm and zv are the max and the bounded sum against u->r of
 * its values before `tail`; the values from tail on are done here (max,
 * NaN/+inf into *bad, exact terms). Records the block's max in bmax. */
static inline void ms_block(ms_run *u, const float *x, size_t i, size_t tail, size_t e, float bm, float zv, float s,
                            int *bad, float *bmax, ms_resum_fn resum) {
  for (size_t t = tail; t < e; t++) {
    *bad |= isnan(x[t]) || x[t] == INFINITY;
    if (x[t] > bm) bm = x[t];
  }
  if (bmax) bmax[i / MS_BLOCK] = bm;
  if (bm == -INFINITY) return; /* nothing here has weight */
  if (bm > u->M) u->M = bm;
  if (u->r == -INFINITY || (bm - u->r) * s > MS_RISE) {
    if (u->r != -INFINITY) u->tot *= expf((u->r - bm) * s);
    u->r = bm;
    u->tot += resum(x, i, e, u->r, s);
    return;
  }
  for (size_t t = tail; t < e; t++) zv += expf((x[t] - u->r) * s); /* exact terms are inside the bound too */
  u->tot += zv;
}

/* The row's max, and *z its sum against it. */
static inline float ms_finish(const ms_run *u, float s, float *z) {
  *z = u->M == -INFINITY ? 0.0f : u->tot * expf((u->r - u->M) * s);
  return u->M;
}

#endif
