/* spec/spec_internal.h - fault injection for the verifier's statistical
 * tests: each fault is a classic bug, and the tests show that they catch it.
 * Not installed; never set outside tests. */
#ifndef HEED_SPEC_INTERNAL_H
#define HEED_SPEC_INTERNAL_H

#include "heed/spec.h"

enum {
  HEED_SPEC_FAULT_NONE = 0,
  HEED_SPEC_FAULT_NO_RESIDUAL = 1, /* on rejection, draw from p instead of max(0, p - q) */
  HEED_SPEC_FAULT_IGNORE_Q = 2,    /* accept with probability p(x), as if q(x) were 1 */
  HEED_SPEC_FAULT_BOUNDED_DRAW = 3, /* pick a row's chunk from its bounded (cheap exp) sums as if exact */
  HEED_SPEC_FAULT_SAME_U = 4,       /* pick the block inside the chunk with the chunk's uniform */
  HEED_SPEC_FAULT_BOUNDED_BLOCK = 5 /* pick the block from its bounded sums as if exact */
};

/* How a token is drawn from a row's own distribution (the bonus token, plain
 * sampling), so that tests can draw it from fp64 probabilities: the row is
 * cut in chunks of HEED_SPEC_CHUNK tokens, and a chunk in blocks of
 * HEED_SPEC_BLOCK. The chunk is the first j whose cumulative mass exceeds u
 * times the row's, u = heed_spec_uniform(seed, step, HEED_SPEC_DRAW_CHUNK +
 * r), r the row (0 the root, node i at i + 1); the block, the first in the
 * chunk whose cumulative mass exceeds u2 times the chunk's, u2 =
 * heed_spec_uniform(seed, step, HEED_SPEC_DRAW_WITHIN + r); the token, the
 * first in the block whose cumulative mass exceeds u3 times the block's, u3
 * = heed_spec_uniform(seed, step, HEED_SPEC_DRAW_TOKEN + r). */
#define HEED_SPEC_CHUNK 8192u
#define HEED_SPEC_BLOCK 256u
#define HEED_SPEC_DRAW_CHUNK 0x10000u
#define HEED_SPEC_DRAW_WITHIN 0x20000u
#define HEED_SPEC_DRAW_TOKEN 0x30000u
void heed_spec_set_fault(heed_spec *s, int fault);
/* How many rows' cuts (top-k / top-p) were found from a few candidates,
 * and how many by the histogram, since the verifier was created. */
void heed_spec_cut_counts(const heed_spec *s, unsigned *from_candidates, unsigned *by_histogram);
/* Whether a chain's long rows are read two at a time: -1 as the pool's size
 * says (the default), 0 never, 1 always (the tests, on a machine too small
 * to choose it). */
void heed_spec_set_pairs(heed_spec *s, int mode);

#endif
